//! Profiles through the gateway: your own profile, the admin routes, and `GET /users/{id}`
//! cache-aside. (Registration, which creates a profile, is in `accounts.rs`.)
//!
//! - `DELETE /users/me` removes the profile, then the account; both steps treat "already gone" as
//!   done, so a retry after a failure finishes the job.
//! - Roles come from the token; the role each route needs is the route table's (`policy.rs`). A
//!   role change (`PATCH /users/{id}/role`) is written to `users` and `auth`; it is in the user's
//!   tokens from their next login on.
//! - `GET /users/{id}` is cached under a key no `/data` key can be (it starts with a control
//!   character, which `/data` refuses), filled from the shard's primary (never a lagging replica),
//!   and deleted on every update and delete of that user, through the write fence, so that a read
//!   racing an update cannot store the old profile.

use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use common::{ApiError, Json, RequestId};

use api::ErrorBody;
use api::client::{ClientError, UsersClient};
use api::wire::auth::{Account, RolesRequest};
use api::wire::gateway::{Deleted, RoleChanged, UsersQuery};
use api::wire::users::{Profile, ProfilePage, RoleChange, UpdateProfile};

use super::{cache_error, x_cache};
use crate::cache::Lookup;
use crate::error::from_client;
use crate::policy::{Endpoint, GUEST};
use crate::tokens::Caller;
use crate::{AppState, Error};

/// This module's routes, as the document describes them (`/getUserData` is added by `openapi` as
/// an alias of `GET /users/me`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(me, update_me, delete_me, list, get_user, set_role))]
pub(super) struct Doc;

pub(super) fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint::new(Method::GET, "/users/me", me),
        Endpoint::new(Method::PATCH, "/users/me", update_me),
        Endpoint::new(Method::DELETE, "/users/me", delete_me),
        Endpoint::new(Method::GET, "/getUserData", me),
        Endpoint::new(Method::GET, "/users", list),
        Endpoint::new(Method::GET, "/users/{id}", get_user),
        Endpoint::new(Method::PATCH, "/users/{id}/role", set_role),
    ]
}

fn users(state: &AppState) -> Result<&UsersClient, Error> {
    state
        .inner
        .users
        .as_ref()
        .ok_or_else(|| Error::UpstreamOverloaded {
            service: "users",
            detail: "this topology has no users service (users_url is empty)".into(),
        })
}

/// A `users` failure for the client: its own 4xx and its `503 shard_unavailable` (which names a
/// shard and nothing internal) pass through; the rest as usual.
pub(super) fn users_error(e: ClientError) -> Error {
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
        Caller::User(c) if c.sub != GUEST => Ok((&c.sub, &c.username)),
        _ => Err(Error::Forbidden(
            "this route needs a user's token (log in first)".into(),
        )),
    }
}

fn cache_key(id: &str) -> String {
    format!("\u{1f}users:{id}")
}

/// Deletes the cached profile through the write fence, so that a read already on its way cannot
/// put the old profile back (the same mechanism as `PUT /data`).
async fn invalidate(state: &AppState, id: &str, rid: &str) {
    let key = cache_key(id);
    let delete = state.inner.cache.delete(&key, rid);
    if let Err(e) = state.inner.fence.invalidate(&key, delete).await {
        tracing::warn!(error = %e, %id, "cache delete after a profile write failed; the old profile stays until its TTL");
        cache_error("delete");
    }
}

