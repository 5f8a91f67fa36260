//! The gateway's cache: a small trait with three backends, chosen by `Config::cache`.
//!
//! - [`ServiceCache`]: the `cache` service over HTTP, shared by every gateway (the default), with
//!   a near cache in front (`near.rs`, `near_cache_entries`), kept coherent by the service's
//!   invalidation stream (`subscription.rs`), and fills under the service's leases;
//! - [`LocalCache`]: moka in this process, per gateway instance, per-entry TTL;
//! - [`RedisCache`]: Redis, keys under `<redis_prefix>cache:`, `SET .. EX ttl`.
//!
//! Values are any JSON, stored whole; a stored falsy value (`0`, `""`, `false`, `null`) is a hit:
//! `get` answers `Some(value)` for every stored value and `None` only for an absent key.
//!
//! A cache-aside read uses [`Cache::lookup`] (which says which layer answered, and hands out the
//! fill lease of a miss) and [`Cache::fill`] (which stores the value read from the source only if
//! no write voided the lease); [`Cache::set`] and [`Cache::delete`] are writes.

mod local;
mod near;
mod redis;
mod service;
mod subscription;

use std::sync::Arc;
use std::time::Duration;

use api::wire::cache::CacheStats;
use async_trait::async_trait;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::Error;

pub use api::wire::gateway::CacheLayer;
pub use local::LocalCache;
pub use redis::RedisCache;
pub use service::{NearSettings, ServiceCache};

/// A cached value as a hit hands it out: its JSON text, made once when the value is stored and
/// shared by every hit, so that answering a hit copies text instead of cloning a tree of values
/// and encoding it again.
#[derive(Debug, Clone)]
pub struct Cached(Arc<RawValue>);

impl Cached {
    /// `value`'s JSON text.
    pub fn from_value(value: &Value) -> Self {
        // A `Value` always serializes (its map keys are strings).
        let raw =
            serde_json::value::to_raw_value(value).unwrap_or_else(|_| RawValue::NULL.to_owned());
        Self(Arc::from(raw))
    }

    /// `text`, if it is one JSON value.
    pub fn from_json(text: String) -> Result<Self, serde_json::Error> {
        RawValue::from_string(text).map(|raw| Self(Arc::from(raw)))
    }

    /// The JSON text.
    pub fn json(&self) -> &str {
        self.0.get()
    }

    /// The value, parsed from its text.
    pub fn value(&self) -> Value {
        // The text is valid JSON: it was made from a value or checked when stored.
        serde_json::from_str(self.0.get()).unwrap_or(Value::Null)
    }
}

impl PartialEq for Cached {
    fn eq(&self, other: &Self) -> bool {
        self.json() == other.json()
    }
}

impl serde::Serialize for Cached {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// What a cache-aside lookup found.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// The value, and the layer that had it.
    Hit {
        /// The stored value.
        value: Cached,
        /// `Near` (this gateway's near cache) or `Shared` (the backend).
        layer: CacheLayer,
    },
    /// Absent: read the source, then [`Cache::fill`] with this lease.
    Miss {
        /// The backend's fill lease (`None` for backends without leases, or none to spare).
        lease: Option<u64>,
    },
}

/// A key/value cache of JSON values with a time to live per entry.
///
/// Every method takes the request id so that remote backends can pass it on.
#[async_trait]
pub trait Cache: Send + Sync + std::fmt::Debug {
    /// The backend's name (`service`, `local`, `redis`), for logs and `/cache/stats`.
    fn name(&self) -> &'static str;
    /// The stored value, `None` when absent or expired.
    async fn get(&self, key: &str, rid: &str) -> Result<Option<Value>, Error>;
    /// Stores `value` for `ttl`.
    async fn set(&self, key: &str, value: &Value, ttl: Duration, rid: &str) -> Result<(), Error>;
    /// Removes `key` (absent is fine).
    async fn delete(&self, key: &str, rid: &str) -> Result<(), Error>;
    /// Removes every entry of this cache (and only those: never the rate limit state).
    async fn flush(&self, rid: &str) -> Result<(), Error>;
    /// Counters and size.
    async fn stats(&self, rid: &str) -> Result<CacheStats, Error>;
    /// Like [`Cache::get`], for a cache-aside read: which layer answered, or a fill lease.
    async fn lookup(&self, key: &str, rid: &str) -> Result<Lookup, Error> {
        Ok(match self.get(key, rid).await? {
            Some(value) => Lookup::Hit {
                value: Cached::from_value(&value),
                layer: CacheLayer::Shared,
            },
            None => Lookup::Miss { lease: None },
        })
    }
    /// A fill lease for a read that skips the cache (`refresh`), whatever is stored now.
    async fn lease(&self, _key: &str, _rid: &str) -> Result<Option<u64>, Error> {
        Ok(None)
    }
    /// Stores `value`, read from the source after a [`Cache::lookup`] or [`Cache::lease`] gave
    /// `lease`, unless a write of the key came since; whether it stored. Backends without leases
    /// store it; a backend with leases stores nothing without one.
    async fn fill(
        &self,
        key: &str,
        value: &Value,
        ttl: Duration,
        _lease: Option<u64>,
        rid: &str,
    ) -> Result<bool, Error> {
        self.set(key, value, ttl, rid).await.map(|()| true)
    }
    /// Whether the backend answers (for `/ready`).
    async fn ping(&self, rid: &str) -> Result<(), Error> {
        self.stats(rid).await.map(|_| ())
    }
}

/// `hits / (hits + misses)`, 0 without lookups.
pub(crate) fn hit_ratio(hits: u64, misses: u64) -> f64 {
    if hits + misses == 0 {
        0.0
    } else {
        hits as f64 / (hits + misses) as f64
    }
}
