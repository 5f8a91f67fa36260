//! The gateway's business routes.

use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use common::{ApiError, Json, RequestId};
use serde::Deserialize;
use serde_json::{Value, json};

use api::wire::auth::{LoginRequest, TokenResponse};
use api::wire::db::PutRecord;
use api::wire::gateway::DataResponse;

use crate::error::from_client;
use crate::single_flight::Aborted;
use crate::tokens::Caller;
use crate::{AppState, Error};

/// The key `GET /data` reads when none is given (the lab's).
pub const DEFAULT_KEY: &str = "my_data";
/// Longest `/data` key, in bytes.
const MAX_KEY_BYTES: usize = 256;

/// Routes that need no token.
pub(crate) fn is_public(route: &str) -> bool {
    matches!(
        route,
        "/login" | "/auth/login" | "/register" | "/auth/register" | "/token"
    )
}

/// The two login routes (one shared rate limit bucket).
pub(crate) fn is_login(route: &str) -> bool {
    matches!(route, "/login" | "/auth/login")
}

fn x_cache(hit: bool) -> (HeaderName, HeaderValue) {
    (
        HeaderName::from_static(api::headers::CACHE),
        HeaderValue::from_static(if hit { "HIT" } else { "MISS" }),
    )
}

pub(crate) fn require(caller: &Caller, role: &str, what: &str) -> Result<(), Error> {
    if caller.has_role(role) {
        Ok(())
    } else {
        Err(Error::Forbidden(format!("{what} needs the {role} role")))
    }
}

// ---------------------------------------------------------------------------------------------
// Public routes: login, guest token (register is in `users.rs`).

/// `POST /login`, `POST /auth/login`: a token from auth.
pub(crate) async fn login(
    State(state): State<AppState>,
    RequestId(rid): RequestId,
    body: Result<Json<LoginRequest>, ApiError>,
) -> Result<Json<TokenResponse>, Error> {
    let Json(req) = body?;
    let (_, token) = state
        .inner
        .auth
        .call(Method::POST, "/login", Some(&req), &rid)
        .await?;
    Ok(Json(token))
}

/// `GET /token`: a short-lived guest token, only when `auth.anonymous_tokens` is on (`404`
/// otherwise: the route does not exist for clients of such a topology).
pub(crate) async fn guest_token(
    State(state): State<AppState>,
    RequestId(rid): RequestId,
) -> Result<Json<TokenResponse>, Error> {
    if !state.inner.config.auth.anonymous_tokens {
        return Err(Error::NotFound(
            "guest tokens are turned off on this gateway (auth.anonymous_tokens = false)".into(),
        ));
    }
    let (_, token) = state
        .inner
        .auth
        .call::<(), _>(Method::POST, "/guest-token", None, &rid)
        .await?;
    Ok(Json(token))
}

// ---------------------------------------------------------------------------------------------
// Cache-aside.

/// `GET /data` query.
#[derive(Debug, Deserialize)]
pub(crate) struct DataQuery {
    key: Option<String>,
    refresh: Option<String>,
}

fn valid_key(key: &str) -> Result<(), Error> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES || key.chars().any(char::is_control) {
        return Err(Error::InvalidKey(format!(
            "a key is 1 to {MAX_KEY_BYTES} bytes without control characters"
        )));
    }
    Ok(())
}

fn truthy(s: Option<&str>) -> Result<bool, Error> {
    match s.map(str::to_ascii_lowercase).as_deref() {
        None | Some("false" | "0" | "no" | "") => Ok(false),
        Some("true" | "1" | "yes") => Ok(true),
        Some(_) => Err(Error::Rejected(ApiError::bad_request(
            "invalid_query",
            "refresh must be true or false",
        ))),
    }
}

/// `GET /data[?key=K][&refresh=true]`: cache-aside read.
pub(crate) async fn get_data(
    State(state): State<AppState>,
    RequestId(rid): RequestId,
    query: Result<Query<DataQuery>, QueryRejection>,
) -> Response {
    let result = async {
        let Query(q) = query
            .map_err(|e| Error::Rejected(ApiError::bad_request("invalid_query", e.body_text())))?;
        let refresh = truthy(q.refresh.as_deref())?;
        let key = q.key.unwrap_or_else(|| DEFAULT_KEY.to_string());
        read_through(&state, key, refresh, &rid).await
    }
    .await;
    with_miss_header(result)
}

