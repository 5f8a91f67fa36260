//! An in-process cache (moka), one per gateway instance.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use api::wire::cache::CacheStats;
use async_trait::async_trait;
use moka::Expiry;
use moka::notification::RemovalCause;
use serde_json::Value;

use super::{Cache, hit_ratio};
use crate::Error;

/// A value and how long it lives.
#[derive(Debug, Clone)]
struct Entry {
    value: Value,
    ttl: Duration,
}

/// Gives each entry its own time to live.
struct PerEntryTtl;

impl Expiry<String, Entry> for PerEntryTtl {
    fn expire_after_create(&self, _: &String, entry: &Entry, _: Instant) -> Option<Duration> {
        Some(entry.ttl)
    }

    fn expire_after_update(
        &self,
        _: &String,
        entry: &Entry,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
}

#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    expired: AtomicU64,
}

/// moka, bounded by entry count (TinyLFU eviction), with a TTL per entry.
#[derive(Clone)]
pub struct LocalCache {
    entries: moka::future::Cache<String, Entry>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for LocalCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCache")
            .field("entries", &self.entries.entry_count())
            .finish()
    }
}

impl LocalCache {
    /// An empty cache holding at most `max_entries`.
    pub fn new(max_entries: u64) -> Self {
        let counters = Arc::new(Counters::default());
        let listener = counters.clone();
        let entries = moka::future::Cache::builder()
            .max_capacity(max_entries)
            .expire_after(PerEntryTtl)
            .eviction_listener(move |_, _, cause| match cause {
                RemovalCause::Size => {
                    listener.evictions.fetch_add(1, Ordering::Relaxed);
                }
                RemovalCause::Expired => {
                    listener.expired.fetch_add(1, Ordering::Relaxed);
                }
                RemovalCause::Explicit | RemovalCause::Replaced => {}
            })
            .build();
        Self { entries, counters }
    }
}

#[async_trait]
impl Cache for LocalCache {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn get(&self, key: &str, _: &str) -> Result<Option<Value>, Error> {
        let found = self.entries.get(key).await.map(|e| e.value);
        let counter = if found.is_some() {
            &self.counters.hits
        } else {
            &self.counters.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(found)
    }

    async fn set(&self, key: &str, value: &Value, ttl: Duration, _: &str) -> Result<(), Error> {
        let entry = Entry {
            value: value.clone(),
            ttl,
        };
        self.entries.insert(key.to_string(), entry).await;
        Ok(())
    }

    async fn delete(&self, key: &str, _: &str) -> Result<(), Error> {
        self.entries.invalidate(key).await;
        Ok(())
    }

    async fn flush(&self, _: &str) -> Result<(), Error> {
        self.entries.invalidate_all();
        self.entries.run_pending_tasks().await;
        Ok(())
    }

    async fn stats(&self, _: &str) -> Result<CacheStats, Error> {
        self.entries.run_pending_tasks().await;
        let hits = self.counters.hits.load(Ordering::Relaxed);
        let misses = self.counters.misses.load(Ordering::Relaxed);
        Ok(CacheStats {
            entries: self.entries.entry_count(),
            hits,
            misses,
            hit_ratio: hit_ratio(hits, misses),
            evictions: self.counters.evictions.load(Ordering::Relaxed),
            expired: self.counters.expired.load(Ordering::Relaxed),
        })
    }

    async fn ping(&self, _: &str) -> Result<(), Error> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn falsy_values_are_hits_and_ttl_expires() {
        let c = LocalCache::new(100);
        for (k, v) in [
            ("zero", json!(0)),
            ("empty", json!("")),
            ("no", json!(false)),
            ("nil", Value::Null),
        ] {
            c.set(k, &v, Duration::from_secs(60), "-").await.unwrap();
            assert_eq!(c.get(k, "-").await.unwrap(), Some(v));
        }
        assert_eq!(c.get("absent", "-").await.unwrap(), None);
        c.set("short", &json!(1), Duration::from_millis(1), "-")
            .await
            .unwrap();
        // moka's clock is real time: wait for the deadline rather than a fixed sleep.
        let deadline = Instant::now() + Duration::from_secs(5);
        while c.get("short", "-").await.unwrap().is_some() {
            assert!(Instant::now() < deadline, "the entry never expired");
            tokio::task::yield_now().await;
        }
        let s = c.stats("-").await.unwrap();
        // moka drops expired entries lazily: the count may still include the expired one.
        assert!((4..=5).contains(&s.entries), "{s:?}");
        assert!(s.hits >= 4 && s.misses >= 2, "{s:?}");
        c.delete("zero", "-").await.unwrap();
        assert_eq!(c.get("zero", "-").await.unwrap(), None);
        c.flush("-").await.unwrap();
        assert_eq!(c.stats("-").await.unwrap().entries, 0);
    }
}
