//! Router tests through `router(state).oneshot(..)`, no socket, on SQLite in a temporary directory;
//! one test runs the three domains against PostgreSQL (skipped when no server answers, see
//! `common::testing`).

use axum::http::{Method, StatusCode};
use common::testing;
use serde_json::{Value, json};

use api::wire::rental::{
    DOCUMENT_KINDS, DOCUMENT_STATUSES, Document, Documents, NewUnit, TRANSACTION_KINDS,
    Transaction, Transactions, UNIT_STATUSES, Unit, Units,
};

use crate::{AppState, Config, Domain, Error, router, seed, validation};

fn instance(domain: Domain) -> common::Instance {
    common::Instance::new(domain.name(), format!("{}-1", domain.name()))
}

/// No simulated latency, so that tests are quick.
fn fast() -> Config {
    Config {
        latency_ms: 0,
        ..Config::default()
    }
}

/// A domain's state on a fresh SQLite file, and the directory that keeps it.
struct Harness {
    state: AppState,
    config: Config,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn start(domain: Domain) -> Harness {
        Self::with(domain, fast()).await
    }

    async fn with(domain: Domain, mut config: Config) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        config.data_dir = dir.path().to_path_buf();
        let state = AppState::new(domain, config.clone(), instance(domain))
            .await
            .expect("state");
        Harness {
            state,
            config,
            _dir: dir,
        }
    }

    /// A second start on the same database, as after a restart of the service.
    async fn restart(&self) -> AppState {
        let domain = self.state.domain();
        AppState::new(domain, self.config.clone(), instance(domain))
            .await
            .expect("restart")
    }
}

async fn send(
    state: &AppState,
    method: Method,
    uri: &str,
    body: Option<Value>,
) -> testing::Response {
    let body = body.map(|b| b.to_string());
    let request = testing::request(method, uri, body.as_deref());
    let answer = testing::call(&router(state.clone()), request).await;
    assert!(!answer.json.is_null(), "every answer is JSON: {answer:?}");
    answer
}

/// `GET uri`, expecting `200` and a body of type `T`.
async fn list<T: serde::de::DeserializeOwned>(state: &AppState, uri: &str) -> T {
    let answer = send(state, Method::GET, uri, None).await;
    assert_eq!(answer.status, StatusCode::OK, "{uri}: {}", answer.text);
    serde_json::from_value(answer.json).expect("the wire type")
}

async fn units(state: &AppState, uri: &str) -> Vec<Unit> {
    list::<Units>(state, uri).await.units
}

async fn transactions(state: &AppState, uri: &str) -> Vec<Transaction> {
    list::<Transactions>(state, uri).await.transactions
}

async fn documents(state: &AppState, uri: &str) -> Vec<Document> {
    list::<Documents>(state, uri).await.documents
}

fn ids<T>(rows: &[T], id: impl Fn(&T) -> i64) -> Vec<i64> {
    rows.iter().map(id).collect()
}

fn is_id_order(ids: &[i64]) -> bool {
    ids.windows(2).all(|w| w[0] < w[1])
}

/// Sends a request and asserts the JSON error answer `status` with `code`.
async fn refused(
    state: &AppState,
    method: Method,
    uri: &str,
    body: Option<Value>,
    status: StatusCode,
    code: &str,
) {
    let answer = send(state, method.clone(), uri, body.clone()).await;
    assert_eq!(
        (answer.status, answer.error()),
        (status, code),
        "{method} {uri} {body:?}: {}",
        answer.text
    );
}

