//! The gateway's one error type and its one conversion into an HTTP answer.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use common::ApiError;

use api::ErrorBody;

use crate::rate_limit::Decision;

/// Everything that can go wrong in the gateway, at start or while answering a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A protected route was called without a token (`401 missing_token`).
    #[error("this route needs a token: send `Authorization: Bearer <token>`")]
    MissingToken,
    /// The token is malformed, badly signed, names an unknown key, uses a refused algorithm or
    /// carries wrong claims (`401 invalid_token`). The text says which, without secrets.
    #[error("the token is not valid: {0}")]
    InvalidToken(String),
    /// The token's `exp` is past (`401 token_expired`).
    #[error("the token has expired; log in again")]
    TokenExpired,
    /// The caller lacks a role (`403 forbidden`).
    #[error("{0}")]
    Forbidden(String),
    /// The client went over a rate limit (`429 rate_limited`).
    #[error("too many requests on {route}; retry in {} s", .decision.retry_after_secs())]
    RateLimited {
        /// The limited route.
        route: String,
        /// The limiter's answer (for `Retry-After` and `RateLimit-*`).
        decision: Decision,
    },
    /// A key or route that does not exist (`404 not_found`).
    #[error("{0}")]
    NotFound(String),
    /// A `/data` key that is empty or too long (`400 invalid_key`).
    #[error("{0}")]
    InvalidKey(String),
    /// The JSON body extractor's rejection (`common::Json`): malformed JSON, a missing field or a
    /// wrong type (`400`), too large (`413`), not JSON (`415`), already in the error shape.
    #[error("{}", .0.body.message)]
    Body(ApiError),
    /// A query string that does not parse or is out of range (`400 invalid_query`).
    #[error("{0}")]
    InvalidQuery(String),
    /// A request the client can fix, with the stable code saying what (`400 <code>`): a profile
    /// field, a body that is not an object, an idempotency key.
    #[error("{message}")]
    Invalid {
        /// The stable code (`invalid_email`, `malformed_json`, ...).
        code: String,
        /// What is wrong.
        message: String,
    },
    /// A registration whose profile could not be made was undone (`503 registration_failed`).
    #[error("the profile could not be created, so nothing was registered; try again")]
    RegistrationFailed,
    /// This gateway has no task queue configured (`503 queue_unavailable`).
    #[error("this gateway has no task queue configured")]
    NoQueue,
    /// The task queue refused or failed (its own status and code: `404`, `409`, `400`, `503`).
    #[error("{0}")]
    Queue(#[from] queue::Error),
    /// An upstream (`auth`, `db`, `service`) answered with a client error that is passed on as is:
    /// its status and its error body (wrong password, username taken, ...).
    #[error("{service} answered {status}: {}", body.message)]
    Upstream {
        /// The upstream's role.
        service: &'static str,
        /// Its 4xx status.
        status: StatusCode,
        /// Its error body.
        body: ErrorBody,
    },
    /// An upstream could not be reached (`502 <service>_unavailable`).
    #[error("{service} unreachable: {detail}")]
    UpstreamUnavailable {
        /// The upstream's role.
        service: &'static str,
        /// The transport error (logged, never shown).
        detail: String,
    },
    /// An upstream said it is unavailable (`503 <service>_unavailable`).
    #[error("{service} answered 503: {detail}")]
    UpstreamOverloaded {
        /// The upstream's role.
        service: &'static str,
        /// Its message (logged, never shown).
        detail: String,
    },
    /// An upstream did not answer in time (`504 <service>_timeout`).
    #[error("{service} timed out")]
    UpstreamTimeout {
        /// The upstream's role.
        service: &'static str,
    },
    /// An upstream failed in a way the client cannot fix: a 5xx or an unreadable answer
    /// (`502 <service>_error`).
    #[error("{service} failed: {detail}")]
    UpstreamFailed {
        /// The upstream's role.
        service: &'static str,
        /// What happened (logged, never shown).
        detail: String,
    },
    /// The circuit breaker for an upstream is open: it failed too often lately, so the call was
    /// not made (`503 circuit_open` with `Retry-After`).
    #[error("calls to the {service} service are suspended after repeated failures; retry in {} s", retry_after_secs(.retry_after_ms))]
    CircuitOpen {
        /// The upstream's role.
        service: &'static str,
        /// Milliseconds until the breaker lets calls through again.
        retry_after_ms: u64,
    },
    /// A balanced pool (`service`, `auth`) could not place the request: its status and code
    /// (`503 no_healthy_backend`, `502 backend_unreachable`, `504 backend_timeout`).
    #[error("{service} pool: {detail}")]
    Pool {
        /// The upstream's role.
        service: &'static str,
        /// The status the client sees.
        status: StatusCode,
        /// The pool's stable code.
        code: &'static str,
        /// A message safe to show.
        message: String,
        /// What happened (logged, never shown).
        detail: String,
    },
    /// `GET /ready`: some dependency does not answer yet (`503 not_ready`).
    #[error("not ready: waiting for {0}")]
    NotReady(String),
    /// The configuration cannot work; reported at start, never to a client.
    #[error("invalid gateway configuration: {0}")]
    Config(String),
    /// The listener failed while serving.
    #[error("serving failed: {0}")]
    Io(#[from] std::io::Error),
    /// An error shared by every caller of one single-flight read.
    #[error("{0}")]
    Shared(std::sync::Arc<Error>),
    /// A bug or an impossible state; the detail is logged, never shown.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<ApiError> for Error {
    fn from(e: ApiError) -> Self {
        Error::Body(e)
    }
}

impl From<api::client::ClientError> for Error {
    fn from(e: api::client::ClientError) -> Self {
        from_client(e)
    }
}

const BEARER: HeaderValue = HeaderValue::from_static("Bearer");

/// `WWW-Authenticate: Bearer error="invalid_token", error_description="..."` (RFC 6750 §3).
fn bearer_error(description: &str) -> HeaderValue {
    // The description is ours (fixed phrases and jsonwebtoken's error kinds), but quotes and
    // control characters must never break the header.
    let clean: String = description
        .chars()
        .filter(|c| *c != '"' && *c != '\\' && (' '..='~').contains(c))
        .collect();
    HeaderValue::from_str(&format!(
        "Bearer error=\"invalid_token\", error_description=\"{clean}\""
    ))
    .unwrap_or(HeaderValue::from_static("Bearer error=\"invalid_token\""))
}

/// `Retry-After` in whole seconds, rounded up, at least 1.
fn retry_after_secs(ms: &u64) -> u64 {
    ms.div_ceil(1000).max(1)
}

fn code(service: &str, what: &str) -> String {
    format!("{service}_{what}")
}

impl Error {
    /// The JSON answer of this error. 5xx details go to the log, not to the client.
    pub fn to_api_error(&self) -> ApiError {
        let message = self.to_string();
        match self {
            Error::MissingToken => {
                ApiError::new(StatusCode::UNAUTHORIZED, "missing_token", message)
                    .with_header(header::WWW_AUTHENTICATE, BEARER)
            }
            Error::InvalidToken(why) => {
                ApiError::new(StatusCode::UNAUTHORIZED, "invalid_token", message)
                    .with_header(header::WWW_AUTHENTICATE, bearer_error(why))
            }
            Error::TokenExpired => {
                ApiError::new(StatusCode::UNAUTHORIZED, "token_expired", message).with_header(
                    header::WWW_AUTHENTICATE,
                    bearer_error("the token has expired"),
                )
            }
            Error::Forbidden(_) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", message),
            Error::RateLimited { decision, .. } => {
                let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
                    .with_header(header::RETRY_AFTER, decision.retry_after_secs().into());
                for (name, value) in decision.headers() {
                    e = e.with_header(name, value);
                }
                e
            }
            Error::NotFound(_) => ApiError::not_found(message),
            Error::InvalidKey(_) => ApiError::bad_request("invalid_key", message),
            Error::Body(api) => api.clone(),
            Error::InvalidQuery(_) => ApiError::bad_request("invalid_query", message),
            Error::Invalid { code, .. } => ApiError::bad_request(code, message),
            Error::RegistrationFailed => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "registration_failed",
                message,
            ),
            Error::NoQueue => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "queue_unavailable",
                message,
            ),
            Error::Queue(e) => e.to_api_error(),
            Error::Upstream { status, body, .. } => ApiError {
                status: *status,
                body: body.clone(),
                headers: Vec::new(),
            },
            Error::UpstreamUnavailable { service, .. } => {
                tracing::warn!(error = %self, "upstream unreachable");
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    &code(service, "unavailable"),
                    format!("the {service} service cannot be reached; try again shortly"),
                )
            }
            Error::UpstreamOverloaded { service, .. } => {
                tracing::warn!(error = %self, "upstream unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &code(service, "unavailable"),
                    format!("the {service} service is unavailable; try again shortly"),
                )
            }
            Error::UpstreamTimeout { service } => {
                tracing::warn!(error = %self, "upstream timeout");
                ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    &code(service, "timeout"),
                    format!("the {service} service did not answer in time"),
                )
            }
            Error::UpstreamFailed { service, .. } => {
                tracing::error!(error = %self, "upstream failed");
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    &code(service, "error"),
                    format!("the {service} service failed to answer; see the gateway's log"),
                )
            }
            Error::Pool {
                status,
                code,
                message,
                ..
            } => {
                tracing::warn!(error = %self, "pool failed");
                ApiError::new(*status, code, message.clone())
            }
            Error::CircuitOpen { retry_after_ms, .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "circuit_open", message)
                    .with_header(header::RETRY_AFTER, retry_after_secs(retry_after_ms).into())
            }
            Error::NotReady(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", message)
            }
            Error::Shared(inner) => inner.to_api_error(),
            Error::Config(_) | Error::Io(_) | Error::Internal(_) => ApiError::internal(self),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        self.to_api_error().into_response()
    }
}

