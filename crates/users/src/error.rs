//! The users service's one error type and its one conversion into an HTTP answer.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use common::ApiError;

/// Everything that can go wrong in `users`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A field breaks a rule of `api::wire::users` (`400` with the rule's code).
    #[error("{message}")]
    Invalid {
        /// `invalid_email`, `invalid_name`, ...
        code: &'static str,
        /// For people.
        message: String,
    },
    /// No such user (`404 not_found`).
    #[error("{0}")]
    NotFound(String),
    /// The username belongs to another user, on whichever shard (`409 username_taken`).
    #[error("the username is already taken")]
    UsernameTaken,
    /// A profile with this id exists (`409 id_taken`).
    #[error("a profile with this id already exists")]
    IdTaken,
    /// One shard's database does not answer (`503 shard_unavailable`): only its users are affected.
    #[error("shard {shard} is unavailable: {detail}")]
    ShardDown {
        /// The shard number.
        shard: u32,
        /// The driver's message (logged, never shown).
        detail: String,
    },
    /// A database does not answer; turned into [`Error::ShardDown`] once the shard is known.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A database refused a query (`500 internal`).
    #[error("database error: {0}")]
    Database(sqlx::Error),
    /// The configuration cannot work; reported at start.
    #[error("invalid users configuration: {0}")]
    Config(String),
    /// A bug or an impossible state (`500 internal`).
    #[error("internal: {0}")]
    Internal(String),
    /// The listener or the data directory failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl From<sqlx::Error> for Error {
    /// A database that is not there is worth a `503` (`common::sql::is_unavailable`); one that
    /// refused the query is a bug; a URL that cannot work is the configuration's fault.
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::Configuration(message) => Error::Config(message.to_string()),
            e if common::sql::is_unavailable(&e) => Error::Unavailable(e.to_string()),
            other => Error::Database(other),
        }
    }
}

impl From<api::wire::users::Invalid> for Error {
    fn from(i: api::wire::users::Invalid) -> Self {
        Error::Invalid {
            code: i.code,
            message: i.message,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let message = self.to_string();
        let api = match self {
            Error::Invalid { code, message } => ApiError::bad_request(code, message),
            Error::NotFound(m) => ApiError::not_found(m),
            Error::UsernameTaken => ApiError::new(StatusCode::CONFLICT, "username_taken", message),
            Error::IdTaken => ApiError::new(StatusCode::CONFLICT, "id_taken", message),
            Error::ShardDown { shard, detail } => {
                tracing::warn!(shard, %detail, "shard unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "shard_unavailable",
                    format!(
                        "the database of shard {shard} cannot be reached; users on other shards are unaffected"
                    ),
                )
            }
            Error::Unavailable(detail) => {
                tracing::warn!(%detail, "database unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "a database cannot be reached right now",
                )
            }
            e @ (Error::Database(_) | Error::Config(_) | Error::Internal(_) | Error::Io(_)) => {
                ApiError::internal(e)
            }
        };
        api.into_response()
    }
}
