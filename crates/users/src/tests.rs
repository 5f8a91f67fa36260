//! Router tests: real SQLite shards in a temporary directory, plus test doubles for a shard or a
//! replica that is down.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use axum::http::{Method, StatusCode};
use common::testing;
use serde_json::{Value, json};

use api::wire::users::Profile;

use crate::placement::shard_of;
use crate::store::{Changes, ShardStore, SqlStore};
use crate::{AppState, Config, Error, Shard, Shards, router};

/// A database that never answers.
#[derive(Debug)]
struct Down;

#[async_trait]
impl ShardStore for Down {
    fn engine(&self) -> &'static str {
        "down"
    }
    async fn ping(&self) -> Result<(), Error> {
        Err(Error::Unavailable("connection refused".into()))
    }
    async fn insert(&self, _: &Profile) -> Result<bool, Error> {
        self.ping().await.map(|_| false)
    }
    async fn get(&self, _: &str) -> Result<Option<Profile>, Error> {
        self.ping().await.map(|_| None)
    }
    async fn update(&self, _: &str, _: &Changes) -> Result<Option<Profile>, Error> {
        self.ping().await.map(|_| None)
    }
    async fn delete(&self, _: &str) -> Result<bool, Error> {
        self.ping().await.map(|_| false)
    }
    async fn list_after(&self, _: Option<&str>, _: u32) -> Result<Vec<Profile>, Error> {
        self.ping().await.map(|_| Vec::new())
    }
    async fn count(&self) -> Result<u64, Error> {
        self.ping().await.map(|_| 0)
    }
    async fn claim_username(&self, _: &str, _: &str) -> Result<bool, Error> {
        self.ping().await.map(|_| false)
    }
    async fn lookup_username(&self, _: &str) -> Result<Option<String>, Error> {
        self.ping().await.map(|_| None)
    }
    async fn release_username(&self, _: &str, _: &str) -> Result<(), Error> {
        self.ping().await
    }
}

/// A replica that counts the reads it serves (a real SQLite file behind it).
#[derive(Debug)]
struct Counting {
    inner: SqlStore,
    reads: AtomicU64,
}

#[async_trait]
impl ShardStore for Counting {
    fn engine(&self) -> &'static str {
        "sqlite"
    }
    async fn ping(&self) -> Result<(), Error> {
        self.inner.ping().await
    }
    async fn insert(&self, p: &Profile) -> Result<bool, Error> {
        self.inner.insert(p).await
    }
    async fn get(&self, id: &str) -> Result<Option<Profile>, Error> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.inner.get(id).await
    }
    async fn update(&self, id: &str, c: &Changes) -> Result<Option<Profile>, Error> {
        self.inner.update(id, c).await
    }
    async fn delete(&self, id: &str) -> Result<bool, Error> {
        self.inner.delete(id).await
    }
    async fn list_after(&self, a: Option<&str>, l: u32) -> Result<Vec<Profile>, Error> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.inner.list_after(a, l).await
    }
    async fn count(&self) -> Result<u64, Error> {
        self.inner.count().await
    }
    async fn claim_username(&self, u: &str, id: &str) -> Result<bool, Error> {
        self.inner.claim_username(u, id).await
    }
    async fn lookup_username(&self, u: &str) -> Result<Option<String>, Error> {
        self.inner.lookup_username(u).await
    }
    async fn release_username(&self, u: &str, id: &str) -> Result<(), Error> {
        self.inner.release_username(u, id).await
    }
}

async fn sqlite(dir: &tempfile::TempDir, name: &str) -> SqlStore {
    SqlStore::open(&format!("sqlite:{}", dir.path().join(name).display()))
        .await
        .expect("open sqlite shard")
}

async fn state(dir: &tempfile::TempDir) -> AppState {
    let config = Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    AppState::new(config, common::Instance::new("users", "users-1"))
        .await
        .expect("state")
}

async fn call(
    app: &axum::Router,
    method: Method,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let body = body.map(|b| b.to_string());
    let answer = testing::call(app, testing::request(method, uri, body.as_deref())).await;
    (answer.status, answer.json)
}

fn new_user(id: &str, username: &str) -> Value {
    json!({"id": id, "username": username, "email": format!("{username}@example.org"),
           "first_name": "Ann", "last_name": "Lee"})
}

/// An id that lands on `shard` of `n`.
fn id_on(shard: u32, n: u32, salt: &str) -> String {
    (0..)
        .map(|i| format!("{salt}-{i}"))
        .find(|id| shard_of(id, n) == shard)
        .unwrap()
}

