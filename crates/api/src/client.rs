//! Typed HTTP clients between services, over one [`Transport`].
//!
//! Every call takes the caller's request id and passes it on in `X-Request-Id`, so that one client
//! request can be followed through every log. Failures come back as [`ClientError`], which tells a
//! dead peer (connect error), a slow one (timeout), a pool with no instance to offer, and an answer
//! with an error body apart, so that the caller can pick the right status for its own client
//! (`502`, `503`, `504`, or the peer's own error).
//!
//! A typed client (`AuthClient`, `ServiceClient`, `DbClient`, `CacheClient`, `UsersClient`) knows
//! its peer's paths and bodies; the [`Transport`] under it knows how bytes reach the peer: [`Direct`]
//! (one base URL, reqwest) here, or a balanced pool over several instances
//! (`balance::PoolTransport`). Callers therefore never write a path or build a body by hand.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::ErrorBody;
use crate::headers::REQUEST_ID;
use crate::wire::{auth, cache, db, rental, service, users};

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
    /// A balanced pool could not place the request on any instance: its own status and stable
    /// code (`503 no_healthy_backend`, `502 backend_unreachable`, `504 backend_timeout`, ...).
    #[error("{service} pool: {detail}")]
    Pool {
        /// The peer's role.
        service: &'static str,
        /// The status a client should see.
        status: StatusCode,
        /// The pool's stable error code.
        code: &'static str,
        /// A message safe to show a client (no addresses).
        message: String,
        /// What happened (for logs only).
        detail: String,
    },
    /// The caller's circuit breaker for this peer is open (the peer failed too often lately):
    /// the call was not made. The caller answers `503 circuit_open` with `Retry-After`.
    #[error("the circuit breaker for {service} is open")]
    CircuitOpen {
        /// The peer's role.
        service: &'static str,
        /// Milliseconds until the breaker lets calls through again.
        retry_after_ms: u64,
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
    /// The peer answered 2xx with a body that does not parse, or the body could not be read.
    #[error("{service} sent an unreadable answer: {detail}")]
    Decode {
        /// The peer's role.
        service: &'static str,
        /// The parse error (for logs only).
        detail: String,
    },
}

impl ClientError {
    /// Whether the peer answered `404` (a typed client turns it into `None` where absence is an
    /// answer, not a failure).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::Status { status, .. } if *status == StatusCode::NOT_FOUND)
    }
}

/// One request as a typed client hands it to its transport.
#[derive(Debug)]
pub struct Outbound<'a> {
    /// The method.
    pub method: Method,
    /// Path and query (`/db/my_data`), already percent-encoded.
    pub path: &'a str,
    /// The JSON body, already encoded.
    pub body: Option<Vec<u8>>,
    /// The caller's request id, passed on in `X-Request-Id`.
    pub request_id: &'a str,
    /// The deployment's service credential, sent in `X-Service-Token` when there is one.
    pub service_token: Option<&'a str>,
}

/// A peer's answer, whatever its status.
#[derive(Debug)]
pub struct Inbound {
    /// The status.
    pub status: StatusCode,
    /// The whole body.
    pub body: Bytes,
}

/// A boxed future, as [`Transport::send`] returns it (object safe without a macro).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How a typed client's requests reach its peer: one base URL ([`Direct`]) or a balanced pool.
///
/// A transport answers every response the peer gave, errors included; it fails only when no
/// answer came (unreachable, timed out, no instance, unreadable body).
pub trait Transport: Send + Sync + Debug + 'static {
    /// The peer's role (`auth`, `db`, ...), for errors and logs.
    fn service(&self) -> &'static str;
    /// Sends one request and reads the whole answer.
    fn send<'a>(&'a self, req: Outbound<'a>) -> BoxFuture<'a, Result<Inbound, ClientError>>;
}

/// A transport to one base URL over reqwest's connection pool.
#[derive(Debug, Clone)]
pub struct Direct {
    http: reqwest::Client,
    base: String,
    service: &'static str,
}

