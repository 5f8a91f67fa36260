//! End to end: the task queue through the balancer, with two real worker processes started by
//! `scalelab up` on the embedded (SQLite) queue.

use std::time::{Duration, Instant};

use e2e::{Running, Topology};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::support::send;

/// The default topology plus two workers of one slot each, with short leases and retries so that
/// redeliveries happen in seconds.
fn topology() -> Topology {
    Topology::new()
        .program(env!("CARGO_BIN_EXE_scalelab"))
        .counts("worker", 2)
        .toml_extra("[auth]\nargon2_memory_kib = 1024\nargon2_iterations = 1\n")
        .toml_extra("[db]\nlatency_ms = 20\njitter_ms = 0\nseed_records = 10\n")
        .toml_extra(
            "[lb.pool.health]\ninterval_ms = 100\n[gateway.services.health]\ninterval_ms = 100\n",
        )
        .toml_extra(
            "[worker]\nconcurrency = 1\nlease_ms = 2000\nheartbeat_ms = 300\npoll_ms = 50\n\
             shutdown_grace_ms = 1000\nstats_interval_ms = 200\n\
             [queue]\nretry_base_ms = 100\nretry_max_ms = 400\n",
        )
}

async fn call(
    sys: &Running,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = sys
        .client()
        .request(method, format!("{}{path}", sys.lb_url()))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let (status, _, body) = send(req).await;
    (status, body)
}

async fn post(sys: &Running, path: &str, token: &str, body: Value) -> (u16, Value) {
    call(sys, reqwest::Method::POST, path, token, Some(body)).await
}

async fn get(sys: &Running, path: &str, token: &str) -> (u16, Value) {
    call(sys, reqwest::Method::GET, path, token, None).await
}

