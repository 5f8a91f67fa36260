//! Task routes: submission (checked against `queue::types` before anything is stored), status,
//! listing, cancellation, re-queueing, live events, and the lab's `/longtask`, `/add` and
//! `/result/{id}` calls, all on the queue store shared with the workers.
//!
//! Owners see and cancel only their own tasks; anyone else's id answers `404`, exactly like an
//! unknown one, so that ids cannot be probed. Admins see everything, re-queue dead tasks and read
//! the queue's counts.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use common::{ApiError, Json};
use futures::Stream;
use queue::{ListQuery, NewTask, Priority, Queue, Status, Task};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::tokens::Caller;
use crate::{AppState, Error};

/// The role that sees every task.
const ADMIN: &str = "admin";
/// The header that makes a retried submission return the first task.
const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Longest idempotency key, in bytes.
const MAX_KEY_BYTES: usize = 200;
/// How often the events stream reads the task.
const EVENTS_POLL: Duration = Duration::from_millis(200);

/// The task routes (behind the guard, like every business route).
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/longtask", post(longtask))
        .route("/tasks", post(submit).get(list))
        .route("/tasks/stats", get(stats))
        .route("/tasks/types", get(types))
        .route("/tasks/{id}", get(get_task).delete(cancel))
        .route("/task/{id}", get(get_task))
        .route("/tasks/{id}/requeue", post(requeue))
        .route("/tasks/{id}/events", get(events))
        .route("/add", post(add))
        .route("/result/{id}", get(result))
}

/// A queue error as the gateway answers it.
fn queue_error(e: queue::Error) -> Error {
    Error::Rejected(e.to_api_error())
}

/// The queue store, or `503` when this gateway has none configured.
fn store(state: &AppState) -> Result<Arc<dyn Queue>, Error> {
    state.inner.tasks.clone().ok_or_else(|| {
        Error::Rejected(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "queue_unavailable",
            "this gateway has no task queue configured",
        ))
    })
}

/// Whose tasks these are: the user id, or `anonymous` when tokens are off.
fn owner(caller: &Caller) -> String {
    caller.user_id().unwrap_or("anonymous").to_string()
}

fn not_found(id: &str) -> Error {
    Error::Rejected(queue::Error::NotFound(id.to_string()).to_api_error())
}

/// The task, if the caller may see it (its owner, or an admin); `404` otherwise.
async fn visible(q: &dyn Queue, caller: &Caller, id: &str) -> Result<Task, Error> {
    match q.get(id).await.map_err(queue_error)? {
        Some(t) if caller.has_role(ADMIN) || t.owner == owner(caller) => Ok(t),
        _ => Err(not_found(id)),
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Error> {
    let Some(v) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= MAX_KEY_BYTES => Ok(Some(k.to_string())),
        _ => Err(Error::Rejected(ApiError::bad_request(
            "invalid_idempotency_key",
            format!("Idempotency-Key is 1 to {MAX_KEY_BYTES} visible ASCII characters"),
        ))),
    }
}

fn priority(p: Option<&str>) -> Result<Priority, Error> {
    p.map_or(Ok(Priority::Normal), |p| p.parse().map_err(queue_error))
}

/// Checks and stores a submission. Nothing is stored unless every check passed.
async fn enqueue(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    kind: String,
    payload: Value,
    priority: Priority,
    max_attempts: Option<u32>,
) -> Result<Task, Error> {
    queue::types::validate(&kind, &payload).map_err(queue_error)?;
    let key = idempotency_key(headers)?;
    let q = store(state)?;
    let task = q
        .submit(NewTask {
            kind,
            payload: if payload.is_null() {
                json!({})
            } else {
                payload
            },
            priority,
            owner: owner(caller),
            idempotency_key: key,
            max_attempts,
        })
        .await
        .map_err(queue_error)?;
    metrics::counter!("scalelab_gateway_tasks_submitted_total", "type" => task.kind.clone())
        .increment(1);
    Ok(task)
}

/// `POST /tasks` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Submit {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    payload: Value,
    priority: Option<String>,
    max_attempts: Option<u32>,
}

