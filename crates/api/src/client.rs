//! Typed HTTP clients between services.
//!
//! Every call takes the caller's request id and passes it on in `X-Request-Id`, so that one client
//! request can be followed through every log. Failures come back as [`ClientError`], which tells a
//! dead peer (connect error), a slow one (timeout) and an answer with an error body apart, so that the
//! caller can pick the right status for its own client (`502`, `504`, or the peer's own error).

use std::time::Duration;

use http::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::ErrorBody;
use crate::headers::REQUEST_ID;
use crate::wire::{auth, cache, db, users};

/// Why a call to another service failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The peer could not be reached (connection refused, reset, DNS).
    #[error("{service} unreachable: {detail}")]
    Unavailable {
        /// The peer's role.
        service: &'static str,
        /// What the transport said (for logs only).
        detail: String,
    },
    /// The peer did not answer within the timeout.
    #[error("{service} timed out")]
    Timeout {
        /// The peer's role.
        service: &'static str,
    },
    /// The peer answered with an error status and body.
    #[error("{service} answered {status}: {}", body.message)]
    Status {
        /// The peer's role.
        service: &'static str,
        /// Its status code.
        status: StatusCode,
        /// Its error body (or a made-up one if it sent none).
        body: ErrorBody,
    },
    /// The peer answered 2xx with a body that does not parse.
    #[error("{service} sent an unreadable answer: {detail}")]
    Decode {
        /// The peer's role.
        service: &'static str,
        /// The parse error (for logs only).
        detail: String,
    },
}

/// A small JSON-over-HTTP client bound to one base URL.
#[derive(Debug, Clone)]
pub struct JsonClient {
    http: reqwest::Client,
    base: String,
    service: &'static str,
}

impl JsonClient {
    /// A client for `service` (its role name, for errors) at `base` (e.g. `http://127.0.0.1:5004`).
    pub fn new(service: &'static str, base: impl Into<String>, timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(2)))
            .pool_max_idle_per_host(64)
            .build()
            .unwrap_or_default();
        Self::with_http(service, base, http)
    }

    /// A client that shares an existing connection pool.
    pub fn with_http(
        service: &'static str,
        base: impl Into<String>,
        http: reqwest::Client,
    ) -> Self {
        Self {
            http,
            base: base.into().trim_end_matches('/').to_string(),
            service,
        }
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends `method path` with an optional JSON body and decodes a JSON answer.
    /// `Ok(None)` means `404` when `not_found_is_none` is set.
    pub async fn call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: http::Method,
        path: &str,
        body: Option<&B>,
        request_id: &str,
    ) -> Result<T, ClientError> {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .header(REQUEST_ID, request_id);
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.transport(e))?;
        if !status.is_success() {
            let body = serde_json::from_slice::<ErrorBody>(&bytes).unwrap_or_else(|_| {
                ErrorBody::new(
                    "upstream_error",
                    format!("{} answered {}", self.service, status),
                )
            });
            return Err(ClientError::Status {
                service: self.service,
                status,
                body,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            service: self.service,
            detail: e.to_string(),
        })
    }

    fn transport(&self, e: reqwest::Error) -> ClientError {
        if e.is_timeout() {
            ClientError::Timeout {
                service: self.service,
            }
        } else {
            ClientError::Unavailable {
                service: self.service,
                detail: e.to_string(),
            }
        }
    }
}

/// Percent-encodes one path segment (keys may hold `/`, spaces, anything).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The `cache` service's API.
#[derive(Debug, Clone)]
pub struct CacheClient(pub JsonClient);

impl CacheClient {
    /// `GET /cache/{key}`.
    pub async fn get(&self, key: &str, rid: &str) -> Result<cache::CacheEntry, ClientError> {
        let path = format!("/cache/{}", encode_segment(key));
        self.0
            .call::<(), _>(http::Method::GET, &path, None, rid)
            .await
    }

    /// `PUT /cache/{key}`.
    pub async fn set(
        &self,
        key: &str,
        value: &serde_json::Value,
        ttl: Option<u64>,
        rid: &str,
    ) -> Result<(), ClientError> {
        let path = format!("/cache/{}", encode_segment(key));
        let body = cache::CacheSet {
            value: value.clone(),
            ttl,
        };
        self.0
            .call::<_, serde_json::Value>(http::Method::PUT, &path, Some(&body), rid)
            .await
            .map(|_| ())
    }

    /// `DELETE /cache/{key}`.
    pub async fn delete(&self, key: &str, rid: &str) -> Result<(), ClientError> {
        let path = format!("/cache/{}", encode_segment(key));
        self.0
            .call::<(), serde_json::Value>(http::Method::DELETE, &path, None, rid)
            .await
            .map(|_| ())
    }

    /// `POST /cache/flush`.
    pub async fn flush(&self, rid: &str) -> Result<(), ClientError> {
        self.0
            .call::<(), serde_json::Value>(http::Method::POST, "/cache/flush", None, rid)
            .await
            .map(|_| ())
    }

    /// `GET /cache/stats`.
    pub async fn stats(&self, rid: &str) -> Result<cache::CacheStats, ClientError> {
        self.0
            .call::<(), _>(http::Method::GET, "/cache/stats", None, rid)
            .await
    }
}

