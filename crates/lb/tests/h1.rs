//! The balancer's own HTTP/1 hop (`lb::h1`, `engine = "direct"`) against backends that frame
//! their answers every way HTTP/1.1 allows, close kept-alive connections, never answer, or
//! stop; the requests it hands to hyper mid-connection; and the same answers from both engines.

#[allow(unreachable_pub)]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::routing::any;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use support::{Lb, config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Reads from `s` into `buf` until a whole request head is there; the head's length (without its
/// empty line), or `None` once the connection ends.
async fn head_end(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            return Some(end);
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A backend speaking raw HTTP/1.1: for each request head (and its `Content-Length` body) it
/// writes what `answer` returns for the request line, then closes the connection if told to;
/// `GET /health` (the balancer's checks) gets `200`. Returns its URL and the count of
/// connections that carried a request other than a health check.
async fn scripted(answer: fn(&str) -> (Vec<u8>, bool)) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let count = count.clone();
            tokio::spawn(async move {
                let mut counted = false;
                let mut buf = Vec::new();
                loop {
                    let Some(end) = head_end(&mut s, &mut buf).await else {
                        return;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let body_len: usize = head
                        .lines()
                        .find_map(|l| {
                            let (n, v) = l.split_once(':')?;
                            n.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    while buf.len() < end + 4 + body_len {
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..end + 4 + body_len);
                    let line = head.lines().next().unwrap_or_default().to_string();
                    let (bytes, close) = if line.starts_with("GET /health ") {
                        (
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_vec(),
                            false,
                        )
                    } else {
                        if !counted {
                            counted = true;
                            count.fetch_add(1, Ordering::SeqCst);
                        }
                        answer(&line)
                    };
                    if s.write_all(&bytes).await.is_err() {
                        return;
                    }
                    if close {
                        let _ = s.shutdown().await;
                        return;
                    }
                }
            });
        }
    });
    (url, accepted)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One HTTP/1.1 connection to `authority`, driven by hyper's client (one request at a time).
async fn connection(authority: &str) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(authority).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// Sends `req` on `sender`; the status, headers and whole body.
async fn send(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> (StatusCode, HeaderMap, Bytes) {
    sender.ready().await.expect("the connection is still open");
    let resp = sender.send_request(req).await.expect("an answer");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("a whole body").to_bytes();
    (parts.status, parts.headers, body)
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "t")
        .body(Full::default())
        .unwrap()
}

fn framed(line: &str) -> (Vec<u8>, bool) {
    let path = line.split(' ').nth(1).unwrap_or("/");
    let keep = "HTTP/1.1 200 OK\r\n";
    match path {
        "/chunked" => (
            format!("{keep}transfer-encoding: chunked\r\ncontent-type: text/plain\r\n\r\n5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nx-trailer: t\r\n\r\n").into_bytes(),
            false,
        ),
        "/length" => (format!("{keep}content-length: 11\r\n\r\nhello again").into_bytes(), false),
        "/empty" => ("HTTP/1.1 204 No Content\r\n\r\n".to_string().into_bytes(), false),
        "/head" => (format!("{keep}content-length: 5\r\n\r\n").into_bytes(), false),
        "/hints" => (
            format!("HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n{keep}content-length: 2\r\n\r\nok").into_bytes(),
            false,
        ),
        "/until-close" => (
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nall of it, then the end".to_string().into_bytes(),
            true,
        ),
        _ => ("HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_string().into_bytes(), false),
    }
}

#[tokio::test]
async fn every_framing_passes_through_whole_and_the_connection_is_reused() {
    let (backend, accepted) = scripted(framed).await;
    let lb = Lb::start(config(&[&backend])).await;
    let mut c = connection(&lb.authority).await;
    for _ in 0..5 {
        let (status, headers, body) = send(&mut c, get("/chunked")).await;
        assert_eq!(status, 200);
        assert_eq!(body, "hello, world");
        assert_eq!(headers["content-type"], "text/plain");
        assert!(headers.contains_key("x-request-id"), "{headers:?}");
        let (status, _, body) = send(&mut c, get("/length")).await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello again"[..]));
        let (status, _, body) = send(&mut c, get("/empty")).await;
        assert_eq!((status, body.len()), (StatusCode::NO_CONTENT, 0));
        let head = Request::head("/head")
            .header("host", "t")
            .body(Full::default())
            .unwrap();
        let (status, headers, body) = send(&mut c, head).await;
        assert_eq!(status, 200);
        assert_eq!(headers["content-length"], "5", "HEAD keeps the length");
        assert!(body.is_empty());
        let (status, _, body) = send(&mut c, get("/hints")).await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
    }
    // Each answer ended where its framing said: one upstream connection carried all 25.
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    // A body that ends when the backend closes: all of it, and the client connection closes.
    let (status, headers, body) = send(&mut c, get("/until-close")).await;
    assert_eq!(status, 200);
    assert_eq!(body, "all of it, then the end");
    assert_eq!(headers["connection"], "close");
}

#[tokio::test]
async fn kept_alive_connections_the_backend_closes_cost_no_request() {
    // Answers as if keeping the connection, then closes it: every kept connection is dead by
    // the time it is taken again.
    let (backend, accepted) = scripted(|_| {
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
            true,
        )
    })
    .await;
    let lb = Lb::start(config(&[&backend])).await;
    let client = reqwest::Client::new();
    for i in 0..30 {
        let r = client.get(format!("{}/x{i}", lb.url)).send().await.unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(r.text().await.unwrap(), "ok");
    }
    assert!(accepted.load(Ordering::SeqCst) >= 30);
    let stats: Value = client
        .get(format!("{}/_lb/stats", lb.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["backends"][0]["state"], "active", "{stats}");
}

#[tokio::test]
async fn a_backend_that_never_answers_is_a_timeout_in_json() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = format!("http://{}", listener.local_addr().unwrap());
    // Accepts and reads, never answers.
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let mut cfg = config(&[&backend]);
    cfg.pool.response_timeout_ms = 300;
    let lb = Lb::start(cfg).await;
    let r = reqwest::Client::new()
        .get(format!("{}/slow", lb.url))
        .header("x-request-id", "slow-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert_eq!(r.headers()["x-request-id"], "slow-1");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "backend_timeout");
    assert!(!v["message"].as_str().unwrap().contains("127.0.0.1"), "{v}");
}

/// A backend that answers with what it received: method, URI, headers, body length and sum.
async fn echo() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new().fallback(any(
        |method: axum::http::Method, uri: axum::http::Uri, headers: HeaderMap, body: Bytes| async move {
            let mut hs: Vec<(String, String)> = headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                .collect();
            hs.sort();
            let sum: u64 = body.iter().map(|b| u64::from(*b)).sum();
            (
                [("x-served-by", "echo")],
                axum::Json(json!({
                    "method": method.as_str(), "uri": uri.to_string(), "headers": hs,
                    "body_len": body.len(), "body_sum": sum,
                })),
            )
        },
    ));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url
}

#[tokio::test]
async fn requests_only_hyper_serves_are_handed_over_mid_connection() {
    let backend = echo().await;
    let lb = Lb::start(config(&[&backend])).await;
    let mut c = connection(&lb.authority).await;
    let (status, _, body) = send(&mut c, get("/first")).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["uri"],
        "/first"
    );
    // The admin route, then the rest of this connection, are hyper's.
    let (status, _, body) = send(&mut c, get("/_lb/health")).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["role"],
        "lb"
    );
    let (status, _, body) = send(&mut c, get("/after?x=1")).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["uri"],
        "/after?x=1"
    );

    // A chunked request body (hyper's), then `Expect: 100-continue` (hyper's), on one connection.
    let mut raw = TcpStream::connect(&lb.authority).await.unwrap();
    raw.write_all(
        b"POST /chunked-in HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
          POST /expect HTTP/1.1\r\nhost: t\r\ncontent-length: 4\r\nexpect: 100-continue\r\nconnection: close\r\n\r\nwxyz",
    )
    .await
    .unwrap();
    let mut out = String::new();
    raw.read_to_string(&mut out).await.unwrap();
    assert!(out.contains("\"uri\":\"/chunked-in\""), "{out}");
    assert!(out.contains("\"body_len\":3"), "{out}");
    assert!(out.contains("\"uri\":\"/expect\""), "{out}");
    assert!(out.contains("\"body_len\":4"), "{out}");

    // HTTP/1.0 (hyper's).
    let mut raw = TcpStream::connect(&lb.authority).await.unwrap();
    raw.write_all(b"GET /old HTTP/1.0\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    raw.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.0 200"), "{out}");
    assert!(out.contains("\"uri\":\"/old\""), "{out}");
}

