//! The gateway: scalelab's public API. It checks tokens locally against auth's published keys,
//! applies rate limits, serves `GET /data` cache-aside (cache, then one shared db read per key),
//! sends `GET /process` to the business services through a balanced pool, and forwards logins and
//! registrations to `auth`.
//!
//! Start reading at [`router`] (and [`serve`], which puts the front path of `front.rs` before it:
//! `GET /data` answered by the gateway's own HTTP/1.1 engine with the router's own admission and
//! read, everything else handed to the router), then `policy.rs` (the route table: token rule, role, guest rule and
//! rate limit bucket of every route, the only place that decides access), `guard.rs` (the
//! middleware that applies one route's entry), `features/` (the handlers, one module per feature),
//! `openapi.rs` (the OpenAPI document, from the handlers' annotations and the route table),
//! `state.rs` (the peers: typed clients from `api::client`, over a balanced pool where there are
//! several instances), `tokens.rs` (JWKS and token verification), `single_flight.rs` (one db read
//! per key however many misses wait for it), [`cache`] (the [`Cache`] trait and its three backends)
//! and `rate_limit.rs` (GCRA, local and Redis).
//!
//! Routes (all answers carry `X-Served-By` and `X-Request-Id`; errors are
//! `{"error": code, "message": text}`):
//!
//! | route | token | what |
//! |---|---|---|
//! | `POST /login`, `POST /auth/login` | no | `{"username","password"}` → `{"token","token_type","expires_in"}` |
//! | `POST /register`, `POST /auth/register` | no (admin for `"role":"admin"`) | credentials in auth, then the profile in users |
//! | `GET /token` | no | a guest token when `auth.anonymous_tokens`, else `404` |
//! | `GET /data[?key=K][&refresh=true]`, `GET /data/{key}` | yes | cache-aside read, `X-Cache: HIT\|MISS`, on a hit `X-Cache-Layer: near\|shared` |
//! | `PUT /data/{key}` `{"value": any}` | yes | write to db, delete the cached entry |
//! | `GET /process` | yes | one service instance's answer plus `gateway_id` |
//! | `GET`/`PATCH`/`DELETE /users/me`, `GET /getUserData` | yes | your profile (`users.rs`) |
//! | `GET /users`, `GET /users/{id}`, `PATCH /users/{id}/role` | admin (your own `/users/{id}`: yes) | profiles; `/users/{id}` cached |
//! | `GET /cache/stats`, `POST /cache/flush` | admin | the cache backend's counters / empty it |
//! | `POST /tasks`, `POST /longtask`, `POST /add` | yes | submit a task (`tasks.rs`): `202`/`201` |
//! | `GET /tasks[?status&type&limit&cursor]`, `GET /tasks/{id}`, `GET /task/{id}`, `GET /result/{id}` | yes (owner or admin) | task state |
//! | `DELETE /tasks/{id}`, `GET /tasks/{id}/events` | yes (owner or admin) | cancel a queued task; SSE of its changes |
//! | `POST /tasks/{id}/requeue`, `GET /tasks/stats` | admin | re-queue a dead task; queue counts |
//! | `GET /ready` | no | `200` when the JWKS is loaded and cache and db answer, else `503` |
//! | `GET /policy` | admin | the route table as this gateway applies it |
//! | `GET /openapi.json`, `GET /docs` | no | the OpenAPI 3.1 document of these routes (`openapi.rs`); Swagger UI over it, from the binary |
//!
//! The roles in this table are the route table's defaults; the topology may override them
//! (`[gateway.required_roles]`). Guest tokens are read-only: they pass no route that writes.
//! | `GET /health`, `GET /metrics` | no | liveness, Prometheus (from `common::stack`) |
//!
//! **Rate limits are per instance with `rate_limit.backend = "local"`** (the embedded default):
//! every gateway keeps its own counts, so N gateways behind the balancer admit N times a limit.
//! **With `rate_limit.backend = "redis"` they are global**: one atomic script in Redis keeps one
//! count per route and client for all gateways sharing `redis_prefix`. If Redis cannot be reached,
//! the Redis limiter falls back to per-instance limits (and logs it) rather than failing requests.
//!
//! Every peer (service, auth, db, users, the Casitas domains) is called through its own circuit
//! breaker (`[gateway.breaker]`, `balance::Breaker`): while it is open, what needs that peer
//! answers `503 circuit_open` with `Retry-After` at once, without calling it (docs/resilience.md).
//!
//! Invariants:
//! - the gateway never talks to a database: the `db` service is its source of truth;
//! - concurrent cache misses for one key in one gateway make one `db` read;
//! - a cache outage never fails a read: it is logged and the answer comes from the db (`MISS`);
//! - a near hit (`X-Cache-Layer: near`, `cache = "service"` only) is served only while the near
//!   cache's subscription to the cache service's invalidations is live and its lease fresh, so a
//!   write that has answered is never read stale through another gateway;
//! - a 5xx answer never carries internals; the detail is in the log.

pub mod cache;
mod config;
mod error;
mod features;
pub mod fence;
mod front;
mod guard;
pub mod openapi;
pub mod policy;
pub mod rate_limit;
mod redis_conn;
pub mod single_flight;
mod state;
#[cfg(test)]
mod tests;
pub mod tokens;

use std::future::Future;

use axum::Router;
use tokio::net::TcpListener;

pub use cache::Cache;
pub use config::{AuthConfig, CacheBackend, Config, LimiterBackend, RateLimitConfig, Rule};
pub use error::Error;
pub use features::DEFAULT_KEY;
pub use policy::route_table;
pub use state::AppState;

/// The gateway's routes inside the standard stack of `common` (health, metrics, JSON 404/405,
/// request id, `X-Served-By`, timeout, body limit of [`Config::max_body_bytes`]).
///
/// Every route of the route table runs behind the guard with its own entry (token, guests, rate
/// limit, role), installed as a route layer so that an unknown route or a wrong method gets its
/// `404`/`405` first.
pub fn router(state: AppState) -> Router {
    let instance = state.instance().clone();
    // The stack's own timeout must not cut a `/process` call short of the pool's response
    // timeout, whose `504 backend_timeout` says more.
    let default = common::stack::Limits::default();
    let services = std::time::Duration::from_millis(
        state
            .config()
            .services
            .response_timeout_ms
            .saturating_add(5000),
    );
    let limits = common::stack::Limits {
        body_bytes: state.config().max_body_bytes,
        timeout: default.timeout.max(services),
    };
    // The endpoints and the table are both code, not configuration: they either match for every
    // gateway or for none, and `tests::policy` proves they match.
    let routes = match policy::build(&state, features::endpoints(&state.inner.config)) {
        Ok(routes) => routes,
        Err(e) => panic!("the route table and the endpoints disagree: {e}"),
    };
    common::stack::wrap(routes.with_state(state), &instance, limits)
}

/// Builds the gateway from `config` and serves it on `listener` until `shutdown` resolves, then
/// drains in-flight requests. The `service` and `auth` pools' health checks and the JWKS loader run
/// for as long as the gateway serves.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    instance: common::Instance,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let state = AppState::new(config, instance).await?;
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, id = %state.instance().id, cache = state.cache().name(), front_path = state.config().front_path, "gateway listening");
    }
    let app = router(state.clone());
    if !state.config().front_path {
        common::serve(listener, app, shutdown).await?;
        return Ok(());
    }
    let front = front::Front::new(state, app)?;
    common::serve_connections(listener, shutdown, move |stream, peer, closing| {
        front.clone().connection(stream, peer, closing)
    })
    .await?;
    Ok(())
}
