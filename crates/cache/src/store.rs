//! The entries: a `moka` cache bounded by entry count, each entry with its own time to live, and
//! the counters behind `GET /cache/stats`.
//!
//! Invariant: an entry is never returned after its TTL ran out, even if moka has not yet removed
//! it (moka's `get` checks expiry on read). The `expired` counter moves when moka does remove it:
//! [`Store::stats`] runs moka's pending maintenance first, but moka tracks expiry on a timer wheel
//! whose finest slots are about a second wide, so `expired` (and `entries`) may trail the moment an
//! entry stopped being served by up to about a second.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::future::Cache;
use moka::notification::RemovalCause;
use moka::policy::EvictionPolicy;
use serde_json::Value;

/// One stored value and the TTL it was stored with.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// Shared so that a read clones a pointer, not a value of up to `max_body_bytes`.
    value: Arc<Value>,
    /// Read by [`PerEntryTtl`] when the entry is written.
    ttl: Duration,
}

/// Gives every entry the TTL it was stored with; a new write of a key restarts its clock with
/// the new TTL, and reads do not extend it (a TTL, not an idle timeout).
struct PerEntryTtl;

impl Expiry<String, Entry> for PerEntryTtl {
    fn expire_after_create(&self, _key: &String, entry: &Entry, _at: Instant) -> Option<Duration> {
        Some(entry.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &String,
        entry: &Entry,
        _at: Instant,
        _remaining: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
}

/// Counters that moka does not keep itself.
#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    /// Moved by the eviction listener on `RemovalCause::Size`.
    evictions: AtomicU64,
    /// Moved by the eviction listener on `RemovalCause::Expired`.
    expired: AtomicU64,
}

/// The cache and its counters; cheap to clone (both are shared).
#[derive(Debug, Clone)]
pub(crate) struct Store {
    cache: Cache<String, Entry>,
    counters: Arc<Counters>,
}

impl Store {
    /// An empty store holding at most `max_entries` entries.
    pub(crate) fn new(max_entries: u64) -> Self {
        let counters = Arc::new(Counters::default());
        let listener_counters = counters.clone();
        let cache = Cache::builder()
            .max_capacity(max_entries)
            // LRU rather than moka's default TinyLFU: TinyLFU may refuse to admit a brand-new key
            // into a full cache, and a gateway that has just stored a value expects the next read
            // to hit. LRU always admits and evicts the least recently used entry instead.
            .eviction_policy(EvictionPolicy::lru())
            .expire_after(PerEntryTtl)
            .eviction_listener(move |_key, _value, cause| match cause {
                RemovalCause::Size => {
                    listener_counters.evictions.fetch_add(1, Ordering::Relaxed);
                }
                RemovalCause::Expired => {
                    listener_counters.expired.fetch_add(1, Ordering::Relaxed);
                }
                // Replaced and explicitly removed entries are the client's doing, not the cache's.
                RemovalCause::Replaced | RemovalCause::Explicit => {}
            })
            .build();
        Self { cache, counters }
    }

    /// The value under `key`, counting a hit or a miss.
    pub(crate) async fn get(&self, key: &str) -> Option<Arc<Value>> {
        let found = self.cache.get(key).await.map(|e| e.value);
        let counter = if found.is_some() {
            &self.counters.hits
        } else {
            &self.counters.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Stores `value` under `key` for `ttl`, replacing any previous value and TTL.
    pub(crate) async fn set(&self, key: String, value: Value, ttl: Duration) {
        let entry = Entry {
            value: Arc::new(value),
            ttl,
        };
        self.cache.insert(key, entry).await;
    }

    /// Removes `key`; whether it was there.
    pub(crate) async fn delete(&self, key: &str) -> bool {
        self.cache.remove(key).await.is_some()
    }

    /// Removes every entry; how many there were.
    ///
    /// Removing key by key (rather than `invalidate_all` and a count taken before it) makes the
    /// number exact: an entry written during the flush is either counted and removed or kept.
    pub(crate) async fn flush(&self) -> u64 {
        let keys: Vec<Arc<String>> = self.cache.iter().map(|(k, _)| k).collect();
        let mut flushed = 0;
        for key in keys {
            if self.cache.remove(key.as_str()).await.is_some() {
                flushed += 1;
            }
        }
        flushed
    }

    /// The numbers behind `GET /cache/stats`.
    pub(crate) async fn stats(&self) -> api::wire::cache::CacheStats {
        // moka applies evictions, expirations and the entry count lazily; run that maintenance
        // now so that the numbers describe the cache as it is, not as it was a moment ago.
        self.cache.run_pending_tasks().await;
        let hits = self.counters.hits.load(Ordering::Relaxed);
        let misses = self.counters.misses.load(Ordering::Relaxed);
        let lookups = hits + misses;
        api::wire::cache::CacheStats {
            entries: self.cache.entry_count(),
            hits,
            misses,
            hit_ratio: if lookups == 0 {
                0.0
            } else {
                hits as f64 / lookups as f64
            },
            evictions: self.counters.evictions.load(Ordering::Relaxed),
            expired: self.counters.expired.load(Ordering::Relaxed),
        }
    }
}
