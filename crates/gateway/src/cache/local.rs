//! An in-process cache, one per gateway instance: [`common::ttl_cache::TtlCache`], the same
//! piece that stores the `cache` service's entries (moka bounded by entry count, LRU eviction so
//! that a value just stored is always admitted, a TTL per entry, hit/miss/eviction/expiry counters).

use std::time::Duration;

use api::wire::cache::CacheStats;
use async_trait::async_trait;
use common::ttl_cache::TtlCache;
use serde_json::Value;

use super::{Cache, CacheLayer, Cached, Lookup};
use crate::Error;

/// The `local` backend: bounded by entry count (least recently used evicted beyond it), with a
/// TTL per entry; nothing is shared between gateway instances.
#[derive(Debug, Clone)]
pub struct LocalCache {
    /// Values as their JSON text: a hit shares it (see [`Cached`]).
    entries: TtlCache<Cached>,
}

impl LocalCache {
    /// An empty cache holding at most `max_entries`.
    pub fn new(max_entries: u64) -> Self {
        Self {
            entries: TtlCache::new(max_entries),
        }
    }
}

#[async_trait]
impl Cache for LocalCache {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn get(&self, key: &str, _: &str) -> Result<Option<Value>, Error> {
        Ok(self.entries.get(key).await.map(|c| c.value()))
    }

    async fn lookup(&self, key: &str, _: &str) -> Result<Lookup, Error> {
        Ok(match self.entries.get(key).await {
            Some(value) => Lookup::Hit {
                value,
                layer: CacheLayer::Shared,
            },
            None => Lookup::Miss { lease: None },
        })
    }

    async fn set(&self, key: &str, value: &Value, ttl: Duration, _: &str) -> Result<(), Error> {
        self.entries
            .insert(key.to_string(), Cached::from_value(value), ttl)
            .await;
        Ok(())
    }

    async fn delete(&self, key: &str, _: &str) -> Result<(), Error> {
        self.entries.remove(key).await;
        Ok(())
    }

    async fn flush(&self, _: &str) -> Result<(), Error> {
        self.entries.clear().await;
        Ok(())
    }

    async fn stats(&self, _: &str) -> Result<CacheStats, Error> {
        Ok(self.entries.stats().await)
    }

    async fn ping(&self, _: &str) -> Result<(), Error> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

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
