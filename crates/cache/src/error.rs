//! The cache's one error type and its one conversion into an HTTP answer.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use common::ApiError;

/// Everything that can go wrong in the cache service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The key is empty, too long or not valid UTF-8 (`400 invalid_key`).
    #[error("{0}")]
    InvalidKey(String),
    /// The requested TTL is zero or above [`crate::Config::max_ttl_secs`] (`400 invalid_ttl`).
    #[error("{0}")]
    InvalidTtl(String),
    /// The query string is not understood (`400 invalid_query`).
    #[error("{0}")]
    InvalidQuery(String),
    /// An acknowledgement from a subscriber that was cut off, or never was (`410
    /// subscription_gone`): it must drop its near cache and subscribe again.
    #[error("this subscription was cut off; subscribe again")]
    SubscriptionGone,
    /// The service is shutting down and takes no new subscription (`503 shutting_down`).
    #[error("the cache service is shutting down")]
    ShuttingDown,
    /// The configuration cannot be honoured; reported at start, never to a client.
    #[error("invalid cache configuration: {0}")]
    Config(String),
    /// The listener failed while serving.
    #[error("serving failed: {0}")]
    Io(#[from] std::io::Error),
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let api = match self {
            Error::InvalidKey(message) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_key", message)
            }
            Error::InvalidTtl(message) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_ttl", message)
            }
            Error::InvalidQuery(message) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", message)
            }
            e @ Error::SubscriptionGone => {
                ApiError::new(StatusCode::GONE, "subscription_gone", e.to_string())
            }
            e @ Error::ShuttingDown => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                e.to_string(),
            ),
            // These never come from a request; if one ever reaches a client, it says nothing of
            // the internals (`ApiError::internal` logs the detail).
            e @ (Error::Config(_) | Error::Io(_)) => ApiError::internal(e),
        };
        api.into_response()
    }
}
