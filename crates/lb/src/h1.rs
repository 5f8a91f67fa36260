//! The balancer's own HTTP/1 hop: one task per client connection that reads each request head,
//! rewrites it, writes it to a pooled upstream connection and relays the answer's bytes back,
//! with nothing in between (no request/response objects, no header maps, no body frames).
//!
//! It does what [`crate::proxy::forward`] does, byte for byte on the wire: hop-by-hop headers out
//! (and those `Connection` names), `X-Forwarded-For`/`-Proto`/`-Host` in, the request id kept or
//! made and echoed, the body limit, the edge checks, per-backend metrics, retries within the pool's
//! rules and budget, JSON errors. What it does not do, it hands over: a connection whose next
//! request is anything else (HTTP/2 with prior knowledge, an admin route under `/_lb`, an
//! `Upgrade`, `Expect: 100-continue`, a chunked request body, a body over the limit, HTTP/1.0, an
//! absolute-form target, a head it cannot parse, a client refused by the edge) is served from
//! that request on by hyper and [`crate::router`], with the bytes already read given back first.
//! So every rare case keeps exactly the behaviour the hyper path has, and the common one (a
//! keep-alive HTTP/1.1 request with no body or a `Content-Length` body) costs a few thousand
//! instructions.
//!
//! Invariants:
//! - an upstream connection goes back to the pool only after a whole answer was read from it, with
//!   no byte more, and only if the backend did not ask to close it;
//! - a request is sent again only if nothing of it reached a backend (it could not connect), or
//!   if it is idempotent without a body (and then within the retry budget), as [`balance::Pool`]
//!   does; a reused connection that closes before any byte of an answer is retried once on a
//!   fresh one, for a replayable request only;
//! - after an error answer the connection closes unless the request was read to its end.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use balance::clock;
use balance::{Backend, PoolError};
use bytes::{Buf, BytesMut};
use common::Closing;
use smallvec::SmallVec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{ADMIN_PREFIX, AppState};
use framing::{Chunked, parse_length};

/// The longest request or response head read (hyper's default buffer limit is about this).
const MAX_HEAD: usize = 64 * 1024;
/// The most header lines parsed in one head; more go to the hyper path.
const MAX_HEADERS: usize = 100;
/// Read buffer size, each way.
const BUFFER: usize = 16 * 1024;

/// Idle upstream connections, one list per thread: a connection is driven by the reactor of
/// the runtime it was made on, and each of the balancer's worker threads runs its own runtime
/// (`crate::workers`), so a connection stays with the thread that made it. The backend's
/// connection epoch says which kept connections are still good (marking a backend down or
/// draining it bumps it).
mod idle {
    use std::cell::RefCell;
    use std::sync::{Arc, Weak};

    use balance::Backend;
    use tokio::net::TcpStream;

    /// One backend's kept connections on this thread, each with the epoch it was kept under.
    struct Kept {
        /// Keeps the backend's allocation, so that no other backend takes its address.
        backend: Weak<Backend>,
        streams: Vec<(u64, TcpStream)>,
    }

    thread_local! {
        /// One entry per backend this thread has kept connections to; most recent last.
        static KEPT: RefCell<Vec<Kept>> = const { RefCell::new(Vec::new()) };
    }

    /// A kept connection to `backend` that still looks open, most recent first. One the backend
    /// closed meanwhile (its end of stream already here), or holding bytes nobody asked for, or
    /// kept under an older epoch, is closed. A close still on its way is the caller's to survive
    /// (a reused connection that ends before any answer byte).
    pub(super) fn take(backend: &Arc<Backend>) -> Option<TcpStream> {
        let epoch = backend.conns.epoch();
        KEPT.with(|kept| {
            let mut kept = kept.borrow_mut();
            let list = kept
                .iter_mut()
                .find(|k| std::ptr::eq(k.backend.as_ptr(), Arc::as_ptr(backend)))?;
            while let Some((kept_at, stream)) = list.streams.pop() {
                if kept_at != epoch {
                    // Everything kept before it is older still.
                    list.streams.clear();
                    return None;
                }
                let mut probe = [0u8; 1];
                match stream.try_read(&mut probe) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Some(stream),
                    _ => continue,
                }
            }
            None
        })
    }

    /// Keeps a connection whose last exchange ended cleanly, unless the backend drains or this
    /// thread keeps `max_idle` for it already (then it closes). The connections of backends that
    /// left the pool are closed here.
    pub(super) fn give_back(backend: &Arc<Backend>, stream: TcpStream) {
        if !backend.conns.keeps_connections() {
            return;
        }
        let epoch = backend.conns.epoch();
        KEPT.with(|kept| {
            let mut kept = kept.borrow_mut();
            let at = match kept
                .iter()
                .position(|k| std::ptr::eq(k.backend.as_ptr(), Arc::as_ptr(backend)))
            {
                Some(at) => at,
                None => {
                    kept.retain(|k| k.backend.strong_count() > 0);
                    kept.push(Kept {
                        backend: Arc::downgrade(backend),
                        streams: Vec::new(),
                    });
                    kept.len() - 1
                }
            };
            let list = &mut kept[at].streams;
            if list.first().is_some_and(|(e, _)| *e != epoch) {
                // Kept before a clear: none of them is good any more.
                list.clear();
            }
            if list.len() < backend.conns.max_idle() {
                list.push((epoch, stream));
            }
        });
    }
}

