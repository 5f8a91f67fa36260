//! The gateway's cache: a small trait with three backends, chosen by `Config::cache`.
//!
//! - [`ServiceCache`]: the `cache` service over HTTP, shared by every gateway (the default);
//! - [`LocalCache`]: moka in this process, per gateway instance, per-entry TTL;
//! - [`RedisCache`]: Redis, keys under `<redis_prefix>cache:`, `SET .. EX ttl`.
//!
//! Values are any JSON, stored whole; a stored falsy value (`0`, `""`, `false`, `null`) is a hit:
//! `get` answers `Some(value)` for every stored value and `None` only for an absent key.

mod local;
mod redis;
mod service;

use std::time::Duration;

use api::wire::cache::CacheStats;
use async_trait::async_trait;
use serde_json::Value;

use crate::Error;

pub use local::LocalCache;
pub use redis::RedisCache;
pub use service::ServiceCache;

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
