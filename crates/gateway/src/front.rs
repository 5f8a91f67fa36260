//! The gateway's front path: its own HTTP/1.1 engine for the request a read-heavy load is made
//! of, `GET /data` (and `GET /data/{key}`), answered without the middleware stack and the router;
//! any other request hands the connection, from that request on, to hyper and [`crate::router`]
//! (`common::handoff`, the bytes already read given back first). The balancer's hop (`lb::h1`)
//! works the same way.
//!
//! A request answered here gets what the router would give it, from the same code:
//! - admission by `guard::admit` (token, guests, rate limit, role) and the read by
//!   `features::data::read` (cache, one shared db read per key, the fenced fill);
//! - the same answer: status, JSON body, `Content-Type`, `X-Cache`, `X-Cache-Layer`, the rate
//!   limit's headers, `X-Served-By`, `X-Request-Id` (the client's, else a new one), `Date`; an
//!   error is the same `Error` made into the same response;
//! - the same metrics: `scalelab_http_requests_total` and its duration histogram under the
//!   router's route names (`/data`, `/data/{key}`), the in-flight gauge, the cache outcomes;
//! - a panic becomes the stack's JSON `500`, not a dropped connection.
//!
//! Not applied here: the stack's request timeout (the db read is bounded by its client's
//! `upstream_timeout_ms`, the cache's by its own).
//!
//! Handed over: any other method or path; a query with anything but `key` and `refresh` (once
//! each) of unreserved characters, or a path key with anything else (escapes are the router's to
//! decode); HTTP/1.0; a request body, `Transfer-Encoding`, `Expect`, `Upgrade`; HTTP/2; a head
//! httparse refuses or longer than 64 KiB.

