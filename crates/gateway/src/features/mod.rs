//! The gateway's handlers, one module per feature. Each module lists its [`Endpoint`]s; the route
//! table (`policy.rs`) decides who may call them, and `policy::build` puts them together.
//!
//! - `accounts`: login, registration (across `auth` and `users`, with undo), guest tokens;
//! - `data`: `GET`/`PUT /data` cache-aside, the cache's stats and flush;
//! - `process`: `GET /process` through the balanced pool of services;
//! - `users`: your profile, the admin routes, `GET /users/{id}` cache-aside;
//! - `tasks`: submission, status, listing, cancellation, events, the lab's task calls;
//! - `ops`: readiness and the route table itself;
//! - `rental`: the Casitas preset's units, finances and legal routes, cached, and its reports.

mod accounts;
pub(crate) mod data;
mod ops;
mod process;
mod rental;
mod tasks;
mod users;

use axum::http::{HeaderName, HeaderValue};

use crate::policy::Endpoint;

pub use data::DEFAULT_KEY;

/// Every endpoint of a gateway configured by `config` (the Casitas preset's only with its services).
pub(crate) fn endpoints(config: &crate::config::Config) -> Vec<Endpoint> {
    [
        accounts::endpoints(),
        data::endpoints(),
        process::endpoints(),
        users::endpoints(),
        tasks::endpoints(),
        ops::endpoints(),
        rental::endpoints(config),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// `X-Cache: HIT` or `MISS`, on every answer that may come from the cache.
fn x_cache(hit: bool) -> (HeaderName, HeaderValue) {
    (
        HeaderName::from_static(api::headers::CACHE),
        HeaderValue::from_static(if hit { "HIT" } else { "MISS" }),
    )
}

/// Counts a cache failure the request survived (`op`: `get`, `set`, `delete`).
fn cache_error(op: &'static str) {
    metrics::counter!("scalelab_gateway_cache_errors_total", "op" => op).increment(1);
}
