//! The worker against a real SQLite queue in a temporary directory: tasks run, fail, retry, die,
//! and a shutdown releases what cannot finish in time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::testing;
use queue::{NewTask, Queue, Status};
use serde_json::json;
use tokio::sync::watch;

use crate::{AppState, Config, Context, Error, Handler, Registry, router};

async fn setup(config: Config) -> (AppState, Arc<dyn Queue>, tempfile::TempDir) {
    setup_with(config, "worker-1", Registry::builtin()).await
}

/// A worker named `id` (which labels its metrics) with the handlers of `registry`.
async fn setup_with(
    config: Config,
    id: &str,
    registry: Registry,
) -> (AppState, Arc<dyn Queue>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let qc = queue::Config {
        data_dir: dir.path().to_path_buf(),
        retry_base_ms: 20,
        retry_max_ms: 40,
        ..queue::Config::default()
    };
    let q = queue::open(&qc).await.expect("queue");
    let state = AppState::with_queue(
        config,
        common::Instance::new("worker", id),
        q.clone(),
        registry,
    )
    .expect("state");
    (state, q, dir)
}

fn fast() -> Config {
    Config {
        concurrency: 2,
        lease_ms: 2000,
        heartbeat_ms: 100,
        poll_ms: 10,
        shutdown_grace_ms: 200,
        stats_interval_ms: 50,
        ..Config::default()
    }
}

async fn wait_status(q: &dyn Queue, id: &str, want: Status) -> queue::Task {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let t = q.get(id).await.unwrap().unwrap();
        if t.status == want {
            return t;
        }
        assert!(Instant::now() < deadline, "task {id} stuck in {:?}", t);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_run_fail_retry_and_die() {
    let (state, q, _dir) = setup(fast()).await;
    let (stop_tx, stop_rx) = watch::channel(false);
    let runner = tokio::spawn(crate::run(state, stop_rx));

    let add = q
        .submit(NewTask::new("add", json!({"a": 40, "b": 2}), "u"))
        .await
        .unwrap();
    let sleep = q
        .submit(NewTask::new("sleep", json!({"ms": 300}), "u"))
        .await
        .unwrap();
    let fail = q
        .submit(NewTask::new("fail", json!({"message": "nope"}), "u"))
        .await
        .unwrap();

    let done = wait_status(&*q, &add.id, Status::Succeeded).await;
    assert_eq!(done.result, Some(json!(42)));
    assert_eq!(done.attempts, 1);
    assert_eq!(
        done.worker_id
            .as_deref()
            .map(|w| w.starts_with("worker-1/")),
        Some(true)
    );
    let slept = wait_status(&*q, &sleep.id, Status::Succeeded).await;
    assert_eq!(slept.progress, Some(json!({"done": 300, "total": 300})));
    let dead = wait_status(&*q, &fail.id, Status::Dead).await;
    assert_eq!(dead.attempts, 3);
    assert_eq!(dead.error.as_deref(), Some("nope"));

    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), runner)
        .await
        .expect("the run loop stops")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_short_tasks_and_releases_long_ones() {
    let (state, q, _dir) = setup(fast()).await;
    let (stop_tx, stop_rx) = watch::channel(false);
    let runner = tokio::spawn(crate::run(state, stop_rx));
    let short = q
        .submit(NewTask::new("sleep", json!({"ms": 100}), "u"))
        .await
        .unwrap();
    let long = q
        .submit(NewTask::new("sleep", json!({"ms": 60000}), "u"))
        .await
        .unwrap();
    wait_status(&*q, &long.id, Status::Running).await;
    wait_status(&*q, &short.id, Status::Running).await;
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), runner)
        .await
        .expect("the run loop stops within the grace period")
        .unwrap();
    assert_eq!(
        q.get(&short.id).await.unwrap().unwrap().status,
        Status::Succeeded
    );
    let released = q.get(&long.id).await.unwrap().unwrap();
    assert_eq!((released.status, released.attempts), (Status::Queued, 0));
}

