//! Reads from a real PostgreSQL streaming replica. Run by `tests/replica.sh`, which makes the
//! primary and the standby and sets the environment; ignored (and a no-op) otherwise.

use std::time::{Duration, Instant};

use axum::http::Method;
use common::testing;
use serde_json::{Value, json};

use users::{AppState, Config, ShardConfig, router};

async fn call(
    app: &axum::Router,
    method: Method,
    uri: &str,
    body: Option<Value>,
) -> (u16, String, Value) {
    let body = body.map(|b| b.to_string());
    let answer = testing::call(app, testing::request(method, uri, body.as_deref())).await;
    let copy = answer
        .headers
        .get("x-read-copy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (answer.status.as_u16(), copy, answer.json)
}

fn shell(command: &str) {
    let ok = std::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .status()
        .unwrap();
    assert!(ok.success(), "{command}");
}

/// Polls until a read of `id` (replica allowed) is answered by `want` copy with a 200.
async fn until_read_from(app: &axum::Router, id: &str, want: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (s, copy, body) = call(app, Method::GET, &format!("/users/{id}"), None).await;
        if s == 200 && copy == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{id} never read from the {want}: {s} {copy} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
#[ignore = "needs the clusters of tests/replica.sh"]
async fn reads_come_from_the_streaming_replica_and_fall_back_to_the_primary() {
    let (Ok(primary), Ok(standby), Ok(stop), Ok(start)) = (
        std::env::var("SCALELAB_REPLICA_PRIMARY"),
        std::env::var("SCALELAB_REPLICA_STANDBY"),
        std::env::var("SCALELAB_REPLICA_STOP"),
        std::env::var("SCALELAB_REPLICA_START"),
    ) else {
        eprintln!("SKIP: run crates/users/tests/replica.sh");
        return;
    };
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        shards: (0..3)
            .map(|i| ShardConfig {
                url: format!("{primary}/users_{i}"),
                replicas: vec![format!("{standby}/users_{i}")],
            })
            .collect(),
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    let app = router(
        AppState::new(config, common::Instance::new("users", "users-1"))
            .await
            .unwrap(),
    );

    let ids: Vec<String> = (0..30).map(|i| format!("rep-{i}")).collect();
    for id in &ids {
        let body = json!({"id": id, "username": format!("u{id}"), "first_name": "Before"});
        let (s, _, b) = call(&app, Method::POST, "/users", Some(body)).await;
        assert_eq!(s, 201, "{b}");
    }
    // Every profile written on the primaries arrives on the standby by streaming replication and
    // is then read from there.
    let started = Instant::now();
    for id in &ids {
        let body = until_read_from(&app, id, "replica").await;
        assert_eq!(body["first_name"], "Before");
    }
    eprintln!(
        "all 30 profiles read from the replica {:?} after their writes",
        started.elapsed()
    );
    let (_, _, report) = call(&app, Method::GET, "/shards", None).await;
    assert!(
        report["shards"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["replicas"] == json!([true])),
        "{report}"
    );

    // Read-your-writes: the primary answers the writer at once.
    let (s, _, _) = call(
        &app,
        Method::PATCH,
        "/users/rep-0",
        Some(json!({"first_name": "After"})),
    )
    .await;
    assert_eq!(s, 200);
    let (s, copy, body) = call(&app, Method::GET, "/users/rep-0?consistency=primary", None).await;
    assert_eq!(
        (s, copy.as_str(), body["first_name"].as_str()),
        (200, "primary", Some("After"))
    );
    let body = until_read_from(&app, "rep-0", "replica").await;
    // The replica may lag, never go back: once it has the write it keeps it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut body = body;
    while body["first_name"] != "After" {
        assert!(
            Instant::now() < deadline,
            "the replica never caught up: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        body = until_read_from(&app, "rep-0", "replica").await;
    }

    // The replica stops: every read still succeeds, from the primary.
    eprintln!("{:?} stopping the replica", t0.elapsed());
    shell(&stop);
    eprintln!("{:?} replica stopped", t0.elapsed());
    let mut slowest = Duration::ZERO;
    for id in &ids {
        let t = Instant::now();
        let (s, copy, b) = call(&app, Method::GET, &format!("/users/{id}"), None).await;
        slowest = slowest.max(t.elapsed());
        assert_eq!((s, copy.as_str()), (200, "primary"), "{b}");
    }
    eprintln!(
        "{:?} 30 reads while the replica is down; the slowest took {slowest:?}",
        t0.elapsed()
    );
    let (_, _, report) = call(&app, Method::GET, "/shards", None).await;
    assert!(
        report["shards"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["replicas"] == json!([false])),
        "{report}"
    );
    eprintln!(
        "{:?} replica stopped: 30 of 30 reads answered by the primaries",
        t0.elapsed()
    );

    // And comes back.
    shell(&start);
    eprintln!("{:?} replica started", t0.elapsed());
    until_read_from(&app, "rep-1", "replica").await;
    eprintln!("{:?} reads are served by the replica again", t0.elapsed());
}
