//! Router tests through `router(state).oneshot(..)`, no socket. The behaviour every engine must
//! share runs against SQLite and against PostgreSQL (skipped when no server answers, see
//! `common::testing`); latency and readiness run against an in-memory test store under paused time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{Method, StatusCode};
use common::testing;
use serde_json::{Value, json};

use api::wire::db::Record;

use crate::store::{Store, seed};
use crate::{AppState, Config, Error, router};

fn instance() -> common::Instance {
    common::Instance::new("db", "db-1")
}

/// No simulated latency and a small seed, so that tests are quick.
fn fast() -> Config {
    Config {
        latency_ms: 0,
        jitter_ms: 0,
        seed_records: 10,
        ..Config::default()
    }
}

async fn send(
    state: &AppState,
    method: Method,
    uri: &str,
    body: Option<String>,
) -> (StatusCode, Value) {
    let request = testing::request(method, uri, body.as_deref());
    let answer = testing::call(&router(state.clone()), request).await;
    assert!(!answer.json.is_null(), "every answer is JSON: {answer:?}");
    (answer.status, answer.json)
}

async fn put(state: &AppState, key: &str, value: Value) -> (StatusCode, Value) {
    let body = json!({ "value": value }).to_string();
    send(state, Method::PUT, &format!("/db/{key}"), Some(body)).await
}

#[derive(Debug, Clone, Copy)]
enum Engine {
    Sqlite,
    Postgres,
}

/// A state on a fresh database of one engine, and what keeps that database alive.
struct Harness {
    state: AppState,
    config: Config,
    _dir: Option<tempfile::TempDir>,
    _pg: Option<common::testing::TestDb>,
}

impl Harness {
    /// `None` when the engine's server is unreachable (PostgreSQL outside CI).
    async fn start(engine: Engine, mut config: Config) -> Option<Harness> {
        let (dir, pg) = match engine {
            Engine::Sqlite => {
                let dir = tempfile::tempdir().expect("tempdir");
                config.data_dir = dir.path().to_path_buf();
                (Some(dir), None)
            }
            Engine::Postgres => {
                let db = common::testing::fresh_postgres("db").await?;
                config.database_url = Some(db.url.clone());
                (None, Some(db))
            }
        };
        let state = AppState::new(config.clone(), instance())
            .await
            .expect("state");
        Some(Harness {
            state,
            config,
            _dir: dir,
            _pg: pg,
        })
    }

    /// A second start on the same database, as after a restart of the service.
    async fn restart(&self) -> AppState {
        AppState::new(self.config.clone(), instance())
            .await
            .expect("restart")
    }
}

/// Runs each listed test once per engine.
macro_rules! on_every_engine {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Engine::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Engine::Postgres).await;
                }
            )*
        }
    };
}

on_every_engine!(
    seed_is_present_and_get_db_answers_the_lab_shape,
    default_seed_has_a_thousand_records,
    put_then_get_roundtrips_any_json,
    put_replaces,
    unknown_key_is_404_json,
    seeding_is_idempotent_and_keeps_user_writes,
    injected_failure_is_503_json_and_writes_nothing,
    bad_bodies_are_400_json,
    bad_keys_are_400_and_big_values_413,
    ready_when_the_database_answers,
);

async fn seed_is_present_and_get_db_answers_the_lab_shape(engine: Engine) {
    let Some(h) = Harness::start(engine, fast()).await else {
        return;
    };
    let (status, body) = send(&h.state, Method::GET, "/db", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({
            "message": "Fetched fresh data from DB",
            "data": {"message": "Hello from the database", "items": [1, 2, 3]},
            "db_id": "db-1",
        })
    );
    let (status, body) = send(&h.state, Method::GET, "/db/key-10", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["value"], json!({"id": 10, "name": "record 10"}));
    let (status, _) = send(&h.state, Method::GET, "/db/key-11", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "only seed_records are made");
}

