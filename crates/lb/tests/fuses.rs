//! The balancer's fuses in front of real HTTP backends on ephemeral ports: outlier ejection trips
//! and recovers, the retry budget caps the load retries add, Peak-EWMA sends most requests to the
//! fast backend. Waits are on the balancer's own state (`/_lb/stats`), never fixed sleeps; the
//! assertions are on counts and states.

#[allow(unreachable_pub)]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::any;
use balance::{HealthConfig, OutlierConfig, PoolConfig, Profile, RetryBudgetConfig, Strategy};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// How a test backend behaves now, and what it saw.
#[derive(Debug, Default)]
struct Behaviour {
    /// Answer `500` to every request (but `/health`).
    fail: AtomicBool,
    /// Wait this long before answering, milliseconds.
    delay_ms: AtomicU64,
    /// Requests it received (but `/health`).
    hits: AtomicU64,
}

struct Server {
    url: String,
    behaviour: Arc<Behaviour>,
    _stop: oneshot::Sender<()>,
}

async fn backend(name: &'static str) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let behaviour = Arc::new(Behaviour::default());
    let app = Router::new()
        .route("/health", any(|| async { "ok" }))
        .fallback(any(move |State(b): State<Arc<Behaviour>>| async move {
            b.hits.fetch_add(1, Ordering::Relaxed);
            let delay = b.delay_ms.load(Ordering::Relaxed);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let status = if b.fail.load(Ordering::Relaxed) {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::OK
            };
            (status, [("x-served-by", name)], name)
        }))
        .with_state(behaviour.clone());
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await;
    });
    Server {
        url,
        behaviour,
        _stop: tx,
    }
}

/// A balancer over `backends`; stopped when the handle is dropped.
async fn start_lb(backends: &[&Server], pool: PoolConfig) -> (String, support::Lb) {
    let lb = support::Lb::start(lb::Config {
        backends: backends.iter().map(|b| b.url.clone()).collect(),
        pool,
        ..lb::Config::default()
    })
    .await;
    (lb.url.clone(), lb)
}

/// Fast fuses: ejections of 1 s and up, a sweep every 50 ms.
fn pool() -> PoolConfig {
    PoolConfig {
        connect_timeout_ms: 500,
        response_timeout_ms: 5000,
        health: HealthConfig {
            interval_ms: 100,
            ..HealthConfig::default()
        },
        outlier: OutlierConfig {
            interval_ms: 50,
            base_ejection_ms: 1000,
            max_ejection_ms: 3000,
            ..OutlierConfig::of(Profile::Demo)
        },
        ..PoolConfig::default()
    }
}