/// `POST /tasks` `{"type","payload","priority"?,"max_attempts"?}` → `202` with the task.
pub(crate) async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Json<Submit>, ApiError>,
) -> Result<(StatusCode, axum::Json<Task>), Error> {
    let Json(body) = body?;
    let priority = priority(body.priority.as_deref())?;
    let task = enqueue(
        &state,
        &caller,
        &headers,
        body.kind,
        body.payload,
        priority,
        body.max_attempts,
    )
    .await?;
    Ok((StatusCode::ACCEPTED, axum::Json(task)))
}

/// `POST /longtask` `{"task": "report", ...}` (the lab's call): the other fields (but
/// `priority`) are the payload; an empty body is a `report`. → `202 {"status":"Task queued",
/// "task_id", ...}`.
pub(crate) async fn longtask(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, axum::Json<Value>), Error> {
    let mut fields: Map<String, Value> = if body.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            Error::Rejected(ApiError::bad_request(
                "malformed_json",
                format!("the body is not a JSON object: {e}"),
            ))
        })?
    };
    let kind = match fields.remove("task") {
        None => "report".to_string(),
        Some(Value::String(s)) => s,
        Some(_) => {
            return Err(Error::Rejected(ApiError::bad_request(
                "invalid_body",
                "task is the name of a task type",
            )));
        }
    };
    let priority = match fields.remove("priority") {
        None => Priority::Normal,
        Some(Value::String(p)) => priority(Some(&p))?,
        Some(other) => priority(Some(&other.to_string()))?,
    };
    let task = enqueue(
        &state,
        &caller,
        &headers,
        kind,
        Value::Object(fields),
        priority,
        None,
    )
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({
            "status": "Task queued",
            "task_id": task.id,
            "type": task.kind,
            "priority": task.priority,
            "status_url": format!("/tasks/{}", task.id),
            "events_url": format!("/tasks/{}/events", task.id),
        })),
    ))
}

/// `POST /add` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AddBody {
    a: Value,
    b: Value,
}

/// `POST /add` `{"a","b"}` → `201 {"result_id"}` (the Celery-style pair with `/result/{id}`).
pub(crate) async fn add(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Json<AddBody>, ApiError>,
) -> Result<(StatusCode, axum::Json<Value>), Error> {
    let Json(AddBody { a, b }) = body?;
    let task = enqueue(
        &state,
        &caller,
        &headers,
        "add".into(),
        json!({"a": a, "b": b}),
        Priority::Normal,
        None,
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"result_id": task.id, "task_id": task.id})),
    ))
}

