//! Profiles through the gateway (`users.rs`) against a fake `users` service: registration across
//! the two services, validation before any account exists, RBAC from `required_roles`, and
//! `GET /users/{id}` cache-aside with invalidation.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{Method, Request, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::fakes::{Server, spawn};
use super::{Harness, get_with_token, req, send, state_with};
use crate::router;

/// The fake `users`: profiles by id in memory, a switch that makes `POST /users` fail, and a
/// count of profile reads.
#[derive(Clone)]
struct Users {
    profiles: Arc<std::sync::Mutex<Vec<Value>>>,
    fail_creates: Arc<AtomicBool>,
    reads: Arc<AtomicUsize>,
    /// Reads answer (with what they read on arrival) only while this is `true`.
    open: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Users {
    async fn start() -> (Users, Server) {
        let users = Users {
            profiles: Arc::default(),
            fail_creates: Arc::default(),
            reads: Arc::default(),
            open: Arc::new(tokio::sync::watch::Sender::new(true)),
        };
        let app = Router::new()
            .route("/users", post(create).get(list))
            .route("/users/{id}", get(read).patch(update).delete(remove))
            .with_state(users.clone());
        (users, spawn(app).await)
    }
}

async fn create(State(u): State<Users>, Json(body): Json<Value>) -> axum::response::Response {
    if u.fail_creates.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "shard_unavailable", "message": "shard 1 is down"})),
        )
            .into_response();
    }
    let mut profile = body;
    for field in ["email", "first_name", "last_name"] {
        if profile.get(field).is_none() {
            profile[field] = Value::Null;
        }
    }
    profile["role"] = json!(profile["role"].as_str().unwrap_or("user"));
    profile["created_at"] = json!("2026-01-01T00:00:00.000Z");
    profile["updated_at"] = json!("2026-01-01T00:00:00.000Z");
    u.profiles.lock().unwrap().push(profile.clone());
    (StatusCode::CREATED, Json(profile)).into_response()
}

async fn read(State(u): State<Users>, Path(id): Path<String>) -> axum::response::Response {
    let found = u
        .profiles
        .lock()
        .unwrap()
        .iter()
        .find(|p| p["id"] == id)
        .cloned();
    u.reads.fetch_add(1, Ordering::SeqCst);
    let _ = u.open.subscribe().wait_for(|open| *open).await;
    match found {
        Some(p) => Json(p).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "not_found", "message": "no such user"})),
        )
            .into_response(),
    }
}

async fn update(
    State(u): State<Users>,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Json<Value> {
    let mut profiles = u.profiles.lock().unwrap();
    let p = profiles.iter_mut().find(|p| p["id"] == id).unwrap();
    for (k, v) in body.as_object().unwrap() {
        p[k] = v.clone();
    }
    Json(p.clone())
}

async fn remove(State(u): State<Users>, Path(id): Path<String>) -> axum::response::Response {
    let mut profiles = u.profiles.lock().unwrap();
    let before = profiles.len();
    profiles.retain(|p| p["id"] != id);
    if profiles.len() < before {
        Json(json!({"deleted": true})).into_response()
    } else {
        (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "not_found", "message": "no such user"})),
        )
            .into_response()
    }
}

async fn list(State(u): State<Users>) -> Json<Value> {
    Json(json!({"users": *u.profiles.lock().unwrap(), "next_cursor": null}))
}

fn json_request(method: Method, uri: &str, body: Value, token: Option<&str>) -> Request<Body> {
    let mut r = req(method, uri).header(header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        r = r.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    r.body(Body::from(body.to_string())).unwrap()
}

async fn harness() -> (Harness, Users) {
    let mut h = Harness::start().await;
    let (users, server) = Users::start().await;
    h.config.users_url = server.url.clone();
    h.keep(server);
    (h, users)
}

#[tokio::test]
async fn registration_makes_a_profile_or_nothing() {
    let (h, users) = harness().await;
    let app = h.app().await;
    let body = json!({"username": "ann", "password": "correct-horse", "email": "ann@example.org"});
    let a = send(
        &app,
        json_request(Method::POST, "/register", body.clone(), None),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.json);
    assert_eq!(a.json["id"], "new-id");
    assert_eq!(a.json["profile"]["email"], "ann@example.org");
    assert_eq!(users.profiles.lock().unwrap()[0]["id"], "new-id");

    // A bad profile field is refused before auth is called: no account to undo.
    let before = h.auth.registrations.lock().unwrap().len();
    let bad = json!({"username": "bea", "password": "correct-horse", "email": "bea"});
    let a = send(&app, json_request(Method::POST, "/register", bad, None)).await;
    assert_eq!(
        (a.status, a.error()),
        (StatusCode::BAD_REQUEST, "invalid_email")
    );
    assert_eq!(h.auth.registrations.lock().unwrap().len(), before);

    // users fails after auth said yes: the client is told nothing was registered.
    users.fail_creates.store(true, Ordering::SeqCst);
    let a = send(&app, json_request(Method::POST, "/register", body, None)).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.json);
    assert_eq!(a.error(), "registration_failed");
    // ... and it is true: the account auth had made was deleted again.
    assert_eq!(*h.auth.deleted_accounts.lock().unwrap(), ["ann"]);
}

