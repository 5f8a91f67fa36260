//! The Casitas preset's routes: units, finances and legal, each in front of its own domain service
//! (`rental` crate), each present only when the gateway has that service's URL.
//!
//! Reads of units and transactions are cache-aside in the gateway's cache, like `/data`, with
//! `X-Cache: HIT|MISS`. A write must make every cached listing of its domain stale (a new unit
//! changes `/units/available`, a new transaction every query that selects it), and the queries are
//! too many to delete one by one, so each domain's keys carry a *version* kept in the cache
//! itself (`rental:<domain>:version`): a write stores a new version and every key of the old one is
//! never read again (it expires with its TTL). The version is read before the service is, so a
//! fill that raced a write lands under the old version and is never served: a write is never
//! undone by an older read. A cache outage costs latency, never an answer.
//!
//! Reports are tasks: `POST /finances/generate_report` queues a `finance_report` at high priority,
//! `POST /legal/generate_report` a `legal_report` at low priority; workers read the domain service
//! and store the aggregates as the task's result (`GET /tasks/{id}`).

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use common::{ApiError, Json, RequestId};
use queue::Priority;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use api::client::RentalClient;
use api::wire::gateway::TaskQueued;
use api::wire::rental::{
    self, DocumentsQuery, NewTransaction, NewUnit, TransactionsQuery, UnitChange, UnitsQuery,
};

use super::{cache_error, x_cache};
use crate::config::Config;
use crate::policy::Endpoint;
use crate::tokens::Caller;
use crate::{AppState, Error};

/// How long a domain's version is kept (the cache service's longest TTL): a version that expires
/// only makes the next read a miss.
const VERSION_TTL: Duration = Duration::from_secs(86_400);

/// The endpoints of the domains `config` has a service for.
pub(super) fn endpoints(config: &Config) -> Vec<Endpoint> {
    let mut e = Vec::new();
    if !config.units_url.is_empty() {
        e.extend([
            Endpoint::new(Method::GET, "/units/available", available_units),
            Endpoint::new(Method::GET, "/units", list_units),
            Endpoint::new(Method::GET, "/units/{id}", get_unit),
            Endpoint::new(Method::POST, "/units", create_unit),
            Endpoint::new(Method::PATCH, "/units/{id}", update_unit),
        ]);
    }
    if !config.finances_url.is_empty() {
        e.extend([
            Endpoint::new(Method::GET, "/finances/transactions", list_transactions),
            Endpoint::new(Method::POST, "/finances/transactions", create_transaction),
            Endpoint::new(Method::POST, "/finances/generate_report", finance_report),
        ]);
    }
    if !config.legal_url.is_empty() {
        e.extend([
            Endpoint::new(Method::GET, "/legal/documents", list_documents),
            Endpoint::new(Method::POST, "/legal/generate_report", legal_report),
        ]);
    }
    e
}

/// Refuses a report task whose domain service this gateway does not have (so that `POST /tasks`
/// cannot queue a report no worker could read the data for), and a finance report whose month is
/// not `YYYY-MM` (the registry checks only that it is a short string).
pub(super) fn check_task(state: &AppState, kind: &str, payload: &Value) -> Result<(), Error> {
    if kind == queue::types::FINANCE_REPORT {
        check_month(payload.get("month").and_then(Value::as_str))?;
    }
    let missing = match kind {
        queue::types::FINANCE_REPORT => state.inner.rental.finances.is_none(),
        queue::types::LEGAL_REPORT => state.inner.rental.legal.is_none(),
        _ => false,
    };
    if missing {
        return Err(Error::Queue(queue::Error::UnknownType(format!(
            "{kind} tasks run only in a topology with the Casitas preset's domain services"
        ))));
    }
    Ok(())
}

fn units(state: &AppState) -> Result<&RentalClient, Error> {
    service(state.inner.rental.units.as_ref(), "units")
}
fn finances(state: &AppState) -> Result<&RentalClient, Error> {
    service(state.inner.rental.finances.as_ref(), "finances")
}
fn legal(state: &AppState) -> Result<&RentalClient, Error> {
    service(state.inner.rental.legal.as_ref(), "legal")
}

/// The client, which exists whenever the route does (the routes are built from the same URLs).
fn service<'a>(client: Option<&'a RentalClient>, name: &str) -> Result<&'a RentalClient, Error> {
    client.ok_or_else(|| Error::Internal(format!("a {name} route without a {name} service")))
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, Error> {
    q.map(|Query(q)| q)
        .map_err(|e| Error::InvalidQuery(e.body_text()))
}

