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

use api::ErrorBody;
use api::client::RentalClient;
use api::wire::gateway::TaskQueued;
use api::wire::rental::{
    self, DocumentsQuery, NewTransaction, NewUnit, TransactionsQuery, UnitChange, Units, UnitsQuery,
};

use super::RawBody;
use super::{cache_error, x_cache};
use crate::cache::Lookup;
use crate::config::Config;
use crate::policy::Endpoint;
use crate::tokens::Caller;
use crate::{AppState, Error};

/// How long a domain's version is kept (the cache service's longest TTL): a version that expires
/// only makes the next read a miss.
const VERSION_TTL: Duration = Duration::from_secs(86_400);

/// The units routes, as the document describes them.
#[derive(utoipa::OpenApi)]
#[openapi(paths(available_units, list_units, get_unit, create_unit, update_unit))]
struct UnitsDoc;

/// The finances routes, as the document describes them.
#[derive(utoipa::OpenApi)]
#[openapi(paths(list_transactions, create_transaction, finance_report))]
struct FinancesDoc;

/// The legal routes, as the document describes them.
#[derive(utoipa::OpenApi)]
#[openapi(paths(list_documents, legal_report))]
struct LegalDoc;

/// The descriptions of the domains `config` has a service for (as [`endpoints`] routes them).
pub(super) fn docs(config: &Config) -> Vec<utoipa::openapi::OpenApi> {
    use utoipa::OpenApi;
    let mut docs = Vec::new();
    if !config.units_url.is_empty() {
        docs.push(UnitsDoc::openapi());
    }
    if !config.finances_url.is_empty() {
        docs.push(FinancesDoc::openapi());
    }
    if !config.legal_url.is_empty() {
        docs.push(LegalDoc::openapi());
    }
    docs
}

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
    let mut lease = None;
    if let Some(key) = &key {
        match cache.lookup(key, rid).await {
            Ok(Lookup::Hit { value, .. }) => match serde_json::from_str::<T>(value.json()) {
                Ok(hit) => return Ok(([x_cache(true)], Json(hit)).into_response()),
                Err(e) => tracing::warn!(error = %e, %key, "unreadable cached value; reloading"),
            },
            Ok(Lookup::Miss { lease: l }) => lease = l,
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
                if let Err(e) = cache.fill(key, &value, ttl, lease, rid).await {
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
#[utoipa::path(
    get,
    path = "/units/available",
    tag = "casitas",
    operation_id = "available_units",
    summary = "The units you can rent today, cached",
    responses(
        (status = 200, description = "Units whose status is `available`.", body = Units,
            headers(("X-Cache" = String, description = "`HIT` or `MISS`.")),
            example = json!({"units": [{"id": 3, "name": "Casita 3", "address": "12 Calle Luna", "bedrooms": 2, "monthly_rent_cents": 120000, "status": "available", "updated_at": "2026-05-01T10:00:00Z"}]})),
        (status = 502, description = "The domain service cannot be reached or failed.", body = ErrorBody),
        (status = 503, description = "The domain service is unavailable.", body = ErrorBody),
    )
)]
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
#[utoipa::path(
    get,
    path = "/units",
    tag = "casitas",
    operation_id = "list_units",
    summary = "Every unit, cached",
    params(("status" = Option<String>, Query, description = "Only units with this status.",
        pattern = "^(available|occupied|maintenance)$")),
    responses(
        (status = 200, description = "The units, in id order.", body = Units,
            headers(("X-Cache" = String, description = "`HIT` or `MISS`.")),
            example = json!({"units": [{"id": 3, "name": "Casita 3", "address": "12 Calle Luna", "bedrooms": 2, "monthly_rent_cents": 120000, "status": "available", "updated_at": "2026-05-01T10:00:00Z"}]})),
        (status = 400, description = "A bad query (`invalid_query`, `invalid_status`).", body = ErrorBody),
        (status = 502, description = "The domain service cannot be reached or failed.", body = ErrorBody),
        (status = 503, description = "The domain service is unavailable.", body = ErrorBody),
    )
)]
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
#[utoipa::path(
    get,
    path = "/units/{id}",
    tag = "casitas",
    operation_id = "get_unit",
    summary = "One unit, cached",
    params(("id" = i64, Path, description = "A unit id (a positive whole number).", minimum = 1, example = 3)),
    responses(
        (status = 200, description = "The unit.", body = rental::Unit,
            headers(("X-Cache" = String, description = "`HIT` or `MISS`.")),
            example = json!({"id": 3, "name": "Casita 3", "address": "12 Calle Luna", "bedrooms": 2, "monthly_rent_cents": 120000, "status": "available", "updated_at": "2026-05-01T10:00:00Z"})),
        (status = 404, description = "No such unit (`not_found`).", body = ErrorBody),
        (status = 502, description = "The domain service cannot be reached or failed.", body = ErrorBody),
        (status = 503, description = "The domain service is unavailable.", body = ErrorBody),
    )
)]
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
#[utoipa::path(
    post,
    path = "/units",
    tag = "casitas",
    operation_id = "create_unit",
    summary = "Add a unit",
    request_body(content = NewUnit, example = json!({"name": "Casita 3", "address": "12 Calle Luna", "bedrooms": 2, "monthly_rent_cents": 120000})),
    responses(
        (status = 201, description = "The unit as stored.", body = rental::Unit, example = json!({"id": 3, "name": "Casita 3", "address": "12 Calle Luna", "bedrooms": 2, "monthly_rent_cents": 120000, "status": "available", "updated_at": "2026-05-01T10:00:00Z"})),
        (status = 400, description = "A field breaks its rule (`invalid_name`, `invalid_address`, `invalid_bedrooms`, `invalid_rent`, `invalid_status`) or the body is not a unit.", body = ErrorBody),
        (status = 502, description = "The domain service cannot be reached or failed.", body = ErrorBody),
        (status = 503, description = "The domain service is unavailable.", body = ErrorBody),
    )
)]
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
#[utoipa::path(
    patch,
    path = "/units/{id}",
    tag = "casitas",
    operation_id = "update_unit",
    summary = "Change a unit",
    params(("id" = i64, Path, description = "A unit id (a positive whole number).", minimum = 1, example = 3)),
    request_body(content = UnitChange, example = json!({"status": "occupied"})),
    responses(
        (status = 200, description = "The unit as changed.", body = rental::Unit, example = json!({"id": 3, "name": "Casita 3", "address": "12 Calle Luna", "bedrooms": 2, "monthly_rent_cents": 120000, "status": "available", "updated_at": "2026-05-01T10:00:00Z"})),
        (status = 400, description = "No field to change (`empty_change`) or a field breaks its rule.", body = ErrorBody),
        (status = 404, description = "No such unit (`not_found`).", body = ErrorBody),
        (status = 502, description = "The domain service cannot be reached or failed.", body = ErrorBody),
        (status = 503, description = "The domain service is unavailable.", body = ErrorBody),
    )
)]
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
#[utoipa::path(
    get,
    path = "/finances/transactions",
    tag = "casitas",
    operation_id = "list_transactions",
    summary = "Transactions, cached per query",
    params(
        ("unit" = Option<i64>, Query, description = "Only this unit's.", minimum = 1),
        ("month" = Option<String>, Query, description = "Only this month's (`YYYY-MM`).", pattern = "^[0-9]{4}-(0[1-9]|1[0-2])$"),
    ),
    responses(
        (status = 200, description = "The transactions, in id order.", body = rental::Transactions,
            headers(("X-Cache" = String, description = "`HIT` or `MISS`.")),
            example = json!({"transactions": [{"id": 1, "unit_id": 3, "month": "2026-05", "kind": "rent", "amount_cents": 120000, "description": "", "created_at": "2026-05-01T10:00:00Z"}]})),
        (status = 400, description = "A bad query (`invalid_query`, `invalid_month`).", body = ErrorBody),
        (status = 502, description = "The domain service cannot be reached or failed.", body = ErrorBody),
        (status = 503, description = "The domain service is unavailable.", body = ErrorBody),
    )
)]
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
#[utoipa::path(
    post,
    path = "/finances/transactions",
    tag = "casitas",
    operation_id = "create_transaction",
    summary = "Record a transaction",
    request_body(content = NewTransaction, example = json!({"unit_id": 3, "month": "2026-05", "kind": "rent", "amount_cents": 120000})),
    responses(
        (status = 201, description = "The transaction as stored.", body = rental::Transaction,
            example = json!({"id": 1, "unit_id": 3, "month": "2026-05", "kind": "rent", "amount_cents": 120000, "description": "", "created_at": "2026-05-01T10:00:00Z"})),
        (status = 400, description = "A field breaks its rule (`invalid_unit`, `invalid_month`, `invalid_kind`, `invalid_amount`, `invalid_description`).", body = ErrorBody),
        (status = 404, description = "No such unit (`not_found`).", body = ErrorBody),
        (status = 502, description = "The domain service cannot be reached or failed.", body = ErrorBody),
        (status = 503, description = "The domain service is unavailable.", body = ErrorBody),
    )
)]
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
#[utoipa::path(
    get,
    path = "/legal/documents",
    tag = "casitas",
    operation_id = "list_documents",
    summary = "Legal documents",
    params(
        ("status" = Option<String>, Query, description = "Only documents with this status.", pattern = "^(active|pending|expired)$"),
        ("unit" = Option<i64>, Query, description = "Only this unit's.", minimum = 1),
    ),
    responses(
        (status = 200, description = "The documents, in id order.", body = rental::Documents,
            example = json!({"documents": [{"id": 1, "unit_id": 3, "kind": "lease", "status": "active", "title": "Lease 2026", "updated_at": "2026-05-01T10:00:00Z"}]})),
        (status = 400, description = "A bad query (`invalid_query`, `invalid_status`).", body = ErrorBody),
        (status = 502, description = "The domain service cannot be reached or failed.", body = ErrorBody),
        (status = 503, description = "The domain service is unavailable.", body = ErrorBody),
    )
)]
async fn list_documents(
    State(state): State<AppState>,
    RequestId(rid): RequestId,
    q: Result<Query<DocumentsQuery>, QueryRejection>,
) -> Result<Json<rental::Documents>, Error> {
    let q = query(q)?;
    Ok(Json(legal(&state)?.documents(&q, &rid).await?))
}

