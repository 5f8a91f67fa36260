//! What every scalelab service shares: serving with graceful shutdown ([`serve`]), the standard
//! middleware stack and routes ([`stack`]), the JSON error type and extractor ([`error`]), request ids
//! ([`RequestId`]), Prometheus metrics ([`metrics`]), logging setup ([`telemetry`]), the
//! per-entry-TTL cache of the cache service and the gateway's local cache ([`ttl_cache`]) and the
//! helpers of every `Config::validate` ([`validate`]).
//!
//! Crates that keep rows open their SQLite or PostgreSQL database through [`sql`].
//!
//! A service crate builds its own `Router` of business routes and hands it to [`stack::wrap`], which
//! adds `/health`, `/metrics`, the JSON `404`/`405` fallbacks and the middleware every instance has.

pub mod error;
pub mod handoff;
pub mod linger;
pub mod metrics;
pub mod sql;
pub mod stack;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod time;
pub mod ttl_cache;
pub mod validate;

use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use tokio::net::TcpListener;

pub use error::{ApiError, Json};
pub use stack::{Instance, RequestId};

/// Serves `app` on `listener` until `shutdown` resolves, then drains in-flight requests.
///
/// The stop loses no connection its client made before it: connections the kernel had already
/// accepted (queued in the listen backlog, not yet taken by the server) are still taken, then the
/// listener closes, and connections taken in the last [`FIRST_REQUEST_GRACE`] get that long to send
/// their first request before idle connections are closed (closing one whose request has not been
/// read yet would reset it).
///
/// Handlers can extract the peer address with `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // Metrics recorded before the recorder exists are lost; install it before the first request.
    metrics::handle();
    let (listener, signal) = draining(listener, shutdown);
    axum::serve(
        // `tap_io` gives the wrapper the `ConnectInfo<SocketAddr>` a plain `TcpListener` has.
        listener.tap_io(|_| {}),
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(signal)
    .await
}

