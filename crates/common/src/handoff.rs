//! What a server that speaks HTTP/1 itself for its common case (the balancer's hop `lb::h1`, the
//! gateway's front path) shares: reading more of a request head ([`read_more`]), and handing the
//! connection over to hyper and a `Router` when a request is one it leaves to the full stack
//! ([`hand_off`]). The bytes already read are given back first ([`Prefixed`]), so hyper sees the
//! connection from that request on as if it had read it from the start.
//!
//! And how long a client may keep a connection without sending a request ([`ClientTimeouts`],
//! nginx's `keepalive_timeout` and `client_header_timeout`): a connection idle between requests,
//! or one whose request head has not all arrived, is closed when its time is up, so that clients
//! that connect and say nothing (or trickle a head byte by byte) cannot hold connections and
//! tasks for ever. hyper's side of a handed-over connection gets the head timeout too. And a client
//! that stops reading its answers is closed once it has taken no bytes for the send timeout
//! ([`write_client`], nginx's `send_timeout`).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::ConnectInfo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// How long a client connection may wait for its next request, and how long a request head may
/// take to arrive once it began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientTimeouts {
    /// Between requests (and before the first): nginx's `keepalive_timeout`.
    pub idle: Duration,
    /// From a head's first bytes to its end: nginx's `client_header_timeout`.
    pub head: Duration,
    /// Between two writes to the client that took bytes: nginx's `send_timeout`.
    pub send: Duration,
}

/// Writes all of `bytes` to `client`; false if the connection failed, or if the client took no
/// bytes for `send` (between two writes, not for the whole answer, as nginx's `send_timeout`), so
/// that a client that stops reading cannot hold its connection, its task and an upstream
/// connection for ever. An answer that fits in the socket's buffer goes in one write, without a
/// timer.
pub async fn write_client(client: &mut TcpStream, mut bytes: &[u8], send: Duration) -> bool {
    use tokio::io::AsyncWriteExt;
    match client.try_write(bytes) {
        Ok(n) if n == bytes.len() => return true,
        Ok(n) => bytes = &bytes[n..],
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Err(_) => return false,
    }
    while !bytes.is_empty() {
        match tokio::time::timeout(send, client.write(bytes)).await {
            Ok(Ok(n)) if n > 0 => bytes = &bytes[n..],
            // Closed, failed, or no progress within `send`.
            _ => return false,
        }
    }
    true
}

/// A deadline moves forward only when it would move by this much (or an eighth of the idle
/// timeout, when that is less) or more: a busy connection resets its timer about once a second,
/// not once per request. The time a client gets is between its timeout less that and its timeout.
const SLACK: Duration = Duration::from_secs(1);

/// One connection's deadline for the client's bytes ([`ClientTimeouts`]): one timer per
/// connection, moved as requests come and go.
#[derive(Debug)]
pub struct ClientDeadline {
    timer: Pin<Box<Sleep>>,
    at: Instant,
    timeouts: ClientTimeouts,
    /// [`SLACK`], or less for short timeouts.
    slack: Duration,
    /// When the head being read began (`None` between requests).
    head_began: Option<Instant>,
}

impl ClientDeadline {
    /// The deadline of a new connection: its first request is due within the idle timeout.
    pub fn new(timeouts: ClientTimeouts) -> Self {
        let at = Instant::now() + timeouts.idle;
        Self {
            timer: Box::pin(tokio::time::sleep_until(at)),
            at,
            timeouts,
            slack: SLACK.min(timeouts.idle / 8),
            head_began: None,
        }
    }

    /// Moves the deadline to `want`: at once when that is sooner, and only by the slack or more
    /// when later.
    fn set(&mut self, want: Instant) {
        if want < self.at || want >= self.at + self.slack {
            self.timer.as_mut().reset(want);
            self.at = want;
        }
    }
}

use crate::Closing;

/// Reads more of the client's bytes into `buf` (growing it by `grow` when less than 1 KiB is
/// free); whether the connection goes on. Between requests (`buf` empty) `stop` resolving ends an
/// idle connection at once; a request already begun is read to its end. The client's time
/// (`deadline`) running out ends the connection either way: between requests after the idle
/// timeout, within a head the head timeout after its first bytes came.
pub async fn read_more(
    client: &mut TcpStream,
    buf: &mut bytes::BytesMut,
    grow: usize,
    stop: impl std::future::Future<Output = ()>,
    deadline: &mut ClientDeadline,
) -> bool {
    use tokio::io::AsyncReadExt;
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(grow);
    }
    let now = Instant::now();
    let read = if buf.is_empty() {
        deadline.head_began = None;
        deadline.set(now + deadline.timeouts.idle);
        tokio::select! {
            biased;
            read = client.read_buf(buf) => read,
            () = stop => return false,
            () = deadline.timer.as_mut() => return false,
        }
    } else {
        // A head came in part: it began about when the read that brought its first bytes ended.
        let began = *deadline.head_began.get_or_insert(now);
        deadline.set(began + deadline.timeouts.head);
        tokio::select! {
            biased;
            read = client.read_buf(buf) => read,
            () = deadline.timer.as_mut() => return false,
        }
    };
    matches!(read, Ok(n) if n > 0)
}

