//! Profiles through the gateway: registration across `auth` and `users`, your own profile, the
//! admin routes, and `GET /users/{id}` cache-aside.
//!
//! - `POST /register` creates the credentials in `auth`, then the profile in `users` with the
//!   account's id. If the profile cannot be made, the account is deleted again, so that nobody is
//!   half registered; the client gets the profile's error (or `503 registration_failed`).
//!   Profile fields are checked before `auth` is called, so a bad email costs no account.
//! - `DELETE /users/me` removes the profile, then the account; both steps treat "already gone" as
//!   done, so a retry after a failure finishes the job.
//! - Roles come from the token; the role each route needs is `Config::required_roles`. A role
//!   change (`PATCH /users/{id}/role`) is written to `users` and `auth`; it is in the user's
//!   tokens from their next login on.
//! - `GET /users/{id}` is cached under a key no `/data` key can be (it starts with a control
//!   character, which `/data` refuses), filled from the shard's primary (never a lagging replica),
//!   and deleted on every update and delete of that user.

use std::time::Duration;

use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch};
use common::{ApiError, Json, RequestId};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use api::client::{ClientError, UsersClient};
use api::wire::auth::{Account, RegisterRequest, RolesRequest};
use api::wire::users::{CreateProfile, Profile, ProfilePage, RoleChange, UpdateProfile};

use crate::error::from_client;
use crate::routes::require;
use crate::tokens::Caller;
use crate::{AppState, Error};

/// The profile routes (registration is routed in `lib.rs`, beside login).
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/users/me", get(me).patch(update_me).delete(delete_me))
        .route("/getUserData", get(me))
        .route("/users", get(list))
        .route("/users/{id}", get(get_user))
        .route("/users/{id}/role", patch(set_role))
}

/// `POST /register` body: credentials plus the optional profile fields.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct RegisterUser {
    username: String,
    password: String,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    first_name: Option<String>,
    #[serde(default)]
    last_name: Option<String>,
}

/// `POST /register` answer: the account and, when the topology has `users`, the profile.
#[derive(Debug, Serialize)]
pub(crate) struct Registered {
    #[serde(flatten)]
    account: Account,
    #[serde(skip_serializing_if = "Option::is_none")]
    profile: Option<Profile>,
}

impl AppState {
    /// Refuses `caller` unless they hold the role `required_roles` names for `route`.
    pub(crate) fn require_route(&self, caller: &Caller, route: &str) -> Result<(), Error> {
        match self.inner.config.required_roles.get(route) {
            None => Ok(()),
            Some(role) => require(caller, role, route),
        }
    }

    fn users(&self) -> Result<&UsersClient, Error> {
        self.inner
            .users
            .as_ref()
            .ok_or_else(|| Error::UpstreamOverloaded {
                service: "users",
                detail: "this topology has no users service (users_url is empty)".into(),
            })
    }
}

/// A `users` failure for the client: its own 4xx and its `503 shard_unavailable` (which names a
/// shard and nothing internal) pass through; the rest as usual.
fn users_error(e: ClientError) -> Error {
    match e {
        ClientError::Status {
            service,
            status,
            body,
        } if status.is_client_error() || body.error == "shard_unavailable" => Error::Upstream {
            service,
            status,
            body,
        },
        other => from_client(other),
    }
}

fn me_of(caller: &Caller) -> Result<(&str, &str), Error> {
    match caller {
        Caller::User(c) if c.sub != "guest" => Ok((&c.sub, &c.username)),
        _ => Err(Error::Forbidden(
            "this route needs a user's token (log in first)".into(),
        )),
    }
}

fn cache_key(id: &str) -> String {
    format!("\u{1f}users:{id}")
}

async fn invalidate(state: &AppState, id: &str, rid: &str) {
    if let Err(e) = state.inner.cache.delete(&cache_key(id), rid).await {
        tracing::warn!(error = %e, %id, "cache delete after a profile write failed; the old profile stays until its TTL");
        metrics::counter!("scalelab_gateway_cache_errors_total", "op" => "delete").increment(1);
    }
}

