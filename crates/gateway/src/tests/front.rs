//! The front path (`front.rs`) against the router: two gateways of one configuration, one with
//! `front_path` and one without, served over TCP, get the same raw requests; every answer must be
//! the same (status, headers but `Date` and made request ids, body; the gateway's own id aside,
//! whose length both ids share so that `Content-Length` matches too).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::fakes::{self, claims};
use super::*;
use crate::config::Rule;

/// One gateway served on an ephemeral port until the value is dropped.
struct Served {
    addr: SocketAddr,
    id: &'static str,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn serve(mut config: Config, id: &'static str, front: bool) -> Served {
    config.front_path = front;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let instance = common::Instance::new("gateway", id);
    tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        crate::serve(listener, config, instance, shutdown)
            .await
            .expect("gateway serves");
    });
    let served = Served {
        addr,
        id,
        _stop: stop,
    };
    // Ready once the JWKS is loaded and the cache and db answer.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let answers = exchange(addr, b"GET /ready HTTP/1.1\r\nhost: g\r\n\r\n", 1).await;
        if answers.first().is_some_and(|a| a.status == 200) {
            return served;
        }
        assert!(std::time::Instant::now() < deadline, "{id} never got ready");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// An answer as it came off the wire.
#[derive(Debug, Clone, PartialEq)]
struct Wire {
    status: u16,
    /// Lower-case names, in order.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Wire {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// What must match between the two paths: the gateway's id replaced by `ID`, `Date` and a
    /// made request id only checked for presence, the rest as a sorted multimap.
    fn normalized(&self, id: &str, rid_given: bool) -> (u16, BTreeMap<String, Vec<String>>, Value) {
        let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, value) in &self.headers {
            let value = match name.as_str() {
                "date" => "<date>".to_string(),
                "x-request-id" if !rid_given => {
                    assert_eq!(value.len(), 36, "a made request id is a UUID: {value}");
                    "<made>".to_string()
                }
                _ => value.replace(id, "ID"),
            };
            headers.entry(name.clone()).or_default().push(value);
        }
        let body = if self.body.is_empty() {
            Value::Null
        } else {
            let text = String::from_utf8_lossy(&self.body).replace(id, "ID");
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (self.status, headers, body)
    }
}

/// Writes `raw` on a new connection and reads `n` answers (or until the server closes).
async fn exchange(addr: SocketAddr, raw: &[u8], n: usize) -> Vec<Wire> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(raw).await.expect("write");
    let mut buf = Vec::new();
    let mut answers = Vec::new();
    let mut chunk = [0u8; 8192];
    while answers.len() < n {
        if let Some((wire, used)) = parse_answer(&buf) {
            buf.drain(..used);
            answers.push(wire);
            continue;
        }
        let read =
            tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut chunk))
                .await
                .expect("an answer within 10 s")
                .unwrap_or(0);
        if read == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..read]);
    }
    answers
}

/// One answer at the start of `buf` (Content-Length framing: every gateway answer has it), and
/// how many bytes it took.
fn parse_answer(buf: &[u8]) -> Option<(Wire, usize)> {
    let mut raw = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut raw);
    let httparse::Status::Complete(head) = resp.parse(buf).expect("a valid answer head") else {
        return None;
    };
    let headers: Vec<(String, String)> = resp
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map_or(0, |(_, v)| v.parse().expect("a length"));
    if buf.len() < head + length {
        return None;
    }
    Some((
        Wire {
            status: resp.code.expect("a status"),
            headers,
            body: buf[head..head + length].to_vec(),
        },
        head + length,
    ))
}

/// A `GET` with the given extra header lines.
fn get(target: &str, headers: &[&str]) -> String {
    let mut r = format!("GET {target} HTTP/1.1\r\nhost: gateway\r\n");
    for h in headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r
}

/// Sends each script (raw bytes, number of answers) to both gateways, in the same order, and
/// asserts that they answer alike; returns the front path's answers.
async fn same_answers(
    front: &Served,
    router: &Served,
    scripts: &[(String, usize)],
) -> Vec<Vec<Wire>> {
    let mut all = Vec::new();
    for (raw, n) in scripts {
        let f = exchange(front.addr, raw.as_bytes(), *n).await;
        let r = exchange(router.addr, raw.as_bytes(), *n).await;
        assert_eq!(f.len(), *n, "front path: {raw:?} got {f:?}");
        assert_eq!(r.len(), *n, "router: {raw:?} got {r:?}");
        let rid_given = raw.to_ascii_lowercase().contains("x-request-id:");
        for (a, b) in f.iter().zip(&r) {
            assert_eq!(
                a.normalized(front.id, rid_given),
                b.normalized(router.id, rid_given),
                "{raw:?}"
            );
        }
        all.push(f);
    }
    all
}

