//! Redis as the gateway cache: shared by every gateway using the same key prefix.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use api::wire::cache::CacheStats;
use async_trait::async_trait;
use redis::AsyncCommands;
use serde_json::Value;

use super::{Cache, CacheLayer, Cached, Lookup, hit_ratio};
use crate::Error;
use crate::redis_conn::RedisConn;

/// Keys `<prefix>cache:<key>`, values the JSON text, `SET .. EX ttl`.
///
/// Hits and misses are counted by this gateway (Redis keeps no per-prefix counters); `entries`
/// counts the keys under the prefix; evictions and expirations are not tracked (0).
#[derive(Debug, Clone)]
pub struct RedisCache {
    conn: RedisConn,
    /// `<redis_prefix>cache:`.
    prefix: String,
    hits: Arc<AtomicU64>,
    misses: Arc<AtomicU64>,
}

fn unavailable(e: redis::RedisError) -> Error {
    if e.is_timeout() {
        Error::UpstreamTimeout { service: "redis" }
    } else {
        Error::UpstreamUnavailable {
            service: "redis",
            detail: e.to_string(),
        }
    }
}

/// Escapes the glob characters of `s` for `SCAN MATCH`.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl RedisCache {
    /// A cache on `conn` under `<redis_prefix>cache:`.
    pub(crate) fn new(conn: RedisConn, redis_prefix: &str) -> Self {
        Self {
            conn,
            prefix: format!("{redis_prefix}cache:"),
            hits: Arc::default(),
            misses: Arc::default(),
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{}", self.prefix, key)
    }

    /// The stored text of `key` (checked to be one JSON value), counting a hit or a miss: a hit
    /// is handed out as stored, without parsing it into a `Value` and encoding it again.
    async fn read(&self, key: &str) -> Result<Option<Cached>, Error> {
        let mut conn = self.conn.get().await.map_err(unavailable)?;
        let raw: Option<String> = conn.get(self.key(key)).await.map_err(unavailable)?;
        let value = match raw {
            None => None,
            Some(text) => match Cached::from_json(text) {
                Ok(v) => Some(v),
                Err(e) => {
                    // Someone else wrote this key; treat it as absent so that the db is read.
                    tracing::warn!(%key, error = %e, "redis cache entry is not JSON; ignoring it");
                    None
                }
            },
        };
        let counter = if value.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(value)
    }

    /// Every key of this cache (`SCAN`, never `KEYS`, so that Redis is not blocked).
    async fn keys(&self) -> Result<Vec<String>, Error> {
        let mut conn = self.conn.get().await.map_err(unavailable)?;
        let pattern = format!("{}*", glob_escape(&self.prefix));
        let mut cursor: u64 = 0;
        let mut keys = Vec::new();
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            keys.extend(batch);
            if next == 0 {
                return Ok(keys);
            }
            cursor = next;
        }
    }
}

#[async_trait]
impl Cache for RedisCache {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn get(&self, key: &str, _: &str) -> Result<Option<Value>, Error> {
        Ok(self.read(key).await?.map(|c| c.value()))
    }

    async fn lookup(&self, key: &str, _: &str) -> Result<Lookup, Error> {
        Ok(match self.read(key).await? {
            Some(value) => Lookup::Hit {
                value,
                layer: CacheLayer::Shared,
            },
            None => Lookup::Miss { lease: None },
        })
    }

    async fn set(&self, key: &str, value: &Value, ttl: Duration, _: &str) -> Result<(), Error> {
        let mut conn = self.conn.get().await.map_err(unavailable)?;
        let text = value.to_string();
        let () = conn
            .set_ex(self.key(key), text, ttl.as_secs().max(1))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn delete(&self, key: &str, _: &str) -> Result<(), Error> {
        let mut conn = self.conn.get().await.map_err(unavailable)?;
        let _: i64 = conn.del(self.key(key)).await.map_err(unavailable)?;
        Ok(())
    }

    async fn flush(&self, _: &str) -> Result<(), Error> {
        let keys = self.keys().await?;
        let mut conn = self.conn.get().await.map_err(unavailable)?;
        for chunk in keys.chunks(500) {
            let _: i64 = conn.del(chunk).await.map_err(unavailable)?;
        }
        Ok(())
    }

    async fn stats(&self, _: &str) -> Result<CacheStats, Error> {
        let entries = self.keys().await?.len() as u64;
        let hits = self.hits.load(Ordering::Relaxed);
        let misses = self.misses.load(Ordering::Relaxed);
        Ok(CacheStats {
            entries,
            hits,
            misses,
            hit_ratio: hit_ratio(hits, misses),
            evictions: 0,
            expired: 0,
        })
    }

    async fn ping(&self, _: &str) -> Result<(), Error> {
        let mut conn = self.conn.get().await.map_err(unavailable)?;
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
        assert_eq!(glob_escape("scalelab:"), "scalelab:");
    }

    #[tokio::test]
    async fn roundtrip_against_real_redis() {
        let Some(prefix) = common::testing::fresh_redis_prefix().await else {
            return;
        };
        let conn = RedisConn::new(&common::testing::redis_url(), Duration::from_secs(2)).unwrap();
        let cache = RedisCache::new(conn.clone(), &prefix);
        assert_eq!(cache.get("k", "-").await.unwrap(), None);
        for (k, v) in [
            ("zero", json!(0)),
            ("empty", json!("")),
            ("no", json!(false)),
            ("obj", json!({"a": [1, 2]})),
        ] {
            cache
                .set(k, &v, Duration::from_secs(60), "-")
                .await
                .unwrap();
            assert_eq!(cache.get(k, "-").await.unwrap(), Some(v), "{k}");
        }
        // The TTL is set on the key.
        let mut c = conn.get().await.unwrap();
        let ttl: i64 = c.ttl(format!("{prefix}cache:zero")).await.unwrap();
        assert!((1..=60).contains(&ttl), "ttl {ttl}");
        // A rate limit key under the same prefix survives a flush.
        let () = c.set(format!("{prefix}rl:x"), "1").await.unwrap();
        assert_eq!(cache.stats("-").await.unwrap().entries, 4);
        cache.delete("zero", "-").await.unwrap();
        assert_eq!(cache.get("zero", "-").await.unwrap(), None);
        cache.flush("-").await.unwrap();
        assert_eq!(cache.stats("-").await.unwrap().entries, 0);
        let kept: Option<String> = c.get(format!("{prefix}rl:x")).await.unwrap();
        assert_eq!(kept.as_deref(), Some("1"));
        let _: i64 = c.del(format!("{prefix}rl:x")).await.unwrap();
        cache.ping("-").await.unwrap();
    }
}
