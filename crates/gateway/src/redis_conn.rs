//! One lazily opened, self-healing Redis connection, shared by the Redis cache and the Redis rate
//! limiter.
//!
//! The gateway must start when Redis is not up yet: the connection is opened on first use, and a
//! failed attempt is retried by the next caller (at most one attempt at a time). Once open,
//! redis' `ConnectionManager` reconnects on its own when the connection drops; a command that
//! times out makes this handle open a new one (redis-rs keeps a connection after a timeout, and
//! one whose packets a partition swallowed stays silent on TCP's retransmission backoff, seconds
//! after the network is back).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};
use tokio::sync::Mutex;

use crate::Error;

/// After a failed attempt, callers fail fast for this long instead of queueing on new attempts.
const RETRY_AFTER: Duration = Duration::from_secs(1);

enum Slot {
    Closed,
    /// The connection and its generation (how many were opened before it).
    Open(ConnectionManager, u64),
    Failed(Instant),
}

/// A shared handle; cheap to clone.
#[derive(Clone)]
pub(crate) struct RedisConn {
    client: redis::Client,
    /// The open connection, or when the last attempt failed. The lock serialises attempts.
    manager: Arc<Mutex<Slot>>,
    /// Connections opened so far.
    opened: Arc<std::sync::atomic::AtomicU64>,
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
            opened: Arc::default(),
            timeout,
        })
    }

    /// The connection, opening it if needed.
    pub(crate) async fn get(&self) -> redis::RedisResult<Conn> {
        let mut slot = self.manager.lock().await;
        match &*slot {
            Slot::Open(m, generation) => {
                return Ok(Conn {
                    inner: m.clone(),
                    owner: self.clone(),
                    generation: *generation,
                });
            }
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
                let generation = self.opened.fetch_add(1, Ordering::Relaxed) + 1;
                *slot = Slot::Open(m.clone(), generation);
                Ok(Conn {
                    inner: m,
                    owner: self.clone(),
                    generation,
                })
            }
            Err(e) => {
                *slot = Slot::Failed(Instant::now());
                Err(e)
            }
        }
    }

    /// How many connections this handle has opened (for tests).
    #[cfg(test)]
    pub(crate) fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// Closes connection `generation` if it is still the one in use: the next caller opens a new
    /// one. A newer connection is left alone.
    async fn forget(&self, generation: u64) {
        let mut slot = self.manager.lock().await;
        if matches!(&*slot, Slot::Open(_, g) if *g == generation) {
            tracing::warn!("a redis command timed out; the next one opens a new connection");
            *slot = Slot::Closed;
        }
    }
}

/// The shared connection as one caller uses it: a command that times out retires it.
pub(crate) struct Conn {
    inner: ConnectionManager,
    owner: RedisConn,
    generation: u64,
}

impl Conn {
    async fn checked<T>(&self, result: Result<T, RedisError>) -> Result<T, RedisError> {
        if let Err(e) = &result
            && e.is_timeout()
        {
            self.owner.forget(self.generation).await;
        }
        result
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let result = self.inner.req_packed_command(cmd).await;
            self.checked(result).await
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let result = self
                .inner
                .req_packed_commands(pipeline, offset, count)
                .await;
            self.checked(result).await
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use tokio::net::{TcpListener, TcpStream};

    use super::RedisConn;

    /// A TCP relay in front of Redis whose `freeze` silences every connection opened so far,
    /// as a partition does (nothing closes; bytes stop), while new connections go through.
    struct Relay {
        url: String,
        accepted: Arc<AtomicU64>,
        frozen_below: tokio::sync::watch::Sender<u64>,
    }

    impl Relay {
        async fn start(upstream: String) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("redis://{}", listener.local_addr().unwrap());
            let accepted = Arc::new(AtomicU64::new(0));
            let (frozen_below, rx) = tokio::sync::watch::channel(0u64);
            let counter = accepted.clone();
            tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    let index = counter.fetch_add(1, Ordering::SeqCst);
                    let mut up = TcpStream::connect(&upstream).await.unwrap();
                    let mut rx = rx.clone();
                    tokio::spawn(async move {
                        let frozen = async move {
                            let _ = rx.wait_for(|below| index < *below).await;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut up) => return,
                            () = frozen => {}
                        }
                        // Held open, silent, until the test ends.
                        std::future::pending::<()>().await;
                        drop((client, up));
                    });
                }
            });
            Self {
                url,
                accepted,
                frozen_below,
            }
        }

        fn freeze(&self) {
            self.frozen_below
                .send_replace(self.accepted.load(Ordering::SeqCst));
        }
    }

    #[tokio::test]
    async fn a_command_that_times_out_retires_the_connection() {
        if common::testing::fresh_redis_prefix().await.is_none() {
            return;
        }
        let upstream = common::testing::redis_url()
            .trim_start_matches("redis://")
            .trim_end_matches('/')
            .to_string();
        let relay = Relay::start(upstream).await;
        let conn = RedisConn::new(&relay.url, Duration::from_millis(300)).unwrap();
        let ping = |conn: RedisConn| async move {
            let mut c = conn.get().await?;
            redis::cmd("PING").query_async::<String>(&mut c).await
        };
        assert_eq!(ping(conn.clone()).await.unwrap(), "PONG");
        assert_eq!(conn.opened(), 1);

        relay.freeze();
        let err = ping(conn.clone()).await.unwrap_err();
        assert!(err.is_timeout(), "{err}");
        // Without retiring it, every later command would wait on the silent connection.
        assert_eq!(ping(conn.clone()).await.unwrap(), "PONG");
        assert_eq!(conn.opened(), 2);
        assert_eq!(ping(conn.clone()).await.unwrap(), "PONG");
        assert_eq!(conn.opened(), 2, "a healthy connection is kept");
    }
}