/// `POST /register`, `POST /auth/register`.
pub(crate) async fn register(
    State(state): State<AppState>,
    RequestId(rid): RequestId,
    caller: Caller,
    body: Result<Json<RegisterUser>, ApiError>,
) -> Result<(StatusCode, Json<Registered>), Error> {
    let Json(req) = body?;
    let role = match req.role.as_deref() {
        None | Some("user") => None,
        Some(role) => {
            require(
                &caller,
                "admin",
                &format!("creating an account with role {role:?}"),
            )?;
            Some(role.to_string())
        }
    };
    let users = state.inner.users.clone();
    let mut profile = CreateProfile {
        id: "pending".into(),
        username: req.username.clone(),
        email: req.email,
        first_name: req.first_name,
        last_name: req.last_name,
        role: role.clone(),
    };
    if users.is_some() {
        // The same rules `users` applies, before an account exists that would need undoing.
        // The username's own rule is auth's to report (with its code).
        if let Err(invalid) = profile.validate()
            && invalid.code != "invalid_username"
        {
            return Err(Error::Rejected(ApiError::bad_request(
                invalid.code,
                invalid.message,
            )));
        }
    }
    let credentials = RegisterRequest {
        username: req.username,
        password: req.password,
        role,
    };
    let (status, account): (_, Account) = state
        .inner
        .auth
        .call(Method::POST, "/register", Some(&credentials), &rid)
        .await?;
    let Some(users) = users else {
        return Ok((
            status,
            Json(Registered {
                account,
                profile: None,
            }),
        ));
    };
    profile.id = account.id.clone();
    profile.role = account.roles.first().cloned();
    match users.create(&profile, &rid).await {
        Ok(created) => Ok((
            status,
            Json(Registered {
                account,
                profile: Some(created),
            }),
        )),
        Err(e) => {
            tracing::warn!(error = %e, username = %account.username, "profile creation failed; deleting the new account");
            let undo = state
                .inner
                .auth
                .exchange::<()>(
                    Method::DELETE,
                    &format!(
                        "/accounts/{}",
                        api::client::encode_segment(&account.username)
                    ),
                    None,
                    &rid,
                )
                .await;
            match undo {
                Ok((s, _)) if s.is_success() || s == StatusCode::NOT_FOUND => {}
                other => {
                    // The one case that leaves an account without a profile: logged loudly so
                    // an operator can delete it; the client is told registration failed.
                    tracing::error!(username = %account.username, result = ?other.map(|(s, _)| s), "could not undo the account of a failed registration");
                }
            }
            // The profile may still be written after we gave up on it (a slow or frozen `users`
            // answers a request it had already received): delete it in the background, a few
            // times over, so that such a late profile does not keep the name taken.
            tokio::spawn(forget_profile(
                users.clone(),
                account.id.clone(),
                rid.clone(),
            ));
            metrics::counter!("scalelab_gateway_registrations_undone_total").increment(1);
            match users_error(e) {
                // A refusal (409, 400) is the client's to see; any outage is "nothing happened".
                e @ Error::Upstream { status, .. } if status.is_client_error() => Err(e),
                _ => Err(Error::Rejected(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "registration_failed",
                    "the profile could not be created, so nothing was registered; try again",
                ))),
            }
        }
    }
}

/// Deletes the profile `id` at 0, 1, 2, 4, 8, 16 and 32 s, stopping once a delete finds it.
async fn forget_profile(users: UsersClient, id: String, rid: String) {
    let mut delay = Duration::from_secs(1);
    for attempt in 0..7 {
        if attempt > 0 {
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
        match users.delete(&id, &rid).await {
            Ok(true) => {
                tracing::info!(%id, "deleted the late profile of an undone registration");
                return;
            }
            Ok(false) => {}
            Err(e) => tracing::debug!(error = %e, %id, "profile cleanup: users still failing"),
        }
    }
}

/// `GET /users/me`, `GET /getUserData`: your profile, from the primary (read-your-writes).
pub(crate) async fn me(
    State(state): State<AppState>,
    RequestId(rid): RequestId,
    caller: Caller,
) -> Result<Json<Profile>, Error> {
    let (id, _) = me_of(&caller)?;
    state
        .users()?
        .get(id, true, &rid)
        .await
        .map_err(users_error)?
        .map(Json)
        .ok_or_else(|| Error::NotFound("you have no profile".into()))
}

/// `PATCH /users/me`: change your email or names (not your role).
pub(crate) async fn update_me(
    State(state): State<AppState>,
    RequestId(rid): RequestId,
    caller: Caller,
    body: Result<Json<UpdateProfile>, ApiError>,
) -> Result<Json<Profile>, Error> {
    let (id, _) = me_of(&caller)?;
    let Json(req) = body?;
    if req.role.is_some() {
        state.require_route(&caller, "PATCH /users/{id}/role")?;
    }
    let profile = state
        .users()?
        .update(id, &req, &rid)
        .await
        .map_err(users_error)?;
    invalidate(&state, id, &rid).await;
    if let Some(role) = req.role {
        // An admin changing their own role: auth must agree, as for `PATCH /users/{id}/role`.
        set_account_role(&state, &profile.username, role, &rid).await?;
    }
    Ok(Json(profile))
}

/// Writes `role` to the account in auth (the roles future tokens carry).
async fn set_account_role(
    state: &AppState,
    username: &str,
    role: String,
    rid: &str,
) -> Result<Account, Error> {
    let roles = RolesRequest { roles: vec![role] };
    let (_, account) = state
        .inner
        .auth
        .call(
            Method::PUT,
            &format!("/accounts/{}/roles", api::client::encode_segment(username)),
            Some(&roles),
            rid,
        )
        .await?;
    Ok(account)
}

/// `DELETE /users/me`: the profile, then the account.
pub(crate) async fn delete_me(
    State(state): State<AppState>,
    RequestId(rid): RequestId,
    caller: Caller,
) -> Result<Json<Value>, Error> {
    let (id, username) = me_of(&caller)?;
    let profile = state.users()?.delete(id, &rid).await.map_err(users_error)?;
    invalidate(&state, id, &rid).await;
    let (status, bytes) = state
        .inner
        .auth
        .exchange::<()>(
            Method::DELETE,
            &format!("/accounts/{}", api::client::encode_segment(username)),
            None,
            &rid,
        )
        .await?;
    let account = if status.is_success() {
        true
    } else if status == StatusCode::NOT_FOUND {
        false
    } else {
        return Err(state.inner.auth.error(status, &bytes));
    };
    Ok(Json(
        json!({"deleted": true, "profile": profile, "account": account}),
    ))
}

/// `GET /users` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    after: Option<String>,
    limit: Option<u32>,
}

