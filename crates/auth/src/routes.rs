//! The HTTP handlers of the internal auth API (the gateway is the caller).

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use common::Json;
use serde_json::{Value, json};

use api::wire::auth::{Account, LoginRequest, RegisterRequest, RolesRequest, TokenResponse};

use crate::store::StoredAccount;
use crate::{AppState, Error, validate};

/// `POST /login`: a token for a username and password. Unknown user and wrong password take the
/// same time and get the same `401`.
pub(crate) async fn login(
    State(state): State<AppState>,
    Json(req): Json<LoginRequest>,
) -> Result<Json<TokenResponse>, Error> {
    let result = check_login(&state, req).await;
    let outcome = match &result {
        Ok(_) => "success",
        Err(Error::InvalidCredentials) => "invalid_credentials",
        Err(_) => "error",
    };
    metrics::counter!(
        "scalelab_auth_logins_total",
        "outcome" => outcome,
        "id" => state.instance().id.to_string()
    )
    .increment(1);
    result.map(Json)
}

async fn check_login(state: &AppState, req: LoginRequest) -> Result<TokenResponse, Error> {
    // Register never stores a longer password, so this says nothing about the account, and it
    // keeps hashing cost per request bounded.
    if req.password.chars().count() > validate::MAX_PASSWORD_CHARS {
        return Err(Error::InvalidCredentials);
    }
    let Some(account) = state.store().find(&req.username).await? else {
        state.hasher().verify_dummy(req.password).await?;
        return Err(Error::InvalidCredentials);
    };
    if !state
        .hasher()
        .verify(req.password, &account.password_hash)
        .await?
    {
        return Err(Error::InvalidCredentials);
    }
    state.issue(
        &account.id,
        &account.username,
        &account.roles,
        state.config().token_ttl_secs,
    )
}

/// `POST /register`: a new account (`201`).
pub(crate) async fn register(
    State(state): State<AppState>,
    Json(req): Json<RegisterRequest>,
) -> Result<(StatusCode, Json<Account>), Error> {
    let result = create_account(&state, req).await;
    let outcome = match &result {
        Ok(_) => "created",
        Err(Error::UsernameTaken) => "taken",
        Err(Error::InvalidUsername | Error::InvalidRole(_) | Error::WeakPassword { .. }) => {
            "invalid"
        }
        Err(_) => "error",
    };
    metrics::counter!(
        "scalelab_auth_registrations_total",
        "outcome" => outcome,
        "id" => state.instance().id.to_string()
    )
    .increment(1);
    result.map(|account| (StatusCode::CREATED, Json(account)))
}

async fn create_account(state: &AppState, req: RegisterRequest) -> Result<Account, Error> {
    validate::username(&req.username)?;
    let role = validate::role(req.role.as_deref(), &state.config().roles)?;
    validate::password(&req.password, state.config().password_min_len)?;
    // A cheap look first saves a hash for the common duplicate; the insert below is the truth.
    if state.store().find(&req.username).await?.is_some() {
        return Err(Error::UsernameTaken);
    }
    let account = StoredAccount {
        id: uuid::Uuid::new_v4().to_string(),
        username: req.username,
        password_hash: state.hasher().hash(req.password).await?,
        roles: vec![role.to_string()],
        created_at_ms: common::now_ms() as i64,
    };
    if !state.store().insert(&account).await? {
        return Err(Error::UsernameTaken);
    }
    tracing::info!(username = %account.username, role, "account created");
    Ok(account.to_account())
}

/// `POST /guest-token` `[{"username": name}]`: a short-lived token for an anonymous guest, carrying
/// `name` (checked like an account name) when one is given. Still a guest: subject and role
/// `guest`, no account behind it.
pub(crate) async fn guest_token(
    State(state): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Json<TokenResponse>, Error> {
    let req: api::wire::auth::GuestRequest = if body.iter().all(u8::is_ascii_whitespace) {
        Default::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            Error::InvalidBody(format!("the body is not a guest token request: {e}"))
        })?
    };
    let username = match req.username.as_deref() {
        Some(name) => {
            crate::validate::username(name)?;
            name
        }
        None => "guest",
    };
    let roles = ["guest".to_string()];
    state
        .issue(
            "guest",
            username,
            &roles,
            state.config().guest_token_ttl_secs,
        )
        .map(Json)
}

/// `GET /.well-known/jwks.json`: the public keys; verifiers may cache them for five minutes.
pub(crate) async fn jwks(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "public, max-age=300")],
        Json(state.jwks()),
    )
}

/// `GET /accounts/{username}`.
pub(crate) async fn get_account(
    State(state): State<AppState>,
    username: Result<Path<String>, PathRejection>,
) -> Result<Json<Account>, Error> {
    let username = path_username(username)?;
    match state.store().find(&username).await? {
        Some(account) => Ok(Json(account.to_account())),
        None => Err(Error::AccountNotFound(username)),
    }
}

/// `DELETE /accounts/{username}`: `204` when it existed.
pub(crate) async fn delete_account(
    State(state): State<AppState>,
    username: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, Error> {
    let username = path_username(username)?;
    if state.store().delete(&username).await? {
        tracing::info!(%username, "account deleted");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Error::AccountNotFound(username))
    }
}

/// `PUT /accounts/{username}/roles` `{"roles": [...]}`: replaces the account's roles. Tokens
/// already issued keep their roles until they expire; the next login carries the new ones.
pub(crate) async fn set_roles(
    State(state): State<AppState>,
    username: Result<Path<String>, PathRejection>,
    Json(req): Json<RolesRequest>,
) -> Result<Json<Account>, Error> {
    let username = path_username(username)?;
    let known = &state.config().roles;
    if req.roles.is_empty() {
        return Err(Error::InvalidRole(known.join(", ")));
    }
    for role in &req.roles {
        validate::role(Some(role), known)?;
    }
    if !state.store().set_roles(&username, &req.roles).await? {
        return Err(Error::AccountNotFound(username));
    }
    tracing::info!(%username, roles = ?req.roles, "roles changed");
    match state.store().find(&username).await? {
        Some(account) => Ok(Json(account.to_account())),
        None => Err(Error::AccountNotFound(username)),
    }
}

/// A path segment that is not UTF-8 cannot name an account: answer the JSON `404`, not axum's
/// plain-text rejection.
fn path_username(p: Result<Path<String>, PathRejection>) -> Result<String, Error> {
    p.map(|Path(u)| u)
        .map_err(|_| Error::AccountNotFound("<not UTF-8>".to_string()))
}

/// `GET /ready`: `200` when the store answers, `503 store_unavailable` otherwise.
pub(crate) async fn ready(State(state): State<AppState>) -> Result<Json<Value>, Error> {
    state.store().ping().await?;
    Ok(Json(json!({"status": "ready"})))
}
