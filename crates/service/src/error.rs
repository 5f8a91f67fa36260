//! The service's one error type and its one conversion into an HTTP answer.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use common::ApiError;

/// Everything that can go wrong in the business service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Every slot stayed busy for [`crate::Config::queue_timeout_ms`]
    /// (`503 overloaded`, `Retry-After: 1`).
    #[error("every slot stayed busy for {waited_ms} ms")]
    Overloaded {
        /// How long the request waited.
        waited_ms: u64,
    },
    /// A failure injected on purpose by the `failure_rate` knob (`500 injected_failure`).
    #[error("this instance fails a share of its requests on purpose (failure_rate knob)")]
    Injected,
    /// A `PUT /knobs` value out of range (`400 invalid_knobs`).
    #[error("{0}")]
    InvalidKnobs(String),
    /// The work itself failed (the CPU task panicked); `500 internal`, detail in the log.
    #[error("processing failed: {0}")]
    Internal(String),
    /// The configuration cannot be honoured; reported at start, never to a client.
    #[error("invalid service configuration: {0}")]
    Config(String),
    /// The listener failed while serving.
    #[error("serving failed: {0}")]
    Io(#[from] std::io::Error),
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let api = match self {
            e @ Error::Overloaded { .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                format!("this instance is at capacity ({e}); retry shortly or elsewhere"),
            )
            // One second is about how long a queue of a few slots takes to drain.
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("1")),
            e @ Error::Injected => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "injected_failure",
                e.to_string(),
            ),
            e @ Error::InvalidKnobs(_) => ApiError::bad_request("invalid_knobs", e.to_string()),
            e @ (Error::Internal(_) | Error::Config(_) | Error::Io(_)) => ApiError::internal(e),
        };
        api.into_response()
    }
}