/// `GET /users?after=&limit=` (admin by default): one page in id order across every shard.
pub(crate) async fn list(
    State(state): State<AppState>,
    RequestId(rid): RequestId,
    caller: Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<ProfilePage>, Error> {
    state.require_route(&caller, "GET /users")?;
    let Query(q) = query
        .map_err(|e| Error::Rejected(ApiError::bad_request("invalid_query", e.body_text())))?;
    state
        .users()?
        .list(q.after.as_deref(), q.limit.unwrap_or(50), &rid)
        .await
        .map(Json)
        .map_err(users_error)
}

fn x_cache(hit: bool) -> (HeaderName, HeaderValue) {
    (
        HeaderName::from_static(api::headers::CACHE),
        HeaderValue::from_static(if hit { "HIT" } else { "MISS" }),
    )
}

/// `GET /users/{id}`: yours, or anyone's with the role `required_roles` names; cache-aside.
pub(crate) async fn get_user(
    State(state): State<AppState>,
    RequestId(rid): RequestId,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, Error> {
    let Path(id) = id.map_err(|_| Error::NotFound("no user has this id".into()))?;
    if caller.user_id() != Some(id.as_str()) {
        state.require_route(&caller, "GET /users/{id}")?;
    }
    let users = state.users()?;
    let key = cache_key(&id);
    match state.inner.cache.get(&key, &rid).await {
        Ok(Some(value)) => {
            if let Ok(profile) = serde_json::from_value::<Profile>(value) {
                return Ok(([x_cache(true)], axum::Json(profile)).into_response());
            }
        }
        Ok(None) => {}
        Err(e) => {
            // A cache outage costs latency, never an answer.
            tracing::warn!(error = %e, "cache read failed; reading users");
            metrics::counter!("scalelab_gateway_cache_errors_total", "op" => "get").increment(1);
        }
    }
    let profile = users
        .get(&id, true, &rid)
        .await
        .map_err(users_error)?
        .ok_or_else(|| Error::NotFound(format!("no user has the id {id:?}")))?;
    let ttl = Duration::from_secs(state.inner.config.cache_ttl_secs);
    match serde_json::to_value(&profile) {
        Ok(value) => {
            if let Err(e) = state.inner.cache.set(&key, &value, ttl, &rid).await {
                tracing::warn!(error = %e, "cache write failed");
                metrics::counter!("scalelab_gateway_cache_errors_total", "op" => "set")
                    .increment(1);
            }
        }
        Err(e) => tracing::warn!(error = %e, "a profile did not serialise for the cache"),
    }
    Ok(([x_cache(false)], axum::Json(profile)).into_response())
}

/// `PATCH /users/{id}/role` `{"role": "admin"}` (admin by default): in `users` and in `auth`;
/// effective from the user's next login.
pub(crate) async fn set_role(
    State(state): State<AppState>,
    RequestId(rid): RequestId,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<RoleChange>, ApiError>,
) -> Result<Json<Value>, Error> {
    state.require_route(&caller, "PATCH /users/{id}/role")?;
    let Path(id) = id.map_err(|_| Error::NotFound("no user has this id".into()))?;
    let Json(change) = body?;
    let users = state.users()?;
    let update = UpdateProfile {
        role: Some(change.role.clone()),
        ..UpdateProfile::default()
    };
    let profile = users
        .update(&id, &update, &rid)
        .await
        .map_err(users_error)?;
    invalidate(&state, &id, &rid).await;
    let account = set_account_role(&state, &profile.username, change.role, &rid).await?;
    Ok(Json(json!({
        "profile": profile,
        "roles": account.roles,
        "effective": "at the user's next login",
    })))
}
