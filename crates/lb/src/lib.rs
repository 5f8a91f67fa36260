//! The load balancer (`lb`): an L7 reverse proxy in front of the gateways.
//!
//! Every request outside the reserved admin prefix [`ADMIN_PREFIX`] is forwarded whole — method,
//! path, query, headers, streamed body — to one gateway picked by a [`balance::Pool`], which also
//! runs the active health checks, marks a backend down on a connect error or timeout, and retries a
//! request that never left on the next healthy backend. Before that, [`edge`] applies the optional
//! client allow/deny lists and per-client-IP rate limit; [`proxy`] rewrites the headers (hop-by-hop
//! out, `X-Forwarded-*` in). [`admin`] serves per-backend stats and Prometheus metrics.
//!
//! Start reading at [`router`].

pub mod admin;
pub mod edge;
pub mod h1;
pub mod proxy;
pub mod workers;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use balance::{Pool, PoolConfig};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};

/// Admin routes live under this prefix; nothing under it is ever proxied.
pub const ADMIN_PREFIX: &str = "/_lb";

/// The `[lb]` section of the topology.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Base URLs of the gateways (`http://127.0.0.1:5000`); `scalelab up` fills them from
    /// `[instances] gateway` when left empty.
    pub backends: Vec<String>,
    /// How a gateway is chosen, reached and health-checked (`[lb.pool]`: `strategy`,
    /// `connect_timeout_ms`, `response_timeout_ms`, `max_attempts`, `[lb.pool.health]`).
    pub pool: PoolConfig,
    /// Client networks allowed in (CIDR, e.g. `"10.0.0.0/8"`); empty allows everyone not denied.
    pub allow: Vec<IpNet>,
    /// Client networks refused with `403`; checked before `allow`.
    pub deny: Vec<IpNet>,
    /// Optional per-client-IP rate limit (`429` beyond), like nginx's `limit_req`.
    pub rate_limit: Option<edge::EdgeRateLimit>,
    /// Largest request body forwarded, in bytes (`413` beyond), like nginx's `client_max_body_size`.
    pub max_body_bytes: u64,
    /// The supervisor's control API (`http://127.0.0.1:PORT`), set by `scalelab up`: the gateway
    /// pool then follows its list of gateways as they are scaled, drained and stopped. Empty: the
    /// pool is `backends` (and their DNS names with `pool.resolve`).
    pub membership_url: String,
    /// How client connections are served: `direct` (the balancer's own HTTP/1 hop, [`h1`]; a
    /// connection that needs anything else, h2c included, goes on with hyper) or `hyper` (every
    /// connection through hyper and [`proxy::forward`]). Both give the same answers.
    pub engine: Engine,
    /// Worker threads of the `direct` engine, each with its own single-threaded runtime and its
    /// share of the client connections (nginx's `worker_processes`); 0: one per core this
    /// process may run on.
    pub workers: usize,
    /// A client connection idle this long between requests (or before its first) is closed, in
    /// milliseconds (nginx's `keepalive_timeout`, 75 s).
    pub keepalive_timeout_ms: u64,
    /// A request head must arrive within this long of its first bytes, else the connection is
    /// closed, in milliseconds (nginx's `client_header_timeout`, 60 s).
    pub client_header_timeout_ms: u64,
    /// A client that takes no bytes of its answer for this long is closed, in milliseconds
    /// (nginx's `send_timeout`, 60 s; between two writes, not for the whole answer). The `direct`
    /// engine's connections, also those it hands to hyper; not the `hyper` engine's.
    pub send_timeout_ms: u64,
}

/// How the balancer serves its client connections (`[lb] engine`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    /// The balancer's own HTTP/1 hop ([`h1`]), handing rare requests to hyper.
    #[default]
    Direct,
    /// hyper's server and client for every request ([`proxy::forward`]).
    Hyper,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            backends: Vec::new(),
            pool: PoolConfig::default(),
            allow: Vec::new(),
            deny: Vec::new(),
            rate_limit: None,
            max_body_bytes: 10 * 1024 * 1024,
            membership_url: String::new(),
            engine: Engine::Direct,
            workers: 0,
            keepalive_timeout_ms: 75_000,
            client_header_timeout_ms: 60_000,
            send_timeout_ms: 60_000,
        }
    }
}

impl Config {
    /// Every setting the balancer cannot honour, as `field: problem` lines (empty when the
    /// section is valid). `scalelab up` reports them before starting anything; [`AppState::new`]
    /// refuses to start on any of them.
    pub fn validate(&self) -> Vec<String> {
        let mut p = common::validate::Problems::new();
        p.check(
            !self.backends.is_empty(),
            "backends",
            "no backends: set [lb] backends or [instances] gateway",
        );
        for (i, url) in self.backends.iter().enumerate() {
            p.url(&format!("backends[{i}]"), url, common::validate::http_url);
        }
        p.nested("pool", self.pool.validate());
        if let Some(limit) = &self.rate_limit {
            p.check(
                limit.requests_per_second > 0,
                "rate_limit.requests_per_second",
                "must be at least 1",
            );
            p.check(limit.burst > 0, "rate_limit.burst", "must be at least 1");
        }
        p.check(
            self.max_body_bytes > 0,
            "max_body_bytes",
            "must be at least 1",
        );
        p.check(
            self.keepalive_timeout_ms > 0,
            "keepalive_timeout_ms",
            "must be at least 1",
        );
        p.check(
            self.client_header_timeout_ms > 0,
            "client_header_timeout_ms",
            "must be at least 1",
        );
        p.check(
            self.send_timeout_ms > 0,
            "send_timeout_ms",
            "must be at least 1",
        );
        p.into_vec()
    }
}