/// `sleep` replaced by a handler that runs until the test lets it through (one permit each).
#[derive(Debug)]
struct Gate(Arc<tokio::sync::Semaphore>);

#[async_trait::async_trait]
impl Handler for Gate {
    fn name(&self) -> &'static str {
        "sleep"
    }

    async fn run(&self, _: serde_json::Value, _: &Context) -> Result<serde_json::Value, String> {
        self.0.acquire().await.map_err(|e| e.to_string())?.forget();
        Ok(json!("let through"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_worker_claims_nothing_new() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let mut registry = Registry::builtin();
    registry.register(Arc::new(Gate(gate.clone())));
    // A grace period longer than the test: the tasks end when the gate says, not when it runs out.
    let config = Config {
        shutdown_grace_ms: 60_000,
        ..fast()
    };
    let (state, q, _dir) = setup_with(config, "worker-1", registry).await;
    let (stop_tx, stop_rx) = watch::channel(false);
    let runner = tokio::spawn(crate::run(state, stop_rx));
    // Both slots busy until the gate opens.
    let mut held = Vec::new();
    for _ in 0..2 {
        let t = q
            .submit(NewTask::new("sleep", json!({"ms": 1}), "u"))
            .await
            .unwrap();
        held.push(t.id);
    }
    for id in &held {
        wait_status(&*q, id, Status::Running).await;
    }
    stop_tx.send(true).unwrap();
    // Submitted once the worker is stopping, while no slot is free (so none is mid-claim).
    let later = q
        .submit(NewTask::new("add", json!({"a": 1, "b": 1}), "u"))
        .await
        .unwrap();
    // One slot finishes its task and is free; the other is still draining, so the worker runs.
    gate.add_permits(1);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut done = 0;
        for id in &held {
            done += usize::from(q.get(id).await.unwrap().unwrap().status == Status::Succeeded);
        }
        if done == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "no held task finished");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !runner.is_finished(),
        "the worker stopped with a task running"
    );
    assert_eq!(
        q.get(&later.id).await.unwrap().unwrap().status,
        Status::Queued,
        "a free slot claimed a task while the worker was stopping"
    );
    // The last task ends; the worker stops, and the later task is still waiting, untouched.
    gate.add_permits(1);
    tokio::time::timeout(Duration::from_secs(10), runner)
        .await
        .expect("the worker stops once its last task is done")
        .unwrap();
    for id in &held {
        assert_eq!(q.get(id).await.unwrap().unwrap().status, Status::Succeeded);
    }
    let untouched = q.get(&later.id).await.unwrap().unwrap();
    assert_eq!((untouched.status, untouched.attempts), (Status::Queued, 0));
}

/// The value of the series `name{labels...}` in a Prometheus text page (labels in any order).
fn series(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    page.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix('{')?;
        let (set, value) = rest.split_once("} ")?;
        let set: Vec<&str> = set.split(',').collect();
        labels
            .iter()
            .all(|(k, v)| set.contains(&format!("{k}=\"{v}\"").as_str()))
            .then(|| value.trim().parse().ok())?
    })
}