#[tokio::test]
async fn seed_counts() {
    let h = Harness::start(Domain::Units).await;
    let all = units(&h.state, "/units").await;
    assert_eq!(all.len(), 40);
    assert_eq!(ids(&all, |u| u.id), (1..=40).collect::<Vec<_>>());
    assert_eq!(all[0].name, "Casita 1");
    assert_eq!(all[39].name, "Casita 40");
    let count = |s: &str| all.iter().filter(|u| u.status == s).count();
    assert_eq!(
        (count("available"), count("occupied"), count("maintenance")),
        (15, 22, 3)
    );

    let h = Harness::start(Domain::Finances).await;
    let all = transactions(&h.state, "/transactions").await;
    assert_eq!(all.len(), 478);
    assert_eq!(all.len(), seed::transactions().len());
    assert_eq!(ids(&all, |t| t.id), (1..=478).collect::<Vec<_>>());

    let h = Harness::start(Domain::Legal).await;
    let all = documents(&h.state, "/documents").await;
    assert_eq!(all.len(), 60);
    assert_eq!(ids(&all, |d| d.id), (1..=60).collect::<Vec<_>>());
}

#[tokio::test]
async fn seed_is_valid_and_the_domains_agree() {
    let units = seed::units();
    for u in &units {
        validation::new_unit(u).expect("a valid unit");
        assert!((1..=4).contains(&u.bedrooms), "{u:?}");
        assert!((65_000..=180_000).contains(&u.monthly_rent_cents), "{u:?}");
    }
    let occupied = |id: i64| units[(id - 1) as usize].status.as_deref() == Some("occupied");

    let transactions = seed::transactions();
    for t in &transactions {
        validation::new_transaction(t).expect("a valid transaction");
        assert!(
            t.month.starts_with("2026-") && (1..=40).contains(&t.unit_id),
            "{t:?}"
        );
        if t.kind == "rent" {
            assert!(occupied(t.unit_id), "rent only from occupied units: {t:?}");
        }
    }
    for kind in TRANSACTION_KINDS {
        assert!(transactions.iter().any(|t| t.kind == kind), "no {kind}");
    }
    let rents = transactions.iter().filter(|t| t.kind == "rent").count();
    assert_eq!(rents, 22 * 12, "every occupied unit pays every month");
    let months: std::collections::BTreeSet<_> = transactions.iter().map(|t| &t.month).collect();
    assert_eq!(months.len(), 12);

    let documents = seed::documents();
    for d in &documents {
        assert!(
            DOCUMENT_KINDS.contains(&d.kind) && DOCUMENT_STATUSES.contains(&d.status),
            "{d:?}"
        );
        assert!((1..=40).contains(&d.unit_id), "{d:?}");
    }
    for status in DOCUMENT_STATUSES {
        assert!(documents.iter().any(|d| d.status == status), "no {status}");
    }
    for kind in DOCUMENT_KINDS {
        assert!(documents.iter().any(|d| d.kind == kind), "no {kind}");
    }
    for id in 1..=40 {
        let leases: Vec<_> = documents
            .iter()
            .filter(|d| d.unit_id == id && d.kind == "lease")
            .collect();
        assert_eq!(leases.len(), 1, "unit {id} has one lease");
        if occupied(id) {
            assert_eq!(leases[0].status, "active", "unit {id}");
        }
    }
    // The same every time: nothing depends on the clock or on randomness.
    assert_eq!(seed::documents(), documents);
    assert_eq!(
        serde_json::to_value(seed::transactions()).expect("json"),
        serde_json::to_value(&transactions).expect("json")
    );
}

