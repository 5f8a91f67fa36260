//! Pooled keep-alive HTTP/1 connections to one backend.
//!
//! Written on hyper's connection API rather than a ready-made client because the pool must know
//! whether a request left: `try_send_request` hands the request back when it was never written, which
//! is what lets [`crate::Pool`] retry it on another backend without buffering the body.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// How a send failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailKind {
    /// The TCP connection could not be made (refused, unreachable).
    Connect,
    /// The TCP connection took longer than the connect timeout.
    ConnectTimeout,
    /// The connection broke while the request or response was on it.
    Broken,
}

/// A failed send.
#[derive(Debug)]
pub(crate) enum SendError {
    /// Nothing of the request was written: it comes back, to be tried elsewhere.
    NotSent {
        request: Box<Request<Body>>,
        kind: FailKind,
        detail: String,
    },
    /// The request may have been written, at least in part.
    Failed { detail: String },
}

/// Idle connections to one backend, most recently used first.
#[derive(Debug)]
pub struct ConnPool {
    authority: String,
    /// Shared with the response bodies, which put their connection back when they end.
    idle: Arc<Mutex<Vec<SendRequest<Body>>>>,
    max_idle: usize,
    /// Set when the backend drains: no connection is kept or given back any more, so each one
    /// closes after its current response.
    closing: Arc<AtomicBool>,
    /// Bumped each time the idle connections are cleared (a backend marked down or draining):
    /// a plain connection kept under an older epoch is closed instead of used.
    epoch: AtomicU64,
}

/// A connection lent to one response: back to the idle list when the response body has been
/// read to its end ([`Lent::give_back`]), closed if the body is dropped half-read (HTTP/1 carries
/// one exchange at a time, and a half-read response leaves the connection unusable).
#[derive(Debug)]
pub(crate) struct Lent {
    sender: Option<SendRequest<Body>>,
    idle: Arc<Mutex<Vec<SendRequest<Body>>>>,
    max_idle: usize,
    closing: Arc<AtomicBool>,
}

impl Lent {
    /// The response ended: the connection may carry the next request. No task is spawned: the
    /// next user waits for `ready()` when it takes the connection, which is immediate once hyper
    /// has finished the exchange.
    pub(crate) fn give_back(&mut self) {
        if let Some(sender) = self.sender.take()
            && !sender.is_closed()
            && !self.closing.load(Ordering::Acquire)
            && let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.max_idle
        {
            idle.push(sender);
        }
    }
}

impl ConnPool {
    pub(crate) fn new(authority: String, max_idle: usize) -> Self {
        Self {
            authority,
            idle: Arc::new(Mutex::new(Vec::new())),
            max_idle,
            closing: Arc::new(AtomicBool::new(false)),
            epoch: AtomicU64::new(0),
        }
    }

    /// The epoch a plain connection kept by a caller that speaks HTTP/1 itself (the balancer's
    /// hop, `lb::h1`) must have been kept under to be used: one kept under another was kept
    /// before the backend was marked down or started draining, and must be closed.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Whether a connection to this backend may be kept after its answer: not while the
    /// backend drains.
    pub fn keeps_connections(&self) -> bool {
        !self.closing.load(Ordering::Acquire)
    }

    /// How many idle connections to this backend may be kept.
    pub fn max_idle(&self) -> usize {
        self.max_idle
    }

    /// A new plain connection (`TCP_NODELAY` set), within `timeout`.
    pub async fn connect_raw(&self, timeout: Duration) -> Result<TcpStream, (FailKind, String)> {
        connect_tcp(&self.authority, timeout).await
    }

    /// Closes the idle connections (a backend marked down: after an outage they are most likely
    /// dead, and each would cost a request a failure before the pool notices).
    pub(crate) fn clear_idle(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// From now on (`true`) every connection closes after its current response and the idle ones
    /// close at once; `false` keeps connections again (a drain called off).
    pub(crate) fn set_closing(&self, closing: bool) {
        self.closing.store(closing, Ordering::Release);
        if closing {
            self.clear_idle();
        }
    }

    fn take_idle(&self) -> Option<SendRequest<Body>> {
        self.idle.lock().ok()?.pop()
    }

    fn lend(&self, sender: SendRequest<Body>) -> Lent {
        Lent {
            sender: Some(sender),
            idle: self.idle.clone(),
            max_idle: self.max_idle,
            closing: self.closing.clone(),
        }
    }

    /// Sends `req` on an idle connection, or on a new one; the connection comes back with the
    /// response, to be given back when the response body ends.
    pub(crate) async fn send(
        &self,
        mut req: Request<Body>,
        connect_timeout: Duration,
    ) -> Result<(Response<Incoming>, Lent), SendError> {
        // An idle connection may have been closed by the backend since its last use; such a
        // connection hands the request back untouched and the next one is tried.
        while let Some(mut sender) = self.take_idle() {
            // Given back when its last response ended; hyper may still be finishing that exchange.
            if sender.is_closed() || sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    return Ok((resp, self.lend(sender)));
                }
                Err(mut e) => match e.take_message() {
                    Some(back) => req = back,
                    None => {
                        return Err(SendError::Failed {
                            detail: e.into_error().to_string(),
                        });
                    }
                },
            }
        }
        let mut sender = match connect(&self.authority, connect_timeout).await {
            Ok(s) => s,
            Err((kind, detail)) => {
                return Err(SendError::NotSent {
                    request: Box::new(req),
                    kind,
                    detail,
                });
            }
        };
        match sender.try_send_request(req).await {
            Ok(resp) => Ok((resp, self.lend(sender))),
            Err(mut e) => {
                let detail = e.error().to_string();
                match e.take_message() {
                    Some(request) => Err(SendError::NotSent {
                        request: Box::new(request),
                        kind: FailKind::Broken,
                        detail,
                    }),
                    None => Err(SendError::Failed { detail }),
                }
            }
        }
    }
}

/// A TCP connection to `authority` with `TCP_NODELAY`, within `timeout`.
async fn connect_tcp(authority: &str, timeout: Duration) -> Result<TcpStream, (FailKind, String)> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(authority)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err((FailKind::Connect, e.to_string())),
        Err(_) => {
            return Err((
                FailKind::ConnectTimeout,
                format!("no connection within {timeout:?}"),
            ));
        }
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Opens a new connection to `authority` and runs its HTTP/1 state machine in a task.
async fn connect(
    authority: &str,
    timeout: Duration,
) -> Result<SendRequest<Body>, (FailKind, String)> {
    let stream = connect_tcp(authority, timeout).await?;
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| (FailKind::Connect, e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "backend connection ended with an error");
        }
    });
    Ok(sender)
}

/// One active health probe: a fresh connection, `GET path`, `Connection: close`; healthy on 2xx.
pub(crate) async fn probe(authority: &str, path: &str, timeout: Duration) -> bool {
    let attempt = async {
        let mut sender = connect(authority, timeout).await.ok()?;
        let req = Request::get(path)
            .header(http::header::HOST, authority)
            .header(http::header::CONNECTION, "close")
            .header(http::header::USER_AGENT, "scalelab-health-check")
            .body(Body::empty())
            .ok()?;
        let resp = sender.send_request(req).await.ok()?;
        Some(resp.status().is_success())
    };
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Some(true)))
}