/// Polls `GET /tasks/{id}` until `done` holds (60 s at most).
async fn wait_task(sys: &Running, token: &str, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, task) = get(sys, &format!("/tasks/{id}"), token).await;
        assert_eq!(status, 200, "{task}");
        if done(&task) {
            return task;
        }
        assert!(
            Instant::now() < deadline,
            "task {id} never got there: {task}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn status_is(want: &'static str) -> impl Fn(&Value) -> bool {
    move |t| t["status"] == want
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_through_the_balancer_survive_a_killed_worker() {
    let sys = topology().start().await.expect("scalelab up");
    let token = sys.admin_token().await.expect("admin token");

    // The lab's call: a report that reads every seeded db record, with progress.
    let (status, queued) = post(
        &sys,
        "/longtask",
        &token,
        json!({"task": "report", "records": 10}),
    )
    .await;
    assert_eq!(status, 202, "{queued}");
    assert_eq!(queued["status"], "Task queued");
    let id = queued["task_id"].as_str().unwrap().to_string();
    let report = wait_task(&sys, &token, &id, status_is("succeeded")).await;
    assert_eq!(report["result"]["found"], 10, "{report}");
    assert_eq!(report["progress"], json!({"done": 10, "total": 10}));
    assert!(report["worker_id"].as_str().unwrap().starts_with("worker-"));
    assert!(report["started_at"].as_i64() <= report["finished_at"].as_i64());

    // Events: two high-priority sleeps occupy both slots, so the watched task is seen queued.
    for _ in 0..2 {
        let (s, b) = post(
            &sys,
            "/tasks",
            &token,
            json!({"type": "sleep", "payload": {"ms": 1500}, "priority": "high"}),
        )
        .await;
        assert_eq!(s, 202, "{b}");
    }
    let (s, watched) = post(
        &sys,
        "/tasks",
        &token,
        json!({"type": "sleep", "payload": {"ms": 2500}}),
    )
    .await;
    assert_eq!(s, 202, "{watched}");
    let watched = watched["id"].as_str().unwrap().to_string();
    let resp = sys
        .client()
        .get(format!("{}/tasks/{watched}/events", sys.lb_url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = tokio::time::timeout(Duration::from_secs(30), resp.text())
        .await
        .expect("the stream ends when the task finishes")
        .unwrap();
    let statuses: Vec<String> = text
        .split("\n\n")
        .filter(|e| e.contains("event: status"))
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|d| {
            serde_json::from_str::<Value>(d).unwrap()["status"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(statuses, ["queued", "running", "succeeded"], "{text}");
    assert!(text.contains("event: progress"), "{text}");

    // The Celery-style pair.
    let (s, added) = post(&sys, "/add", &token, json!({"a": 2, "b": 3})).await;
    assert_eq!(s, 201, "{added}");
    let rid = added["result_id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let result = loop {
        let (s, r) = get(&sys, &format!("/result/{rid}"), &token).await;
        assert_eq!(s, 200, "{r}");
        if r["ready"] == true {
            break r;
        }
        assert!(Instant::now() < deadline, "never ready: {r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(result["successful"], true);
    assert_eq!(result["value"], 5);

    // A task that always fails retries with backoff and ends dead; an admin re-queues it.
    let (s, f) = post(
        &sys,
        "/tasks",
        &token,
        json!({"type": "fail", "payload": {"message": "no"}, "max_attempts": 2}),
    )
    .await;
    assert_eq!(s, 202, "{f}");
    let fid = f["id"].as_str().unwrap().to_string();
    let dead = wait_task(&sys, &token, &fid, status_is("dead")).await;
    assert_eq!(
        (dead["attempts"].as_u64(), dead["error"].as_str()),
        (Some(2), Some("no"))
    );
    let (s, again) = post(&sys, &format!("/tasks/{fid}/requeue"), &token, json!({})).await;
    assert_eq!(s, 202, "{again}");

    // A worker killed with SIGKILL mid-task: the task runs again elsewhere once the lease lapses.
    let (s, long) = post(
        &sys,
        "/tasks",
        &token,
        json!({"type": "sleep", "payload": {"ms": 3000}, "priority": "high"}),
    )
    .await;
    assert_eq!(s, 202, "{long}");
    let lid = long["id"].as_str().unwrap().to_string();
    let running = wait_task(&sys, &token, &lid, status_is("running")).await;
    let holder = running["worker_id"].as_str().unwrap().to_string();
    let instance = holder.split('/').next().unwrap().to_string();
    sys.kill(&instance, Signal::SIGKILL)
        .expect("kill the worker");
    let done = wait_task(&sys, &token, &lid, status_is("succeeded")).await;
    assert_eq!(done["attempts"], 2, "{done}");
    assert_eq!(done["result"], json!({"slept_ms": 3000}));

    // Metrics and stats show the queue.
    let (s, stats) = get(&sys, "/tasks/stats", &token).await;
    assert_eq!(s, 200, "{stats}");
    assert!(
        stats["by_status"]["succeeded"].as_u64().unwrap() >= 6,
        "{stats}"
    );
    let survivor = if instance == "worker-1" {
        "worker-2"
    } else {
        "worker-1"
    };
    let metrics = sys
        .client()
        .get(format!("{}/metrics", sys.url_of(survivor)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "scalelab_queue_depth",
        "scalelab_task_wait_seconds",
        "scalelab_task_run_seconds",
        "scalelab_worker_in_flight",
    ] {
        assert!(metrics.contains(name), "no {name} in the worker's metrics");
    }
    sys.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_survive_a_restart_of_the_whole_system() {
    let dir = tempfile::tempdir().expect("tempdir");
    let password = "e2e-durable-admin-password";
    let sys = topology()
        .in_dir(dir.path())
        .admin_password(password)
        .start()
        .await
        .expect("first start");
    let token = sys.admin_token().await.expect("admin token");
    let (s, added) = post(&sys, "/add", &token, json!({"a": 20, "b": 22})).await;
    assert_eq!(s, 201, "{added}");
    let finished = added["result_id"].as_str().unwrap().to_string();
    wait_task(&sys, &token, &finished, status_is("succeeded")).await;
    // Longer than the shutdown grace: the running ones are released, the others stay queued.
    let mut pending = Vec::new();
    for _ in 0..4 {
        let (s, t) = post(
            &sys,
            "/tasks",
            &token,
            json!({"type": "sleep", "payload": {"ms": 1500}, "priority": "low"}),
        )
        .await;
        assert_eq!(s, 202, "{t}");
        pending.push(t["id"].as_str().unwrap().to_string());
    }
    sys.stop().await.expect("stop");

    let sys = topology()
        .in_dir(dir.path())
        .admin_password(password)
        .start()
        .await
        .expect("second start on the same data");
    let token = sys.admin_token().await.expect("the same admin");
    let (s, r) = get(&sys, &format!("/result/{finished}"), &token).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(
        (r["ready"].as_bool(), r["value"].as_i64()),
        (Some(true), Some(42))
    );
    for id in &pending {
        let t = wait_task(&sys, &token, id, status_is("succeeded")).await;
        assert_eq!(t["result"], json!({"slept_ms": 1500}));
    }
    sys.stop().await.expect("stop");
}
