//! Lingering close: a request body that a handler refused before reading it all (`413` from a
//! body limit, `401` before the body mattered) is read and discarded in the background for a
//! bounded time, as nginx's `lingering_close` does, instead of being dropped.
//!
//! Why: an HTTP/1.1 server that answers early and closes with unread bytes in its receive buffer
//! makes the kernel send a TCP reset. A client still writing a large body (Python's `urllib` and
//! `requests`, curl without `Expect`) then sees "connection reset" and never reads the `413` and
//! its JSON body that was sent. Draining lets the client finish its write and read the answer.
//!
//! Bounds (nginx's defaults): at most [`LINGER_TOTAL`] in all and [`LINGER_IDLE`] between two
//! reads, and at most [`LINGER_BYTES`]; past them the body is dropped and the connection closes.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::http::Request;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;

/// Longest time a refused body is drained.
pub const LINGER_TOTAL: Duration = Duration::from_secs(30);
/// Longest wait for the next chunk of a refused body.
pub const LINGER_IDLE: Duration = Duration::from_secs(5);
/// Most bytes of a refused body read and discarded.
pub const LINGER_BYTES: u64 = 256 * 1024 * 1024;

/// Wraps the body of a request that has one so that, dropped unfinished, it is drained.
pub fn wrap<B>(req: Request<B>) -> Request<Body>
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let (parts, body) = req.into_parts();
    let body = Body::new(body);
    // A request without a body (most GETs) needs no wrapper and pays for none.
    if body.is_end_stream() {
        return Request::from_parts(parts, body);
    }
    Request::from_parts(
        parts,
        Body::new(Lingering {
            inner: Some(body),
            ended: false,
        }),
    )
}

/// A body that drains itself in the background when dropped before its end.
struct Lingering {
    inner: Option<Body>,
    ended: bool,
}

impl HttpBody for Lingering {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = Pin::new(inner).poll_frame(cx);
        if matches!(frame, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.ended = true;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(body) = self.inner.take() else {
            return;
        };
        if self.ended || body.is_end_stream() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(drain(body));
        }
    }
}

/// Reads and discards `body` within the bounds; returns how many bytes it read.
async fn drain(mut body: Body) -> u64 {
    let deadline = tokio::time::Instant::now() + LINGER_TOTAL;
    let mut read = 0u64;
    while read < LINGER_BYTES {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left.min(LINGER_IDLE), body.frame()).await {
            Ok(Some(Ok(frame))) => {
                read += frame.data_ref().map_or(0, |d| d.len() as u64);
            }
            _ => break,
        }
    }
    tracing::debug!(bytes = read, "drained a refused request body");
    read
}

/// The [`tower::Layer`] of [`wrap`], for a router's outermost layers.
#[derive(Debug, Clone, Copy, Default)]
pub struct LingerLayer;

impl<S> tower::Layer<S> for LingerLayer {
    type Service = Linger<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Linger { inner }
    }
}

/// See [`LingerLayer`].
#[derive(Debug, Clone)]
pub struct Linger<S> {
    inner: S,
}

impl<S, B> tower::Service<Request<B>> for Linger<S>
where
    S: tower::Service<Request<Body>>,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        self.inner.call(wrap(req))
    }
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::routing::post;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use crate::stack::{Limits, wrap};
    use crate::{Instance, Json};

    /// A client that declares and writes a 20 MiB body to a service that allows 1 KiB, as
    /// Python's `urllib` does: it finishes writing, then reads the `413` and its JSON body.
    #[tokio::test]
    async fn a_client_still_writing_a_refused_body_reads_the_413() {
        let routes = Router::new().route(
            "/login",
            post(|Json(_): Json<serde_json::Value>| async { "ok" }),
        );
        let app = wrap(
            routes,
            &Instance::new("test", "test-1"),
            Limits {
                body_bytes: 1024,
                ..Limits::default()
            },
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(crate::serve(listener, app, std::future::pending()));

        let n: usize = 20 * 1024 * 1024;
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (mut rd, mut wr) = stream.into_split();
        let writer = tokio::spawn(async move {
            let head = format!(
                "POST /login HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\ncontent-length: {n}\r\n\r\n"
            );
            wr.write_all(head.as_bytes()).await?;
            let chunk = vec![b' '; 64 * 1024];
            let mut sent = 0;
            while sent < n {
                let k = chunk.len().min(n - sent);
                wr.write_all(&chunk[..k]).await?;
                sent += k;
            }
            Ok::<usize, std::io::Error>(sent)
        });
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        let read = tokio::time::timeout(std::time::Duration::from_secs(60), async {
            while !String::from_utf8_lossy(&answer).contains("payload_too_large") {
                let k = rd.read(&mut buf).await?;
                if k == 0 {
                    break;
                }
                answer.extend_from_slice(&buf[..k]);
            }
            Ok::<(), std::io::Error>(())
        })
        .await;
        let text = String::from_utf8_lossy(&answer).into_owned();
        assert!(
            matches!(read, Ok(Ok(()))),
            "reading failed: {read:?} after {text:?}"
        );
        assert!(text.starts_with("HTTP/1.1 413"), "{text}");
        assert!(text.contains("\"error\":\"payload_too_large\""), "{text}");
        let sent = writer.await.expect("writer task");
        assert_eq!(sent.ok(), Some(n), "the whole body was written, no reset");
    }
}
