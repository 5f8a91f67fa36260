//! Router tests: every request goes through `router(state).oneshot(..)`; the upstreams are small
//! servers on ephemeral ports (`fakes.rs`). Waits poll a condition with a deadline, never a fixed
//! sleep.

mod contract;
mod data;
mod fakes;
mod front;
mod fuses;
mod limits;
mod policy;
mod routes;
mod tasks;
mod tokens;
mod users;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, header};
use http_body_util::BodyExt;
use serde_json::json;
use tower::ServiceExt;

use crate::{AppState, CacheBackend, Config, router};
use fakes::{Auth, Db, Server};

/// The upstreams of one test and a gateway config pointing at them.
pub(crate) struct Harness {
    pub(crate) auth: Auth,
    pub(crate) db: Db,
    pub(crate) config: Config,
    /// Keeps the fakes running.
    _servers: Vec<Server>,
}

impl Harness {
    /// Auth, a db seeded with `my_data`, two services `service-a`/`service-b`, the local cache.
    pub(crate) async fn start() -> Harness {
        let (auth, auth_server) = Auth::start().await;
        let (db, db_server) = Db::start(&[
            ("my_data", json!({"hello": "world"})),
            ("zero", json!(0)),
            ("no", json!(false)),
            ("empty", json!("")),
        ])
        .await;
        let a = fakes::service("service-a").await;
        let b = fakes::service("service-b").await;
        let config = Config {
            auth_urls: vec![auth_server.url.clone()],
            service_urls: vec![a.url.clone(), b.url.clone()],
            db_url: db_server.url.clone(),
            cache: CacheBackend::Local,
            upstream_timeout_ms: 1000,
            ..Config::default()
        };
        Harness {
            auth,
            db,
            config,
            _servers: vec![auth_server, db_server, a, b],
        }
    }

    pub(crate) fn keep(&mut self, server: Server) {
        self._servers.push(server);
    }

    pub(crate) async fn state(&self) -> AppState {
        state_with(self.config.clone(), "gateway-1").await
    }

    pub(crate) async fn app(&self) -> Router {
        router(self.state().await)
    }

    pub(crate) fn user(&self) -> String {
        self.auth.token("alice", &["user"])
    }

    pub(crate) fn admin(&self) -> String {
        self.auth.token("root", &["admin"])
    }
}

pub(crate) async fn state_with(config: Config, id: &str) -> AppState {
    AppState::new(config, common::Instance::new("gateway", id.to_string()))
        .await
        .expect("valid config")
}

/// One answer, with its body parsed as JSON (the helper every crate's tests share).
pub(crate) type Answer = common::testing::Response;

/// A request builder with the usual defaults.
pub(crate) fn req(method: Method, uri: &str) -> axum::http::request::Builder {
    Request::builder().method(method).uri(uri)
}

pub(crate) fn get_with_token(uri: &str, token: &str) -> Request<Body> {
    req(Method::GET, uri)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .expect("request")
}

/// A request as if it came from `peer` over TCP (what `common::serve` provides).
pub(crate) fn from_peer(mut r: Request<Body>, peer: &str) -> Request<Body> {
    let addr: SocketAddr = peer.parse().expect("socket address");
    r.extensions_mut().insert(ConnectInfo(addr));
    r
}

/// Sends `r` through `app` (no socket) and reads the answer, which must be JSON: every gateway
/// answer is.
pub(crate) async fn send(app: &Router, r: Request<Body>) -> Answer {
    let a = common::testing::call(app, r).await;
    assert!(
        !a.json.is_null() || a.text.trim() == "null",
        "not JSON ({}): {:?}",
        a.status,
        a.text
    );
    a
}

/// Polls `cond` until it holds (10 s at most).
pub(crate) async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