/// `GET /users/me`, `GET /getUserData`: your profile, from the primary (read-your-writes).
#[utoipa::path(
    get,
    path = "/users/me",
    tag = "users",
    operation_id = "get_me",
    summary = "Your profile",
    responses(
        (status = 200, description = "Your profile, from its shard's primary.", body = Profile,
            example = json!({"id": "0b7e3c9e-9a4e-4a43-9a57-3f1f2f0d2c11", "username": "alice", "email": "alice@example.org", "first_name": "Alice", "last_name": null, "role": "user", "created_at": "2026-05-01T10:00:00Z", "updated_at": "2026-05-01T10:00:00Z"})),
        (status = 403, description = "A guest token: this route needs a user's (`forbidden`).", body = ErrorBody),
        (status = 404, description = "You have no profile (`not_found`).", body = ErrorBody),
        (status = 502, description = "Users or auth cannot be reached or failed.", body = ErrorBody),
        (status = 503, description = "Users is unavailable, or a shard of it (`shard_unavailable`).", body = ErrorBody),
    )
)]
async fn me(
    State(state): State<AppState>,
    RequestId(rid): RequestId,
    caller: Caller,
) -> Result<Json<Profile>, Error> {
    let (id, _) = me_of(&caller)?;
    users(&state)?
        .get(id, true, &rid)
        .await
        .map_err(users_error)?
        .map(Json)
        .ok_or_else(|| Error::NotFound("you have no profile".into()))
}

/// `PATCH /users/me`: change your email or names; your role only with the role route's role.
#[utoipa::path(
    patch,
    path = "/users/me",
    tag = "users",
    operation_id = "update_me",
    summary = "Change your profile",
    request_body(content = UpdateProfile, example = json!({"email": "alice@example.com", "last_name": "Liddell"})),
    responses(
        (status = 200, description = "Your profile as changed.", body = Profile, example = json!({"id": "0b7e3c9e-9a4e-4a43-9a57-3f1f2f0d2c11", "username": "alice", "email": "alice@example.org", "first_name": "Alice", "last_name": null, "role": "user", "created_at": "2026-05-01T10:00:00Z", "updated_at": "2026-05-01T10:00:00Z"})),
        (status = 400, description = "No field to change (`empty_update`), or a field breaks its rule (`invalid_email`, `invalid_name`, `invalid_role`).", body = ErrorBody,
            example = json!({"error": "empty_update", "message": "give at least one of email, first_name, last_name"})),
        (status = 403, description = "A guest token, or a role change without the role of `PATCH /users/{id}/role` (`forbidden`).", body = ErrorBody),
        (status = 404, description = "You have no profile, or no account (`not_found`).", body = ErrorBody),
        (status = 502, description = "Users or auth cannot be reached or failed.", body = ErrorBody),
        (status = 503, description = "Users is unavailable, or a shard of it (`shard_unavailable`).", body = ErrorBody),
    )
)]
async fn update_me(
    State(state): State<AppState>,
    RequestId(rid): RequestId,
    caller: Caller,
    body: Result<Json<UpdateProfile>, ApiError>,
) -> Result<Json<Profile>, Error> {
    let (id, _) = me_of(&caller)?;
    let Json(req) = body?;
    if req.role.is_some() {
        state
            .policies()
            .get("PATCH /users/{id}/role")?
            .require(&caller, "PATCH /users/{id}/role")?;
    }
    let profile = users(&state)?
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
    Ok(state.inner.auth.set_roles(username, &roles, rid).await?)
}

/// `DELETE /users/me`: the profile, then the account.
#[utoipa::path(
    delete,
    path = "/users/me",
    tag = "users",
    operation_id = "delete_me",
    summary = "Delete your profile and your account",
    responses(
        (status = 200, description = "Nothing of you is left; which parts were deleted now.", body = Deleted,
            example = json!({"deleted": true, "profile": true, "account": true})),
        (status = 403, description = "A guest token (`forbidden`).", body = ErrorBody),
        (status = 502, description = "Users or auth cannot be reached or failed.", body = ErrorBody),
        (status = 503, description = "Users is unavailable, or a shard of it (`shard_unavailable`).", body = ErrorBody),
    )
)]
async fn delete_me(
    State(state): State<AppState>,
    RequestId(rid): RequestId,
    caller: Caller,
) -> Result<Json<Deleted>, Error> {
    let (id, username) = me_of(&caller)?;
    let profile = users(&state)?.delete(id, &rid).await.map_err(users_error)?;
    invalidate(&state, id, &rid).await;
    let account = state.inner.auth.delete_account(username, &rid).await?;
    Ok(Json(Deleted {
        deleted: true,
        profile,
        account,
    }))
}

