//! [`TtlCache`]: a bounded in-memory cache with a time to live per entry and the counters of
//! `GET /cache/stats`. It is the store of the `cache` service and the gateway's `local` cache
//! backend: one piece, so that the two cannot drift apart again.
//!
//! Built on `moka::future::Cache`, bounded by entry count, with per-entry expiry through moka's
//! [`Expiry`] (each entry lives for the TTL it was written with; a rewrite restarts the clock with
//! the new TTL; reads do not extend it: a TTL, not an idle timeout).
//!
//! Eviction is **LRU**, not moka's default TinyLFU. TinyLFU admits a new key into a full cache
//! only if its estimated frequency beats the victim's, so a key written once may be refused and
//! the very next read misses. Both users of this cache write a value because it is about to be
//! read (cache-aside fills, clients of the cache service), so "what was just stored can be read
//! back" matters more here than TinyLFU's better hit ratio on scan-heavy workloads.
//!
//! Invariant: an entry is never returned after its TTL ran out, even if moka has not yet removed
//! it (moka checks expiry on read). The `expired` counter moves when moka does remove it:
//! [`TtlCache::stats`] runs moka's pending maintenance first, but moka tracks expiry on a timer
//! wheel whose finest slots are about a second wide, so `expired` (and `entries`) may trail the
//! moment an entry stopped being served by up to about a second. moka's clock is real time, so
//! paused tokio time does not move it.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use api::wire::cache::CacheStats;
use moka::Expiry;
use moka::notification::RemovalCause;
use moka::policy::EvictionPolicy;

/// One stored value and the TTL it was stored with.
#[derive(Debug, Clone)]
struct Entry<V> {
    value: V,
    /// Read by [`PerEntryTtl`] when the entry is written.
    ttl: Duration,
}

/// Gives every entry the TTL it was stored with; a new write of a key restarts its clock with
/// the new TTL, and reads leave it alone (moka's default for `expire_after_read`).
struct PerEntryTtl;

impl<V> Expiry<String, Entry<V>> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &String,
        entry: &Entry<V>,
        _at: Instant,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &String,
        entry: &Entry<V>,
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

/// A cache of `V` by string key, at most `max_entries` entries (LRU beyond), each with its own
/// TTL. Cheap to clone: clones share the entries and the counters.
///
/// `V` is cloned on every hit, so store something cheap to clone (an `Arc`) when values are big.
#[derive(Clone)]
pub struct TtlCache<V> {
    /// Keys hashed with foldhash's seeded `quality` hasher: keys come from clients, so the hash
    /// is seeded per process (as SipHash's is), at a fraction of SipHash's cost per lookup.
    entries: moka::future::Cache<String, Entry<V>, foldhash::quality::RandomState>,
    counters: Arc<Counters>,
}

impl<V> fmt::Debug for TtlCache<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TtlCache")
            .field("entries", &self.entries.entry_count())
            .finish_non_exhaustive()
    }
}