#[tokio::test]
async fn health_ready_and_metrics() {
    // The recorder is process-wide and the other tests of this binary run workers too: every
    // check reads the series of this test's own worker id.
    let id = "worker-metrics-test";
    let (state, q, _dir) = setup_with(fast(), id, Registry::builtin()).await;
    let app = router(state.clone());
    for path in ["/health", "/ready", "/metrics"] {
        let answer = testing::call(&app, testing::get(path)).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}");
    }
    // The gauges appear once the refresher ran.
    q.submit(NewTask::new("add", json!({"a": 1, "b": 1}), "u"))
        .await
        .unwrap();
    let (stop_tx, stop_rx) = watch::channel(false);
    let runner = tokio::spawn(crate::run(state, stop_rx));
    let deadline = Instant::now() + Duration::from_secs(10);
    let succeeded = [("type", "add"), ("outcome", "succeeded"), ("id", id)];
    loop {
        let text = testing::call(&app, testing::get("/metrics")).await.text;
        let depth = ["high", "normal", "low"].map(|p| {
            series(
                &text,
                "scalelab_queue_depth",
                &[("priority", p), ("id", id)],
            )
        });
        let ran = series(&text, "scalelab_tasks_total", &succeeded);
        if depth.iter().all(Option::is_some) && ran.is_some() {
            // Exactly the one task this worker ran.
            assert_eq!(ran, Some(1.0), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "no metrics of {id} in {text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_tx.send(true).unwrap();
    runner.await.unwrap();
}

#[test]
fn bad_settings_are_refused() {
    let bad = Config {
        heartbeat_ms: 10_000,
        lease_ms: 15_000,
        ..Config::default()
    };
    assert_eq!(
        bad.validate(),
        vec![
            "heartbeat_ms: must be at least 1 and at most half of lease_ms (15000), so that one \
             late heartbeat does not lose the lease"
        ]
    );
    let two = Config {
        concurrency: 0,
        poll_ms: 0,
        db_url: "127.0.0.1:5002".into(),
        ..Config::default()
    };
    assert_eq!(
        two.validate(),
        vec![
            "concurrency: must be 1 to 1024",
            "poll_ms: must be at least 1",
            "db_url: \"127.0.0.1:5002\" is not of the form http://host:port",
        ],
        "every problem at once"
    );
    assert!(matches!(two.check(), Err(Error::Config(_))));
    assert_eq!(Config::default().validate(), Vec::<String>::new());
}

#[tokio::test]
async fn the_lab_polls_a_longtask_on_the_workers_own_port() {
    let mut registry = Registry::builtin();
    registry.register(Arc::new(crate::LongTask { ms: 20 }));
    let (state, q, _dir) = setup_with(fast(), "worker-lab", registry).await;
    let app = router(state.clone());
    let body = json!({"task": "complex_calculation", "parameters": {"n": 7}});
    let id = q
        .submit(NewTask::new(queue::types::LONGTASK, body.clone(), "u"))
        .await
        .unwrap()
        .id;
    for path in [format!("/task/{id}"), format!("/tasks/{id}")] {
        let a = testing::call(&app, testing::get(&path)).await;
        assert_eq!(a.status, StatusCode::OK, "{path}: {}", a.text);
        assert_eq!(a.json["status"], "queued");
    }
    let missing = testing::call(&app, testing::get("/task/no-such-task")).await;
    assert_eq!(
        (missing.status, missing.error()),
        (StatusCode::NOT_FOUND, "not_found")
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let runner = tokio::spawn(crate::run(state, stop_rx));
    let deadline = Instant::now() + Duration::from_secs(10);
    let done = loop {
        let a = testing::call(&app, testing::get(&format!("/task/{id}"))).await;
        if a.json["status"] == "succeeded" {
            break a.json;
        }
        assert!(Instant::now() < deadline, "not done: {}", a.text);
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    stop_tx.send(true).unwrap();
    runner.await.unwrap();
    assert_eq!(done["result"]["echo"], body, "the whole body comes back");
    assert_eq!(done["result"]["worked_ms"], 20);
    assert_eq!(done["progress"], json!({"done": 20, "total": 20}));
}

/// A slot claims `prefetch` tasks at once: the ones waiting behind the running task keep their
/// leases (renewed with the running task's), and at shutdown they are given back unstarted,
/// their attempt not counted, with the running one released after the grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetched_tasks_keep_their_leases_and_are_released_at_shutdown() {
    let (state, q, _dir) = setup(Config {
        concurrency: 1,
        prefetch: 4,
        ..fast()
    })
    .await;
    let long = q
        .submit(NewTask::new("sleep", json!({"ms": 60000}), "u"))
        .await
        .unwrap();
    let mut waiting = Vec::new();
    for _ in 0..3 {
        waiting.push(
            q.submit(NewTask::new("add", json!({"a": 1, "b": 2}), "u"))
                .await
                .unwrap()
                .id,
        );
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let runner = tokio::spawn(crate::run(state, stop_rx));
    wait_status(&*q, &long.id, Status::Running).await;
    // All four were claimed by the one slot, in one batch.
    let first = q.get(&waiting[2]).await.unwrap().unwrap();
    assert_eq!(first.status, Status::Running);
    assert_eq!(first.worker_id.as_deref(), Some("worker-1/1"));
    // Its lease moves forward while it waits.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = q.get(&waiting[2]).await.unwrap().unwrap();
        if now.lease_until > first.lease_until {
            assert_eq!(now.status, Status::Running);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the waiting task's lease was never renewed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), runner)
        .await
        .expect("the run loop stops within the grace period")
        .unwrap();
    for id in waiting.iter().chain([&long.id]) {
        let t = q.get(id).await.unwrap().unwrap();
        assert_eq!(t.status, Status::Queued, "{t:?}");
        assert_eq!(t.attempts, 0, "{t:?}");
        assert_eq!(t.worker_id, None, "{t:?}");
    }
}

/// RabbitMQ: a worker that stops keeps no delivery it has not claimed. Its two slots run long
/// tasks and its consumer has prefetched two more; once it has stopped (its queue still open, as
/// in a process's last moments), another worker claims all six tasks, none with an attempt
/// counted against it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_worker_on_rabbitmq_keeps_no_prefetched_delivery() {
    let Some(db) = testing::fresh_postgres("worker_amqp").await else {
        return;
    };
    let amqp = std::env::var("SCALELAB_TEST_AMQP")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let qc = queue::Config {
        url: Some(db.url.clone()),
        amqp_url: Some(amqp.clone()),
        ..queue::Config::default()
    };
    let name = format!(
        "scalelab-test-worker-{}-{}",
        std::process::id(),
        common::now_ms()
    );
    let open = || queue::RabbitQueue::connect(&amqp, &name, &qc, Some(Duration::from_secs(600)));
    let gateway = match open().await {
        Ok(q) => q,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIP: RabbitMQ unreachable ({e})");
            return;
        }
        Err(e) => panic!("RabbitMQ is required in CI but unreachable: {e}"),
    };
    let q: Arc<dyn Queue> = Arc::new(open().await.expect("the worker's queue"));
    let config = Config {
        concurrency: 2,
        prefetch: 1,
        ..fast()
    };
    let state = AppState::with_queue(
        config,
        common::Instance::new("worker", "worker-1"),
        q.clone(),
        Registry::builtin(),
    )
    .expect("state");
    let mut ids = std::collections::HashSet::new();
    for _ in 0..6 {
        let t = gateway
            .submit(NewTask::new("sleep", json!({"ms": 60000}), "u"))
            .await
            .unwrap();
        ids.insert(t.id);
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let runner = tokio::spawn(crate::run(state, stop_rx));
    let deadline = Instant::now() + Duration::from_secs(10);
    while gateway.stats().await.unwrap().by_status["running"] < 2 {
        assert!(Instant::now() < deadline, "the slots never both ran a task");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), runner)
        .await
        .expect("the run loop stops within the grace period")
        .unwrap();

    let other = open().await.expect("another worker's queue");
    let mut claimed = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while claimed.len() < ids.len() {
        assert!(
            Instant::now() < deadline,
            "another worker got only {} of the 6 tasks",
            claimed.len()
        );
        for t in other
            .claim_batch("worker-2/1", Duration::from_secs(30), 6)
            .await
            .unwrap()
        {
            assert_eq!(t.attempts, 1, "{t:?}");
            claimed.insert(t.id);
        }
        other.wait_for_work(Duration::from_millis(50)).await;
    }
    assert_eq!(claimed, ids);
    drop(q);
}