impl Direct {
    /// A transport for `service` at `base` (`http://127.0.0.1:5004`): calls give up after `timeout`.
    pub fn new(service: &'static str, base: impl Into<String>, timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(2)))
            .pool_max_idle_per_host(64)
            .build()
            .unwrap_or_default();
        Self::with_http(service, base, http)
    }

    /// A transport that shares an existing connection pool.
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

impl Transport for Direct {
    fn service(&self) -> &'static str {
        self.service
    }

    fn send<'a>(&'a self, req: Outbound<'a>) -> BoxFuture<'a, Result<Inbound, ClientError>> {
        Box::pin(async move {
            let mut builder = self
                .http
                .request(req.method, format!("{}{}", self.base, req.path))
                .header(REQUEST_ID, req.request_id)
                .header(http::header::ACCEPT, "application/json");
            if let Some(token) = req.service_token {
                builder = builder.header(crate::headers::SERVICE_TOKEN, token);
            }
            if let Some(body) = req.body {
                builder = builder
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(body);
            }
            let resp = builder.send().await.map_err(|e| self.transport(e))?;
            let status = resp.status();
            let body = resp.bytes().await.map_err(|e| self.transport(e))?;
            Ok(Inbound { status, body })
        })
    }
}

/// JSON over a [`Transport`]: encodes the body, decodes a 2xx answer, turns any other answer into
/// [`ClientError::Status`] with the peer's error body.
#[derive(Debug, Clone)]
pub struct JsonClient {
    transport: Arc<dyn Transport>,
    /// Sent with every request when set (see [`JsonClient::with_service_token`]).
    service_token: Option<Arc<str>>,
}

impl JsonClient {
    /// A client for `service` (its role name, for errors) at `base` (e.g. `http://127.0.0.1:5004`).
    pub fn new(service: &'static str, base: impl Into<String>, timeout: Duration) -> Self {
        Self::over(Direct::new(service, base, timeout))
    }

    /// A client that shares an existing connection pool.
    pub fn with_http(
        service: &'static str,
        base: impl Into<String>,
        http: reqwest::Client,
    ) -> Self {
        Self::over(Direct::with_http(service, base, http))
    }

    /// A client over any transport (a balanced pool, a test double).
    pub fn over(transport: impl Transport) -> Self {
        Self {
            transport: Arc::new(transport),
            service_token: None,
        }
    }

    /// Sends `token` in `X-Service-Token` with every request (the deployment's credential for
    /// internal roles bound beyond loopback); `None` sends nothing.
    pub fn with_service_token(mut self, token: Option<Arc<str>>) -> Self {
        self.service_token = token;
        self
    }

    /// The peer's role.
    pub fn service(&self) -> &'static str {
        self.transport.service()
    }

    /// Sends `method path` with an optional JSON body and decodes a 2xx JSON answer.
    pub async fn call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        request_id: &str,
    ) -> Result<T, ClientError> {
        let service = self.service();
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| ClientError::Decode {
                service,
                detail: format!("encoding the request body: {e}"),
            })?;
        let answer = self
            .transport
            .send(Outbound {
                method,
                path,
                body,
                request_id,
                service_token: self.service_token.as_deref(),
            })
            .await?;
        if !answer.status.is_success() {
            let body = serde_json::from_slice::<ErrorBody>(&answer.body).unwrap_or_else(|_| {
                ErrorBody::new(
                    "upstream_error",
                    format!("{service} answered {}", answer.status),
                )
            });
            return Err(ClientError::Status {
                service,
                status: answer.status,
                body,
            });
        }
        // A success without a body (`204 No Content`) reads as JSON `null`.
        let body: &[u8] = if answer.body.is_empty() {
            b"null"
        } else {
            &answer.body
        };
        serde_json::from_slice(body).map_err(|e| ClientError::Decode {
            service,
            detail: format!("unreadable answer to {path}: {e}"),
        })
    }

    /// `GET /health`: whether the peer answers at all (what readiness checks ask).
    pub async fn health(&self, rid: &str) -> Result<(), ClientError> {
        self.call::<(), serde_json::Value>(Method::GET, "/health", None, rid)
            .await
            .map(|_| ())
    }
}

