//! Task routes against a real SQLite queue in a temporary directory; a "worker" is played by
//! calling the queue directly, as the worker crate would.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, StatusCode, header};
use queue::Queue;
use serde_json::{Value, json};

use super::*;

struct Tasks {
    h: Harness,
    app: Router,
    /// The same store the gateway writes, as a worker sees it.
    queue: Arc<dyn Queue>,
    _dir: tempfile::TempDir,
}

async fn start() -> Tasks {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut h = Harness::start().await;
    let qc = queue::Config {
        data_dir: dir.path().to_path_buf(),
        ..queue::Config::default()
    };
    h.config.queue = Some(qc.clone());
    let app = h.app().await;
    let queue = queue::open(&qc).await.expect("queue");
    Tasks {
        h,
        app,
        queue,
        _dir: dir,
    }
}

fn call(method: Method, uri: &str, token: &str, body: Option<&str>) -> Request<Body> {
    let b = req(method, uri).header(header::AUTHORIZATION, format!("Bearer {token}"));
    match body {
        Some(text) => b
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(text.to_string())),
        None => b.body(Body::empty()),
    }
    .expect("request")
}

impl Tasks {
    fn alice(&self) -> String {
        self.h.user()
    }
    fn bob(&self) -> String {
        self.h.auth.token("bob", &["user"])
    }
    fn admin(&self) -> String {
        self.h.admin()
    }
    async fn post(&self, uri: &str, token: &str, body: &str) -> Answer {
        send(&self.app, call(Method::POST, uri, token, Some(body))).await
    }
    async fn get(&self, uri: &str, token: &str) -> Answer {
        send(&self.app, call(Method::GET, uri, token, None)).await
    }
    async fn delete(&self, uri: &str, token: &str) -> Answer {
        send(&self.app, call(Method::DELETE, uri, token, None)).await
    }
    async fn submit(&self, token: &str, body: Value) -> String {
        let a = self.post("/tasks", token, &body.to_string()).await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.json);
        a.json["id"].as_str().expect("id").to_string()
    }
}