#[tokio::test]
async fn create_read_update_delete_on_the_right_shard() {
    let dir = tempfile::tempdir().unwrap();
    let app = router(state(&dir).await);
    let (s, p) = call(&app, Method::POST, "/users", Some(new_user("u-1", "ann"))).await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    assert_eq!(p["role"], "user");
    assert_eq!(p["email"], "ann@example.org");

    let (s, got) = call(&app, Method::GET, "/users/u-1", None).await;
    assert_eq!(s, 200);
    assert_eq!(got, p);
    let (s, got) = call(&app, Method::GET, "/users/by-username/ann", None).await;
    assert_eq!((s.as_u16(), got["id"].clone()), (200, json!("u-1")));

    // The profile is in the file of the shard the hash names, and only there.
    let home = shard_of("u-1", 3);
    for i in 0..3 {
        let store = sqlite(&dir, &format!("users-shard-{i}.sqlite")).await;
        assert_eq!(
            store.get("u-1").await.unwrap().is_some(),
            i == home,
            "shard {i}"
        );
    }

    let (s, up) = call(
        &app,
        Method::PATCH,
        "/users/u-1",
        Some(json!({"last_name": "Smith"})),
    )
    .await;
    assert_eq!(s, 200, "{up}");
    assert_eq!(
        (up["last_name"].clone(), up["first_name"].clone()),
        (json!("Smith"), json!("Ann"))
    );
    assert!(up["updated_at"].as_str() >= p["updated_at"].as_str());

    let (s, _) = call(&app, Method::DELETE, "/users/u-1", None).await;
    assert_eq!(s, 200);
    let (s, body) = call(&app, Method::GET, "/users/u-1", None).await;
    assert_eq!(
        (s.as_u16(), body["error"].clone()),
        (404, json!("not_found"))
    );
    // The username is free again.
    let (s, _) = call(&app, Method::POST, "/users", Some(new_user("u-2", "ann"))).await;
    assert_eq!(s, StatusCode::CREATED);
}

#[tokio::test]
async fn usernames_are_unique_across_shards() {
    let dir = tempfile::tempdir().unwrap();
    let app = router(state(&dir).await);
    // Two ids on different shards, one name.
    let (a, b) = (id_on(0, 3, "x"), id_on(1, 3, "x"));
    let (s, _) = call(&app, Method::POST, "/users", Some(new_user(&a, "bob"))).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, body) = call(&app, Method::POST, "/users", Some(new_user(&b, "bob"))).await;
    assert_eq!(
        (s.as_u16(), body["error"].clone()),
        (409, json!("username_taken"))
    );
    let (s, body) = call(&app, Method::POST, "/users", Some(new_user(&a, "bob2"))).await;
    assert_eq!(
        (s.as_u16(), body["error"].clone()),
        (409, json!("id_taken"))
    );
    // The failed create released its claim on "bob2".
    let (s, _) = call(&app, Method::POST, "/users", Some(new_user(&b, "bob2"))).await;
    assert_eq!(s, StatusCode::CREATED);
}

#[tokio::test]
async fn concurrent_creates_of_one_name_make_one_user() {
    let dir = tempfile::tempdir().unwrap();
    let app = router(state(&dir).await);
    let tries = (0..8).map(|i| {
        let app = app.clone();
        async move {
            call(
                &app,
                Method::POST,
                "/users",
                Some(new_user(&format!("c-{i}"), "carol")),
            )
            .await
            .0
        }
    });
    let statuses = futures::future::join_all(tries).await;
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::CREATED || *s == StatusCode::CONFLICT)
    );
}

