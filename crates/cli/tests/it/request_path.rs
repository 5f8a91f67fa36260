//! End to end: the real `scalelab up` on free ports, driven over HTTP through the balancer.
//!
//! These tests live in the cli crate (not in `crates/e2e`) because only here does cargo build the
//! `scalelab` binary for the tests and tell them where it is (`CARGO_BIN_EXE_scalelab`); the harness
//! itself is `crates/e2e`.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use e2e::{Running, Topology};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use nix::sys::signal::Signal;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use crate::support::read;

fn topology() -> Topology {
    Topology::new()
        .program(env!("CARGO_BIN_EXE_scalelab"))
        // Low argon2 cost keeps the many logins of these tests quick; the shipped cost is OWASP's.
        .toml_extra("[auth]\nargon2_memory_kib = 1024\nargon2_iterations = 1\n")
        .toml_extra("[db]\nlatency_ms = 20\njitter_ms = 0\nseed_records = 10\n")
        .toml_extra(
            "[lb.pool.health]\ninterval_ms = 100\n[gateway.services.health]\ninterval_ms = 100\n",
        )
}

/// Asserts the JSON error shape and the status, and returns the error code.
fn error_code(status: StatusCode, body: &Value, want: u16) -> String {
    assert_eq!(status.as_u16(), want, "{body}");
    assert!(body["message"].is_string(), "no message in {body}");
    body["error"].as_str().expect("an error code").to_string()
}