#[tokio::test]
async fn submit_then_read_as_owner_admin_and_stranger() {
    let t = start().await;
    let a = t
        .post(
            "/tasks",
            &t.alice(),
            r#"{"type":"sleep","payload":{"ms":5},"priority":"high"}"#,
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.json);
    let id = a.json["id"].as_str().unwrap().to_string();
    for field in [
        "id",
        "type",
        "status",
        "priority",
        "attempts",
        "result",
        "error",
        "created_at",
        "started_at",
        "finished_at",
        "worker_id",
    ] {
        assert!(a.json.get(field).is_some(), "no {field} in {}", a.json);
    }
    assert_eq!(a.json["status"], "queued");
    assert_eq!(a.json["priority"], "high");
    assert_eq!(a.json["owner"], "id-alice");

    for path in [format!("/tasks/{id}"), format!("/task/{id}")] {
        let mine = t.get(&path, &t.alice()).await;
        assert_eq!(mine.status, StatusCode::OK, "{}", mine.json);
        assert_eq!(mine.json["id"], id.as_str());
        let admin = t.get(&path, &t.admin()).await;
        assert_eq!(admin.status, StatusCode::OK);
        let stranger = t.get(&path, &t.bob()).await;
        assert_eq!(stranger.status, StatusCode::NOT_FOUND);
        assert_eq!(stranger.error(), "not_found");
    }
    assert_eq!(
        t.get("/tasks/no-such-id", &t.alice()).await.status,
        StatusCode::NOT_FOUND
    );
    let anon = send(
        &t.app,
        req(Method::GET, &format!("/tasks/{id}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(anon.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn bad_submissions_are_refused_and_nothing_is_stored() {
    let t = start().await;
    let big = format!(
        r#"{{"type":"fail","payload":{{"message":"{}"}}}}"#,
        "x".repeat(70_000)
    );
    let cases: [(&str, &str, StatusCode, &str); 10] = [
        (
            "/tasks",
            r#"{"type":"mine_bitcoin","payload":{}}"#,
            StatusCode::BAD_REQUEST,
            "unknown_task_type",
        ),
        (
            "/tasks",
            r#"{"type":"add","payload":{"a":1}}"#,
            StatusCode::BAD_REQUEST,
            "invalid_payload",
        ),
        (
            "/tasks",
            r#"{"type":"add","payload":{"a":"1","b":2}}"#,
            StatusCode::BAD_REQUEST,
            "invalid_payload",
        ),
        (
            "/tasks",
            r#"{"type":"sleep","payload":{"ms":1},"priority":"urgent"}"#,
            StatusCode::BAD_REQUEST,
            "invalid_priority",
        ),
        (
            "/tasks",
            r#"{"payload":{}}"#,
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            "/tasks",
            "{not json",
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "/tasks",
            &big,
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            "/add",
            r#"{"a":1,"b":"two"}"#,
            StatusCode::BAD_REQUEST,
            "invalid_payload",
        ),
        // The loose door still checks the payload of a type it knows, and wants an object.
        (
            "/longtask",
            r#"{"task":"sleep","ms":"soon"}"#,
            StatusCode::BAD_REQUEST,
            "invalid_payload",
        ),
        (
            "/longtask",
            r#"[1, 2]"#,
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
    ];
    for (uri, body, status, code) in cases {
        let a = t.post(uri, &t.alice(), body).await;
        assert_eq!(a.status, status, "{uri} {}", a.json);
        assert_eq!(a.error(), code, "{uri}");
    }
    let stats = t.queue.stats().await.unwrap();
    assert_eq!(
        stats.by_status.values().sum::<u64>(),
        0,
        "nothing half-written"
    );
}

#[tokio::test]
async fn idempotency_key_returns_the_same_task() {
    let t = start().await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let r = call(
            Method::POST,
            "/tasks",
            &t.alice(),
            Some(r#"{"type":"add","payload":{"a":1,"b":2}}"#),
        );
        let mut r = r;
        r.headers_mut()
            .insert("idempotency-key", "order-42".parse().unwrap());
        let a = send(&t.app, r).await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.json);
        ids.push(a.json["id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids[0], ids[1]);
    let other = t
        .submit(
            &t.alice(),
            json!({"type": "add", "payload": {"a": 1, "b": 2}}),
        )
        .await;
    assert_ne!(other, ids[0]);
}

#[tokio::test]
async fn cancel_queued_only_and_only_your_own() {
    let t = start().await;
    let id = t
        .submit(&t.alice(), json!({"type": "sleep", "payload": {"ms": 5}}))
        .await;
    assert_eq!(
        t.delete(&format!("/tasks/{id}"), &t.bob()).await.status,
        StatusCode::NOT_FOUND
    );
    let a = t.delete(&format!("/tasks/{id}"), &t.alice()).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!(a.json["status"], "cancelled");
    let again = t.delete(&format!("/tasks/{id}"), &t.alice()).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(again.error(), "conflict");

    let running = t
        .submit(&t.alice(), json!({"type": "sleep", "payload": {"ms": 5}}))
        .await;
    let claimed = t
        .queue
        .claim("w", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.id, running);
    let busy = t.delete(&format!("/tasks/{running}"), &t.alice()).await;
    assert_eq!(busy.status, StatusCode::CONFLICT, "{}", busy.json);
    assert_eq!(
        t.delete("/tasks/nope", &t.alice()).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn list_own_tasks_with_filters_and_pages_admins_see_all() {
    let t = start().await;
    for i in 0..3 {
        t.submit(&t.alice(), json!({"type": "sleep", "payload": {"ms": i}}))
            .await;
    }
    t.submit(
        &t.alice(),
        json!({"type": "add", "payload": {"a": 1, "b": 1}}),
    )
    .await;
    t.submit(
        &t.bob(),
        json!({"type": "add", "payload": {"a": 2, "b": 2}}),
    )
    .await;

    let mine = t.get("/tasks", &t.alice()).await;
    assert_eq!(mine.status, StatusCode::OK, "{}", mine.json);
    assert_eq!(mine.json["tasks"].as_array().unwrap().len(), 4);
    let adds = t.get("/tasks?type=add", &t.alice()).await;
    assert_eq!(adds.json["tasks"].as_array().unwrap().len(), 1);
    let page = t.get("/tasks?limit=3", &t.alice()).await;
    assert_eq!(page.json["tasks"].as_array().unwrap().len(), 3);
    let cursor = page.json["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_string();
    let rest = t
        .get(&format!("/tasks?limit=3&cursor={cursor}"), &t.alice())
        .await;
    assert_eq!(rest.json["tasks"].as_array().unwrap().len(), 1);
    assert!(rest.json["next_cursor"].is_null());
    let queued = t.get("/tasks?status=queued", &t.bob()).await;
    assert_eq!(queued.json["tasks"].as_array().unwrap().len(), 1);
    let all = t.get("/tasks", &t.admin()).await;
    assert_eq!(all.json["tasks"].as_array().unwrap().len(), 5);
    for bad in [
        "/tasks?status=done",
        "/tasks?limit=0",
        "/tasks?cursor=x",
        "/tasks?colour=red",
    ] {
        let a = t.get(bad, &t.alice()).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad} {}", a.json);
    }
}

#[tokio::test]
async fn admins_requeue_dead_tasks_and_read_stats() {
    let t = start().await;
    let id = t
        .submit(
            &t.alice(),
            json!({"type": "fail", "payload": {}, "max_attempts": 1}),
        )
        .await;
    let claimed = t
        .queue
        .claim("w", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let dead = t.queue.fail(&claimed.id, "w", "boom").await.unwrap();
    assert_eq!(dead.status, queue::Status::Dead);

    let path = format!("/tasks/{id}/requeue");
    assert_eq!(
        t.post(&path, &t.alice(), "").await.status,
        StatusCode::FORBIDDEN
    );
    let a = t.post(&path, &t.admin(), "").await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.json);
    assert_eq!(a.json["status"], "queued");
    assert_eq!(
        t.post(&path, &t.admin(), "").await.status,
        StatusCode::CONFLICT
    );

    assert_eq!(
        t.get("/tasks/stats", &t.alice()).await.status,
        StatusCode::FORBIDDEN
    );
    let s = t.get("/tasks/stats", &t.admin()).await;
    assert_eq!(s.status, StatusCode::OK, "{}", s.json);
    assert_eq!(s.json["by_status"]["queued"], 1);
    assert_eq!(s.json["depth_by_priority"]["normal"], 1);
    assert_eq!(s.json["backend"], "sqlite");
}

#[tokio::test]
async fn lab_calls_longtask_add_and_result() {
    let t = start().await;
    let a = t.post("/longtask", &t.alice(), "").await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.json);
    assert_eq!(a.json["status"], "Task queued");
    assert_eq!(a.json["type"], "longtask");
    assert!(a.json["task_id"].is_string());
    // The lab's calls as its authors wrote them: whatever names no known type runs as the generic
    // long task, the body kept whole; a priority is honoured wherever it is named.
    for (body, priority) in [
        (r#"{"task":"complex_calculation"}"#, "normal"),
        (
            r#"{"type":"notification","parameters":{"priority":"high"}}"#,
            "high",
        ),
        (r#"{"heavy":true}"#, "normal"),
        (r#"{"task":"report_3"}"#, "normal"),
        (r#"{}"#, "normal"),
        (r#"{"task":"x","priority":"urgent!"}"#, "normal"),
    ] {
        let a = t.post("/longtask", &t.alice(), body).await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{body}: {}", a.json);
        assert_eq!(
            (a.json["type"].as_str(), a.json["priority"].as_str()),
            (Some("longtask"), Some(priority)),
            "{body}"
        );
        let id = a.json["task_id"].as_str().unwrap();
        let stored = t.queue.get(id).await.unwrap().expect("stored");
        let sent: Value = serde_json::from_str(body).unwrap();
        assert_eq!(stored.payload, sent, "the whole body is the payload");
    }
    let b = t
        .post(
            "/longtask",
            &t.alice(),
            r#"{"task":"sleep","ms":10,"priority":"low"}"#,
        )
        .await;
    assert_eq!(b.status, StatusCode::ACCEPTED, "{}", b.json);
    assert_eq!(b.json["priority"], "low");

    let added = t.post("/add", &t.alice(), r#"{"a":2,"b":3}"#).await;
    assert_eq!(added.status, StatusCode::CREATED, "{}", added.json);
    let rid = added.json["result_id"].as_str().unwrap().to_string();
    let pending = t.get(&format!("/result/{rid}"), &t.alice()).await;
    assert_eq!(
        pending.json,
        json!({"id": rid, "status": "queued", "ready": false, "successful": false, "value": null})
    );
    // A worker runs the add (the long task first: same priority, FIFO... so claim until ours).
    loop {
        let task = t
            .queue
            .claim("w", Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap();
        if task.id == rid {
            t.queue.complete(&task.id, "w", json!(5)).await.unwrap();
            break;
        }
    }
    let done = t.get(&format!("/result/{rid}"), &t.alice()).await;
    assert_eq!(done.json["ready"], true);
    assert_eq!(done.json["successful"], true);
    assert_eq!(done.json["value"], 5);
    assert_eq!(
        t.get(&format!("/result/{rid}"), &t.bob()).await.status,
        StatusCode::NOT_FOUND
    );
}

/// Reads the event stream into `text` until it holds `what` (10 s at most).
async fn next_events(body: &mut Body, text: &mut String, what: &str) {
    while !text.contains(what) {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .unwrap_or_else(|_| panic!("no {what} in the stream: {text}"))
            .unwrap_or_else(|| panic!("the stream ended before {what}: {text}"))
            .expect("a frame");
        if let Ok(data) = frame.into_data() {
            text.push_str(std::str::from_utf8(&data).expect("UTF-8"));
        }
    }
}

#[tokio::test]
async fn events_stream_follows_the_task_until_it_finishes() {
    let t = start().await;
    let id = t
        .submit(&t.alice(), json!({"type": "sleep", "payload": {"ms": 5}}))
        .await;
    let resp = t
        .app
        .clone()
        .oneshot(call(
            Method::GET,
            &format!("/tasks/{id}/events"),
            &t.alice(),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
    // Each change is made only after the stream reported the previous state, so every state is
    // seen whatever the poll interval and the machine's speed.
    let mut body = resp.into_body();
    let mut text = String::new();
    next_events(&mut body, &mut text, "\"status\":\"queued\"").await;
    let q = t.queue.clone();
    let task = q
        .claim("w", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    next_events(&mut body, &mut text, "\"status\":\"running\"").await;
    q.progress(
        &task.id,
        "w",
        json!({"done": 1, "total": 2}),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    next_events(&mut body, &mut text, "event: progress").await;
    q.complete(&task.id, "w", json!("ok")).await.unwrap();
    let rest = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .expect("the stream ends when the task finishes")
        .unwrap()
        .to_bytes();
    text.push_str(std::str::from_utf8(&rest).unwrap());
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
    assert_eq!(
        t.get(&format!("/tasks/{id}/events"), &t.bob()).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_queue_that_is_down_or_missing_answers_503() {
    let mut h = Harness::start().await;
    let app = h.app().await;
    let a = send(
        &app,
        call(
            Method::POST,
            "/tasks",
            &h.user(),
            Some(r#"{"type":"add","payload":{"a":1,"b":2}}"#),
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.json);
    assert_eq!(a.error(), "queue_unavailable");

    let dead = fakes::dead_url()
        .await
        .replace("http://", "postgres://root@");
    h.config.queue = Some(queue::Config {
        url: Some(format!("{dead}/tasks")),
        ..queue::Config::default()
    });
    let app = h.app().await;
    let a = send(
        &app,
        call(
            Method::POST,
            "/tasks",
            &h.user(),
            Some(r#"{"type":"add","payload":{"a":1,"b":2}}"#),
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.json);
    assert_eq!(a.error(), "queue_unavailable");
    assert!(
        !a.json["message"].as_str().unwrap().contains("127.0.0.1"),
        "no internals"
    );
    // Unknown types are still refused first, without the store.
    let b = send(
        &app,
        call(
            Method::POST,
            "/tasks",
            &h.user(),
            Some(r#"{"type":"nope"}"#),
        ),
    )
    .await;
    assert_eq!(b.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn whole_numbers_written_as_floats_are_the_numbers_they_are() {
    // Found by the contract's fuzzer: JSON does not tell `12.0` from `12`, and the document's
    // integers accept both; the task stores integers, as the workers read them.
    let t = start().await;
    let id = t
        .submit(
            &t.alice(),
            json!({"type": "sleep", "payload": {"ms": 500.0}, "max_attempts": 12.0}),
        )
        .await;
    let a = t.get(&format!("/tasks/{id}"), &t.alice()).await;
    assert_eq!(a.json["payload"]["ms"], json!(500), "{}", a.json);
    assert!(a.json["payload"]["ms"].is_i64(), "{}", a.json);
    assert_eq!(a.json["max_attempts"], json!(12));
    for bad in [
        json!({"type": "sleep", "payload": {"ms": 500.5}}),
        json!({"type": "sleep", "payload": {"ms": 1}, "max_attempts": 2.5}),
        json!({"type": "sleep", "payload": {"ms": 1}, "max_attempts": -1.0}),
    ] {
        let a = t.post("/tasks", &t.alice(), &bad.to_string()).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad}: {}", a.json);
    }
}

#[tokio::test]
async fn an_oversized_optional_body_is_refused_in_the_error_shape() {
    let t = start().await;
    let big = format!(
        "{{\"name\": \"{}\"}}",
        "x".repeat(t.h.config.max_body_bytes + 10)
    );
    let a = t.post("/longtask", &t.alice(), &big).await;
    assert_eq!(
        (a.status, a.error()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        "{}",
        a.text
    );
}
