//! The `cache` service, over HTTP, with an optional near cache in front.

use std::sync::Arc;
use std::time::Duration;

use api::client::{CacheClient, JsonClient};
use api::wire::cache::{CacheStats, LeaseMode};
use async_trait::async_trait;
use serde_json::Value;
use tokio::time::Instant;

use super::near::{Bypass, NearCache};
use super::subscription::{self, Follower};
use super::{Cache, CacheLayer, Cached, Lookup};
use crate::Error;
use crate::error::from_client;

/// The cache service shared by every gateway.
///
/// With a near cache (`near_cache_entries > 0`), reads look in this gateway's near cache first
/// while it is live (`near.rs`), and a shared hit is copied into it. Fills carry the service's
/// lease, so a fill that read the db before a write on any gateway stores nothing.
#[derive(Debug, Clone)]
pub struct ServiceCache {
    client: CacheClient,
    near: Option<Arc<Near>>,
}

/// The near cache and the task that keeps it coherent.
#[derive(Debug)]
struct Near {
    cache: Arc<NearCache>,
    /// The subscription loop, stopped with the last clone of the cache.
    task: tokio::task::JoinHandle<()>,
    /// `scalelab_gateway_near_cache_total{outcome}`: `hit`, `miss` (live, not held) and `bypass`
    /// (not live).
    hit: metrics::Counter,
    miss: metrics::Counter,
    bypass: metrics::Counter,
}

impl Drop for Near {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The near cache's settings, as `[gateway]` gives them.
#[derive(Debug, Clone)]
pub struct NearSettings {
    /// Most entries; `0` turns the near cache off.
    pub entries: u64,
    /// Longest life of an entry.
    pub ttl: Duration,
    /// This gateway's id, in the metrics.
    pub id: Arc<str>,
}

impl ServiceCache {
    /// A cache at `url` (`http://127.0.0.1:5004`); calls give up after `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Self {
        Self::with_service_token(url, timeout, None)
    }

    /// Like [`ServiceCache::new`], sending the deployment's service credential.
    pub fn with_service_token(url: &str, timeout: Duration, token: Option<Arc<str>>) -> Self {
        Self {
            client: CacheClient(JsonClient::new("cache", url, timeout).with_service_token(token)),
            near: None,
        }
    }

    /// Like [`ServiceCache::with_service_token`], with a near cache that follows the service's
    /// invalidation stream (started here, stopped with the last clone) unless `near.entries` is 0.
    pub fn with_near_cache(
        url: &str,
        timeout: Duration,
        token: Option<Arc<str>>,
        near: NearSettings,
    ) -> Self {
        let mut cache = Self::with_service_token(url, timeout, token.clone());
        if near.entries == 0 {
            return cache;
        }
        let store = Arc::new(NearCache::new(
            usize::try_from(near.entries).unwrap_or(usize::MAX),
            near.ttl,
        ));
        let task = subscription::spawn(Follower {
            near: store.clone(),
            client: cache.client.clone(),
            url: url.to_string(),
            token,
            connect_timeout: timeout,
            id: near.id.clone(),
        });
        let outcome = |o: &'static str| metrics::counter!("scalelab_gateway_near_cache_total", "outcome" => o, "id" => near.id.to_string());
        cache.near = Some(Arc::new(Near {
            cache: store,
            task,
            hit: outcome("hit"),
            miss: outcome("miss"),
            bypass: outcome("bypass"),
        }));
        cache
    }

    /// Whether the near cache serves now (`false` without one).
    pub fn near_live(&self) -> bool {
        self.near
            .as_ref()
            .is_some_and(|n| n.cache.live(Instant::now()))
    }

    /// The near cache's value of `key`, counted.
    fn near_get(&self, key: &str) -> Option<Cached> {
        let near = self.near.as_ref()?;
        match near.cache.get(key, Instant::now()) {
            Ok(value) => {
                near.hit.increment(1);
                Some(value)
            }
            Err(Bypass::Absent) => {
                near.miss.increment(1);
                None
            }
            Err(Bypass::NotLive) => {
                near.bypass.increment(1);
                None
            }
        }
    }

    /// One shared read (asking for a lease as `mode` says), copied into the near cache on a hit
    /// unless an invalidation of the key overtook it.
    async fn shared_get(
        &self,
        key: &str,
        mode: Option<LeaseMode>,
        rid: &str,
    ) -> Result<(api::wire::cache::CacheEntry, Option<Cached>), Error> {
        let ticket = self.near.as_ref().and_then(|n| n.cache.ticket(key));
        let entry = match mode {
            Some(mode) => self.client.lookup(key, mode, rid).await,
            None => self.client.get(key, rid).await,
        }
        .map_err(from_client)?;
        let cached = entry.found.then(|| Cached::from_value(&entry.value));
        if let (Some(cached), Some(near), Some(ticket)) = (&cached, &self.near, ticket) {
            near.cache
                .insert(key, cached.clone(), ticket, Instant::now());
        }
        Ok((entry, cached))
    }
}

#[async_trait]
impl Cache for ServiceCache {
    fn name(&self) -> &'static str {
        "service"
    }

    async fn get(&self, key: &str, rid: &str) -> Result<Option<Value>, Error> {
        if let Some(value) = self.near_get(key) {
            return Ok(Some(value.value()));
        }
        let (entry, _) = self.shared_get(key, None, rid).await?;
        Ok(entry.found.then_some(entry.value))
    }

    async fn lookup(&self, key: &str, rid: &str) -> Result<Lookup, Error> {
        if let Some(value) = self.near_get(key) {
            return Ok(Lookup::Hit {
                value,
                layer: CacheLayer::Near,
            });
        }
        let (entry, cached) = self.shared_get(key, Some(LeaseMode::OnMiss), rid).await?;
        Ok(match cached {
            Some(value) => Lookup::Hit {
                value,
                layer: CacheLayer::Shared,
            },
            None => Lookup::Miss { lease: entry.lease },
        })
    }

    async fn lease(&self, key: &str, rid: &str) -> Result<Option<u64>, Error> {
        let entry = self
            .client
            .lookup(key, LeaseMode::Always, rid)
            .await
            .map_err(from_client)?;
        Ok(entry.lease)
    }

    async fn fill(
        &self,
        key: &str,
        value: &Value,
        ttl: Duration,
        lease: Option<u64>,
        rid: &str,
    ) -> Result<bool, Error> {
        // Without a lease there is no telling whether a write came since the source was read.
        let Some(lease) = lease else {
            return Ok(false);
        };
        let secs = ttl.as_secs().max(1);
        let stored = self
            .client
            .fill(key, value, Some(secs), lease, rid)
            .await
            .map_err(from_client)?;
        if !stored {
            metrics::counter!("scalelab_gateway_fills_refused_total").increment(1);
            tracing::debug!(%key, "a fill lost its lease to a write; nothing stored");
        }
        Ok(stored)
    }

    async fn set(&self, key: &str, value: &Value, ttl: Duration, rid: &str) -> Result<(), Error> {
        let secs = ttl.as_secs().max(1);
        self.client
            .set(key, value, Some(secs), rid)
            .await
            .map_err(from_client)
    }

    async fn delete(&self, key: &str, rid: &str) -> Result<(), Error> {
        self.client.delete(key, rid).await.map_err(from_client)
    }

    async fn flush(&self, rid: &str) -> Result<(), Error> {
        self.client.flush(rid).await.map_err(from_client)
    }

    async fn stats(&self, rid: &str) -> Result<CacheStats, Error> {
        self.client.stats(rid).await.map_err(from_client)
    }
}
