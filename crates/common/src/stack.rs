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
    /// When set, a request that changes something (any method but GET, HEAD and OPTIONS) needs
    /// this credential in `X-Service-Token` (`401 service_token_required` otherwise): what an
    /// internal role bound beyond loopback requires, given by the deployment.
    pub service_token: Option<Arc<str>>,
}

impl Instance {
    /// An instance of `role` named `id`.
    pub fn new(role: &'static str, id: impl Into<Arc<str>>) -> Self {
        Self {
            role,
            id: id.into(),
            service_token: None,
        }
    }

    /// The same instance, requiring `token` on requests that change something.
    pub fn requiring_service_token(mut self, token: impl Into<Arc<str>>) -> Self {
        self.service_token = Some(token.into());
        self
    }
}

/// Refuses a request that changes something without the instance's service credential.
async fn require_service_token(token: Arc<str>, req: Request, next: Next) -> Response {
    use axum::http::Method;
    let reads = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let given = req
        .headers()
        .get(api::headers::SERVICE_TOKEN)
        .map(|v| v.as_bytes());
    // Constant time: the comparison does not tell how much of a guess was right.
    let matches = given.is_some_and(|g| {
        g.len() == token.len()
            && g.iter()
                .zip(token.as_bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
    if reads || matches {
        return next.run(req).await;
    }
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "service_token_required",
        "this internal service takes changes only from the deployment's roles (X-Service-Token)",
    )
    .into_response()
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
        Some(tower_http::request_id::RequestId::new(new_request_id()))
    }
}

/// A new request id: a random version-4 UUID from the thread's userspace generator.
pub fn new_request_id() -> HeaderValue {
    let mut buf = [0u8; REQUEST_ID_LEN];
    // A UUID's text is always a valid header value.
    HeaderValue::from_str(request_id_text(&mut buf)).unwrap_or(HeaderValue::from_static("-"))
}

/// Length of a made request id.
pub const REQUEST_ID_LEN: usize = 36;

/// A new request id ([`new_request_id`]'s kind), written into `buf`.
///
/// The bits come from a per-thread xoshiro generator seeded from the OS once per thread: request
/// ids must be unique, not secret, and a ChaCha block per id showed in the gateway's profile.
pub fn request_id_text(buf: &mut [u8; REQUEST_ID_LEN]) -> &str {
    use rand::{Rng, SeedableRng};
    thread_local! {
        static IDS: std::cell::RefCell<rand::rngs::SmallRng> =
            std::cell::RefCell::new(rand::rngs::SmallRng::from_entropy());
    }
    let bytes: [u8; 16] = IDS.with(|rng| rng.borrow_mut().r#gen());
    let id = uuid::Builder::from_random_bytes(bytes).into_uuid();
    id.hyphenated().encode_lower(buf)
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

    // Inside the stack's layers, so that a refusal is counted and carries the request id.
    let routes = match instance.service_token.clone() {
        Some(token) => routes.layer(middleware::from_fn(move |req, next| {
            require_service_token(token.clone(), req, next)
        })),
        None => routes,
    };
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
    let route = req.extensions().get::<MatchedPath>().cloned();
    let method = req.method().clone();
    let start = Instant::now();
    // Work in flight, what an autoscaler reads: probes and scrapes are not work.
    let probe = matches!(req.uri().path(), "/health" | "/metrics" | "/ready");
    let _in_flight = (!probe).then(|| InFlight::start(&instance));
    let resp = next.run(req).await;
    let (requests, duration) = http_handles(&instance, route, method, resp.status().as_u16());
    requests.increment(1);
    duration.record(start.elapsed().as_secs_f64());
    resp
}

/// One request in `scalelab_http_in_flight{role,id}` until dropped (also when the client goes away
/// and the handler is cancelled).
pub struct InFlight(metrics::Gauge);

impl InFlight {
    /// Counts one request in flight on `gauge` (from [`InFlight::gauge`]) until dropped.
    pub fn on(gauge: &metrics::Gauge) -> Self {
        gauge.increment(1.0);
        InFlight(gauge.clone())
    }

    /// `instance`'s gauge, for [`InFlight::on`].
    pub fn gauge(instance: &Instance) -> metrics::Gauge {
        metrics::gauge!(
            "scalelab_http_in_flight",
            "role" => instance.role.to_string(),
            "id" => instance.id.to_string()
        )
    }

    /// Counts one request of `instance` in flight until the value is dropped.
    pub fn start(instance: &Instance) -> Self {
        thread_local! {
            /// The gauge by instance id address (an instance's id is made once).
            static GAUGES: std::cell::RefCell<std::collections::HashMap<usize, (Arc<str>, metrics::Gauge)>> =
                std::cell::RefCell::new(std::collections::HashMap::new());
        }
        let key = Arc::as_ptr(&instance.id).cast::<u8>() as usize;
        let gauge = GAUGES.with(|g| {
            g.borrow_mut()
                .entry(key)
                .or_insert_with(|| {
                    let gauge = metrics::gauge!(
                        "scalelab_http_in_flight",
                        "role" => instance.role.to_string(),
                        "id" => instance.id.to_string()
                    );
                    (instance.id.clone(), gauge)
                })
                .1
                .clone()
        });
        gauge.increment(1.0);
        InFlight(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// A route's request counter (by status) and duration histogram.
pub type HttpHandles = (metrics::Counter, metrics::Histogram);

/// One entry of [`HTTP_HANDLES`]: the handles, and the instance id and route whose addresses are
/// its key, kept alive so that no other instance or route can take those addresses while the
/// entry exists.
struct HttpEntry {
    _id: Arc<str>,
    _route: Option<MatchedPath>,
    handles: HttpHandles,
}

thread_local! {
    /// Metric handles by instance, route, method and status, per thread: registering a labelled
    /// metric formats, hashes and compares five labels, which costs more than the whole handler of
    /// a cache hit; a handle, once made, is an atomic. Keyed by the addresses of the instance id
    /// and of the router's route (both made once), so the lookup allocates nothing.
    static HTTP_HANDLES: std::cell::RefCell<
        std::collections::HashMap<(usize, usize, axum::http::Method, u16), HttpEntry>,
    > = std::cell::RefCell::new(std::collections::HashMap::new());
}

fn http_handles(
    instance: &Instance,
    route: Option<MatchedPath>,
    method: axum::http::Method,
    status: u16,
) -> HttpHandles {
    let id_key = Arc::as_ptr(&instance.id).cast::<u8>() as usize;
    let route_key = route.as_ref().map_or(0, |p| p.as_str().as_ptr() as usize);
    HTTP_HANDLES.with(|h| {
        let mut h = h.borrow_mut();
        let key = (id_key, route_key, method, status);
        if let Some(found) = h.get(&key) {
            return found.handles.clone();
        }
        let handles = route_handles(
            instance,
            route.as_ref().map_or("unmatched", |p| p.as_str()),
            &key.2,
            status,
        );
        h.insert(
            key,
            HttpEntry {
                _id: instance.id.clone(),
                _route: route,
                handles: handles.clone(),
            },
        );
        handles
    })
}

/// The request counter and duration histogram of `route` (the router's pattern, `/data/{key}`),
/// `method` and `status` of `instance`: what [`wrap`]'s metrics layer records, for a server that
/// answers some requests without the stack (the gateway's front path). Registering formats and
/// hashes five labels: make the handles once, then use them.
pub fn route_handles(
    instance: &Instance,
    route: &str,
    method: &axum::http::Method,
    status: u16,
) -> HttpHandles {
    let labels = [
        ("role", instance.role.to_string()),
        ("id", instance.id.to_string()),
        ("route", route.to_string()),
        ("method", method.to_string()),
        ("status", status.to_string()),
    ];
    (
        metrics::counter!("scalelab_http_requests_total", &labels),
        metrics::histogram!("scalelab_http_request_duration_seconds", &labels[..4]),
    )
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
    fn made_request_ids_are_distinct_version_4_uuids_across_threads() {
        let mut seen = std::collections::HashSet::new();
        let ids: Vec<String> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    (0..500)
                        .map(|_| {
                            let mut buf = [0u8; REQUEST_ID_LEN];
                            request_id_text(&mut buf).to_string()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .flat_map(|t| t.join().expect("thread"))
            .collect();
        for id in ids {
            let parsed = uuid::Uuid::parse_str(&id).expect("a UUID");
            assert_eq!(parsed.get_version_num(), 4, "{id}");
            assert!(seen.insert(id), "a repeated id");
        }
    }

    /// The value of the request counter with these labels in the process-wide page.
    fn requests(page: &str, labels: &[&str]) -> f64 {
        page.lines()
            .filter(|l| l.starts_with("scalelab_http_requests_total{"))
            .filter(|l| labels.iter().all(|want| l.contains(want)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    #[tokio::test]
    async fn every_answer_is_counted_for_its_own_instance_route_and_status() {
        use crate::testing::{call, get};
        // Two instances in one process, on one thread: each counts its own answers.
        let app = |id: &str| {
            wrap(
                Router::new().route("/items/{id}", axum::routing::get(|| async { "ok" })),
                &Instance::new("metricstest", id.to_string()),
                Limits::default(),
            )
        };
        let (one, two) = (app("metrics-one"), app("metrics-two"));
        for _ in 0..3 {
            assert_eq!(call(&one, get("/items/1")).await.status, StatusCode::OK);
        }
        assert_eq!(call(&two, get("/items/2")).await.status, StatusCode::OK);
        assert_eq!(
            call(&two, get("/nowhere")).await.status,
            StatusCode::NOT_FOUND
        );
        let page = crate::metrics::handle().render();
        let of = |id: &str, route: &str, status: &str| {
            requests(
                &page,
                &[
                    &format!("id=\"{id}\""),
                    &format!("route=\"{route}\""),
                    &format!("status=\"{status}\""),
                ],
            )
        };
        assert_eq!(of("metrics-one", "/items/{id}", "200"), 3.0, "{page}");
        assert_eq!(of("metrics-two", "/items/{id}", "200"), 1.0, "{page}");
        assert_eq!(of("metrics-two", "unmatched", "404"), 1.0, "{page}");
        assert_eq!(of("metrics-one", "unmatched", "404"), 0.0, "{page}");
    }

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

#[cfg(test)]
mod service_token_tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    use super::*;

    async fn status(app: &Router, method: &str, token: Option<&str>) -> StatusCode {
        let mut r = Request::builder().method(method).uri("/thing");
        if let Some(t) = token {
            r = r.header(api::headers::SERVICE_TOKEN, t);
        }
        app.clone()
            .oneshot(r.body(Body::empty()).unwrap())
            .await
            .unwrap()
            .status()
    }

    /// With a credential set, reads pass and changes need it exactly; without, everything passes.
    #[tokio::test]
    async fn changes_need_the_service_token_when_one_is_set() {
        let routes = || Router::new().route("/thing", get(|| async { "r" }).put(|| async { "w" }));
        let guarded = wrap(
            routes(),
            &Instance::new("db", "db-1").requiring_service_token("s3cret-token"),
            Limits::default(),
        );
        assert_eq!(status(&guarded, "GET", None).await, StatusCode::OK);
        assert_eq!(
            status(&guarded, "PUT", None).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status(&guarded, "PUT", Some("s3cret-tokem")).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status(&guarded, "PUT", Some("s3cret")).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status(&guarded, "PUT", Some("s3cret-token")).await,
            StatusCode::OK
        );
        let open = wrap(routes(), &Instance::new("db", "db-1"), Limits::default());
        assert_eq!(status(&open, "PUT", None).await, StatusCode::OK);
    }
}