/// The `db` service's API.
#[derive(Debug, Clone)]
pub struct DbClient(pub JsonClient);

impl DbClient {
    /// `GET /db/{key}`; `Ok(None)` when the key does not exist.
    pub async fn get(&self, key: &str, rid: &str) -> Result<Option<db::Record>, ClientError> {
        let path = format!("/db/{}", encode_segment(key));
        match self
            .0
            .call::<(), db::Record>(http::Method::GET, &path, None, rid)
            .await
        {
            Ok(r) => Ok(Some(r)),
            Err(ClientError::Status { status, .. }) if status == StatusCode::NOT_FOUND => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `PUT /db/{key}`.
    pub async fn put(
        &self,
        key: &str,
        value: &serde_json::Value,
        rid: &str,
    ) -> Result<db::Record, ClientError> {
        let path = format!("/db/{}", encode_segment(key));
        let body = db::PutRecord {
            value: value.clone(),
        };
        self.0
            .call(http::Method::PUT, &path, Some(&body), rid)
            .await
    }
}

/// The `auth` service's API.
#[derive(Debug, Clone)]
pub struct AuthClient(pub JsonClient);

impl AuthClient {
    /// `POST /login`.
    pub async fn login(
        &self,
        req: &auth::LoginRequest,
        rid: &str,
    ) -> Result<auth::TokenResponse, ClientError> {
        self.0
            .call(http::Method::POST, "/login", Some(req), rid)
            .await
    }

    /// `POST /register`.
    pub async fn register(
        &self,
        req: &auth::RegisterRequest,
        rid: &str,
    ) -> Result<auth::Account, ClientError> {
        self.0
            .call(http::Method::POST, "/register", Some(req), rid)
            .await
    }

    /// `POST /guest-token`: a short-lived token for an anonymous `guest`.
    pub async fn guest_token(&self, rid: &str) -> Result<auth::TokenResponse, ClientError> {
        self.0
            .call::<(), _>(http::Method::POST, "/guest-token", None, rid)
            .await
    }

    /// `GET /.well-known/jwks.json`: the public keys, as raw JSON (a JWK set).
    pub async fn jwks(&self, rid: &str) -> Result<serde_json::Value, ClientError> {
        self.0
            .call::<(), _>(http::Method::GET, "/.well-known/jwks.json", None, rid)
            .await
    }
}

/// The `users` service's internal API.
#[derive(Debug, Clone)]
pub struct UsersClient(pub JsonClient);

impl UsersClient {
    /// `POST /users`: a new profile (`409` when the username or the id exists).
    pub async fn create(
        &self,
        req: &users::CreateProfile,
        rid: &str,
    ) -> Result<users::Profile, ClientError> {
        self.0
            .call(http::Method::POST, "/users", Some(req), rid)
            .await
    }

    /// `GET /users/{id}`; `primary` reads the shard's primary (read-your-writes), otherwise a
    /// replica may answer. `Ok(None)` when there is no such user.
    pub async fn get(
        &self,
        id: &str,
        primary: bool,
        rid: &str,
    ) -> Result<Option<users::Profile>, ClientError> {
        let mut path = format!("/users/{}", encode_segment(id));
        if primary {
            path.push_str("?consistency=primary");
        }
        match self
            .0
            .call::<(), _>(http::Method::GET, &path, None, rid)
            .await
        {
            Ok(p) => Ok(Some(p)),
            Err(ClientError::Status { status, .. }) if status == StatusCode::NOT_FOUND => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `PATCH /users/{id}`.
    pub async fn update(
        &self,
        id: &str,
        req: &users::UpdateProfile,
        rid: &str,
    ) -> Result<users::Profile, ClientError> {
        let path = format!("/users/{}", encode_segment(id));
        self.0
            .call(http::Method::PATCH, &path, Some(req), rid)
            .await
    }

    /// `DELETE /users/{id}`; `Ok(false)` when there was no such user.
    pub async fn delete(&self, id: &str, rid: &str) -> Result<bool, ClientError> {
        let path = format!("/users/{}", encode_segment(id));
        match self
            .0
            .call::<(), serde_json::Value>(http::Method::DELETE, &path, None, rid)
            .await
        {
            Ok(_) => Ok(true),
            Err(ClientError::Status { status, .. }) if status == StatusCode::NOT_FOUND => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `GET /users?after=&limit=`: one page in id order across every shard.
    pub async fn list(
        &self,
        after: Option<&str>,
        limit: u32,
        rid: &str,
    ) -> Result<users::ProfilePage, ClientError> {
        let mut path = format!("/users?limit={limit}");
        if let Some(after) = after {
            path.push_str(&format!("&after={}", encode_segment(after)));
        }
        self.0
            .call::<(), _>(http::Method::GET, &path, None, rid)
            .await
    }

    /// `GET /shards`.
    pub async fn shards(&self, rid: &str) -> Result<users::ShardsReport, ClientError> {
        self.0
            .call::<(), _>(http::Method::GET, "/shards", None, rid)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::encode_segment;

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(encode_segment("my_data"), "my_data");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
        assert_eq!(encode_segment(".."), "..");
    }
}