#[tokio::test]
async fn a_large_body_streams_through_whole_both_ways() {
    let backend = echo().await;
    let lb = Lb::start(config(&[&backend])).await;
    // Under the echo backend's own limit (axum's 2 MB), far over any socket buffer.
    let body: Vec<u8> = (0..1_900_000u32).map(|i| (i % 251) as u8).collect();
    let sum: u64 = body.iter().map(|b| u64::from(*b)).sum();
    let r = reqwest::Client::new()
        .put(format!("{}/big", lb.url))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["body_len"], 1_900_000);
    assert_eq!(v["body_sum"], sum);
}

#[tokio::test]
async fn a_body_the_backend_refuses_early_gets_the_backends_answer() {
    // axum's default limit (2 MB) answers 413 without reading a body declared larger.
    let backend = echo().await;
    let lb = Lb::start(config(&[&backend])).await;
    let r = reqwest::Client::new()
        .post(format!("{}/too-big-for-the-backend", lb.url))
        .body(vec![b'x'; 8_000_000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
}

/// What a client sees of an answer, the parts both engines must agree on.
async fn seen(client: &reqwest::Client, req: reqwest::RequestBuilder) -> Value {
    let r = client.execute(req.build().unwrap()).await.unwrap();
    let status = r.status().as_u16();
    let served = r
        .headers()
        .get("x-served-by")
        .map(|v| v.to_str().unwrap().to_string());
    let has_rid = r.headers().contains_key("x-request-id");
    let mut body: Value = r.json().await.unwrap_or(Value::Null);
    // Request ids made by the balancer differ from run to run; the rest must not.
    if let Some(hs) = body["headers"].as_array_mut() {
        hs.retain(|h| h[0] != "x-request-id" && h[0] != "x-forwarded-host" && h[0] != "host");
    }
    json!({"status": status, "served_by": served, "request_id": has_rid, "body": body})
}

#[tokio::test]
async fn both_engines_give_the_same_answers() {
    let backend = echo().await;
    let mut answers = Vec::new();
    for engine in [lb::Engine::Direct, lb::Engine::Hyper] {
        let mut cfg = config(&[&backend]);
        cfg.engine = engine;
        cfg.max_body_bytes = 1000;
        let lb = Lb::start(cfg).await;
        let c = reqwest::Client::new();
        let u = |p: &str| format!("{}{p}", lb.url);
        answers.push(vec![
            seen(&c, c.get(u("/a/b?c=d&e"))).await,
            seen(
                &c,
                c.post(u("/post"))
                    .header("content-type", "application/json")
                    .header("x-forwarded-for", "203.0.113.7")
                    .header("x-forwarded-proto", "https")
                    .header("connection", "keep-alive, x-gone")
                    .header("x-gone", "1")
                    .header("te", "trailers")
                    .header("x-request-id", "given")
                    .body("{\"k\": 1}"),
            )
            .await,
            seen(&c, c.delete(u("/d"))).await,
            seen(&c, c.post(u("/too-big")).body(vec![b'x'; 1001])).await,
            seen(&c, c.get(u("/_lb/nope"))).await,
        ]);
    }
    assert_eq!(answers[0], answers[1]);
    let post = &answers[0][1]["body"];
    let headers: Vec<(String, String)> = serde_json::from_value(post["headers"].clone()).unwrap();
    let get = |n: &str| headers.iter().find(|h| h.0 == n).map(|h| h.1.as_str());
    assert_eq!(get("x-forwarded-for"), Some("203.0.113.7, 127.0.0.1"));
    assert_eq!(get("x-forwarded-proto"), Some("http"));
    assert_eq!(get("x-gone"), None);
    assert_eq!(get("te"), None);
    assert_eq!(answers[0][3]["status"], 413);
}

#[tokio::test]
async fn a_stop_finishes_the_request_in_hand_and_closes_idle_connections() {
    // Answers `/slow` only when told, everything else at once.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = format!("http://{}", listener.local_addr().unwrap());
    let (release, released) = tokio::sync::watch::channel(false);
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel::<()>();
    let app = Router::new().fallback(any(move |uri: axum::http::Uri| {
        let mut released = released.clone();
        let arrived = arrived_tx.clone();
        async move {
            if uri.path() == "/slow" {
                let _ = arrived.send(());
                let _ = released.wait_for(|r| *r).await;
            }
            "done"
        }
    }));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let lb = Lb::start(config(&[&backend])).await;
    let mut idle = TcpStream::connect(&lb.authority).await.unwrap();
    idle.write_all(b"GET /warm HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    while !seen.ends_with(b"done") {
        let mut chunk = [0u8; 1024];
        let n = idle.read(&mut chunk).await.unwrap();
        assert!(n > 0, "an answer before the end");
        seen.extend_from_slice(&chunk[..n]);
    }
    let mut busy = connection(&lb.authority).await;
    let in_hand = tokio::spawn(async move { send(&mut busy, get("/slow")).await });
    arrived.recv().await.unwrap();
    let stopped = lb.stop();
    // The idle connection is closed by the stop.
    let mut rest = Vec::new();
    idle.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    release.send(true).unwrap();
    let (status, headers, body) = in_hand.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, "done");
    assert_eq!(headers["connection"], "close");
    stopped.await.unwrap();
}

/// A client that asks for a large answer and stops reading it is closed once it has taken nothing
/// for the send timeout (nginx's `send_timeout`), and the upstream connection feeding it is let go
/// with it: neither is held for as long as the client keeps its socket open.
#[tokio::test]
async fn a_client_that_stops_reading_is_closed_after_the_send_timeout() {
    stops_reading(b"GET /big HTTP/1.1\r\nhost: t\r\n\r\n").await;
}

/// The same after a hand-over: an HTTP/1.0 request is served by hyper and the full stack, whose
/// writes to the client have the send timeout too.
#[tokio::test]
async fn a_client_that_stops_reading_is_closed_after_the_send_timeout_after_a_hand_over() {
    stops_reading(b"GET /big HTTP/1.0\r\nhost: t\r\n\r\n").await;
}

/// Sends `request` for a 64 MiB answer, reads nothing, and checks that the balancer let the client
/// and the backend go.
async fn stops_reading(request: &[u8]) {
    // Far more than the socket buffers between the backend and the client hold.
    const BODY: usize = 64 << 20;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = format!("http://{}", listener.local_addr().unwrap());
    let (cut_tx, mut cut_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let cut = cut_tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some(end) = head_end(&mut s, &mut buf).await else {
                        return;
                    };
                    let health = buf.starts_with(b"GET /health ");
                    buf.drain(..end + 4);
                    if health {
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                        if s.write_all(ok).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {BODY}\r\n\r\n");
                    if s.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let chunk = vec![b'x'; 64 << 10];
                    let mut sent = 0;
                    while sent < BODY {
                        match s.write(&chunk[..chunk.len().min(BODY - sent)]).await {
                            Ok(n) if n > 0 => sent += n,
                            _ => {
                                let _ = cut.send(sent);
                                return;
                            }
                        }
                    }
                    // All of it went: the balancer never gave up on the client.
                    return;
                }
            });
        }
    });
    let mut cfg = config(&[&backend]);
    cfg.send_timeout_ms = 300;
    let lb = Lb::start(cfg).await;

    let mut client = TcpStream::connect(&lb.authority).await.unwrap();
    client.write_all(request).await.unwrap();
    // The balancer gives up on the client and drops the upstream connection: the backend's
    // writes fail part way.
    let sent = tokio::time::timeout(std::time::Duration::from_secs(60), cut_rx.recv())
        .await
        .expect("the backend was never cut off: the balancer kept writing to a client that reads nothing")
        .unwrap();
    assert!(sent < BODY, "{sent}");
    let seen = common::testing::until_closed(&mut client, "the balancer").await;
    assert!(
        seen.starts_with(b"HTTP/1."),
        "{}",
        String::from_utf8_lossy(&seen[..seen.len().min(200)])
    );
    assert!(
        seen.len() < BODY,
        "the whole answer arrived ({} bytes)",
        seen.len()
    );
}

