//! The pool against real HTTP servers on ephemeral ports.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use balance::{HealthConfig, Pool, PoolConfig, PoolError, Strategy};
use http::Request;
use http_body_util::BodyExt;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A backend that answers its own name on `/who`, sleeps on `/slow`, and is healthy on `/health`.
struct TestBackend {
    url: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(name: &'static str) -> TestBackend {
    start_on(name, TcpListener::bind("127.0.0.1:0").await.unwrap()).await
}

async fn start_on(name: &'static str, listener: TcpListener) -> TestBackend {
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/who", get(move || async move { name }))
        .route(
            "/slow",
            get(move || async move {
                tokio::time::sleep(Duration::from_secs(5)).await;
                name
            }),
        )
        .route(
            "/pause",
            get(move || async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                name
            }),
        )
        .route("/health", get(|| async { "ok" }));
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    TestBackend {
        url,
        stop: Some(tx),
        task,
    }
}

impl TestBackend {
    /// Stops accepting and closes every connection (like a killed process).
    async fn kill(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.abort();
        let _ = self.task.await;
    }
}

fn get_req(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

async fn who(pool: &Pool) -> Result<String, PoolError> {
    let f = pool.send(get_req("/who")).await?;
    let bytes = f.response.into_body().collect().await.unwrap().to_bytes();
    Ok(String::from_utf8(bytes.to_vec()).unwrap())
}

fn config(strategy: Strategy) -> PoolConfig {
    PoolConfig {
        strategy,
        connect_timeout_ms: 500,
        response_timeout_ms: 1000,
        health: HealthConfig {
            interval_ms: 50,
            timeout_ms: 200,
            fall: 2,
            rise: 2,
            ..HealthConfig::default()
        },
        ..PoolConfig::default()
    }
}

#[tokio::test]
async fn round_robin_spreads_evenly_over_keep_alive_connections() {
    let backends = [start("a").await, start("b").await, start("c").await];
    let urls: Vec<String> = backends.iter().map(|b| b.url.clone()).collect();
    let pool = Pool::new("test", &urls, config(Strategy::RoundRobin));
    let mut counts = std::collections::HashMap::new();
    for _ in 0..30 {
        *counts.entry(who(&pool).await.unwrap()).or_insert(0) += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|&n| n == 10), "{counts:?}");
    let stats: Vec<_> = pool.backends().iter().map(|b| b.stats()).collect();
    assert!(
        stats
            .iter()
            .all(|s| s.requests == 10 && s.in_flight == 0 && s.errors == 0)
    );
}

#[tokio::test]
async fn a_dead_backend_costs_no_request_and_is_marked_down() {
    let a = start("a").await;
    let b = start("b").await;
    let pool = Pool::new(
        "test",
        &[a.url.clone(), b.url.clone()],
        config(Strategy::RoundRobin),
    );
    // Warm both so that the pool holds idle connections to the one about to die.
    for _ in 0..4 {
        who(&pool).await.unwrap();
    }
    a.kill().await;
    for _ in 0..10 {
        assert_eq!(who(&pool).await.unwrap(), "b");
    }
    assert!(!pool.backends()[0].is_healthy());
    assert!(pool.backends()[0].stats().errors >= 1);
}

#[tokio::test]
async fn no_healthy_backend_is_a_503_error() {
    let a = start("a").await;
    let url = a.url.clone();
    a.kill().await;
    let pool = Pool::new("gateway", &[url], config(Strategy::RoundRobin));
    let first = who(&pool).await.unwrap_err();
    assert_eq!(first.status().as_u16(), 502, "{first:?}");
    let second = who(&pool).await.unwrap_err();
    assert_eq!(
        second,
        PoolError::NoHealthyBackend {
            pool: "gateway".into()
        }
    );
    assert_eq!(second.status().as_u16(), 503);
    assert!(!second.public_message().contains("127.0.0.1"));
}

#[tokio::test]
async fn a_slow_backend_times_out_with_504() {
    let a = start("a").await;
    let pool = Pool::new(
        "test",
        std::slice::from_ref(&a.url),
        config(Strategy::RoundRobin),
    );
    let err = pool.send(get_req("/slow")).await.unwrap_err();
    assert!(matches!(err, PoolError::Timeout { .. }), "{err:?}");
    assert_eq!(err.status().as_u16(), 504);
}

#[tokio::test]
async fn active_checks_bring_a_restarted_backend_back() {
    let a = start("a").await;
    let addr = a.url.trim_start_matches("http://").to_string();
    let b = start("b").await;
    let pool = Pool::new(
        "test",
        &[a.url.clone(), b.url.clone()],
        config(Strategy::RoundRobin),
    );
    let _checks = pool.spawn_health_checks();
    a.kill().await;
    wait_until(|| !pool.backends()[0].is_healthy()).await;
    // Restart on the same port, as `scalelab up` does.
    let listener = TcpListener::bind(&addr).await.unwrap();
    let _a2 = start_on("a", listener).await;
    wait_until(|| pool.backends()[0].is_healthy()).await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..4 {
        seen.insert(who(&pool).await.unwrap());
    }
    assert_eq!(seen.len(), 2);
}

