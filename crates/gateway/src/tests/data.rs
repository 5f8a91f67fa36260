//! Cache-aside: miss then hit, falsy values, single flight, invalidation, outages.

use axum::body::Body;
use axum::http::{Method, StatusCode, header};
use serde_json::json;

use super::fakes::{self, CacheService};
use super::*;

#[tokio::test]
async fn a_miss_then_a_hit_with_the_header_and_the_flag() {
    let h = Harness::start().await;
    let app = h.app().await;
    let token = h.user();

    let first = send(&app, get_with_token("/data", &token)).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.json);
    assert_eq!(
        first.json,
        json!({"cached": false, "key": "my_data", "data": {"hello": "world"}, "gateway_id": "gateway-1"})
    );
    assert_eq!(first.header("x-cache"), "MISS");
    assert_eq!(first.header("x-served-by"), "gateway-1");
    assert!(!first.header("x-request-id").is_empty());

    let second = send(&app, get_with_token("/data?key=my_data", &token)).await;
    assert_eq!(second.json["cached"], true);
    assert_eq!(second.json["data"], json!({"hello": "world"}));
    assert_eq!(second.header("x-cache"), "HIT");
    assert_eq!(h.db.gets(), 1);

    // refresh=true reads through and refreshes.
    h.db.records
        .lock()
        .unwrap()
        .insert("my_data".into(), json!("v2"));
    let refreshed = send(&app, get_with_token("/data?refresh=true", &token)).await;
    assert_eq!(
        (
            refreshed.json["cached"].clone(),
            refreshed.json["data"].clone()
        ),
        (json!(false), json!("v2"))
    );
    assert_eq!(refreshed.header("x-cache"), "MISS");
    let after = send(&app, get_with_token("/data", &token)).await;
    assert_eq!(
        (after.json["cached"].clone(), after.json["data"].clone()),
        (json!(true), json!("v2"))
    );
    assert_eq!(h.db.gets(), 2);

    // The path form reads the same cache.
    let path = send(&app, get_with_token("/data/my_data", &token)).await;
    assert_eq!(path.json["cached"], true);
}

#[tokio::test]
async fn the_request_id_reaches_the_db() {
    let h = Harness::start().await;
    let app = h.app().await;
    let mut r = get_with_token("/data", &h.user());
    r.headers_mut()
        .insert("x-request-id", "trace-me-42".parse().unwrap());
    let a = send(&app, r).await;
    assert_eq!(a.header("x-request-id"), "trace-me-42");
    assert_eq!(*h.db.request_ids.lock().unwrap(), ["trace-me-42"]);
}

#[tokio::test]
async fn falsy_values_are_hits() {
    let h = Harness::start().await;
    let app = h.app().await;
    let token = h.user();
    for (key, value) in [
        ("zero", json!(0)),
        ("no", json!(false)),
        ("empty", json!("")),
    ] {
        let uri = format!("/data?key={key}");
        let miss = send(&app, get_with_token(&uri, &token)).await;
        assert_eq!(
            (miss.json["cached"].clone(), miss.json["data"].clone()),
            (json!(false), value.clone())
        );
        let hit = send(&app, get_with_token(&uri, &token)).await;
        assert_eq!(
            (hit.json["cached"].clone(), hit.json["data"].clone()),
            (json!(true), value),
            "{key}"
        );
        assert_eq!(hit.header("x-cache"), "HIT");
    }
    assert_eq!(h.db.gets(), 3);
}

