//! The cache service that every gateway shares: a bounded in-memory key/value store of JSON values
//! with a time to live per entry, behind a small HTTP API (`GET`/`PUT`/`POST`/`DELETE /cache/{key}`,
//! `POST /cache/flush`, `GET /cache/stats`).
//!
//! [`Config`] is the role's section of the topology file; [`AppState::new`] builds the store
//! ([`common::ttl_cache::TtlCache`], shared with the gateway's local cache: `moka` bounded by entry
//! count with LRU eviction, per-entry expiry and counters for hits, misses, evictions and
//! expirations); [`router`] holds the routes (`routes.rs`) inside the standard stack of `common`;
//! [`serve`] runs it on a socket. Start reading at `routes.rs`.

mod error;
mod routes;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use common::ttl_cache::TtlCache;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::net::TcpListener;

pub use error::Error;

/// The `[cache]` section of the topology file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Most entries held at once; beyond it the least recently used entries are evicted
    /// (counted as `evictions` in `GET /cache/stats`).
    pub max_entries: u64,
    /// Time to live, in seconds, of an entry set without a `ttl`.
    pub default_ttl_secs: u64,
    /// Largest `ttl` a client may ask for, in seconds; larger ones are refused with `400 invalid_ttl`.
    pub max_ttl_secs: u64,
    /// Largest request body accepted, in bytes (`413 payload_too_large` beyond); this bounds the
    /// size of one stored value.
    pub max_body_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_entries: 10_000,
            default_ttl_secs: 30,
            max_ttl_secs: 86_400,
            max_body_bytes: 1024 * 1024,
        }
    }
}

impl Config {
    /// Every setting the service cannot honour, as `field: problem` lines (empty when the section
    /// is valid). `scalelab up` reports them before starting anything; [`AppState::new`] refuses
    /// to start on any of them.
    pub fn validate(&self) -> Vec<String> {
        let mut p = common::validate::Problems::new();
        p.check(self.max_entries > 0, "max_entries", "must be at least 1");
        p.check(self.max_ttl_secs > 0, "max_ttl_secs", "must be at least 1");
        p.check(
            self.default_ttl_secs > 0 && self.default_ttl_secs <= self.max_ttl_secs,
            "default_ttl_secs",
            format_args!("must be between 1 and max_ttl_secs ({})", self.max_ttl_secs),
        );
        p.check(
            self.max_body_bytes > 0,
            "max_body_bytes",
            "must be at least 1",
        );
        p.into_vec()
    }
}

/// What every handler shares: the settings, the store and who this instance is.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Read by the handlers (TTL bounds) and by [`router`] (body limit).
    config: Arc<Config>,
    /// The entries and the counters behind `GET /cache/stats`; values are shared so that a read
    /// clones a pointer, not a value of up to `max_body_bytes`.
    store: TtlCache<Arc<Value>>,
    /// Labels the metrics and is needed by the standard stack.
    instance: common::Instance,
}

impl AppState {
    /// Validates `config` and builds an empty cache. Fails with [`Error::Config`] on settings the
    /// service cannot honour (zero capacity, a default TTL above the maximum, ...).
    pub async fn new(config: Config, instance: common::Instance) -> Result<AppState, Error> {
        if let Some(problems) = common::validate::joined(&config.validate()) {
            return Err(Error::Config(problems));
        }
        let store = TtlCache::new(config.max_entries);
        Ok(AppState {
            config: Arc::new(config),
            store,
            instance,
        })
    }
}

/// The cache's routes inside the standard stack of `common` (health, metrics, JSON 404/405,
/// request id, timeout, body limit of [`Config::max_body_bytes`]).
pub fn router(state: AppState) -> Router {
    let instance = state.instance.clone();
    let limits = common::stack::Limits {
        body_bytes: state.config.max_body_bytes,
        ..common::stack::Limits::default()
    };
    common::stack::wrap(routes::routes(state), &instance, limits)
}

/// Serves the cache on `listener` until `shutdown` resolves, then drains in-flight requests.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    instance: common::Instance,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let state = AppState::new(config, instance).await?;
    common::serve(listener, router(state), shutdown)
        .await
        .map_err(Error::Io)
}