/// Serves the rest of the connection with hyper (HTTP/1 or HTTP/2, with upgrades) and `app`, the
/// bytes in `buffered` first; the handlers see `ConnectInfo(peer)`. A stop (`closing`) shuts the
/// connection down gracefully: the request in flight is answered, then it closes. An HTTP/1
/// request head must arrive within the head timeout (hyper's `header_read_timeout`), and the
/// client must take bytes of its answers within the send timeout ([`Prefixed`]), as on the path
/// that handed it over.
pub async fn hand_off(
    client: TcpStream,
    buffered: Bytes,
    peer: SocketAddr,
    app: Router,
    mut closing: Closing,
    timeouts: ClientTimeouts,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;
    let app = app.layer(axum::Extension(ConnectInfo(peer)));
    let service = TowerToHyperService::new(app);
    let io = TokioIo::new(Prefixed::new(buffered, client, timeouts.send));
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(timeouts.head);
    let conn = builder.serve_connection_with_upgrades(io, service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        () = closing.fired() => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// A stream whose first bytes are some already read from it, and whose writes fail once the peer
/// has taken no bytes for the send timeout (hyper has no write timeout of its own: without this,
/// a client that stops reading would hold a handed-over connection for ever).
pub struct Prefixed {
    /// Given out first.
    prefix: Bytes,
    /// The rest.
    inner: TcpStream,
    send: Duration,
    /// Armed when a write finds the socket full; dropped when one takes bytes.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl Prefixed {
    /// `prefix` first, then what `inner` reads; writes fail after `send` without progress.
    pub fn new(prefix: Bytes, inner: TcpStream, send: Duration) -> Self {
        Self {
            prefix,
            inner,
            send,
            stalled: None,
        }
    }

    /// What a write's poll came to, with the send timeout applied to a write that must wait.
    fn timed(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<usize>>,
    ) -> Poll<std::io::Result<usize>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let send = self.send;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(send)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client took no bytes within the send timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            bytes::Buf::advance(&mut self.prefix, n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.timed(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.timed(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::{Prefixed, write_client};

    /// More than the socket buffers of both ends hold, so a peer that does not read blocks it.
    const LOTS: usize = 64 << 20;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let near = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (far, _) = listener.accept().await.unwrap();
        (near, far)
    }

    /// Reads everything `far` gets until it closes; how many bytes that was.
    fn steady_reader(mut far: TcpStream) -> tokio::task::JoinHandle<usize> {
        tokio::spawn(async move {
            let mut got = 0usize;
            let mut chunk = vec![0u8; 1 << 20];
            loop {
                match far.read(&mut chunk).await {
                    Ok(0) | Err(_) => return got,
                    Ok(n) => got += n,
                }
                // Slower than the writer, but never silent for anywhere near the send timeout.
                tokio::task::yield_now().await;
            }
        })
    }

    #[tokio::test]
    async fn a_peer_that_stops_reading_fails_the_write_once_it_took_nothing_for_the_send_timeout() {
        let (mut near, _far) = pair().await;
        let bytes = vec![b'x'; LOTS];
        let written = tokio::time::timeout(
            Duration::from_secs(30),
            write_client(&mut near, &bytes, Duration::from_millis(200)),
        )
        .await
        .expect("the write gave up");
        assert!(!written);
    }

    #[tokio::test]
    async fn a_peer_that_reads_slower_than_the_writer_but_steadily_gets_everything() {
        let (mut near, far) = pair().await;
        let reader = steady_reader(far);
        let bytes = vec![b'x'; LOTS];
        assert!(write_client(&mut near, &bytes, Duration::from_secs(30)).await);
        drop(near);
        assert_eq!(reader.await.unwrap(), LOTS);
    }

    #[tokio::test]
    async fn a_closed_peer_fails_the_write() {
        let (mut near, far) = pair().await;
        drop(far);
        let bytes = vec![b'x'; LOTS];
        assert!(!write_client(&mut near, &bytes, Duration::from_secs(30)).await);
    }

    /// The stream hyper is given after a hand-over: the bytes already read come first, and a
    /// write to a peer that reads nothing fails once the send timeout passed without progress.
    #[tokio::test]
    async fn a_handed_over_stream_gives_back_its_prefix_and_its_writes_time_out() {
        let (near, mut far) = pair().await;
        far.write_all(b" world").await.unwrap();
        let mut stream = Prefixed::new(
            bytes::Bytes::from_static(b"hello"),
            near,
            Duration::from_millis(200),
        );
        let mut read = [0u8; 11];
        stream.read_exact(&mut read).await.unwrap();
        assert_eq!(&read, b"hello world");

        let bytes = vec![b'x'; LOTS];
        let written = tokio::time::timeout(Duration::from_secs(30), stream.write_all(&bytes))
            .await
            .expect("the write gave up");
        let err = written.expect_err("a peer that reads nothing took 64 MiB");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn a_handed_over_stream_writes_everything_to_a_steady_reader() {
        let (near, far) = pair().await;
        let reader = steady_reader(far);
        let mut stream = Prefixed::new(bytes::Bytes::new(), near, Duration::from_secs(30));
        let bytes = vec![b'x'; LOTS];
        stream.write_all(&bytes).await.unwrap();
        stream.shutdown().await.unwrap();
        drop(stream);
        assert_eq!(reader.await.unwrap(), LOTS);
    }
}