/// `Ok(None)` for a `404`, the value otherwise.
fn absent_on_404<T>(r: Result<T, ClientError>) -> Result<Option<T>, ClientError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
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
        self.0.call::<(), _>(Method::GET, &path, None, rid).await
    }

    /// `GET /cache/{key}?lease=on_miss|always`: the entry and, as `mode` says, a fill lease.
    pub async fn lookup(
        &self,
        key: &str,
        mode: cache::LeaseMode,
        rid: &str,
    ) -> Result<cache::CacheEntry, ClientError> {
        let mode = match mode {
            cache::LeaseMode::OnMiss => "on_miss",
            cache::LeaseMode::Always => "always",
        };
        let path = format!("/cache/{}?lease={mode}", encode_segment(key));
        self.0.call::<(), _>(Method::GET, &path, None, rid).await
    }

    /// `PUT /cache/{key}`: a write (the key's leases are voided and every near cache has dropped
    /// the key when this returns).
    pub async fn set(
        &self,
        key: &str,
        value: &serde_json::Value,
        ttl: Option<u64>,
        rid: &str,
    ) -> Result<(), ClientError> {
        self.put(key, value, ttl, None, rid).await.map(|_| ())
    }

    /// `PUT /cache/{key}` with the lease of a [`CacheClient::lookup`]: a fill, stored only while
    /// the lease is valid; `Ok(false)` when a write voided it.
    pub async fn fill(
        &self,
        key: &str,
        value: &serde_json::Value,
        ttl: Option<u64>,
        lease: u64,
        rid: &str,
    ) -> Result<bool, ClientError> {
        self.put(key, value, ttl, Some(lease), rid)
            .await
            .map(|s| s.stored)
    }

    async fn put(
        &self,
        key: &str,
        value: &serde_json::Value,
        ttl: Option<u64>,
        lease: Option<u64>,
        rid: &str,
    ) -> Result<cache::CacheStored, ClientError> {
        let path = format!("/cache/{}", encode_segment(key));
        let body = cache::CacheSet {
            value: value.clone(),
            ttl,
            lease,
        };
        self.0.call(Method::PUT, &path, Some(&body), rid).await
    }

    /// `POST /invalidations/{subscriber}/ack`: every event up to `seq` was applied. A
    /// `410 subscription_gone` (a [`ClientError::Status`]) means the subscriber was cut off.
    pub async fn ack(
        &self,
        subscriber: u64,
        seq: u64,
        rid: &str,
    ) -> Result<cache::LeaseRenewed, ClientError> {
        let path = format!("/invalidations/{subscriber}/ack");
        let body = cache::InvalidationAck { seq };
        self.0.call(Method::POST, &path, Some(&body), rid).await
    }

    /// `DELETE /cache/{key}`.
    pub async fn delete(&self, key: &str, rid: &str) -> Result<(), ClientError> {
        let path = format!("/cache/{}", encode_segment(key));
        self.0
            .call::<(), serde_json::Value>(Method::DELETE, &path, None, rid)
            .await
            .map(|_| ())
    }

    /// `POST /cache/flush`.
    pub async fn flush(&self, rid: &str) -> Result<(), ClientError> {
        self.0
            .call::<(), serde_json::Value>(Method::POST, "/cache/flush", None, rid)
            .await
            .map(|_| ())
    }

    /// `GET /cache/stats`.
    pub async fn stats(&self, rid: &str) -> Result<cache::CacheStats, ClientError> {
        self.0
            .call::<(), _>(Method::GET, "/cache/stats", None, rid)
            .await
    }
}