/// `GET /result/{id}` → `{"ready","successful","value"}`: `ready` once the task is final,
/// `value` its result (or its last error when it did not succeed).
pub(crate) async fn result(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, Error> {
    let q = store(&state)?;
    let t = visible(&*q, &caller, &id).await?;
    let ready = t.status.is_final();
    let successful = t.status == Status::Succeeded;
    let value = if successful {
        t.result.unwrap_or(Value::Null)
    } else if ready {
        t.error.map(Value::String).unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    Ok(axum::Json(json!({
        "id": t.id,
        "status": t.status,
        "ready": ready,
        "successful": successful,
        "value": value,
    })))
}

/// `GET /tasks/{id}`, `GET /task/{id}`.
pub(crate) async fn get_task(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<Task>, Error> {
    let q = store(&state)?;
    Ok(axum::Json(visible(&*q, &caller, &id).await?))
}

/// `DELETE /tasks/{id}`: cancels a task that waits to run; `409` when running or finished.
pub(crate) async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<Task>, Error> {
    let q = store(&state)?;
    visible(&*q, &caller, &id).await?;
    Ok(axum::Json(q.cancel(&id).await.map_err(queue_error)?))
}

/// `POST /tasks/{id}/requeue` (admin): a dead task back in the queue with fresh attempts.
pub(crate) async fn requeue(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<(StatusCode, axum::Json<Task>), Error> {
    if !caller.has_role(ADMIN) {
        return Err(Error::Forbidden(
            "re-queueing a task needs the admin role".into(),
        ));
    }
    let q = store(&state)?;
    let task = q.requeue(&id).await.map_err(queue_error)?;
    Ok((StatusCode::ACCEPTED, axum::Json(task)))
}

/// `GET /tasks` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListParams {
    status: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
    /// Admins only: one owner's tasks.
    owner: Option<String>,
}

/// `GET /tasks?status=&type=&limit=&cursor=`: the caller's tasks (admins: everyone's), newest
/// first, `{"tasks": [...], "next_cursor"}`.
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<ListParams>, QueryRejection>,
) -> Result<axum::Json<queue::Page>, Error> {
    let Query(p) = query
        .map_err(|e| Error::Rejected(ApiError::bad_request("invalid_query", e.body_text())))?;
    let status = p
        .status
        .as_deref()
        .map(str::parse::<Status>)
        .transpose()
        .map_err(queue_error)?;
    let limit = p.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(Error::Rejected(ApiError::bad_request(
            "invalid_query",
            "limit is 1 to 500",
        )));
    }
    let owner = if caller.has_role(ADMIN) {
        p.owner
    } else {
        Some(owner(&caller))
    };
    let q = store(&state)?;
    let page = q
        .list(&ListQuery {
            owner,
            status,
            kind: p.kind,
            limit,
            cursor: p.cursor,
        })
        .await
        .map_err(queue_error)?;
    Ok(axum::Json(page))
}

/// `GET /tasks/stats` (admin): tasks by status and queue depth by priority.
pub(crate) async fn stats(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<axum::Json<Value>, Error> {
    if !caller.has_role(ADMIN) {
        return Err(Error::Forbidden(
            "GET /tasks/stats needs the admin role".into(),
        ));
    }
    let q = store(&state)?;
    let stats = q.stats().await.map_err(queue_error)?;
    let mut body = serde_json::to_value(stats).map_err(|e| Error::Internal(e.to_string()))?;
    if let Some(obj) = body.as_object_mut() {
        obj.insert("gateway_id".into(), Value::from(&*state.inner.instance.id));
    }
    Ok(axum::Json(body))
}

/// `GET /tasks/types`: the task types and their payload fields.
pub(crate) async fn types() -> axum::Json<Value> {
    axum::Json(json!({ "types": queue::types::TYPES }))
}

/// What the events stream last sent.
#[derive(PartialEq)]
struct Seen {
    status: Status,
    attempts: u32,
    progress: Option<Value>,
}

/// `GET /tasks/{id}/events`: server-sent events. `event: status` (the whole task) whenever its
/// status or attempt changes, `event: progress` when only its progress does; the stream ends
/// after the task reaches `succeeded`, `dead` or `cancelled`. The store is read every 200 ms.
pub(crate) async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let q = store(&state)?;
    let first = visible(&*q, &caller, &id).await?;
    Ok(Sse::new(event_stream(q, first))
        .keep_alive(KeepAlive::default())
        .into_response())
}

fn event_stream(
    q: Arc<dyn Queue>,
    first: Task,
) -> impl Stream<Item = Result<Event, std::convert::Infallible>> + Send {
    let id = first.id.clone();
    // State: the task to report next (if already read), what was sent last, whether it ended.
    futures::stream::unfold(
        (Some(first), None::<Seen>, false),
        move |(mut next, mut seen, ended)| {
            let (q, id) = (q.clone(), id.clone());
            async move {
                if ended {
                    return None;
                }
                loop {
                    let task = match next.take() {
                        Some(t) => t,
                        None => {
                            tokio::time::sleep(EVENTS_POLL).await;
                            match q.get(&id).await {
                                Ok(Some(t)) => t,
                                Ok(None) => return None,
                                Err(e) => {
                                    tracing::warn!(error = %e, task = %id, "events: reading the task failed");
                                    let event = Event::default().event("error").data(
                                        "the task queue cannot be reached; poll GET /tasks/{id}",
                                    );
                                    return Some((Ok(event), (None, seen, true)));
                                }
                            }
                        }
                    };
                    let now = Seen {
                        status: task.status,
                        attempts: task.attempts,
                        progress: task.progress.clone(),
                    };
                    let event = match &seen {
                        Some(s) if *s == now => None,
                        Some(s) if s.status == now.status && s.attempts == now.attempts => Some(
                            Event::default()
                                .event("progress")
                                .json_data(&now.progress)
                                .unwrap_or_default(),
                        ),
                        _ => Some(
                            Event::default()
                                .event("status")
                                .json_data(&task)
                                .unwrap_or_default(),
                        ),
                    };
                    let finished = task.status.is_final();
                    seen = Some(now);
                    if let Some(event) = event {
                        return Some((Ok(event), (None, seen, finished)));
                    }
                }
            }
        },
    )
}