/// `GET /data/{key}`: the same read, with the key in the path.
pub(crate) async fn get_data_path(
    State(state): State<AppState>,
    RequestId(rid): RequestId,
    key: Result<Path<String>, PathRejection>,
    query: Result<Query<DataQuery>, QueryRejection>,
) -> Response {
    let result = async {
        let Path(key) = key.map_err(|_| Error::InvalidKey("the key is not valid UTF-8".into()))?;
        let Query(q) = query
            .map_err(|e| Error::Rejected(ApiError::bad_request("invalid_query", e.body_text())))?;
        read_through(&state, key, truthy(q.refresh.as_deref())?, &rid).await
    }
    .await;
    with_miss_header(result)
}

/// Every `/data` answer carries `X-Cache`; errors never came from the cache.
fn with_miss_header(result: Result<Response, Error>) -> Response {
    match result {
        Ok(r) => r,
        Err(e) => {
            let mut resp = e.into_response();
            let (name, value) = x_cache(false);
            resp.headers_mut().insert(name, value);
            resp
        }
    }
}

fn count(state: &AppState, hit: bool) {
    metrics::counter!(
        "scalelab_gateway_cache_total",
        "outcome" => if hit { "hit" } else { "miss" },
        "id" => state.inner.instance.id.to_string()
    )
    .increment(1);
}

/// Cache, then (on a miss, a cache outage or `refresh`) one shared db read that refills the cache.
async fn read_through(
    state: &AppState,
    key: String,
    refresh: bool,
    rid: &str,
) -> Result<Response, Error> {
    valid_key(&key)?;
    let gateway_id = state.inner.instance.id.to_string();
    if !refresh {
        match state.inner.cache.get(&key, rid).await {
            Ok(Some(data)) => {
                count(state, true);
                let body = DataResponse {
                    cached: true,
                    key,
                    data,
                    gateway_id,
                };
                return Ok(([x_cache(true)], axum::Json(body)).into_response());
            }
            Ok(None) => {}
            Err(e) => {
                // A cache outage costs latency, never an answer: read the db.
                tracing::warn!(error = %e, backend = state.inner.cache.name(), %key, "cache read failed; reading the db");
                metrics::counter!("scalelab_gateway_cache_errors_total", "op" => "get")
                    .increment(1);
            }
        }
    }
    count(state, false);
    let work_state = state.clone();
    let work_key = key.clone();
    let work_rid = rid.to_string();
    let (read, _role) = state
        .inner
        .flights
        .run(key.clone(), move || load(work_state, work_key, work_rid))
        .await
        .map_err(|Aborted| Error::Internal("the shared db read ended without a result".into()))?;
    match read {
        Ok(Some(data)) => {
            let body = DataResponse {
                cached: false,
                key,
                data,
                gateway_id,
            };
            Ok(([x_cache(false)], axum::Json(body)).into_response())
        }
        Ok(None) => Err(Error::NotFound(format!("no record for key {key:?}"))),
        Err(e) => Err(Error::Shared(e)),
    }
}

/// The one db read of a flight, and the cache refill.
async fn load(state: AppState, key: String, rid: String) -> crate::state::DbRead {
    metrics::counter!("scalelab_gateway_db_reads_total").increment(1);
    // Noted before the read: a write that lands after it makes the fill below store nothing.
    let seen = state.inner.fence.generation(&key);
    let record = state
        .inner
        .db
        .get(&key, &rid)
        .await
        .map_err(|e| std::sync::Arc::new(from_client(e)))?;
    let Some(record) = record else {
        return Ok(None);
    };
    let ttl = Duration::from_secs(state.inner.config.cache_ttl_secs);
    let fill = state.inner.cache.set(&key, &record.value, ttl, &rid);
    let stored = state.inner.fence.fill_if_unchanged(&key, seen, fill).await;
    if let Some(Err(e)) = stored {
        tracing::warn!(error = %e, backend = state.inner.cache.name(), %key, "cache write failed; the next read goes to the db again");
        metrics::counter!("scalelab_gateway_cache_errors_total", "op" => "set").increment(1);
    }
    Ok(Some(record.value))
}