#[tokio::test]
async fn the_front_path_answers_data_reads_exactly_as_the_router_does() {
    let h = Harness::start().await;
    let front = serve(h.config.clone(), "gateway-front", true).await;
    let router = serve(h.config.clone(), "gateway-route", false).await;
    let user = h.user();
    let bearer = format!("authorization: Bearer {user}");
    let guest = h
        .auth
        .key()
        .sign(&claims("visitor", &["guest"], fakes::now() + 600));
    let expired = h
        .auth
        .key()
        .sign(&claims("late", &["user"], fakes::now() - 600));
    let scripts: Vec<(String, usize)> = vec![
        // A miss then a hit on one connection, pipelined.
        (get("/data", &[&bearer]).repeat(2), 2),
        // The other spellings of a read, falsy values, absent keys, bad keys and queries.
        (get("/data?key=my_data", &[&bearer]), 1),
        (get("/data/my_data", &[&bearer]), 1),
        (get("/data?key=zero", &[&bearer]).repeat(2), 2),
        (get("/data/no", &[&bearer]).repeat(2), 2),
        (get("/data?key=empty&refresh=false", &[&bearer]), 1),
        (get("/data?refresh=TRUE", &[&bearer]), 1),
        (get("/data/my_data?refresh=1", &[&bearer]), 1),
        (get("/data?key=missing", &[&bearer]), 1),
        (get("/data?key=.", &[&bearer]), 1),
        (get("/data?key=", &[&bearer]), 1),
        (get("/data?refresh=maybe", &[&bearer]), 1),
        // Handed over (escapes, other parameters), still the same answer.
        (get("/data?key=my%5Fdata", &[&bearer]), 1),
        (get("/data?key=my_data&x=1", &[&bearer]), 1),
        // Tokens: none, malformed, expired, another scheme, X-Token, bare, a guest's.
        (get("/data", &[]), 1),
        (get("/data", &["authorization: Bearer not.a.jwt"]), 1),
        (
            get("/data", &[&format!("authorization: Bearer {expired}")]),
            1,
        ),
        (get("/data", &["authorization: Basic YTpi"]), 1),
        (get("/data", &[&format!("x-token: {user}")]), 1),
        (get("/data", &[&format!("authorization: {user}")]), 1),
        (
            get("/data", &[&format!("authorization: Bearer {guest}")]),
            1,
        ),
        // The client's request id is echoed.
        (get("/data", &[&bearer, "x-request-id: trace-42"]), 1),
        // A read, then a request the router serves (the connection is handed over), then reads.
        (
            format!(
                "{}{}{}",
                get("/data", &[&bearer]),
                get("/health", &[]),
                get("/data/zero", &[&bearer])
            ),
            3,
        ),
        // HEAD and HTTP/1.0 are the router's.
        ("GET /data HTTP/1.0\r\nhost: g\r\n\r\n".to_string(), 1),
    ];
    let answers = same_answers(&front, &router, &scripts).await;
    let first = &answers[0];
    assert_eq!(first[0].header("x-cache"), Some("MISS"));
    assert_eq!(first[1].header("x-cache"), Some("HIT"));
    assert_eq!(first[1].header("x-cache-layer"), Some("shared"));
    assert_eq!(first[1].header("x-served-by"), Some("gateway-front"));
    assert_eq!(
        serde_json::from_slice::<Value>(&first[1].body).expect("JSON"),
        json!({"cached": true, "cache_layer": "shared", "key": "my_data", "data": {"hello": "world"}, "gateway_id": "gateway-front"})
    );
    let statuses: Vec<u16> = answers.iter().flatten().map(|a| a.status).collect();
    assert!(statuses.contains(&401) && statuses.contains(&404) && statuses.contains(&400));

    // `Connection: close` is honoured: the answer says so and the connection ends after it.
    let closing = format!(
        "{}{}",
        get("/data", &[&bearer, "connection: close"]),
        get("/data", &[&bearer])
    );
    let answers = exchange(front.addr, closing.as_bytes(), 2).await;
    assert_eq!(answers.len(), 1, "nothing after a close: {answers:?}");
    assert_eq!(answers[0].header("connection"), Some("close"));
    assert_eq!(answers[0].status, 200);
}