async fn default_seed_has_a_thousand_records(engine: Engine) {
    let config = Config {
        seed_records: Config::default().seed_records,
        ..fast()
    };
    let Some(h) = Harness::start(engine, config).await else {
        return;
    };
    let (status, _) = send(&h.state, Method::GET, "/db/key-1000", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = send(&h.state, Method::GET, "/db/key-1001", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn put_then_get_roundtrips_any_json(engine: Engine) {
    let Some(h) = Harness::start(engine, fast()).await else {
        return;
    };
    let values = [
        json!({"nested": {"list": [1, "two", null, 3.5]}, "unicode": "héllo ✓"}),
        json!(0),
        json!(""),
        json!(false),
        json!(null),
    ];
    for (i, value) in values.into_iter().enumerate() {
        let key = format!("new-{i}");
        let (status, body) = put(&h.state, &key, value.clone()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let written: Record = serde_json::from_value(body).expect("Record");
        assert_eq!(
            (written.key.as_str(), &written.value),
            (key.as_str(), &value)
        );
        assert!(
            written.updated_at.len() == 24 && written.updated_at.ends_with('Z'),
            "RFC 3339: {}",
            written.updated_at
        );
        let (status, body) = send(&h.state, Method::GET, &format!("/db/{key}"), None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            serde_json::from_value::<Record>(body).expect("Record"),
            written
        );
    }
}

async fn put_replaces(engine: Engine) {
    let Some(h) = Harness::start(engine, fast()).await else {
        return;
    };
    let (_, first) = put(&h.state, "key-1", json!("first")).await;
    let (status, second) = put(&h.state, "key-1", json!({"second": true})).await;
    assert_eq!(status, StatusCode::OK);
    assert!(second["updated_at"].as_str() >= first["updated_at"].as_str());
    let (_, body) = send(&h.state, Method::GET, "/db/key-1", None).await;
    assert_eq!(body["value"], json!({"second": true}));
    // The lab's record can be rewritten too, and `GET /db` shows it.
    put(&h.state, "my_data", json!("changed")).await;
    let (_, body) = send(&h.state, Method::GET, "/db", None).await;
    assert_eq!(body["data"], json!("changed"));
}

async fn unknown_key_is_404_json(engine: Engine) {
    let Some(h) = Harness::start(engine, fast()).await else {
        return;
    };
    let (status, body) = send(&h.state, Method::GET, "/db/nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "not_found");
    assert!(body["message"].as_str().is_some_and(|m| m.contains("nope")));
}

async fn seeding_is_idempotent_and_keeps_user_writes(engine: Engine) {
    let Some(h) = Harness::start(engine, fast()).await else {
        return;
    };
    put(&h.state, "key-1", json!("mine")).await;
    let again = h.restart().await;
    let (_, body) = send(&again, Method::GET, "/db/key-1", None).await;
    assert_eq!(
        body["value"],
        json!("mine"),
        "a restart must not undo writes"
    );
    let written = again.store.insert_missing(&seed(10)).await.expect("seed");
    assert_eq!(written, 0);
    // A larger seed adds only the missing records.
    let written = again.store.insert_missing(&seed(12)).await.expect("seed");
    assert_eq!(written, 2);
}

async fn injected_failure_is_503_json_and_writes_nothing(engine: Engine) {
    let config = Config {
        failure_rate: 1.0,
        ..fast()
    };
    let Some(h) = Harness::start(engine, config).await else {
        return;
    };
    for (method, uri, body) in [
        (Method::GET, "/db", None),
        (Method::GET, "/db/key-1", None),
        (
            Method::PUT,
            "/db/key-1",
            Some(json!({"value": "lost"}).to_string()),
        ),
    ] {
        let (status, body) = send(&h.state, method, uri, body).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["error"], "injected_failure");
    }
    let stored = h
        .state
        .store
        .get("key-1")
        .await
        .expect("get")
        .expect("seeded");
    assert_eq!(stored.value, json!({"id": 1, "name": "record 1"}));
    let (status, _) = send(&h.state, Method::GET, "/ready", None).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "readiness is not subject to injected failures"
    );
}

async fn bad_bodies_are_400_json(engine: Engine) {
    let Some(h) = Harness::start(engine, fast()).await else {
        return;
    };
    for (body, code) in [
        ("{not json", "malformed_json"),
        (r#"{"val": 1}"#, "invalid_body"),
        (r#"{"value": 1, "extra": 2}"#, "invalid_body"),
    ] {
        let (status, answer) = send(&h.state, Method::PUT, "/db/k", Some(body.into())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(answer["error"], code, "{body}");
    }
    let (status, _) = send(&h.state, Method::GET, "/db/k", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing was written");
}

async fn bad_keys_are_400_and_big_values_413(engine: Engine) {
    let config = Config {
        max_value_bytes: 100,
        ..fast()
    };
    let Some(h) = Harness::start(engine, config).await else {
        return;
    };
    let (status, body) = put(&h.state, &"k".repeat(257), json!(1)).await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::BAD_REQUEST, &json!("invalid_key"))
    );
    let (status, _) = put(&h.state, &"k".repeat(256), json!(1)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = put(&h.state, "big", json!("x".repeat(200))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["error"], "value_too_large");
}

async fn ready_when_the_database_answers(engine: Engine) {
    let Some(h) = Harness::start(engine, fast()).await else {
        return;
    };
    let (status, body) = send(&h.state, Method::GET, "/ready", None).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ready"})));
}

#[tokio::test]
async fn sqlite_file_lives_in_data_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config {
        data_dir: dir.path().join("nested"),
        ..fast()
    };
    AppState::new(config, instance()).await.expect("state");
    assert!(dir.path().join("nested/db.sqlite").is_file());
}

#[tokio::test]
async fn impossible_configs_are_refused() {
    for config in [
        Config {
            failure_rate: 1.5,
            ..fast()
        },
        Config {
            failure_rate: f64::NAN,
            ..fast()
        },
        Config {
            database_url: Some("mysql://localhost/x".into()),
            ..fast()
        },
    ] {
        let result = AppState::new(config.clone(), instance()).await;
        assert!(matches!(result, Err(Error::Config(_))), "{config:?}");
    }
}

#[test]
fn config_reads_partial_sections_and_refuses_unknown_fields() {
    let c: Config = serde_json::from_value(json!({"latency_ms": 5})).expect("partial");
    assert_eq!(
        c,
        Config {
            latency_ms: 5,
            ..Config::default()
        }
    );
    assert!(serde_json::from_value::<Config>(json!({"data_dir": "x"})).is_err());
    assert!(serde_json::from_value::<Config>(json!({"latency": 5})).is_err());
}

/// A store in memory, whose database can be "down", for the tests of latency and readiness.
#[derive(Debug, Default)]
struct MemoryStore {
    records: Mutex<HashMap<String, Record>>,
    down: AtomicBool,
}

impl MemoryStore {
    fn check(&self) -> Result<(), Error> {
        if self.down.load(Ordering::Relaxed) {
            Err(Error::Unavailable(
                "connection refused (10.0.0.7:5432)".into(),
            ))
        } else {
            Ok(())
        }
    }
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    fn engine(&self) -> &'static str {
        "memory"
    }

    async fn get(&self, key: &str) -> Result<Option<Record>, Error> {
        self.check()?;
        Ok(self.records.lock().expect("lock").get(key).cloned())
    }

    async fn put(&self, key: &str, value: &Value) -> Result<Record, Error> {
        self.check()?;
        let record = Record {
            key: key.into(),
            value: value.clone(),
            updated_at: common::time::now_rfc3339(),
        };
        self.records
            .lock()
            .expect("lock")
            .insert(key.into(), record.clone());
        Ok(record)
    }

    async fn insert_missing(&self, records: &[(String, Value)]) -> Result<u64, Error> {
        let mut written = 0;
        for (key, value) in records {
            if self.get(key).await?.is_none() {
                self.put(key, value).await?;
                written += 1;
            }
        }
        Ok(written)
    }

    async fn ping(&self) -> Result<(), Error> {
        self.check()
    }
}

async fn memory_state(config: Config) -> (AppState, Arc<MemoryStore>) {
    let store = Arc::new(MemoryStore::default());
    let state = AppState::with_store(config, instance(), store.clone())
        .await
        .expect("state");
    (state, store)
}

#[tokio::test(start_paused = true)]
async fn latency_applies_to_reads_and_writes() {
    let config = Config {
        latency_ms: 100,
        jitter_ms: 0,
        ..fast()
    };
    let (state, _) = memory_state(config).await;
    for (method, uri, body) in [
        (Method::GET, "/db", None),
        (Method::GET, "/db/key-1", None),
        (Method::GET, "/db/missing", None),
        (
            Method::PUT,
            "/db/key-1",
            Some(json!({"value": 1}).to_string()),
        ),
    ] {
        let start = tokio::time::Instant::now();
        send(&state, method, uri, body).await;
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(100) && waited < Duration::from_millis(110),
            "{uri}: {waited:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn jitter_stays_within_its_bound() {
    let config = Config {
        latency_ms: 50,
        jitter_ms: 20,
        ..fast()
    };
    let (state, _) = memory_state(config).await;
    for _ in 0..20 {
        let start = tokio::time::Instant::now();
        send(&state, Method::GET, "/db/key-1", None).await;
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(50) && waited <= Duration::from_millis(72),
            "{waited:?}"
        );
    }
}

#[tokio::test]
async fn unreachable_store_is_503_without_internals() {
    let (state, store) = memory_state(fast()).await;
    store.down.store(true, Ordering::Relaxed);
    for uri in ["/ready", "/db/key-1"] {
        let (status, body) = send(&state, Method::GET, uri, None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{uri}");
        assert_eq!(body["error"], "store_unavailable");
        assert!(!body.to_string().contains("10.0.0.7"), "leaked: {body}");
    }
    store.down.store(false, Ordering::Relaxed);
    let (status, _) = send(&state, Method::GET, "/ready", None).await;
    assert_eq!(status, StatusCode::OK);
}

async fn unknown_keys_are_generated_once_then_behave_like_records(engine: Engine) {
    let config = Config {
        unknown_keys: crate::UnknownKeys::Generate,
        ..fast()
    };
    let Some(h) = Harness::start(engine, config).await else {
        return;
    };
    let (s, first) = send(&h.state, Method::GET, "/db/test_key", None).await;
    assert_eq!(s, StatusCode::OK, "{first}");
    assert_eq!(first["value"], crate::generated_value("test_key"));
    assert_eq!(first["value"]["generated"], true);
    // Stored on that read: the same record (same time) the next time, on any instance.
    let (_, again) = send(&h.state, Method::GET, "/db/test_key", None).await;
    assert_eq!(again, first);
    assert_ne!(
        crate::generated_value("test_key"),
        crate::generated_value("other_key")
    );
    // A write replaces it like any record.
    let (s, _) = put(&h.state, "test_key", json!("mine")).await;
    assert_eq!(s, StatusCode::OK);
    let (_, read) = send(&h.state, Method::GET, "/db/test_key", None).await;
    assert_eq!(read["value"], "mine");

    // The strict setting keeps answering 404.
    let strict = Harness::start(engine, fast())
        .await
        .expect("started once already");
    let (s, body) = send(&strict.state, Method::GET, "/db/test_key", None).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
}

#[tokio::test]
async fn unknown_keys_generated_on_sqlite() {
    unknown_keys_are_generated_once_then_behave_like_records(Engine::Sqlite).await;
}

#[tokio::test]
async fn unknown_keys_generated_on_postgres() {
    unknown_keys_are_generated_once_then_behave_like_records(Engine::Postgres).await;
}
