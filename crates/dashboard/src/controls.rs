//! The page's controls. Every call needs the admin credential (HTTP Basic, which the page sends
//! after the admin signs in), checked at a running auth instance, whatever address the dashboard
//! listens on: a page anyone can open must not let anyone press its buttons. A call that passes
//! goes to the supervisor's control API, the one `scalelab scale` uses, with the same credential;
//! its answer comes back as it is. Without a supervisor (an orchestrator) there are no controls.

use api::wire::control::LoadRequest;
use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::routes::error;

/// The control API's URL once the caller is known to be an admin; the refusal otherwise.
async fn authorize(state: &AppState, headers: &HeaderMap) -> Result<String, Response> {
    let Some(control) = state.control_url.clone() else {
        return Err(error(
            StatusCode::CONFLICT,
            "no_controls",
            "controls need the supervisor of `scalelab up`; on an orchestrator, scale with it (kubectl scale)",
        ));
    };
    let auth = state
        .hub
        .targets()
        .into_iter()
        .find(|t| t.role == "auth" && t.state == "active")
        .map(|t| t.url)
        .ok_or_else(|| {
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "auth_unavailable",
                "no auth instance is running to check the admin credential",
            )
        })?;
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    // No `WWW-Authenticate`: the page asks for the credential itself, the browser must not.
    match state.admin.check(&auth, header).await {
        Ok(()) => Ok(control),
        Err(why) if why.contains("could not be reached") => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "auth_unavailable",
            why,
        )),
        Err(why) => Err(error(StatusCode::UNAUTHORIZED, "unauthorized", why)),
    }
}

/// Sends `body` to the control API's `path` with the caller's credential; its answer as it is.
async fn forward(state: &AppState, headers: &HeaderMap, path: &str, body: Value) -> Response {
    let control = match authorize(state, headers).await {
        Ok(c) => c,
        Err(refused) => return refused,
    };
    let mut call = state.http.post(format!("{control}{path}")).json(&body);
    if let Some(h) = headers.get(header::AUTHORIZATION) {
        call = call.header(header::AUTHORIZATION, h);
    }
    match call.send().await {
        Ok(resp) => {
            let status =
                StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            match resp.json::<Value>().await {
                Ok(v) => (status, Json(v)).into_response(),
                Err(_) => error(
                    StatusCode::BAD_GATEWAY,
                    "bad_control_answer",
                    "the control API answered something that is not JSON",
                ),
            }
        }
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "control_unavailable",
            "the supervisor's control API did not answer",
        ),
    }
}

fn invalid(e: JsonRejection) -> Response {
    error(StatusCode::BAD_REQUEST, "invalid_body", e.body_text())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SignIn {
    username: String,
    password: String,
}

/// `POST /api/session` `{"username", "password"}`: whether this is an admin credential (the page
/// then sends it as HTTP Basic with each control).
pub(crate) async fn session(
    State(state): State<AppState>,
    body: Result<Json<SignIn>, JsonRejection>,
) -> Response {
    let Json(who) = match body {
        Ok(b) => b,
        Err(e) => return invalid(e),
    };
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", who.username, who.password))
    );
    let mut headers = HeaderMap::new();
    if let Ok(v) = basic.parse() {
        headers.insert(header::AUTHORIZATION, v);
    }
    match authorize(&state, &headers).await {
        Ok(_) => Json(json!({"user": who.username, "controls": true})).into_response(),
        Err(refused) => refused,
    }
}

/// `POST /api/scale` `{"service": 4}`.
pub(crate) async fn scale(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<std::collections::BTreeMap<String, usize>>, JsonRejection>,
) -> Response {
    match body {
        Ok(Json(wanted)) => forward(&state, &headers, "/scale", json!(wanted)).await,
        Err(e) => invalid(e),
    }
}

/// `POST /api/instances/{id}/drain` or `/kill`.
pub(crate) async fn instance(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
) -> Response {
    if !matches!(action.as_str(), "drain" | "kill") {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "an instance can be drained or killed",
        );
    }
    forward(
        &state,
        &headers,
        &format!("/instances/{id}/{action}"),
        json!({}),
    )
    .await
}

/// `POST /api/cache/flush`.
pub(crate) async fn flush(State(state): State<AppState>, headers: HeaderMap) -> Response {
    forward(&state, &headers, "/cache/flush", json!({})).await
}

/// `POST /api/load` `{"route": "/data", "seconds": 10, "connections": 16}`.
pub(crate) async fn load(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<LoadRequest>, JsonRejection>,
) -> Response {
    let Json(load) = match body {
        Ok(b) => b,
        Err(e) => return invalid(e),
    };
    if let Some((code, why)) = load.problem() {
        return error(StatusCode::BAD_REQUEST, code, why);
    }
    forward(&state, &headers, "/load", json!(load)).await
}