/// Serves one client connection until it closes (or the server stops), handing it to hyper and
/// `app` when a request needs what only that path does.
pub async fn connection(
    mut client: TcpStream,
    peer: SocketAddr,
    state: AppState,
    app: Router,
    closing: Closing,
) {
    let _ = client.set_nodelay(true);
    let mut hop = Hop::new(&state, peer, closing.clone());
    let outcome = if state.edge.admits(peer.ip()) {
        hop.serve(&mut client).await
    } else {
        // The refusal (403) is the hyper path's, as is every other rare answer.
        Outcome::HandOff
    };
    if let Outcome::HandOff = outcome {
        let buffered = hop.inbuf.split().freeze();
        drop(hop);
        let timeouts = state.client_timeouts;
        common::handoff::hand_off(client, buffered, peer, app, closing, timeouts).await;
    }
}

/// How [`Hop::serve`] ended.
enum Outcome {
    /// The connection is over.
    Close,
    /// The rest of the connection (from the request at the start of the buffer) is hyper's.
    HandOff,
}

/// A request head, parsed, with its upstream form written out.
struct Head {
    /// Length of the head in the client's bytes.
    len: usize,
    /// The body's length (`Content-Length`, 0 without one).
    body: u64,
    /// Idempotent and bodiless: may be sent again after a broken connection.
    replayable: bool,
    /// `HEAD`: the answer has no body whatever its headers say.
    head_method: bool,
    /// The client asked to close after this answer.
    close: bool,
}

/// How the body of an answer is delimited.
enum Framing {
    None,
    Length(u64),
    Chunked(Chunked),
    /// Until the backend closes (HTTP/1.0 style): the client connection closes after it too.
    UntilClose,
}

/// An answer's head, parsed, with its client form written out.
struct Answer {
    len: usize,
    status: u16,
    framing: Framing,
    /// The backend keeps the connection open after this answer.
    keep_alive: bool,
}

/// How one attempt on one backend ended.
enum Attempt {
    /// An answer's head came, on this connection.
    Answered(TcpStream, Answer),
    /// No connection could be made: nothing of the request left.
    Unreachable(balance::conn::FailKind, String),
    /// The exchange failed (on a kept-alive connection when `true`).
    Failed(Failure, bool),
}

/// Why an exchange with a backend failed.
enum Failure {
    /// No answer's head within the response timeout.
    Timeout,
    /// The connection ended (or reset) before any byte of an answer.
    Closed(String),
    /// Anything else: a partial answer, an unparsable head, a write error midway.
    Broken(String),
    /// The client went away while its body was being relayed.
    ClientGone,
}

/// One connection's buffers and what stays the same for all its requests.
struct Hop<'a> {
    state: &'a AppState,
    peer: SocketAddr,
    /// The client's address as `X-Forwarded-For` text, formatted once.
    peer_text: String,
    closing: Closing,
    /// Bytes from the client not consumed yet.
    inbuf: BytesMut,
    /// Bytes from the backend.
    upbuf: BytesMut,
    /// The request as it goes upstream (head and the body bytes already read).
    out: Vec<u8>,
    /// The answer's head as it goes to the client.
    back: Vec<u8>,
    /// This request's id (the client's or a new one).
    rid: Vec<u8>,
    /// The metric handles of the last answer (backend, status): most connections see one
    /// backend pair and one status over and over, so the per-thread table is rarely read.
    last_handles: Option<(usize, u16, metrics::Counter, metrics::Histogram)>,
    /// One timer per connection, reset for each exchange (cheaper than a new one per request).
    timer: Pin<Box<tokio::time::Sleep>>,
    /// The client's time to send its next request (idle and head timeouts).
    deadline: common::handoff::ClientDeadline,
}

