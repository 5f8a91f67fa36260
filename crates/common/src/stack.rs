//! The middleware stack and the routes every instance has.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, FromRequestParts, MatchedPath, Request};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{BoxError, Router};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestId, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;

use crate::error::ApiError;

/// Who this instance is: its role (`gateway`) and its id (`gateway-1`).
#[derive(Debug, Clone)]
pub struct Instance {
    /// The role name.
    pub role: &'static str,
    /// The instance id, unique in the topology; sent back in `X-Served-By`.
    pub id: Arc<str>,
}

impl Instance {
    /// An instance of `role` named `id`.
    pub fn new(role: &'static str, id: impl Into<Arc<str>>) -> Self {
        Self {
            role,
            id: id.into(),
        }
    }
}

/// Makes request ids for requests that come without one: random version-4 UUIDs from the
/// thread's userspace generator. tower-http's `MakeRequestUuid` asks the kernel for randomness on
/// every request (a `getrandom` call), which showed in the balancer's profile; ids need to be
/// unique, not secret.
#[derive(Debug, Clone, Copy, Default)]
pub struct FastRequestId;

impl MakeRequestId for FastRequestId {
    fn make_request_id<B>(
        &mut self,
        _: &axum::http::Request<B>,
    ) -> Option<tower_http::request_id::RequestId> {
        let id = uuid::Builder::from_random_bytes(rand::random::<[u8; 16]>()).into_uuid();
        let mut buf = uuid::Uuid::encode_buffer();
        HeaderValue::from_str(id.hyphenated().encode_lower(&mut buf))
            .ok()
            .map(tower_http::request_id::RequestId::new)
    }
}

/// Limits of the standard stack.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body an extractor accepts (`413` beyond).
    pub body_bytes: usize,
    /// Longest a handler may run (`504` beyond).
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            body_bytes: 64 * 1024,
            timeout: Duration::from_secs(30),
        }
    }
}

/// The request id of the current request (from `X-Request-Id`, or made at the edge of this
/// instance); pass it to every outgoing call.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let id = parts
            .extensions
            .get::<tower_http::request_id::RequestId>()
            .and_then(|r| r.header_value().to_str().ok())
            .or_else(|| {
                parts
                    .headers
                    .get(api::headers::REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
            })
            .unwrap_or("-")
            .to_string();
        Ok(RequestId(id))
    }
}

/// Adds the routes and middleware every instance has to a service's own `routes`:
/// `GET /health`, `GET /metrics`, JSON `404` and `405`, and the layers below.
///
/// Layers wrap from the inside out; a request meets them in this order:
/// 0. lingering close: a body the service refused before reading it all is drained in the
///    background (bounded), so that the client reads the answer instead of a reset (`linger`);
/// 1. request id: taken from `X-Request-Id` or made (UUID), and echoed on the answer;
/// 2. `X-Served-By: <id>` on every answer;
/// 3. panic catcher: a handler panic becomes a JSON `500`, never a dropped connection;
/// 4. metrics: count and latency by route, method and status;
/// 5. timeout: a handler slower than `limits.timeout` is answered `504`;
/// 6. body limit: extractors refuse bodies over `limits.body_bytes` with `413`.
pub fn wrap(routes: Router, instance: &Instance, limits: Limits) -> Router {
    crate::metrics::handle();
    let health_id = instance.id.clone();
    let health_role = instance.role;
    let routes = routes
        .route(
            "/health",
            get(move || {
                let id = health_id.clone();
                async move {
                    axum::Json(serde_json::json!({"status": "ok", "id": &*id, "role": health_role}))
                }
            }),
        )
        .route("/metrics", get(crate::metrics::render))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);

    let served_by = HeaderValue::from_str(&instance.id).unwrap_or(HeaderValue::from_static("-"));
    let metrics_instance = instance.clone();
    let timeout = limits.timeout;
    routes.layer(
        ServiceBuilder::new()
            .layer(crate::linger::LingerLayer)
            .layer(SetRequestIdLayer::x_request_id(FastRequestId))
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(SetResponseHeaderLayer::overriding(
                HeaderName::from_static(api::headers::SERVED_BY),
                served_by,
            ))
            .layer(CatchPanicLayer::custom(|_| {
                ApiError::internal("handler panicked").into_response()
            }))
            .layer(middleware::from_fn(move |req, next| {
                record(metrics_instance.clone(), req, next)
            }))
            .layer(axum::error_handling::HandleErrorLayer::new(
                |e: BoxError| async move { timeout_error(e) },
            ))
            .layer(tower::timeout::TimeoutLayer::new(timeout))
            .layer(DefaultBodyLimit::max(limits.body_bytes)),
    )
}

fn timeout_error(e: BoxError) -> ApiError {
    if e.is::<tower::timeout::error::Elapsed>() {
        ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            "the request took longer than this service allows",
        )
    } else {
        ApiError::internal(e)
    }
}

async fn record(instance: Instance, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = req.method().to_string();
    let start = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    let labels = [
        ("role", instance.role.to_string()),
        ("id", instance.id.to_string()),
        ("route", route),
        ("method", method),
        ("status", status),
    ];
    metrics::counter!("scalelab_http_requests_total", &labels).increment(1);
    metrics::histogram!("scalelab_http_request_duration_seconds", &labels[..4])
        .record(start.elapsed().as_secs_f64());
    resp
}

/// The JSON `404` every service answers for an unknown route.
pub async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!(
        "no route for {} {}",
        req.method(),
        req.uri().path()
    ))
}

/// The JSON `405` every service answers for a known route and a wrong method.
pub async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_request_ids_are_distinct_v4_uuids() {
        let req = axum::http::Request::new(());
        let mut maker = FastRequestId;
        let ids: std::collections::HashSet<String> = (0..1000)
            .map(|_| {
                let id = maker.make_request_id(&req).expect("an id");
                let text = id.header_value().to_str().unwrap().to_string();
                let parsed = uuid::Uuid::parse_str(&text).expect("a UUID");
                assert_eq!(parsed.get_version_num(), 4, "{text}");
                text
            })
            .collect();
        assert_eq!(ids.len(), 1000);
    }
}
