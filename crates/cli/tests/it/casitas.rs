//! End to end (issue 8): `scalelab up --preset casitas`, the rental-management system, through the
//! balancer: its routes and roles, cached listings invalidated by writes, reports that aggregate
//! the real rows, report priorities, the balancer's edge rules; once on the embedded engines and
//! once on PostgreSQL and Redis.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use e2e::{Running, Topology};
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{login, send};

/// The preset on the embedded engines, one instance of each domain, one worker of `slots` slots.
fn casitas(slots: usize) -> Topology {
    Topology::new()
        .program(env!("CARGO_BIN_EXE_scalelab"))
        .preset("casitas")
        .counts("units", 1)
        .counts("finances", 1)
        .counts("legal", 1)
        .counts("users", 1)
        .counts("worker", 1)
        .toml_extra("[auth]\nargon2_memory_kib = 1024\nargon2_iterations = 1\n")
        .toml_extra("[gateway.rate_limit]\nlogin_per_minute = 100\n")
        .toml_extra("[db]\nlatency_ms = 0\njitter_ms = 0\nseed_records = 10\n")
        .toml_extra(&format!(
            "[worker]\nconcurrency = {slots}\npoll_ms = 20\n\
             [units]\nlatency_ms = 5\n[finances]\nlatency_ms = 5\n[legal]\nlatency_ms = 5\n"
        ))
}

/// One call through the balancer: status, `X-Cache` (or `""`) and the JSON body.
async fn call(
    sys: &Running,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, String, Value) {
    let mut req = sys
        .client()
        .request(method, format!("{}{path}", sys.lb_url()));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let (status, headers, body) = send(req).await;
    let cache = headers
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (status, cache, body)
}

async fn get(sys: &Running, path: &str, token: Option<&str>) -> (u16, String, Value) {
    call(sys, Method::GET, path, token, None).await
}