impl<'a> Hop<'a> {
    fn new(state: &'a AppState, peer: SocketAddr, closing: Closing) -> Self {
        Self {
            state,
            peer,
            peer_text: crate::edge::canonical(peer.ip()).to_string(),
            closing,
            inbuf: BytesMut::with_capacity(BUFFER),
            upbuf: BytesMut::with_capacity(BUFFER),
            out: Vec::with_capacity(1024),
            back: Vec::with_capacity(512),
            rid: Vec::with_capacity(64),
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            deadline: common::handoff::ClientDeadline::new(state.client_timeouts),
            last_handles: None,
        }
    }

    /// Counts an answer of `backend` with `status` that took `ns` to its head.
    fn count(&mut self, backend: &Arc<Backend>, status: u16, ns: u64) {
        // The address is only compared; the table behind `proxy::handles` keeps each
        // backend's allocation, so no other backend can take its address.
        let key = Arc::as_ptr(backend) as usize;
        let fresh = !matches!(&self.last_handles, Some((b, s, ..)) if *b == key && *s == status);
        if fresh {
            let (requests, duration) = crate::proxy::handles(backend, status);
            self.last_handles = Some((key, status, requests, duration));
        }
        if let Some((_, _, requests, duration)) = &self.last_handles {
            requests.increment(1);
            duration.record(ns as f64 / 1e9);
        }
    }

    /// Requests one after the other (pipelined ones too) until the connection ends or must be
    /// handed over.
    async fn serve(&mut self, client: &mut TcpStream) -> Outcome {
        loop {
            let head = loop {
                if !self.inbuf.is_empty() {
                    match self.parse_request() {
                        Parsed::Complete(head) => break head,
                        Parsed::HandOff => return Outcome::HandOff,
                        Parsed::Partial if self.inbuf.len() >= MAX_HEAD => {
                            return Outcome::HandOff;
                        }
                        Parsed::Partial => {}
                    }
                }
                if !common::handoff::read_more(
                    client,
                    &mut self.inbuf,
                    BUFFER,
                    self.closing.fired(),
                    &mut self.deadline,
                )
                .await
                {
                    return Outcome::Close;
                }
            };
            if self.state.edge.over_limit(self.peer.ip()) {
                // The 429 with its headers is the hyper path's; the head is still unconsumed.
                return Outcome::HandOff;
            }
            self.inbuf.advance(head.len);
            if !self.forward(client, &head).await {
                return Outcome::Close;
            }
        }
    }

    /// Parses the request head at the start of `inbuf` and writes its upstream form into `out`
    /// (the head is not consumed).
    fn parse_request(&mut self) -> Parsed {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let len = match req.parse(&self.inbuf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            // HTTP/2's preface, too many headers, bad bytes: hyper answers (or speaks h2).
            Err(_) => return Parsed::HandOff,
        };
        let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
            return Parsed::HandOff;
        };
        if !target.starts_with('/') || is_admin(target) {
            return Parsed::HandOff;
        }

