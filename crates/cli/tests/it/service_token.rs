//! End to end (issue 9): the deployment's service credential. With `SCALELAB_SERVICE_TOKEN` set,
//! the internal roles take changes only with it, and the gateways send it, so the public API works
//! as before; an internal role bound beyond loopback refuses to start without one.

use e2e::Topology;
use serde_json::json;

use crate::support::send;

const TOKEN: &str = "e2e-service-token-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_roles_take_changes_only_with_the_deployments_credential() {
    let sys = Topology::new()
        .program(env!("CARGO_BIN_EXE_scalelab"))
        .env("SCALELAB_SERVICE_TOKEN", TOKEN)
        .toml_extra("[auth]\nargon2_memory_kib = 1024\nargon2_iterations = 1\n")
        .toml_extra("[db]\nlatency_ms = 0\njitter_ms = 0\nseed_records = 10\n")
        .start()
        .await
        .expect("scalelab up");
    // Through the public API: logins (a POST to auth), writes (a PUT to db, a DELETE to the
    // cache) all work: the gateways send the credential.
    let token = sys.admin_token().await.expect("admin token");
    let (status, _, body) = send(
        sys.client()
            .put(format!("{}/data/key-1", sys.lb_url()))
            .bearer_auth(&token)
            .json(&json!({"value": "through the gateway"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Straight to the db: reads are open, a write needs the credential.
    let db = sys.url("db", 1);
    let (status, _, body) = send(sys.client().get(format!("{db}/db/key-1"))).await;
    assert_eq!(
        (status, &body["value"]),
        (200, &json!("through the gateway"))
    );
    let put = || {
        sys.client()
            .put(format!("{db}/db/key-1"))
            .json(&json!({"value": "forged"}))
    };
    let (status, _, body) = send(put()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("service_token_required"))
    );
    let (status, _, _) = send(put().header("x-service-token", "wrong")).await;
    assert_eq!(status, 401);
    let cache = sys.url("cache", 1);
    let (status, _, _) = send(sys.client().post(format!("{cache}/cache/flush"))).await;
    assert_eq!(status, 401, "a flush needs it too");
    let (status, _, body) = send(put().header("x-service-token", TOKEN)).await;
    assert_eq!(status, 200, "{body}");
}

#[test]
fn an_internal_role_beyond_loopback_refuses_to_start_without_the_credential() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scalelab"))
        .args([
            "serve",
            "db",
            "--host",
            "0.0.0.0",
            "--port",
            "0",
            "--data-dir",
        ])
        .arg(dir.path())
        .env_remove("SCALELAB_SERVICE_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("set SCALELAB_SERVICE_TOKEN"), "{err}");
}
