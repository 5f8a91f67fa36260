//! Router tests: every request goes through `router(state).oneshot(..)`, no socket.

use std::time::Duration;

use axum::http::{HeaderMap, Method, StatusCode};
use common::testing;
use serde_json::{Value, json};

use api::client::encode_segment;
use api::wire::cache::{CacheEntry, CacheStats};

use crate::{AppState, Config, Error, router};

async fn state(config: Config) -> AppState {
    AppState::new(config, common::Instance::new("cache", "cache-1"))
        .await
        .expect("valid config")
}

async fn send(
    state: &AppState,
    method: Method,
    uri: &str,
    body: Option<String>,
) -> (StatusCode, HeaderMap, Value) {
    let request = testing::request(method, uri, body.as_deref());
    let answer = testing::call(&router(state.clone()), request).await;
    (answer.status, answer.headers, answer.json)
}

async fn set(state: &AppState, key: &str, body: Value) -> (StatusCode, Value) {
    let uri = format!("/cache/{}", encode_segment(key));
    let (status, _, json) = send(state, Method::PUT, &uri, Some(body.to_string())).await;
    (status, json)
}

async fn get(state: &AppState, key: &str) -> CacheEntry {
    let uri = format!("/cache/{}", encode_segment(key));
    let (status, _, json) = send(state, Method::GET, &uri, None).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    serde_json::from_value(json).expect("CacheEntry")
}

async fn stats(state: &AppState) -> CacheStats {
    let (status, _, json) = send(state, Method::GET, "/cache/stats", None).await;
    assert_eq!(status, StatusCode::OK);
    serde_json::from_value(json).expect("CacheStats")
}

#[tokio::test]
async fn set_then_get_returns_the_value() {
    let s = state(Config::default()).await;
    let value = json!({"message": "hello", "items": [1, 2, 3]});
    let (status, body) = set(&s, "my_data", json!({"value": value, "ttl": 60})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"stored": true, "key": "my_data", "ttl": 60}));
    assert_eq!(
        get(&s, "my_data").await,
        CacheEntry {
            value,
            found: true,
            lease: None
        }
    );
}

#[tokio::test]
async fn post_also_sets_and_default_ttl_applies() {
    let s = state(Config::default()).await;
    let (status, _, body) = send(
        &s,
        Method::POST,
        "/cache/k",
        Some(json!({"value": "v"}).to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["ttl"], 30, "the default TTL is reported");
    assert!(get(&s, "k").await.found);
}

#[tokio::test]
async fn keys_are_percent_decoded() {
    let s = state(Config::default()).await;
    set(&s, "user/42 profile", json!({"value": 1})).await;
    assert_eq!(get(&s, "user/42 profile").await.value, json!(1));
}

#[tokio::test]
async fn falsy_values_are_hits() {
    let s = state(Config::default()).await;
    for (i, value) in [
        json!(0),
        json!(""),
        json!(false),
        json!(null),
        json!([]),
        json!({}),
    ]
    .into_iter()
    .enumerate()
    {
        let key = format!("falsy-{i}");
        let (status, _) = set(&s, &key, json!({"value": value})).await;
        assert_eq!(status, StatusCode::OK);
        let entry = get(&s, &key).await;
        assert!(entry.found, "{value} must be a hit");
        assert_eq!(entry.value, value);
    }
    let st = stats(&s).await;
    assert_eq!((st.hits, st.misses), (6, 0));
}

#[tokio::test]
async fn absent_key_is_a_miss_with_null() {
    let s = state(Config::default()).await;
    assert_eq!(
        get(&s, "nope").await,
        CacheEntry {
            value: Value::Null,
            found: false,
            lease: None
        }
    );
}

#[tokio::test]
async fn put_replaces_the_value() {
    let s = state(Config::default()).await;
    set(&s, "k", json!({"value": "old"})).await;
    set(&s, "k", json!({"value": "new"})).await;
    assert_eq!(get(&s, "k").await.value, json!("new"));
    assert_eq!(stats(&s).await.entries, 1);
}

#[tokio::test]
async fn delete_removes_and_says_whether_it_did() {
    let s = state(Config::default()).await;
    set(&s, "k", json!({"value": 1})).await;
    let (status, _, body) = send(&s, Method::DELETE, "/cache/k", None).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"deleted": true})));
    assert!(!get(&s, "k").await.found);
    let (status, _, body) = send(&s, Method::DELETE, "/cache/k", None).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"deleted": false})));
}

#[tokio::test]
async fn flush_empties_and_counts() {
    let s = state(Config::default()).await;
    for i in 0..7 {
        set(&s, &format!("k{i}"), json!({"value": i})).await;
    }
    let (status, _, body) = send(&s, Method::POST, "/cache/flush", None).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"flushed": 7})));
    assert!(!get(&s, "k3").await.found);
    assert_eq!(stats(&s).await.entries, 0);
    let (_, _, body) = send(&s, Method::POST, "/cache/flush", None).await;
    assert_eq!(body, json!({"flushed": 0}));
}

