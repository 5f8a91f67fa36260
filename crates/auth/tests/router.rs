//! The auth API through its router, as the gateway sees it: no sockets, no sleeps.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use auth::{AppState, Config, CredentialStore, Error, SqlStore, StoredAccount};
use axum::http::{Method, StatusCode, header};
use common::testing;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};

use api::wire::auth::{Account, Claims, TokenResponse};
use common::Instance;

const ADMIN_PASSWORD: &str = "admin-password-for-tests";

/// A config on `dir` with argon2 cheap enough for tests.
fn config(dir: &Path) -> Config {
    Config {
        data_dir: dir.to_path_buf(),
        admin_password: Some(ADMIN_PASSWORD.to_string()),
        argon2_memory_kib: 64,
        argon2_iterations: 1,
        argon2_parallelism: 1,
        ..Config::default()
    }
}

fn instance(n: u32) -> Instance {
    Instance::new("auth", format!("auth-{n}"))
}

async fn state(dir: &Path) -> AppState {
    AppState::new(config(dir), instance(1))
        .await
        .expect("state")
}

/// Sends one request and returns the status, headers and the body parsed as JSON (`null` if empty).
async fn call(
    state: &AppState,
    method: Method,
    uri: &str,
    body: Option<&str>,
) -> (StatusCode, axum::http::HeaderMap, Value) {
    let answer = testing::call(
        &auth::router(state.clone()),
        testing::request(method, uri, body),
    )
    .await;
    (answer.status, answer.headers, answer.json)
}

async fn post(state: &AppState, uri: &str, body: Value) -> (StatusCode, Value) {
    let (s, _, v) = call(state, Method::POST, uri, Some(&body.to_string())).await;
    (s, v)
}

async fn register(state: &AppState, username: &str, password: &str) -> (StatusCode, Value) {
    post(
        state,
        "/register",
        json!({"username": username, "password": password}),
    )
    .await
}

async fn login(state: &AppState, username: &str, password: &str) -> (StatusCode, Value) {
    post(
        state,
        "/login",
        json!({"username": username, "password": password}),
    )
    .await
}

/// Verifies `token` against the JWKS the router publishes, as the gateway does.
async fn verify(state: &AppState, token: &str) -> Claims {
    let (status, _, jwks) = call(state, Method::GET, "/.well-known/jwks.json", None).await;
    assert_eq!(status, StatusCode::OK);
    let set: JwkSet = serde_json::from_value(jwks).expect("a JWK set");
    let kid = jsonwebtoken::decode_header(token)
        .expect("header")
        .kid
        .expect("tokens carry a kid");
    let jwk = set.find(&kid).expect("the token's kid is published");
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_issuer(&["scalelab-auth"]);
    validation.set_required_spec_claims(&["exp", "iss", "sub"]);
    jsonwebtoken::decode::<Claims>(
        token,
        &DecodingKey::from_jwk(jwk).expect("key"),
        &validation,
    )
    .expect("the token verifies against the JWKS")
    .claims
}

fn token_of(body: Value) -> TokenResponse {
    serde_json::from_value(body).expect("a token response")
}

#[tokio::test]
async fn register_then_login_gives_a_token_that_verifies_against_the_jwks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = state(dir.path()).await;

    let (status, body) = register(&state, "alice", "correct horse").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let account: Account = serde_json::from_value(body).expect("an account");
    assert_eq!(account.username, "alice");
    assert_eq!(account.roles, vec!["user"]);
    assert!(uuid::Uuid::parse_str(&account.id).is_ok());

    let (status, body) = login(&state, "alice", "correct horse").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = token_of(body);
    assert_eq!(token.token_type, "Bearer");
    assert_eq!(token.expires_in, 3600);

    let claims = verify(&state, &token.token).await;
    assert_eq!(claims.sub, account.id);
    assert_eq!(claims.username, "alice");
    assert_eq!(claims.roles, vec!["user"]);
    assert_eq!(claims.iss, "scalelab-auth");
    assert_eq!(claims.exp - claims.iat, 3600);
    let header = jsonwebtoken::decode_header(&token.token).expect("header");
    assert_eq!(header.alg, Algorithm::EdDSA);
    assert_eq!(header.kid.as_deref(), Some(state.kid()));
}