/// The cache service's invalidation stream, `POST /invalidations`: JSON lines of
/// [`cache::InvalidationEvent`], the first a `Hello`, for as long as the connection lasts.
///
/// Not a [`Transport`] call: those read a whole body, and this one never ends.
#[derive(Debug)]
pub struct InvalidationStream {
    response: reqwest::Response,
    /// Bytes read but not yet a whole line.
    buffer: Vec<u8>,
}

impl InvalidationStream {
    /// Subscribes at `base` (`http://127.0.0.1:5004`), sending `token` in `X-Service-Token` when
    /// set; gives up connecting after `connect_timeout`.
    pub async fn open(
        base: &str,
        token: Option<&str>,
        connect_timeout: Duration,
        rid: &str,
    ) -> Result<Self, ClientError> {
        let service = "cache";
        let unavailable = |e: reqwest::Error| {
            if e.is_timeout() {
                ClientError::Timeout { service }
            } else {
                ClientError::Unavailable {
                    service,
                    detail: e.to_string(),
                }
            }
        };
        let http = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .no_proxy()
            .build()
            .map_err(unavailable)?;
        let mut request = http
            .post(format!("{}/invalidations", base.trim_end_matches('/')))
            .header(REQUEST_ID, rid)
            .header(http::header::ACCEPT, "application/x-ndjson");
        if let Some(token) = token {
            request = request.header(crate::headers::SERVICE_TOKEN, token);
        }
        // Only the answer's head is awaited under a deadline: the body is the stream.
        let response = tokio_timeout(connect_timeout.saturating_mul(2), request.send())
            .await
            .ok_or(ClientError::Timeout { service })?
            .map_err(unavailable)?;
        let status = response.status();
        if !status.is_success() {
            let body = response.bytes().await.unwrap_or_default();
            let body = serde_json::from_slice::<ErrorBody>(&body).unwrap_or_else(|_| {
                ErrorBody::new("upstream_error", format!("{service} answered {status}"))
            });
            return Err(ClientError::Status {
                service,
                status,
                body,
            });
        }
        Ok(Self {
            response,
            buffer: Vec::new(),
        })
    }

    /// The next event; `Ok(None)` when the service ended the stream.
    pub async fn next_event(&mut self) -> Result<Option<cache::InvalidationEvent>, ClientError> {
        let service = "cache";
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                let line = &line[..end];
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return serde_json::from_slice(line)
                    .map(Some)
                    .map_err(|e| ClientError::Decode {
                        service,
                        detail: format!("an invalidation event: {e}"),
                    });
            }
            match self.response.chunk().await {
                Ok(Some(chunk)) => self.buffer.extend_from_slice(&chunk),
                Ok(None) => return Ok(None),
                Err(e) => {
                    return Err(ClientError::Unavailable {
                        service,
                        detail: e.to_string(),
                    });
                }
            }
        }
    }
}

/// `future` unless it takes longer than `limit` (`None` then); the client has no timer of its own
/// for the head of a response whose body never ends.
async fn tokio_timeout<F: Future>(limit: Duration, future: F) -> Option<F::Output> {
    tokio::time::timeout(limit, future).await.ok()
}

/// The `db` service's API.
#[derive(Debug, Clone)]
pub struct DbClient(pub JsonClient);

impl DbClient {
    /// `GET /db/{key}`; `Ok(None)` when the key does not exist.
    pub async fn get(&self, key: &str, rid: &str) -> Result<Option<db::Record>, ClientError> {
        let path = format!("/db/{}", encode_segment(key));
        absent_on_404(
            self.0
                .call::<(), db::Record>(Method::GET, &path, None, rid)
                .await,
        )
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
        self.0.call(Method::PUT, &path, Some(&body), rid).await
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
        self.0.call(Method::POST, "/login", Some(req), rid).await
    }

    /// `POST /register`.
    pub async fn register(
        &self,
        req: &auth::RegisterRequest,
        rid: &str,
    ) -> Result<auth::Account, ClientError> {
        self.0.call(Method::POST, "/register", Some(req), rid).await
    }