#[tokio::test]
async fn the_same_falsy_hit_through_the_cache_service() {
    let mut h = Harness::start().await;
    let (cache, server) = CacheService::start().await;
    h.config.cache = CacheBackend::Service;
    h.config.cache_url = server.url.clone();
    h.keep(server);
    let app = h.app().await;
    let token = h.user();
    let miss = send(&app, get_with_token("/data?key=zero", &token)).await;
    assert_eq!(miss.header("x-cache"), "MISS");
    assert_eq!(cache.entries.lock().unwrap().get("zero"), Some(&json!(0)));
    let hit = send(&app, get_with_token("/data?key=zero", &token)).await;
    assert_eq!(hit.header("x-cache"), "HIT");
    assert_eq!(hit.json["data"], 0);
    assert_eq!(h.db.gets(), 1);
    // Admin routes reach the service.
    let stats = send(&app, get_with_token("/cache/stats", &h.admin())).await;
    assert_eq!(
        (stats.json["entries"].clone(), stats.json["backend"].clone()),
        (json!(1), json!("service"))
    );
    let flush = send(
        &app,
        req(Method::POST, "/cache/flush")
            .header(header::AUTHORIZATION, format!("Bearer {}", h.admin()))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(flush.status, StatusCode::OK, "{}", flush.json);
    assert!(cache.entries.lock().unwrap().is_empty());
}

#[tokio::test]
async fn twenty_concurrent_misses_make_one_db_call() {
    let h = Harness::start().await;
    let state = h.state().await;
    let app = router(state.clone());
    let token = h.user();
    // Warm the JWKS so that every request reaches the cache at once.
    assert_eq!(
        send(&app, get_with_token("/data?key=zero", &token))
            .await
            .status,
        StatusCode::OK
    );
    let before = h.db.gets();

    h.db.hold();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (app, token) = (app.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            send(&app, get_with_token("/data", &token)).await
        }));
    }
    // All twenty wait on one flight while the db holds its answer.
    wait_until("20 callers on one flight", || {
        state.inner.flights.waiting() == 20
    })
    .await;
    h.db.release();
    for t in tasks {
        let a = t.await.unwrap();
        assert_eq!(a.status, StatusCode::OK, "{}", a.json);
        assert_eq!(a.json["data"], json!({"hello": "world"}));
        assert_eq!(a.header("x-cache"), "MISS");
    }
    assert_eq!(h.db.gets() - before, 1, "one db call for twenty misses");
    // And the value is cached for the next one.
    let hit = send(&app, get_with_token("/data", &token)).await;
    assert_eq!(hit.header("x-cache"), "HIT");
}