#[tokio::test]
async fn wrong_password_and_unknown_user_get_the_same_answer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = state(dir.path()).await;
    assert_eq!(
        register(&state, "bob", "bobs-password").await.0,
        StatusCode::CREATED
    );

    let wrong = login(&state, "bob", "not-bobs-password").await;
    let unknown = login(&state, "nobody", "bobs-password").await;
    assert_eq!(wrong.0, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong, unknown);
    assert_eq!(wrong.1["error"], "invalid_credentials");
    // An over-long password is just another wrong password.
    assert_eq!(login(&state, "bob", &"x".repeat(2000)).await, wrong);
}

#[tokio::test]
async fn a_taken_username_is_409() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = state(dir.path()).await;
    assert_eq!(
        register(&state, "carol", "password-1").await.0,
        StatusCode::CREATED
    );
    let (status, body) = register(&state, "carol", "password-2").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"], "username_taken");
    // The first password still works; the second never took.
    assert_eq!(login(&state, "carol", "password-1").await.0, StatusCode::OK);
    assert_eq!(
        login(&state, "carol", "password-2").await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn bad_registrations_are_400_with_a_stable_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = state(dir.path()).await;
    let cases = [
        (
            json!({"username": "dave", "password": "short"}),
            "weak_password",
        ),
        (
            json!({"username": "dave", "password": "x".repeat(1025)}),
            "weak_password",
        ),
        (
            json!({"username": "da", "password": "long-enough"}),
            "invalid_username",
        ),
        (
            json!({"username": "da ve", "password": "long-enough"}),
            "invalid_username",
        ),
        (
            json!({"username": "x".repeat(65), "password": "long-enough"}),
            "invalid_username",
        ),
        (
            json!({"username": "dave", "password": "long-enough", "role": "root"}),
            "invalid_role",
        ),
        (
            json!({"username": "dave", "password": "long-enough", "role": "guest"}),
            "invalid_role",
        ),
    ];
    for (body, code) in cases {
        let (status, answer) = post(&state, "/register", body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(answer["error"], code, "{body}");
        assert!(answer["message"].is_string());
    }
    // Nothing was created along the way.
    let (status, _, _) = call(&state, Method::GET, "/accounts/dave", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn an_admin_role_can_be_granted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = state(dir.path()).await;
    let (status, body) = post(
        &state,
        "/register",
        json!({"username": "erin", "password": "erins-password", "role": "admin"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["roles"], json!(["admin"]));
    let token = token_of(login(&state, "erin", "erins-password").await.1);
    assert_eq!(verify(&state, &token.token).await.roles, vec!["admin"]);
}

#[tokio::test]
async fn bad_bodies_get_json_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = state(dir.path()).await;
    for uri in ["/login", "/register"] {
        let (status, _, body) = call(&state, Method::POST, uri, Some("{not json")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(body["error"], "malformed_json", "{uri}");

        let (status, _, body) = call(&state, Method::POST, uri, Some(r#"{"username":"x"}"#)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(body["error"], "invalid_body", "{uri}");
    }
}

#[tokio::test]
async fn guest_tokens_are_short_lived_and_verify() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = state(dir.path()).await;
    let (status, _, body) = call(&state, Method::POST, "/guest-token", None).await;
    assert_eq!(status, StatusCode::OK);
    let token = token_of(body);
    assert_eq!(token.expires_in, 300);
    let claims = verify(&state, &token.token).await;
    assert_eq!(
        (claims.sub.as_str(), claims.username.as_str()),
        ("guest", "guest")
    );
    assert_eq!(claims.roles, vec!["guest"]);
    assert_eq!(claims.exp - claims.iat, 300);

    // The lab's call names a user: the token carries the name, and is still a guest's.
    let (status, _, body) = call(
        &state,
        Method::POST,
        "/guest-token",
        Some(r#"{"username": "test_user"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let claims = verify(&state, &token_of(body).token).await;
    assert_eq!(
        (claims.sub.as_str(), claims.username.as_str()),
        ("guest", "test_user")
    );
    assert_eq!(claims.roles, vec!["guest"]);
    for (bad, code) in [
        (r#"{"username": "x"}"#, "invalid_username"),
        (r#"{"username": "a b c"}"#, "invalid_username"),
        (r#"{"user": "test_user"}"#, "invalid_body"),
        ("not json", "invalid_body"),
    ] {
        let (status, _, body) = call(&state, Method::POST, "/guest-token", Some(bad)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some(code)),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn the_jwks_publishes_one_ed25519_key_and_may_be_cached() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = state(dir.path()).await;
    let (status, headers, body) = call(&state, Method::GET, "/.well-known/jwks.json", None).await;
    assert_eq!(status, StatusCode::OK);
    let cache = headers
        .get(header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(cache.contains("max-age=300"), "{cache}");
    let keys = body["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 1);
    let key = &keys[0];
    assert_eq!(key["kty"], "OKP");
    assert_eq!(key["crv"], "Ed25519");
    assert_eq!(key["alg"], "EdDSA");
    assert_eq!(key["use"], "sig");
    assert_eq!(key["kid"], state.kid());
    assert_eq!(body, state.jwks());
}

#[tokio::test]
async fn two_instances_on_one_data_dir_share_one_key_and_the_accounts() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Started at the same moment, as `scalelab up` does.
    let (a, b) = tokio::join!(
        AppState::new(config(dir.path()), instance(1)),
        AppState::new(config(dir.path()), instance(2)),
    );
    let (a, b) = (a.expect("auth-1"), b.expect("auth-2"));
    assert_eq!(a.kid(), b.kid());
    assert_eq!(a.jwks(), b.jwks());

    assert_eq!(
        register(&a, "frank", "franks-password").await.0,
        StatusCode::CREATED
    );
    let token = token_of(login(&b, "frank", "franks-password").await.1);
    // A token from one instance verifies against the other's JWKS.
    assert_eq!(verify(&a, &token.token).await.username, "frank");
    assert_eq!(
        register(&b, "frank", "other-password").await.0,
        StatusCode::CONFLICT
    );
}

#[cfg(unix)]
#[tokio::test]
async fn the_generated_key_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let _state = state(dir.path()).await;
    let meta = std::fs::metadata(dir.path().join("auth-signing-key.pem")).expect("key file");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(dir.path().join("auth.sqlite").exists());
}

#[tokio::test]
async fn the_bootstrap_admin_logs_in_and_is_created_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = state(dir.path()).await;
    let (status, _, admin) = call(&first, Method::GET, "/accounts/admin", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(admin["roles"], json!(["admin"]));

    let (status, body) = login(&first, "admin", ADMIN_PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let claims = verify(&first, &token_of(body).token).await;
    assert_eq!(claims.roles, vec!["admin"]);
    assert_eq!(claims.sub, admin["id"].as_str().expect("id"));

    // A restart with another password neither recreates nor changes the admin.
    let second = AppState::new(
        Config {
            admin_password: Some("a-different-password".into()),
            ..config(dir.path())
        },
        instance(2),
    )
    .await
    .expect("second state");
    let (_, _, again) = call(&second, Method::GET, "/accounts/admin", None).await;
    assert_eq!(again, admin);
    assert_eq!(
        login(&second, "admin", ADMIN_PASSWORD).await.0,
        StatusCode::OK
    );
    assert_eq!(
        login(&second, "admin", "a-different-password").await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn racing_instances_create_one_admin_with_a_generated_password() {
    let dir = tempfile::tempdir().expect("tempdir");
    let no_password = || Config {
        admin_password: None,
        ..config(dir.path())
    };
    let (a, b) = tokio::join!(
        AppState::new(no_password(), instance(1)),
        AppState::new(no_password(), instance(2)),
    );
    let (a, b) = (a.expect("auth-1"), b.expect("auth-2"));
    let (status, _, from_a) = call(&a, Method::GET, "/accounts/admin", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(from_a["roles"], json!(["admin"]));
    let (_, _, from_b) = call(&b, Method::GET, "/accounts/admin", None).await;
    assert_eq!(from_a, from_b);
    // The generated password is random: the obvious guesses fail.
    for guess in ["admin", "password", ""] {
        assert_eq!(login(&a, "admin", guess).await.0, StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn a_too_short_admin_password_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let weak = Config {
        admin_password: Some("admin".into()),
        ..config(dir.path())
    };
    assert!(matches!(
        AppState::new(weak, instance(1)).await,
        Err(Error::Config(_))
    ));
}

#[tokio::test]
async fn accounts_can_be_read_and_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = state(dir.path()).await;
    let (_, created) = register(&state, "grace", "graces-password").await;

    let (status, _, body) = call(&state, Method::GET, "/accounts/grace", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, created);
    assert!(body.get("password_hash").is_none());

    let (status, _, body) = call(&state, Method::DELETE, "/accounts/grace", None).await;
    assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
    assert_eq!(
        login(&state, "grace", "graces-password").await.0,
        StatusCode::UNAUTHORIZED
    );

    for method in [Method::GET, Method::DELETE] {
        let (status, _, body) = call(&state, method, "/accounts/grace", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"], "not_found");
    }
}

#[tokio::test]
async fn hs256_compat_mode_signs_with_the_secret_and_publishes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = "a-shared-secret-of-at-least-32-bytes";
    let state = AppState::new(
        Config {
            hs256_secret: Some(secret.into()),
            ..config(dir.path())
        },
        instance(1),
    )
    .await
    .expect("state");
    let (_, _, jwks) = call(&state, Method::GET, "/.well-known/jwks.json", None).await;
    assert_eq!(jwks, json!({"keys": []}));
    assert!(!dir.path().join("auth-signing-key.pem").exists());

    let token = token_of(login(&state, "admin", ADMIN_PASSWORD).await.1);
    let data = jsonwebtoken::decode::<Claims>(
        &token.token,
        &DecodingKey::from_secret(secret.as_bytes()),
        &Validation::new(Algorithm::HS256),
    )
    .expect("verifies with the secret");
    assert_eq!(data.header.kid.as_deref(), Some("hs256"));
    assert_eq!(data.claims.roles, vec!["admin"]);
}

/// A store that can be switched off, to see what clients get when the database goes away.
struct Switchable {
    inner: SqlStore,
    down: AtomicBool,
}

impl Switchable {
    fn check(&self) -> Result<(), Error> {
        if self.down.load(Ordering::SeqCst) {
            Err(Error::Store(sqlx::Error::PoolTimedOut))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl CredentialStore for Switchable {
    async fn ping(&self) -> Result<(), Error> {
        self.check()?;
        self.inner.ping().await
    }
    async fn find(&self, username: &str) -> Result<Option<StoredAccount>, Error> {
        self.check()?;
        self.inner.find(username).await
    }
    async fn insert(&self, account: &StoredAccount) -> Result<bool, Error> {
        self.check()?;
        self.inner.insert(account).await
    }
    async fn delete(&self, username: &str) -> Result<bool, Error> {
        self.check()?;
        self.inner.delete(username).await
    }
    async fn set_roles(&self, username: &str, roles: &[String]) -> Result<bool, Error> {
        self.check()?;
        self.inner.set_roles(username, roles).await
    }
}

#[tokio::test]
async fn a_store_outage_is_503_store_unavailable_and_not_ready() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Switchable {
        inner: SqlStore::open_file(&dir.path().join("auth.sqlite"))
            .await
            .expect("sqlite"),
        down: AtomicBool::new(false),
    });
    let state = AppState::with_store(config(dir.path()), instance(1), store.clone())
        .await
        .expect("state");
    let (status, _, body) = call(&state, Method::GET, "/ready", None).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ready"})));

    store.down.store(true, Ordering::SeqCst);
    let (status, _, body) = call(&state, Method::GET, "/ready", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"], "store_unavailable");
    for (status, body) in [
        login(&state, "admin", ADMIN_PASSWORD).await,
        register(&state, "henry", "henrys-password").await,
    ] {
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["error"], "store_unavailable");
        assert!(
            !body["message"]
                .as_str()
                .unwrap_or_default()
                .contains("pool")
        );
    }
    // Tokens that need no store are still handed out.
    let (status, _, _) = call(&state, Method::POST, "/guest-token", None).await;
    assert_eq!(status, StatusCode::OK);

    store.down.store(false, Ordering::SeqCst);
    assert_eq!(
        login(&state, "admin", ADMIN_PASSWORD).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn logins_are_counted_by_outcome() {
    // Install the process recorder before recording anything.
    let handle = common::metrics::handle();
    let dir = tempfile::tempdir().expect("tempdir");
    let state = AppState::new(config(dir.path()), Instance::new("auth", "auth-metrics"))
        .await
        .expect("state");
    login(&state, "admin", ADMIN_PASSWORD).await;
    login(&state, "admin", "wrong-password").await;
    let text = handle.render();
    for outcome in ["success", "invalid_credentials"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("scalelab_auth_logins_total{")
                    && l.contains(&format!("outcome=\"{outcome}\""))
                    && l.contains("id=\"auth-metrics\"")),
            "no {outcome} series in:\n{text}"
        );
    }
}

#[tokio::test]
async fn the_same_flow_works_on_postgresql() {
    let Some(db) = common::testing::fresh_postgres("auth").await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let pg = || Config {
        database_url: Some(db.url.clone()),
        ..config(dir.path())
    };
    let (a, b) = tokio::join!(
        AppState::new(pg(), instance(1)),
        AppState::new(pg(), instance(2))
    );
    let (a, b) = (a.expect("auth-1"), b.expect("auth-2"));
    assert!(
        !dir.path().join("auth.sqlite").exists(),
        "PostgreSQL mode made a SQLite file"
    );

    assert_eq!(
        call(&a, Method::GET, "/ready", None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        register(&a, "ivan", "ivans-password").await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        register(&b, "ivan", "ivans-password").await.0,
        StatusCode::CONFLICT
    );
    let token = token_of(login(&b, "ivan", "ivans-password").await.1);
    assert_eq!(verify(&a, &token.token).await.username, "ivan");
    assert_eq!(
        login(&a, "ivan", "wrong").await,
        login(&a, "nobody", "wrong").await
    );

    let admin = token_of(login(&b, "admin", ADMIN_PASSWORD).await.1);
    assert_eq!(verify(&b, &admin.token).await.roles, vec!["admin"]);
    assert_eq!(
        call(&b, Method::DELETE, "/accounts/ivan", None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(&a, Method::GET, "/accounts/ivan", None).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_role_change_is_in_the_next_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = state(dir.path()).await;
    assert_eq!(
        register(&state, "dora", "dora-password").await.0,
        StatusCode::CREATED
    );
    let (_, before) = login(&state, "dora", "dora-password").await;
    let before = verify(&state, before["token"].as_str().expect("token")).await;
    assert_eq!(before.roles, ["user"]);

    let (status, _, body) = call(
        &state,
        Method::PUT,
        "/accounts/dora/roles",
        Some(r#"{"roles": ["admin"]}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["roles"], json!(["admin"]));
    let (_, after) = login(&state, "dora", "dora-password").await;
    let after = verify(&state, after["token"].as_str().expect("token")).await;
    assert_eq!(after.roles, ["admin"]);

    for (uri, body, want) in [
        (
            "/accounts/dora/roles",
            r#"{"roles": ["root"]}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "/accounts/dora/roles",
            r#"{"roles": []}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "/accounts/nobody/roles",
            r#"{"roles": ["user"]}"#,
            StatusCode::NOT_FOUND,
        ),
    ] {
        let (status, _, answer) = call(&state, Method::PUT, uri, Some(body)).await;
        assert_eq!(status, want, "{uri} {body}: {answer}");
    }
}
