//! The cache service that every gateway shares: a bounded in-memory key/value store of JSON values
//! with a time to live per entry, behind a small HTTP API (`GET`/`PUT`/`POST`/`DELETE /cache/{key}`,
//! `POST /cache/flush`, `GET /cache/stats`).
//!
//! [`Config`] is the role's section of the topology file; [`AppState::new`] builds the store
//! ([`common::ttl_cache::TtlCache`], shared with the gateway's local cache: `moka` bounded by entry
//! count with LRU eviction, per-entry expiry and counters for hits, misses, evictions and
//! expirations); [`router`] holds the routes (`routes.rs`) inside the standard stack of `common`;
//! [`serve`] runs it on a socket. Start reading at `routes.rs`.
//!
//! Two pieces keep the gateways' copies coherent with it: `lease.rs` (fill leases: a miss hands
//! out a token, a write voids the key's tokens, a fill with a voided token is refused, so a fill
//! that read the db before a write never stores the old value) and `invalidation.rs` (the stream
//! of written keys every gateway's near cache follows, `POST /invalidations`; a write answers
//! only once every subscriber acknowledged it or can no longer serve).

mod error;
mod invalidation;
mod lease;
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
    /// How long a fill lease (handed out by a miss, carried by the fill) stays valid, in
    /// milliseconds: longer than a gateway's db read and store take. A fill after it is refused.
    pub fill_lease_ms: u64,
    /// Most fill leases outstanding at once; beyond, a miss gets none and its fill is skipped.
    pub max_fill_leases: usize,
    /// How long an acknowledged invalidation lets a gateway serve its near cache, in milliseconds.
    /// A write waits at most `invalidation_ack_timeout_ms` plus this for a gateway that stopped
    /// answering.
    pub invalidation_lease_ms: u64,
    /// How often the invalidation stream sends a heartbeat to acknowledge, in milliseconds (at
    /// most half of `invalidation_lease_ms`, so that a live gateway's lease never lapses).
    pub invalidation_heartbeat_ms: u64,
    /// How long a write waits for each gateway's acknowledgement before cutting it off, in
    /// milliseconds.
    pub invalidation_ack_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_entries: 10_000,
            default_ttl_secs: 30,
            max_ttl_secs: 86_400,
            max_body_bytes: 1024 * 1024,
            fill_lease_ms: 10_000,
            max_fill_leases: 100_000,
            invalidation_lease_ms: 1000,
            invalidation_heartbeat_ms: 250,
            invalidation_ack_timeout_ms: 200,
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
        p.check(
            self.fill_lease_ms > 0,
            "fill_lease_ms",
            "must be at least 1",
        );
        p.check(
            self.max_fill_leases > 0,
            "max_fill_leases",
            "must be at least 1",
        );
        p.check(
            self.invalidation_lease_ms > 0,
            "invalidation_lease_ms",
            "must be at least 1",
        );
        p.check(
            self.invalidation_heartbeat_ms > 0
                && self.invalidation_heartbeat_ms.saturating_mul(2) <= self.invalidation_lease_ms,
            "invalidation_heartbeat_ms",
            format_args!(
                "must be between 1 and half of invalidation_lease_ms ({})",
                self.invalidation_lease_ms
            ),
        );
        p.check(
            self.invalidation_ack_timeout_ms > 0
                && self.invalidation_ack_timeout_ms <= self.invalidation_lease_ms,
            "invalidation_ack_timeout_ms",
            format_args!(
                "must be between 1 and invalidation_lease_ms ({})",
                self.invalidation_lease_ms
            ),
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
    /// Fill leases: a write voids the key's, a fill with a voided one is refused.
    leases: Arc<lease::Leases>,
    /// The gateways following the invalidation stream; a write waits on them.
    subscribers: Arc<invalidation::Subscribers>,
    /// One lock per key stripe, held by a fill from its lease check to its store and by a write
    /// from voiding the leases to changing the store, so that no fill stores between the two.
    stripes: Arc<Vec<tokio::sync::Mutex<()>>>,
    /// Hashes keys to stripes.
    hasher: std::collections::hash_map::RandomState,
}

/// Key stripes: enough that unrelated keys rarely wait on each other.
const STRIPES: usize = 256;

impl AppState {
    /// Validates `config` and builds an empty cache. Fails with [`Error::Config`] on settings the
    /// service cannot honour (zero capacity, a default TTL above the maximum, ...).
    pub async fn new(config: Config, instance: common::Instance) -> Result<AppState, Error> {
        if let Some(problems) = common::validate::joined(&config.validate()) {
            return Err(Error::Config(problems));
        }
        let store = TtlCache::new(config.max_entries);
        let leases = lease::Leases::new(
            std::time::Duration::from_millis(config.fill_lease_ms),
            config.max_fill_leases,
        );
        let subscribers = invalidation::Subscribers::new(
            invalidation::Timing {
                lease: std::time::Duration::from_millis(config.invalidation_lease_ms),
                heartbeat: std::time::Duration::from_millis(config.invalidation_heartbeat_ms),
                ack_timeout: std::time::Duration::from_millis(config.invalidation_ack_timeout_ms),
            },
            instance.id.clone(),
        );
        // Ends by itself once the last clone of the state is gone.
        invalidation::spawn_heartbeats(&subscribers);
        Ok(AppState {
            config: Arc::new(config),
            store,
            instance,
            leases: Arc::new(leases),
            subscribers,
            stripes: Arc::new((0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect()),
            hasher: Default::default(),
        })
    }

    /// The lock of `key`'s stripe.
    fn stripe(&self, key: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::BuildHasher;
        let h = self.hasher.hash_one(key) as usize;
        &self.stripes[h % self.stripes.len()]
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
    let subscribers = state.subscribers.clone();
    // The invalidation streams never end by themselves: end them when shutdown begins, so that
    // draining does not wait on them (their gateways subscribe elsewhere or again).
    let shutdown = async move {
        shutdown.await;
        subscribers.close();
    };
    common::serve(listener, router(state), shutdown)
        .await
        .map_err(Error::Io)
}
