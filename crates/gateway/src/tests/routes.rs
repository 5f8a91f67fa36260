//! Process, login, register, guest tokens, admin routes, readiness, bad input.

use axum::body::Body;
use axum::http::{Method, StatusCode, header};
use serde_json::json;

use super::fakes::{self, Auth};
use super::*;

fn post_json(uri: &str, body: &str) -> Request<Body> {
    req(Method::POST, uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn with_bearer(mut r: Request<Body>, token: &str) -> Request<Body> {
    r.headers_mut().insert(
        header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    r
}

#[tokio::test]
async fn process_alternates_services_and_names_the_gateway() {
    let h = Harness::start().await;
    let app = h.app().await;
    let token = h.user();
    let mut ids = Vec::new();
    for _ in 0..4 {
        let a = send(&app, get_with_token("/process", &token)).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.json);
        assert_eq!(a.json["message"], "Business logic executed");
        assert_eq!(a.json["gateway_id"], "gateway-1");
        assert!(a.json["processing_ms"].is_number());
        ids.push(a.json["service_id"].as_str().unwrap().to_string());
    }
    assert_ne!(ids[0], ids[1]);
    assert_eq!(ids[0], ids[2]);
    assert_eq!(ids[1], ids[3]);
}

#[tokio::test]
async fn process_survives_a_dead_service_and_reports_an_empty_pool() {
    let mut h = Harness::start().await;
    let alive = fakes::service("service-c").await;
    h.config.service_urls = vec![fakes::dead_url().await, alive.url.clone()];
    h.keep(alive);
    let app = h.app().await;
    let token = h.user();
    for _ in 0..3 {
        let a = send(&app, get_with_token("/process", &token)).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.json);
        assert_eq!(a.json["service_id"], "service-c");
    }
    h.config.service_urls = vec![fakes::dead_url().await];
    let app = h.app().await;
    let a = send(&app, get_with_token("/process", &token)).await;
    assert!(
        a.status == StatusCode::BAD_GATEWAY || a.status == StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        a.json
    );
    assert!(["backend_unreachable", "no_healthy_backend"].contains(&a.error()));
}

#[tokio::test]
async fn login_forwards_to_auth_and_passes_its_401() {
    let h = Harness::start().await;
    let app = h.app().await;
    for path in ["/login", "/auth/login"] {
        let ok = send(
            &app,
            post_json(path, r#"{"username":"alice","password":"correct-horse"}"#),
        )
        .await;
        assert_eq!(ok.status, StatusCode::OK, "{}", ok.json);
        assert_eq!(ok.json["token_type"], "Bearer");
        assert_eq!(ok.json["expires_in"], 600);
        // The token works.
        let token = ok.json["token"].as_str().unwrap();
        assert_eq!(
            send(&app, get_with_token("/process", token)).await.status,
            StatusCode::OK
        );
    }
    let bad = send(
        &app,
        post_json("/login", r#"{"username":"alice","password":"wrong"}"#),
    )
    .await;
    assert_eq!(
        (bad.status, bad.error()),
        (StatusCode::UNAUTHORIZED, "invalid_credentials")
    );
}

#[tokio::test]
async fn login_reaches_the_live_auth_instance_when_one_is_down() {
    let mut h = Harness::start().await;
    let live = h.config.auth_urls[0].clone();
    h.config.auth_urls = vec![fakes::dead_url().await, live];
    let app = h.app().await;
    for _ in 0..3 {
        let ok = send(
            &app,
            post_json(
                "/login",
                r#"{"username":"alice","password":"correct-horse"}"#,
            ),
        )
        .await;
        assert_eq!(ok.status, StatusCode::OK, "{}", ok.json);
    }
}

#[tokio::test]
async fn register_creates_users_and_only_admins_create_admins() {
    let h = Harness::start().await;
    let app = h.app().await;
    let body = r#"{"username":"bob","password":"long-enough-password"}"#;
    let a = send(&app, post_json("/register", body)).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.json);
    assert_eq!(a.json["roles"], json!(["user"]));

    let admin_body = r#"{"username":"eve","password":"long-enough-password","role":"admin"}"#;
    let anonymous = send(&app, post_json("/auth/register", admin_body)).await;
    assert_eq!(
        (anonymous.status, anonymous.error()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    let user = send(
        &app,
        with_bearer(post_json("/register", admin_body), &h.user()),
    )
    .await;
    assert_eq!(
        (user.status, user.error()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    assert!(user.json["message"].as_str().unwrap().contains("admin"));
    // Nothing reached auth for the refused ones.
    assert_eq!(h.auth.registrations.lock().unwrap().len(), 1);
    assert_eq!(h.auth.registrations.lock().unwrap()[0].get("role"), None);

    let admin = send(
        &app,
        with_bearer(post_json("/register", admin_body), &h.admin()),
    )
    .await;
    assert_eq!(admin.status, StatusCode::CREATED, "{}", admin.json);
    assert_eq!(admin.json["roles"], json!(["admin"]));
    assert_eq!(h.auth.registrations.lock().unwrap()[1]["role"], "admin");
}

#[tokio::test]
async fn guest_tokens_only_when_turned_on() {
    let mut h = Harness::start().await;
    let off = h.app().await;
    let a = send(
        &off,
        req(Method::GET, "/token").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!((a.status, a.error()), (StatusCode::NOT_FOUND, "not_found"));

    h.config.auth.anonymous_tokens = true;
    let on = h.app().await;
    let a = send(&on, req(Method::GET, "/token").body(Body::empty()).unwrap()).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    let guest = a.json["token"].as_str().unwrap();
    assert_eq!(
        send(&on, get_with_token("/data", guest)).await.status,
        StatusCode::OK
    );

    // The lab's call: POST /token naming a user gives a guest token carrying that name.
    let named = send(
        &on,
        req(Method::POST, "/token")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(r#"{"username":"test_user"}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(named.status, StatusCode::OK, "{}", named.json);
    let token = named.json["token"].as_str().unwrap();
    let payload = token.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        (claims["username"].clone(), claims["roles"].clone()),
        (json!("test_user"), json!(["guest"]))
    );
    // `null` is no body; an array is not `{"username": name}` (serde would read it as the
    // fields in order: found by the contract's fuzzer on the report routes, which share this).
    for (body, status) in [
        ("null", StatusCode::OK),
        (r#"["test_user"]"#, StatusCode::BAD_REQUEST),
        ("7", StatusCode::BAD_REQUEST),
    ] {
        let a = send(
            &on,
            req(Method::POST, "/token")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body))
                .unwrap(),
        )
        .await;
        assert_eq!(a.status, status, "{body}: {}", a.json);
    }
    let refused = send(
        &off,
        req(Method::POST, "/token").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(
        (refused.status, refused.error()),
        (StatusCode::NOT_FOUND, "not_found")
    );
}

#[tokio::test]
async fn admin_routes_refuse_users() {
    let h = Harness::start().await;
    let app = h.app().await;
    let stats = send(&app, get_with_token("/cache/stats", &h.user())).await;
    assert_eq!(
        (stats.status, stats.error()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    assert!(
        stats.json["message"]
            .as_str()
            .unwrap()
            .contains("admin role")
    );
    let flush = send(
        &app,
        with_bearer(
            req(Method::POST, "/cache/flush")
                .body(Body::empty())
                .unwrap(),
            &h.user(),
        ),
    )
    .await;
    assert_eq!(
        (flush.status, flush.error()),
        (StatusCode::FORBIDDEN, "forbidden")
    );

    send(&app, get_with_token("/data", &h.user())).await;
    let stats = send(&app, get_with_token("/cache/stats", &h.admin())).await;
    assert_eq!(stats.status, StatusCode::OK, "{}", stats.json);
    assert_eq!(
        (stats.json["entries"].clone(), stats.json["misses"].clone()),
        (json!(1), json!(1))
    );
    let flush = send(
        &app,
        with_bearer(
            req(Method::POST, "/cache/flush")
                .body(Body::empty())
                .unwrap(),
            &h.admin(),
        ),
    )
    .await;
    assert_eq!(flush.status, StatusCode::OK);
    let stats = send(&app, get_with_token("/cache/stats", &h.admin())).await;
    assert_eq!(stats.json["entries"], 0);
}

#[tokio::test]
async fn bad_input_is_answered_in_json() {
    let h = Harness::start().await;
    let app = h.app().await;
    let token = h.user();

    let malformed = send(&app, post_json("/login", r#"{"username": "a""#)).await;
    assert_eq!(
        (malformed.status, malformed.error()),
        (StatusCode::BAD_REQUEST, "malformed_json")
    );
    let wrong_type = send(
        &app,
        post_json("/login", r#"{"username": 5, "password": "x"}"#),
    )
    .await;
    assert_eq!(
        (wrong_type.status, wrong_type.error()),
        (StatusCode::BAD_REQUEST, "invalid_body")
    );
    let missing = send(&app, post_json("/login", r#"{"username": "a"}"#)).await;
    assert_eq!(
        (missing.status, missing.error()),
        (StatusCode::BAD_REQUEST, "invalid_body")
    );
    let big = format!(
        r#"{{"username": "a", "password": "{}"}}"#,
        "x".repeat(70 * 1024)
    );
    let too_big = send(&app, post_json("/login", &big)).await;
    assert_eq!(
        (too_big.status, too_big.error()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
    let no_type = send(
        &app,
        req(Method::POST, "/login").body(Body::from("{}")).unwrap(),
    )
    .await;
    assert_eq!(no_type.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    no_type.error();

    let put_bad = send(&app, with_bearer(post_json("/data/k", "{}"), &token)).await;
    assert_eq!(put_bad.status, StatusCode::METHOD_NOT_ALLOWED);
    let mut r = with_bearer(post_json("/data/k", r#"{"nope": 1}"#), &token);
    *r.method_mut() = Method::PUT;
    let a = send(&app, r).await;
    assert_eq!(
        (a.status, a.error()),
        (StatusCode::BAD_REQUEST, "invalid_body")
    );

    let unknown = send(&app, req(Method::GET, "/nope").body(Body::empty()).unwrap()).await;
    assert_eq!(
        (unknown.status, unknown.error()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    // A wrong method is a 405 even without a token.
    let wrong = send(
        &app,
        req(Method::GET, "/login").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(
        (wrong.status, wrong.error()),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
    let wrong = send(
        &app,
        req(Method::DELETE, "/data").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);

    // Odd keys and queries.
    for (uri, code) in [
        ("/data?key=", "invalid_key"),
        ("/data?refresh=maybe", "invalid_query"),
        (&*format!("/data?key={}", "k".repeat(300)), "invalid_key"),
        // Clients normalise `.` and `..` out of paths, so such keys are refused, not looked up.
        ("/data/%2E%2E", "invalid_key"),
        ("/data/%2e", "invalid_key"),
        ("/data?key=..", "invalid_key"),
    ] {
        let a = send(&app, get_with_token(uri, &token)).await;
        assert_eq!(
            (a.status, a.error()),
            (StatusCode::BAD_REQUEST, code),
            "{uri}"
        );
    }
    // Encoded slashes and dots are just key bytes: an unknown key, not a path trick.
    for uri in [
        "/data/..%2F..%2Fetc",
        "/data?key=..%2Fadmin",
        "/data/%2E%2E%2E",
    ] {
        let a = send(&app, get_with_token(uri, &token)).await;
        assert_eq!(
            (a.status, a.error()),
            (StatusCode::NOT_FOUND, "not_found"),
            "{uri}"
        );
    }
    // A very long header is still a clean 401, not a crash.
    let long = send(
        &app,
        req(Method::GET, "/data")
            .header("x-token", "a".repeat(16 * 1024))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(long.status, StatusCode::UNAUTHORIZED);
    long.error();
}

#[tokio::test]
async fn ready_names_what_is_missing() {
    let mut h = Harness::start().await;
    let db_url = h.config.db_url.clone();
    h.config.auth_urls = vec![fakes::dead_url().await];
    h.config.db_url = fakes::dead_url().await;
    h.config.users_url = fakes::dead_url().await;
    let app = h.app().await;
    let a = send(
        &app,
        req(Method::GET, "/ready").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(
        (a.status, a.error()),
        (StatusCode::SERVICE_UNAVAILABLE, "not_ready")
    );
    let message = a.json["message"].as_str().unwrap();
    assert!(
        message.contains("auth") && message.contains("db") && message.contains("users"),
        "{message}"
    );
    assert!(!message.contains("cache"), "{message}");
    h.config.users_url = String::new();

    // With everything up, ready once the JWKS is in (fetched in the background).
    let (_auth, auth_server): (Auth, _) = Auth::start().await;
    h.config.auth_urls = vec![auth_server.url.clone()];
    h.config.db_url = db_url;
    h.keep(auth_server);
    let state = h.state().await;
    let app = router(state.clone());
    wait_until("the JWKS loaded", || state.inner.verifier.is_loaded()).await;
    let a = send(
        &app,
        req(Method::GET, "/ready").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!(a.json["status"], "ready");
}

#[tokio::test]
async fn the_gateway_starts_with_nothing_up_and_loads_keys_when_auth_arrives() {
    // Reserve a port for auth, start the gateway against it while nothing listens there.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mut h = Harness::start().await;
    h.config.auth_urls = vec![format!("http://{addr}")];
    h.config.auth.required = true;
    let state = h.state().await;
    assert!(!state.inner.verifier.is_loaded());
    // The first fetch fails and takes the only auth instance out of the pool.
    let backend = state.inner.auth_pool.backends()[0].clone();
    wait_until("the first JWKS fetch failed", || !backend.is_healthy()).await;
    // Auth comes up on that port; the loader retries (and the pool's health checks bring the
    // instance back) until the keys are in.
    let (auth, _server) = start_auth_on(addr).await;
    wait_until("the JWKS loaded after auth came up", || {
        state.inner.verifier.is_loaded()
    })
    .await;
    let app = router(state);
    let a = send(
        &app,
        get_with_token("/data", &auth.token("alice", &["user"])),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
}

async fn start_auth_on(addr: std::net::SocketAddr) -> (Auth, fakes::Server) {
    let (auth, server) = Auth::start_on(tokio::net::TcpListener::bind(addr).await.unwrap()).await;
    (auth, server)
}

#[tokio::test]
async fn serve_answers_on_a_socket_and_stops() {
    let h = Harness::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(crate::serve(
        listener,
        h.config.clone(),
        common::Instance::new("gateway", "gateway-9"),
        async move {
            let _ = stopped.await;
        },
    ));
    let client = reqwest_free_get(addr, "/health").await;
    assert!(client.contains("gateway-9"), "{client}");
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

/// A raw HTTP/1.1 GET, to keep an HTTP client out of the dev-dependencies.
async fn reqwest_free_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}
