//! Who may change the fleet through the control API. On loopback (the default) anyone who can
//! reach it can already signal the processes, so every call passes. Bound to another address, a
//! call that changes something (every `POST`) needs the admin credential: HTTP Basic
//! `admin:<password>`, checked by logging in at one of the running auth instances (the same
//! argon2id check as `POST /login`) and reading the token's roles; a credential that passed is
//! remembered for a minute so that a burst of calls costs one hash.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;

use crate::fleet::{Fleet, State};

/// How long a credential that passed is remembered.
const REMEMBER: Duration = Duration::from_secs(60);

/// The check, shared by the control API's handlers.
#[derive(Clone, Debug, Default)]
pub struct AdminGuard {
    /// Off on loopback.
    required: bool,
    /// Credentials that passed, by a keyed hash of the header (SipHash with this process's random
    /// keys, so that nobody can forge a header with the same key), with when.
    passed: Arc<Mutex<HashMap<u64, Instant>>>,
    keys: std::collections::hash_map::RandomState,
    /// The deployment's service credential, which auth wants on a login when it is set.
    service_token: Option<String>,
}

impl AdminGuard {
    /// A guard for a control API listening on `addr`: required unless it is loopback.
    pub fn for_addr(addr: std::net::SocketAddr, service_token: Option<String>) -> Self {
        Self {
            required: !addr.ip().is_loopback(),
            passed: Arc::default(),
            keys: std::collections::hash_map::RandomState::new(),
            service_token,
        }
    }

    /// `Ok` if the call may change the fleet; otherwise the reason, for a `401`.
    pub async fn check(&self, fleet: &Fleet, authorization: Option<&str>) -> Result<(), String> {
        if !self.required {
            return Ok(());
        }
        let header = authorization
            .ok_or("this control API is not on loopback: send the admin credential (Basic admin:<password>)")?;
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
        let auth = fleet
            .members("auth")
            .into_iter()
            .find(|(_, _, s)| *s == State::Active)
            .map(|(_, url, _)| url)
            .ok_or("no auth instance is running to check the credential")?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| e.to_string())?;
        let mut login = http
            .post(format!("{auth}/login"))
            .json(&serde_json::json!({"username": user, "password": password}));
        if let Some(token) = &self.service_token {
            login = login.header(api::headers::SERVICE_TOKEN, token);
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
