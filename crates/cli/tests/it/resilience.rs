//! End to end (issue 15): the gateway's fuses on a real `scalelab up`, with services made sick
//! and healed through their knobs (`PUT /knobs`): the `service` breaker opens (`503
//! circuit_open` with `Retry-After`, while `/data` keeps working) and closes again once the
//! services answer; a failing service is ejected from the gateway's pool and comes back healed.
//! Every wait is on an answer or on `/metrics`, never a fixed sleep; the fuses run the `demo`
//! profile (seconds, not minutes).

use std::time::{Duration, Instant};

use e2e::{Running, Topology};
use serde_json::{Value, json};

use crate::support::send;

fn topology() -> Topology {
    Topology::new()
        .program(env!("CARGO_BIN_EXE_scalelab"))
        .toml_extra("[auth]\nargon2_memory_kib = 1024\nargon2_iterations = 1\n")
        .toml_extra("[db]\nlatency_ms = 2\njitter_ms = 0\nseed_records = 10\n")
        .toml_extra("[service]\nwork_ms = 2\ncpu_iterations = 100\n")
        .toml_extra(
            "[gateway.breaker]\nprofile = \"demo\"\n\
             [gateway.services.outlier]\nprofile = \"demo\"\n\
             [gateway.services.health]\ninterval_ms = 100\n",
        )
        .counts("gateway", 1)
}

/// Sets the knobs of every instance of `service` listed in `ids`.
async fn knobs(sys: &Running, ids: &[String], change: Value) {
    for id in ids {
        let (status, _, body) = send(
            sys.client()
                .put(format!("{}/knobs", sys.url_of(id)))
                .json(&change),
        )
        .await;
        assert_eq!(status, 200, "{id}: {body}");
    }
}

async fn process(sys: &Running, token: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    send(
        sys.client()
            .get(format!("{}/process", sys.lb_url()))
            .bearer_auth(token),
    )
    .await
}

/// The gateway's `/metrics` lines for `name` whose labels contain every one of `labels`.
async fn metric(sys: &Running, name: &str, labels: &[&str]) -> Vec<f64> {
    let text = sys
        .client()
        .get(format!("{}/metrics", sys.url("gateway", 1)))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect()
}

/// Calls `/process` until `done` says so with an answer; fails after a minute.
async fn until<F>(
    sys: &Running,
    token: &str,
    what: &str,
    mut done: F,
) -> (u16, reqwest::header::HeaderMap, Value)
where
    F: FnMut(u16, &Value) -> bool,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, headers, body) = process(sys, token).await;
        if done(status, &body) {
            return (status, headers, body);
        }
        assert!(
            Instant::now() < deadline,
            "never {what}: last {status} {body}"
        );
    }
}

#[tokio::test]
async fn the_service_breaker_opens_fails_fast_and_closes_when_the_services_heal() {
    let sys = topology().start().await.expect("up");
    let token = sys.admin_token().await.expect("token");
    let services = sys.ids_of("service");
    let (status, _, _) = process(&sys, &token).await;
    assert_eq!(status, 200);
    assert_eq!(
        metric(&sys, "scalelab_breaker_state", &["peer=\"service\""]).await,
        vec![0.0]
    );

    // Every service fails: the gateway answers 502 until the breaker opens, then 503 at once.
    knobs(&sys, &services, json!({"failure_rate": 1.0})).await;
    let mut failures_before = 0;
    let (status, headers, body) = until(&sys, &token, "circuit_open", |status, body| {
        if status == 502 {
            assert_eq!(body["error"], "service_error", "{body}");
            failures_before += 1;
        }
        body["error"] == "circuit_open"
    })
    .await;
    assert_eq!(status, 503);
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("service")),
        "{body}"
    );
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 1);
    // The demo breaker judges 10 calls at least.
    assert!(
        failures_before >= 9,
        "{failures_before} failures before it opened"
    );
    assert_eq!(
        metric(&sys, "scalelab_breaker_state", &["peer=\"service\""]).await,
        vec![2.0]
    );
    // Only the service's breaker: /data (cache and db) still answers.
    let (status, _, body) = send(
        sys.client()
            .get(format!("{}/data?key=key-1", sys.lb_url()))
            .bearer_auth(&token),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // Healed: after the open wait, the trial calls succeed and it closes.
    knobs(&sys, &services, json!({"failure_rate": 0.0})).await;
    until(&sys, &token, "200 again", |status, _| status == 200).await;
    for _ in 0..10 {
        let (status, _, body) = process(&sys, &token).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(
        metric(&sys, "scalelab_breaker_state", &["peer=\"service\""]).await,
        vec![0.0]
    );
    let opened = metric(
        &sys,
        "scalelab_breaker_transitions_total",
        &["peer=\"service\"", "to=\"open\""],
    )
    .await;
    assert_eq!(opened, vec![1.0]);
    sys.stop().await.expect("stop");
}

#[tokio::test]
async fn a_failing_service_is_ejected_from_the_gateway_pool_and_comes_back_healed() {
    let sys = topology().start().await.expect("up");
    let token = sys.admin_token().await.expect("token");
    let sick = "service-2";
    let port = sys.url_of(sick).rsplit(':').next().unwrap().to_string();
    let port_label = format!(":{port}\"");
    knobs(&sys, &[sick.to_string()], json!({"failure_rate": 1.0})).await;

    // Round robin over 3: every third request fails until the fifth failure in a row ejects it.
    let mut failed = 0;
    until(&sys, &token, "a failure-free run", |status, _| {
        if status != 200 {
            failed += 1;
        }
        failed >= 5
    })
    .await;
    assert_eq!(
        metric(
            &sys,
            "scalelab_pool_backend_ejected",
            &["pool=\"service\"", &port_label]
        )
        .await,
        vec![1.0]
    );
    for _ in 0..30 {
        let (status, _, body) = process(&sys, &token).await;
        assert_eq!(status, 200, "{body}");
        assert_ne!(body["service_id"], sick, "an ejected service gets nothing");
    }

    // Healed: back after its ejection time, and it takes its share again.
    knobs(&sys, &[sick.to_string()], json!({"failure_rate": 0.0})).await;
    until(
        &sys,
        &token,
        "the healed service answering",
        |status, body| {
            assert_eq!(status, 200, "{body}");
            body["service_id"] == sick
        },
    )
    .await;
    assert_eq!(
        metric(
            &sys,
            "scalelab_pool_backend_ejected",
            &["pool=\"service\"", &port_label]
        )
        .await,
        vec![0.0]
    );
    // The breaker never opened: one sick service in three is the pool's business.
    assert_eq!(
        metric(&sys, "scalelab_breaker_state", &["peer=\"service\""]).await,
        vec![0.0]
    );
    sys.stop().await.expect("stop");
}