#[tokio::test]
async fn stats_count_hits_misses_and_ratio() {
    let s = state(Config::default()).await;
    assert_eq!(stats(&s).await.hit_ratio, 0.0, "no lookups yet");
    set(&s, "a", json!({"value": 1})).await;
    set(&s, "b", json!({"value": 2})).await;
    get(&s, "a").await;
    get(&s, "a").await;
    get(&s, "b").await;
    get(&s, "missing").await;
    let st = stats(&s).await;
    assert_eq!(
        st,
        CacheStats {
            entries: 2,
            hits: 3,
            misses: 1,
            hit_ratio: 0.75,
            evictions: 0,
            expired: 0,
        }
    );
}

#[tokio::test]
async fn evictions_are_counted_over_max_entries() {
    let s = state(Config {
        max_entries: 5,
        ..Config::default()
    })
    .await;
    for i in 0..20 {
        let (status, _) = set(&s, &format!("k{i}"), json!({"value": i})).await;
        assert_eq!(status, StatusCode::OK);
    }
    let st = stats(&s).await;
    assert_eq!(st.entries, 5, "{st:?}");
    assert_eq!(st.evictions, 15, "{st:?}");
    assert_eq!(st.expired, 0);
    // LRU keeps the most recent writes: the last key is readable.
    assert!(get(&s, "k19").await.found);
}