#[tokio::test]
async fn a_rate_limited_read_is_refused_alike_and_the_limit_counts_each_request_once() {
    let mut h = Harness::start().await;
    h.config.rate_limit.routes = BTreeMap::from([(
        "/data".to_string(),
        Rule {
            per_minute: 3,
            burst: None,
        },
    )]);
    let front = serve(h.config.clone(), "gateway-front-rl", true).await;
    let router = serve(h.config.clone(), "gateway-route-rl", false).await;
    let bearer = format!("authorization: Bearer {}", h.user());
    // Three admitted (with their RateLimit headers), then refused with 429 and Retry-After.
    let answers = same_answers(&front, &router, &[(get("/data", &[&bearer]).repeat(4), 4)]).await;
    let statuses: Vec<u16> = answers[0].iter().map(|a| a.status).collect();
    assert_eq!(statuses, [200, 200, 200, 429]);
    assert_eq!(answers[0][2].header("ratelimit-remaining"), Some("0"));
    assert!(answers[0][3].header("retry-after").is_some());
}

#[tokio::test]
async fn the_front_path_records_the_routers_metrics() {
    let h = Harness::start().await;
    let front = serve(h.config.clone(), "gateway-front-metrics", true).await;
    let bearer = format!("authorization: Bearer {}", h.user());
    let reads = format!(
        "{}{}",
        get("/data", &[&bearer]).repeat(3),
        get("/data/zero", &[&bearer])
    );
    assert_eq!(exchange(front.addr, reads.as_bytes(), 4).await.len(), 4);
    let text = exchange(front.addr, get("/metrics", &[]).as_bytes(), 1).await[0]
        .body
        .clone();
    let text = String::from_utf8(text).expect("text");
    let value = |name: &str, labels: &[&str]| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name) && labels.iter().all(|want| l.contains(want)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let id = "id=\"gateway-front-metrics\"";
    let ok = "status=\"200\"";
    assert_eq!(
        value(
            "scalelab_http_requests_total{",
            &[id, "route=\"/data\"", ok]
        ),
        3.0,
        "{text}"
    );
    assert_eq!(
        value(
            "scalelab_http_requests_total{",
            &[id, "route=\"/data/{key}\"", ok]
        ),
        1.0
    );
    assert_eq!(
        value("scalelab_gateway_cache_total{", &[id, "outcome=\"hit\""]),
        2.0
    );
    assert_eq!(
        value("scalelab_gateway_cache_total{", &[id, "outcome=\"miss\""]),
        2.0
    );
    assert_eq!(
        value(
            "scalelab_http_request_duration_seconds_count{",
            &[id, "route=\"/data\""]
        ),
        3.0
    );
    // All four answered by the front path; the scrape's connection (and those of the readiness
    // checks before) handed to the router.
    assert_eq!(
        value(
            "scalelab_gateway_front_total{",
            &[id, "outcome=\"answered\""]
        ),
        4.0
    );
    assert!(
        value(
            "scalelab_gateway_front_total{",
            &[id, "outcome=\"handed_off\""]
        ) >= 1.0
    );
}

#[tokio::test]
async fn h2c_and_http_1_0_clients_are_served_by_the_router_behind_the_front_path() {
    let h = Harness::start().await;
    let front = serve(h.config.clone(), "gateway-front-h2c", true).await;
    // HTTP/2 with prior knowledge: the preface and an empty SETTINGS frame get the server's SETTINGS.
    let mut stream = TcpStream::connect(front.addr).await.expect("connect");
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .expect("write");
    let mut head = [0u8; 9];
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_exact(&mut head),
    )
    .await
    .expect("an answer within 10 s")
    .expect("a frame");
    assert_eq!(head[3], 0x4, "a SETTINGS frame first: {head:?}");
    // HTTP/1.0 gets an HTTP/1.0 answer from hyper.
    let answers = exchange(front.addr, b"GET /health HTTP/1.0\r\n\r\n", 1).await;
    assert_eq!(answers[0].status, 200);
}

