//! Router tests through `router(state).oneshot(..)`, no socket; the concurrency tests run under
//! paused time, so they check ordering and measured durations without waiting for real.

use std::time::Duration;

use axum::http::{HeaderMap, Method, StatusCode};
use common::testing;
use serde_json::{Value, json};

use api::wire::service::ProcessResponse;

use crate::{AppState, Config, Error, router};

async fn state(config: Config) -> AppState {
    AppState::new(config, common::Instance::new("service", "service-2"))
        .await
        .expect("valid config")
}

/// Only the simulated wait: CPU work runs on the blocking pool, which paused time cannot see.
fn waiting_only(work_ms: u64, max_concurrency: usize) -> Config {
    Config {
        work_ms,
        cpu_iterations: 0,
        max_concurrency,
        ..Config::default()
    }
}

async fn send(state: AppState, method: Method, uri: &str) -> (StatusCode, HeaderMap, Value) {
    let answer = testing::call(&router(state), testing::request(method, uri, None)).await;
    assert!(!answer.json.is_null(), "every answer is JSON: {answer:?}");
    (answer.status, answer.headers, answer.json)
}

async fn process(state: AppState) -> ProcessResponse {
    let (status, _, body) = send(state, Method::GET, "/process").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    serde_json::from_value(body).expect("ProcessResponse")
}

#[tokio::test]
async fn process_answers_the_lab_shape() {
    // The defaults, CPU work included, on the real clock.
    let s = state(Config::default()).await;
    let (status, headers, body) = send(s, Method::GET, "/process").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-served-by"], "service-2");
    let answer: ProcessResponse = serde_json::from_value(body).expect("ProcessResponse");
    assert_eq!(answer.message, "Business logic executed");
    assert_eq!(answer.service_id, "service-2");
    assert!(answer.processing_ms >= 20.0, "work_ms is spent: {answer:?}");
}

#[tokio::test(start_paused = true)]
async fn processing_ms_measures_the_work() {
    let answer = process(state(waiting_only(40, 4)).await).await;
    assert!((40.0..45.0).contains(&answer.processing_ms), "{answer:?}");
}

/// Two requests at once; their `processing_ms`, smallest first.
async fn two_at_once(s: AppState) -> [f64; 2] {
    let a = tokio::spawn(process(s.clone()));
    let b = tokio::spawn(process(s));
    let mut times = [
        a.await.expect("task").processing_ms,
        b.await.expect("task").processing_ms,
    ];
    times.sort_by(f64::total_cmp);
    times
}

#[tokio::test(start_paused = true)]
async fn with_one_slot_a_second_request_waits_for_the_first() {
    let [first, second] = two_at_once(state(waiting_only(100, 1)).await).await;
    assert!((100.0..105.0).contains(&first), "{first}");
    assert!(
        (200.0..205.0).contains(&second),
        "queued behind the first: {second}"
    );
}

#[tokio::test(start_paused = true)]
async fn with_two_slots_both_run_at_once() {
    let [first, second] = two_at_once(state(waiting_only(100, 2)).await).await;
    assert!((100.0..105.0).contains(&first), "{first}");
    assert!((100.0..105.0).contains(&second), "{second}");
}