#[tokio::test]
async fn least_connections_avoids_the_busy_backend() {
    let a = start("a").await;
    let b = start("b").await;
    let mut cfg = config(Strategy::LeastConnections);
    cfg.response_timeout_ms = 10_000;
    let pool = Pool::new("test", &[a.url.clone(), b.url.clone()], cfg);
    // Hold two slow requests on whichever backends they land (one each, by the tie rule).
    let p1 = pool.clone();
    let slow = tokio::spawn(async move { p1.send(get_req("/slow")).await.map(|_| ()) });
    wait_until(|| pool.backends().iter().map(|b| b.in_flight()).sum::<usize>() == 1).await;
    let busy = pool
        .backends()
        .iter()
        .position(|b| b.in_flight() == 1)
        .unwrap();
    let idle_name = if busy == 0 { "b" } else { "a" };
    for _ in 0..5 {
        assert_eq!(who(&pool).await.unwrap(), idle_name);
    }
    slow.abort();
}

async fn wait_until(mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[allow(dead_code)]
fn _assert_send(p: Arc<Pool>) -> impl Send {
    async move { p.send(get_req("/")).await }
}

/// A backend that answers the client port of the connection each request came on.
async fn port_echo() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app =
        Router::new().route(
            "/who",
            get(
                |axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<
                    std::net::SocketAddr,
                >| async move { peer.port().to_string() },
            ),
        );
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
        .unwrap()
    });
    url
}

#[tokio::test]
async fn a_connection_whose_response_was_read_carries_the_next_request() {
    let url = port_echo().await;
    let pool = Pool::new(
        "test",
        std::slice::from_ref(&url),
        config(Strategy::RoundRobin),
    );
    let mut ports = std::collections::HashSet::new();
    for _ in 0..50 {
        ports.insert(who(&pool).await.unwrap());
    }
    assert_eq!(
        ports.len(),
        1,
        "one keep-alive connection for 50 requests in a row"
    );

    // A response dropped before its body was read closes its connection: the next request
    // comes on a new one, and that one is reused again.
    let dropped = pool.send(get_req("/who")).await.unwrap();
    drop(dropped);
    let after: std::collections::HashSet<String> = {
        let mut s = std::collections::HashSet::new();
        for _ in 0..5 {
            s.insert(who(&pool).await.unwrap());
        }
        s
    };
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(pool.backends()[0].stats().in_flight, 0);
}

/// Membership changes while the pool serves: a draining backend gets no new request while the one
/// it is serving finishes, a new backend joins, a backend no longer listed leaves.
#[tokio::test]
async fn membership_changes_drain_add_and_remove_backends_while_serving() {
    use balance::Member;
    let (a, b, c) = (start("a").await, start("b").await, start("c").await);
    let pool = Pool::new(
        "test",
        &[a.url.clone(), b.url.clone()],
        config(Strategy::RoundRobin),
    );
    // A slow request in flight on b (round robin: a, then b), then b drains.
    assert_eq!(who(&pool).await.unwrap(), "a");
    let slow_pool = pool.clone();
    let slow = tokio::spawn(async move {
        let f = slow_pool.send(get_req("/pause")).await.unwrap();
        let bytes = f.response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    });
    let b_backend = pool.backends()[1].clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while b_backend.in_flight() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the slow request never reached b"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let change = pool.set_members(&[
        Member::active(a.url.clone()),
        Member {
            url: b.url.clone(),
            draining: true,
        },
    ]);
    assert_eq!(change.draining, vec![b.url.clone()]);
    assert_eq!(b_backend.stats().state, "draining");
    for _ in 0..10 {
        assert_eq!(
            who(&pool).await.unwrap(),
            "a",
            "a draining backend gets no new request"
        );
    }
    assert_eq!(
        slow.await.unwrap(),
        "b",
        "the request in flight on the draining backend finished"
    );

    // c joins, b leaves: requests spread over a and c only.
    let change = pool.set_members(&[Member::active(a.url.clone()), Member::active(c.url.clone())]);
    assert_eq!(
        (change.added, change.removed),
        (vec![c.url.clone()], vec![b.url.clone()])
    );
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..10 {
        seen.insert(who(&pool).await.unwrap());
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["a", "c"]);
    // The same list again changes nothing.
    assert!(
        pool.set_members(&[Member::active(a.url.clone()), Member::active(c.url.clone())])
            .is_empty()
    );
}
