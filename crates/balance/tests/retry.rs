//! Retry safety of a pool, against a backend that reads a whole request and then drops the
//! connection without answering (a crash mid-request), and a second backend that counts what it
//! sees: a request with a body is never sent twice, a bodiless GET is replayed exactly once, and a
//! response timeout is a `504`, never a retry.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::any;
use balance::{Pool, PoolConfig, PoolError, Strategy};
use http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Reads each request (head and `Content-Length` body), counts it, then closes the connection.
async fn dropper() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = stream.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + length {
                        break;
                    }
                }
                count.fetch_add(1, Ordering::SeqCst);
                // No answer: the connection just ends, as when the process dies mid-request.
                let _ = stream.shutdown().await;
            });
        }
    });
    (url, seen)
}

/// Answers every request after `delay`, counting them.
async fn counter(delay: Duration) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    let app = Router::new().fallback(any(move || {
        let count = count.clone();
        async move {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            "counted"
        }
    }));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

fn config() -> PoolConfig {
    PoolConfig {
        strategy: Strategy::RoundRobin,
        connect_timeout_ms: 500,
        response_timeout_ms: 1000,
        ..PoolConfig::default()
    }
}

#[tokio::test]
async fn a_request_with_a_body_is_never_sent_twice() {
    for method in ["POST", "PUT"] {
        let (first, dropped) = dropper().await;
        let (second, counted) = counter(Duration::ZERO).await;
        // Round robin starts with the first backend: the dropper gets the request.
        let pool = Pool::new("test", &[first, second], config());
        let req = Request::builder()
            .method(method)
            .uri("/write")
            .header("content-type", "application/json")
            .body(Body::from(r#"{"value": 1}"#))
            .unwrap();
        let err = pool.send(req).await.expect_err("the connection broke");
        assert_eq!(err.status().as_u16(), 502, "{method}: {err:?}");
        assert_eq!(dropped.load(Ordering::SeqCst), 1, "{method}");
        assert_eq!(
            counted.load(Ordering::SeqCst),
            0,
            "{method}: the second backend must not see a replay"
        );
    }
}

#[tokio::test]
async fn a_bodiless_get_is_replayed_exactly_once() {
    let (first, dropped) = dropper().await;
    let (second, counted) = counter(Duration::ZERO).await;
    let pool = Pool::new("test", &[first, second], config());
    let req = Request::get("/read").body(Body::empty()).unwrap();
    let answer = pool
        .send(req)
        .await
        .expect("replayed on the second backend");
    assert_eq!(answer.response.status(), 200);
    assert_eq!(answer.attempts, 2);
    assert_eq!(dropped.load(Ordering::SeqCst), 1);
    assert_eq!(counted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_response_timeout_is_a_504_and_not_a_retry() {
    let (slow, slow_seen) = counter(Duration::from_secs(5)).await;
    let (fast, fast_seen) = counter(Duration::ZERO).await;
    let pool = Pool::new("test", &[slow, fast], config());
    let req = Request::get("/read").body(Body::empty()).unwrap();
    let err = pool.send(req).await.expect_err("timed out");
    assert!(matches!(err, PoolError::Timeout { .. }), "{err:?}");
    assert_eq!(err.status().as_u16(), 504);
    assert_eq!(slow_seen.load(Ordering::SeqCst), 1);
    assert_eq!(
        fast_seen.load(Ordering::SeqCst),
        0,
        "the second backend must not be tried"
    );
}

/// With `retry_timeouts` on (nginx's `proxy_next_upstream timeout`), an idempotent request that got
/// no answer in time is answered by the next backend; a request with a body is still not replayed.
#[tokio::test]
async fn with_retry_timeouts_an_idempotent_request_is_answered_by_the_next_backend() {
    let (slow, slow_seen) = counter(Duration::from_secs(5)).await;
    let (fast, fast_seen) = counter(Duration::ZERO).await;
    let pool = Pool::new(
        "test",
        &[slow, fast],
        PoolConfig {
            retry_timeouts: true,
            ..config()
        },
    );
    let req = Request::get("/read").body(Body::empty()).unwrap();
    let answer = pool
        .send(req)
        .await
        .expect("answered by the second backend");
    assert_eq!(
        (answer.response.status().as_u16(), answer.attempts),
        (200, 2)
    );
    assert_eq!(slow_seen.load(Ordering::SeqCst), 1);
    assert_eq!(fast_seen.load(Ordering::SeqCst), 1);
    // The slow one is marked down now: a write goes to the fast one, once.
    let post = Request::post("/write").body(Body::from("x")).unwrap();
    assert_eq!(pool.send(post).await.unwrap().attempts, 1);
}
