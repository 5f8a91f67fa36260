//! The worker against a real SQLite queue in a temporary directory: tasks run, fail, retry, die,
//! and a shutdown releases what cannot finish in time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::testing;
use queue::{NewTask, Queue, Status};
use serde_json::json;
use tokio::sync::watch;

use crate::{AppState, Config, Error, Registry, router};

async fn setup(config: Config) -> (AppState, Arc<dyn Queue>, tempfile::TempDir) {
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
        common::Instance::new("worker", "worker-1"),
        q.clone(),
        Registry::builtin(),
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
    // And nothing new was claimed after the stop.
    let later = q
        .submit(NewTask::new("add", json!({"a": 1, "b": 1}), "u"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        q.get(&later.id).await.unwrap().unwrap().status,
        Status::Queued
    );
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let (state, q, _dir) = setup(fast()).await;
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
    loop {
        let text = testing::call(&app, testing::get("/metrics")).await.text;
        if text.contains("scalelab_queue_depth") && text.contains("scalelab_task_run_seconds") {
            break;
        }
        assert!(Instant::now() < deadline, "no queue metrics in {text}");
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