/// Registers `name`, gives it `role` as the admin does (`PATCH /users/{id}/role`), and logs in
/// again so that the token carries the role.
async fn staff(sys: &Running, admin: &str, name: &str, role: &str) -> String {
    let password = "a long enough password";
    let (status, _, body) = call(
        sys,
        Method::POST,
        "/register",
        None,
        Some(json!({"username": name, "password": password})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().expect("an id").to_string();
    let (status, _, body) = call(
        sys,
        Method::PATCH,
        &format!("/users/{id}/role"),
        Some(admin),
        Some(json!({"role": role})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = login(sys, name, password).await;
    assert_eq!(status, 200, "{body}");
    body["token"].as_str().expect("a token").to_string()
}

/// Polls `GET /tasks/{id}` until the task is finished; its last state.
async fn finished(sys: &Running, token: &str, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, _, task) = get(sys, &format!("/tasks/{id}"), Some(token)).await;
        assert_eq!(status, 200, "{task}");
        if ["succeeded", "failed", "dead", "cancelled"]
            .contains(&task["status"].as_str().unwrap_or(""))
        {
            return task;
        }
        assert!(
            Instant::now() < deadline,
            "task {id} never finished: {task}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client whose requests leave from `ip` (any 127/8 address is this machine's loopback).
fn client_from(ip: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::from(ip)))
        .build()
        .expect("client")
}

/// Totals per unit and month of `rows`, computed here from the listing (the report must match).
fn totals(rows: &[Value]) -> BTreeMap<(i64, String), (u64, i64, i64)> {
    let mut by = BTreeMap::new();
    for t in rows {
        let amount = t["amount_cents"].as_i64().unwrap();
        let cell = by
            .entry((
                t["unit_id"].as_i64().unwrap(),
                t["month"].as_str().unwrap().to_string(),
            ))
            .or_insert((0, 0, 0));
        cell.0 += 1;
        if amount >= 0 {
            cell.1 += amount;
        } else {
            cell.2 += amount;
        }
    }
    by
}

/// Every route of the preset, its roles, its caching and its reports, and the balancer's rules.
async fn walk_the_preset(sys: &Running) {
    let admin = sys.admin_token().await.expect("admin token");
    let user = staff(sys, &admin, "ursula", "user").await;
    let fiona = staff(sys, &admin, "fiona", "finance").await;
    let lee = staff(sys, &admin, "lee", "legal").await;

    // Units: available without a token, cached; the rest with any token; writes for admins.
    let (status, cache, first) = get(sys, "/units/available", None).await;
    assert_eq!((status, cache.as_str()), (200, "MISS"), "{first}");
    let (_, cache, again) = get(sys, "/units/available", None).await;
    assert_eq!((cache.as_str(), &again), ("HIT", &first));
    let available = first["units"].as_array().unwrap().clone();
    assert!(available.len() >= 10, "{first}");
    assert!(available.iter().all(|u| u["status"] == "available"));
    let (status, _, body) = get(sys, "/units", None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("missing_token"))
    );
    let (status, _, all) = get(sys, "/units", Some(&user)).await;
    assert_eq!(status, 200, "{all}");
    let all = all["units"].as_array().unwrap().clone();
    assert!(all.len() >= 40);
    let want: Vec<&Value> = all.iter().filter(|u| u["status"] == "available").collect();
    assert_eq!(
        available.iter().collect::<Vec<_>>(),
        want,
        "the listing is the filter"
    );
    let (status, _, unit) = get(sys, "/units/3", Some(&user)).await;
    assert_eq!((status, &unit), (200, &all[2]));
    let (status, _, body) = get(sys, "/units/999999", Some(&user)).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));

    let new_unit = json!({"name": "Casita Nueva", "address": "1 Calle Nueva", "bedrooms": 2, "monthly_rent_cents": 99000});
    for (token, want) in [(&user, 403), (&fiona, 403)] {
        let (status, _, body) = call(
            sys,
            Method::POST,
            "/units",
            Some(token),
            Some(new_unit.clone()),
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (want, Some("forbidden")),
            "{body}"
        );
    }
    let (status, _, body) = call(
        sys,
        Method::POST,
        "/units",
        Some(&admin),
        Some(json!({"name": "", "address": "x", "bedrooms": 2, "monthly_rent_cents": 1})),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_name")),
        "{body}"
    );
    let (status, _, created) =
        call(sys, Method::POST, "/units", Some(&admin), Some(new_unit)).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["status"], "available");
    // The write made every cached listing stale: the next read misses and shows the new unit.
    let (_, cache, now) = get(sys, "/units/available", None).await;
    assert_eq!(cache, "MISS");
    assert!(now["units"].as_array().unwrap().contains(&created), "{now}");
    let id = created["id"].as_i64().unwrap();
    let (status, _, changed) = call(
        sys,
        Method::PATCH,
        &format!("/units/{id}"),
        Some(&admin),
        Some(json!({"status": "occupied"})),
    )
    .await;
    assert_eq!(
        (status, changed["status"].as_str()),
        (200, Some("occupied")),
        "{changed}"
    );
    let (_, cache, now) = get(sys, "/units/available", None).await;
    assert_eq!(cache, "MISS");
    assert!(
        !now["units"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["id"] == id)
    );

    // Finances: finance staff and admins; cached per query; a write invalidates.
    let q = "/finances/transactions?unit=3&month=2026-05";
    for (token, want) in [(&user, 403), (&lee, 403)] {
        let (status, _, body) = get(sys, q, Some(token)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (want, Some("forbidden")),
            "{body}"
        );
    }
    let (status, _, every) = get(sys, "/finances/transactions", Some(&fiona)).await;
    assert_eq!(status, 200, "{every}");
    let every = every["transactions"].as_array().unwrap().clone();
    assert!(every.len() >= 300, "hundreds of seeded transactions");
    let (status, cache, picked) = get(sys, q, Some(&fiona)).await;
    assert_eq!((status, cache.as_str()), (200, "MISS"), "{picked}");
    let want: Vec<&Value> = every
        .iter()
        .filter(|t| t["unit_id"] == 3 && t["month"] == "2026-05")
        .collect();
    assert_eq!(
        picked["transactions"]
            .as_array()
            .unwrap()
            .iter()
            .collect::<Vec<_>>(),
        want
    );
    let (_, cache, _) = get(sys, q, Some(&admin)).await;
    assert_eq!(cache, "HIT");
    let (status, _, body) = get(sys, "/finances/transactions?month=2026-13", Some(&fiona)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_month"))
    );
    let (status, _, body) = call(
        sys,
        Method::POST,
        "/finances/transactions",
        Some(&fiona),
        Some(json!({"unit_id": 3, "month": "2026-05", "kind": "rent", "amount_cents": -5})),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_amount")),
        "{body}"
    );
    let (status, _, tx) = call(
        sys,
        Method::POST,
        "/finances/transactions",
        Some(&fiona),
        Some(json!({"unit_id": 3, "month": "2026-05", "kind": "maintenance", "amount_cents": -12345, "description": "new boiler"})),
    )
    .await;
    assert_eq!(status, 201, "{tx}");
    let (_, cache, picked) = get(sys, q, Some(&fiona)).await;
    assert_eq!(cache, "MISS");
    assert!(picked["transactions"].as_array().unwrap().contains(&tx));

    // Legal: legal staff and admins.
    let (status, _, body) = get(sys, "/legal/documents", Some(&fiona)).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")));
    let (status, _, docs) = get(sys, "/legal/documents", Some(&lee)).await;
    assert_eq!(status, 200, "{docs}");
    let docs = docs["documents"].as_array().unwrap().clone();
    assert!(docs.len() >= 30, "dozens of seeded documents");

    // Reports: queued with their priority, run by a worker over the real rows.
    let (status, _, body) = call(
        sys,
        Method::POST,
        "/finances/generate_report",
        Some(&user),
        None,
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")));
    let (status, _, queued) = call(
        sys,
        Method::POST,
        "/finances/generate_report",
        Some(&fiona),
        Some(json!({"month": "2026-05"})),
    )
    .await;
    assert_eq!(
        (status, queued["priority"].as_str()),
        (202, Some("high")),
        "{queued}"
    );
    let task = finished(sys, &fiona, queued["task_id"].as_str().unwrap()).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    let (_, _, may) = get(sys, "/finances/transactions?month=2026-05", Some(&fiona)).await;
    let may = may["transactions"].as_array().unwrap().clone();
    assert!(
        may.contains(&tx),
        "the report's month holds the new transaction"
    );
    let report = &task["result"];
    let got: BTreeMap<(i64, String), (u64, i64, i64)> = report["by_unit_month"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                (
                    c["unit_id"].as_i64().unwrap(),
                    c["month"].as_str().unwrap().to_string(),
                ),
                (
                    c["transactions"].as_u64().unwrap(),
                    c["income_cents"].as_i64().unwrap(),
                    c["expense_cents"].as_i64().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(got, totals(&may), "{report}");
    let net: i64 = may
        .iter()
        .map(|t| t["amount_cents"].as_i64().unwrap())
        .sum();
    assert_eq!(report["net_cents"].as_i64(), Some(net));
    assert_eq!(report["transactions"].as_u64(), Some(may.len() as u64));

    let (status, _, queued) = call(
        sys,
        Method::POST,
        "/legal/generate_report",
        Some(&lee),
        None,
    )
    .await;
    assert_eq!(
        (status, queued["priority"].as_str()),
        (202, Some("low")),
        "{queued}"
    );
    let task = finished(sys, &lee, queued["task_id"].as_str().unwrap()).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    for d in &docs {
        *by_status
            .entry(d["status"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(
        task["result"]["documents"].as_u64(),
        Some(docs.len() as u64)
    );
    assert_eq!(task["result"]["by_status"], json!(by_status));
    assert!(by_status.get("expired").copied().unwrap_or(0) > 0);

    // The balancer's edge: a denied network gets its 403 before any gateway sees it; a client
    // over its per-IP rate gets 429 with Retry-After.
    let lb = sys.lb_url();
    let denied = client_from([127, 0, 0, 66])
        .get(format!("{lb}/units/available"))
        .send()
        .await
        .expect("request");
    assert_eq!(denied.status().as_u16(), 403);
    assert!(
        denied
            .headers()
            .get("x-served-by")
            .is_none_or(|v| v.to_str().unwrap_or("").starts_with("lb"))
    );
    let greedy = client_from([127, 0, 0, 9]);
    // Waves of 50 at once: faster than the refill (50/s) even on a busy machine, where one
    // request after another may not be.
    let mut refused = None;
    for _ in 0..8 {
        let wave = futures::future::join_all(
            (0..50).map(|_| greedy.get(format!("{lb}/units/available")).send()),
        )
        .await;
        refused = wave
            .into_iter()
            .map(|r| r.expect("request"))
            .find(|r| r.status().as_u16() == 429);
        if refused.is_some() {
            break;
        }
    }
    let refused = refused.expect("a 429 within 400 requests (the preset allows bursts of 100)");
    assert!(refused.headers().contains_key("retry-after"));
    // Others are not affected by one client's excess.
    let (status, _, _) = get(sys, "/units/available", None).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_casitas_preset_serves_its_routes_roles_caching_reports_and_edge_rules() {
    let sys = casitas(2)
        .start()
        .await
        .expect("scalelab up --preset casitas");
    walk_the_preset(&sys).await;
    // The strict door stays strict for the preset's task types.
    let admin = sys.admin_token().await.unwrap();
    let (status, _, body) = call(
        &sys,
        Method::POST,
        "/tasks",
        Some(&admin),
        Some(json!({"type": "finance_report", "payload": {"month": "May"}})),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_month")),
        "{body}"
    );
    let (status, _, body) = call(
        &sys,
        Method::POST,
        "/tasks",
        Some(&admin),
        Some(json!({"type": "finance_report", "payload": {"year": 2026}})),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_payload")),
        "{body}"
    );
}

/// With the worker busy, 20 legal reports queued before 5 finance reports: every finance report
/// starts before any legal one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finance_reports_start_before_legal_reports_queued_earlier() {
    let sys = casitas(2)
        .start()
        .await
        .expect("scalelab up --preset casitas");
    let admin = sys.admin_token().await.unwrap();
    // Both slots busy for long enough to queue everything behind them.
    let mut blockers = Vec::new();
    for _ in 0..2 {
        let (status, _, t) = call(
            &sys,
            Method::POST,
            "/tasks",
            Some(&admin),
            Some(json!({"type": "sleep", "payload": {"ms": 3000}, "priority": "high"})),
        )
        .await;
        assert_eq!(status, 202, "{t}");
        blockers.push(t["id"].as_str().unwrap().to_string());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in &blockers {
        loop {
            let (_, _, t) = get(&sys, &format!("/tasks/{id}"), Some(&admin)).await;
            if t["status"] == "running" {
                break;
            }
            assert!(Instant::now() < deadline, "the blocker never started: {t}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let submit = |path: &'static str| {
        let sys = &sys;
        let admin = admin.clone();
        async move {
            let (status, _, q) = call(sys, Method::POST, path, Some(&admin), None).await;
            assert_eq!(status, 202, "{q}");
            q["task_id"].as_str().unwrap().to_string()
        }
    };
    let mut legal = Vec::new();
    for _ in 0..20 {
        legal.push(submit("/legal/generate_report").await);
    }
    let mut finance = Vec::new();
    for _ in 0..5 {
        finance.push(submit("/finances/generate_report").await);
    }
    let (_, _, t) = get(&sys, &format!("/tasks/{}", blockers[0]), Some(&admin)).await;
    assert_eq!(
        t["status"], "running",
        "everything was queued while the worker was busy"
    );

    let started = |task: &Value| task["started_at"].as_i64().expect("started_at");
    let mut finance_starts = Vec::new();
    for id in &finance {
        let t = finished(&sys, &admin, id).await;
        assert_eq!(t["status"], "succeeded", "{t}");
        finance_starts.push(started(&t));
    }
    let mut legal_starts = Vec::new();
    for id in &legal {
        let t = finished(&sys, &admin, id).await;
        assert_eq!(t["status"], "succeeded", "{t}");
        legal_starts.push(started(&t));
    }
    let last_finance = finance_starts.iter().max().unwrap();
    let first_legal = legal_starts.iter().min().unwrap();
    assert!(
        last_finance <= first_legal,
        "finance starts {finance_starts:?}, legal starts {legal_starts:?}"
    );
}

/// The preset over `scalelab.distributed.toml`: every domain, auth, db and the queue on fresh
/// PostgreSQL databases, the gateways' cache and limits in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_casitas_preset_runs_on_postgresql_and_redis() {
    let mut dbs = Vec::new();
    for name in [
        "cas_auth",
        "cas_db",
        "cas_queue",
        "cas_units",
        "cas_fin",
        "cas_legal",
    ] {
        let Some(db) = common::testing::fresh_postgres(name).await else {
            return;
        };
        dbs.push(db);
    }
    let Some(prefix) = common::testing::fresh_redis_prefix().await else {
        return;
    };
    let shipped = include_str!("../../../../scalelab.distributed.toml");
    let mut file: toml::Table = toml::from_str(shipped).unwrap();
    file.remove("instances");
    file.remove("data_dir");
    file.remove("users");
    let topo = casitas(2)
        .toml_extra(&toml::to_string(&file).unwrap())
        .toml_extra(&format!(
            "[auth]\ndatabase_url = \"{}\"\n[db]\ndatabase_url = \"{}\"\n[queue]\nurl = \"{}\"\n\
             [units]\ndatabase_url = \"{}\"\n[finances]\ndatabase_url = \"{}\"\n\
             [legal]\ndatabase_url = \"{}\"\n\
             [gateway]\nredis_url = \"{}\"\nredis_prefix = \"{prefix}\"\n",
            dbs[0].url,
            dbs[1].url,
            dbs[2].url,
            dbs[3].url,
            dbs[4].url,
            dbs[5].url,
            common::testing::redis_url(),
        ));
    let sys = topo
        .start()
        .await
        .expect("scalelab up --preset casitas (distributed)");
    walk_the_preset(&sys).await;
}
