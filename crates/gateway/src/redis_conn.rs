//! One lazily opened, self-healing Redis connection, shared by the Redis cache and the Redis rate
//! limiter.
//!
//! The gateway must start when Redis is not up yet: the connection is opened on first use, and a
//! failed attempt is retried by the next caller (at most one attempt at a time). Once open,
//! redis' `ConnectionManager` reconnects on its own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::Mutex;

use crate::Error;

/// After a failed attempt, callers fail fast for this long instead of queueing on new attempts.
const RETRY_AFTER: Duration = Duration::from_secs(1);

enum Slot {
    Closed,
    Open(ConnectionManager),
    Failed(Instant),
}

/// A shared handle; cheap to clone.
#[derive(Clone)]
pub(crate) struct RedisConn {
    client: redis::Client,
    /// The open connection, or when the last attempt failed. The lock serialises attempts.
    manager: Arc<Mutex<Slot>>,
    timeout: Duration,
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConn")
            .field(
                "addr",
                &self.client.get_connection_info().addr().to_string(),
            )
            .finish()
    }
}

impl RedisConn {
    /// A handle on `url`; fails only on a URL that cannot be parsed.
    pub(crate) fn new(url: &str, timeout: Duration) -> Result<Self, Error> {
        let client = redis::Client::open(url)
            .map_err(|e| Error::Config(format!("redis_url {url:?}: {e}")))?;
        Ok(Self {
            client,
            manager: Arc::new(Mutex::new(Slot::Closed)),
            timeout,
        })
    }

    /// The connection, opening it if needed.
    pub(crate) async fn get(&self) -> redis::RedisResult<ConnectionManager> {
        let mut slot = self.manager.lock().await;
        match &*slot {
            Slot::Open(m) => return Ok(m.clone()),
            Slot::Failed(at) if at.elapsed() < RETRY_AFTER => {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "redis unreachable (last attempt failed less than a second ago)",
                )));
            }
            _ => {}
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        match ConnectionManager::new_with_config(self.client.clone(), config).await {
            Ok(m) => {
                *slot = Slot::Open(m.clone());
                Ok(m)
            }
            Err(e) => {
                *slot = Slot::Failed(Instant::now());
                Err(e)
            }
        }
    }
}