/// A unit id from the path: a positive whole number.
fn unit_id(id: Result<Path<String>, PathRejection>) -> Result<i64, Error> {
    id.ok()
        .and_then(|Path(id)| id.parse::<i64>().ok())
        .filter(|id| *id > 0)
        .ok_or_else(|| Error::NotFound("no such unit (ids are positive whole numbers)".into()))
}

fn check_month(month: Option<&str>) -> Result<(), Error> {
    match month {
        Some(m) if !rental::is_month(m) => Err(Error::Invalid {
            code: "invalid_month".into(),
            message: format!("month must be YYYY-MM (01 to 12); got {m:?}"),
        }),
        _ => Ok(()),
    }
}

/// The domain's current version, creating one when the cache has none; `None` when the cache
/// cannot be used (the read then goes to the service and stores nothing).
async fn version(state: &AppState, domain: &str, rid: &str) -> Option<String> {
    let cache = &state.inner.cache;
    let key = format!("rental:{domain}:version");
    match cache.get(&key, rid).await {
        Ok(Some(Value::String(v))) => return Some(v),
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, domain, "cache read of a domain version failed");
            cache_error("get");
            return None;
        }
    }
    new_version(state, domain, rid).await
}

/// Stores a new version of `domain`: every key of the previous one is stale from now on.
async fn new_version(state: &AppState, domain: &str, rid: &str) -> Option<String> {
    let v = uuid::Uuid::new_v4().simple().to_string();
    let key = format!("rental:{domain}:version");
    match state
        .inner
        .cache
        .set(&key, &Value::String(v.clone()), VERSION_TTL, rid)
        .await
    {
        Ok(()) => Some(v),
        Err(e) => {
            tracing::warn!(error = %e, domain, "cache write of a domain version failed");
            cache_error("set");
            None
        }
    }
}

/// After a write to `domain`: a new version, so that no cached answer of the old data is served.
/// Failing that, the old answers stay until their TTL (logged; the write itself succeeded).
async fn invalidate(state: &AppState, domain: &str, rid: &str) {
    if new_version(state, domain, rid).await.is_none() {
        tracing::warn!(
            domain,
            "could not invalidate the cached listings; they stay until their TTL"
        );
    }
}

/// Cache-aside read of `what` (a key within `domain`'s current version) through `load`.
async fn cached<T, F>(
    state: &AppState,
    domain: &str,
    what: String,
    rid: &str,
    load: F,
) -> Result<Response, Error>
where
    T: Serialize + DeserializeOwned,
    F: Future<Output = Result<T, Error>>,
{
    let cache = &state.inner.cache;
    let key = version(state, domain, rid)
        .await
        .map(|v| format!("rental:{domain}:{v}:{what}"));
    if let Some(key) = &key {
        match cache.get(key, rid).await {
            Ok(Some(value)) => match serde_json::from_value::<T>(value) {
                Ok(hit) => return Ok(([x_cache(true)], Json(hit)).into_response()),
                Err(e) => tracing::warn!(error = %e, %key, "unreadable cached value; reloading"),
            },
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, %key, "cache read failed; asking the service");
                cache_error("get");
            }
        }
    }
    let answer = load.await?;
    if let Some(key) = &key {
        let ttl = Duration::from_secs(state.inner.config.cache_ttl_secs);
        match serde_json::to_value(&answer) {
            Ok(value) => {
                if let Err(e) = cache.set(key, &value, ttl, rid).await {
                    tracing::warn!(error = %e, %key, "cache write failed");
                    cache_error("set");
                }
            }
            Err(e) => tracing::warn!(error = %e, %key, "answer not cacheable"),
        }
    }
    Ok(([x_cache(false)], Json(answer)).into_response())
}

/// `GET /units/available` (no token): units with status `available`, cached.
async fn available_units(
    State(state): State<AppState>,
    RequestId(rid): RequestId,
) -> Result<Response, Error> {
    let client = units(&state)?;
    let q = UnitsQuery {
        status: Some("available".into()),
    };
    cached(&state, "units", "available".into(), &rid, async {
        Ok(client.units(&q, &rid).await?)
    })
    .await
}

/// `GET /units[?status=]`, cached per status.
async fn list_units(
    State(state): State<AppState>,
    RequestId(rid): RequestId,
    q: Result<Query<UnitsQuery>, QueryRejection>,
) -> Result<Response, Error> {
    let q = query(q)?;
    let client = units(&state)?;
    let what = format!("list:{}", q.status.as_deref().unwrap_or("*"));
    cached(&state, "units", what, &rid, async {
        Ok(client.units(&q, &rid).await?)
    })
    .await
}

