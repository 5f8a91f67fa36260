//! The crate's one error type and its one conversion into an HTTP answer.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use common::ApiError;

/// Everything that can go wrong in `auth`, at start or while answering a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Unknown user or wrong password: deliberately one variant, so that answers cannot tell the
    /// two apart.
    #[error("invalid username or password")]
    InvalidCredentials,
    /// The username is not 3 to 64 characters of `[A-Za-z0-9_.-]`.
    #[error("the username must be 3 to 64 characters of letters, digits, '_', '.' or '-'")]
    InvalidUsername,
    /// The requested role is not one of `[auth] roles` (listed in the message).
    #[error("the role must be one of: {0}")]
    InvalidRole(String),
    /// A body that is not what the route takes (`400 invalid_body`).
    #[error("{0}")]
    InvalidBody(String),
    /// The password is shorter than the configured minimum or longer than 1024 bytes.
    #[error("the password must be {min} to {max} characters long")]
    WeakPassword {
        /// The configured minimum.
        min: usize,
        /// The fixed maximum.
        max: usize,
    },
    /// An account of this name already exists.
    #[error("the username is already taken")]
    UsernameTaken,
    /// No account of this name.
    #[error("no account named {0:?}")]
    AccountNotFound(String),
    /// The credential store failed: `503 store_unavailable` when it cannot be reached
    /// (`common::sql::is_unavailable`), `500 internal` when it refused a statement.
    #[error("credential store: {0}")]
    Store(sqlx::Error),
    /// The configuration cannot work (bad argon2 parameters, unsupported URL, ...).
    #[error("invalid auth configuration: {0}")]
    Config(String),
    /// The signing key could not be read, made or parsed.
    #[error("signing key {path}: {detail}")]
    Key {
        /// The key file.
        path: String,
        /// What went wrong.
        detail: String,
    },
    /// Hashing, signing or a blocking task failed.
    #[error("internal: {0}")]
    Internal(String),
    /// The listener failed while serving.
    #[error("serve: {0}")]
    Serve(#[from] std::io::Error),
}

impl From<sqlx::Error> for Error {
    /// A database URL that cannot work is a configuration error; every other failure is the
    /// store's.
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::Configuration(message) => Error::Config(message.to_string()),
            other => Error::Store(other),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let message = self.to_string();
        let api = match self {
            Error::InvalidCredentials => {
                ApiError::new(StatusCode::UNAUTHORIZED, "invalid_credentials", message)
            }
            Error::InvalidUsername => ApiError::bad_request("invalid_username", message),
            Error::InvalidRole(_) => ApiError::bad_request("invalid_role", message),
            Error::InvalidBody(_) => ApiError::bad_request("invalid_body", message),
            Error::WeakPassword { .. } => ApiError::bad_request("weak_password", message),
            Error::UsernameTaken => ApiError::new(StatusCode::CONFLICT, "username_taken", message),
            Error::AccountNotFound(_) => ApiError::not_found(message),
            Error::Store(e) if common::sql::is_unavailable(&e) => {
                // The detail (host names, SQL) stays in the log.
                tracing::error!(error = %e, "credential store failed");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the credential store is unavailable; try again later",
                )
            }
            Error::Store(_)
            | Error::Config(_)
            | Error::Key { .. }
            | Error::Internal(_)
            | Error::Serve(_) => ApiError::internal(message),
        };
        api.into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn answer(e: Error) -> (StatusCode, serde_json::Value) {
        let resp = e.into_response();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        (status, serde_json::from_slice(&bytes).expect("json body"))
    }

    #[tokio::test]
    async fn each_error_has_its_status_and_code() {
        let cases = [
            (Error::InvalidCredentials, 401, "invalid_credentials"),
            (Error::InvalidUsername, 400, "invalid_username"),
            (
                Error::InvalidRole("user, admin".into()),
                400,
                "invalid_role",
            ),
            (
                Error::WeakPassword { min: 8, max: 1024 },
                400,
                "weak_password",
            ),
            (Error::UsernameTaken, 409, "username_taken"),
            (Error::AccountNotFound("bob".into()), 404, "not_found"),
            (
                Error::Store(sqlx::Error::PoolTimedOut),
                503,
                "store_unavailable",
            ),
            (Error::Internal("x".into()), 500, "internal"),
        ];
        for (err, status, code) in cases {
            let (s, body) = answer(err).await;
            assert_eq!(s.as_u16(), status, "{code}");
            assert_eq!(body["error"], code);
            assert!(body["message"].is_string());
        }
    }

    #[tokio::test]
    async fn server_errors_do_not_leak_details() {
        let (_, body) = answer(Error::Key {
            path: "/secret/path.pem".into(),
            detail: "permission denied".into(),
        })
        .await;
        let text = body.to_string();
        assert!(!text.contains("/secret/path.pem") && !text.contains("permission"));
        let (_, body) = answer(Error::Store(sqlx::Error::Protocol(
            "password authentication failed for user root".into(),
        )))
        .await;
        assert!(!body.to_string().contains("root"));
    }
}