        // What decides the request's fate, in one pass.
        let mut body: Option<u64> = None;
        let mut close = false;
        let mut named: SmallVec<[&str; 4]> = SmallVec::new();
        let mut xff: Option<&[u8]> = None;
        let mut host: Option<&[u8]> = None;
        let mut rid: Option<&[u8]> = None;
        for h in req.headers.iter() {
            let name = h.name.as_bytes();
            match name.len() {
                4 if name.eq_ignore_ascii_case(b"host") => host = Some(h.value),
                6 if name.eq_ignore_ascii_case(b"expect") => return Parsed::HandOff,
                7 if name.eq_ignore_ascii_case(b"upgrade") => return Parsed::HandOff,
                10 if name.eq_ignore_ascii_case(b"connection") => {
                    let Ok(v) = std::str::from_utf8(h.value) else {
                        return Parsed::HandOff;
                    };
                    for token in v.split(',').map(str::trim) {
                        if token.eq_ignore_ascii_case("close") {
                            close = true;
                        } else if token.eq_ignore_ascii_case("upgrade") {
                            return Parsed::HandOff;
                        } else if !token.is_empty() && !token.eq_ignore_ascii_case("keep-alive") {
                            named.push(token);
                        }
                    }
                }
                12 if name.eq_ignore_ascii_case(b"x-request-id")
                    && rid.is_none()
                    && !h.value.is_empty() =>
                {
                    rid = Some(h.value);
                }
                14 if name.eq_ignore_ascii_case(b"content-length") => {
                    let Ok(n) = parse_length(h.value) else {
                        return Parsed::HandOff;
                    };
                    if body.is_some_and(|seen| seen != n) {
                        return Parsed::HandOff;
                    }
                    body = Some(n);
                }
                15 if name.eq_ignore_ascii_case(b"x-forwarded-for")
                    && xff.is_none()
                    && !h.value.trim_ascii().is_empty() =>
                {
                    xff = Some(h.value.trim_ascii());
                }
                17 if name.eq_ignore_ascii_case(b"transfer-encoding") => return Parsed::HandOff,
                _ => {}
            }
        }
        let body = body.unwrap_or(0);
        if body > self.state.max_body_bytes {
            // 413, and the refused body drained (lingering close): the hyper path's.
            return Parsed::HandOff;
        }

        self.rid.clear();
        let made_rid = match rid {
            Some(id) => {
                self.rid.extend_from_slice(id);
                false
            }
            None => {
                let mut text = [0u8; common::stack::REQUEST_ID_LEN];
                self.rid
                    .extend_from_slice(common::stack::request_id_text(&mut text).as_bytes());
                true
            }
        };

