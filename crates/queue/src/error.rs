//! The queue's one error type, and the JSON answer each error becomes in a service.

use axum::http::StatusCode;
use common::ApiError;

/// Everything that can go wrong with a task or the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No task has this id (`404 not_found`).
    #[error("no task has the id {0:?}")]
    NotFound(String),
    /// The task is not in a status that allows this (`409 conflict`): cancelling a running or
    /// finished task, re-queueing one that is not dead.
    #[error("task {id} is {status}; {action} needs it {needs}")]
    Conflict {
        /// The task.
        id: String,
        /// Its current status.
        status: crate::Status,
        /// What was asked.
        action: &'static str,
        /// The status the action needs.
        needs: &'static str,
    },
    /// The worker no longer holds the task: its lease lapsed and another worker took it, or it
    /// was cancelled or finished (`409 lease_lost`). Nothing was written.
    #[error("worker {worker_id} no longer holds task {id}")]
    LeaseLost {
        /// The task.
        id: String,
        /// The worker that thought it held it.
        worker_id: String,
    },
    /// No handler has this type (`400 unknown_task_type`).
    #[error("{0}")]
    UnknownType(String),
    /// The payload lacks a field or has one of the wrong type (`400 invalid_payload`).
    #[error("{0}")]
    InvalidPayload(String),
    /// Not `high`, `normal` or `low` (`400 invalid_priority`).
    #[error("{0}")]
    InvalidPriority(String),
    /// A bad list filter or cursor (`400 invalid_query`).
    #[error("{0}")]
    InvalidQuery(String),
    /// The store cannot be reached (`503 queue_unavailable`); nothing was written.
    #[error("queue store unavailable: {0}")]
    Unavailable(String),
    /// The store refused a statement (`500 internal`).
    #[error("queue store error: {0}")]
    Database(#[source] sqlx::Error),
    /// A stored row cannot be read back (`500 internal`); only a foreign write can cause this.
    #[error("corrupt task row: {0}")]
    Corrupt(String),
    /// The configuration cannot be honoured; reported at start.
    #[error("invalid queue configuration: {0}")]
    Config(String),
    /// The data directory cannot be created.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl From<sqlx::Error> for Error {
    /// Tells a store that is not there (`503`, retry later: `common::sql::is_unavailable`) from
    /// one that refused the statement; a URL that cannot work is the configuration's fault.
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::Configuration(message) => Error::Config(message.to_string()),
            e if common::sql::is_unavailable(&e) => Error::Unavailable(e.to_string()),
            other => Error::Database(other),
        }
    }
}

impl Error {
    /// The JSON answer of this error. Store details go to the log, never to the client.
    pub fn to_api_error(&self) -> ApiError {
        let message = self.to_string();
        match self {
            Error::NotFound(_) => ApiError::not_found(message),
            Error::Conflict { .. } => ApiError::new(StatusCode::CONFLICT, "conflict", message),
            Error::LeaseLost { .. } => ApiError::new(StatusCode::CONFLICT, "lease_lost", message),
            Error::UnknownType(_) => ApiError::bad_request("unknown_task_type", message),
            Error::InvalidPayload(_) => ApiError::bad_request("invalid_payload", message),
            Error::InvalidPriority(_) => ApiError::bad_request("invalid_priority", message),
            Error::InvalidQuery(_) => ApiError::bad_request("invalid_query", message),
            Error::Unavailable(detail) => {
                tracing::warn!(%detail, "queue store unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "queue_unavailable",
                    "the task queue cannot be reached right now; nothing was submitted or changed",
                )
            }
            Error::Database(_) | Error::Corrupt(_) | Error::Config(_) | Error::Io(_) => {
                ApiError::internal(self)
            }
        }
    }
}
