//! The balancer in front of real HTTP backends, all on ephemeral ports.

#[allow(unreachable_pub)]
mod support;

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::routing::any;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

struct Server {
    url: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn kill(mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        self.task.abort();
        let _ = self.task.await;
    }
}

/// A backend that echoes what it received as JSON, with its name in `X-Served-By`.
async fn echo_backend(name: &'static str) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app =
        Router::new().fallback(any(
            move |method: axum::http::Method,
                  uri: axum::http::Uri,
                  headers: HeaderMap,
                  body: Bytes| async move {
                let hs: HashMap<String, String> = headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                    .collect();
                (
                    [("x-served-by", name)],
                    axum::Json(json!({
                        "name": name, "method": method.as_str(), "uri": uri.to_string(),
                        "headers": hs, "body_len": body.len(),
                    })),
                )
            },
        ));
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await;
    });
    Server {
        url,
        stop: Some(tx),
        task,
    }
}

async fn start_lb(config: lb::Config) -> support::Lb {
    support::Lb::start(config).await
}

fn lb_config(backends: &[&Server]) -> lb::Config {
    let urls: Vec<&str> = backends.iter().map(|b| b.url.as_str()).collect();
    support::config(&urls)
}

#[tokio::test]
async fn forwards_the_whole_request_and_rewrites_headers() {
    let a = echo_backend("a").await;
    let lb = start_lb(lb_config(&[&a])).await;
    let body = vec![b'x'; 300_000];
    let resp = reqwest::Client::new()
        .post(format!("{}/some/path?q=1&r=two", lb.url))
        .header("x-custom", "kept")
        .header("connection", "keep-alive, x-drop-me")
        .header("x-drop-me", "secret")
        .header("x-request-id", "req-123")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "req-123");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["method"], "POST");
    assert_eq!(v["uri"], "/some/path?q=1&r=two");
    assert_eq!(v["body_len"], 300_000);
    let h = &v["headers"];
    assert_eq!(h["x-custom"], "kept");
    assert!(h.get("x-drop-me").is_none(), "{h}");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-request-id"], "req-123");
    assert!(
        h["x-forwarded-host"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
}

#[tokio::test]
async fn spreads_round_robin_and_survives_a_dead_backend() {
    let a = echo_backend("a").await;
    let b = echo_backend("b").await;
    let lb = start_lb(lb_config(&[&a, &b])).await;
    let client = reqwest::Client::new();
    let mut seen: HashMap<String, u32> = HashMap::new();
    for _ in 0..10 {
        let r = client.get(format!("{}/x", lb.url)).send().await.unwrap();
        *seen
            .entry(r.headers()["x-served-by"].to_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(seen.get("a"), Some(&5), "{seen:?}");
    assert_eq!(seen.get("b"), Some(&5), "{seen:?}");
    a.kill().await;
    for _ in 0..10 {
        let r = client.get(format!("{}/x", lb.url)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-served-by"], "b");
    }
    let stats: Value = client
        .get(format!("{}/_lb/stats", lb.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["strategy"], "round_robin");
    assert_eq!(stats["backends"][0]["healthy"], false, "{stats}");
    assert_eq!(stats["backends"][1]["healthy"], true);
    assert!(stats["backends"][1]["requests"].as_u64().unwrap() >= 15);
    assert!(stats["backends"][1]["latency_p99_ms"].as_f64().unwrap() > 0.0);
    let metrics = client
        .get(format!("{}/_lb/metrics", lb.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("scalelab_lb_backend_healthy"), "{metrics}");
    b.kill().await;
}

#[tokio::test]
async fn no_backend_left_is_a_json_error() {
    let a = echo_backend("a").await;
    let lb = start_lb(lb_config(&[&a])).await;
    a.kill().await;
    let client = reqwest::Client::new();
    let first = client.get(format!("{}/x", lb.url)).send().await.unwrap();
    assert_eq!(first.status(), 502);
    let second = client.get(format!("{}/x", lb.url)).send().await.unwrap();
    assert_eq!(second.status(), 503);
    let v: Value = second.json().await.unwrap();
    assert_eq!(v["error"], "no_healthy_backend");
    assert!(!v["message"].as_str().unwrap().contains("127.0.0.1"));
}

#[tokio::test]
async fn admin_prefix_is_never_proxied() {
    let a = echo_backend("a").await;
    let lb = start_lb(lb_config(&[&a])).await;
    let client = reqwest::Client::new();
    let r = client
        .get(format!("{}/_lb/nope", lb.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "not_found");
    let r = client
        .get(format!("{}/_lb/health", lb.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["role"], "lb");
    // Everything else, /health included, belongs to the gateways.
    let r = client
        .get(format!("{}/health", lb.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-served-by"], "a");
}

#[tokio::test]
async fn edge_acl_rate_limit_and_body_limit() {
    let a = echo_backend("a").await;
    let mut cfg = lb_config(&[&a]);
    cfg.deny = vec!["127.0.0.0/8".parse().unwrap()];
    let denied = start_lb(cfg).await;
    let client = reqwest::Client::new();
    let r = client
        .get(format!("{}/x", denied.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "forbidden");

    let mut cfg = lb_config(&[&a]);
    cfg.max_body_bytes = 1000;
    let small_bodies = start_lb(cfg).await;
    let r = client
        .post(format!("{}/x", small_bodies.url))
        .body(vec![0u8; 2000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        "payload_too_large"
    );

    // A burst of 3 at 1 request per second: the first 3 requests are proxied, the next ones are
    // refused until a token comes back (one per second after the first request).
    let mut cfg = lb_config(&[&a]);
    cfg.rate_limit = Some(lb::edge::EdgeRateLimit {
        requests_per_second: 1,
        burst: 3,
    });
    let limited = start_lb(cfg).await;
    let first = std::time::Instant::now();
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let r = client
            .get(format!("{}/x", limited.url))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
        // Tokens come back at one per whole second since the first request: on a fast machine
        // none does during this loop, so exactly the burst passes.
        let refills = first.elapsed().as_secs() as usize;
        let passed = statuses.iter().filter(|&&s| s == 200).count();
        assert!(passed <= 3 + refills, "over the limit: {statuses:?}");
        if r.status() == 200 {
            assert_eq!(r.headers()["x-served-by"], "a", "proxied to the backend");
            continue;
        }
        assert_eq!(r.status(), 429, "{statuses:?}");
        // The next token is less than a second away, rounded up.
        assert_eq!(r.headers()["retry-after"], "1");
        assert_eq!(r.headers()["ratelimit-limit"], "1");
        assert_eq!(r.headers()["ratelimit-remaining"], "0");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "rate_limited", "{body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    }
    assert_eq!(statuses[..3], [200, 200, 200], "the burst passes");
    assert!(statuses.contains(&429), "over the burst: {statuses:?}");
}

/// The value of `name{labels...}` in a Prometheus text page, 0 when absent.
fn metric(page: &str, name: &str, labels: &[&str]) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn every_answer_is_counted_by_backend_and_status() {
    let a = echo_backend("a").await;
    let b = echo_backend("b").await;
    let lb = start_lb(lb_config(&[&a, &b])).await;
    let client = reqwest::Client::new();
    for _ in 0..10 {
        let r = client.get(format!("{}/x", lb.url)).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = client
        .get(format!("{}/nope-is-fine", lb.url))
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "1")
        .header("proxy-connection", "keep-alive")
        .send()
        .await
        .unwrap();
    // Hop-by-hop headers, and those Connection names, never reach the backend.
    let seen: Value = r.json().await.unwrap();
    for hop in ["connection", "x-hop", "proxy-connection", "keep-alive"] {
        assert!(seen["headers"].get(hop).is_none(), "{hop}: {seen}");
    }
    let page = client
        .get(format!("{}/_lb/metrics", lb.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Each backend is named by its URL; other tests' backends are on other ports.
    let of = |s: &Server| format!("backend=\"{}\"", s.url);
    let (ca, cb) = (
        metric(
            &page,
            "scalelab_lb_requests_total",
            &[&of(&a), "status=\"200\""],
        ),
        metric(
            &page,
            "scalelab_lb_requests_total",
            &[&of(&b), "status=\"200\""],
        ),
    );
    assert_eq!(ca + cb, 11.0, "{page}");
    assert_eq!((ca, cb), (6.0, 5.0), "round robin over two backends");
    let timed = metric(
        &page,
        "scalelab_lb_request_duration_seconds_count",
        &[&of(&a)],
    ) + metric(
        &page,
        "scalelab_lb_request_duration_seconds_count",
        &[&of(&b)],
    );
    assert_eq!(timed, 11.0, "{page}");
}

#[tokio::test]
async fn h2c_clients_are_proxied_to_http1_gateways() {
    use http_body_util::BodyExt;
    let a = echo_backend("a").await;
    let lb = start_lb(lb_config(&[&a])).await;
    let authority = lb.url.trim_start_matches("http://").to_string();
    let stream = tokio::net::TcpStream::connect(&authority).await.unwrap();
    // HTTP/2 with prior knowledge (h2c), as load generators and gRPC-style clients speak it.
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("an h2c handshake");
    tokio::spawn(conn);
    for i in 0..3 {
        let req = axum::http::Request::get(format!("http://{authority}/x?n={i}"))
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.expect("an answer");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), axum::http::Version::HTTP_2);
        assert_eq!(resp.headers()["x-served-by"], "a");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let seen: Value = serde_json::from_slice(&body).unwrap();
        // The gateway got HTTP/1.1 in origin form, with the authority as its Host.
        assert_eq!(seen["uri"], format!("/x?n={i}"));
        assert_eq!(seen["headers"]["host"], authority.as_str());
        assert_eq!(seen["headers"]["x-forwarded-host"], authority.as_str());
    }
}

#[tokio::test]
async fn pipelined_http1_requests_are_answered_in_order() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = echo_backend("a").await;
    let lb = start_lb(lb_config(&[&a])).await;
    let mut s = tokio::net::TcpStream::connect(lb.url.trim_start_matches("http://"))
        .await
        .unwrap();
    // Three requests in one write, the last one closing: three answers, in order.
    s.write_all(
        b"GET /one HTTP/1.1\r\nhost: t\r\n\r\nGET /two HTTP/1.1\r\nhost: t\r\n\r\nGET /three HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        s.read_to_string(&mut out),
    )
    .await
    .expect("the lb answers all three and closes")
    .unwrap();
    assert_eq!(out.matches("HTTP/1.1 200").count(), 3, "{out}");
    let (one, two, three) = (
        out.find("\"uri\":\"/one\"").expect("/one"),
        out.find("\"uri\":\"/two\"").expect("/two"),
        out.find("\"uri\":\"/three\"").expect("/three"),
    );
    assert!(one < two && two < three, "{out}");
}