use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::http::{HeaderName, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use bytes::{Buf, BytesMut};
use common::Closing;
use common::stack::{HttpHandles, InFlight};
use futures::FutureExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::features::data;
use crate::guard;
use crate::policy::Resolved;
use crate::tokens::{Caller, HeaderSource, Verified};
use crate::{AppState, Error};

/// The longest request head read here; a longer one is hyper's.
const MAX_HEAD: usize = 64 * 1024;
/// The most header lines parsed in one head; more go to hyper.
const MAX_HEADERS: usize = 64;
/// Read buffer size.
const BUFFER: usize = 8 * 1024;

/// What every connection of one gateway shares.
#[derive(Clone)]
pub(crate) struct Front {
    state: AppState,
    /// Everything not answered here.
    app: Router,
    /// The route table's entries of `GET /data` and `GET /data/{key}`.
    routes: [Arc<Resolved>; 2],
    /// `x-served-by: <id>\r\n`, written on every answer.
    served_by: Arc<[u8]>,
    /// The gateway's id as a JSON string, for the answers' `gateway_id`.
    gateway_id_json: Arc<[u8]>,
    /// `scalelab_gateway_front_total{id, outcome}`: requests answered here, and connections
    /// handed to the router (each from one request on).
    answered: metrics::Counter,
    handed_off: metrics::Counter,
    /// `scalelab_http_in_flight` of this gateway.
    in_flight: metrics::Gauge,
    /// How long a client may be idle, or take to send a head.
    timeouts: common::handoff::ClientTimeouts,
}

/// The caller the last request's token header proved on this connection, by the header's exact
/// bytes: a keep-alive client sends the same header request after request. Used only under the
/// rules of the verifier's cache of verified tokens (`Verifier::still_valid`: that cache is on,
/// the key set is the one it was verified under, before `exp`), so it accepts nothing the
/// verifier would refuse; any other header verifies again.
struct Known {
    header: &'static str,
    bytes: Vec<u8>,
    verified: Verified,
}

/// The router's names of the two routes, as the metrics label them.
const ROUTE_NAMES: [&str; 2] = ["/data", "/data/{key}"];

impl Front {
    /// The front path of `state`'s gateway, handing what it does not answer to `app`.
    pub(crate) fn new(state: AppState, app: Router) -> Result<Self, Error> {
        let routes = [
            state.policies().get("GET /data")?.clone(),
            state.policies().get("GET /data/{key}")?.clone(),
        ];
        let mut served_by = Vec::from(&b"x-served-by: "[..]);
        served_by.extend_from_slice(state.instance().id.as_bytes());
        served_by.extend_from_slice(b"\r\n");
        let gateway_id_json = serde_json::to_vec(&*state.instance().id)
            .map_err(|e| Error::Internal(format!("the gateway id as JSON: {e}")))?;
        let outcome = |o: &'static str| metrics::counter!("scalelab_gateway_front_total", "outcome" => o, "id" => state.instance().id.to_string());
        let timeouts = common::handoff::ClientTimeouts {
            idle: std::time::Duration::from_millis(state.inner.config.keepalive_timeout_ms),
            head: std::time::Duration::from_millis(state.inner.config.client_header_timeout_ms),
            send: std::time::Duration::from_millis(state.inner.config.send_timeout_ms),
        };
        Ok(Self {
            timeouts,
            in_flight: InFlight::gauge(state.instance()),
            answered: outcome("answered"),
            handed_off: outcome("handed_off"),
            state,
            app,
            routes,
            served_by: served_by.into(),
            gateway_id_json: gateway_id_json.into(),
        })
    }

    /// Serves one client connection until it closes (or the server stops), handing it to hyper
    /// and the router when a request is not one answered here.
    pub(crate) async fn connection(
        self,
        mut client: TcpStream,
        peer: SocketAddr,
        closing: Closing,
    ) {
        let _ = client.set_nodelay(true);
        // Made once: a new wait per idle read would register with the channel each time.
        let mut stop = closing.clone();
        let fired = std::pin::pin!(stop.fired());
        let mut conn = Conn {
            front: &self,
            peer,
            fired,
            closing: closing.clone(),
            inbuf: BytesMut::with_capacity(BUFFER),
            out: Vec::with_capacity(1024),
            body: Vec::with_capacity(512),
            headers: Admitted::default(),
            rid: Vec::with_capacity(64),
            known: None,
            last_handles: None,
            deadline: common::handoff::ClientDeadline::new(self.timeouts),
        };
        if let Outcome::HandOff = conn.serve(&mut client).await {
            let buffered = conn.inbuf.split().freeze();
            drop(conn);
            self.handed_off.increment(1);
            let app = self.app.clone();
            common::handoff::hand_off(client, buffered, peer, app, closing, self.timeouts).await;
        }
    }
}

/// How [`Conn::serve`] ended.
enum Outcome {
    /// The connection is over.
    Close,
    /// The rest of the connection (from the request at the start of the buffer) is hyper's.
    HandOff,
}

/// A `GET /data` request, parsed.
struct DataRequest {
    /// Length of the head.
    len: usize,
    /// 0: `/data`, 1: `/data/{key}` (the index into `Front::routes`).
    route: usize,
    key: String,
    refresh: Option<String>,
    /// Whether the client sent an `X-Request-Id` (then in `Conn::rid`).
    rid_given: bool,
    /// The client asked to close after this answer.
    close: bool,
}

/// What the head at the start of the buffer is.
enum Parsed {
    Partial,
    HandOff,
    Data(DataRequest),
}

/// One connection's buffers.
struct Conn<'a, F> {
    front: &'a Front,
    peer: SocketAddr,
    /// Resolves when the server stops.
    fired: Pin<&'a mut F>,
    closing: Closing,
    /// Bytes from the client not consumed yet.
    inbuf: BytesMut,
    /// The answer's head, then its body.
    out: Vec<u8>,
    /// The answer's body, serialized.
    body: Vec<u8>,
    /// The request headers `guard::admit` reads (`guard::ADMIT_HEADERS`), refilled per request.
    headers: Admitted,
    /// This request's id: the client's `X-Request-Id`, else a new one.
    rid: Vec<u8>,
    /// What the last token header proved.
    known: Option<Known>,
    /// The metric handles of the last answer (route, status): a connection sees the same pair
    /// over and over.
    last_handles: Option<(usize, u16, HttpHandles)>,
    /// The client's time to send its next request (idle and head timeouts).
    deadline: common::handoff::ClientDeadline,
}