/// Why the balancer could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration cannot be honoured (every problem of [`Config::validate`], joined).
    #[error("invalid lb configuration: {0}")]
    Config(String),
    /// Serving failed.
    #[error("serving failed: {0}")]
    Io(#[from] std::io::Error),
}

/// What every request handler of the balancer shares.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The gateways.
    pub pool: Arc<Pool>,
    /// Access lists and rate limit.
    pub edge: Arc<edge::Edge>,
    /// Who this instance is.
    pub instance: common::Instance,
    /// Body size limit.
    pub max_body_bytes: u64,
    /// How long a client may be idle, or take to send a head (the `direct` engine's connections
    /// and hyper's after a hand-over).
    pub client_timeouts: common::handoff::ClientTimeouts,
}

impl AppState {
    /// Builds the state; does not start health checks (see [`serve`]).
    pub fn new(config: Config, instance: common::Instance) -> Result<Self, Error> {
        if let Some(problems) = common::validate::joined(&config.validate()) {
            return Err(Error::Config(problems));
        }
        Ok(Self {
            pool: Pool::new("gateway", &config.backends, config.pool.clone()),
            edge: Arc::new(edge::Edge::new(&config)),
            instance,
            max_body_bytes: config.max_body_bytes,
            client_timeouts: common::handoff::ClientTimeouts {
                idle: Duration::from_millis(config.keepalive_timeout_ms),
                head: Duration::from_millis(config.client_header_timeout_ms),
                send: Duration::from_millis(config.send_timeout_ms),
            },
        })
    }
}

/// The balancer's routes: admin under [`ADMIN_PREFIX`], everything else proxied.
///
/// Layers, outermost first: request id (kept from the client or made, sent on to the gateway and
/// echoed back), then the edge checks (deny/allow, rate limit) which run before any proxying.
pub fn router(state: AppState) -> Router {
    common::metrics::handle();
    let admin = Router::new()
        .route("/health", get(admin::health))
        .route("/stats", get(admin::stats))
        .route("/metrics", get(admin::metrics))
        .fallback(common::stack::not_found)
        .method_not_allowed_fallback(common::stack::method_not_allowed);
    Router::new()
        .nest(ADMIN_PREFIX, admin)
        .fallback(proxy::forward)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            edge::check,
        ))
        .layer(
            ServiceBuilder::new()
                // A body refused early (`413`, an edge refusal) is drained, not reset.
                .layer(common::linger::LingerLayer)
                .layer(SetRequestIdLayer::x_request_id(
                    common::stack::FastRequestId,
                ))
                .layer(PropagateRequestIdLayer::x_request_id()),
        )
        .with_state(state)
}

/// Runs the balancer on `listener` until `shutdown`, with active health checks on the gateways.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    instance: common::Instance,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let backends = config.backends.clone();
    let supervisor = (!config.membership_url.is_empty()).then(|| {
        format!(
            "{}/members/gateway",
            config.membership_url.trim_end_matches('/')
        )
    });
    let engine = config.engine;
    let workers = match config.workers {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let state = AppState::new(config, instance)?;
    let _checks = state.pool.spawn_health_checks();
    let _membership = state.pool.spawn_membership(&backends, supervisor);
    let _sweeper = state.edge.spawn_sweeper();
    tracing::info!(
        strategy = state.pool.strategy(),
        ?engine,
        backends = ?state.pool.backends().iter().map(|b| b.url.as_str()).collect::<Vec<_>>(),
        "load balancer ready"
    );
    let app = router(state.clone());
    match engine {
        Engine::Hyper => common::serve(listener, app, shutdown).await?,
        Engine::Direct => {
            let workers = std::sync::Arc::new(workers::Workers::start(workers)?);
            tracing::info!(workers = workers.len(), "direct HTTP/1 engine");
            let dealer = workers.clone();
            common::serve_connections(listener, shutdown, move |stream, peer, closing| {
                let (state, app) = (state.clone(), app.clone());
                // The connection moves to its worker's reactor.
                let stream = stream.into_std();
                dealer.run(async move {
                    let Ok(stream) = stream.and_then(tokio::net::TcpStream::from_std) else {
                        return;
                    };
                    h1::connection(stream, peer, state, app, closing).await;
                })
            })
            .await?;
            // Every connection has ended: the workers stop (off the runtime: joining blocks).
            let _ = tokio::task::spawn_blocking(move || drop(workers)).await;
        }
    }
    Ok(())
}
