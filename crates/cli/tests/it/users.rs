//! End to end: the users service behind the real `scalelab up`, driven through the balancer.
//!
//! `SCALELAB_E2E_USERS` sets how many users the bulk test registers (default 1,000, the issue's
//! number); lower it for a quick run.

use std::collections::HashSet;

use e2e::{Running, Topology};
use futures::StreamExt;
use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::support::{self, send};

fn topology() -> Topology {
    Topology::new()
        .program(env!("CARGO_BIN_EXE_scalelab"))
        .counts("users", 1)
        // Low argon2 cost keeps a thousand registrations and logins quick; logins are not rate
        // limited here because every client of this test has the same IP.
        .toml_extra(
            "[auth]\nargon2_memory_kib = 1024\nargon2_iterations = 1\nmax_concurrent_hashes = 4\n",
        )
        .toml_extra("[gateway.rate_limit]\nlogin_per_minute = 0\n")
        .toml_extra("[db]\nlatency_ms = 0\njitter_ms = 0\nseed_records = 1\n")
}

struct Client<'a> {
    sys: &'a Running,
}

impl Client<'_> {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sys.lb_url())
    }

    async fn register(&self, body: Value) -> (u16, Value) {
        let (s, _, b) = send(self.sys.client().post(self.url("/register")).json(&body)).await;
        (s, b)
    }

    async fn login(&self, user: &str, password: &str) -> (u16, Value) {
        let (s, _, b) = support::login(self.sys, user, password).await;
        (s, b)
    }

    async fn token(&self, user: &str, password: &str) -> String {
        let (s, b) = self.login(user, password).await;
        assert_eq!(s, 200, "login {user}: {b}");
        b["token"].as_str().expect("token").to_string()
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut req = self
            .sys
            .client()
            .request(method, self.url(path))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        send(req).await
    }
}

fn user_body(name: &str) -> Value {
    json!({"username": name, "password": format!("{name}-password"),
           "email": format!("{name}@example.org"), "first_name": "First", "last_name": "Last"})
}

fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"], want_code, "{body}");
    assert!(body["message"].is_string(), "{body}");
}

/// The shipped distributed file (PostgreSQL for auth, db and each users shard; Redis for the
/// gateways), minus the ports and data directory the harness picks, on fresh databases.
async fn distributed() -> Option<(Topology, Vec<common::testing::TestDb>)> {
    let mut dbs = Vec::new();
    for name in [
        "e2e_users_auth",
        "e2e_users_db",
        "e2e_users_s0",
        "e2e_users_s1",
        "e2e_users_s2",
    ] {
        dbs.push(common::testing::fresh_postgres(name).await?);
    }
    let prefix = common::testing::fresh_redis_prefix().await?;
    let shipped = include_str!("../../../../scalelab.distributed.toml");
    let mut file: toml::Table = toml::from_str(shipped).unwrap();
    file.remove("instances");
    file.remove("data_dir");
    // Only what this test needs: the other roles' sections may name databases it did not make.
    file.retain(|k, _| ["gateway", "auth", "db", "users"].iter().any(|r| **r == *k));
    let shards: Vec<String> = dbs[2..]
        .iter()
        .map(|d| format!("[[users.shards]]\nurl = \"{}\"\n", d.url))
        .collect();
    let topo = topology()
        .toml_extra(&toml::to_string(&file).unwrap())
        .toml_extra(&format!(
            "[auth]\ndatabase_url = \"{}\"\n[db]\ndatabase_url = \"{}\"\n\
             [gateway]\nredis_url = \"{}\"\nredis_prefix = \"{prefix}\"\n",
            dbs[0].url,
            dbs[1].url,
            common::testing::redis_url(),
        ))
        // Arrays of tables are replaced whole by the merge, so the shipped shards go.
        .toml_extra(&format!("[users]\n{}", "shards = []\n"))
        .toml_extra(&shards.concat());
    Some((topo, dbs))
}