        let out = &mut self.out;
        out.clear();
        out.extend_from_slice(method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        for h in req.headers.iter() {
            let name = h.name.as_bytes();
            if is_hop_by_hop(name)
                || is_forwarded(name, host.is_some())
                || (made_rid && name.eq_ignore_ascii_case(b"x-request-id"))
                || named
                    .iter()
                    .any(|n| n.as_bytes().eq_ignore_ascii_case(name))
            {
                continue;
            }
            header(out, name, h.value);
        }
        out.extend_from_slice(b"x-forwarded-for: ");
        if let Some(prev) = xff {
            out.extend_from_slice(prev);
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(self.peer_text.as_bytes());
        out.extend_from_slice(b"\r\nx-forwarded-proto: http\r\n");
        if let Some(host) = host {
            header(out, b"x-forwarded-host", host);
        }
        if made_rid {
            header(out, b"x-request-id", &self.rid);
        }
        out.extend_from_slice(b"\r\n");

        let idempotent = matches!(
            method,
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        );
        Parsed::Complete(Head {
            len,
            body,
            replayable: idempotent && body == 0,
            head_method: method == "HEAD",
            close,
        })
    }

    /// Sends the request (head consumed, body next in `inbuf` or on the socket) to a backend and
    /// relays the answer. Returns whether the client connection may carry another request.
    async fn forward(&mut self, client: &mut TcpStream, head: &Head) -> bool {
        let started = clock::now_ns();
        // The body bytes already read go with the head, in one write.
        let buffered = usize::try_from(head.body)
            .unwrap_or(usize::MAX)
            .min(self.inbuf.len());
        self.out.extend_from_slice(&self.inbuf[..buffered]);
        self.inbuf.advance(buffered);
        // Body bytes still on the client socket: once any is relayed, nothing is sent again.
        let mut unread = head.body - buffered as u64;

        let state = self.state;
        let pool = &state.pool;
        let config = pool.config();
        let backends = pool.current();
        pool.admit();
        let mut tried: SmallVec<[usize; 4]> = SmallVec::new();
        let mut last: Option<PoolError> = None;
        let connect_timeout = Duration::from_millis(config.connect_timeout_ms);
        let response_timeout = Duration::from_millis(config.response_timeout_ms);
        let max_attempts = config.max_attempts.max(1);

        for attempt in 1..=max_attempts {
            let Some(i) = pool.pick(&backends, &tried) else {
                break;
            };
            tried.push(i);
            let backend = &backends[i];
            let guard = backend.start();
            let sent_at = clock::now_ns();
            let mut fresh = false;
            let outcome = loop {
                let (mut up, reused) = match idle::take(backend) {
                    Some(up) if !fresh => (up, true),
                    _ => match backend.conns.connect_raw(connect_timeout).await {
                        Ok(up) => (up, false),
                        Err((kind, detail)) => break Attempt::Unreachable(kind, detail),
                    },
                };
                self.timer
                    .as_mut()
                    .reset(tokio::time::Instant::now() + response_timeout);
                let exchange = exchange(
                    &mut up,
                    client,
                    &self.out,
                    &mut self.inbuf,
                    &mut unread,
                    &mut self.upbuf,
                    &mut self.back,
                    head,
                    &self.rid,
                );
                let result = tokio::select! {
                    r = exchange => r,
                    () = self.timer.as_mut() => Err(Failure::Timeout),
                };
                match result {
                    Ok(answer) => break Attempt::Answered(up, answer),
                    // A kept-alive connection the backend closed as it was taken: the request
                    // most likely never got there. A replayable one goes on a fresh connection.
                    Err(Failure::Closed(_)) if reused && head.replayable && !fresh => {
                        fresh = true;
                    }
                    Err(failure) => break Attempt::Failed(failure, reused),
                }
            };
            let (up, answer) = match outcome {
                Attempt::Answered(up, answer) => (up, answer),
                Attempt::Unreachable(kind, detail) => {
                    // Nothing of the request left: always safe to try the next backend, at no
                    // cost to any backend, so outside the retry budget.
                    pool.unanswered(backend);
                    tracing::debug!(?kind, "connect failed before the request left");
                    tracing::warn!(pool = %pool.name(), backend = %backend.url, %detail, "backend unreachable, trying the next one");
                    retried(pool.name());
                    last = Some(PoolError::Unreachable {
                        pool: pool.name().to_string(),
                        detail,
                    });
                    continue;
                }
                Attempt::Failed(Failure::ClientGone, _) => return false,
                Attempt::Failed(failure, reused) => {
                    let err = match failure {
                        Failure::Timeout => PoolError::Timeout {
                            backend: backend.url.clone(),
                            timeout_ms: config.response_timeout_ms,
                        },
                        Failure::Closed(detail) | Failure::Broken(detail) => PoolError::Broken {
                            backend: backend.url.clone(),
                            detail,
                        },
                        Failure::ClientGone => return false,
                    };
                    // A kept-alive connection closed under a request that cannot be replayed
                    // says little about the backend; anything else takes it out of selection.
                    let stale =
                        reused && matches!(&err, PoolError::Broken { .. }) && !head.replayable;
                    if !stale {
                        pool.unanswered(backend);
                    }
                    tracing::warn!(pool = %pool.name(), backend = %backend.url, error = %err, "the backend did not answer");
                    let may = match &err {
                        PoolError::Timeout { .. } => config.retry_timeouts,
                        _ => true,
                    };
                    if !may
                        || !head.replayable
                        || attempt == max_attempts
                        || !pool.may_retry(clock::now_ms())
                    {
                        return self.fail(client, head, unread, err).await;
                    }
                    retried(pool.name());
                    last = Some(err);
                    continue;
                }
            };
            let failed = (500..600).contains(&answer.status);
            let now = pool.answered(&backends, i, sent_at, failed);
            if failed
                && config.retry_server_errors
                && head.replayable
                && attempt < max_attempts
                && pool.has_untried(&backends, &tried)
                && pool.may_retry(now / 1_000_000)
            {
                tracing::debug!(pool = %pool.name(), backend = %backend.url, status = answer.status, "server error; replaying the idempotent request on the next backend");
                retried(pool.name());
                // The answer is dropped unread: its connection closes.
                continue;
            }
            self.count(backend, answer.status, now.saturating_sub(started));
            // A body the backend did not read to its end is still on the client socket.
            let keep_client = unread == 0
                && !head.close
                && !matches!(answer.framing, Framing::UntilClose)
                && !self.closing.is_fired();
            let keep = self
                .relay(client, up, backend, answer, keep_client, guard)
                .await;
            if unread > 0 {
                linger(client).await;
            }
            return keep;
        }
        let err = last.unwrap_or_else(|| PoolError::NoHealthyBackend {
            pool: pool.name().to_string(),
        });
        self.fail(client, head, unread, err).await
    }

    /// Writes the answer's head and body to the client, then gives the upstream connection
    /// back if it is clean. Returns whether the client connection goes on.
    async fn relay(
        &mut self,
        client: &mut TcpStream,
        mut up: TcpStream,
        backend: &Arc<Backend>,
        answer: Answer,
        keep_client: bool,
        guard: balance::backend::InFlight,
    ) -> bool {
        if !keep_client {
            // The head ends with an empty line; the close goes before it.
            self.back.truncate(self.back.len() - 2);
            self.back.extend_from_slice(b"connection: close\r\n\r\n");
        }
        self.upbuf.advance(answer.len);
        let mut framing = answer.framing;
        // What of the body is here already goes out with the head.
        let (here, mut done) = match &mut framing {
            Framing::None => (0, true),
            Framing::Length(n) => {
                let here = usize::try_from(*n)
                    .unwrap_or(usize::MAX)
                    .min(self.upbuf.len());
                *n -= here as u64;
                (here, *n == 0)
            }
            Framing::Chunked(c) => match c.decode(&self.upbuf, None) {
                Ok((here, done)) => (here, done),
                Err(_) => return false,
            },
            Framing::UntilClose => (self.upbuf.len(), false),
        };
        self.back.extend_from_slice(&self.upbuf[..here]);
        self.upbuf.advance(here);
        if !common::handoff::write_client(client, &self.back, self.state.client_timeouts.send).await
        {
            return false;
        }
        while !done {
            self.upbuf.clear();
            if self.upbuf.capacity() < BUFFER {
                self.upbuf.reserve(BUFFER);
            }
            let n = match up.read_buf(&mut self.upbuf).await {
                Ok(n) => n,
                Err(_) => return false,
            };
            if n == 0 {
                // The end of an until-close body (the client connection closes with it);
                // anything else was cut short.
                if matches!(framing, Framing::UntilClose) {
                    let _ = client.shutdown().await;
                }
                return false;
            }
            let take = match &mut framing {
                Framing::Length(left) => {
                    let take = usize::try_from(*left).unwrap_or(usize::MAX).min(n);
                    *left -= take as u64;
                    done = *left == 0;
                    take
                }
                Framing::Chunked(c) => match c.decode(&self.upbuf, None) {
                    Ok((take, end)) => {
                        done = end;
                        take
                    }
                    Err(_) => return false,
                },
                _ => n,
            };
            if !common::handoff::write_client(
                client,
                &self.upbuf[..take],
                self.state.client_timeouts.send,
            )
            .await
            {
                return false;
            }
            self.upbuf.advance(take);
        }
        drop(guard);
        // Clean only if the backend sent nothing past the answer and keeps the connection.
        if answer.keep_alive && self.upbuf.is_empty() {
            idle::give_back(backend, up);
        }
        keep_client
    }

    /// Answers `err` as JSON (after logging and counting it); the connection goes on only if the
    /// request was read to its end.
    async fn fail(
        &mut self,
        client: &mut TcpStream,
        head: &Head,
        unread: u64,
        err: PoolError,
    ) -> bool {
        tracing::warn!(error = %err, "request could not be proxied");
        metrics::counter!("scalelab_lb_errors_total", "code" => err.code()).increment(1);
        let keep = unread == 0 && !head.close && !self.closing.is_fired();
        let body =
            serde_json::json!({"error": err.code(), "message": err.public_message()}).to_string();
        let status = err.status();
        let b = &mut self.back;
        b.clear();
        b.extend_from_slice(b"HTTP/1.1 ");
        b.extend_from_slice(status.as_str().as_bytes());
        b.push(b' ');
        b.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        b.extend_from_slice(b"\r\ncontent-type: application/json\r\ncontent-length: ");
        b.extend_from_slice(body.len().to_string().as_bytes());
        b.extend_from_slice(b"\r\n");
        header(b, b"x-request-id", &self.rid);
        if !keep {
            b.extend_from_slice(b"connection: close\r\n");
        }
        b.extend_from_slice(b"\r\n");
        b.extend_from_slice(body.as_bytes());
        if !common::handoff::write_client(client, &self.back, self.state.client_timeouts.send).await
        {
            return false;
        }
        if !keep && unread > 0 {
            linger(client).await;
        }
        keep
    }
}

/// What [`Hop::parse_request`] found.
enum Parsed {
    Complete(Head),
    Partial,
    HandOff,
}

/// One exchange on `up`: the request (`out`, then `unread` body bytes from the client), then
/// the answer's head, parsed (1xx heads skipped) and its client form written into `back`.
#[allow(clippy::too_many_arguments)]
async fn exchange(
    up: &mut TcpStream,
    client: &mut TcpStream,
    out: &[u8],
    inbuf: &mut BytesMut,
    unread: &mut u64,
    upbuf: &mut BytesMut,
    back: &mut Vec<u8>,
    head: &Head,
    rid: &[u8],
) -> Result<Answer, Failure> {
    if let Err(e) = up.write_all(out).await {
        return Err(Failure::Closed(e.to_string()));
    }
    // Set when the backend stopped reading the body: it may have answered already (a `413`
    // before reading a body over its limit), and that answer is what the client should get.
    let mut cut: Option<std::io::Error> = None;
    while *unread > 0 {
        if inbuf.is_empty() {
            inbuf.reserve(BUFFER);
            match client.read_buf(inbuf).await {
                Ok(0) | Err(_) => return Err(Failure::ClientGone),
                Ok(_) => {}
            }
        }
        let take = usize::try_from(*unread)
            .unwrap_or(usize::MAX)
            .min(inbuf.len());
        if let Err(e) = up.write_all(&inbuf[..take]).await {
            cut = Some(e);
            break;
        }
        inbuf.advance(take);
        *unread -= take as u64;
    }
    let cut_detail = |e: &Option<std::io::Error>, what: String| match e {
        Some(e) => format!("the backend stopped reading the body: {e}"),
        None => what,
    };
    upbuf.clear();
    if upbuf.capacity() < BUFFER {
        upbuf.reserve(BUFFER);
    }
    loop {
        match up.read_buf(upbuf).await {
            Ok(0) if upbuf.is_empty() && cut.is_none() => {
                return Err(Failure::Closed("closed before answering".into()));
            }
            Ok(0) => {
                let what = "closed in the middle of an answer".to_string();
                return Err(Failure::Broken(cut_detail(&cut, what)));
            }
            Err(e) if upbuf.is_empty() && cut.is_none() => {
                return Err(Failure::Closed(e.to_string()));
            }
            Err(e) => return Err(Failure::Broken(cut_detail(&cut, e.to_string()))),
            Ok(_) => {}
        }
        loop {
            match parse_answer(upbuf, back, head, rid) {
                Ok(Some(answer)) if (100..200).contains(&answer.status) => {
                    // An interim answer (103 Early Hints): not passed on; the real one follows.
                    upbuf.advance(answer.len);
                    if upbuf.is_empty() {
                        break;
                    }
                }
                Ok(Some(mut answer)) => {
                    // After a cut body the connection is good for nothing more.
                    answer.keep_alive &= cut.is_none();
                    return Ok(answer);
                }
                Ok(None) if upbuf.len() >= MAX_HEAD => {
                    return Err(Failure::Broken("answer head too large".into()));
                }
                Ok(None) => break,
                Err(detail) => return Err(Failure::Broken(detail)),
            }
        }
        if upbuf.capacity() - upbuf.len() < 1024 {
            upbuf.reserve(BUFFER);
        }
    }
}

/// Parses the answer head at the start of `upbuf` and writes its client form into `back`;
/// `None` while incomplete.
fn parse_answer(
    upbuf: &BytesMut,
    back: &mut Vec<u8>,
    head: &Head,
    rid: &[u8],
) -> Result<Option<Answer>, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(upbuf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("unparsable answer: {e}")),
    };
    let (Some(version), Some(status)) = (resp.version, resp.code) else {
        return Err("answer without a status".into());
    };
    if status == 101 {
        return Err("the backend switched protocols, which was not asked".into());
    }
    let mut keep_alive = version == 1;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut encoded = false;
    let mut has_rid = false;
    let mut named: SmallVec<[&str; 4]> = SmallVec::new();
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        match name.len() {
            10 if name.eq_ignore_ascii_case(b"connection") => {
                let v = std::str::from_utf8(h.value).unwrap_or("");
                for token in v.split(',').map(str::trim) {
                    if token.eq_ignore_ascii_case("close") {
                        keep_alive = false;
                    } else if token.eq_ignore_ascii_case("keep-alive") {
                        keep_alive |= version == 0;
                    } else if !token.is_empty() {
                        named.push(token);
                    }
                }
            }
            12 if name.eq_ignore_ascii_case(b"x-request-id") => has_rid = true,
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                let n = parse_length(h.value).map_err(|_| "bad content-length")?;
                if length.is_some_and(|seen| seen != n) {
                    return Err("conflicting content-length".into());
                }
                length = Some(n);
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                encoded = true;
                // Chunked must be the last coding when present (RFC 9112 §6.1).
                chunked = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.rsplit(',').next())
                    .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
            }
            _ => {}
        }
    }
    let framing = if head.head_method || status == 204 || status == 304 || status < 200 {
        Framing::None
    } else if encoded {
        if chunked {
            Framing::Chunked(Chunked::default())
        } else {
            Framing::UntilClose
        }
    } else if let Some(n) = length {
        if n == 0 {
            Framing::None
        } else {
            Framing::Length(n)
        }
    } else {
        Framing::UntilClose
    };
    if matches!(framing, Framing::UntilClose) {
        keep_alive = false;
    }
    back.clear();
    back.extend_from_slice(b"HTTP/1.1 ");
    // Three digits: httparse reads exactly three (100..=999), no allocation.
    back.extend_from_slice(&[
        b'0' + (status / 100 % 10) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
    ]);
    back.push(b' ');
    back.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    back.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        if is_hop_by_hop(name)
            || named
                .iter()
                .any(|n| n.as_bytes().eq_ignore_ascii_case(name))
        {
            continue;
        }
        header(back, name, h.value);
    }
    if matches!(framing, Framing::Chunked(_)) {
        back.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if !has_rid {
        header(back, b"x-request-id", rid);
    }
    back.extend_from_slice(b"\r\n");
    Ok(Some(Answer {
        len,
        status,
        framing,
        keep_alive,
    }))
}