#[tokio::test]
async fn bad_input_is_refused_and_strings_are_stored_verbatim() {
    let dir = tempfile::tempdir().unwrap();
    let app = router(state(&dir).await);
    let long = "x".repeat(101);
    for (body, code) in [
        (
            json!({"id": "b-1", "username": "dan", "email": "not-an-email"}),
            "invalid_email",
        ),
        (
            json!({"id": "b-1", "username": "dan", "first_name": ""}),
            "invalid_name",
        ),
        (
            json!({"id": "b-1", "username": "dan", "last_name": long}),
            "invalid_name",
        ),
        (json!({"id": "b-1", "username": "d"}), "invalid_username"),
        (
            json!({"id": "b-1", "username": "dan", "role": "root"}),
            "invalid_role",
        ),
        (json!({"id": "../etc", "username": "dan"}), "invalid_id"),
        (json!({"id": "b-1"}), "invalid_body"),
        (
            json!({"id": "b-1", "username": "dan", "extra": 1}),
            "invalid_body",
        ),
    ] {
        let (s, b) = call(&app, Method::POST, "/users", Some(body.clone())).await;
        assert_eq!(
            (s.as_u16(), b["error"].clone()),
            (400, json!(code)),
            "{body}"
        );
        assert!(b["message"].is_string());
    }
    let sql = "Robert'); DROP TABLE profiles;--";
    let html = "<script>alert('x')</script>";
    let body = json!({"id": "v-1", "username": "robert", "first_name": sql, "last_name": html});
    let (s, p) = call(&app, Method::POST, "/users", Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    let (_, p) = call(&app, Method::GET, "/users/v-1", None).await;
    assert_eq!(
        (p["first_name"].as_str(), p["last_name"].as_str()),
        (Some(sql), Some(html))
    );
    let (s, page) = call(&app, Method::GET, "/users", None).await;
    assert_eq!(
        (s.as_u16(), page["users"].as_array().map(Vec::len)),
        (200, Some(1))
    );

    let (s, b) = call(&app, Method::PATCH, "/users/v-1", Some(json!({}))).await;
    assert_eq!(
        (s.as_u16(), b["error"].clone()),
        (400, json!("empty_update"))
    );
    let (s, b) = call(
        &app,
        Method::PATCH,
        "/users/v-1",
        Some(json!({"email": "a@b"})),
    )
    .await;
    assert_eq!(
        (s.as_u16(), b["error"].clone()),
        (400, json!("invalid_email"))
    );
    let (s, _) = call(
        &app,
        Method::PATCH,
        "/users/nobody",
        Some(json!({"first_name": "Z"})),
    )
    .await;
    assert_eq!(s, 404);
    let (s, _) = call(&app, Method::DELETE, "/users/nobody", None).await;
    assert_eq!(s, 404);
    let (s, b) = call(&app, Method::GET, "/users?limit=0", None).await;
    assert_eq!(
        (s.as_u16(), b["error"].clone()),
        (400, json!("invalid_query"))
    );
}

#[tokio::test]
async fn list_pages_through_every_shard_in_id_order() {
    let dir = tempfile::tempdir().unwrap();
    let st = state(&dir).await;
    let app = router(st.clone());
    let mut ids: Vec<String> = (0..50).map(|i| format!("id-{i:03}")).collect();
    for id in &ids {
        let (s, _) = call(
            &app,
            Method::POST,
            "/users",
            Some(new_user(id, &format!("n{id}"))),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED);
    }
    ids.sort();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let uri = match &cursor {
            Some(c) => format!("/users?limit=7&after={c}"),
            None => "/users?limit=7".to_string(),
        };
        let (s, page) = call(&app, Method::GET, &uri, None).await;
        assert_eq!(s, 200, "{page}");
        let users = page["users"].as_array().unwrap();
        assert!(users.len() <= 7);
        seen.extend(users.iter().map(|u| u["id"].as_str().unwrap().to_string()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, ids);

    let (s, report) = call(&app, Method::GET, "/shards", None).await;
    assert_eq!(s, 200);
    assert_eq!(report["shard_count"], 3);
    let counts: Vec<u64> = report["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["users"].as_u64().unwrap())
        .collect();
    assert_eq!(counts.iter().sum::<u64>(), 50);
    assert!(counts.iter().all(|c| *c > 0), "{counts:?}");
    let (s, _) = call(&app, Method::GET, "/ready", None).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn a_shard_down_fails_only_its_users() {
    let dir = tempfile::tempdir().unwrap();
    let shards = Shards::new(vec![
        Shard::new(Arc::new(sqlite(&dir, "s0.sqlite").await), vec![]),
        Shard::new(Arc::new(Down), vec![]),
        Shard::new(Arc::new(sqlite(&dir, "s2.sqlite").await), vec![]),
    ])
    .unwrap();
    let st = AppState::with_shards(
        Config::default(),
        common::Instance::new("users", "users-1"),
        shards,
    )
    .unwrap();
    let app = router(st);
    // A user whose id and name both hash to healthy shards works end to end.
    let ok_id = (0..)
        .map(|i| format!("ok-{i}"))
        .find(|id| shard_of(id, 3) == 0)
        .unwrap();
    let ok_name = (0..)
        .map(|i| format!("name{i}"))
        .find(|n| shard_of(n, 3) != 1)
        .unwrap();
    let (s, b) = call(
        &app,
        Method::POST,
        "/users",
        Some(new_user(&ok_id, &ok_name)),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, _) = call(&app, Method::GET, &format!("/users/{ok_id}"), None).await;
    assert_eq!(s, 200);
    // A user on the shard that is down: 503 naming it.
    let down_id = id_on(1, 3, "down");
    let (s, b) = call(&app, Method::GET, &format!("/users/{down_id}"), None).await;
    assert_eq!(
        (s.as_u16(), b["error"].clone()),
        (503, json!("shard_unavailable")),
        "{b}"
    );
    assert!(b["message"].as_str().unwrap().contains("shard 1"));
    assert!(
        !b["message"].as_str().unwrap().contains("refused"),
        "no internals: {b}"
    );
    let (s, _) = call(
        &app,
        Method::POST,
        "/users",
        Some(new_user(&down_id, &ok_name.replace("name", "other"))),
    )
    .await;
    assert_eq!(s.as_u16(), 503);
    // /shards reports the hole; /ready says so.
    let (_, report) = call(&app, Method::GET, "/shards", None).await;
    let healthy: Vec<bool> = report["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["healthy"].as_bool().unwrap())
        .collect();
    assert_eq!(healthy, [true, false, true]);
    assert_eq!(report["shards"][1]["users"], Value::Null);
    let (s, _) = call(&app, Method::GET, "/ready", None).await;
    assert_eq!(s.as_u16(), 503);
}

#[tokio::test]
async fn reads_use_replicas_in_turn_and_fall_back_to_the_primary() {
    let dir = tempfile::tempdir().unwrap();
    // One shard; its "replica" is the same file (SQLite cannot stream; the real streaming replica
    // is PostgreSQL's, in the distributed test), and a second replica is down.
    let path = dir.path().join("one.sqlite");
    let url = format!("sqlite:{}", path.display());
    let primary = Arc::new(Counting {
        inner: SqlStore::open(&url).await.unwrap(),
        reads: AtomicU64::new(0),
    });
    let replica = Arc::new(Counting {
        inner: SqlStore::open(&url).await.unwrap(),
        reads: AtomicU64::new(0),
    });
    let shards = Shards::new(vec![Shard::new(
        primary.clone(),
        vec![replica.clone() as Arc<dyn ShardStore>, Arc::new(Down)],
    )])
    .unwrap();
    let config = Config {
        shard_count: 1,
        ..Config::default()
    };
    let app = router(
        AppState::with_shards(config, common::Instance::new("users", "users-1"), shards).unwrap(),
    );
    let (s, _) = call(&app, Method::POST, "/users", Some(new_user("r-1", "rita"))).await;
    assert_eq!(s, StatusCode::CREATED);
    for _ in 0..4 {
        let (s, _) = call(&app, Method::GET, "/users/r-1", None).await;
        assert_eq!(s, 200);
    }
    // Four reads: the dead replica failed once and is then skipped for a while, so three went to
    // the live replica and one fell back to the primary.
    assert_eq!(replica.reads.load(Ordering::Relaxed), 3);
    assert_eq!(primary.reads.load(Ordering::Relaxed), 1);
    // Read-your-writes: a primary read never touches a replica.
    let (s, _) = call(&app, Method::GET, "/users/r-1?consistency=primary", None).await;
    assert_eq!(s, 200);
    assert_eq!(
        (
            replica.reads.load(Ordering::Relaxed),
            primary.reads.load(Ordering::Relaxed)
        ),
        (3, 2)
    );
    let (_, report) = call(&app, Method::GET, "/shards", None).await;
    assert_eq!(report["shards"][0]["replicas"], json!([true, false]));
}

#[tokio::test]
async fn a_claim_left_by_a_crash_is_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let st = state(&dir).await;
    let app = router(st.clone());
    // A crash between "claim the username" and "write the profile" leaves this behind.
    let index = shard_of("erin", 3);
    let store = sqlite(&dir, &format!("users-shard-{index}.sqlite")).await;
    assert!(store.claim_username("erin", "ghost").await.unwrap());
    let (s, b) = call(&app, Method::POST, "/users", Some(new_user("e-1", "erin"))).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (_, p) = call(&app, Method::GET, "/users/by-username/erin", None).await;
    assert_eq!(p["id"], "e-1");
}

#[tokio::test]
async fn postgres_shards_work_the_same() {
    let Some(a) = common::testing::fresh_postgres("users_a").await else {
        return;
    };
    let Some(b) = common::testing::fresh_postgres("users_b").await else {
        return;
    };
    let config = Config {
        shards: vec![
            crate::ShardConfig {
                url: a.url.clone(),
                replicas: vec![],
            },
            crate::ShardConfig {
                url: b.url.clone(),
                replicas: vec![],
            },
        ],
        ..Config::default()
    };
    let st = AppState::new(config, common::Instance::new("users", "users-1"))
        .await
        .unwrap();
    let app = router(st);
    for i in 0..20 {
        let (s, body) = call(
            &app,
            Method::POST,
            "/users",
            Some(new_user(&format!("pg-{i}"), &format!("pguser{i}"))),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{body}");
    }
    let (s, body) = call(
        &app,
        Method::POST,
        "/users",
        Some(new_user("pg-x", "pguser3")),
    )
    .await;
    assert_eq!(
        (s.as_u16(), body["error"].clone()),
        (409, json!("username_taken"))
    );
    let (s, up) = call(
        &app,
        Method::PATCH,
        "/users/pg-3",
        Some(json!({"first_name": "<b>x</b>'--"})),
    )
    .await;
    assert_eq!(
        (s.as_u16(), up["first_name"].clone()),
        (200, json!("<b>x</b>'--"))
    );
    let (_, page) = call(&app, Method::GET, "/users?limit=100", None).await;
    assert_eq!(page["users"].as_array().unwrap().len(), 20);
    let (_, report) = call(&app, Method::GET, "/shards", None).await;
    let counts: Vec<u64> = report["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["users"].as_u64().unwrap())
        .collect();
    assert_eq!(counts.iter().sum::<u64>(), 20);
    assert!(counts.iter().all(|c| *c > 0));
}

/// Every profile file of an embedded layout of `n` shards, and where each id is.
async fn placement(dir: &tempfile::TempDir, n: u32) -> Vec<(String, u32, Profile)> {
    let mut out = Vec::new();
    for i in 0..n {
        let store = sqlite(dir, &format!("users-shard-{i}.sqlite")).await;
        for p in store.list_after(None, 100_000).await.unwrap() {
            out.push((p.id.clone(), i, p));
        }
    }
    out
}

async fn wait_moved(app: &axum::Router, to: u32) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, st) = call(app, Method::GET, "/rebalance", None).await;
        if st["count"] == to && st["target"].is_null() && st["moving"] == false {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the move never finished: {st}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebalancing_three_to_four_under_writes_keeps_every_user_once() {
    let dir = tempfile::tempdir().unwrap();
    let app = router(state(&dir).await);
    let ids: Vec<String> = (0..120).map(|i| format!("m-{i:03}")).collect();
    for id in &ids {
        let (s, _) = call(
            &app,
            Method::POST,
            "/users",
            Some(new_user(id, &format!("n{id}"))),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED);
    }
    // Writers keep updating every user while the move runs; the last write of each must survive.
    let writers = {
        let app = app.clone();
        let ids = ids.clone();
        tokio::spawn(async move {
            for round in 0..5 {
                for id in &ids {
                    let body = json!({"last_name": format!("round{round}")});
                    let (s, b) =
                        call(&app, Method::PATCH, &format!("/users/{id}"), Some(body)).await;
                    assert_eq!(s, 200, "{id}: {b}");
                    let (s, b) = call(&app, Method::GET, &format!("/users/{id}"), None).await;
                    assert_eq!(
                        (s.as_u16(), b["last_name"].clone()),
                        (200, json!(format!("round{round}"))),
                        "{id}"
                    );
                }
            }
        })
    };
    let (s, st) = call(&app, Method::POST, "/rebalance", Some(json!({"to": 4}))).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{st}");
    // New users arrive during the move too.
    for i in 0..20 {
        let id = format!("late-{i}");
        let (s, b) = call(
            &app,
            Method::POST,
            "/users",
            Some(new_user(&id, &format!("late{i}"))),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
    }
    wait_moved(&app, 4).await;
    writers.await.unwrap();

    let placed = placement(&dir, 4).await;
    assert_eq!(placed.len(), 140, "every user exactly once");
    for (id, shard, p) in &placed {
        assert_eq!(*shard, shard_of(id, 4), "{id} is on the wrong shard");
        if id.starts_with("m-") {
            assert_eq!(p.last_name.as_deref(), Some("round4"), "{id} lost a write");
        }
    }
    let (_, report) = call(&app, Method::GET, "/shards", None).await;
    assert_eq!(report["shard_count"], 4);
    let (_, page) = call(&app, Method::GET, "/users?limit=100", None).await;
    assert_eq!(page["users"].as_array().unwrap().len(), 100);
    // Usernames moved with their index entries: lookups and uniqueness still hold.
    for id in ["m-000", "m-077", "late-3"] {
        let name = if id.starts_with("late") {
            "late3".to_string()
        } else {
            format!("n{id}")
        };
        let (s, p) = call(
            &app,
            Method::GET,
            &format!("/users/by-username/{name}"),
            None,
        )
        .await;
        assert_eq!((s.as_u16(), p["id"].clone()), (200, json!(id)));
        let (s, _) = call(&app, Method::POST, "/users", Some(new_user("dup", &name))).await;
        assert_eq!(s.as_u16(), 409, "{name}");
    }
}

#[tokio::test]
async fn a_move_killed_half_way_finishes_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let app = router(state(&dir).await);
        for i in 0..60 {
            let (s, _) = call(
                &app,
                Method::POST,
                "/users",
                Some(new_user(&format!("k-{i}"), &format!("kk{i}"))),
            )
            .await;
            assert_eq!(s, StatusCode::CREATED);
        }
    }
    // What a kill half-way leaves: the move recorded, some users copied and deleted, one copied
    // but not yet deleted from its old shard.
    let stores: Vec<SqlStore> = futures::future::join_all((0..4).map(|i| {
        let dir = &dir;
        async move { sqlite(dir, &format!("users-shard-{i}.sqlite")).await }
    }))
    .await;
    stores[0].save_layout(3, Some(4)).await.unwrap();
    let moving: Vec<Profile> = {
        let mut v = Vec::new();
        for (i, s) in stores[..3].iter().enumerate() {
            for p in s.list_after(None, 1000).await.unwrap() {
                if shard_of(&p.id, 4) != i as u32 {
                    v.push((i, p));
                }
            }
        }
        let half = v.len() / 2;
        for (i, p) in &v[..half] {
            stores[shard_of(&p.id, 4) as usize].upsert(p).await.unwrap();
            stores[*i].delete(&p.id).await.unwrap();
        }
        let (_, p) = &v[half];
        stores[shard_of(&p.id, 4) as usize].upsert(p).await.unwrap();
        v.into_iter().map(|(_, p)| p).collect()
    };
    assert!(moving.len() > 5, "some users must move: {}", moving.len());
    // The restart resumes the move by itself; reads work meanwhile.
    let app = router(state(&dir).await);
    for p in &moving {
        let (s, _) = call(&app, Method::GET, &format!("/users/{}", p.id), None).await;
        assert_eq!(s, 200);
    }
    wait_moved(&app, 4).await;
    let placed = placement(&dir, 4).await;
    assert_eq!(placed.len(), 60, "every user exactly once");
    assert!(
        placed
            .iter()
            .all(|(id, shard, _)| *shard == shard_of(id, 4))
    );
    // And the next start uses four shards.
    let app = router(state(&dir).await);
    let (_, report) = call(&app, Method::GET, "/shards", None).await;
    assert_eq!(report["shard_count"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebalancing_postgresql_shards_three_to_four() {
    let mut dbs = Vec::new();
    for i in 0..4 {
        let Some(db) = common::testing::fresh_postgres(&format!("users_move{i}")).await else {
            return;
        };
        dbs.push(db);
    }
    let listed = |n: usize| Config {
        shards: dbs[..n]
            .iter()
            .map(|d| crate::ShardConfig {
                url: d.url.clone(),
                replicas: vec![],
            })
            .collect(),
        ..Config::default()
    };
    let instance = || common::Instance::new("users", "users-1");
    // Three shards listed: users live on three.
    {
        let app = router(AppState::new(listed(3), instance()).await.unwrap());
        for i in 0..90 {
            let (s, b) = call(
                &app,
                Method::POST,
                "/users",
                Some(new_user(&format!("pm-{i}"), &format!("pm{i}"))),
            )
            .await;
            assert_eq!(s, StatusCode::CREATED, "{b}");
        }
        // A fourth shard that is not listed cannot be moved to.
        let (s, b) = call(&app, Method::POST, "/rebalance", Some(json!({"to": 4}))).await;
        assert_eq!(
            (s.as_u16(), b["error"].clone()),
            (400, json!("shards_not_listed"))
        );
    }
    // The operator lists a fourth database and restarts: the recorded count (3) still holds.
    let app = router(AppState::new(listed(4), instance()).await.unwrap());
    let (_, st) = call(&app, Method::GET, "/rebalance", None).await;
    assert_eq!(st["count"], 3, "{st}");
    let (s, st) = call(&app, Method::POST, "/rebalance", Some(json!({"to": 4}))).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{st}");
    wait_moved(&app, 4).await;
    let mut seen = std::collections::HashSet::new();
    for (i, db) in dbs.iter().enumerate() {
        let store = SqlStore::open(&db.url).await.unwrap();
        for p in store.list_after(None, 1000).await.unwrap() {
            assert_eq!(shard_of(&p.id, 4), i as u32, "{} on the wrong shard", p.id);
            assert!(seen.insert(p.id.clone()), "{} twice", p.id);
        }
    }
    assert_eq!(seen.len(), 90);
    let (s, p) = call(&app, Method::GET, "/users/by-username/pm7", None).await;
    assert_eq!((s.as_u16(), p["id"].clone()), (200, json!("pm-7")));
}

/// A point where a call waits, once armed, until the test lets it go.
#[derive(Debug, Default)]
struct Hold {
    armed: std::sync::atomic::AtomicBool,
    /// Notified when an armed call arrives.
    reached: tokio::sync::Notify,
    /// Notified by the test to let it go on.
    go: tokio::sync::Notify,
}

impl Hold {
    fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Waits here if armed (once).
    async fn pass(&self) {
        if self.armed.swap(false, Ordering::SeqCst) {
            self.reached.notify_one();
            self.go.notified().await;
        }
    }

    /// Waits until an armed call arrived (at most 30 s).
    async fn reached(&self, what: &str) {
        tokio::time::timeout(std::time::Duration::from_secs(30), self.reached.notified())
            .await
            .unwrap_or_else(|_| panic!("never reached: {what}"));
    }

    fn release(&self) {
        self.go.notify_one();
    }
}

/// A SQLite shard whose reads can hold the mover (or a request) at a chosen step: the mover's
/// pages of profiles and of username entries are read, then held, so that it goes on with what it
/// read before the test's writes; `get` of one id holds a request while it is inside the service.
#[derive(Debug)]
struct Holding {
    inner: SqlStore,
    /// The next `list_after` (the mover's page of profiles) returns its page after the hold.
    page: Hold,
    /// The next `usernames_after` (the mover's page of username entries) likewise.
    names: Hold,
    /// `get` of `held_id` waits before reading.
    get: Hold,
    held_id: std::sync::Mutex<String>,
}

#[async_trait]
impl ShardStore for Holding {
    fn engine(&self) -> &'static str {
        "sqlite"
    }
    async fn ping(&self) -> Result<(), Error> {
        self.inner.ping().await
    }
    async fn insert(&self, p: &Profile) -> Result<bool, Error> {
        self.inner.insert(p).await
    }
    async fn get(&self, id: &str) -> Result<Option<Profile>, Error> {
        let held = *self.held_id.lock().unwrap() == id;
        if held {
            self.get.pass().await;
        }
        self.inner.get(id).await
    }
    async fn update(&self, id: &str, c: &Changes) -> Result<Option<Profile>, Error> {
        self.inner.update(id, c).await
    }
    async fn delete(&self, id: &str) -> Result<bool, Error> {
        self.inner.delete(id).await
    }
    async fn list_after(&self, a: Option<&str>, l: u32) -> Result<Vec<Profile>, Error> {
        let page = self.inner.list_after(a, l).await;
        self.page.pass().await;
        page
    }
    async fn count(&self) -> Result<u64, Error> {
        self.inner.count().await
    }
    async fn claim_username(&self, u: &str, id: &str) -> Result<bool, Error> {
        self.inner.claim_username(u, id).await
    }
    async fn lookup_username(&self, u: &str) -> Result<Option<String>, Error> {
        self.inner.lookup_username(u).await
    }
    async fn release_username(&self, u: &str, id: &str) -> Result<(), Error> {
        self.inner.release_username(u, id).await
    }
    async fn upsert(&self, p: &Profile) -> Result<(), Error> {
        self.inner.upsert(p).await
    }
    async fn usernames_after(
        &self,
        a: Option<&str>,
        l: u32,
    ) -> Result<Vec<(String, String)>, Error> {
        let page = self.inner.usernames_after(a, l).await;
        self.names.pass().await;
        page
    }
    async fn put_username(&self, u: &str, id: &str) -> Result<(), Error> {
        self.inner.put_username(u, id).await
    }
    async fn load_layout(&self) -> Result<Option<(u32, Option<u32>)>, Error> {
        self.inner.load_layout().await
    }
    async fn save_layout(&self, count: u32, target: Option<u32>) -> Result<(), Error> {
        self.inner.save_layout(count, target).await
    }
}

/// A key (`{salt}-N`) that `shard_of` puts on `from` of 3 shards and on `to` of 4.
fn key_moving(from: u32, to: u32, salt: &str) -> String {
    (0..)
        .map(|i| format!("{salt}-{i}"))
        .find(|k| shard_of(k, 3) == from && shard_of(k, 4) == to)
        .unwrap()
}

/// Every username index entry on the first `n` shard files.
async fn index_entries(dir: &tempfile::TempDir, n: u32) -> Vec<(String, String, u32)> {
    let mut out = Vec::new();
    for i in 0..n {
        let store = sqlite(dir, &format!("users-shard-{i}.sqlite")).await;
        for (name, id) in store.usernames_after(None, 100_000).await.unwrap() {
            out.push((name, id, i));
        }
    }
    out
}

/// The embedded layout of `dir` on 3 shards with a fourth open, shard 1 a [`Holding`] one.
async fn held_layout(dir: &tempfile::TempDir) -> (axum::Router, Arc<Holding>) {
    let held = Arc::new(Holding {
        inner: sqlite(dir, "users-shard-1.sqlite").await,
        page: Hold::default(),
        names: Hold::default(),
        get: Hold::default(),
        held_id: std::sync::Mutex::new(String::new()),
    });
    let mut shards = Vec::new();
    for i in 0..4 {
        let store: Arc<dyn ShardStore> = if i == 1 {
            held.clone()
        } else {
            Arc::new(sqlite(dir, &format!("users-shard-{i}.sqlite")).await)
        };
        shards.push(Shard::new(store, vec![]));
    }
    let layout = crate::Layout {
        count: 3,
        target: None,
    };
    let config = Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    let state = AppState::with_shards(
        config,
        common::Instance::new("users", "users-1"),
        Shards::with_layout(shards, layout).unwrap(),
    )
    .unwrap();
    (router(state), held)
}

/// During a 3 -> 4 move: users deleted before or after the mover passed them, or while it holds
/// a page that lists them, stay deleted; a username freed and taken again mid-move has exactly
/// one index entry, the new holder's; a move to another count is refused until the move is over
/// (switch included), then accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebalance_with_deletes_and_name_reuse() {
    let dir = tempfile::tempdir().unwrap();
    let (app, held) = held_layout(&dir).await;
    let create = |id: String, name: String| {
        let app = app.clone();
        async move {
            let (s, b) = call(&app, Method::POST, "/users", Some(new_user(&id, &name))).await;
            assert_eq!(s, StatusCode::CREATED, "{b}");
        }
    };
    for i in 0..40 {
        create(format!("r-{i}"), format!("rr{i}")).await;
    }
    // d0 moves off shard 0, which the mover passes first; d1 is on shard 1, in the page the mover
    // holds; d2 moves off shard 2, not read yet; d_stay does not move.
    let d0 = key_moving(0, 3, "d0");
    let d1 = key_moving(1, 3, "d1");
    let d2 = key_moving(2, 3, "d2");
    let d_stay = key_moving(1, 1, "ds");
    for id in [&d0, &d1, &d2, &d_stay] {
        create(id.clone(), format!("n{id}")).await;
    }
    // The name `reused` is indexed on shard 1 and moves to shard 3; its first holder's profile
    // stays on shard 2.
    let reused = key_moving(1, 3, "name");
    let (first, second) = (key_moving(2, 2, "first"), key_moving(0, 0, "second"));
    create(first.clone(), reused.clone()).await;
    // A user on shard 1 that stays: reading it will hold a request inside the service.
    let keep = key_moving(1, 1, "keep");
    create(keep.clone(), "keeper".into()).await;

    held.page.arm();
    held.names.arm();
    let (s, st) = call(&app, Method::POST, "/rebalance", Some(json!({"to": 4}))).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{st}");
    held.page.reached("the mover's page of shard 1").await;

    // Mid-move: another target is refused, the same one joins.
    let (s, b) = call(&app, Method::POST, "/rebalance", Some(json!({"to": 5}))).await;
    assert_eq!(
        (s.as_u16(), b["error"].clone()),
        (400, json!("move_in_progress"))
    );
    let (s, _) = call(&app, Method::POST, "/rebalance", Some(json!({"to": 4}))).await;
    assert_eq!(s, StatusCode::ACCEPTED);

    for id in [&d0, &d1, &d2, &d_stay] {
        let (s, b) = call(&app, Method::DELETE, &format!("/users/{id}"), None).await;
        assert_eq!(s, 200, "{id}: {b}");
        let (s, _) = call(&app, Method::GET, &format!("/users/{id}"), None).await;
        assert_eq!(s, 404, "{id} deleted");
    }
    held.page.release();
    held.names
        .reached("the mover's page of shard 1's usernames")
        .await;

    // The name is freed and taken again while the mover holds a page that lists its old entry.
    let (s, _) = call(&app, Method::DELETE, &format!("/users/{first}"), None).await;
    assert_eq!(s, 200);
    create(second.clone(), reused.clone()).await;
    let (s, p) = call(
        &app,
        Method::GET,
        &format!("/users/by-username/{reused}"),
        None,
    )
    .await;
    assert_eq!((s.as_u16(), p["id"].clone()), (200, json!(second)));

    // A read inside the service when the mover switches to 4 shards: the mover waits for it
    // (drain) before the move is over.
    *held.held_id.lock().unwrap() = keep.clone();
    held.get.arm();
    let reader = {
        let app = app.clone();
        let keep = keep.clone();
        tokio::spawn(async move { call(&app, Method::GET, &format!("/users/{keep}"), None).await })
    };
    held.get.reached("the held read").await;
    held.names.release();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, st) = call(&app, Method::GET, "/rebalance", None).await;
        if st["count"] == 4 && st["target"].is_null() {
            assert_eq!(st["moving"], true, "the mover waits for the held read");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the switch never came: {st}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // Switched but not over: still refused.
    let (s, b) = call(&app, Method::POST, "/rebalance", Some(json!({"to": 5}))).await;
    assert_eq!(
        (s.as_u16(), b["error"].clone()),
        (400, json!("move_in_progress")),
        "a move accepted while the previous one finishes never runs"
    );
    held.get.release();
    let (s, p) = reader.await.unwrap();
    assert_eq!((s.as_u16(), p["id"].clone()), (200, json!(keep)));
    wait_moved(&app, 4).await;

    // Deleted users did not come back, anywhere; everyone else is on their shard, once.
    let gone = [&d0, &d1, &d2, &d_stay, &first];
    let placed = placement(&dir, 4).await;
    let ids: Vec<&str> = placed.iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(ids.len(), 40 + 2, "{ids:?}");
    for (id, shard, _) in &placed {
        assert!(!gone.contains(&id), "{id} came back");
        assert_eq!(*shard, shard_of(id, 4), "{id} on the wrong shard");
    }
    for id in gone {
        let (s, _) = call(&app, Method::GET, &format!("/users/{id}"), None).await;
        assert_eq!(s, 404, "{id}");
    }
    // One index entry per username, on its shard, naming a user who exists: the reused name
    // once, for its second holder; the deleted users' names nowhere.
    let entries = index_entries(&dir, 4).await;
    let reused_entries: Vec<_> = entries.iter().filter(|(n, _, _)| *n == reused).collect();
    assert_eq!(
        reused_entries,
        [&(reused.clone(), second.clone(), shard_of(&reused, 4))]
    );
    assert_eq!(entries.len(), placed.len(), "{entries:?}");
    for (name, id, shard) in &entries {
        assert_eq!(
            *shard,
            shard_of(name, 4),
            "{name} indexed on the wrong shard"
        );
        assert!(placed.iter().any(|(p, _, _)| p == id), "{name} -> {id}");
    }
    let (s, _) = call(
        &app,
        Method::POST,
        "/users",
        Some(new_user("third", &reused)),
    )
    .await;
    assert_eq!(s.as_u16(), 409, "the reused name is taken");

    // Once the move is over, the next one is accepted and runs.
    let (s, st) = call(&app, Method::POST, "/rebalance", Some(json!({"to": 5}))).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{st}");
    wait_moved(&app, 5).await;
    let placed = placement(&dir, 5).await;
    assert_eq!(placed.len(), 42);
    assert!(
        placed
            .iter()
            .all(|(id, shard, _)| *shard == shard_of(id, 5))
    );
}

/// Two moves to different counts asked at the same moment: one starts, the other is refused,
/// and the layout names the one that runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_moves_asked_at_once_start_one() {
    let dir = tempfile::tempdir().unwrap();
    let app = router(state(&dir).await);
    for i in 0..30 {
        let (s, _) = call(
            &app,
            Method::POST,
            "/users",
            Some(new_user(&format!("t-{i}"), &format!("tt{i}"))),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED);
    }
    let ((s4, b4), (s5, b5)) = tokio::join!(
        call(&app, Method::POST, "/rebalance", Some(json!({"to": 4}))),
        call(&app, Method::POST, "/rebalance", Some(json!({"to": 5}))),
    );
    let (to, refused) = match (s4.as_u16(), s5.as_u16()) {
        (202, 400) => (4, b5),
        (400, 202) => (5, b4),
        other => panic!("both or neither started: {other:?} {b4} {b5}"),
    };
    assert_eq!(refused["error"], "move_in_progress");
    wait_moved(&app, to).await;
    let placed = placement(&dir, 5).await;
    assert_eq!(placed.len(), 30, "every user once");
    assert!(
        placed
            .iter()
            .all(|(id, shard, _)| *shard == shard_of(id, to))
    );
}