/// `GET /users?after=&limit=` (admin by default): one page in id order across every shard.
#[utoipa::path(
    get,
    path = "/users",
    tag = "users",
    operation_id = "list_users",
    summary = "Every profile, one page in id order",
    params(
        ("after" = Option<String>, Query, description = "The `next_cursor` of the previous page.",
            pattern = r"^[A-Za-z0-9_-]{1,64}$"),
        ("limit" = Option<u32>, Query, description = "Page size, 1 to the users service's largest (100 by default); 50 when absent.",
            minimum = 1, maximum = 100, example = 50),
    ),
    responses(
        (status = 200, description = "One page of profiles, ids ascending.", body = ProfilePage,
            example = json!({"users": [{"id": "0b7e3c9e-9a4e-4a43-9a57-3f1f2f0d2c11", "username": "alice", "email": "alice@example.org", "first_name": "Alice", "last_name": null, "role": "user", "created_at": "2026-05-01T10:00:00Z", "updated_at": "2026-05-01T10:00:00Z"}], "next_cursor": null})),
        (status = 400, description = "A bad query (`invalid_query`, `invalid_id`).", body = ErrorBody),
        (status = 502, description = "Users or auth cannot be reached or failed.", body = ErrorBody),
        (status = 503, description = "Users is unavailable, or a shard of it (`shard_unavailable`).", body = ErrorBody),
    )
)]
async fn list(
    State(state): State<AppState>,
    RequestId(rid): RequestId,
    query: Result<Query<UsersQuery>, QueryRejection>,
) -> Result<Json<ProfilePage>, Error> {
    let Query(q) = query.map_err(|e| Error::InvalidQuery(e.body_text()))?;
    // `after` is a user id: anything else is no cursor this API gave.
    if let Some(after) = q.after.as_deref() {
        api::wire::users::check_id(after).map_err(|_| {
            Error::InvalidQuery("after is the next_cursor of a page: a user id".into())
        })?;
    }
    users(&state)?
        .list(q.after.as_deref(), q.limit.unwrap_or(50), &rid)
        .await
        .map(Json)
        .map_err(users_error)
}