#[test]
fn the_answer_is_encoded_byte_for_byte_as_the_documented_response() {
    use crate::cache::{CacheLayer, Cached};
    use crate::features::data::DataAnswer;
    use api::wire::gateway::DataResponse;
    let layers = [
        (true, Some(CacheLayer::Near)),
        (true, Some(CacheLayer::Shared)),
        (false, None),
    ];
    for (cached, cache_layer) in layers {
        let value = json!({"b": [1, "x\"y", 2.5], "a": null, "é": {}});
        let answer = DataAnswer {
            cached,
            cache_layer,
            key: "k\"1\u{1}é".into(),
            data: Cached::from_value(&value),
            gateway_id: "gateway-1".into(),
        };
        let documented = DataResponse {
            cached,
            cache_layer,
            key: "k\"1\u{1}é".into(),
            data: value,
            gateway_id: "gateway-1".into(),
        };
        let serde = serde_json::to_string(&documented).expect("encodes");
        assert_eq!(serde_json::to_string(&answer).expect("encodes"), serde);
        let mut written = Vec::new();
        answer.write_json(&mut written, br#""gateway-1""#);
        assert_eq!(String::from_utf8(written).expect("UTF-8"), serde);
    }
}

/// One keep-alive connection: a request written, its answer read, the connection kept.
struct KeepAlive {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl KeepAlive {
    async fn to(addr: SocketAddr) -> Self {
        Self {
            stream: TcpStream::connect(addr).await.expect("connect"),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, raw: &str) -> Wire {
        self.stream.write_all(raw.as_bytes()).await.expect("write");
        let mut chunk = [0u8; 8192];
        loop {
            if let Some((wire, used)) = parse_answer(&self.buf) {
                self.buf.drain(..used);
                return wire;
            }
            let read = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                self.stream.read(&mut chunk),
            )
            .await
            .expect("an answer within 10 s")
            .expect("read");
            assert!(read > 0, "the connection closed before an answer");
            self.buf.extend_from_slice(&chunk[..read]);
        }
    }
}

#[tokio::test]
async fn a_token_whose_key_was_withdrawn_is_refused_on_the_connection_that_used_it() {
    let mut h = Harness::start().await;
    h.config.auth.jwks_min_refresh_ms = 0;
    let front = serve(h.config.clone(), "gateway-front-keys", true).await;
    let old = format!("authorization: Bearer {}", h.user());
    let mut conn = KeepAlive::to(front.addr).await;
    for _ in 0..3 {
        assert_eq!(conn.send(&get("/data", &[&old])).await.status, 200);
    }
    // Auth withdraws the key; a token of the new key makes the gateway fetch the new set.
    let new_key = h.auth.rotate("key-2");
    let fresh = new_key.sign(&claims("alice", &["user"], fakes::now() + 600));
    let fresh = format!("authorization: Bearer {fresh}");
    assert_eq!(
        exchange(front.addr, get("/data", &[&fresh]).as_bytes(), 1).await[0].status,
        200
    );
    // The connection that proved the old token a moment ago now gets it refused.
    let refused = conn.send(&get("/data", &[&old])).await;
    assert_eq!(
        refused.status,
        401,
        "{:?}",
        String::from_utf8_lossy(&refused.body)
    );
    assert_eq!(conn.send(&get("/data", &[&fresh])).await.status, 200);
}

/// The front path closes a connection whose client says nothing, or stops after a request, or
/// trickles a head, once its time is up; so does the router after a hand-over.
#[tokio::test]
async fn idle_and_slow_clients_are_closed_when_their_time_is_up() {
    let mut h = Harness::start().await;
    h.config.keepalive_timeout_ms = 300;
    h.config.client_header_timeout_ms = 300;
    let front = serve(h.config.clone(), "gateway-front-idle", true).await;
    let bearer = format!("authorization: Bearer {}", h.user());
    let read = get("/data", &[&bearer]);

    let mut silent = TcpStream::connect(front.addr).await.unwrap();
    assert!(
        common::testing::until_closed(&mut silent, "the gateway")
            .await
            .is_empty()
    );

    let mut once = TcpStream::connect(front.addr).await.unwrap();
    once.write_all(read.as_bytes()).await.unwrap();
    let seen = common::testing::until_closed(&mut once, "the gateway").await;
    assert!(
        seen.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&seen)
    );

    let mut slow = TcpStream::connect(front.addr).await.unwrap();
    let trickle = async {
        for b in read.as_bytes() {
            if slow.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(60), trickle).await;
    assert!(
        common::testing::until_closed(&mut slow, "the gateway")
            .await
            .is_empty(),
        "a trickled head was answered"
    );

    // Handed to the router by a request the front path leaves to it, then silent.
    let mut handed = TcpStream::connect(front.addr).await.unwrap();
    handed
        .write_all(b"GET /ready HTTP/1.1\r\nhost: g\r\n\r\nGET /ready HTTP/1.1\r\n")
        .await
        .unwrap();
    let seen = common::testing::until_closed(&mut handed, "the gateway").await;
    assert!(
        seen.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
}
