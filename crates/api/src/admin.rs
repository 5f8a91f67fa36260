//! Checking the admin credential (HTTP Basic `admin:<password>`) where a role has no token
//! verifier of its own (the supervisor's control API, the dashboard's controls): the credential is
//! checked by logging in at an auth instance (the same argon2id check as `POST /login`) and reading
//! the roles of the token it answers with; a credential that passed is remembered for a minute so
//! that a burst of calls costs one hash. The token is read, not verified: it came straight from the
//! auth instance this check chose to ask.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;

/// How long a credential that passed is remembered.
const REMEMBER: Duration = Duration::from_secs(60);

/// The check; clones share what they remember.
#[derive(Clone, Debug, Default)]
pub struct AdminCheck {
    /// Credentials that passed, by a keyed hash of the header (SipHash with this process's random
    /// keys, so that nobody can forge a header with the same key), with when.
    passed: Arc<Mutex<HashMap<u64, Instant>>>,
    keys: std::collections::hash_map::RandomState,
    /// The deployment's service credential, which auth wants on a login when it is set.
    service_token: Option<String>,
}

impl AdminCheck {
    /// A check that sends `service_token` to auth with each login, when set.
    pub fn new(service_token: Option<String>) -> Self {
        Self {
            service_token,
            ..Self::default()
        }
    }

    /// The service credential it sends with each login.
    pub fn service_token(&self) -> Option<&str> {
        self.service_token.as_deref()
    }

    /// `Ok` if `authorization` (the whole header) is the Basic credential of an account with the
    /// `admin` role at the auth instance `auth_url`; otherwise the reason, for a `401`.
    pub async fn check(&self, auth_url: &str, authorization: Option<&str>) -> Result<(), String> {
        let header =
            authorization.ok_or("send the admin credential (HTTP Basic admin:<password>)")?;
        let digest = std::hash::BuildHasher::hash_one(&self.keys, header);
        if let Some(at) = self
            .passed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&digest)
            && at.elapsed() < REMEMBER
        {
            return Ok(());
        }
        let (user, password) = basic_credential(header)?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| e.to_string())?;
        let mut login = http
            .post(format!("{auth_url}/login"))
            .json(&serde_json::json!({"username": user, "password": password}));
        if let Some(token) = &self.service_token {
            login = login.header(crate::headers::SERVICE_TOKEN, token);
        }
        let resp = login
            .send()
            .await
            .map_err(|_| "auth could not be reached to check the credential")?;
        if !resp.status().is_success() {
            return Err("invalid admin credential".into());
        }
        let body: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
        let roles = body["token"]
            .as_str()
            .and_then(|t| t.split('.').nth(1))
            .and_then(|p| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(p)
                    .ok()
            })
            .and_then(|c| serde_json::from_slice::<serde_json::Value>(&c).ok())
            .map(|c| c["roles"].clone())
            .unwrap_or_default();
        if !roles
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r == "admin"))
        {
            return Err(format!("{user} is not an admin"));
        }
        self.passed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(digest, Instant::now());
        Ok(())
    }
}

/// `(user, password)` of an HTTP Basic `Authorization` header.
pub fn basic_credential(header: &str) -> Result<(String, String), String> {
    let encoded = header
        .strip_prefix("Basic ")
        .ok_or("the admin credential is HTTP Basic admin:<password>")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| "the Basic credential is not base64")?;
    let text = String::from_utf8(decoded).map_err(|_| "the Basic credential is not UTF-8")?;
    let (user, password) = text
        .split_once(':')
        .ok_or("the Basic credential is user:password")?;
    Ok((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_basic_header_gives_user_and_password() {
        // base64("admin:s3cret:with-colon")
        let header = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("admin:s3cret:with-colon")
        );
        assert_eq!(
            basic_credential(&header).unwrap(),
            ("admin".to_string(), "s3cret:with-colon".to_string())
        );
        assert!(basic_credential("Bearer x").is_err());
        assert!(basic_credential("Basic !!!").is_err());
    }
}