/// `GET /users/{id}`: yours, or anyone's with the route's role (the guard decides); cache-aside.
#[utoipa::path(
    get,
    path = "/users/{id}",
    tag = "users",
    operation_id = "get_user",
    summary = "A profile, cached; your own needs no role",
    params(("id" = String, Path, description = "A user id (the account's).", pattern = r"^[A-Za-z0-9_-]{1,64}$", example = "0b7e3c9e-9a4e-4a43-9a57-3f1f2f0d2c11")),
    responses(
        (status = 200, description = "The profile.", body = Profile,
            headers(("X-Cache" = String, description = "`HIT` or `MISS`.")),
            example = json!({"id": "0b7e3c9e-9a4e-4a43-9a57-3f1f2f0d2c11", "username": "alice", "email": "alice@example.org", "first_name": "Alice", "last_name": null, "role": "user", "created_at": "2026-05-01T10:00:00Z", "updated_at": "2026-05-01T10:00:00Z"})),
        (status = 400, description = "Not a user id (`invalid_id`).", body = ErrorBody),
        (status = 404, description = "No user has this id (`not_found`).", body = ErrorBody),
        (status = 502, description = "Users or auth cannot be reached or failed.", body = ErrorBody),
        (status = 503, description = "Users is unavailable, or a shard of it (`shard_unavailable`).", body = ErrorBody),
    )
)]
async fn get_user(
    State(state): State<AppState>,
    RequestId(rid): RequestId,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, Error> {
    let Path(id) = id.map_err(|_| Error::NotFound("no user has this id".into()))?;
    let users = users(&state)?;
    let key = cache_key(&id);
    let mut lease = None;
    match state.inner.cache.lookup(&key, &rid).await {
        Ok(Lookup::Hit { value, .. }) => {
            if let Ok(profile) = serde_json::from_str::<Profile>(value.json()) {
                return Ok(([x_cache(true)], Json(profile)).into_response());
            }
        }
        Ok(Lookup::Miss { lease: l }) => lease = l,
        Err(e) => {
            // A cache outage costs latency, never an answer.
            tracing::warn!(error = %e, "cache read failed; reading users");
            cache_error("get");
        }
    }
    // Noted before the read: an update that lands after it makes the fill below store nothing.
    let seen = state.inner.fence.generation(&key);
    let profile = users
        .get(&id, true, &rid)
        .await
        .map_err(users_error)?
        .ok_or_else(|| Error::NotFound(format!("no user has the id {id:?}")))?;
    let ttl = Duration::from_secs(state.inner.config.cache_ttl_secs);
    match serde_json::to_value(&profile) {
        Ok(value) => {
            let fill = state.inner.cache.fill(&key, &value, ttl, lease, &rid);
            if let Some(Err(e)) = state.inner.fence.fill_if_unchanged(&key, seen, fill).await {
                tracing::warn!(error = %e, "cache write failed");
                cache_error("set");
            }
        }
        Err(e) => tracing::warn!(error = %e, "a profile did not serialise for the cache"),
    }
    Ok(([x_cache(false)], Json(profile)).into_response())
}

/// `PATCH /users/{id}/role` `{"role": "admin"}` (admin by default): in `users` and in `auth`;
/// effective from the user's next login.
#[utoipa::path(
    patch,
    path = "/users/{id}/role",
    tag = "users",
    operation_id = "set_user_role",
    summary = "Change a user's role",
    params(("id" = String, Path, description = "A user id (the account's).", pattern = r"^[A-Za-z0-9_-]{1,64}$", example = "0b7e3c9e-9a4e-4a43-9a57-3f1f2f0d2c11")),
    request_body(content = RoleChange, example = json!({"role": "admin"})),
    responses(
        (status = 200, description = "The profile with its new role; tokens carry it from the user's next login.",
            body = RoleChanged,
            example = json!({"profile": {"id": "0b7e3c9e-9a4e-4a43-9a57-3f1f2f0d2c11", "username": "alice", "email": "alice@example.org", "first_name": "Alice", "last_name": null, "role": "user", "created_at": "2026-05-01T10:00:00Z", "updated_at": "2026-05-01T10:00:00Z"}, "roles": ["admin"], "effective": "at the user's next login"})),
        (status = 400, description = "Not a role of this topology (`invalid_role`), or not a user id (`invalid_id`).", body = ErrorBody),
        (status = 404, description = "No user has this id (`not_found`).", body = ErrorBody),
        (status = 502, description = "Users or auth cannot be reached or failed.", body = ErrorBody),
        (status = 503, description = "Users is unavailable, or a shard of it (`shard_unavailable`).", body = ErrorBody),
    )
)]
async fn set_role(
    State(state): State<AppState>,
    RequestId(rid): RequestId,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<RoleChange>, ApiError>,
) -> Result<Json<RoleChanged>, Error> {
    let Path(id) = id.map_err(|_| Error::NotFound("no user has this id".into()))?;
    let Json(change) = body?;
    let update = UpdateProfile {
        role: Some(change.role.clone()),
        ..UpdateProfile::default()
    };
    let profile = users(&state)?
        .update(&id, &update, &rid)
        .await
        .map_err(users_error)?;
    invalidate(&state, &id, &rid).await;
    let account = set_account_role(&state, &profile.username, change.role, &rid).await?;
    Ok(Json(RoleChanged {
        profile,
        roles: account.roles,
        effective: "at the user's next login".into(),
    }))
}
