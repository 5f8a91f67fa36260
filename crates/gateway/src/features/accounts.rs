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

use api::client::UsersClient;
use api::wire::auth::{GuestRequest, LoginRequest, RegisterRequest, TokenResponse};
use api::wire::gateway::{RegisterUser, Registered};
use api::wire::users::CreateProfile;

use super::users::users_error;
use crate::policy::Endpoint;
use crate::tokens::Caller;
use crate::{AppState, Error};

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
async fn named_guest_token(
    State(state): State<AppState>,
    RequestId(rid): RequestId,
    body: axum::body::Bytes,
) -> Result<Json<TokenResponse>, Error> {
    if !state.inner.config.auth.anonymous_tokens {
        return Err(Error::NotFound(
            "guest tokens are turned off on this gateway (auth.anonymous_tokens = false)".into(),
        ));
    }
    let req: GuestRequest = if body.iter().all(u8::is_ascii_whitespace) {
        GuestRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| Error::Invalid {
            code: "invalid_body".into(),
            message: format!("the body is {{\"username\": name}} or nothing: {e}"),
        })?
    };
    Ok(Json(state.inner.auth.guest_token(&req, &rid).await?))
}

/// `POST /register`, `POST /auth/register`.
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