#[tokio::test(start_paused = true)]
async fn a_request_starts_when_a_slot_frees() {
    let s = state(waiting_only(10, 1)).await;
    let held = s.permits.clone().acquire_owned().await.expect("permit");
    let request = tokio::spawn(process(s.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!request.is_finished(), "must wait while every slot is busy");
    drop(held);
    let answer = request.await.expect("task");
    assert!(
        (1010.0..1015.0).contains(&answer.processing_ms),
        "waiting counts in processing_ms: {answer:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn queue_timeout_is_503_overloaded_with_retry_after() {
    let s = state(Config {
        queue_timeout_ms: 250,
        ..waiting_only(10, 1)
    })
    .await;
    let _held = s.permits.clone().acquire_owned().await.expect("permit");
    let start = tokio::time::Instant::now();
    let (status, headers, body) = send(s, Method::GET, "/process").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"], "overloaded");
    assert_eq!(headers["retry-after"], "1");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_millis(260),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_client_that_gives_up_frees_its_slot() {
    let s = state(waiting_only(60_000, 1)).await;
    let abandoned = tokio::spawn(process(s.clone()));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        s.permits.available_permits(),
        0,
        "the first request holds the slot"
    );
    abandoned.abort();
    let _ = abandoned.await;
    assert_eq!(s.permits.available_permits(), 1);
}

#[tokio::test]
async fn ready_wrong_method_and_unknown_route_are_json() {
    let s = state(Config::default()).await;
    let (status, _, body) = send(s.clone(), Method::GET, "/ready").await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ready"})));
    let (status, _, body) = send(s.clone(), Method::POST, "/process").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["error"], "method_not_allowed");
    let (status, _, body) = send(s, Method::GET, "/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "not_found");
}

#[tokio::test]
async fn zero_slots_are_refused() {
    let result = AppState::new(
        Config {
            max_concurrency: 0,
            ..Config::default()
        },
        common::Instance::new("service", "s"),
    )
    .await;
    assert!(matches!(result, Err(Error::Config(_))));
}

#[test]
fn config_reads_partial_sections_and_refuses_unknown_fields() {
    let c: Config = serde_json::from_value(json!({"work_ms": 5})).expect("partial");
    assert_eq!(
        c,
        Config {
            work_ms: 5,
            ..Config::default()
        }
    );
    assert!(serde_json::from_value::<Config>(json!({"work": 5})).is_err());
}

#[tokio::test(start_paused = true)]
async fn knobs_make_one_instance_slow_and_failing_and_heal_it() {
    let s = state(waiting_only(5, 4)).await;
    let (status, _, body) = send(s.clone(), Method::GET, "/knobs").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"work_ms": 5, "failure_rate": 0.0}));

    // Every request fails, after a longer wait.
    let change = json!({"work_ms": 200, "failure_rate": 1.0});
    let answer = testing::call(
        &router(s.clone()),
        testing::request(Method::PUT, "/knobs", Some(&change.to_string())),
    )
    .await;
    assert_eq!((answer.status, answer.json), (StatusCode::OK, change));
    for _ in 0..3 {
        let (status, _, body) = send(s.clone(), Method::GET, "/process").await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["error"], "injected_failure");
    }

    // Healed: only the rate changes, the wait stays.
    let answer = testing::call(
        &router(s.clone()),
        testing::request(
            Method::PUT,
            "/knobs",
            Some(&json!({"failure_rate": 0.0}).to_string()),
        ),
    )
    .await;
    assert_eq!(answer.json, json!({"work_ms": 200, "failure_rate": 0.0}));
    let answer = process(s.clone()).await;
    assert!(answer.processing_ms >= 200.0, "{answer:?}");
}

#[tokio::test]
async fn knobs_out_of_range_or_unknown_are_refused_in_the_error_shape() {
    let s = state(waiting_only(0, 1)).await;
    for (body, code) in [
        (json!({"failure_rate": 1.5}), "invalid_knobs"),
        (json!({"work_ms": 700_000}), "invalid_knobs"),
        (json!({"delay": 5}), "invalid_body"),
    ] {
        let answer = testing::call(
            &router(s.clone()),
            testing::request(Method::PUT, "/knobs", Some(&body.to_string())),
        )
        .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}");
        assert!(answer.json["error"].is_string(), "{body}: {}", answer.json);
        if code == "invalid_knobs" {
            assert_eq!(answer.json["error"], code, "{body}");
        }
    }
    // Nothing changed.
    let (_, _, body) = send(s, Method::GET, "/knobs").await;
    assert_eq!(body, json!({"work_ms": 0, "failure_rate": 0.0}));
}