#[tokio::test]
async fn put_writes_the_db_and_invalidates_the_cache() {
    let h = Harness::start().await;
    let app = h.app().await;
    let token = h.user();
    send(&app, get_with_token("/data", &token)).await;
    assert_eq!(
        send(&app, get_with_token("/data", &token))
            .await
            .header("x-cache"),
        "HIT"
    );

    let put = send(
        &app,
        req(Method::PUT, "/data/my_data")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(r#"{"value": {"hello": "again"}}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.json);
    assert_eq!(put.json["invalidated"], true);
    assert_eq!(
        h.db.records.lock().unwrap()["my_data"],
        json!({"hello": "again"})
    );

    let after = send(&app, get_with_token("/data", &token)).await;
    assert_eq!(after.header("x-cache"), "MISS");
    assert_eq!(after.json["data"], json!({"hello": "again"}));

    // A write needs a token too.
    let anonymous = send(
        &app,
        req(Method::PUT, "/data/my_data")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(r#"{"value": 1}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_fill_that_raced_a_write_does_not_bring_the_old_value_back() {
    let h = Harness::start().await;
    let state = h.state().await;
    let app = router(state.clone());
    let token = h.user();
    // A miss whose db answer (the old value) is still on its way...
    h.db.hold();
    let reader = {
        let (app, token) = (app.clone(), token.clone());
        tokio::spawn(async move { send(&app, get_with_token("/data", &token)).await })
    };
    wait_until("the read to reach the db", || h.db.gets() == 1).await;
    // ...while a write lands and invalidates.
    let put = send(
        &app,
        req(Method::PUT, "/data/my_data")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(r#"{"value": "new"}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.json);
    h.db.release();
    let stale = reader.await.unwrap();
    assert_eq!(
        stale.json["data"],
        json!({"hello": "world"}),
        "that read began before the write"
    );
    // The old value must not have been cached: the next read goes to the db and sees the write.
    let next = send(&app, get_with_token("/data", &token)).await;
    assert_eq!(next.header("x-cache"), "MISS");
    assert_eq!(next.json["data"], json!("new"));
}

#[tokio::test]
async fn a_cache_outage_still_answers_from_the_db() {
    let mut h = Harness::start().await;
    h.config.cache = CacheBackend::Service;
    h.config.cache_url = fakes::dead_url().await;
    let app = h.app().await;
    let token = h.user();
    for _ in 0..2 {
        let a = send(&app, get_with_token("/data", &token)).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.json);
        assert_eq!(a.header("x-cache"), "MISS");
        assert_eq!(a.json["data"], json!({"hello": "world"}));
    }
    assert_eq!(h.db.gets(), 2);
    // Writes still work, and say that the cache could not be invalidated.
    let put = send(
        &app,
        req(Method::PUT, "/data/my_data")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(r#"{"value": 2}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(
        (put.status, put.json["invalidated"].clone()),
        (StatusCode::OK, json!(false))
    );
    // Admin cache routes report the outage without internals.
    let stats = send(&app, get_with_token("/cache/stats", &h.admin())).await;
    assert_eq!(stats.status, StatusCode::BAD_GATEWAY);
    assert_eq!(stats.error(), "cache_unavailable");
    assert!(
        !stats.json["message"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1")
    );
}

#[tokio::test]
async fn db_failures_map_to_502_503_504_and_404() {
    let mut h = Harness::start().await;
    let token = h.user();

    // Unknown key.
    let app = h.app().await;
    let a = send(&app, get_with_token("/data?key=nope", &token)).await;
    assert_eq!((a.status, a.error()), (StatusCode::NOT_FOUND, "not_found"));
    assert_eq!(a.header("x-cache"), "MISS");

    // The db answers 503.
    *h.db.fail_with.lock().unwrap() = Some(StatusCode::SERVICE_UNAVAILABLE);
    let a = send(&app, get_with_token("/data", &token)).await;
    assert_eq!(
        (a.status, a.error()),
        (StatusCode::SERVICE_UNAVAILABLE, "db_unavailable")
    );
    // The db answers 500: a 502 that does not repeat the db's words.
    *h.db.fail_with.lock().unwrap() = Some(StatusCode::INTERNAL_SERVER_ERROR);
    let a = send(&app, get_with_token("/data", &token)).await;
    assert_eq!((a.status, a.error()), (StatusCode::BAD_GATEWAY, "db_error"));
    assert!(!a.json["message"].as_str().unwrap().contains("db says no"));
    *h.db.fail_with.lock().unwrap() = None;

    // The db is slow past the timeout.
    h.config.upstream_timeout_ms = 200;
    let slow = h.app().await;
    h.db.hold();
    let a = send(&slow, get_with_token("/data", &token)).await;
    assert_eq!(
        (a.status, a.error()),
        (StatusCode::GATEWAY_TIMEOUT, "db_timeout")
    );
    h.db.release();

    // The db is down.
    h.config.db_url = fakes::dead_url().await;
    let down = h.app().await;
    let a = send(&down, get_with_token("/data", &token)).await;
    assert_eq!(
        (a.status, a.error()),
        (StatusCode::BAD_GATEWAY, "db_unavailable")
    );
    assert_eq!(a.header("x-cache"), "MISS");
    assert!(
        !a.json["message"].as_str().unwrap().contains("127.0.0.1"),
        "{}",
        a.json
    );
}

#[tokio::test]
async fn redis_cache_through_the_router() {
    let Some(prefix) = common::testing::fresh_redis_prefix().await else {
        return;
    };
    let mut h = Harness::start().await;
    h.config.cache = CacheBackend::Redis;
    h.config.redis_url = Some(common::testing::redis_url());
    h.config.redis_prefix = prefix;
    let token = h.user();
    // Two gateways share the Redis cache: a miss on one is a hit on the other.
    let one = h.app().await;
    let two = router(state_with(h.config.clone(), "gateway-2").await);
    let a = send(&one, get_with_token("/data?key=zero", &token)).await;
    assert_eq!(a.header("x-cache"), "MISS");
    let b = send(&two, get_with_token("/data?key=zero", &token)).await;
    assert_eq!(b.header("x-cache"), "HIT");
    assert_eq!(
        (b.json["data"].clone(), b.json["gateway_id"].clone()),
        (json!(0), json!("gateway-2"))
    );
    assert_eq!(h.db.gets(), 1);
    let flush = send(
        &two,
        req(Method::POST, "/cache/flush")
            .header(header::AUTHORIZATION, format!("Bearer {}", h.admin()))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(flush.status, StatusCode::OK);
    assert_eq!(
        send(&one, get_with_token("/data?key=zero", &token))
            .await
            .header("x-cache"),
        "MISS"
    );
}