impl<F: Future<Output = ()>> Conn<'_, F> {
    /// Requests one after the other (pipelined ones too) until the connection ends or must be
    /// handed over.
    async fn serve(&mut self, client: &mut TcpStream) -> Outcome {
        loop {
            let request = loop {
                if !self.inbuf.is_empty() {
                    match self.parse() {
                        Parsed::Data(request) => break request,
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
                    self.fired.as_mut(),
                    &mut self.deadline,
                )
                .await
                {
                    return Outcome::Close;
                }
            };
            self.inbuf.advance(request.len);
            let close = request.close;
            self.answer(request).await;
            if !common::handoff::write_client(client, &self.out, self.front.timeouts.send).await {
                return Outcome::Close;
            }
            if close || self.closing.is_fired() {
                let _ = client.shutdown().await;
                return Outcome::Close;
            }
        }
    }

    /// Parses the head at the start of `inbuf` (not consumed) and copies the headers admission
    /// reads into `headers`.
    fn parse(&mut self) -> Parsed {
        let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut raw);
        let len = match req.parse(&self.inbuf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            Err(_) => return Parsed::HandOff,
        };
        let (Some("GET"), Some(target), Some(1)) = (req.method, req.path, req.version) else {
            return Parsed::HandOff;
        };
        let Some((route, key, refresh)) = data_target(target) else {
            return Parsed::HandOff;
        };
        self.headers.clear();
        self.rid.clear();
        let mut rid_given = false;
        let mut close = false;
        for h in req.headers.iter() {
            let name = h.name.as_bytes();
            // Whatever the router treats specially, or this engine does not do, is hyper's; of
            // the rest, only what admission reads is kept (`guard::ADMIT_HEADERS`).
            let admitted = match name.len() {
                6 if name.eq_ignore_ascii_case(b"expect") => return Parsed::HandOff,
                7 if name.eq_ignore_ascii_case(b"upgrade") => return Parsed::HandOff,
                7 if name.eq_ignore_ascii_case(b"x-token") => "x-token",
                10 if name.eq_ignore_ascii_case(b"connection") => {
                    for token in h.value.split(|&b| b == b',') {
                        let token = token.trim_ascii();
                        if token.eq_ignore_ascii_case(b"close") {
                            close = true;
                        } else if token.eq_ignore_ascii_case(b"upgrade") {
                            return Parsed::HandOff;
                        }
                    }
                    continue;
                }
                12 if name.eq_ignore_ascii_case(b"x-request-id") => {
                    // The first one, as the router's request id layer takes it.
                    if !rid_given {
                        rid_given = true;
                        self.rid.extend_from_slice(h.value);
                    }
                    continue;
                }
                13 if name.eq_ignore_ascii_case(b"authorization") => "authorization",
                14 if name.eq_ignore_ascii_case(b"content-length") => {
                    if h.value.trim_ascii() != b"0" {
                        return Parsed::HandOff;
                    }
                    continue;
                }
                15 if name.eq_ignore_ascii_case(b"x-forwarded-for") => "x-forwarded-for",
                17 if name.eq_ignore_ascii_case(b"transfer-encoding") => return Parsed::HandOff,
                _ => continue,
            };
            debug_assert!(guard::ADMIT_HEADERS.contains(&admitted));
            self.headers.push(admitted, h.value);
        }
        Parsed::Data(DataRequest {
            len,
            route,
            key,
            refresh,
            rid_given,
            close,
        })
    }

    /// Writes the answer to `request` into `out`.
    async fn answer(&mut self, request: DataRequest) {
        let front = self.front;
        let state = &front.state;
        let started = Instant::now();
        let _in_flight = InFlight::on(&front.in_flight);
        if !request.rid_given {
            let mut made = [0u8; common::stack::REQUEST_ID_LEN];
            self.rid
                .extend_from_slice(common::stack::request_id_text(&mut made).as_bytes());
        }
        let route = &front.routes[request.route];
        let rid = &self.rid;
        let verifier = &state.inner.verifier;
        // The token header as sent: `Authorization`, else `X-Token` (as `token_from` reads them).
        let token_header = ["authorization", "x-token"]
            .into_iter()
            .find_map(|name| self.headers.first(name).map(|bytes| (name, bytes)));
        let known = match (&self.known, token_header) {
            (Some(k), Some((name, bytes)))
                if k.header == name && k.bytes == bytes && verifier.still_valid(&k.verified) =>
            {
                Some(Caller::User(k.verified.claims.clone()))
            }
            _ => None,
        };
        let fresh = known.is_none();
        let generation = verifier.generation();
        let known_slot = &mut self.known;
        let work = async {
            // As the router's `RequestId` extractor reads it.
            let rid_text = crate::tokens::visible_text(rid).unwrap_or("-");
            let (caller, decision) = guard::admit(
                state,
                route,
                &self.headers,
                Some(self.peer),
                rid_text,
                None,
                known,
            )
            .await
            .map_err(IntoResponse::into_response)?;
            if let (true, Caller::User(claims), Some((name, bytes))) =
                (fresh, &caller, token_header)
                && verifier.remembers()
            {
                *known_slot = Some(Known {
                    header: name,
                    bytes: bytes.to_vec(),
                    verified: Verified::new(claims.clone(), generation),
                });
            }
            let read = match data::truthy(request.refresh.as_deref()) {
                Ok(refresh) => data::read(state, request.key, refresh, rid_text, started).await,
                Err(e) => Err(e),
            };
            let headers = decision.map(|d| d.headers()).unwrap_or_default();
            match read {
                Ok(read) => Ok((read, headers)),
                Err(e) => {
                    let mut resp = data::with_miss_header(Err(e));
                    for (name, value) in headers {
                        resp.headers_mut().insert(name, value);
                    }
                    Err(resp)
                }
            }
        };
        let status = match AssertUnwindSafe(work).catch_unwind().await {
            Ok(Ok((read, extra))) => {
                self.write_read(&read, &extra, request.close);
                200
            }
            Ok(Err(resp)) => self.write_response(resp, request.close).await,
            Err(_) => {
                let resp = common::ApiError::internal("handler panicked").into_response();
                self.write_response(resp, request.close).await
            }
        };
        let key = (request.route, status);
        if !matches!(&self.last_handles, Some((r, s, _)) if (*r, *s) == key) {
            let handles = common::stack::route_handles(
                state.instance(),
                ROUTE_NAMES[request.route],
                &Method::GET,
                status,
            );
            self.last_handles = Some((key.0, key.1, handles));
        }
        if let Some((_, _, (requests, duration))) = &self.last_handles {
            requests.increment(1);
            duration.record(started.elapsed().as_secs_f64());
        }
        front.answered.increment(1);
    }

    /// A successful read's answer.
    fn write_read(
        &mut self,
        read: &data::DataAnswer,
        extra: &[(HeaderName, HeaderValue)],
        close: bool,
    ) {
        self.body.clear();
        read.write_json(&mut self.body, &self.front.gateway_id_json);
        let out = &mut self.out;
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n");
        match read.cache_layer {
            Some(layer) => {
                out.extend_from_slice(b"x-cache: HIT\r\nx-cache-layer: ");
                out.extend_from_slice(layer.as_str().as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            None => out.extend_from_slice(b"x-cache: MISS\r\n"),
        }
        for (name, value) in extra {
            header(out, name.as_str().as_bytes(), value.as_bytes());
        }
        self.finish(close);
    }

    /// Any other answer (an error), as the router would send it.
    async fn write_response(&mut self, resp: Response, close: bool) -> u16 {
        let (parts, body) = resp.into_parts();
        // Errors are small JSON bodies, complete at once.
        let bytes = axum::body::to_bytes(body, usize::MAX)
            .await
            .unwrap_or_default();
        self.body.clear();
        self.body.extend_from_slice(&bytes);
        let out = &mut self.out;
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(parts.status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(
            parts
                .status
                .canonical_reason()
                .unwrap_or("Unknown")
                .as_bytes(),
        );
        out.extend_from_slice(b"\r\n");
        for (name, value) in &parts.headers {
            let name = name.as_str();
            // Written by `finish`, as the stack and hyper do.
            if matches!(
                name,
                "content-length" | "x-served-by" | "x-request-id" | "date" | "connection"
            ) {
                continue;
            }
            header(out, name.as_bytes(), value.as_bytes());
        }
        self.finish(close);
        parts.status.as_u16()
    }

    /// The headers every answer ends with, and the body after them.
    fn finish(&mut self, close: bool) {
        let out = &mut self.out;
        out.extend_from_slice(&self.front.served_by);
        header(out, b"x-request-id", &self.rid);
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(self.body.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        date::write(out);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
    }
}

/// The headers of one request that admission reads (`guard::ADMIT_HEADERS`), copied out of the
/// head into buffers the connection keeps: httparse has checked their bytes as hyper would.
#[derive(Default)]
struct Admitted {
    /// The values, one after the other.
    bytes: Vec<u8>,
    /// Name and range in `bytes` of each value, in the request's order.
    spans: Vec<(&'static str, usize, usize)>,
}

impl Admitted {
    fn clear(&mut self) {
        self.bytes.clear();
        self.spans.clear();
    }

    fn push(&mut self, name: &'static str, value: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(value);
        self.spans.push((name, start, self.bytes.len()));
    }
}

impl HeaderSource for Admitted {
    fn first(&self, name: &str) -> Option<&[u8]> {
        self.spans
            .iter()
            .find(|(n, ..)| *n == name)
            .map(|&(_, start, end)| &self.bytes[start..end])
    }

    fn each<'a>(&'a self, name: &str, f: &mut dyn FnMut(&'a [u8])) {
        for &(n, start, end) in &self.spans {
            if n == name {
                f(&self.bytes[start..end]);
            }
        }
    }
}

/// `name: value\r\n`.
fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The route, key and `refresh` of a target answered here: `/data`, `/data?key=K&refresh=R`
/// (either, both, in any order, once each) or `/data/K`, every `K` and `R` of unreserved
/// characters only (RFC 3986: letters, digits, `-._~`), so that nothing needs decoding.
fn data_target(target: &str) -> Option<(usize, String, Option<String>)> {
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let plain = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
    };
    if path == "/data" {
        let mut key = None;
        let mut refresh = None;
        if let Some(query) = query {
            for pair in query.split('&') {
                let (name, value) = pair.split_once('=')?;
                let slot = match name {
                    "key" => &mut key,
                    "refresh" => &mut refresh,
                    _ => return None,
                };
                if slot.is_some() || !plain(value) {
                    return None;
                }
                *slot = Some(value.to_string());
            }
        }
        let key = key.unwrap_or_else(|| data::DEFAULT_KEY.to_string());
        return Some((0, key, refresh));
    }
    let key = path.strip_prefix("/data/")?;
    if key.is_empty() || !plain(key) {
        return None;
    }
    let mut refresh = None;
    if let Some(query) = query {
        let value = query.strip_prefix("refresh=")?;
        if !plain(value) {
            return None;
        }
        refresh = Some(value.to_string());
    }
    Some((1, key.to_string(), refresh))
}

/// The `Date` header, formatted once a second per thread (hyper does the same).
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        /// The second formatted, and `date: <IMF-fixdate>\r\n`.
        static CACHED: RefCell<(u64, Vec<u8>)> = const { RefCell::new((u64::MAX, Vec::new())) };
    }

    /// Appends `date: ...\r\n` for now.
    pub(super) fn write(out: &mut Vec<u8>) {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        CACHED.with(|cached| {
            let mut cached = cached.borrow_mut();
            if cached.0 != secs {
                cached.0 = secs;
                cached.1.clear();
                cached.1.extend_from_slice(b"date: ");
                cached
                    .1
                    .extend_from_slice(httpdate::fmt_http_date(now).as_bytes());
                cached.1.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(&cached.1);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::data_target;

    #[test]
    fn targets_answered_here_and_those_handed_over() {
        let key = data_target;
        assert_eq!(key("/data"), Some((0, "my_data".into(), None)));
        assert_eq!(
            key("/data?key=a-b.c_d~e"),
            Some((0, "a-b.c_d~e".into(), None))
        );
        assert_eq!(
            key("/data?refresh=true&key=k1"),
            Some((0, "k1".into(), Some("true".into())))
        );
        assert_eq!(key("/data?key="), Some((0, String::new(), None)));
        assert_eq!(key("/data/k1"), Some((1, "k1".into(), None)));
        assert_eq!(
            key("/data/k1?refresh=1"),
            Some((1, "k1".into(), Some("1".into())))
        );
        for handed in [
            "/data?key=a%20b",
            "/data?key=a+b",
            "/data?key=a&key=b",
            "/data?other=1",
            "/data?",
            "/data?key",
            "/data/",
            "/data/a%2Fb",
            "/data/a/b",
            "/data/k?key=x",
            "/datax",
            "/data/k?refresh=1&refresh=2",
        ] {
            assert_eq!(key(handed), None, "{handed}");
        }
    }
}