/// Writes `name: value\r\n`.
fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Whether `name` is a hop-by-hop header (RFC 9110 §7.6.1) or `Proxy-Connection`, in any case:
/// never forwarded.
pub(crate) fn is_hop_by_hop(name: &[u8]) -> bool {
    let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
    match name.len() {
        2 => is("te"),
        7 => is("trailer") || is("upgrade"),
        10 => is("connection") || is("keep-alive"),
        16 => is("proxy-connection"),
        17 => is("transfer-encoding"),
        18 => is("proxy-authenticate"),
        19 => is("proxy-authorization"),
        _ => false,
    }
}

/// The `X-Forwarded-*` headers the balancer sets itself (the client's `X-Forwarded-For` is
/// folded into the new one; its `X-Forwarded-Host` stays only when there is no `Host` to set).
fn is_forwarded(name: &[u8], has_host: bool) -> bool {
    match name.len() {
        15 => name.eq_ignore_ascii_case(b"x-forwarded-for"),
        17 => name.eq_ignore_ascii_case(b"x-forwarded-proto"),
        16 => has_host && name.eq_ignore_ascii_case(b"x-forwarded-host"),
        _ => false,
    }
}

/// Whether a request target belongs to the balancer's admin routes.
fn is_admin(target: &str) -> bool {
    target
        .strip_prefix(ADMIN_PREFIX)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['/', '?']))
}

