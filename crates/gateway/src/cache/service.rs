//! The `cache` service, over HTTP.

use std::time::Duration;

use api::client::{CacheClient, JsonClient};
use api::wire::cache::CacheStats;
use async_trait::async_trait;
use serde_json::Value;

use super::Cache;
use crate::Error;
use crate::error::from_client;

/// The cache service shared by every gateway.
#[derive(Debug, Clone)]
pub struct ServiceCache {
    client: CacheClient,
}

impl ServiceCache {
    /// A cache at `url` (`http://127.0.0.1:5004`); calls give up after `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Self {
        Self::with_service_token(url, timeout, None)
    }

    /// Like [`ServiceCache::new`], sending the deployment's service credential.
    pub fn with_service_token(
        url: &str,
        timeout: Duration,
        token: Option<std::sync::Arc<str>>,
    ) -> Self {
        Self {
            client: CacheClient(JsonClient::new("cache", url, timeout).with_service_token(token)),
        }
    }
}

#[async_trait]
impl Cache for ServiceCache {
    fn name(&self) -> &'static str {
        "service"
    }

    async fn get(&self, key: &str, rid: &str) -> Result<Option<Value>, Error> {
        let entry = self.client.get(key, rid).await.map_err(from_client)?;
        Ok(entry.found.then_some(entry.value))
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
