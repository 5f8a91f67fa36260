//! The rental services' one error type and its one conversion into an HTTP answer.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use common::ApiError;

/// Everything that can go wrong in a rental domain service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A field of a body or a query value breaks a rule (`400`, with the rule's stable code:
    /// `invalid_name`, `invalid_address`, `invalid_bedrooms`, `invalid_rent`, `invalid_status`,
    /// `invalid_kind`, `invalid_month`, `invalid_unit`, `invalid_amount`,
    /// `invalid_description`).
    #[error("{message}")]
    Invalid {
        /// The stable code.
        code: &'static str,
        /// What is wrong, for a human.
        message: String,
    },
    /// A `PATCH` that names no field (`400 empty_change`).
    #[error(
        "the change names no field; give at least one of name, address, bedrooms, monthly_rent_cents, status"
    )]
    EmptyChange,
    /// The query string does not parse into the route's filter: an unknown parameter or a value
    /// of the wrong type (`400 invalid_query`).
    #[error("bad query string: {0}")]
    InvalidQuery(String),
    /// The id in the path is not a positive integer (`400 invalid_id`).
    #[error("{0}")]
    InvalidId(String),
    /// No row has this id (`404 not_found`).
    #[error("{0}")]
    NotFound(String),
    /// The database cannot be reached: connection refused, pool exhausted (`503 store_unavailable`).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database answered with an error (`500 internal`).
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    /// A stored row holds a value the wire type cannot carry (`500 internal`); only a foreign
    /// write can cause this.
    #[error("stored row is corrupt: {0}")]
    Corrupt(String),
    /// The configuration cannot be honoured; reported at start, never to a client.
    #[error("invalid rental configuration: {0}")]
    Config(String),
    /// The data directory or the listener failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// A `400` with `code`.
    pub(crate) fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Error::Invalid {
            code,
            message: message.into(),
        }
    }
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
            Error::Invalid { code, message } => ApiError::bad_request(code, message),
            e @ Error::EmptyChange => ApiError::bad_request("empty_change", e.to_string()),
            e @ Error::InvalidQuery(_) => ApiError::bad_request("invalid_query", e.to_string()),
            Error::InvalidId(message) => ApiError::bad_request("invalid_id", message),
            Error::NotFound(message) => ApiError::not_found(message),
            Error::Unavailable(detail) => {
                // The detail (addresses, driver messages) goes to the log only.
                tracing::warn!(%detail, "database unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the database cannot be reached right now",
                )
            }
            e @ (Error::Database(_) | Error::Corrupt(_) | Error::Config(_) | Error::Io(_)) => {
                ApiError::internal(e)
            }
        };
        api.into_response()
    }
}