/// `PUT /data/{key}` `{"value": any}`: write to the db, then delete the cached entry.
pub(crate) async fn put_data(
    State(state): State<AppState>,
    RequestId(rid): RequestId,
    key: Result<Path<String>, PathRejection>,
    body: Result<Json<PutRecord>, ApiError>,
) -> Response {
    let result = async {
        let Path(key) = key.map_err(|_| Error::InvalidKey("the key is not valid UTF-8".into()))?;
        valid_key(&key)?;
        let Json(body) = body?;
        let record = state
            .inner
            .db
            .put(&key, &body.value, &rid)
            .await
            .map_err(from_client)?;
        // Delete on write: the next read misses and loads the new value. A failed delete leaves
        // the old value until its TTL runs out; it is logged, the write itself succeeded.
        let delete = state.inner.cache.delete(&key, &rid);
        let invalidated = match state.inner.fence.invalidate(&key, delete).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, %key, "cache delete after a write failed; the old value stays until its TTL");
                metrics::counter!("scalelab_gateway_cache_errors_total", "op" => "delete")
                    .increment(1);
                false
            }
        };
        let body = json!({
            "key": record.key,
            "value": record.value,
            "updated_at": record.updated_at,
            "invalidated": invalidated,
            "gateway_id": &*state.inner.instance.id,
        });
        Ok::<_, Error>(([x_cache(false)], axum::Json(body)).into_response())
    }
    .await;
    with_miss_header(result)
}

// ---------------------------------------------------------------------------------------------
// Business service, cache administration, readiness.

/// `GET /process`: one service instance, chosen by the pool, does the work.
pub(crate) async fn process(
    State(state): State<AppState>,
    RequestId(rid): RequestId,
) -> Result<Json<Value>, Error> {
    let services = &state.inner.services;
    let (status, bytes) = services
        .exchange::<()>(Method::GET, "/process", None, &rid)
        .await?;
    if !status.is_success() {
        return Err(services.error(status, &bytes));
    }
    let mut body: Value = serde_json::from_slice(&bytes).map_err(|e| Error::UpstreamFailed {
        service: "service",
        detail: format!("unreadable /process answer: {e}"),
    })?;
    let Some(obj) = body.as_object_mut() else {
        return Err(Error::UpstreamFailed {
            service: "service",
            detail: "the /process answer is not a JSON object".into(),
        });
    };
    obj.insert("gateway_id".into(), Value::from(&*state.inner.instance.id));
    Ok(Json(body))
}

/// `GET /cache/stats` (admin).
pub(crate) async fn cache_stats(
    State(state): State<AppState>,
    RequestId(rid): RequestId,
    caller: Caller,
) -> Result<Json<Value>, Error> {
    state.require_route(&caller, "GET /cache/stats")?;
    let stats = state.inner.cache.stats(&rid).await?;
    let mut body = serde_json::to_value(stats).map_err(|e| Error::Internal(e.to_string()))?;
    if let Some(obj) = body.as_object_mut() {
        obj.insert("backend".into(), state.inner.cache.name().into());
        obj.insert("gateway_id".into(), Value::from(&*state.inner.instance.id));
    }
    Ok(Json(body))
}

/// `POST /cache/flush` (admin).
pub(crate) async fn cache_flush(
    State(state): State<AppState>,
    RequestId(rid): RequestId,
    caller: Caller,
) -> Result<Json<Value>, Error> {
    state.require_route(&caller, "POST /cache/flush")?;
    state.inner.cache.flush(&rid).await?;
    tracing::info!(backend = state.inner.cache.name(), "cache flushed");
    Ok(Json(
        json!({"flushed": true, "backend": state.inner.cache.name()}),
    ))
}

/// `GET /ready`: `200` when auth's keys are loaded and the cache and the db answer; `503
/// not_ready` naming what is missing otherwise.
pub(crate) async fn ready(
    State(state): State<AppState>,
    RequestId(rid): RequestId,
) -> Result<Json<Value>, Error> {
    let inner = &state.inner;
    let users = async {
        match &inner.users {
            Some(u) => Some(
                u.0.call::<(), Value>(Method::GET, "/health", None, &rid)
                    .await,
            ),
            None => None,
        }
    };
    let (cache, db, users) = tokio::join!(
        inner.cache.ping(&rid),
        inner
            .db
            .0
            .call::<(), Value>(Method::GET, "/health", None, &rid),
        users
    );
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
    Ok(Json(json!({
        "status": "ready",
        "cache": inner.cache.name(),
        "gateway_id": &*inner.instance.id,
    })))
}
