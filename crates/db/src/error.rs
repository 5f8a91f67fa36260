//! The db's one error type and its one conversion into an HTTP answer.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use common::ApiError;

/// Everything that can go wrong in the db service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The key is empty, too long or not UTF-8 (`400 invalid_key`).
    #[error("{0}")]
    InvalidKey(String),
    /// No record has this key (`404 not_found`).
    #[error("no record has the key {0:?}")]
    NotFound(String),
    /// The value is larger than [`crate::Config::max_value_bytes`] (`413 value_too_large`).
    #[error("the value has {size} bytes; at most {max} are accepted")]
    ValueTooLarge {
        /// The serialised value's size.
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// The simulated failure of [`crate::Config::failure_rate`] (`503 injected_failure`).
    #[error("simulated failure (failure_rate)")]
    InjectedFailure,
    /// The database cannot be reached: connection refused, pool exhausted (`503 store_unavailable`).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database answered with an error (`500 internal`).
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    /// A stored value is not valid JSON (`500 internal`); only a foreign write can cause this.
    #[error("stored value of {key:?} is not JSON: {source}")]
    Corrupt {
        /// The record's key.
        key: String,
        /// The parse error.
        source: serde_json::Error,
    },
    /// The configuration cannot be honoured; reported at start, never to a client.
    #[error("invalid db configuration: {0}")]
    Config(String),
    /// The data directory or the listener failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl From<sqlx::Error> for Error {
    /// Tells a database that is not there (worth a retry elsewhere: `503`) from one that refused
    /// the query (a bug: `500`), by `common::sql::is_unavailable`.
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::Configuration(message) => Error::Config(message.to_string()),
            e if common::sql::is_unavailable(&e) => Error::Unavailable(e.to_string()),
            other => Error::Database(other),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let api = match self {
            Error::InvalidKey(message) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_key", message)
            }
            e @ Error::NotFound(_) => ApiError::not_found(e.to_string()),
            e @ Error::ValueTooLarge { .. } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "value_too_large",
                e.to_string(),
            ),
            Error::InjectedFailure => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "injected_failure",
                "the database failed on purpose (failure_rate); retry, possibly elsewhere",
            ),
            Error::Unavailable(detail) => {
                // The detail (addresses, driver messages) goes to the log only.
                tracing::warn!(%detail, "database unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the database cannot be reached right now",
                )
            }
            e @ (Error::Database(_) | Error::Corrupt { .. } | Error::Config(_) | Error::Io(_)) => {
                ApiError::internal(e)
            }
        };
        api.into_response()
    }
}