#[tokio::test]
async fn entries_expire_after_their_ttl() {
    let s = state(Config::default()).await;
    set(&s, "short", json!({"value": "x", "ttl": 1})).await;
    set(&s, "long", json!({"value": "y", "ttl": 600})).await;
    assert!(get(&s, "short").await.found);
    // moka keeps its own clock, so paused tokio time cannot speed this up: poll until the entry is
    // gone, giving up well after the TTL.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while get(&s, "short").await.found {
        assert!(
            tokio::time::Instant::now() < deadline,
            "entry outlived its TTL"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        get(&s, "long").await.found,
        "other entries keep their own TTL"
    );
    // moka removes expired entries on a timer wheel whose finest slots are about a second wide,
    // so the `expired` count may trail the moment the entry stopped being served.
    loop {
        let st = stats(&s).await;
        if st.expired == 1 {
            assert_eq!((st.entries, st.evictions), (1, 0), "{st:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expiry never counted: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn bad_ttl_is_400() {
    let s = state(Config {
        max_ttl_secs: 100,
        ..Config::default()
    })
    .await;
    for ttl in [0, 101] {
        let (status, body) = set(&s, "k", json!({"value": 1, "ttl": ttl})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"], "invalid_ttl");
    }
    assert!(!get(&s, "k").await.found, "a refused write stores nothing");
    let (status, _) = set(&s, "k", json!({"value": 1, "ttl": 100})).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn bad_keys_are_400() {
    let s = state(Config::default()).await;
    let long = "k".repeat(513);
    let (status, body) = set(&s, &long, json!({"value": 1})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_key");
    let (status, _, body) = send(&s, Method::GET, &format!("/cache/{long}"), None).await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::BAD_REQUEST, &json!("invalid_key"))
    );
    // Percent-encoded bytes that are not UTF-8.
    let (status, _, body) = send(&s, Method::GET, "/cache/%FF%FE", None).await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::BAD_REQUEST, &json!("invalid_key"))
    );
    let (status, _) = set(&s, &"k".repeat(512), json!({"value": 1})).await;
    assert_eq!(status, StatusCode::OK, "512 bytes is allowed");
}

#[tokio::test]
async fn malformed_json_is_400() {
    let s = state(Config::default()).await;
    let (status, _, body) = send(&s, Method::PUT, "/cache/k", Some("{not json".into())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "malformed_json");
    let (status, _, body) = send(&s, Method::PUT, "/cache/k", Some(r#"{"ttl": 5}"#.into())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_body", "missing value");
}

#[tokio::test]
async fn oversized_body_is_413() {
    let s = state(Config {
        max_body_bytes: 100,
        ..Config::default()
    })
    .await;
    let big = json!({"value": "x".repeat(200)}).to_string();
    let (status, _, body) = send(&s, Method::PUT, "/cache/k", Some(big)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["error"], "payload_too_large");
}

#[tokio::test]
async fn ready_and_json_errors_for_unknown_routes() {
    let s = state(Config::default()).await;
    let (status, headers, body) = send(&s, Method::GET, "/ready", None).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ready"})));
    assert_eq!(headers["x-served-by"], "cache-1");
    let (status, _, body) = send(&s, Method::GET, "/nope", None).await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::NOT_FOUND, &json!("not_found"))
    );
    let (status, _, body) = send(&s, Method::GET, "/cache/flush", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["error"], "method_not_allowed");
}

#[tokio::test]
async fn impossible_configs_are_refused() {
    for config in [
        Config {
            max_entries: 0,
            ..Config::default()
        },
        Config {
            default_ttl_secs: 0,
            ..Config::default()
        },
        Config {
            default_ttl_secs: 100,
            max_ttl_secs: 10,
            ..Config::default()
        },
    ] {
        let result = AppState::new(config.clone(), common::Instance::new("cache", "c")).await;
        assert!(matches!(result, Err(Error::Config(_))), "{config:?}");
    }
}

#[test]
fn config_reads_partial_sections_and_refuses_unknown_fields() {
    let c: Config = serde_json::from_value(json!({"max_entries": 5})).expect("partial");
    assert_eq!(
        c,
        Config {
            max_entries: 5,
            ..Config::default()
        }
    );
    assert!(serde_json::from_value::<Config>(json!({"max_entrys": 5})).is_err());
}

async fn lookup(state: &AppState, key: &str, mode: &str) -> CacheEntry {
    let uri = format!("/cache/{}?lease={mode}", encode_segment(key));
    let (status, _, json) = send(state, Method::GET, &uri, None).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    serde_json::from_value(json).expect("CacheEntry")
}

#[tokio::test]
async fn a_fill_whose_lease_a_write_voided_is_refused() {
    let s = state(Config::default()).await;
    // Gateway 2 misses and gets a lease, then reads the db (the old value)...
    let miss = lookup(&s, "k", "on_miss").await;
    assert!(!miss.found);
    let lease = miss.lease.expect("a miss asked for a lease gets one");
    // ...gateway 1 writes the db and deletes the key...
    let (status, _, _) = send(&s, Method::DELETE, "/cache/k", None).await;
    assert_eq!(status, StatusCode::OK);
    // ...and gateway 2's fill of the old value is refused.
    let (status, body) = set(&s, "k", json!({"value": "old", "lease": lease})).await;
    assert_eq!(
        (status, &body["stored"]),
        (StatusCode::OK, &json!(false)),
        "{body}"
    );
    assert!(!get(&s, "k").await.found, "the old value was not stored");

    // A fill with a lease nobody voided is stored, once.
    let lease = lookup(&s, "k", "on_miss").await.lease.unwrap();
    let (_, body) = set(&s, "k", json!({"value": "new", "lease": lease})).await;
    assert_eq!(body["stored"], true, "{body}");
    assert_eq!(get(&s, "k").await.value, json!("new"));
    let (_, body) = set(&s, "k", json!({"value": "again", "lease": lease})).await;
    assert_eq!(body["stored"], false, "a lease is used once");
    // A hit hands out no lease unless asked for one always (a refresh).
    assert_eq!(lookup(&s, "k", "on_miss").await.lease, None);
    assert!(lookup(&s, "k", "always").await.lease.is_some());
    assert_eq!(get(&s, "k").await.lease, None, "not asked");
}

#[tokio::test]
async fn plain_sets_and_flushes_void_leases_too() {
    let s = state(Config::default()).await;
    let a = lookup(&s, "a", "on_miss").await.lease.unwrap();
    let b = lookup(&s, "b", "on_miss").await.lease.unwrap();
    set(&s, "a", json!({"value": "written"})).await;
    let (_, body) = set(&s, "a", json!({"value": "old", "lease": a})).await;
    assert_eq!(body["stored"], false);
    assert_eq!(get(&s, "a").await.value, json!("written"));
    send(&s, Method::POST, "/cache/flush", None).await;
    let (_, body) = set(&s, "b", json!({"value": "old", "lease": b})).await;
    assert_eq!(body["stored"], false);
    let (status, _, body) = send(&s, Method::GET, "/cache/a?lease=sometimes", None).await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::BAD_REQUEST, &json!("invalid_query"))
    );
}

#[tokio::test]
async fn acknowledgements_of_unknown_subscribers_are_410() {
    let s = state(Config::default()).await;
    for uri in ["/invalidations/42/ack", "/invalidations/nope/ack"] {
        let (status, _, body) =
            send(&s, Method::POST, uri, Some(json!({"seq": 1}).to_string())).await;
        assert_eq!(status, StatusCode::GONE, "{uri}");
        assert_eq!(body["error"], "subscription_gone");
    }
}

#[test]
fn invalidation_settings_are_checked() {
    let bad = Config {
        invalidation_lease_ms: 400,
        invalidation_heartbeat_ms: 300,
        invalidation_ack_timeout_ms: 500,
        fill_lease_ms: 0,
        ..Config::default()
    };
    let problems = bad.validate();
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("invalidation_heartbeat_ms"))
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("invalidation_ack_timeout_ms"))
    );
    assert!(problems.iter().any(|p| p.starts_with("fill_lease_ms")));
    assert_eq!(Config::default().validate(), Vec::<String>::new());
}
