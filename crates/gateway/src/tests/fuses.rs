//! The fuses at the peer seam: a peer's breaker opens on failed calls (5xx, no answer), never on
//! 4xx answers; while open, calls to that peer fail at once with `503 circuit_open` and
//! `Retry-After`, and calls to the other peers go on; it closes when the peer answers again.

use axum::http::StatusCode;
use balance::breaker::State;
use balance::{Breaker, BreakerConfig, Profile};

use super::{Harness, get_with_token, send};
use crate::{AppState, router};

fn breaker(state: &AppState, peer: &str) -> std::sync::Arc<Breaker> {
    state
        .inner
        .breakers
        .iter()
        .find(|b| b.peer() == peer)
        .cloned()
        .unwrap_or_else(|| panic!("no breaker for {peer}"))
}

/// A db read that always reaches the db (the cache is skipped).
const FRESH_READ: &str = "/data?key=my_data&refresh=true";

#[tokio::test]
async fn the_db_breaker_opens_fails_fast_and_closes_when_the_db_answers_again() {
    let mut h = Harness::start().await;
    h.config.breaker = BreakerConfig {
        open_ms: 200,
        ..BreakerConfig::of(Profile::Demo)
    };
    let state = h.state().await;
    let app = router(state.clone());
    let token = h.user();
    let db = breaker(&state, "db");
    let service = breaker(&state, "service");
    assert_eq!(
        send(&app, get_with_token(FRESH_READ, &token)).await.status,
        StatusCode::OK
    );

    *h.db.fail_with.lock().unwrap() = Some(StatusCode::INTERNAL_SERVER_ERROR);
    let mut failed = 0;
    let open = loop {
        let a = send(&app, get_with_token(FRESH_READ, &token)).await;
        if a.status == StatusCode::BAD_GATEWAY {
            assert_eq!(a.error(), "db_error");
            failed += 1;
            assert!(failed < 100, "the breaker never opened");
            continue;
        }
        break a;
    };
    // The demo breaker judges 10 calls at least: 1 good, then failures until half failed.
    assert!(failed >= 9, "{failed}");
    assert_eq!(open.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(open.error(), "circuit_open");
    assert_eq!(open.headers["retry-after"], "1");
    assert!(open.json["message"].as_str().unwrap().contains("db"));
    assert_eq!(db.state(), State::Open);

    // Failing fast: no call reaches the db while it is open.
    let gets = h.db.gets();
    let refused_before = db.stats(0).rejected;
    for _ in 0..5 {
        let a = send(&app, get_with_token(FRESH_READ, &token)).await;
        if db.state() == State::Open && a.status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(a.error(), "circuit_open");
        }
    }
    let refused = db.stats(0).rejected - refused_before;
    assert_eq!(
        h.db.gets() - gets,
        5 - refused as usize,
        "only trials reach the db"
    );
    // The other peers are not affected.
    let a = send(&app, get_with_token("/process", &token)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!(service.state(), State::Closed);

    // The db answers again: after the open wait, the trial calls succeed and it closes.
    *h.db.fail_with.lock().unwrap() = None;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while db.state() != State::Closed {
        let a = send(&app, get_with_token(FRESH_READ, &token)).await;
        assert!(
            a.status == StatusCode::OK || a.error() == "circuit_open",
            "{}",
            a.json
        );
        assert!(std::time::Instant::now() < deadline, "never closed");
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    for _ in 0..5 {
        let a = send(&app, get_with_token(FRESH_READ, &token)).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    }
    assert_eq!(db.stats(0).opened, 1);
}

#[tokio::test]
async fn answers_the_client_caused_never_open_a_breaker() {
    let h = Harness::start().await;
    let mut config = h.config.clone();
    config.breaker = BreakerConfig::of(Profile::Demo);
    let state = super::state_with(config, "gateway-1").await;
    let app = router(state.clone());
    let token = h.user();
    for i in 0..40 {
        let a = send(&app, get_with_token(&format!("/data?key=nope-{i}"), &token)).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.json);
    }
    let db = breaker(&state, "db");
    assert_eq!(db.state(), State::Closed);
    let stats = db.stats(balance::clock::now_ms());
    assert_eq!((stats.window_failures, stats.opened), (0, 0), "{stats:?}");
    assert!(stats.window_calls >= 40, "{stats:?}");
}
