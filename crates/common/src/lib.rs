//! What every scalelab service shares: serving with graceful shutdown ([`serve`]), the standard
//! middleware stack and routes ([`stack`]), the JSON error type and extractor ([`error`]), request ids
//! ([`RequestId`]), Prometheus metrics ([`metrics`]), logging setup ([`telemetry`]), the
//! per-entry-TTL cache of the cache service and the gateway's local cache ([`ttl_cache`]) and the
//! helpers of every `Config::validate` ([`validate`]).
//!
//! Crates that keep rows open their SQLite or PostgreSQL database through [`sql`].
//!
//! A service crate builds its own `Router` of business routes and hands it to [`stack::wrap`], which
//! adds `/health`, `/metrics`, the JSON `404`/`405` fallbacks and the middleware every instance has.

pub mod error;
pub mod linger;
pub mod metrics;
pub mod sql;
pub mod stack;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod time;
pub mod ttl_cache;
pub mod validate;

use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use tokio::net::TcpListener;

pub use error::{ApiError, Json};
pub use stack::{Instance, RequestId};

/// Serves `app` on `listener` until `shutdown` resolves, then drains in-flight requests.
///
/// Handlers can extract the peer address with `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Metrics recorded before the recorder exists are lost; install it before the first request.
    metrics::handle();
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// Milliseconds since the Unix epoch (for timestamps in bodies).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