/// The listener that drains its backlog on `shutdown`, and the signal that fires once it has
/// and the last connection taken had [`FIRST_REQUEST_GRACE`] to send its first request.
fn draining(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> (Draining, impl Future<Output = ()> + Send + 'static) {
    let closing = std::sync::Arc::new(tokio::sync::Notify::new());
    let drained = std::sync::Arc::new(tokio::sync::Notify::new());
    let last_accept = std::sync::Arc::new(std::sync::Mutex::new(None::<tokio::time::Instant>));
    let listener = Draining {
        inner: Some(listener),
        closing: closing.clone(),
        queued: std::collections::VecDeque::new(),
        drained: drained.clone(),
        last_accept: last_accept.clone(),
    };
    let signal = async move {
        let waiting = drained.notified();
        shutdown.await;
        closing.notify_one();
        waiting.await;
        let last = *last_accept.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = last {
            tokio::time::sleep_until(at + FIRST_REQUEST_GRACE).await;
        }
    };
    (listener, signal)
}

/// Told to a connection served by [`serve_connections`] when the server stops: finish the
/// request in hand, then close (an idle connection closes at once).
#[derive(Debug, Clone)]
pub struct Closing(tokio::sync::watch::Receiver<bool>);

impl Closing {
    /// Resolves once the server is stopping (at once if it already is).
    pub async fn fired(&mut self) {
        // An error means the server is gone, which is a stop too.
        let _ = self.0.wait_for(|stopping| *stopping).await;
    }

    /// Whether the server is stopping.
    pub fn is_fired(&self) -> bool {
        *self.0.borrow()
    }
}

/// Serves each connection of `listener` with `handle` (one task per connection) until
/// `shutdown`, with [`serve`]'s lossless stop: the backlog is taken, then every connection is
/// told [`Closing`] and the server returns once all have ended. For a server that speaks HTTP
/// itself (the balancer's hop, `lb::h1`); `handle` gets the peer address.
pub async fn serve_connections<F, Fut>(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    handle: F,
) -> std::io::Result<()>
where
    F: Fn(tokio::net::TcpStream, SocketAddr, Closing) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    use axum::serve::Listener;
    metrics::handle();
    let (mut listener, signal) = draining(listener, shutdown);
    let (stop, closing) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    let mut signal = std::pin::pin!(signal);
    loop {
        tokio::select! {
            () = &mut signal => break,
            (stream, peer) = listener.accept() => {
                connections.spawn(handle(stream, peer, Closing(closing.clone())));
                // Reap the ended ones so that the set holds only live connections.
                while connections.try_join_next().is_some() {}
            }
        }
    }
    let _ = stop.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// How long a connection taken just before a stop has to send its first request.
const FIRST_REQUEST_GRACE: std::time::Duration = std::time::Duration::from_millis(200);

/// A listener that, once told to close, takes every connection already queued in the kernel,
/// closes its socket (new connections are refused), hands the taken ones out, then says it is
/// drained.
struct Draining {
    /// `None` once closed.
    inner: Option<TcpListener>,
    closing: std::sync::Arc<tokio::sync::Notify>,
    /// The connections taken from the backlog at the close, not handed out yet.
    queued: std::collections::VecDeque<(tokio::net::TcpStream, SocketAddr)>,
    drained: std::sync::Arc<tokio::sync::Notify>,
    /// When the last connection was taken.
    last_accept: std::sync::Arc<std::sync::Mutex<Option<tokio::time::Instant>>>,
}

impl Draining {
    fn taken(
        &self,
        conn: (tokio::net::TcpStream, SocketAddr),
    ) -> (tokio::net::TcpStream, SocketAddr) {
        *self.last_accept.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(tokio::time::Instant::now());
        conn
    }

    /// Takes what the kernel holds (a plain non-blocking `accept` until it would block: the
    /// reactor may not know yet that the socket is readable) and closes the socket.
    fn close(&mut self) {
        let Some(listener) = self.inner.take() else {
            return;
        };
        let listener = match listener.into_std() {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot drain the listen backlog");
                return;
            }
        };
        loop {
            match listener.accept() {
                Ok((stream, addr)) => {
                    let stream = stream
                        .set_nonblocking(true)
                        .and_then(|()| tokio::net::TcpStream::from_std(stream));
                    match stream {
                        Ok(s) => self.queued.push_back((s, addr)),
                        Err(e) => tracing::debug!(error = %e, "a queued connection is unusable"),
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed while draining");
                    break;
                }
            }
        }
        // `listener` drops here: the socket closes with nothing left in its queue.
    }
}

impl axum::serve::Listener for Draining {
    type Io = tokio::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Some(inner) = &self.inner else {
                if let Some(conn) = self.queued.pop_front() {
                    return self.taken(conn);
                }
                self.drained.notify_one();
                // The server stops asking once the drain is signalled.
                std::future::pending::<()>().await;
                continue;
            };
            tokio::select! {
                accepted = inner.accept() => match accepted {
                    Ok(conn) => return self.taken(conn),
                    Err(e) => {
                        // Out of descriptors and the like: wait a little, as axum's own loop does.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
                () = self.closing.notified() => self.close(),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        match &self.inner {
            Some(l) => l.local_addr(),
            None => Err(std::io::Error::other("the listener is closed")),
        }
    }
}

/// Milliseconds since the Unix epoch (for timestamps in bodies).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod serve_tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Connections the kernel accepted before the stop (still in the listen backlog) are served,
    /// not reset; a connection made after the listener closed is refused.
    #[tokio::test(flavor = "current_thread")]
    async fn connections_queued_at_shutdown_are_served_not_reset() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(super::serve(listener, app, async {
            let _ = stopped.await;
        }));
        // Blocking connects on this single thread: the server cannot run, so every connection
        // waits in the backlog; then the stop is requested before it ever ran.
        let queued: Vec<std::net::TcpStream> = (0..20)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        stop.send(()).unwrap();
        let mut answered = 0;
        for s in queued {
            s.set_nonblocking(true).unwrap();
            let mut s = tokio::net::TcpStream::from_std(s).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .await
                .unwrap_or_else(|e| panic!("connection {answered}: {e}"));
            let mut answer = String::new();
            s.read_to_string(&mut answer)
                .await
                .expect("an answer, not a reset");
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            answered += 1;
        }
        assert_eq!(answered, 20);
        server.await.unwrap().unwrap();
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "closed after the drain"
        );
    }
}
