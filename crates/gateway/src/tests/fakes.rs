//! Small upstreams on 127.0.0.1:0: a fake `auth` that signs with an Ed25519 key made here, a `db`
//! that counts calls and can be held or broken, a `cache` service double and `service` instances.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use api::wire::auth::Claims;

/// A server running until dropped.
pub(crate) struct Server {
    pub(crate) url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) async fn spawn(app: Router) -> Server {
    spawn_on(TcpListener::bind("127.0.0.1:0").await.expect("bind"), app)
}

pub(crate) fn spawn_on(listener: TcpListener, app: Router) -> Server {
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Server { url, task }
}

/// A URL where nothing listens.
pub(crate) async fn dead_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}")
}

pub(crate) fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// An Ed25519 signing key and its key id.
#[derive(Clone)]
pub(crate) struct Key {
    pub(crate) kid: String,
    signing: SigningKey,
}

impl Key {
    pub(crate) fn generate(kid: &str) -> Self {
        Self {
            kid: kid.to_string(),
            signing: SigningKey::generate(&mut rand::rngs::OsRng),
        }
    }

    pub(crate) fn jwk(&self) -> Value {
        json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(self.signing.verifying_key().to_bytes()),
            "kid": self.kid,
            "alg": "EdDSA",
            "use": "sig",
        })
    }

    /// A token with these claims, signed by this key, naming `kid`.
    pub(crate) fn sign_as(&self, kid: &str, claims: &Claims) -> String {
        let der = self.signing.to_pkcs8_der().expect("pkcs8");
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.to_string());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(der.as_bytes()))
            .expect("sign")
    }

    pub(crate) fn sign(&self, claims: &Claims) -> String {
        self.sign_as(&self.kid, claims)
    }
}

pub(crate) fn claims(user: &str, roles: &[&str], exp: u64) -> Claims {
    Claims {
        sub: format!("id-{user}"),
        username: user.to_string(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        iat: now(),
        exp,
        iss: "scalelab-auth".into(),
    }
}

/// The fake `auth`.
#[derive(Clone)]
pub(crate) struct Auth {
    /// Published keys; the first one signs.
    pub(crate) keys: Arc<Mutex<Vec<Key>>>,
    pub(crate) jwks_fetches: Arc<AtomicUsize>,
    /// Bodies of `POST /register` as received.
    pub(crate) registrations: Arc<Mutex<Vec<Value>>>,
    /// Usernames of `DELETE /accounts/{username}` as received.
    pub(crate) deleted_accounts: Arc<Mutex<Vec<String>>>,
}

impl Auth {
    pub(crate) async fn start() -> (Auth, Server) {
        Self::start_on(TcpListener::bind("127.0.0.1:0").await.expect("bind")).await
    }

    pub(crate) async fn start_on(listener: TcpListener) -> (Auth, Server) {
        let auth = Auth {
            keys: Arc::new(Mutex::new(vec![Key::generate("key-1")])),
            jwks_fetches: Arc::default(),
            registrations: Arc::default(),
            deleted_accounts: Arc::default(),
        };
        let app = Router::new()
            .route("/.well-known/jwks.json", get(jwks))
            .route("/login", post(login))
            .route("/register", post(register))
            .route("/guest-token", post(guest))
            .route(
                "/accounts/{username}",
                axum::routing::delete(delete_account),
            )
            .route("/health", get(|| async { "ok" }))
            .with_state(auth.clone());
        (auth.clone(), spawn_on(listener, app))
    }

    pub(crate) fn key(&self) -> Key {
        self.keys.lock().unwrap()[0].clone()
    }

    pub(crate) fn token(&self, user: &str, roles: &[&str]) -> String {
        self.key().sign(&claims(user, roles, now() + 600))
    }

    /// Replaces the published keys with one new key.
    pub(crate) fn rotate(&self, kid: &str) -> Key {
        let key = Key::generate(kid);
        *self.keys.lock().unwrap() = vec![key.clone()];
        key
    }

    pub(crate) fn fetches(&self) -> usize {
        self.jwks_fetches.load(Ordering::SeqCst)
    }
}

async fn jwks(State(auth): State<Auth>) -> Json<Value> {
    auth.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    let keys: Vec<Value> = auth.keys.lock().unwrap().iter().map(Key::jwk).collect();
    Json(json!({ "keys": keys }))
}

fn token_response(token: String) -> Json<Value> {
    Json(json!({"token": token, "token_type": "Bearer", "expires_in": 600}))
}

async fn login(State(auth): State<Auth>, Json(body): Json<Value>) -> axum::response::Response {
    if body["password"] == "correct-horse" {
        let user = body["username"].as_str().unwrap_or("x").to_string();
        token_response(auth.token(&user, &["user"])).into_response()
    } else {
        (
            StatusCode::UNAUTHORIZED,
            Json(
                json!({"error": "invalid_credentials", "message": "invalid username or password"}),
            ),
        )
            .into_response()
    }
}

async fn register(State(auth): State<Auth>, Json(body): Json<Value>) -> impl IntoResponse {
    auth.registrations.lock().unwrap().push(body.clone());
    let role = body["role"].as_str().unwrap_or("user").to_string();
    (
        StatusCode::CREATED,
        Json(json!({"id": "new-id", "username": body["username"], "roles": [role]})),
    )
}

async fn delete_account(
    State(auth): State<Auth>,
    axum::extract::Path(username): axum::extract::Path<String>,
) -> StatusCode {
    auth.deleted_accounts.lock().unwrap().push(username);
    // What the real auth answers: no body.
    StatusCode::NO_CONTENT
}

async fn guest(State(auth): State<Auth>, body: axum::body::Bytes) -> Json<Value> {
    let name = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|b| b["username"].as_str().map(str::to_string))
        .unwrap_or_else(|| "guest".into());
    token_response(auth.token(&name, &["guest"]))
}