    /// `POST /guest-token`: a short-lived token for an anonymous `guest`, carrying `username`
    /// when one is given.
    pub async fn guest_token(
        &self,
        req: &auth::GuestRequest,
        rid: &str,
    ) -> Result<auth::TokenResponse, ClientError> {
        self.0
            .call(Method::POST, "/guest-token", Some(req), rid)
            .await
    }

    /// `DELETE /accounts/{username}`; `Ok(false)` when there was no such account.
    pub async fn delete_account(&self, username: &str, rid: &str) -> Result<bool, ClientError> {
        let path = format!("/accounts/{}", encode_segment(username));
        absent_on_404(
            self.0
                .call::<(), serde_json::Value>(Method::DELETE, &path, None, rid)
                .await,
        )
        .map(|found| found.is_some())
    }

    /// `PUT /accounts/{username}/roles`: the roles the account's next tokens carry.
    pub async fn set_roles(
        &self,
        username: &str,
        req: &auth::RolesRequest,
        rid: &str,
    ) -> Result<auth::Account, ClientError> {
        let path = format!("/accounts/{}/roles", encode_segment(username));
        self.0.call(Method::PUT, &path, Some(req), rid).await
    }

    /// `GET /.well-known/jwks.json`: the public keys, as raw JSON (a JWK set).
    pub async fn jwks(&self, rid: &str) -> Result<serde_json::Value, ClientError> {
        self.0
            .call::<(), _>(Method::GET, "/.well-known/jwks.json", None, rid)
            .await
    }
}

/// The business `service`'s API.
#[derive(Debug, Clone)]
pub struct ServiceClient(pub JsonClient);

impl ServiceClient {
    /// `GET /process`: one instance does the work.
    pub async fn process(&self, rid: &str) -> Result<service::ProcessResponse, ClientError> {
        self.0
            .call::<(), _>(Method::GET, "/process", None, rid)
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
        self.0.call(Method::POST, "/users", Some(req), rid).await
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
        absent_on_404(self.0.call::<(), _>(Method::GET, &path, None, rid).await)
    }

    /// `PATCH /users/{id}`.
    pub async fn update(
        &self,
        id: &str,
        req: &users::UpdateProfile,
        rid: &str,
    ) -> Result<users::Profile, ClientError> {
        let path = format!("/users/{}", encode_segment(id));
        self.0.call(Method::PATCH, &path, Some(req), rid).await
    }

    /// `DELETE /users/{id}`; `Ok(false)` when there was no such user.
    pub async fn delete(&self, id: &str, rid: &str) -> Result<bool, ClientError> {
        let path = format!("/users/{}", encode_segment(id));
        absent_on_404(
            self.0
                .call::<(), serde_json::Value>(Method::DELETE, &path, None, rid)
                .await,
        )
        .map(|found| found.is_some())
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
        self.0.call::<(), _>(Method::GET, &path, None, rid).await
    }

