//! End to end (issue 8): the lab's own calls, as its statement and students' scripts write them,
//! through `:8000` of a running system (and the two that go to an instance's own port).

use std::time::{Duration, Instant};

use base64::Engine;
use e2e::{Running, Topology};
use serde_json::{Value, json};

use crate::support::send;

/// The default topology's lab behaviour: the db answers every key, guest tokens are on; one worker
/// whose generic long task works 100 ms.
fn topology() -> Topology {
    Topology::new()
        .program(env!("CARGO_BIN_EXE_scalelab"))
        .counts("worker", 1)
        .toml_extra("[auth]\nargon2_memory_kib = 1024\nargon2_iterations = 1\n")
        .toml_extra(
            "[db]\nlatency_ms = 20\njitter_ms = 0\nseed_records = 10\nunknown_keys = \"generate\"\n",
        )
        .toml_extra("[gateway.auth]\nanonymous_tokens = true\n")
        .toml_extra("[worker]\nconcurrency = 2\npoll_ms = 20\nlongtask_ms = 100\n")
}

async fn call(
    sys: &Running,
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    let mut req = sys.client().request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let (status, _, body) = send(req).await;
    (status, body)
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("base64"),
    )
    .expect("JSON claims")
}

#[tokio::test]
async fn the_labs_calls_work_as_written() {
    let sys = topology().start().await.expect("scalelab up");
    let token = sys.admin_token().await.expect("admin token");
    let lb = sys.lb_url();
    use reqwest::Method;

    // GET /data?key=test_key (a key nobody created), twice: generated, then from the cache.
    let (s, first) = call(
        &sys,
        Method::GET,
        format!("{lb}/data?key=test_key"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(s, 200, "{first}");
    assert_eq!(first["cached"], false);
    assert_eq!(first["data"]["generated"], true);
    let (s, second) = call(
        &sys,
        Method::GET,
        format!("{lb}/data?key=test_key"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(
        (s, second["cached"].clone()),
        (200, json!(true)),
        "{second}"
    );
    assert_eq!(second["data"], first["data"]);

    // POST /longtask, every body the lab's scripts send: 202 "Task queued".
    let bodies = [
        (r#"{"task":"complex_calculation"}"#, "normal"),
        (
            r#"{"type":"notification","parameters":{"priority":"high"}}"#,
            "high",
        ),
        (r#"{"heavy":true}"#, "normal"),
        (r#"{"task":"report_3"}"#, "normal"),
        (r#"{}"#, "normal"),
    ];
    let mut ids = Vec::new();
    for (body, priority) in bodies {
        let (s, queued) = call(
            &sys,
            Method::POST,
            format!("{lb}/longtask"),
            Some(&token),
            Some(body),
        )
        .await;
        assert_eq!(s, 202, "{body}: {queued}");
        assert_eq!(queued["status"], "Task queued");
        assert_eq!(queued["priority"], priority, "{body}");
        ids.push((queued["task_id"].as_str().unwrap().to_string(), body));
    }

    // GET http://localhost:5005/task/<id>: the status on the worker's own port, until it is done,
    // with the whole body echoed in the result.
    let worker = sys.url_of("worker-1");
    let deadline = Instant::now() + Duration::from_secs(60);
    for (id, body) in &ids {
        let task = loop {
            let (s, task) =
                call(&sys, Method::GET, format!("{worker}/task/{id}"), None, None).await;
            assert_eq!(s, 200, "{task}");
            if task["status"] == "succeeded" {
                break task;
            }
            assert!(Instant::now() < deadline, "{id} never finished: {task}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let sent: Value = serde_json::from_str(body).unwrap();
        assert_eq!(task["result"]["echo"], sent, "{task}");
        // The same state as on the gateway.
        let (_, via_lb) = call(
            &sys,
            Method::GET,
            format!("{lb}/tasks/{id}"),
            Some(&token),
            None,
        )
        .await;
        assert_eq!(via_lb["status"], "succeeded");
    }

    // POST :5000/token {"username": "test_user"}: a guest token for that name, on a gateway's own
    // port and through the balancer.
    for base in [sys.url_of("gateway-1"), lb.clone()] {
        let (s, t) = call(
            &sys,
            Method::POST,
            format!("{base}/token"),
            None,
            Some(r#"{"username":"test_user"}"#),
        )
        .await;
        assert_eq!(s, 200, "{t}");
        let c = claims(t["token"].as_str().unwrap());
        assert_eq!(
            (c["username"].clone(), c["roles"].clone()),
            (json!("test_user"), json!(["guest"]))
        );
        // A guest reads and never writes.
        let guest = t["token"].as_str().unwrap();
        let (s, _) = call(
            &sys,
            Method::GET,
            format!("{lb}/data?key=test_key"),
            Some(guest),
            None,
        )
        .await;
        assert_eq!(s, 200);
        let (s, refused) = call(
            &sys,
            Method::PUT,
            format!("{lb}/data/test_key"),
            Some(guest),
            Some(r#"{"value":1}"#),
        )
        .await;
        assert_eq!((s, refused["error"].as_str()), (403, Some("forbidden")));
    }
    // A 20 MiB POST /login from Python's urllib: the client reads the 413 and its JSON body
    // (the body is drained, not reset), through the balancer and on a gateway's own port.
    for base in [lb.clone(), sys.url_of("gateway-1")] {
        let script = r#"
import sys, urllib.request, urllib.error
req = urllib.request.Request(sys.argv[1] + "/login", data=b"x" * (20 * 1024 * 1024),
                             headers={"Content-Type": "application/json"}, method="POST")
try:
    urllib.request.urlopen(req, timeout=60)
    print("200")
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
"#;
        let out = tokio::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(&base)
            .output()
            .await
            .expect("python3 runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.starts_with("413 ") && stdout.contains("\"error\":\"payload_too_large\""),
            "{base}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    sys.stop().await.expect("a clean stop");
}
