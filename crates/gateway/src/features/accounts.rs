//! Accounts: login, registration, guest tokens.
//!
//! `POST /register` creates the credentials in `auth`, then the profile in `users` with the
//! account's id. If the profile cannot be made, the account is deleted again, so that nobody is
//! half registered; the client gets the profile's error (or `503 registration_failed`). Profile
//! fields are checked before `auth` is called, so a bad email costs no account.

use std::time::Duration;

use axum::extract::State;
use axum::http::{Method, StatusCode};
use common::{ApiError, Json, RequestId};

use api::ErrorBody;
use api::client::UsersClient;
use api::wire::auth::{GuestRequest, LoginRequest, RegisterRequest, TokenResponse};
use api::wire::gateway::{RegisterUser, Registered};
use api::wire::users::CreateProfile;

use super::RawBody;
use super::users::users_error;
use crate::policy::Endpoint;
use crate::tokens::Caller;
use crate::{AppState, Error};

/// This module's routes, as the document describes them (`/auth/login` and `/auth/register` are
/// added by `openapi` as aliases).
#[derive(utoipa::OpenApi)]
#[openapi(paths(login, register, guest_token, named_guest_token))]
pub(super) struct Doc;

pub(super) fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint::new(Method::POST, "/login", login),
        Endpoint::new(Method::POST, "/auth/login", login),
        Endpoint::new(Method::POST, "/register", register),
        Endpoint::new(Method::POST, "/auth/register", register),
        Endpoint::new(Method::GET, "/token", guest_token),
        Endpoint::new(Method::POST, "/token", named_guest_token),
    ]
}

/// `POST /login`, `POST /auth/login`: a token from auth.
#[utoipa::path(
    post,
    path = "/login",
    tag = "accounts",
    operation_id = "login",
    summary = "A token for a username and password",
    request_body(content = LoginRequest,
        example = json!({"username": "alice", "password": "correct horse battery"})),
    responses(
        (status = 200, description = "A signed token (EdDSA JWT) and how long it lasts.",
            body = TokenResponse,
            example = json!({"token": "eyJhbGciOiJFZERTQSIsImtpZCI6IjEifQ.e30.sig", "token_type": "Bearer", "expires_in": 3600})),
        (status = 401, description = "Wrong username or password (`invalid_credentials`).",
            body = ErrorBody,
            example = json!({"error": "invalid_credentials", "message": "wrong username or password"})),
        (status = 502, description = "Auth cannot be reached (`auth_unavailable`, `backend_unreachable`) or failed (`auth_error`).", body = ErrorBody),
        (status = 503, description = "No auth instance is healthy (`no_healthy_backend`, `auth_unavailable`).", body = ErrorBody),
    )
)]
async fn login(
    State(state): State<AppState>,
    RequestId(rid): RequestId,
    body: Result<Json<LoginRequest>, ApiError>,
) -> Result<Json<TokenResponse>, Error> {
    let Json(req) = body?;
    Ok(Json(state.inner.auth.login(&req, &rid).await?))
}

/// `GET /token`: a short-lived guest token, only when `auth.anonymous_tokens` is on (`404`
/// otherwise: the route does not exist for clients of such a topology).
#[utoipa::path(
    get,
    path = "/token",
    tag = "accounts",
    operation_id = "guest_token",
    summary = "A short-lived guest token (read-only)",
    responses(
        (status = 200, description = "A guest token: role `guest`, read-only, no account behind it.",
            body = TokenResponse,
            example = json!({"token": "eyJhbGciOiJFZERTQSIsImtpZCI6IjEifQ.e30.sig", "token_type": "Bearer", "expires_in": 300})),
        (status = 404, description = "Guest tokens are off on this gateway (`not_found`).", body = ErrorBody),
        (status = 502, description = "Auth cannot be reached or failed.", body = ErrorBody),
        (status = 503, description = "No auth instance is healthy.", body = ErrorBody),
    )
)]
async fn guest_token(
    State(state): State<AppState>,
    RequestId(rid): RequestId,
) -> Result<Json<TokenResponse>, Error> {
    if !state.inner.config.auth.anonymous_tokens {
        return Err(Error::NotFound(
            "guest tokens are turned off on this gateway (auth.anonymous_tokens = false)".into(),
        ));
    }
    Ok(Json(
        state
            .inner
            .auth
            .guest_token(&GuestRequest::default(), &rid)
            .await?,
    ))
}