/// A client that connects and sends nothing, one that stops after a request, and one that
/// trickles a head a byte at a time are all closed once their time is up (nginx's
/// `keepalive_timeout` and `client_header_timeout`), and a connection that keeps sending
/// requests within its time is served for longer than either timeout. Also after a hand-over to
/// hyper (a request only hyper serves): its head must come within the head timeout too.
#[tokio::test]
async fn idle_and_slow_clients_are_closed_when_their_time_is_up() {
    let (backend, _) = scripted(|_| {
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
            false,
        )
    })
    .await;
    let mut cfg = config(&[&backend]);
    cfg.keepalive_timeout_ms = 300;
    cfg.client_header_timeout_ms = 300;
    let lb = Lb::start(cfg).await;
    let request = b"GET / HTTP/1.1\r\nhost: t\r\n\r\n";

    // Says nothing.
    let mut silent = TcpStream::connect(&lb.authority).await.unwrap();
    assert!(
        common::testing::until_closed(&mut silent, "the balancer")
            .await
            .is_empty()
    );

    // One request, then nothing: answered, then closed.
    let mut once = TcpStream::connect(&lb.authority).await.unwrap();
    once.write_all(request).await.unwrap();
    let seen = common::testing::until_closed(&mut once, "the balancer").await;
    assert!(
        seen.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&seen)
    );

    // A head trickled a byte every 50 ms (each byte well within the idle timeout): the head
    // timeout ends it before it is whole.
    let mut slow = TcpStream::connect(&lb.authority).await.unwrap();
    let trickle = async {
        for b in request.iter() {
            if slow.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(30), trickle).await;
    assert!(
        common::testing::until_closed(&mut slow, "the balancer")
            .await
            .is_empty(),
        "a trickled head was answered"
    );

    // Requests every 100 ms for over a second: served throughout.
    let mut busy = TcpStream::connect(&lb.authority).await.unwrap();
    for _ in 0..12 {
        busy.write_all(request).await.unwrap();
        let mut seen = Vec::new();
        while !seen.ends_with(b"ok") {
            let mut chunk = [0u8; 1024];
            let n = busy.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed while in use");
            seen.extend_from_slice(&chunk[..n]);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // Handed over to hyper (`Expect: 100-continue`), then silent in the next head.
    let mut handed = TcpStream::connect(&lb.authority).await.unwrap();
    handed
        .write_all(b"GET /x HTTP/1.1\r\nhost: t\r\nexpect: 100-continue\r\ncontent-length: 0\r\n\r\nGET / HTTP/1.1\r\n")
        .await
        .unwrap();
    let seen = common::testing::until_closed(&mut handed, "the balancer").await;
    assert!(
        seen.starts_with(b"HTTP/1.1 "),
        "{}",
        String::from_utf8_lossy(&seen)
    );
}