/// `GET /units/{id}`, cached.
async fn get_unit(
    State(state): State<AppState>,
    RequestId(rid): RequestId,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, Error> {
    let id = unit_id(id)?;
    let client = units(&state)?;
    cached(&state, "units", format!("unit:{id}"), &rid, async {
        client
            .unit(id, &rid)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no unit {id}")))
    })
    .await
}

/// `POST /units` (admin) → `201`; every cached units answer is stale after it.
async fn create_unit(
    State(state): State<AppState>,
    RequestId(rid): RequestId,
    body: Result<Json<NewUnit>, ApiError>,
) -> Result<(StatusCode, Json<rental::Unit>), Error> {
    let Json(body) = body?;
    let unit = units(&state)?.create_unit(&body, &rid).await?;
    invalidate(&state, "units", &rid).await;
    Ok((StatusCode::CREATED, Json(unit)))
}

/// `PATCH /units/{id}` (admin); every cached units answer is stale after it.
async fn update_unit(
    State(state): State<AppState>,
    RequestId(rid): RequestId,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<UnitChange>, ApiError>,
) -> Result<Json<rental::Unit>, Error> {
    let id = unit_id(id)?;
    let Json(body) = body?;
    let unit = units(&state)?.update_unit(id, &body, &rid).await?;
    invalidate(&state, "units", &rid).await;
    Ok(Json(unit))
}

/// `GET /finances/transactions[?unit=&month=]` (finance), cached per query.
async fn list_transactions(
    State(state): State<AppState>,
    RequestId(rid): RequestId,
    q: Result<Query<TransactionsQuery>, QueryRejection>,
) -> Result<Response, Error> {
    let q = query(q)?;
    check_month(q.month.as_deref())?;
    let client = finances(&state)?;
    let what = format!(
        "transactions:{}:{}",
        q.unit.map_or_else(|| "*".to_string(), |u| u.to_string()),
        q.month.as_deref().unwrap_or("*")
    );
    cached(&state, "finances", what, &rid, async {
        Ok(client.transactions(&q, &rid).await?)
    })
    .await
}

/// `POST /finances/transactions` (finance) → `201`; every cached query is stale after it.
async fn create_transaction(
    State(state): State<AppState>,
    RequestId(rid): RequestId,
    body: Result<Json<NewTransaction>, ApiError>,
) -> Result<(StatusCode, Json<rental::Transaction>), Error> {
    let Json(body) = body?;
    let created = finances(&state)?.create_transaction(&body, &rid).await?;
    invalidate(&state, "finances", &rid).await;
    Ok((StatusCode::CREATED, Json(created)))
}

/// `GET /legal/documents[?status=&unit=]` (legal): straight from the legal service.
async fn list_documents(
    State(state): State<AppState>,
    RequestId(rid): RequestId,
    q: Result<Query<DocumentsQuery>, QueryRejection>,
) -> Result<Json<rental::Documents>, Error> {
    let q = query(q)?;
    Ok(Json(legal(&state)?.documents(&q, &rid).await?))
}

/// A report's filter from an optional JSON body (empty: no filter).
fn report_filter<T: DeserializeOwned + Default>(body: &Bytes) -> Result<T, Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| Error::Invalid {
        code: "invalid_body".into(),
        message: format!("the body is an optional JSON object of filters: {e}"),
    })
}

/// `POST /finances/generate_report` (finance) `{"unit"?, "month"?}` → `202`, a `finance_report`
/// task at high priority.
async fn finance_report(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<TaskQueued>), Error> {
    let filter: TransactionsQuery = report_filter(&body)?;
    check_month(filter.month.as_deref())?;
    queue_report(
        &state,
        &caller,
        &headers,
        queue::types::FINANCE_REPORT,
        &filter,
        Priority::High,
    )
    .await
}

/// `POST /legal/generate_report` (legal) `{"status"?, "unit"?}` → `202`, a `legal_report` task at
/// low priority.
async fn legal_report(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<TaskQueued>), Error> {
    let filter: DocumentsQuery = report_filter(&body)?;
    queue_report(
        &state,
        &caller,
        &headers,
        queue::types::LEGAL_REPORT,
        &filter,
        Priority::Low,
    )
    .await
}

async fn queue_report(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    kind: &str,
    filter: &impl Serialize,
    priority: Priority,
) -> Result<(StatusCode, Json<TaskQueued>), Error> {
    let payload = serde_json::to_value(filter)
        .map_err(|e| Error::Internal(format!("encoding a report filter: {e}")))?;
    let task = super::tasks::enqueue(
        state,
        caller,
        headers,
        kind.to_string(),
        payload,
        priority,
        None,
    )
    .await?;
    Ok((StatusCode::ACCEPTED, Json(super::tasks::queued(task))))
}
