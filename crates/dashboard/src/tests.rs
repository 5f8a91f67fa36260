//! Router tests: the page and its assets, the JSON a page without SSE polls, and the controls'
//! refusals (bad bodies, no supervisor) in the one error shape. No socket, no scrape loop.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tower::ServiceExt;

use super::*;

fn state(control_url: Option<&str>) -> AppState {
    let (_tx, closing) = tokio::sync::watch::channel(false);
    AppState {
        hub: hub::Hub::new(10),
        control_url: control_url.map(str::to_string),
        admin: api::admin::AdminCheck::default(),
        http: reqwest::Client::new(),
        instance: common::Instance::new("dashboard", "dashboard-1"),
        scrape_ms: 1000,
        closing,
    }
}

async fn call(state: AppState, req: Request<Body>) -> (StatusCode, String, serde_json::Value) {
    let resp = router(state).oneshot(req).await.unwrap();
    let status = resp.status();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, ct, json)
}

fn post(path: &str, body: &str) -> Request<Body> {
    Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_from_the_binary() {
    for (path, kind) in [
        ("/", "text/html"),
        ("/app.js", "text/javascript"),
        ("/style.css", "text/css"),
    ] {
        let (status, ct, _) =
            call(state(None), Request::get(path).body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(ct.starts_with(kind), "{path}: {ct}");
    }
}

#[tokio::test]
async fn before_the_first_round_the_frame_is_not_ready_and_the_history_is_empty() {
    let (status, _, body) = call(
        state(None),
        Request::get("/api/frame").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"], "not_ready");
    let (status, _, body) = call(
        state(None),
        Request::get("/api/history").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["points"], serde_json::json!([]));
    let (status, _, body) = call(
        state(None),
        Request::get("/api/events?after=soon")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_query");
}

#[tokio::test]
async fn controls_refuse_bad_bodies_and_need_a_supervisor() {
    let (_, _, info) = call(
        state(None),
        Request::get("/api/info").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(info["controls"], false);
    // Without a supervisor nothing can be changed from here.
    let (status, _, body) = call(state(None), post("/api/scale", r#"{"service": 2}"#)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"], "no_controls");
    // Bad bodies are refused before any credential check.
    let with = state(Some("http://127.0.0.1:9"));
    let (status, _, body) = call(with.clone(), post("/api/scale", r#"{"service": "two"}"#)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_body");
    let (status, _, body) = call(with.clone(), post("/api/load", r#"{"route": "data"}"#)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_route"))
    );
    let (status, _, body) = call(
        with.clone(),
        post("/api/load", r#"{"route": "/data", "seconds": 0}"#),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_load"))
    );
    let (status, _, body) = call(with.clone(), post("/api/session", "{not json")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_body");
    // An unknown action, and a credential check with no auth instance known yet.
    let (status, _, _) = call(with.clone(), post("/api/instances/service-1/reboot", "{}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, body) = call(with, post("/api/instances/service-1/kill", "{}")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"], "auth_unavailable");
}