fn bulk_count() -> usize {
    std::env::var("SCALELAB_E2E_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_users_register_log_in_and_read_their_profile() {
    many_users(topology(), bulk_count()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_users_on_postgresql_shards() {
    let Some((topo, _dbs)) = distributed().await else {
        return;
    };
    many_users(topo, bulk_count()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_bad_input_caching_and_undo() {
    roles_and_bad_input(topology()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_bad_input_caching_and_undo_on_postgresql_shards() {
    let Some((topo, _dbs)) = distributed().await else {
        return;
    };
    roles_and_bad_input(topo).await;
}

/// Runs SQL on the test server's admin database (what `common::testing` connects to).
fn psql(sql: &str) {
    let out = std::process::Command::new("psql")
        .arg(common::testing::pg_admin_url())
        .args(["-q", "-c", sql])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_down_fails_only_its_own_users() {
    let Some((topo, dbs)) = distributed().await else {
        return;
    };
    let sys = topo.start().await.expect("scalelab up");
    let c = Client { sys: &sys };
    // Users until each shard has one (ids are random UUIDs chosen by auth).
    let mut by_shard: [Option<(String, String)>; 3] = [None, None, None];
    for i in 0.. {
        if by_shard.iter().all(Option::is_some) {
            break;
        }
        let name = format!("sd{i}");
        let (s, b) = c.register(user_body(&name)).await;
        assert_eq!(s, 201, "{b}");
        let shard = users::placement::shard_of(b["id"].as_str().unwrap(), 3) as usize;
        let token = c.token(&name, &format!("{name}-password")).await;
        by_shard[shard].get_or_insert((name, token));
    }
    let down = dbs[3].url.rsplit('/').next().unwrap().to_string();
    psql(&format!(
        "ALTER DATABASE \"{down}\" WITH ALLOW_CONNECTIONS false"
    ));
    psql(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{down}'"
    ));
    for (shard, entry) in by_shard.iter().enumerate() {
        let (name, token) = entry.as_ref().unwrap();
        let (s, _, b) = c.call(reqwest::Method::GET, "/users/me", token, None).await;
        if shard == 1 {
            assert_error(s, &b, 503, "shard_unavailable");
            assert!(b["message"].as_str().unwrap().contains("shard 1"), "{b}");
        } else {
            assert_eq!(s, 200, "{name} on shard {shard}: {b}");
        }
    }
    psql(&format!(
        "ALTER DATABASE \"{down}\" WITH ALLOW_CONNECTIONS true"
    ));
    let (_, token) = by_shard[1].as_ref().unwrap();
    let (s, _, b) = c.call(reqwest::Method::GET, "/users/me", token, None).await;
    assert_eq!(s, 200, "shard 1 is back: {b}");
    sys.stop().await.unwrap();
}

async fn many_users(topo: Topology, n: usize) {
    let sys = topo.start().await.expect("scalelab up");
    let c = Client { sys: &sys };

    let started = std::time::Instant::now();
    let ids: Vec<(String, String)> = futures::stream::iter(0..n)
        .map(|i| {
            let c = &c;
            async move {
                let name = format!("bulk{i:04}");
                let (s, b) = c.register(user_body(&name)).await;
                assert_eq!(s, 201, "register {name}: {b}");
                assert_eq!(b["profile"]["id"], b["id"], "{b}");
                assert_eq!(b["profile"]["email"], format!("{name}@example.org"));
                (name, b["id"].as_str().expect("id").to_string())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let registered = started.elapsed();

    let started = std::time::Instant::now();
    futures::stream::iter(ids.iter())
        .map(|(name, id)| {
            let c = &c;
            async move {
                let token = c.token(name, &format!("{name}-password")).await;
                let (s, _, me) = c
                    .call(reqwest::Method::GET, "/users/me", &token, None)
                    .await;
                assert_eq!(s, 200, "{name}: {me}");
                assert_eq!((&me["id"], &me["username"]), (&json!(id), &json!(name)));
                assert_eq!(me["role"], "user");
            }
        })
        .buffer_unordered(16)
        .for_each(|()| async {})
        .await;
    eprintln!(
        "{n} users: registered in {:.1} s, logged in and read /users/me in {:.1} s",
        registered.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );

    // Every shard holds users, and together exactly the ones registered (the bootstrap admin has
    // an account but no profile).
    let shards: Value = sys
        .client()
        .get(format!("{}/shards", sys.url("users", 1)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shards["shard_count"], 3, "{shards}");
    let counts: Vec<u64> = shards["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["users"].as_u64().expect("a count"))
        .collect();
    assert_eq!(counts.iter().sum::<u64>(), n as u64, "{shards}");
    assert!(counts.iter().all(|c| *c > 0), "a shard is unused: {shards}");
    eprintln!("users per shard: {counts:?}");

    // The admin pages through all of them, in id order, each exactly once.
    let admin = sys.admin_token().await.unwrap();
    let mut seen = Vec::new();
    let mut path = "/users?limit=100".to_string();
    loop {
        let (s, _, page) = c.call(reqwest::Method::GET, &path, &admin, None).await;
        assert_eq!(s, 200, "{page}");
        seen.extend(
            page["users"]
                .as_array()
                .unwrap()
                .iter()
                .map(|u| u["id"].as_str().unwrap().to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/users?limit=100&after={cursor}"),
            None => break,
        }
    }
    let mut want: Vec<String> = ids.iter().map(|(_, id)| id.clone()).collect();
    want.sort();
    assert_eq!(seen, want);

    // `scalelab shards plan --to 4` reads the same shards: about a quarter move under jump hash,
    // all of them to the new shard; about three quarters would under `hash % n`.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scalelab"))
        .args(["shards", "plan", "--to", "4", "--config"])
        .arg(sys.config_path())
        .arg("--data-dir")
        .arg(sys.data_dir())
        .output()
        .expect("scalelab shards plan");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("$ scalelab shards plan --to 4\n{text}");
    assert!(
        text.starts_with(&format!("{n} users, 3 -> 4 shards")),
        "{text}"
    );
    for line in text
        .lines()
        .filter(|l| l.contains(" -> ") && !l.contains("shards"))
    {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // "a -> b  jump  modulo": jump hash only ever moves users to the new shard 3.
        assert!(fields[3] == "0" || fields[2] == "3", "{line}");
    }
    let total = text
        .lines()
        .find(|l| l.starts_with("total"))
        .expect("a total line");
    let numbers: Vec<f64> = total
        .split_whitespace()
        .filter_map(|w| {
            w.trim_matches(|c| c == '(' || c == ')' || c == '%')
                .parse()
                .ok()
        })
        .collect();
    // [jump moved, jump %, modulo moved, modulo %]
    if n >= 500 {
        assert!((18.0..32.0).contains(&numbers[1]), "{total}");
        assert!(numbers[3] > 60.0, "{total}");
    }
    sys.stop().await.unwrap();
}

async fn roles_and_bad_input(topo: Topology) {
    let sys = topo.start().await.expect("scalelab up");
    let c = Client { sys: &sys };
    use reqwest::Method as M;

    // The lab's registration (no profile fields) still works; the profile has nulls.
    let (s, b) = c
        .register(json!({"username": "alice", "password": "correct horse battery"}))
        .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["profile"]["email"], Value::Null);
    let alice = c.token("alice", "correct horse battery").await;
    let (s, _, me) = c.call(M::GET, "/getUserData", &alice, None).await;
    assert_eq!((s, me["username"].clone()), (200, json!("alice")));
    let alice_id = me["id"].as_str().unwrap().to_string();

    let (s, b) = c.register(user_body("bob")).await;
    assert_eq!(s, 201, "{b}");
    let bob_id = b["id"].as_str().unwrap().to_string();
    let bob = c.token("bob", "bob-password").await;
    let admin = sys.admin_token().await.unwrap();

    // Role matrix.
    for (token, method, path, body, want) in [
        (&bob, M::GET, "/users".to_string(), None, 403),
        (&bob, M::GET, format!("/users/{alice_id}"), None, 403),
        (&bob, M::GET, format!("/users/{bob_id}"), None, 200),
        (
            &bob,
            M::PATCH,
            format!("/users/{alice_id}/role"),
            Some(json!({"role": "admin"})),
            403,
        ),
        (
            &bob,
            M::PATCH,
            "/users/me".to_string(),
            Some(json!({"role": "admin"})),
            403,
        ),
        (&bob, M::GET, "/cache/stats".to_string(), None, 403),
        (&admin, M::GET, "/users".to_string(), None, 200),
        (&admin, M::GET, format!("/users/{alice_id}"), None, 200),
        (&admin, M::GET, "/cache/stats".to_string(), None, 200),
    ] {
        let (s, _, b) = c.call(method.clone(), &path, token, body).await;
        assert_eq!(s, want, "{method} {path}: {b}");
        if want == 403 {
            assert_eq!(b["error"], "forbidden");
            assert!(b["message"].as_str().unwrap().contains("admin"), "{b}");
        }
    }
    let (s, _, _) = c.call(M::GET, "/users/me", "not-a-token", None).await;
    assert_eq!(s, 401);

    // Cache-aside on GET /users/{id}, invalidated by the user's own update.
    // (The role matrix above already read bob's profile once: it is cached.)
    let path = format!("/users/{bob_id}");
    let (_, h, _) = c.call(M::GET, &path, &admin, None).await;
    assert_eq!(h["x-cache"], "HIT");
    let (_, h, _) = c.call(M::GET, &path, &admin, None).await;
    assert_eq!(h["x-cache"], "HIT");
    let (s, _, up) = c
        .call(
            M::PATCH,
            "/users/me",
            &bob,
            Some(json!({"first_name": "Robert"})),
        )
        .await;
    assert_eq!((s, up["first_name"].clone()), (200, json!("Robert")));
    let (_, h, b) = c.call(M::GET, &path, &admin, None).await;
    assert_eq!(
        (h["x-cache"].to_str().unwrap(), b["first_name"].clone()),
        ("MISS", json!("Robert"))
    );

    // An admin makes bob an admin: in his profile at once, in his token from his next login.
    let (s, _, b) = c
        .call(
            M::PATCH,
            &format!("/users/{bob_id}/role"),
            &admin,
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let (_, h, b) = c.call(M::GET, &path, &admin, None).await;
    assert_eq!(
        (h["x-cache"].to_str().unwrap(), b["role"].clone()),
        ("MISS", json!("admin"))
    );
    let (s, _, _) = c.call(M::GET, "/users", &bob, None).await;
    assert_eq!(s, 403, "the old token keeps its roles");
    let bob = c.token("bob", "bob-password").await;
    let (s, _, _) = c.call(M::GET, "/users", &bob, None).await;
    assert_eq!(s, 200, "the new token carries admin");

    // Bad input.
    let (s, b) = c.register(user_body("bob")).await;
    assert_error(s, &b, 409, "username_taken");
    let long = "x".repeat(101);
    for (body, code) in [
        (
            json!({"username": "carol", "password": "carol-password", "email": "carol"}),
            "invalid_email",
        ),
        (
            json!({"username": "carol", "password": "carol-password", "first_name": ""}),
            "invalid_name",
        ),
        (
            json!({"username": "carol", "password": "carol-password", "last_name": long}),
            "invalid_name",
        ),
        (
            json!({"username": "carol", "password": "short"}),
            "weak_password",
        ),
        (
            json!({"username": "c", "password": "carol-password"}),
            "invalid_username",
        ),
    ] {
        let (s, b) = c.register(body.clone()).await;
        assert_error(s, &b, 400, code);
    }
    // None of those left an account behind.
    assert_eq!(c.login("carol", "carol-password").await.0, 401);
    let (s, _, b) = c
        .call(
            M::PATCH,
            "/users/me",
            &bob,
            Some(json!({"email": "no-at-sign"})),
        )
        .await;
    assert_error(s, &b, 400, "invalid_email");
    let (s, _, b) = c.call(M::GET, "/users/no-such-id", &admin, None).await;
    assert_error(s, &b, 404, "not_found");

    let sql = "Robert'); DROP TABLE profiles;--";
    let html = "<script>alert('x')</script><b>bold</b>";
    let (s, b) = c
        .register(json!({"username": "dave", "password": "dave-password",
                         "first_name": sql, "last_name": html, "email": "d@example.org"}))
        .await;
    assert_eq!(s, 201, "{b}");
    let dave = c.token("dave", "dave-password").await;
    let (_, h, me) = c.call(M::GET, "/users/me", &dave, None).await;
    assert_eq!(
        (me["first_name"].as_str(), me["last_name"].as_str()),
        (Some(sql), Some(html))
    );
    assert!(
        h["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );

    // No half-registered user: with users frozen, registration fails and the account is undone.
    let pid = sys.kill("users-1", Signal::SIGSTOP).unwrap();
    let (s, b) = c.register(user_body("erin")).await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGCONT).unwrap();
    assert_error(s, &b, 503, "registration_failed");
    assert_eq!(
        c.login("erin", "erin-password").await.0,
        401,
        "the account was undone"
    );
    // A retry works once users is back (the gateway deletes a profile that users wrote late,
    // after the gateway had given up on it; until then the name may still be taken).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(45);
    loop {
        let (s, b) = c.register(user_body("erin")).await;
        if s == 201 {
            break;
        }
        assert_error(s, &b, 409, "username_taken");
        assert!(
            std::time::Instant::now() < deadline,
            "erin never registered: {b}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert_eq!(c.login("erin", "erin-password").await.0, 200);

    // DELETE /users/me removes the user from both services.
    let (s, _, b) = c.call(M::DELETE, "/users/me", &dave, None).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(c.login("dave", "dave-password").await.0, 401);
    let (s, _, _) = c
        .call(
            M::GET,
            &format!("/users/{}", me["id"].as_str().unwrap()),
            &admin,
            None,
        )
        .await;
    assert_eq!(s, 404);
    let (s, b) = c.register(user_body("dave")).await;
    assert_eq!(s, 201, "the name is free again: {b}");

    let served: HashSet<String> = sys.ids_of("users").into_iter().collect();
    assert_eq!(served.len(), 1);
    sys.stop().await.unwrap();
}

/// What the load knows of one user's `last_name`: the last value acknowledged, and the values
/// sent since whose outcome is unknown (their request failed while users restarted).
#[derive(Debug, Clone, Default)]
struct Written {
    acked: Option<String>,
    unsure: Vec<String>,
}

/// Where the shards of a rebalancing test live, and how the fourth one comes to exist.
enum MoveLayout {
    /// The embedded layout: SQLite files `<data_dir>/users-shard-<n>.sqlite`, named by number,
    /// so the fourth needs nothing listed.
    Embedded,
    /// PostgreSQL databases: `listed` are the three in `[[users.shards]]` at start; `fourth` is
    /// added to the layout (as an operator would) before the move.
    Distributed { listed: Vec<String>, fourth: String },
}

impl MoveLayout {
    /// The primary of shard `n`, as `users::SqlStore::open` takes it.
    fn shard_url(&self, sys: &Running, n: usize) -> String {
        match self {
            MoveLayout::Embedded => format!(
                "sqlite:{}",
                sys.data_dir()
                    .join(format!("users-shard-{n}.sqlite"))
                    .display()
            ),
            MoveLayout::Distributed { listed, fourth } => listed.get(n).unwrap_or(fourth).clone(),
        }
    }

    /// What an operator does before moving to a fourth PostgreSQL shard: list its database in
    /// the topology and restart users. The recorded count (3) still holds until the move; the
    /// children of `scalelab up` read `<data_dir>/topology.effective.toml`, so that is the file
    /// edited here.
    async fn prepare_fourth(&self, sys: &Running) {
        let MoveLayout::Distributed { fourth, .. } = self else {
            return;
        };
        let path = sys.data_dir().join("topology.effective.toml");
        let mut file: toml::Table = toml::from_str(&std::fs::read_to_string(&path).unwrap())
            .expect("the effective topology");
        let users = file
            .get_mut("users")
            .and_then(toml::Value::as_table_mut)
            .expect("[users]");
        let shards = users
            .get_mut("shards")
            .and_then(toml::Value::as_array_mut)
            .expect("[[users.shards]]");
        assert_eq!(shards.len(), 3, "{shards:?}");
        let mut entry = toml::Table::new();
        entry.insert("url".into(), toml::Value::String(fourth.clone()));
        shards.push(toml::Value::Table(entry));
        std::fs::write(&path, toml::to_string(&file).unwrap()).unwrap();
        let old = sys.kill("users-1", Signal::SIGKILL).unwrap();
        sys.wait_restarted("users-1", old).await.unwrap();
        let status: Value = sys
            .client()
            .get(format!("{}/rebalance", sys.url("users", 1)))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            (&status["count"], &status["target"]),
            (&json!(3), &Value::Null),
            "listing a fourth database does not move anyone yet: {status}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebalancing_three_to_four_under_load_survives_a_kill() {
    rebalance_under_load_with_a_kill(topology(), MoveLayout::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebalancing_three_to_four_on_postgresql_under_load_survives_a_kill() {
    let Some((topo, mut dbs)) = distributed().await else {
        return;
    };
    let Some(fourth) = common::testing::fresh_postgres("e2e_users_s3").await else {
        return;
    };
    let layout = MoveLayout::Distributed {
        listed: dbs[2..].iter().map(|d| d.url.clone()).collect(),
        fourth: fourth.url.clone(),
    };
    // Dropped (and their databases with them) only after the test.
    dbs.push(fourth);
    rebalance_under_load_with_a_kill(topo, layout).await;
    drop(dbs);
}

/// Polls `condition` until it holds; fails the test naming `what` after 60 s.
async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Registers 300 users, moves them from 3 to 4 shards while they update their profiles, kills
/// users at once, lets the supervisor restart it and `scalelab shards rebalance` finish, then
/// reads every shard of `layout` directly.
async fn rebalance_under_load_with_a_kill(topo: Topology, layout: MoveLayout) {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let sys = topo.start().await.expect("scalelab up");
    let c = Client { sys: &sys };
    let n = 300;
    let mut people = Vec::new();
    for i in 0..n {
        let name = format!("mv{i:03}");
        let (s, b) = c.register(user_body(&name)).await;
        assert_eq!(s, 201, "{b}");
        let token = c.token(&name, &format!("{name}-password")).await;
        people.push((name, b["id"].as_str().unwrap().to_string(), token));
    }
    layout.prepare_fourth(&sys).await;

    // Load: every user rewrites their last name and reads it back, round after round.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let written: Arc<Mutex<HashMap<String, Written>>> = Arc::default();
    let load = {
        let (stop, written, people, acked) =
            (stop.clone(), written.clone(), people.clone(), acked.clone());
        let (http, lb) = (sys.client().clone(), sys.lb_url());
        tokio::spawn(async move {
            let mut round = 0;
            while !stop.load(Ordering::SeqCst) {
                round += 1;
                for (_, id, token) in &people {
                    let value = format!("r{round}");
                    let r = http
                        .patch(format!("{lb}/users/me"))
                        .bearer_auth(token)
                        .json(&json!({ "last_name": value }))
                        .send()
                        .await;
                    let mut w = written.lock().unwrap();
                    // Before any update, the last name is the one given at registration.
                    let entry = w.entry(id.clone()).or_insert_with(|| Written {
                        acked: Some("Last".into()),
                        unsure: Vec::new(),
                    });
                    match r {
                        Ok(r) if r.status() == 200 => {
                            acked.fetch_add(1, Ordering::SeqCst);
                            entry.acked = Some(value);
                            entry.unsure.clear();
                        }
                        Ok(r) if r.status().is_client_error() => panic!("{}", r.status()),
                        _ => entry.unsure.push(value),
                    }
                }
            }
            round
        })
    };

    // Start the move on the service itself once the load runs, kill the service at once
    // (half-way), and let the supervisor restart it; then `scalelab shards rebalance` (the rerun)
    // follows it to the end.
    let users_url = sys.url("users", 1);
    let load_ran = |at_least: u64| {
        let acked = acked.clone();
        move || acked.load(Ordering::SeqCst) >= at_least
    };
    wait_until("the first acknowledged update", load_ran(1)).await;
    let r = sys
        .client()
        .post(format!("{users_url}/rebalance"))
        .json(&json!({"to": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let acked_at_start = acked.load(Ordering::SeqCst);
    let old = sys.kill("users-1", Signal::SIGKILL).unwrap();
    sys.wait_restarted("users-1", old).await.unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_scalelab"))
        .args([
            "shards",
            "rebalance",
            "--to",
            "4",
            "--timeout-secs",
            "120",
            "--config",
        ])
        .arg(sys.config_path())
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    eprintln!("$ scalelab shards rebalance --to 4\n{text}");
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("done: users are on 4 shards"), "{text}");
    if matches!(layout, MoveLayout::Embedded) {
        // The topology file now says what every instance uses.
        let file: toml::Table =
            toml::from_str(&std::fs::read_to_string(sys.config_path()).unwrap()).unwrap();
        assert_eq!(file["users"]["shard_count"].as_integer(), Some(4), "{text}");
    }
    let acked_during = acked.load(Ordering::SeqCst) - acked_at_start;
    // The restarted instance found the move recorded and resumed it (its log line may reach
    // `up`'s output after its health check answered).
    sys.wait_log("resuming an unfinished rebalance")
        .await
        .expect("the kill interrupted the move, and the restart resumed it");
    eprintln!("{acked_during} updates acknowledged between the start of the move and its end");
    assert!(acked_during > 0, "the load must overlap the move");

    // Another round of updates on the new layout, then stop the load.
    let after_move = acked.load(Ordering::SeqCst);
    wait_until(
        "a round of updates after the move",
        load_ran(after_move + n as u64),
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let rounds = load.await.unwrap();
    eprintln!("{rounds} rounds of updates in all");

    // Every user exactly once, on the shard the new layout names, with their latest data.
    let mut found: HashMap<String, (u32, Option<String>)> = HashMap::new();
    for shard in 0..4 {
        let url = layout.shard_url(&sys, shard as usize);
        let store = users::SqlStore::open(&url).await.unwrap();
        use users::ShardStore as _;
        for p in store.list_after(None, 100_000).await.unwrap() {
            let again = found.insert(p.id.clone(), (shard, p.last_name.clone()));
            assert!(again.is_none(), "{} is on two shards", p.id);
        }
    }
    assert_eq!(found.len(), n, "users lost or added");
    let written = written.lock().unwrap().clone();
    let registered = Written {
        acked: Some("Last".into()),
        unsure: Vec::new(),
    };
    for (name, id, _) in &people {
        let (shard, last) = &found[id];
        assert_eq!(
            *shard,
            users::placement::shard_of(id, 4),
            "{name} on the wrong shard"
        );
        let w = written.get(id).unwrap_or(&registered);
        let ok = last == &w.acked || last.as_ref().is_some_and(|l| w.unsure.contains(l));
        assert!(ok, "{name}: stored {last:?}, written {w:?}");
    }
    let shards: Value = sys
        .client()
        .get(format!("{users_url}/shards"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shards["shard_count"], 4, "{shards}");
    eprintln!(
        "users per shard after the move: {}",
        shards["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["users"].to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (name, id, token) in people.iter().take(20) {
        let (s, _, me) = c.call(reqwest::Method::GET, "/users/me", token, None).await;
        assert_eq!((s, me["id"].as_str()), (200, Some(id.as_str())), "{name}");
    }
    sys.stop().await.unwrap();
}
