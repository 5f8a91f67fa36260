//! Rate limits: the login limit per client IP, per-route limits per user, and the global Redis
//! limit shared by two gateways.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::http::{Method, StatusCode, header};

use super::*;
use crate::{LimiterBackend, Rule};

fn login(peer: &str, forwarded_for: Option<&str>) -> Request<Body> {
    let mut r = req(Method::POST, "/login")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(r#"{"username":"alice","password":"wrong"}"#))
        .unwrap();
    if let Some(f) = forwarded_for {
        r.headers_mut()
            .insert("x-forwarded-for", f.parse().unwrap());
    }
    from_peer(r, peer)
}

#[tokio::test]
async fn the_sixth_login_in_a_minute_from_one_ip_is_refused() {
    let h = Harness::start().await;
    let app = h.app().await;
    for i in 0..5 {
        let a = send(&app, login("198.51.100.1:5555", None)).await;
        assert_eq!(
            a.status,
            StatusCode::UNAUTHORIZED,
            "attempt {i}: {}",
            a.json
        );
        assert_eq!(a.header("ratelimit-limit"), "5");
        assert_eq!(a.header("ratelimit-remaining"), (4 - i).to_string());
    }
    let denied = send(&app, login("198.51.100.1:6666", None)).await;
    assert_eq!(
        (denied.status, denied.error()),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
    );
    let retry: u64 = denied.header("retry-after").parse().unwrap();
    assert!((1..=12).contains(&retry), "Retry-After {retry}");
    assert_eq!(denied.header("ratelimit-limit"), "5");
    assert_eq!(denied.header("ratelimit-remaining"), "0");
    assert!(denied.header("ratelimit-reset").parse::<u64>().unwrap() >= 48);
    // /auth/login shares the budget.
    assert_eq!(
        send(&app, login_at("/auth/login", "198.51.100.1:1"))
            .await
            .status,
        StatusCode::TOO_MANY_REQUESTS
    );

    // Another client IP has its own budget.
    assert_eq!(
        send(&app, login("198.51.100.2:5555", None)).await.status,
        StatusCode::UNAUTHORIZED
    );

    // Behind the trusted balancer the client is the last X-Forwarded-For entry...
    for _ in 0..5 {
        let a = send(&app, login("127.0.0.1:4000", Some("203.0.113.9"))).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    }
    let a = send(&app, login("127.0.0.1:4000", Some("203.0.113.9"))).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    let a = send(&app, login("127.0.0.1:4000", Some("203.0.113.10"))).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    // ...but an untrusted peer cannot pick its identity with the header.
    let a = send(&app, login("198.51.100.1:5555", Some("203.0.113.77"))).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
}

fn login_at(path: &str, peer: &str) -> Request<Body> {
    let r = req(Method::POST, path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(r#"{"username":"alice","password":"wrong"}"#))
        .unwrap();
    from_peer(r, peer)
}

fn process_limit(per_minute: u32) -> BTreeMap<String, Rule> {
    BTreeMap::from([(
        "/process".to_string(),
        Rule {
            per_minute,
            burst: None,
        },
    )])
}

#[tokio::test]
async fn route_limits_are_per_user() {
    let mut h = Harness::start().await;
    h.config.rate_limit.routes = process_limit(2);
    let app = h.app().await;
    let alice = h.auth.token("alice", &["user"]);
    let bob = h.auth.token("bob", &["user"]);
    let call = |t: &str| from_peer(get_with_token("/process", t), "198.51.100.1:1");
    assert_eq!(send(&app, call(&alice)).await.status, StatusCode::OK);
    let second = send(&app, call(&alice)).await;
    assert_eq!(second.header("ratelimit-remaining"), "0");
    let third = send(&app, call(&alice)).await;
    assert_eq!(third.status, StatusCode::TOO_MANY_REQUESTS);
    third.header("retry-after");
    // Same IP, another user: its own budget.
    assert_eq!(send(&app, call(&bob)).await.status, StatusCode::OK);
    // Unlimited routes carry no RateLimit headers.
    let data = send(&app, call(&alice)).await;
    assert!(data.headers.get("ratelimit-limit").is_some());
    let data = send(
        &app,
        from_peer(get_with_token("/data", &alice), "198.51.100.1:1"),
    )
    .await;
    assert!(data.headers.get("ratelimit-limit").is_none());
}

#[tokio::test]
async fn local_limits_are_per_instance() {
    let mut h = Harness::start().await;
    h.config.rate_limit.routes = process_limit(3);
    let one = h.app().await;
    let two = router(state_with(h.config.clone(), "gateway-2").await);
    let token = h.user();
    let admitted = admitted_by(&[&one, &two], &token, 10).await;
    assert_eq!(admitted, 6, "two local limiters admit twice the limit");
}

async fn admitted_by(apps: &[&Router], token: &str, rounds: usize) -> usize {
    let mut admitted = 0;
    for _ in 0..rounds {
        for app in apps {
            let a = send(
                app,
                from_peer(get_with_token("/process", token), "198.51.100.1:1"),
            )
            .await;
            match a.status {
                StatusCode::OK => admitted += 1,
                StatusCode::TOO_MANY_REQUESTS => {}
                other => panic!("unexpected {other}: {}", a.json),
            }
        }
    }
    admitted
}

#[tokio::test]
async fn redis_limits_are_global() {
    let Some(prefix) = common::testing::fresh_redis_prefix().await else {
        return;
    };
    let mut h = Harness::start().await;
    h.config.rate_limit.backend = LimiterBackend::Redis;
    h.config.redis_url = Some(common::testing::redis_url());
    h.config.redis_prefix = prefix;
    h.config.rate_limit.routes = process_limit(3);
    let one = h.app().await;
    let two = router(state_with(h.config.clone(), "gateway-2").await);
    let token = h.user();
    let admitted = admitted_by(&[&one, &two], &token, 10).await;
    assert_eq!(
        admitted, 3,
        "two gateways sharing Redis admit the limit together"
    );
    // The denial carries the headers too.
    let a = send(
        &two,
        from_peer(get_with_token("/process", &token), "198.51.100.1:1"),
    )
    .await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(a.header("ratelimit-limit"), "3");
    assert!(a.header("retry-after").parse::<u64>().unwrap() >= 1);
}

/// The fallback counter's value in the process-wide recorder.
fn fallbacks() -> u64 {
    common::metrics::handle()
        .render()
        .lines()
        .find_map(|l| l.strip_prefix("scalelab_gateway_rate_limit_fallback_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[tokio::test]
async fn with_redis_unreachable_each_gateway_limits_locally_and_never_fails() {
    let mut h = Harness::start().await;
    h.config.rate_limit.backend = LimiterBackend::Redis;
    // A port nothing listens on: every Redis call fails at once.
    h.config.redis_url = Some(
        super::fakes::dead_url()
            .await
            .replace("http://", "redis://"),
    );
    h.config.rate_limit.routes = process_limit(3);
    let one = h.app().await;
    let two = router(state_with(h.config.clone(), "gateway-2").await);
    let token = h.user();
    let before = fallbacks();
    // `admitted_by` fails on anything but 200 and 429: no 5xx while Redis is down.
    let admitted = admitted_by(&[&one, &two], &token, 10).await;
    assert_eq!(
        admitted, 6,
        "each gateway admits its own burst of 3, then refuses"
    );
    // Every one of the 20 checks fell back (this is the only test whose Redis is unreachable).
    assert_eq!(fallbacks() - before, 20);
}
