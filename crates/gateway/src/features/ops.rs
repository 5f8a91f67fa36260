//! Operations: `GET /ready` (what a balancer or an orchestrator probes) and `GET /policy` (the
//! route table as this gateway applies it).

use axum::extract::State;
use axum::http::Method;
use common::{Json, RequestId};

use api::ErrorBody;
use api::wire::gateway::{Ready, RoutePolicy};

use crate::policy::Endpoint;
use crate::{AppState, Error};

/// This module's routes, as the document describes them.
#[derive(utoipa::OpenApi)]
#[openapi(paths(ready, policy))]
pub(super) struct Doc;

pub(super) fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint::new(Method::GET, "/ready", ready),
        Endpoint::new(Method::GET, "/policy", policy),
    ]
}

/// `GET /ready`: `200` when auth's keys are loaded and the cache, the db and users answer; `503
/// not_ready` naming what is missing otherwise.
#[utoipa::path(
    get,
    path = "/ready",
    tag = "operations",
    operation_id = "ready",
    summary = "Whether this gateway can serve",
    responses(
        (status = 200, description = "Auth's keys are loaded and the cache, the db and users answer.",
            body = Ready, example = json!({"status": "ready", "cache": "service", "gateway_id": "gateway-1"})),
        (status = 503, description = "Something does not answer yet (`not_ready`, naming what).", body = ErrorBody,
            example = json!({"error": "not_ready", "message": "not ready: waiting for db"})),
    )
)]
async fn ready(
    State(state): State<AppState>,
    RequestId(rid): RequestId,
) -> Result<Json<Ready>, Error> {
    let inner = &state.inner;
    let users = async {
        match &inner.users {
            Some(u) => Some(u.0.health(&rid).await),
            None => None,
        }
    };
    let (cache, db, users) = tokio::join!(inner.cache.ping(&rid), inner.db.0.health(&rid), users);
    let mut missing = Vec::new();
    if inner.config.auth.required && !inner.verifier.is_loaded() {
        missing.push("auth (JWKS not loaded yet)".to_string());
    }
    if let Err(e) = cache {
        tracing::debug!(error = %e, "ready: cache does not answer");
        missing.push(format!("cache ({})", inner.cache.name()));
    }
    if let Err(e) = db {
        tracing::debug!(error = %e, "ready: db does not answer");
        missing.push("db".to_string());
    }
    if let Some(Err(e)) = users {
        tracing::debug!(error = %e, "ready: users does not answer");
        missing.push("users".to_string());
    }
    if !missing.is_empty() {
        return Err(Error::NotReady(missing.join(", ")));
    }
    Ok(Json(Ready {
        status: "ready".into(),
        cache: inner.cache.name().into(),
        gateway_id: inner.instance.id.to_string(),
    }))
}

/// `GET /policy` (admin): every route, its token rule, role, guest rule and rate limit.
#[utoipa::path(
    get,
    path = "/policy",
    tag = "operations",
    operation_id = "policy",
    summary = "The route table, as this gateway applies it",
    responses(
        (status = 200, description = "Every route with its token rule, role, guest rule and rate limit.",
            body = Vec<RoutePolicy>,
            example = json!([{"method": "GET", "path": "/data", "token": "required", "role": null, "role_applies": "always",
                "guests": true, "bucket": null, "limit": null, "summary": "cache-aside read of ?key= (my_data by default)"}])),
    )
)]
async fn policy(State(state): State<AppState>) -> Json<Vec<RoutePolicy>> {
    Json(state.policies().rows())
}