/// A report's filter from an optional JSON body (empty or `null`: no filter), its whole numbers
/// read as the report task `kind` reads them.
fn report_filter<T: DeserializeOwned + Default>(body: &Bytes, kind: &str) -> Result<T, Error> {
    const WHAT: &str = "the body is an optional JSON object of filters";
    let filter: Value = super::optional_object(body, WHAT)?;
    if filter.is_null() {
        return Ok(T::default());
    }
    serde_json::from_value(super::tasks::whole_numbers(kind, filter)).map_err(|e| Error::Invalid {
        code: "invalid_body".into(),
        message: format!("{WHAT}: {e}"),
    })
}

/// `POST /finances/generate_report` (finance) `{"unit"?, "month"?}` → `202`, a `finance_report`
/// task at high priority.
#[utoipa::path(
    post,
    path = "/finances/generate_report",
    tag = "casitas",
    operation_id = "finance_report",
    summary = "Queue a finance report (high priority)",
    request_body(content = Option<TransactionsQuery>, description = "Optional filter; any content type.",
        example = json!({"unit": 3, "month": "2026-05"})),
    responses(
        (status = 202, description = "The report task, queued; its result is in `GET /tasks/{id}`.", body = TaskQueued, example = json!({"status": "Task queued", "task_id": "0190c3a2-6f1e-7cc1-9a51-2f4b1d7e9a10", "type": "finance_report", "priority": "high",
                "status_url": "/tasks/0190c3a2-6f1e-7cc1-9a51-2f4b1d7e9a10", "events_url": "/tasks/0190c3a2-6f1e-7cc1-9a51-2f4b1d7e9a10/events"})),
        (status = 400, description = "The filter is not `{\"unit\"?, \"month\"?}` (`invalid_body`, `invalid_month`, `invalid_payload`).", body = ErrorBody),
        (status = 503, description = "The task queue cannot be reached (`queue_unavailable`).", body = ErrorBody),
    )
)]
async fn finance_report(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<(StatusCode, Json<TaskQueued>), Error> {
    let filter: TransactionsQuery = report_filter(&body, queue::types::FINANCE_REPORT)?;
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
#[utoipa::path(
    post,
    path = "/legal/generate_report",
    tag = "casitas",
    operation_id = "legal_report",
    summary = "Queue a legal report (low priority)",
    request_body(content = Option<DocumentsQuery>, description = "Optional filter; any content type.",
        example = json!({"status": "expired"})),
    responses(
        (status = 202, description = "The report task, queued; its result is in `GET /tasks/{id}`.", body = TaskQueued),
        (status = 400, description = "The filter is not `{\"status\"?, \"unit\"?}` (`invalid_body`, `invalid_payload`).", body = ErrorBody),
        (status = 503, description = "The task queue cannot be reached (`queue_unavailable`).", body = ErrorBody),
    )
)]
async fn legal_report(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<(StatusCode, Json<TaskQueued>), Error> {
    let filter: DocumentsQuery = report_filter(&body, queue::types::LEGAL_REPORT)?;
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