async fn stats(client: &reqwest::Client, lb: &str) -> Value {
    client
        .get(format!("{lb}/_lb/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Waits (polling `/_lb/stats`) until backend `i`'s state is `want`.
async fn until_state(client: &reqwest::Client, lb: &str, i: usize, want: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = stats(client, lb).await;
        if s["backends"][i]["state"] == want {
            return s;
        }
        assert!(Instant::now() < deadline, "backend {i} never {want}: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn get(client: &reqwest::Client, lb: &str) -> (u16, String) {
    let r = client.get(format!("{lb}/work")).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

#[tokio::test]
async fn a_backend_failing_in_a_row_is_ejected_then_comes_back_when_healed() {
    let a = backend("a").await;
    let b = backend("b").await;
    let (lb, _stop) = start_lb(&[&a, &b], pool()).await;
    let client = reqwest::Client::new();

    a.behaviour.fail.store(true, Ordering::Relaxed);
    // Round robin: `a` gets every other request and fails it; the fifth failure in a row ejects it.
    let mut failed = 0;
    for _ in 0..10 {
        if get(&client, &lb).await.0 == 500 {
            failed += 1;
        }
    }
    assert_eq!(failed, 5, "five failures, then a is out");
    let s = until_state(&client, &lb, 0, "ejected").await;
    assert_eq!(s["backends"][0]["ejections"], 1, "{s}");
    assert_eq!(
        s["backends"][0]["healthy"], true,
        "its health checks still pass: {s}"
    );
    // While it is out, every request goes to b.
    let hits_before = a.behaviour.hits.load(Ordering::Relaxed);
    for _ in 0..20 {
        assert_eq!(get(&client, &lb).await, (200, "b".into()));
    }
    assert_eq!(a.behaviour.hits.load(Ordering::Relaxed), hits_before);

    // Healed: it comes back when its ejection time is over, and takes its turn again.
    a.behaviour.fail.store(false, Ordering::Relaxed);
    until_state(&client, &lb, 0, "active").await;
    let mut served_by_a = 0;
    for _ in 0..10 {
        let (status, by) = get(&client, &lb).await;
        assert_eq!(status, 200);
        served_by_a += u32::from(by == "a");
    }
    assert_eq!(served_by_a, 5);
    let metrics = client
        .get(format!("{lb}/_lb/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("scalelab_lb_backend_ejected"), "{metrics}");
    assert!(
        metrics.contains("scalelab_pool_ejections_total"),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_only_backends_left_are_never_all_ejected() {
    let a = backend("a").await;
    let b = backend("b").await;
    let (lb, _stop) = start_lb(&[&a, &b], pool()).await;
    let client = reqwest::Client::new();
    a.behaviour.fail.store(true, Ordering::Relaxed);
    b.behaviour.fail.store(true, Ordering::Relaxed);
    for _ in 0..30 {
        assert_eq!(get(&client, &lb).await.0, 500, "the answer is passed on");
    }
    let s = stats(&client, &lb).await;
    let ejected = (0..2)
        .filter(|&i| s["backends"][i]["state"] == "ejected")
        .count();
    assert_eq!(ejected, 1, "one may go, never both: {s}");
}

/// Sends `n` requests to a pool of two backends that both answer 500 to everything, retrying
/// server errors up to 3 attempts; returns the attempts the backends saw.
async fn attempts_with(budget: RetryBudgetConfig, n: u64) -> (u64, Value) {
    let a = backend("a").await;
    let b = backend("b").await;
    a.behaviour.fail.store(true, Ordering::Relaxed);
    b.behaviour.fail.store(true, Ordering::Relaxed);
    let config = PoolConfig {
        retry_server_errors: true,
        max_attempts: 3,
        retry_budget: budget,
        outlier: OutlierConfig {
            enabled: false,
            ..OutlierConfig::default()
        },
        ..pool()
    };
    let (lb, _stop) = start_lb(&[&a, &b], config).await;
    let client = reqwest::Client::new();
    for _ in 0..n {
        assert_eq!(get(&client, &lb).await.0, 500);
    }
    let seen = a.behaviour.hits.load(Ordering::Relaxed) + b.behaviour.hits.load(Ordering::Relaxed);
    (seen, stats(&client, &lb).await)
}

#[tokio::test]
async fn the_retry_budget_caps_what_retries_add_to_the_load() {
    let n = 200;
    // Without a budget every failed request is tried on both backends: twice the load.
    let (unbounded, _) = attempts_with(
        RetryBudgetConfig {
            enabled: false,
            ..RetryBudgetConfig::default()
        },
        n,
    )
    .await;
    assert_eq!(unbounded, 2 * n);
    // With 20% and no floor: at most a fifth more.
    let (budgeted, s) = attempts_with(
        RetryBudgetConfig {
            enabled: true,
            percent: 20,
            min_per_sec: 0,
            ttl_ms: 60_000,
        },
        n,
    )
    .await;
    assert!(
        budgeted <= n + n / 5,
        "{budgeted} attempts for {n} requests"
    );
    assert!(budgeted >= n + n / 5 - 1, "the budget is used: {budgeted}");
    assert_eq!(
        s["retries"]["granted"].as_u64().unwrap(),
        budgeted - n,
        "{s}"
    );
    assert!(
        s["retries"]["refused"].as_u64().unwrap() >= n - n / 5 - 1,
        "{s}"
    );
}

#[tokio::test]
async fn peak_ewma_sends_most_requests_to_the_fast_backend() {
    let slow = backend("slow").await;
    let fast = backend("fast").await;
    slow.behaviour.delay_ms.store(100, Ordering::Relaxed);
    let config = PoolConfig {
        strategy: Strategy::PeakEwma,
        // Latency ejection would take the slow one out by itself; this is about selection.
        outlier: OutlierConfig {
            enabled: false,
            ..OutlierConfig::default()
        },
        ..pool()
    };
    let (lb, _stop) = start_lb(&[&slow, &fast], config).await;
    let client = reqwest::Client::new();
    let mut by_slow = 0;
    for _ in 0..100 {
        let (status, by) = get(&client, &lb).await;
        assert_eq!(status, 200);
        by_slow += u32::from(by == "slow");
    }
    // Round robin would send it 50; once it has answered slowly, it gets (next to) nothing.
    assert!(by_slow <= 5, "{by_slow} of 100 to the slow backend");
    let s = stats(&client, &lb).await;
    assert_eq!(s["strategy"], "peak_ewma");
    assert!(
        s["backends"][0]["rtt_ewma_ms"].as_f64().unwrap()
            > s["backends"][1]["rtt_ewma_ms"].as_f64().unwrap(),
        "{s}"
    );
}