/// `POST /token` `{"username": name}` (the lab's call, body optional): a guest token whose
/// `username` is `name`. Still a guest's token: read-only, no account behind it. `404` when
/// `auth.anonymous_tokens` is off, like `GET /token`.
#[utoipa::path(
    post,
    path = "/token",
    tag = "accounts",
    operation_id = "named_guest_token",
    summary = "A guest token naming a user (the lab's call)",
    request_body(content = Option<GuestRequest>, description = "Optional; any content type.",
        example = json!({"username": "alice"})),
    responses(
        (status = 200, description = "A guest token whose `username` is the name given.",
            body = TokenResponse,
            example = json!({"token": "eyJhbGciOiJFZERTQSIsImtpZCI6IjEifQ.e30.sig", "token_type": "Bearer", "expires_in": 300})),
        (status = 400, description = "The body is neither empty nor `{\"username\": name}` (`invalid_body`), or the name is not a valid username (`invalid_username`).", body = ErrorBody),
        (status = 404, description = "Guest tokens are off on this gateway (`not_found`).", body = ErrorBody),
        (status = 502, description = "Auth cannot be reached or failed.", body = ErrorBody),
        (status = 503, description = "No auth instance is healthy.", body = ErrorBody),
    )
)]
async fn named_guest_token(
    State(state): State<AppState>,
    RequestId(rid): RequestId,
    RawBody(body): RawBody,
) -> Result<Json<TokenResponse>, Error> {
    if !state.inner.config.auth.anonymous_tokens {
        return Err(Error::NotFound(
            "guest tokens are turned off on this gateway (auth.anonymous_tokens = false)".into(),
        ));
    }
    let req: GuestRequest =
        super::optional_object(&body, "the body is {\"username\": name} or nothing")?;
    Ok(Json(state.inner.auth.guest_token(&req, &rid).await?))
}

/// `POST /register`, `POST /auth/register`.
#[utoipa::path(
    post,
    path = "/register",
    tag = "accounts",
    operation_id = "register",
    summary = "An account in auth and its profile in users",
    description = "Creates the credentials in auth, then the profile in users with the account's id; \
        if the profile cannot be made the account is deleted again, so nobody is half registered. \
        A `role` other than `user` needs a token with the role of `PATCH /users/{id}/role`.",
    request_body(content = RegisterUser,
        example = json!({"username": "alice", "password": "correct horse battery", "email": "alice@example.org", "first_name": "Alice"})),
    responses(
        (status = 201, description = "The account and, when the topology has users, its profile.",
            body = Registered,
            example = json!({"id": "0b7e3c9e-9a4e-4a43-9a57-3f1f2f0d2c11", "username": "alice", "roles": ["user"],
                "profile": {"id": "0b7e3c9e-9a4e-4a43-9a57-3f1f2f0d2c11", "username": "alice", "email": "alice@example.org",
                "first_name": "Alice", "last_name": null, "role": "user", "created_at": "2026-05-01T10:00:00Z", "updated_at": "2026-05-01T10:00:00Z"}})),
        (status = 400, description = "A field breaks its rule: `invalid_username`, `weak_password`, `invalid_email`, `invalid_name`, `invalid_role`; or the body is not JSON (`malformed_json`) or lacks a field (`invalid_body`).",
            body = ErrorBody,
            example = json!({"error": "weak_password", "message": "the password must be 8 to 1024 characters long"})),
        (status = 403, description = "A role other than `user` asked for without the role that may give it (`forbidden`).", body = ErrorBody),
        (status = 409, description = "The username is taken (`username_taken`).", body = ErrorBody,
            example = json!({"error": "username_taken", "message": "the username is taken"})),
        (status = 502, description = "Auth or users cannot be reached or failed.", body = ErrorBody),
        (status = 503, description = "The profile could not be created, so nothing was registered (`registration_failed`), or a dependency is unavailable.", body = ErrorBody,
            example = json!({"error": "registration_failed", "message": "the profile could not be created, so nothing was registered; try again"})),
    )
)]
async fn register(
    State(state): State<AppState>,
    RequestId(rid): RequestId,
    caller: Caller,
    body: Result<Json<RegisterUser>, ApiError>,
) -> Result<(StatusCode, Json<Registered>), Error> {
    let Json(req) = body?;
    let role = match req.role.as_deref() {
        None | Some("user") => None,
        Some(role) => {
            // Who may give a role is who may change one.
            state
                .policies()
                .get("PATCH /users/{id}/role")?
                .require(&caller, &format!("creating an account with role {role:?}"))?;
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
        if let Err(invalid) = profile.validate(&state.inner.config.roles)
            && invalid.code != "invalid_username"
        {
            return Err(Error::Invalid {
                code: invalid.code.to_string(),
                message: invalid.message.to_string(),
            });
        }
    }
    let credentials = RegisterRequest {
        username: req.username,
        password: req.password,
        role,
    };
    let account = state.inner.auth.register(&credentials, &rid).await?;
    let Some(users) = users else {
        return Ok((
            StatusCode::CREATED,
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
            StatusCode::CREATED,
            Json(Registered {
                account,
                profile: Some(created),
            }),
        )),
        Err(e) => {
            tracing::warn!(error = %e, username = %account.username, "profile creation failed; deleting the new account");
            if let Err(undo) = state
                .inner
                .auth
                .delete_account(&account.username, &rid)
                .await
            {
                // The one case that leaves an account without a profile: logged loudly so
                // an operator can delete it; the client is told registration failed.
                tracing::error!(username = %account.username, error = %undo, "could not undo the account of a failed registration");
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
                _ => Err(Error::RegistrationFailed),
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