async fn login(sys: &Running, user: &str, password: &str) -> (StatusCode, HeaderMap, Value) {
    read(
        sys.client()
            .post(format!("{}/login", sys.lb_url()))
            .json(&json!({"username": user, "password": password}))
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn get(sys: &Running, path: &str, token: &str) -> (StatusCode, HeaderMap, Value) {
    read(
        sys.client()
            .get(format!("{}{path}", sys.lb_url()))
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_flow_through_the_balancer() {
    let sys = topology().start().await.expect("scalelab up");
    let lb = sys.lb_url();
    let http = sys.client().clone();

    // Login as the bootstrap admin.
    let (status, _, body) = login(&sys, "admin", sys.admin_password()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert!(body["expires_in"].as_u64().unwrap() > 0);
    let token = body["token"].as_str().unwrap().to_string();

    // Cache-aside: a miss, then hits on both gateways, which share the cache service.
    let (status, h, body) = get(&sys, "/data", &token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(h["x-cache"], "MISS");
    assert_eq!(body["cached"], false);
    assert_eq!(body["key"], "my_data");
    let mut gateways = HashSet::new();
    gateways.insert(h["x-served-by"].to_str().unwrap().to_string());
    for _ in 0..4 {
        let (status, h, body) = get(&sys, "/data", &token).await;
        assert_eq!(status, 200);
        assert_eq!(h["x-cache"], "HIT", "{body}");
        assert_eq!(body["cached"], true);
        assert!(h.contains_key("x-request-id"));
        assert_eq!(body["gateway_id"], h["x-served-by"].to_str().unwrap());
        gateways.insert(h["x-served-by"].to_str().unwrap().to_string());
    }
    assert_eq!(
        gateways,
        HashSet::from(["gateway-1".to_string(), "gateway-2".to_string()])
    );

    // The same token in the lab's other two headers.
    for (name, value) in [("authorization", token.clone()), ("x-token", token.clone())] {
        let r = http
            .get(format!("{lb}/data"))
            .header(name, value)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    // /process spreads over all three services.
    let mut services = HashSet::new();
    for _ in 0..9 {
        let (status, _, body) = get(&sys, "/process", &token).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["message"], "Business logic executed");
        assert!(body["gateway_id"].as_str().unwrap().starts_with("gateway-"));
        services.insert(body["service_id"].as_str().unwrap().to_string());
    }
    assert_eq!(services.len(), 3, "{services:?}");

    // A write invalidates the cached entry.
    let r = http
        .put(format!("{lb}/data/my_data"))
        .bearer_auth(&token)
        .json(&json!({"value": {"v": 2}}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);
    let (_, h, body) = get(&sys, "/data", &token).await;
    assert_eq!(h["x-cache"], "MISS");
    assert_eq!(body["data"], json!({"v": 2}));

    // Register a user; they can read data but not reach admin routes.
    let r = http
        .post(format!("{lb}/register"))
        .json(&json!({"username": "alice", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let (status, _, body) = login(&sys, "alice", "correct horse battery").await;
    assert_eq!(status, 200, "{body}");
    let alice = body["token"].as_str().unwrap().to_string();
    let (status, _, _) = get(&sys, "/data", &alice).await;
    assert_eq!(status, 200);
    let (status, _, body) = get(&sys, "/cache/stats", &alice).await;
    assert_eq!(error_code(status, &body, 403), "forbidden");
    let (status, _, body) = get(&sys, "/cache/stats", &token).await;
    assert_eq!(status, 200, "{body}");
    let r = http
        .post(format!("{lb}/register"))
        .json(&json!({"username": "alice", "password": "another password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);

    // The balancer's stats saw both gateways.
    let (status, _, stats) = read(http.get(format!("{lb}/_lb/stats")).send().await.unwrap()).await;
    assert_eq!(status, 200);
    let backends = stats["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 2);
    assert!(backends.iter().all(|b| b["requests"].as_u64().unwrap() > 0));

    bad_input(&sys, &token).await;
    token_cases(&sys).await;

    // Login flood: each gateway admits 5 a minute per client IP, so at most 10 through the
    // balancer (minus the logins above).
    let mut limited = None;
    for _ in 0..12 {
        let (status, h, body) = login(&sys, "nobody", "wrong-password").await;
        if status == 429 {
            limited = Some((h, body));
            break;
        }
        assert_eq!(error_code(status, &body, 401), "invalid_credentials");
    }
    let (h, body) = limited.expect("a login flood must be limited");
    assert_eq!(body["error"], "rate_limited");
    assert!(h.contains_key("retry-after"), "{h:?}");
    assert!(h.contains_key("ratelimit-limit"), "{h:?}");

    let status = sys.stop().await.unwrap();
    assert!(
        status.success(),
        "up must exit 0 on SIGTERM, got {status:?}"
    );
}

async fn bad_input(sys: &Running, token: &str) {
    let lb = sys.lb_url();
    let http = sys.client();
    for (body, code) in [
        ("{\"username\": \"admin\", ", "malformed_json"),
        ("{\"username\": \"admin\"}", "invalid_body"),
        ("{\"username\": 5, \"password\": true}", "invalid_body"),
    ] {
        let r = http
            .post(format!("{lb}/login"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let (s, _, b) = read(r).await;
        assert_eq!(error_code(s, &b, 400), code, "{body}");
    }
    let huge = format!("{{\"value\": \"{}\"}}", "x".repeat(200_000));
    let r = http
        .put(format!("{lb}/data/big"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    let (s, _, b) = read(r).await;
    assert_eq!(error_code(s, &b, 413), "payload_too_large");
    let (s, _, b) = get(sys, "/no/such/route", token).await;
    assert_eq!(error_code(s, &b, 404), "not_found");
    let r = http
        .delete(format!("{lb}/process"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let (s, _, b) = read(r).await;
    assert_eq!(error_code(s, &b, 405), "method_not_allowed");
    let (s, _, b) = get(sys, "/data?key=no-such-key", token).await;
    assert_eq!(error_code(s, &b, 404), "not_found");
    // Path oddities stay inside the API and get JSON answers.
    for path in [
        "/../../etc/passwd",
        "/data%2F..%2F..%2Fetc",
        "/%2e%2e/%2e%2e/",
        "/data/%00",
    ] {
        let (s, _, b) = get(sys, path, token).await;
        assert!(s.is_client_error() || s.is_success(), "{path}: {s}");
        assert!(b.get("raw").is_none(), "{path}: not JSON: {b}");
    }
    // A header far over any sane size is refused, not crashed on.
    let r = http
        .get(format!("{lb}/data"))
        .header("x-huge", "a".repeat(200_000))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
    // And the system still answers afterwards.
    let (s, _, _) = get(sys, "/data", token).await;
    assert_eq!(s, 200);
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(exp: u64) -> Value {
    json!({"sub": "x", "username": "mallory", "roles": ["admin"], "iat": now(), "exp": exp, "iss": "scalelab-auth"})
}

async fn expect_401(sys: &Running, token: Option<String>, want: &str) {
    let mut req = sys.client().get(format!("{}/data", sys.lb_url()));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let (s, h, b) = read(req.send().await.unwrap()).await;
    assert_eq!(error_code(s, &b, 401), want, "{b}");
    let challenge = h
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    assert!(challenge.starts_with("Bearer"), "{h:?}");
}

async fn token_cases(sys: &Running) {
    expect_401(sys, None, "missing_token").await;
    expect_401(sys, Some("not-a-jwt".into()), "invalid_token").await;

    // The real signing key (from the data directory) makes a well-signed but expired token.
    let pem = std::fs::read(sys.data_dir().join("auth-signing-key.pem")).unwrap();
    let key = EncodingKey::from_ed_pem(&pem).unwrap();
    let jwks: Value = sys
        .client()
        .get(format!("{}/.well-known/jwks.json", sys.url("auth", 1)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kid = jwks["keys"][0]["kid"].as_str().unwrap().to_string();
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.clone());
    let expired = jsonwebtoken::encode(&header, &claims(now() - 3600), &key).unwrap();
    expect_401(sys, Some(expired), "token_expired").await;

    // Signed by another key under the real kid: a bad signature.
    let other = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let other_pem =
        ed25519_dalek::pkcs8::EncodePrivateKey::to_pkcs8_pem(&other, Default::default()).unwrap();
    let other_key = EncodingKey::from_ed_pem(other_pem.as_bytes()).unwrap();
    let forged = jsonwebtoken::encode(&header, &claims(now() + 3600), &other_key).unwrap();
    expect_401(sys, Some(forged), "invalid_token").await;

    // A key id auth does not publish (a deleted key).
    let mut gone = Header::new(Algorithm::EdDSA);
    gone.kid = Some("deleted-key".into());
    let orphan = jsonwebtoken::encode(&gone, &claims(now() + 3600), &other_key).unwrap();
    expect_401(sys, Some(orphan), "invalid_token").await;

    // alg: none, with a valid-looking payload.
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let none = format!(
        "{}.{}.",
        b64.encode(json!({"alg": "none", "typ": "JWT", "kid": kid}).to_string()),
        b64.encode(claims(now() + 3600).to_string())
    );
    expect_401(sys, Some(none), "invalid_token").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_gateway_loses_no_request() {
    let sys = topology().start().await.expect("scalelab up");
    let token = sys.admin_token().await.unwrap();
    let lb = sys.lb_url();
    let http = sys.client().clone();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let served = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (http, lb, token) = (http.clone(), lb.clone(), token.clone());
        let (stop, served) = (stop.clone(), served.clone());
        clients.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match http
                    .get(format!("{lb}/process"))
                    .bearer_auth(&token)
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => {
                        served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Ok(r) => failures.push(format!(
                        "{} {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    )),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            failures
        }));
    }
    // Let traffic flow on both gateways, then kill one mid-stream.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while served.load(std::sync::atomic::Ordering::Relaxed) < 40 {
        assert!(tokio::time::Instant::now() < deadline, "no traffic");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let old = sys.kill("gateway-1", Signal::SIGKILL).unwrap();
    let new = sys.wait_restarted("gateway-1", old).await.unwrap();
    assert_ne!(old, new);
    sys.wait_log("[up] gateway-1 exited").await.unwrap();
    // The balancer takes it back: wait until a request is served by the new process.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = http
            .get(format!("{lb}/process"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        if r.headers()["x-served-by"] == "gateway-1" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gateway-1 never came back into rotation"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut failures = Vec::new();
    for c in clients {
        failures.extend(c.await.unwrap());
    }
    assert!(failures.is_empty(), "client requests failed: {failures:?}");
    assert!(sys.stop().await.unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_or_slow_db_gives_502_and_504() {
    // The gateway's db is a closed port: 502.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let sys = topology()
        .counts("gateway", 1)
        .counts("service", 1)
        .counts("auth", 1)
        .toml_extra(&format!("[gateway]\ndb_url = \"{dead}\"\n"))
        .start()
        .await
        .expect("scalelab up");
    let token = sys.admin_token().await.unwrap();
    let (s, _, b) = get(&sys, "/data?key=key-1", &token).await;
    assert_eq!(error_code(s, &b, 502), "db_unavailable");
    drop(sys);

    // A db slower than the gateway's upstream timeout: 504, no hang.
    let sys = topology()
        .counts("gateway", 1)
        .counts("service", 1)
        .counts("auth", 1)
        .toml_extra("[db]\nlatency_ms = 3000\n[gateway]\nupstream_timeout_ms = 300\n")
        .start()
        .await
        .expect("scalelab up");
    let token = sys.admin_token().await.unwrap();
    let (s, _, b) = get(&sys, "/data?key=key-2", &token).await;
    assert_eq!(error_code(s, &b, 504), "db_timeout");
}

#[tokio::test]
async fn up_refuses_a_port_in_use_and_names_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = std::env::temp_dir().join(format!("scalelab-port-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("t.toml");
    std::fs::write(&file, format!("[instances]\ncache = [{port}]\n")).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_scalelab"))
        .args(["up", "--config"])
        .arg(&file)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("port {port}")) && err.contains("cache"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