impl<V: Clone + Send + Sync + 'static> TtlCache<V> {
    /// An empty cache holding at most `max_entries` entries.
    pub fn new(max_entries: u64) -> Self {
        let counters = Arc::new(Counters::default());
        let listener = counters.clone();
        let entries = moka::future::Cache::builder()
            .max_capacity(max_entries)
            // LRU: a new key is always admitted (see the module doc for why not TinyLFU).
            .eviction_policy(EvictionPolicy::lru())
            .expire_after(PerEntryTtl)
            .eviction_listener(move |_key, _value, cause| match cause {
                RemovalCause::Size => {
                    listener.evictions.fetch_add(1, Ordering::Relaxed);
                }
                RemovalCause::Expired => {
                    listener.expired.fetch_add(1, Ordering::Relaxed);
                }
                // Replaced and explicitly removed entries are the caller's doing, not the cache's.
                RemovalCause::Replaced | RemovalCause::Explicit => {}
            })
            .build_with_hasher(foldhash::quality::RandomState::default());
        Self { entries, counters }
    }

    /// The value under `key` (`None` when absent or expired), counting a hit or a miss.
    pub async fn get(&self, key: &str) -> Option<V> {
        let found = self.entries.get(key).await.map(|e| e.value);
        let counter = if found.is_some() {
            &self.counters.hits
        } else {
            &self.counters.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// The value under `key` (`None` when absent or expired), counting nothing: for a writer
    /// that compares, not for a reader.
    pub async fn peek(&self, key: &str) -> Option<V> {
        self.entries.get(key).await.map(|e| e.value)
    }

    /// Stores `value` under `key` for `ttl`, replacing any previous value and TTL.
    pub async fn insert(&self, key: String, value: V, ttl: Duration) {
        self.entries.insert(key, Entry { value, ttl }).await;
    }

    /// Removes `key`; whether a live entry was there.
    pub async fn remove(&self, key: &str) -> bool {
        self.entries.remove(key).await.is_some()
    }

    /// Removes every entry; how many live entries there were.
    ///
    /// Live entries are removed key by key and counted, so the number is the entries a reader
    /// could still have seen. What is left after that goes too, uncounted: entries whose TTL ran
    /// out but that moka had not dropped yet (they would otherwise stay in `entries` for up to a
    /// second), and entries written while the clear ran.
    pub async fn clear(&self) -> u64 {
        let keys: Vec<Arc<String>> = self.entries.iter().map(|(k, _)| k).collect();
        let mut removed = 0;
        for key in keys {
            if self.entries.remove(key.as_str()).await.is_some() {
                removed += 1;
            }
        }
        self.entries.invalidate_all();
        self.entries.run_pending_tasks().await;
        removed
    }

    /// Size and counters, as `GET /cache/stats` shows them.
    pub async fn stats(&self) -> CacheStats {
        // moka applies evictions, expirations and the entry count lazily; run that maintenance
        // now so that the numbers describe the cache as it is, not as it was a moment ago.
        self.entries.run_pending_tasks().await;
        let hits = self.counters.hits.load(Ordering::Relaxed);
        let misses = self.counters.misses.load(Ordering::Relaxed);
        let lookups = hits + misses;
        CacheStats {
            entries: self.entries.entry_count(),
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

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn a_full_cache_admits_every_new_key_and_evicts_the_least_recently_used() {
        let c = TtlCache::new(3);
        for k in ["a", "b", "c"] {
            c.insert(k.to_string(), k, MINUTE).await;
        }
        // Reading "a" makes "b" the least recently used one.
        assert_eq!(c.get("a").await, Some("a"));
        c.stats().await;
        for k in ["d", "e"] {
            c.insert(k.to_string(), k, MINUTE).await;
            // A key just written is always readable: TinyLFU could have refused it here.
            assert_eq!(c.get(k).await, Some(k), "{k} was not admitted");
        }
        let st = c.stats().await;
        assert_eq!((st.entries, st.evictions, st.expired), (3, 2, 0), "{st:?}");
        assert_eq!(c.get("b").await, None, "the least recently used goes first");
    }

    #[tokio::test]
    async fn each_entry_keeps_its_own_ttl_and_a_rewrite_restarts_it() {
        let c = TtlCache::new(10);
        c.insert("short".into(), 1, Duration::from_millis(1)).await;
        c.insert("long".into(), 2, MINUTE).await;
        c.insert("renewed".into(), 3, Duration::from_millis(1))
            .await;
        c.insert("renewed".into(), 4, MINUTE).await;
        // moka's clock is real time: wait for the deadline rather than a fixed sleep.
        let deadline = Instant::now() + Duration::from_secs(5);
        while c.get("short").await.is_some() {
            assert!(Instant::now() < deadline, "the entry never expired");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(c.get("long").await, Some(2));
        assert_eq!(c.get("renewed").await, Some(4), "the rewrite's TTL applies");
    }

    #[tokio::test]
    async fn counters_remove_and_clear() {
        let c = TtlCache::new(10);
        let empty = c.stats().await;
        assert_eq!((empty.entries, empty.hit_ratio), (0, 0.0));
        for i in 0..4 {
            c.insert(format!("k{i}"), i, MINUTE).await;
        }
        c.get("k0").await;
        c.get("k1").await;
        c.get("k2").await;
        c.get("nope").await;
        assert!(c.remove("k3").await);
        assert!(!c.remove("k3").await, "already gone");
        let st = c.stats().await;
        assert_eq!(
            (st.entries, st.hits, st.misses, st.hit_ratio),
            (3, 3, 1, 0.75)
        );
        // An entry past its TTL is no longer served but may still be counted by moka.
        c.insert("gone".into(), 9, Duration::from_millis(1)).await;
        while c.get("gone").await.is_some() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(c.clear().await, 3, "only live entries are counted");
        assert_eq!(c.stats().await.entries, 0, "the expired one is gone too");
        assert_eq!(c.clear().await, 0);
    }
}