/// What a typed client's failure means for the gateway's own client: the one mapping from
/// transport failures to the gateway's errors.
pub(crate) fn from_client(e: api::client::ClientError) -> Error {
    use api::client::ClientError;
    match e {
        ClientError::Unavailable { service, detail } => {
            Error::UpstreamUnavailable { service, detail }
        }
        ClientError::Timeout { service } => Error::UpstreamTimeout { service },
        ClientError::Pool {
            service,
            status,
            code,
            message,
            detail,
        } => Error::Pool {
            service,
            status,
            code,
            message,
            detail,
        },
        ClientError::Status {
            service,
            status,
            body,
        } => from_status(service, status, body),
        ClientError::Decode { service, detail } => Error::UpstreamFailed { service, detail },
        ClientError::CircuitOpen {
            service,
            retry_after_ms,
        } => Error::CircuitOpen {
            service,
            retry_after_ms,
        },
    }
}

/// An upstream's error answer: 4xx passed on, 503 as unavailable, other 5xx as a failure.
pub(crate) fn from_status(service: &'static str, status: StatusCode, body: ErrorBody) -> Error {
    if status == StatusCode::SERVICE_UNAVAILABLE {
        Error::UpstreamOverloaded {
            service,
            detail: body.message,
        }
    } else if status == StatusCode::GATEWAY_TIMEOUT {
        Error::UpstreamTimeout { service }
    } else if status.is_client_error() {
        Error::Upstream {
            service,
            status,
            body,
        }
    } else {
        Error::UpstreamFailed {
            service,
            detail: format!("{status}: {}", body.message),
        }
    }
}