    /// `GET /shards`.
    pub async fn shards(&self, rid: &str) -> Result<users::ShardsReport, ClientError> {
        self.0
            .call::<(), _>(Method::GET, "/shards", None, rid)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A transport that answers every request with one status and body.
    #[derive(Debug)]
    struct Canned(StatusCode, &'static str);

    impl Transport for Canned {
        fn service(&self) -> &'static str {
            "auth"
        }

        fn send<'a>(&'a self, _: Outbound<'a>) -> BoxFuture<'a, Result<Inbound, ClientError>> {
            Box::pin(async move {
                Ok(Inbound {
                    status: self.0,
                    body: Bytes::from_static(self.1.as_bytes()),
                })
            })
        }
    }

    #[tokio::test]
    async fn answers_are_decoded_or_classified() {
        // 204 with no body is a success (auth's DELETE /accounts answers so).
        let deleted = AuthClient(JsonClient::over(Canned(StatusCode::NO_CONTENT, "")));
        assert!(deleted.delete_account("ann", "rid").await.expect("deleted"));
        let gone = AuthClient(JsonClient::over(Canned(
            StatusCode::NOT_FOUND,
            r#"{"error":"not_found","message":"no such account"}"#,
        )));
        assert!(!gone.delete_account("ann", "rid").await.expect("absent"));
        let broken = JsonClient::over(Canned(StatusCode::OK, "not json"));
        assert!(matches!(
            broken.health("rid").await,
            Err(ClientError::Decode { .. })
        ));
        let refused = JsonClient::over(Canned(StatusCode::CONFLICT, "plain text"));
        match refused.health("rid").await {
            Err(ClientError::Status { status, body, .. }) => {
                assert_eq!(status, StatusCode::CONFLICT);
                assert_eq!(body.error, "upstream_error");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(encode_segment("my_data"), "my_data");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
        assert_eq!(encode_segment(".."), "..");
    }
}

/// `?a=1&b=x` from the pairs that have a value (empty when none has).
fn query_string(pairs: &[(&str, Option<String>)]) -> String {
    let mut out = String::new();
    for (name, value) in pairs {
        if let Some(v) = value {
            out.push(if out.is_empty() { '?' } else { '&' });
            out.push_str(name);
            out.push('=');
            out.push_str(&encode_segment(v));
        }
    }
    out
}

/// A rental domain service's API (`units`, `finances` or `legal`; each answers only its own paths).
#[derive(Debug, Clone)]
pub struct RentalClient(pub JsonClient);

impl RentalClient {
    /// `GET /units[?status=]`.
    pub async fn units(
        &self,
        q: &rental::UnitsQuery,
        rid: &str,
    ) -> Result<rental::Units, ClientError> {
        let path = format!("/units{}", query_string(&[("status", q.status.clone())]));
        self.0.call::<(), _>(Method::GET, &path, None, rid).await
    }

    /// `GET /units/{id}`; `Ok(None)` when there is no such unit.
    pub async fn unit(&self, id: i64, rid: &str) -> Result<Option<rental::Unit>, ClientError> {
        let path = format!("/units/{id}");
        absent_on_404(self.0.call::<(), _>(Method::GET, &path, None, rid).await)
    }

    /// `POST /units`.
    pub async fn create_unit(
        &self,
        req: &rental::NewUnit,
        rid: &str,
    ) -> Result<rental::Unit, ClientError> {
        self.0.call(Method::POST, "/units", Some(req), rid).await
    }

    /// `PATCH /units/{id}` (`404` when there is no such unit).
    pub async fn update_unit(
        &self,
        id: i64,
        req: &rental::UnitChange,
        rid: &str,
    ) -> Result<rental::Unit, ClientError> {
        let path = format!("/units/{id}");
        self.0.call(Method::PATCH, &path, Some(req), rid).await
    }

    /// `GET /transactions[?unit=&month=]`.
    pub async fn transactions(
        &self,
        q: &rental::TransactionsQuery,
        rid: &str,
    ) -> Result<rental::Transactions, ClientError> {
        let path = format!(
            "/transactions{}",
            query_string(&[
                ("unit", q.unit.map(|u| u.to_string())),
                ("month", q.month.clone()),
            ])
        );
        self.0.call::<(), _>(Method::GET, &path, None, rid).await
    }

    /// `POST /transactions`.
    pub async fn create_transaction(
        &self,
        req: &rental::NewTransaction,
        rid: &str,
    ) -> Result<rental::Transaction, ClientError> {
        self.0
            .call(Method::POST, "/transactions", Some(req), rid)
            .await
    }

    /// `GET /documents[?status=&unit=]`.
    pub async fn documents(
        &self,
        q: &rental::DocumentsQuery,
        rid: &str,
    ) -> Result<rental::Documents, ClientError> {
        let path = format!(
            "/documents{}",
            query_string(&[
                ("status", q.status.clone()),
                ("unit", q.unit.map(|u| u.to_string())),
            ])
        );
        self.0.call::<(), _>(Method::GET, &path, None, rid).await
    }
}