fn retried(pool: &str) {
    metrics::counter!("scalelab_pool_retries_total", "pool" => pool.to_string()).increment(1);
}

/// Before closing a connection whose request body was not read: stop writing, then read and
/// drop what the client still sends for a moment, so that the answer is not lost to a reset.
async fn linger(client: &mut TcpStream) {
    let _ = client.shutdown().await;
    let mut sink = [0u8; 8192];
    let drain = async {
        let mut total = 0usize;
        while total < 1 << 20 {
            match client.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_names_in_any_case() {
        for n in [
            "Connection",
            "KEEP-ALIVE",
            "te",
            "Trailer",
            "Transfer-Encoding",
            "upgrade",
            "Proxy-Authorization",
            "proxy-authenticate",
            "Proxy-Connection",
        ] {
            assert!(is_hop_by_hop(n.as_bytes()), "{n}");
        }
        for n in [
            "host",
            "tea",
            "x-connection",
            "content-length",
            "authorization",
        ] {
            assert!(!is_hop_by_hop(n.as_bytes()), "{n}");
        }
    }

    #[test]
    fn admin_targets() {
        for t in ["/_lb", "/_lb/", "/_lb/stats", "/_lb?x=1"] {
            assert!(is_admin(t), "{t}");
        }
        for t in ["/", "/_lbx", "/x/_lb", "/_l"] {
            assert!(!is_admin(t), "{t}");
        }
    }
}