#[tokio::test]
async fn roles_come_from_the_topology_and_user_reads_are_cached() {
    let (h, users) = harness().await;
    users.profiles.lock().unwrap().push(json!({
        "id": "id-alice", "username": "alice", "email": null, "first_name": "A", "last_name": null,
        "role": "user", "created_at": "t", "updated_at": "t"
    }));
    let app = h.app().await;

    // alice may read herself, not the list nor someone else; the 403 names the role.
    let a = send(&app, get_with_token("/users", &h.user())).await;
    assert_eq!((a.status, a.error()), (StatusCode::FORBIDDEN, "forbidden"));
    assert!(
        a.json["message"].as_str().unwrap().contains("admin"),
        "{}",
        a.json
    );
    let a = send(&app, get_with_token("/users/id-bob", &h.user())).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let a = send(&app, get_with_token("/users/id-alice", &h.user())).await;
    assert_eq!((a.status, a.header("x-cache")), (StatusCode::OK, "MISS"));
    let a = send(&app, get_with_token("/users/id-alice", &h.admin())).await;
    assert_eq!((a.status, a.header("x-cache")), (StatusCode::OK, "HIT"));
    assert_eq!(users.reads.load(Ordering::SeqCst), 1);

    // Her update deletes the cached copy: the next read goes to users and sees it.
    let a = send(
        &app,
        json_request(
            Method::PATCH,
            "/users/me",
            json!({"first_name": "Alice"}),
            Some(&h.user()),
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    let a = send(&app, get_with_token("/users/id-alice", &h.admin())).await;
    assert_eq!(
        (a.header("x-cache"), a.json["first_name"].clone()),
        ("MISS", json!("Alice"))
    );
    assert_eq!(users.reads.load(Ordering::SeqCst), 2);

    // Changing your own role needs the admin route's role.
    let a = send(
        &app,
        json_request(
            Method::PATCH,
            "/users/me",
            json!({"role": "admin"}),
            Some(&h.user()),
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);

    // The topology decides: a gateway whose file lets users list users.
    let mut config = h.config.clone();
    config
        .required_roles
        .insert("GET /users".into(), "user".into());
    let app = router(state_with(config, "gateway-2").await);
    let a = send(&app, get_with_token("/users", &h.user())).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
}

#[tokio::test]
async fn a_profile_read_that_raced_an_update_does_not_bring_the_old_profile_back() {
    let (h, users) = harness().await;
    users.profiles.lock().unwrap().push(json!({
        "id": "id-alice", "username": "alice", "email": null, "first_name": "A", "last_name": null,
        "role": "user", "created_at": "t", "updated_at": "t"
    }));
    let app = h.app().await;
    // A miss whose answer (the old profile) is still on its way...
    users.open.send_replace(false);
    let reader = {
        let (app, token) = (app.clone(), h.admin());
        tokio::spawn(async move { send(&app, get_with_token("/users/id-alice", &token)).await })
    };
    super::wait_until("the read to reach users", || {
        users.reads.load(Ordering::SeqCst) == 1
    })
    .await;
    // ...while alice's update lands and invalidates.
    let a = send(
        &app,
        json_request(
            Method::PATCH,
            "/users/me",
            json!({"first_name": "Alice"}),
            Some(&h.user()),
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    users.open.send_replace(true);
    let stale = reader.await.unwrap();
    assert_eq!(
        stale.json["first_name"], "A",
        "that read began before the update"
    );
    // The old profile must not have been cached: the next read goes to users and sees the update.
    let next = send(&app, get_with_token("/users/id-alice", &h.admin())).await;
    assert_eq!(
        (next.header("x-cache"), next.json["first_name"].clone()),
        ("MISS", json!("Alice"))
    );
}

#[tokio::test]
async fn a_page_cursor_that_is_not_a_user_id_is_refused() {
    // Found by the contract's fuzzer: `after=0.5` was passed on and answered a page.
    let (h, _users) = harness().await;
    let app = h.app().await;
    let a = send(&app, get_with_token("/users?after=0.5", &h.admin())).await;
    assert_eq!(
        (a.status, a.error()),
        (StatusCode::BAD_REQUEST, "invalid_query"),
        "{}",
        a.json
    );
    let a = send(
        &app,
        get_with_token("/users?after=user-1&limit=2", &h.admin()),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
}