#[tokio::test]
async fn seeding_happens_once_and_keeps_client_writes() {
    let h = Harness::start(Domain::Units).await;
    let created = send(
        &h.state,
        Method::POST,
        "/units",
        Some(json!({"name": "Casita 41", "address": "1 Calle Nueva", "bedrooms": 2, "monthly_rent_cents": 90000})),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let before = units(&h.state, "/units").await;
    let again = h.restart().await;
    assert_eq!(
        units(&again, "/units").await,
        before,
        "a restart changes nothing"
    );
    assert_eq!(before.len(), 41);
    assert_eq!(again.store.seed().await.expect("seed"), 0);

    for domain in [Domain::Finances, Domain::Legal] {
        let h = Harness::start(domain).await;
        let uri = if domain == Domain::Finances {
            "/transactions"
        } else {
            "/documents"
        };
        let before = send(&h.state, Method::GET, uri, None).await.json;
        let again = h.restart().await;
        assert_eq!(
            send(&again, Method::GET, uri, None).await.json,
            before,
            "{domain}"
        );
    }
}

#[tokio::test]
async fn seed_off_starts_empty_and_a_client_table_is_never_seeded() {
    let h = Harness::with(
        Domain::Units,
        Config {
            seed: false,
            ..fast()
        },
    )
    .await;
    assert!(units(&h.state, "/units").await.is_empty());
    let created = send(
        &h.state,
        Method::POST,
        "/units",
        Some(json!({"name": "Mine", "address": "2 Calle Nueva", "bedrooms": 1, "monthly_rent_cents": 70000})),
    )
    .await;
    assert_eq!(
        (created.status, &created.json["id"]),
        (StatusCode::CREATED, &json!(1))
    );
    // Seeding switched on later finds rows and leaves them alone.
    let seeded = AppState::new(
        Domain::Units,
        Config {
            seed: true,
            ..h.config.clone()
        },
        instance(Domain::Units),
    )
    .await
    .expect("restart");
    let all = units(&seeded, "/units").await;
    assert_eq!(ids(&all, |u| u.id), vec![1]);
    assert_eq!(all[0].name, "Mine");
}

#[tokio::test]
async fn units_routes_answer() {
    let h = Harness::start(Domain::Units).await;
    let one = send(&h.state, Method::GET, "/units/12", None).await;
    assert_eq!(one.status, StatusCode::OK);
    let unit: Unit = serde_json::from_value(one.json).expect("Unit");
    assert_eq!((unit.id, unit.name.as_str()), (12, "Casita 12"));
    assert_eq!(unit, units(&h.state, "/units").await[11]);

    let created = send(
        &h.state,
        Method::POST,
        "/units",
        Some(json!({"name": "Casita Nueva", "address": "500 Camino Real", "bedrooms": 0, "monthly_rent_cents": 0})),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let created: Unit = serde_json::from_value(created.json).expect("Unit");
    assert_eq!(
        (
            created.id,
            created.name.as_str(),
            created.address.as_str(),
            created.bedrooms,
            created.monthly_rent_cents,
            created.status.as_str()
        ),
        (41, "Casita Nueva", "500 Camino Real", 0, 0, "available"),
        "the next id, and `available` by default"
    );
    assert!(
        created.updated_at.len() == 24 && created.updated_at.ends_with('Z'),
        "{}",
        created.updated_at
    );
    let read = send(&h.state, Method::GET, "/units/41", None).await;
    assert_eq!(
        serde_json::from_value::<Unit>(read.json).expect("Unit"),
        created
    );

    let with_status = send(
        &h.state,
        Method::POST,
        "/units",
        Some(json!({"name": "Casita 43", "address": "x", "bedrooms": 20, "monthly_rent_cents": 1, "status": "maintenance"})),
    )
    .await;
    assert_eq!(
        (with_status.status, &with_status.json["status"]),
        (StatusCode::CREATED, &json!("maintenance"))
    );
    let all = units(&h.state, "/units").await;
    assert_eq!(all.len(), 42);
    assert!(is_id_order(&ids(&all, |u| u.id)));
}

#[tokio::test]
async fn patch_changes_only_the_given_fields_and_bumps_updated_at() {
    let h = Harness::start(Domain::Units).await;
    // An old time, so that the change's time is surely later whatever the clock's resolution.
    h.state
        .store
        .execute(
            "UPDATE units SET updated_at = $1 WHERE id = 5",
            &["2020-01-01T00:00:00.000Z".into()],
        )
        .await
        .expect("update");
    let before = units(&h.state, "/units").await;
    let old = before[4].clone();

    let answer = send(
        &h.state,
        Method::PATCH,
        "/units/5",
        Some(json!({"monthly_rent_cents": 123456})),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    let changed: Unit = serde_json::from_value(answer.json).expect("Unit");
    assert_eq!(
        changed,
        Unit {
            monthly_rent_cents: 123_456,
            updated_at: changed.updated_at.clone(),
            ..old.clone()
        }
    );
    assert!(
        changed.updated_at > old.updated_at,
        "{} after {}",
        changed.updated_at,
        old.updated_at
    );

    let answer = send(
        &h.state,
        Method::PATCH,
        "/units/5",
        Some(json!({"name": "Casita Cinco", "address": "5 Acequia Madre", "bedrooms": 3, "status": "occupied"})),
    )
    .await;
    let changed: Unit = serde_json::from_value(answer.json).expect("Unit");
    assert_eq!(
        (
            changed.name.as_str(),
            changed.address.as_str(),
            changed.bedrooms,
            changed.monthly_rent_cents,
            changed.status.as_str()
        ),
        ("Casita Cinco", "5 Acequia Madre", 3, 123_456, "occupied")
    );
    let after = units(&h.state, "/units").await;
    assert_eq!(after[4], changed, "the change is stored");
    for (b, a) in before.iter().zip(&after) {
        if a.id != 5 {
            assert_eq!(a, b, "other units are untouched");
        }
    }
}

#[tokio::test]
async fn unknown_units_are_404_and_bad_ids_400() {
    let h = Harness::start(Domain::Units).await;
    for (method, body) in [
        (Method::GET, None),
        (Method::PATCH, Some(json!({"status": "available"}))),
    ] {
        let answer = send(&h.state, method.clone(), "/units/999", body.clone()).await;
        assert_eq!(
            (answer.status, answer.error()),
            (StatusCode::NOT_FOUND, "not_found"),
            "{method}"
        );
        assert!(
            answer.json["message"]
                .as_str()
                .is_some_and(|m| m.contains("999"))
        );
        for id in ["abc", "0", "-3", "1.5"] {
            refused(
                &h.state,
                method.clone(),
                &format!("/units/{id}"),
                body.clone(),
                StatusCode::BAD_REQUEST,
                "invalid_id",
            )
            .await;
        }
    }
    assert_eq!(
        units(&h.state, "/units").await.len(),
        40,
        "nothing was created"
    );
}

#[tokio::test]
async fn finances_routes_answer() {
    let h = Harness::start(Domain::Finances).await;
    let body = json!({"unit_id": 3, "month": "2026-05", "kind": "utilities", "amount_cents": -4500, "description": "Gas"});
    let answer = send(&h.state, Method::POST, "/transactions", Some(body)).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text);
    let t: Transaction = serde_json::from_value(answer.json).expect("Transaction");
    assert_eq!(
        (
            t.id,
            t.unit_id,
            t.month.as_str(),
            t.kind.as_str(),
            t.amount_cents,
            t.description.as_str()
        ),
        (479, 3, "2026-05", "utilities", -4500, "Gas")
    );
    // No description is an empty one; and the unit is not checked against the units service.
    let body = json!({"unit_id": 999, "month": "2027-01", "kind": "deposit", "amount_cents": 100});
    let answer = send(&h.state, Method::POST, "/transactions", Some(body)).await;
    assert_eq!(
        (answer.status, &answer.json["description"]),
        (StatusCode::CREATED, &json!(""))
    );
    let all = transactions(&h.state, "/transactions").await;
    assert_eq!(all.len(), 480);
    assert_eq!(all[478], t);
    assert!(is_id_order(&ids(&all, |t| t.id)));
}

#[tokio::test]
async fn legal_routes_answer() {
    let h = Harness::start(Domain::Legal).await;
    let all = documents(&h.state, "/documents").await;
    let first = &all[0];
    assert_eq!(
        (
            first.id,
            first.unit_id,
            first.kind.as_str(),
            first.title.as_str()
        ),
        (1, 1, "lease", "Lease agreement, Casita 1")
    );
    refused(
        &h.state,
        Method::POST,
        "/documents",
        Some(json!({})),
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
}

#[tokio::test]
async fn filters_return_exactly_the_matching_rows() {
    let h = Harness::start(Domain::Units).await;
    let all = units(&h.state, "/units").await;
    for status in UNIT_STATUSES {
        let expected: Vec<_> = all.iter().filter(|u| u.status == status).cloned().collect();
        assert!(!expected.is_empty(), "{status}");
        assert_eq!(
            units(&h.state, &format!("/units?status={status}")).await,
            expected,
            "{status}"
        );
    }

    let h = Harness::start(Domain::Finances).await;
    let all = transactions(&h.state, "/transactions").await;
    for (unit, month) in [
        (Some(2), None),
        (None, Some("2026-03")),
        (Some(2), Some("2026-05")),
        (Some(99), None),
        (None, Some("2025-12")),
    ] {
        let expected: Vec<_> = all
            .iter()
            .filter(|t| unit.is_none_or(|u| t.unit_id == u) && month.is_none_or(|m| t.month == m))
            .cloned()
            .collect();
        let mut query = Vec::new();
        query.extend(unit.map(|u| format!("unit={u}")));
        query.extend(month.map(|m| format!("month={m}")));
        let got = transactions(&h.state, &format!("/transactions?{}", query.join("&"))).await;
        assert_eq!(got, expected, "{unit:?} {month:?}");
        if unit != Some(99) && month != Some("2025-12") {
            assert!(!got.is_empty(), "{unit:?} {month:?}");
        }
    }

    let h = Harness::start(Domain::Legal).await;
    let all = documents(&h.state, "/documents").await;
    for (status, unit) in [
        (Some("expired"), None),
        (Some("active"), None),
        (Some("pending"), None),
        (None, Some(8)),
        (Some("active"), Some(8)),
        (Some("pending"), Some(8)),
    ] {
        let expected: Vec<_> = all
            .iter()
            .filter(|d| status.is_none_or(|s| d.status == s) && unit.is_none_or(|u| d.unit_id == u))
            .cloned()
            .collect();
        let mut query = Vec::new();
        query.extend(status.map(|s| format!("status={s}")));
        query.extend(unit.map(|u| format!("unit={u}")));
        let got = documents(&h.state, &format!("/documents?{}", query.join("&"))).await;
        assert_eq!(got, expected, "{status:?} {unit:?}");
    }
    assert_eq!(
        documents(&h.state, "/documents?unit=8").await.len(),
        2,
        "a lease and an inspection"
    );
}

#[tokio::test]
async fn invalid_bodies_and_queries_have_stable_codes() {
    let unit = |patch: Value| {
        let mut body = json!({"name": "Casita", "address": "1 Calle Luna", "bedrooms": 2, "monthly_rent_cents": 80000});
        body.as_object_mut()
            .expect("object")
            .extend(patch.as_object().expect("object").clone());
        body
    };
    let bad = StatusCode::BAD_REQUEST;
    let h = Harness::start(Domain::Units).await;
    for (body, code) in [
        (unit(json!({"name": ""})), "invalid_name"),
        (unit(json!({"name": "   "})), "invalid_name"),
        (unit(json!({"name": "n".repeat(101)})), "invalid_name"),
        (unit(json!({"address": ""})), "invalid_address"),
        (unit(json!({"address": "a".repeat(201)})), "invalid_address"),
        (unit(json!({"bedrooms": 21})), "invalid_bedrooms"),
        (unit(json!({"monthly_rent_cents": -1})), "invalid_rent"),
        (unit(json!({"status": "sold"})), "invalid_status"),
        (unit(json!({"bedrooms": -1})), "invalid_body"),
        (unit(json!({"extra": 1})), "invalid_body"),
        (json!({"name": "x"}), "invalid_body"),
    ] {
        refused(&h.state, Method::POST, "/units", Some(body), bad, code).await;
    }
    for (body, code) in [
        (json!({}), "empty_change"),
        (json!({"name": ""}), "invalid_name"),
        (json!({"address": "a".repeat(201)}), "invalid_address"),
        (json!({"bedrooms": 21}), "invalid_bedrooms"),
        (json!({"monthly_rent_cents": -5}), "invalid_rent"),
        (json!({"status": "gone"}), "invalid_status"),
        (json!({"id": 3}), "invalid_body"),
    ] {
        refused(&h.state, Method::PATCH, "/units/1", Some(body), bad, code).await;
    }
    for (uri, code) in [
        ("/units?status=sold", "invalid_status"),
        ("/units?status=", "invalid_status"),
        ("/units?color=red", "invalid_query"),
    ] {
        refused(&h.state, Method::GET, uri, None, bad, code).await;
    }
    let unchanged = units(&h.state, "/units").await;
    assert_eq!(
        (unchanged.len(), unchanged[0].name.as_str()),
        (40, "Casita 1"),
        "nothing was written"
    );

    let transaction = |patch: Value| {
        let mut body =
            json!({"unit_id": 1, "month": "2026-02", "kind": "rent", "amount_cents": 100000});
        body.as_object_mut()
            .expect("object")
            .extend(patch.as_object().expect("object").clone());
        body
    };
    let h = Harness::start(Domain::Finances).await;
    for (body, code) in [
        (transaction(json!({"unit_id": 0})), "invalid_unit"),
        (transaction(json!({"unit_id": -2})), "invalid_unit"),
        (transaction(json!({"month": "2026-13"})), "invalid_month"),
        (transaction(json!({"month": "2026-00"})), "invalid_month"),
        (transaction(json!({"month": "2026-1"})), "invalid_month"),
        (transaction(json!({"month": "March"})), "invalid_month"),
        (transaction(json!({"kind": "bribe"})), "invalid_kind"),
        (transaction(json!({"amount_cents": 0})), "invalid_amount"),
        (transaction(json!({"amount_cents": -100})), "invalid_amount"),
        (
            transaction(json!({"kind": "deposit", "amount_cents": -100})),
            "invalid_amount",
        ),
        (
            transaction(json!({"kind": "tax", "amount_cents": 100})),
            "invalid_amount",
        ),
        (
            transaction(json!({"kind": "maintenance", "amount_cents": 1})),
            "invalid_amount",
        ),
        (
            transaction(json!({"description": "d".repeat(201)})),
            "invalid_description",
        ),
        (transaction(json!({"unit_id": "one"})), "invalid_body"),
    ] {
        refused(
            &h.state,
            Method::POST,
            "/transactions",
            Some(body),
            bad,
            code,
        )
        .await;
    }
    let ok = send(
        &h.state,
        Method::POST,
        "/transactions",
        Some(transaction(
            json!({"kind": "tax", "amount_cents": -1, "description": "d".repeat(200)}),
        )),
    )
    .await;
    assert_eq!(
        ok.status,
        StatusCode::CREATED,
        "the limits themselves are accepted"
    );
    for (uri, code) in [
        ("/transactions?unit=abc", "invalid_query"),
        ("/transactions?unit=1&year=2026", "invalid_query"),
        ("/transactions?unit=0", "invalid_unit"),
        ("/transactions?month=2026-13", "invalid_month"),
        ("/transactions?month=202603", "invalid_month"),
    ] {
        refused(&h.state, Method::GET, uri, None, bad, code).await;
    }
    assert_eq!(
        transactions(&h.state, "/transactions").await.len(),
        479,
        "only the valid one was written"
    );

    let h = Harness::start(Domain::Legal).await;
    for (uri, code) in [
        ("/documents?status=void", "invalid_status"),
        ("/documents?unit=x", "invalid_query"),
        ("/documents?unit=-1", "invalid_unit"),
        ("/documents?kind=lease", "invalid_query"),
    ] {
        refused(&h.state, Method::GET, uri, None, bad, code).await;
    }
}

#[tokio::test]
async fn bad_bodies_use_the_common_json_answers() {
    let h = Harness::with(
        Domain::Finances,
        Config {
            max_body_bytes: 1024,
            ..fast()
        },
    )
    .await;
    let router = router(h.state.clone());
    let call = |body: String| {
        let router = router.clone();
        async move {
            testing::call(
                &router,
                testing::request(Method::POST, "/transactions", Some(&body)),
            )
            .await
        }
    };
    let answer = call("{not json".into()).await;
    assert_eq!(
        (answer.status, answer.error()),
        (StatusCode::BAD_REQUEST, "malformed_json")
    );
    let answer = call(json!({"unit_id": 1, "month": "2026-01", "kind": "rent", "amount_cents": 1, "description": "d".repeat(2000)}).to_string()).await;
    assert_eq!(
        (answer.status, answer.error()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
    let no_type = axum::http::Request::builder()
        .method(Method::POST)
        .uri("/transactions")
        .body(axum::body::Body::from(r#"{"unit_id": 1}"#))
        .expect("request");
    let answer = testing::call(&router, no_type).await;
    assert_eq!(
        (answer.status, answer.error()),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
    );
}

#[tokio::test]
async fn a_domain_answers_only_its_own_routes() {
    for (domain, foreign) in [
        (Domain::Units, ["/transactions", "/documents", "/db"]),
        (Domain::Finances, ["/units", "/units/1", "/documents"]),
        (Domain::Legal, ["/units", "/transactions", "/units/1"]),
    ] {
        let h = Harness::start(domain).await;
        for uri in foreign {
            refused(
                &h.state,
                Method::GET,
                uri,
                None,
                StatusCode::NOT_FOUND,
                "not_found",
            )
            .await;
        }
        let ready = send(&h.state, Method::GET, "/ready", None).await;
        assert_eq!(
            (ready.status, ready.json),
            (StatusCode::OK, json!({"status": "ready"})),
            "{domain}"
        );
        let health = send(&h.state, Method::GET, "/health", None).await;
        assert_eq!(health.status, StatusCode::OK, "{domain}");
    }
    let h = Harness::start(Domain::Finances).await;
    refused(
        &h.state,
        Method::POST,
        "/units",
        Some(json!({"name": "x"})),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

#[tokio::test]
async fn unreachable_database_is_503_without_internals() {
    // Nothing listens on port 1; seeding is off so that the start does not need the database.
    let config = Config {
        database_url: Some("postgres://root@127.0.0.1:1/rental".into()),
        seed: false,
        ..fast()
    };
    let state = AppState::new(Domain::Units, config, instance(Domain::Units))
        .await
        .expect("PostgreSQL connects on first use");
    // Both at once: each waits out the pool's acquire timeout while the connection is refused.
    let (ready, list) = tokio::join!(
        send(&state, Method::GET, "/ready", None),
        send(&state, Method::GET, "/units", None)
    );
    for (uri, answer) in [("/ready", ready), ("/units", list)] {
        assert_eq!(
            (answer.status, answer.error()),
            (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
            "{uri}"
        );
        assert!(
            !answer.text.contains("127.0.0.1"),
            "leaked: {}",
            answer.text
        );
    }
}

#[tokio::test]
async fn sqlite_file_is_named_after_the_domain() {
    let dir = tempfile::tempdir().expect("tempdir");
    for domain in Domain::ALL {
        let config = Config {
            data_dir: dir.path().join("nested"),
            ..fast()
        };
        AppState::new(domain, config, instance(domain))
            .await
            .expect("state");
        assert!(
            dir.path()
                .join(format!("nested/{}.sqlite", domain.name()))
                .is_file(),
            "{domain}"
        );
    }
}

#[tokio::test]
async fn impossible_configs_are_refused() {
    for config in [
        Config {
            max_body_bytes: 0,
            ..fast()
        },
        Config {
            database_url: Some("mysql://localhost/x".into()),
            ..fast()
        },
    ] {
        assert_eq!(config.validate().len(), 1, "{config:?}");
        let result = AppState::new(Domain::Legal, config.clone(), instance(Domain::Legal)).await;
        assert!(matches!(result, Err(Error::Config(_))), "{config:?}");
    }
    assert!(fast().validate().is_empty());
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
    let d = Config::default();
    assert_eq!(
        (d.latency_ms, d.seed, d.max_body_bytes, d.database_url),
        (50, true, 16_384, None)
    );
    assert!(serde_json::from_value::<Config>(json!({"data_dir": "x"})).is_err());
    assert!(serde_json::from_value::<Config>(json!({"latency": 5})).is_err());
}

#[test]
fn domains_have_role_names() {
    for domain in Domain::ALL {
        assert_eq!(Domain::from_name(domain.name()), Some(domain));
    }
    assert_eq!(
        Domain::ALL.map(Domain::name),
        ["units", "finances", "legal"]
    );
    assert_eq!(Domain::from_name("db"), None);
}

/// The three domains on PostgreSQL, each on a fresh database: seed, seeded once, the sequence
/// after the seed's explicit ids, writes and filters.
#[tokio::test]
async fn postgres_serves_every_domain() {
    for domain in Domain::ALL {
        let Some(db) = testing::fresh_postgres(&format!("rental_{}", domain.name())).await else {
            return;
        };
        let config = Config {
            database_url: Some(db.url.clone()),
            ..fast()
        };
        let state = AppState::new(domain, config.clone(), instance(domain))
            .await
            .expect("state");
        let again = AppState::new(domain, config, instance(domain))
            .await
            .expect("restart");
        assert_eq!(again.store.seed().await.expect("seed"), 0, "{domain}");
        match domain {
            Domain::Units => {
                assert_eq!(units(&again, "/units").await.len(), 40);
                let created = send(
                    &state,
                    Method::POST,
                    "/units",
                    Some(json!({"name": "Casita 41", "address": "41 Camino Real", "bedrooms": 2, "monthly_rent_cents": 99000})),
                )
                .await;
                assert_eq!(
                    (created.status, &created.json["id"]),
                    (StatusCode::CREATED, &json!(41)),
                    "{}",
                    created.text
                );
                let changed = send(
                    &state,
                    Method::PATCH,
                    "/units/41",
                    Some(json!({"status": "occupied"})),
                )
                .await;
                assert_eq!(
                    (
                        changed.status,
                        &changed.json["name"],
                        &changed.json["status"]
                    ),
                    (StatusCode::OK, &json!("Casita 41"), &json!("occupied"))
                );
                let occupied = units(&state, "/units?status=occupied").await;
                assert_eq!(occupied.len(), 23);
                refused(
                    &state,
                    Method::GET,
                    "/units/42",
                    None,
                    StatusCode::NOT_FOUND,
                    "not_found",
                )
                .await;
            }
            Domain::Finances => {
                let all = transactions(&again, "/transactions").await;
                assert_eq!(all.len(), 478);
                let created = send(
                    &state,
                    Method::POST,
                    "/transactions",
                    Some(json!({"unit_id": 2, "month": "2026-04", "kind": "maintenance", "amount_cents": -2500})),
                )
                .await;
                assert_eq!(
                    (created.status, &created.json["id"]),
                    (StatusCode::CREATED, &json!(479)),
                    "{}",
                    created.text
                );
                let got = transactions(&state, "/transactions?unit=2&month=2026-04").await;
                let expected: Vec<_> = transactions(&state, "/transactions")
                    .await
                    .into_iter()
                    .filter(|t| t.unit_id == 2 && t.month == "2026-04")
                    .collect();
                assert_eq!(got, expected);
                assert_eq!(got.last().map(|t| t.id), Some(479));
            }
            Domain::Legal => {
                let all = documents(&again, "/documents").await;
                assert_eq!(all.len(), 60);
                let expired = documents(&state, "/documents?status=expired").await;
                let expected: Vec<_> = all.into_iter().filter(|d| d.status == "expired").collect();
                assert!(!expected.is_empty());
                assert_eq!(expired, expected);
            }
        }
    }
}

/// The seed's units, as `POST /units` would have created them (guards the field mapping).
#[tokio::test]
async fn seeded_units_match_the_seed_function() {
    let h = Harness::start(Domain::Units).await;
    let stored = units(&h.state, "/units").await;
    let expected: Vec<NewUnit> = seed::units();
    for (u, e) in stored.iter().zip(&expected) {
        assert_eq!(
            (
                &u.name,
                &u.address,
                u.bedrooms,
                u.monthly_rent_cents,
                Some(&u.status)
            ),
            (
                &e.name,
                &e.address,
                e.bedrooms,
                e.monthly_rent_cents,
                e.status.as_ref()
            )
        );
    }
}
