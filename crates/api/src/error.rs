//! The one error body of every scalelab HTTP answer that is not a success.

use serde::{Deserialize, Serialize};

/// `{"error": "<stable_code>", "message": "<human sentence>"}`: what every service answers on failure.
///
/// `error` is a stable, machine-readable code (`unauthorized`, `rate_limited`, `not_found`, ...)
/// that clients may branch on; `message` is for people and may change between versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Stable machine-readable code, `snake_case`.
    pub error: String,
    /// Human-readable sentence; never contains internals of a 5xx.
    pub message: String,
}

impl ErrorBody {
    /// Builds a body from a code and a message.
    pub fn new(error: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            message: message.into(),
        }
    }

    /// The body serialised as JSON bytes (cannot fail: two strings).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_else(|_| b"{\"error\":\"internal\"}".to_vec())
    }
}