/// The fake `db`.
#[derive(Clone)]
pub(crate) struct Db {
    pub(crate) records: Arc<Mutex<HashMap<String, Value>>>,
    pub(crate) gets: Arc<AtomicUsize>,
    /// Reads wait while this is `false`.
    pub(crate) open: watch::Sender<bool>,
    /// Answer every request with this status when set.
    pub(crate) fail_with: Arc<Mutex<Option<StatusCode>>>,
    pub(crate) request_ids: Arc<Mutex<Vec<String>>>,
}

impl Db {
    pub(crate) async fn start(records: &[(&str, Value)]) -> (Db, Server) {
        let db = Db {
            records: Arc::new(Mutex::new(
                records
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect(),
            )),
            gets: Arc::default(),
            open: watch::channel(true).0,
            fail_with: Arc::default(),
            request_ids: Arc::default(),
        };
        let app = Router::new()
            .route("/db/{key}", get(db_get).put(db_put))
            .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
            .with_state(db.clone());
        (db.clone(), spawn(app).await)
    }

    pub(crate) fn gets(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
    }

    pub(crate) fn hold(&self) {
        self.open.send_replace(false);
    }

    pub(crate) fn release(&self) {
        self.open.send_replace(true);
    }
}

fn record(key: &str, value: &Value) -> Value {
    json!({"key": key, "value": value, "updated_at": "2025-01-01T00:00:00Z"})
}

async fn db_get(
    State(db): State<Db>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> axum::response::Response {
    db.gets.fetch_add(1, Ordering::SeqCst);
    if let Some(rid) = headers.get("x-request-id").and_then(|v| v.to_str().ok()) {
        db.request_ids.lock().unwrap().push(rid.to_string());
    }
    // The value is read first and answered after the hold: a held read is one whose answer is
    // still on its way while a write lands (what the write fence must cope with).
    let value = db.records.lock().unwrap().get(&key).cloned();
    let mut open = db.open.subscribe();
    let _ = open.wait_for(|o| *o).await;
    if let Some(status) = *db.fail_with.lock().unwrap() {
        return (
            status,
            Json(json!({"error": "boom", "message": "db says no"})),
        )
            .into_response();
    }
    match value {
        Some(v) => Json(record(&key, &v)).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "not_found", "message": "no such key"})),
        )
            .into_response(),
    }
}

async fn db_put(
    State(db): State<Db>,
    Path(key): Path<String>,
    Json(body): Json<Value>,
) -> Json<Value> {
    let value = body["value"].clone();
    db.records
        .lock()
        .unwrap()
        .insert(key.clone(), value.clone());
    Json(record(&key, &value))
}

/// The `cache` service double.
#[derive(Clone, Default)]
pub(crate) struct CacheService {
    pub(crate) entries: Arc<Mutex<HashMap<String, Value>>>,
}

impl CacheService {
    pub(crate) async fn start() -> (CacheService, Server) {
        let cache = CacheService::default();
        let app = Router::new()
            .route(
                "/cache/{key}",
                get(cache_get).put(cache_put).delete(cache_delete),
            )
            .route("/cache/flush", post(cache_flush))
            .route("/cache/stats", get(cache_stats))
            .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
            .with_state(cache.clone());
        (cache.clone(), spawn(app).await)
    }
}

/// Hands out a lease when asked (always `1`: this double voids none, the real service's leases
/// are tested in `crates/cache`).
async fn cache_get(
    State(c): State<CacheService>,
    Path(key): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Json<Value> {
    let entry = c.entries.lock().unwrap().get(&key).cloned();
    let lease = match (q.get("lease").map(String::as_str), &entry) {
        (Some("always"), _) | (Some("on_miss"), None) => json!(1),
        _ => Value::Null,
    };
    match entry {
        Some(v) => Json(json!({"value": v, "found": true, "lease": lease})),
        None => Json(json!({"value": null, "found": false, "lease": lease})),
    }
}

async fn cache_put(
    State(c): State<CacheService>,
    Path(key): Path<String>,
    Json(body): Json<Value>,
) -> Json<Value> {
    c.entries
        .lock()
        .unwrap()
        .insert(key.clone(), body["value"].clone());
    Json(json!({"stored": true, "key": key, "ttl": body["ttl"].as_u64().unwrap_or(30)}))
}

async fn cache_delete(State(c): State<CacheService>, Path(key): Path<String>) -> Json<Value> {
    let existed = c.entries.lock().unwrap().remove(&key).is_some();
    Json(json!({"deleted": existed}))
}

async fn cache_flush(State(c): State<CacheService>) -> Json<Value> {
    c.entries.lock().unwrap().clear();
    Json(json!({"flushed": true}))
}

async fn cache_stats(State(c): State<CacheService>) -> Json<Value> {
    let n = c.entries.lock().unwrap().len();
    Json(
        json!({"entries": n, "hits": 0, "misses": 0, "hit_ratio": 0.0, "evictions": 0, "expired": 0}),
    )
}

/// A `service` instance answering `/process` with its id.
pub(crate) async fn service(id: &'static str) -> Server {
    let app = Router::new()
        .route(
            "/process",
            get(move || async move {
                Json(json!({"message": "Business logic executed", "service_id": id, "processing_ms": 1.5}))
            }),
        )
        .route("/health", get(|| async { "ok" }));
    spawn(app).await
}
