//! What a server that speaks HTTP/1 itself for its common case (the balancer's hop `lb::h1`, the
//! gateway's front path) shares: reading more of a request head ([`read_more`]), and handing the
//! connection over to hyper and a `Router` when a request is one it leaves to the full stack
//! ([`hand_off`]). The bytes already read are given back first ([`Prefixed`]), so hyper sees the
//! connection from that request on as if it had read it from the start.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Bytes;
use axum::extract::ConnectInfo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::Closing;

/// Reads more of the client's bytes into `buf` (growing it by `grow` when less than 1 KiB is
/// free); whether the connection goes on. Between requests (`buf` empty) `stop` resolving ends an
/// idle connection at once; a request already begun is read to its end.
pub async fn read_more(
    client: &mut TcpStream,
    buf: &mut bytes::BytesMut,
    grow: usize,
    stop: impl std::future::Future<Output = ()>,
) -> bool {
    use tokio::io::AsyncReadExt;
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(grow);
    }
    let read = if buf.is_empty() {
        tokio::select! {
            biased;
            read = client.read_buf(buf) => read,
            () = stop => return false,
        }
    } else {
        client.read_buf(buf).await
    };
    matches!(read, Ok(n) if n > 0)
}

/// Serves the rest of the connection with hyper (HTTP/1 or HTTP/2, with upgrades) and `app`, the
/// bytes in `buffered` first; the handlers see `ConnectInfo(peer)`. A stop (`closing`) shuts the
/// connection down gracefully: the request in flight is answered, then it closes.
pub async fn hand_off(
    client: TcpStream,
    buffered: Bytes,
    peer: SocketAddr,
    app: Router,
    mut closing: Closing,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;
    let app = app.layer(axum::Extension(ConnectInfo(peer)));
    let service = TowerToHyperService::new(app);
    let io = TokioIo::new(Prefixed {
        prefix: buffered,
        inner: client,
    });
    let builder = Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection_with_upgrades(io, service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        () = closing.fired() => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// A stream whose first bytes are some already read from it.
pub struct Prefixed {
    /// Given out first.
    pub prefix: Bytes,
    /// The rest.
    pub inner: TcpStream,
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
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
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
