//! Task routes: submission (checked against `queue::types` before anything is stored), status,
//! listing, cancellation, re-queueing, live events, and the lab's `/longtask`, `/add` and
//! `/result/{id}` calls, all on the queue store shared with the workers.
//!
//! Owners see and cancel only their own tasks; anyone else's id answers `404`, exactly like an
//! unknown one, so that ids cannot be probed. Admins see everything; who may re-queue dead tasks
//! and read the queue's counts is the route table's (`policy.rs`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use common::{ApiError, Json};
use futures::Stream;
use queue::{ListQuery, NewTask, Priority, Queue, Status, Task};
use serde_json::{Map, Value};

use api::ErrorBody;
use api::wire::gateway::{
    AddQueued, AddRequest, SubmitTask, Tagged, TaskQueued, TaskResult, TaskTypes, TasksQuery,
};

use super::RawBody;
use crate::policy::{ADMIN, Endpoint};
use crate::tokens::Caller;
use crate::{AppState, Error};
/// The header that makes a retried submission return the first task.
const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Longest idempotency key, in bytes.
const MAX_KEY_BYTES: usize = 200;
/// How often the events stream reads the task.
const EVENTS_POLL: Duration = Duration::from_millis(200);

/// This module's routes, as the document describes them (`/task/{id}` is added by `openapi` as an
/// alias of `GET /tasks/{id}`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    longtask, submit, list, stats, types, get_task, cancel, requeue, events, add, result
))]
pub(super) struct Doc;

pub(super) fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint::new(Method::POST, "/longtask", longtask),
        Endpoint::new(Method::POST, "/tasks", submit),
        Endpoint::new(Method::GET, "/tasks", list),
        Endpoint::new(Method::GET, "/tasks/stats", stats),
        Endpoint::new(Method::GET, "/tasks/types", types),
        Endpoint::new(Method::GET, "/tasks/{id}", get_task),
        Endpoint::new(Method::DELETE, "/tasks/{id}", cancel),
        Endpoint::new(Method::GET, "/task/{id}", get_task),
        Endpoint::new(Method::POST, "/tasks/{id}/requeue", requeue),
        Endpoint::new(Method::GET, "/tasks/{id}/events", events),
        Endpoint::new(Method::POST, "/add", add),
        Endpoint::new(Method::GET, "/result/{id}", result),
    ]
}

/// The queue store, or `503` when this gateway has none configured.
fn store(state: &AppState) -> Result<Arc<dyn Queue>, Error> {
    state.inner.tasks.clone().ok_or(Error::NoQueue)
}

/// Whose tasks these are: the user id, or `anonymous` when tokens are off.
fn owner(caller: &Caller) -> String {
    caller.user_id().unwrap_or("anonymous").to_string()
}

fn not_found(id: &str) -> Error {
    Error::Queue(queue::Error::NotFound(id.to_string()))
}

/// The task, if the caller may see it (its owner, or an admin); `404` otherwise.
async fn visible(q: &dyn Queue, caller: &Caller, id: &str) -> Result<Task, Error> {
    match q.get(id).await? {
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
        _ => Err(Error::Invalid {
            code: "invalid_idempotency_key".into(),
            message: format!("Idempotency-Key is 1 to {MAX_KEY_BYTES} visible ASCII characters"),
        }),
    }
}

fn priority(p: Option<&str>) -> Result<Priority, Error> {
    Ok(p.map_or(Ok(Priority::Normal), str::parse)?)
}

/// Checks and stores a submission. Nothing is stored unless every check passed.
pub(super) async fn enqueue(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    kind: String,
    payload: Value,
    priority: Priority,
    max_attempts: Option<u32>,
) -> Result<Task, Error> {
    let payload = whole_numbers(&kind, payload);
    queue::types::validate(&kind, &payload)?;
    super::rental::check_task(state, &kind, &payload)?;
    let key = idempotency_key(headers)?;
    let q = store(state)?;
    let task = q
        .submit(NewTask {
            kind,
            payload: if payload.is_null() {
                Value::Object(Map::new())
            } else {
                payload
            },
            priority,
            owner: owner(caller),
            idempotency_key: key,
            max_attempts,
        })
        .await?;
    metrics::counter!("scalelab_gateway_tasks_submitted_total", "type" => task.kind.clone())
        .increment(1);
    Ok(task)
}

/// `payload` with every whole-number field of `kind` that came as a float (`500.0`) written as
/// the integer it is: JSON does not tell `500.0` from `500`, and the workers read integers.
pub(super) fn whole_numbers(kind: &str, mut payload: Value) -> Value {
    let (Some(t), Some(fields)) = (queue::types::find(kind), payload.as_object_mut()) else {
        return payload;
    };
    for f in t.fields {
        if !matches!(f.kind, queue::types::FieldKind::Integer { .. }) {
            continue;
        }
        if let Some(v) = fields.get_mut(f.name)
            && v.as_i64().is_none()
            && let Some(x) = v.as_f64()
            && x.fract() == 0.0
            && x >= i64::MIN as f64
            && x < i64::MAX as f64
        {
            *v = Value::from(x as i64);
        }
    }
    payload
}

/// `POST /tasks` `{"type","payload","priority"?,"max_attempts"?}` → `202` with the task.
#[utoipa::path(
    post,
    path = "/tasks",
    tag = "tasks",
    operation_id = "submit_task",
    summary = "Submit a task",
    description = "Checked against the task type's fields before anything is stored: a task no \
        worker could run never enters the queue.",
    params(("Idempotency-Key" = Option<String>, Header, description = "A retried submission with the same key (and owner) returns the first task: 1 to 200 visible ASCII characters.",
            pattern = r"^[!-~]([\t -~]{0,198}[!-~])?$", example = "order-1234")),
    request_body(content = SubmitTask, example = json!({"type": "sleep", "payload": {"ms": 500}, "priority": "high"})),
    responses(
        (status = 202, description = "The task, queued.", body = crate::openapi::TaskSchema, example = json!({"id": "0190c3a2-6f1e-7cc1-9a51-2f4b1d7e9a10", "type": "sleep", "payload": {"ms": 500}, "status": "queued", "priority": "high",
                "attempts": 0, "max_attempts": 3, "result": null, "error": null, "progress": null, "owner": "0b7e3c9e-9a4e-4a43-9a57-3f1f2f0d2c11",
                "idempotency_key": null, "created_at": 1767225600000_i64, "started_at": null, "finished_at": null, "worker_id": null,
                "not_before": 1767225600000_i64, "lease_until": null})),
        (status = 400, description = "An unknown type (`unknown_task_type`), a payload that does not fit it (`invalid_payload`), an unknown priority (`invalid_priority`), a bad `Idempotency-Key` (`invalid_idempotency_key`), or a body that is not JSON (`malformed_json`) or lacks a field (`invalid_body`).",
            body = ErrorBody, example = json!({"error": "invalid_payload", "message": "a sleep task needs the field \"ms\""})),
        (status = 503, description = "The task queue cannot be reached (`queue_unavailable`).", body = ErrorBody),
    )
)]
async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Json<SubmitTask>, ApiError>,
) -> Result<(StatusCode, Json<Task>), Error> {
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
    Ok((StatusCode::ACCEPTED, Json(task)))
}

/// A priority named by `v`, if it names one (the loose door ignores anything else).
fn named_priority(v: Option<&Value>) -> Option<Priority> {
    v.and_then(Value::as_str).and_then(|p| p.parse().ok())
}

/// `POST /longtask`: the lab's loose door (`POST /tasks` stays the strict one). Any JSON object, or
/// an empty body, is accepted:
/// - `task` or `type` naming a known task type runs as that type, the other fields (but
///   `priority`) being its payload, checked as on `POST /tasks`;
/// - anything else runs as the generic `longtask` type with the whole body as its payload, kept
///   as sent (unknown fields included) and echoed in its result.
///
/// `priority` (top level, or inside `parameters` as some lab scripts send it) is honoured when it
/// names one and ignored otherwise. → `202 {"status": "Task queued", "task_id", ...}`.
#[utoipa::path(
    post,
    path = "/longtask",
    tag = "tasks",
    operation_id = "longtask",
    summary = "Submit a task the lab's way",
    description = "Any JSON object, or nothing: `task` or `type` naming a known type runs as that type \
        (the other fields its payload); anything else runs as the generic `longtask` with the whole \
        body as its payload. `priority` is honoured when it names one.",
    params(("Idempotency-Key" = Option<String>, Header, description = "A retried submission with the same key (and owner) returns the first task: 1 to 200 visible ASCII characters.",
            pattern = r"^[!-~]([\t -~]{0,198}[!-~])?$", example = "order-1234")),
    request_body(content = Option<serde_json::Map<String, serde_json::Value>>, description = "Optional; any content type.",
        example = json!({"name": "nightly export", "parameters": {"priority": "low"}})),
    responses(
        (status = 202, description = "The task, queued.", body = TaskQueued, example = json!({"status": "Task queued", "task_id": "0190c3a2-6f1e-7cc1-9a51-2f4b1d7e9a10", "type": "longtask", "priority": "normal",
                "status_url": "/tasks/0190c3a2-6f1e-7cc1-9a51-2f4b1d7e9a10", "events_url": "/tasks/0190c3a2-6f1e-7cc1-9a51-2f4b1d7e9a10/events"})),
        (status = 400, description = "The body is not a JSON object (`malformed_json`), or it names a type whose payload does not fit (`invalid_payload`), or a bad `Idempotency-Key` (`invalid_idempotency_key`).", body = ErrorBody),
        (status = 503, description = "The task queue cannot be reached (`queue_unavailable`).", body = ErrorBody),
    )
)]
async fn longtask(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<(StatusCode, Json<TaskQueued>), Error> {
    let mut fields: Map<String, Value> = if body.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        serde_json::from_slice(&body).map_err(|e| Error::Invalid {
            code: "malformed_json".into(),
            message: format!("the body is not a JSON object: {e}"),
        })?
    };
    let priority = named_priority(fields.get("priority"))
        .or_else(|| named_priority(fields.get("parameters").and_then(|p| p.get("priority"))))
        .unwrap_or(Priority::Normal);
    let named = ["task", "type"].into_iter().find_map(|k| {
        fields
            .get(k)
            .and_then(Value::as_str)
            .filter(|name| queue::types::find(name).is_some())
            .map(|name| (k, name.to_string()))
    });
    let (kind, payload) = match named {
        Some((key, kind)) => {
            fields.remove(key);
            fields.remove("priority");
            (kind, Value::Object(fields))
        }
        None => (queue::types::LONGTASK.to_string(), Value::Object(fields)),
    };
    let task = enqueue(&state, &caller, &headers, kind, payload, priority, None).await?;
    Ok((StatusCode::ACCEPTED, Json(queued(task))))
}

/// The lab's answer to a queued task: `{"status": "Task queued", "task_id", ...}`.
pub(super) fn queued(task: Task) -> TaskQueued {
    TaskQueued {
        status: "Task queued".into(),
        status_url: format!("/tasks/{}", task.id),
        events_url: format!("/tasks/{}/events", task.id),
        task_id: task.id,
        kind: task.kind,
        priority: task.priority.as_str().into(),
    }
}

/// `POST /add` `{"a","b"}` → `201 {"result_id"}` (the Celery-style pair with `/result/{id}`).
#[utoipa::path(
    post,
    path = "/add",
    tag = "tasks",
    operation_id = "add",
    summary = "Submit an add task, Celery style",
    params(("Idempotency-Key" = Option<String>, Header, description = "A retried submission with the same key (and owner) returns the first task: 1 to 200 visible ASCII characters.",
            pattern = r"^[!-~]([\t -~]{0,198}[!-~])?$", example = "order-1234")),
    request_body(content = AddRequest, example = json!({"a": 2, "b": 3})),
    responses(
        (status = 201, description = "The task's id, to read with `GET /result/{id}`.", body = AddQueued,
            example = json!({"result_id": "0190c3a2-6f1e-7cc1-9a51-2f4b1d7e9a10", "task_id": "0190c3a2-6f1e-7cc1-9a51-2f4b1d7e9a10"})),
        (status = 400, description = "An operand is not a number (`invalid_payload`), or the body is not `{\"a\", \"b\"}`.", body = ErrorBody),
        (status = 503, description = "The task queue cannot be reached (`queue_unavailable`).", body = ErrorBody),
    )
)]
async fn add(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Json<AddRequest>, ApiError>,
) -> Result<(StatusCode, Json<AddQueued>), Error> {
    let Json(AddRequest { a, b }) = body?;
    let task = enqueue(
        &state,
        &caller,
        &headers,
        "add".into(),
        serde_json::to_value(AddRequest { a, b }).map_err(|e| Error::Internal(e.to_string()))?,
        Priority::Normal,
        None,
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(AddQueued {
            result_id: task.id.clone(),
            task_id: task.id,
        }),
    ))
}

/// `GET /result/{id}` → `{"ready","successful","value"}`: `ready` once the task is final,
/// `value` its result (or its last error when it did not succeed).
#[utoipa::path(
    get,
    path = "/result/{id}",
    tag = "tasks",
    operation_id = "get_result",
    summary = "A task's result, Celery style",
    params(("id" = String, Path, description = "The task's id.", example = "0190c3a2-6f1e-7cc1-9a51-2f4b1d7e9a10")),
    responses(
        (status = 200, description = "Whether the task is final, whether it succeeded, and its result (or last error).",
            body = TaskResult,
            example = json!({"id": "0190c3a2-6f1e-7cc1-9a51-2f4b1d7e9a10", "status": "succeeded", "ready": true, "successful": true, "value": 5})),
        (status = 404, description = "No task with this id is yours (`not_found`: the same for someone else's).", body = ErrorBody),
        (status = 503, description = "The task queue cannot be reached (`queue_unavailable`).", body = ErrorBody),
    )
)]
async fn result(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<TaskResult>, Error> {
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
    Ok(Json(TaskResult {
        id: t.id,
        status: t.status.as_str().into(),
        ready,
        successful,
        value,
    }))
}

/// `GET /tasks/{id}`, `GET /task/{id}`.
#[utoipa::path(
    get,
    path = "/tasks/{id}",
    tag = "tasks",
    operation_id = "get_task",
    summary = "A task you own (admins: any)",
    params(("id" = String, Path, description = "The task's id.", example = "0190c3a2-6f1e-7cc1-9a51-2f4b1d7e9a10")),
    responses(
        (status = 200, description = "The task.", body = crate::openapi::TaskSchema, example = json!({"id": "0190c3a2-6f1e-7cc1-9a51-2f4b1d7e9a10", "type": "sleep", "payload": {"ms": 500}, "status": "queued", "priority": "high",
                "attempts": 0, "max_attempts": 3, "result": null, "error": null, "progress": null, "owner": "0b7e3c9e-9a4e-4a43-9a57-3f1f2f0d2c11",
                "idempotency_key": null, "created_at": 1767225600000_i64, "started_at": null, "finished_at": null, "worker_id": null,
                "not_before": 1767225600000_i64, "lease_until": null})),
        (status = 404, description = "No task with this id is yours (`not_found`: the same for someone else's).", body = ErrorBody),
        (status = 503, description = "The task queue cannot be reached (`queue_unavailable`).", body = ErrorBody),
    )
)]
async fn get_task(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Task>, Error> {
    let q = store(&state)?;
    Ok(Json(visible(&*q, &caller, &id).await?))
}

/// `DELETE /tasks/{id}`: cancels a task that waits to run; `409` when running or finished.
#[utoipa::path(
    delete,
    path = "/tasks/{id}",
    tag = "tasks",
    operation_id = "cancel_task",
    summary = "Cancel a queued task you own",
    description = "The task stays readable, as `cancelled`: cancelling is a change of state, not \
        the removal of the record.",
    params(("id" = String, Path, description = "The task's id.", example = "0190c3a2-6f1e-7cc1-9a51-2f4b1d7e9a10")),
    responses(
        (status = 200, description = "The task, cancelled.", body = crate::openapi::TaskSchema, example = json!({"id": "0190c3a2-6f1e-7cc1-9a51-2f4b1d7e9a10", "type": "sleep", "payload": {"ms": 500}, "status": "queued", "priority": "high",
                "attempts": 0, "max_attempts": 3, "result": null, "error": null, "progress": null, "owner": "0b7e3c9e-9a4e-4a43-9a57-3f1f2f0d2c11",
                "idempotency_key": null, "created_at": 1767225600000_i64, "started_at": null, "finished_at": null, "worker_id": null,
                "not_before": 1767225600000_i64, "lease_until": null})),
        (status = 404, description = "No task with this id is yours (`not_found`: the same for someone else's).", body = ErrorBody),
        (status = 409, description = "The task is running or finished (`conflict`).", body = ErrorBody),
        (status = 503, description = "The task queue cannot be reached (`queue_unavailable`).", body = ErrorBody),
    )
)]
async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Task>, Error> {
    let q = store(&state)?;
    visible(&*q, &caller, &id).await?;
    Ok(Json(q.cancel(&id).await?))
}

/// `POST /tasks/{id}/requeue` (admin): a dead task back in the queue with fresh attempts.
#[utoipa::path(
    post,
    path = "/tasks/{id}/requeue",
    tag = "tasks",
    operation_id = "requeue_task",
    summary = "Put a dead task back in the queue",
    params(("id" = String, Path, description = "The task's id.", example = "0190c3a2-6f1e-7cc1-9a51-2f4b1d7e9a10")),
    responses(
        (status = 202, description = "The task, queued again with fresh attempts.", body = crate::openapi::TaskSchema, example = json!({"id": "0190c3a2-6f1e-7cc1-9a51-2f4b1d7e9a10", "type": "sleep", "payload": {"ms": 500}, "status": "queued", "priority": "high",
                "attempts": 0, "max_attempts": 3, "result": null, "error": null, "progress": null, "owner": "0b7e3c9e-9a4e-4a43-9a57-3f1f2f0d2c11",
                "idempotency_key": null, "created_at": 1767225600000_i64, "started_at": null, "finished_at": null, "worker_id": null,
                "not_before": 1767225600000_i64, "lease_until": null})),
        (status = 404, description = "No task has this id (`not_found`).", body = ErrorBody),
        (status = 409, description = "The task is not dead (`conflict`).", body = ErrorBody),
        (status = 503, description = "The task queue cannot be reached (`queue_unavailable`).", body = ErrorBody),
    )
)]
async fn requeue(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Task>), Error> {
    let q = store(&state)?;
    let task = q.requeue(&id).await?;
    Ok((StatusCode::ACCEPTED, Json(task)))
}

/// `GET /tasks?status=&type=&limit=&cursor=`: the caller's tasks (admins: everyone's), newest
/// first, `{"tasks": [...], "next_cursor"}`.
#[utoipa::path(
    get,
    path = "/tasks",
    tag = "tasks",
    operation_id = "list_tasks",
    summary = "Your tasks (admins: everyone's), newest first",
    params(
        ("status" = Option<String>, Query, description = "Only tasks in this status.",
            pattern = "^(queued|running|succeeded|failed|dead|cancelled)$"),
        ("type" = Option<String>, Query, description = "Only tasks of this type."),
        ("limit" = Option<u32>, Query, description = "Page size; 50 when absent.", minimum = 1, maximum = 500),
        ("cursor" = Option<String>, Query, description = "The `next_cursor` of the previous page.",
            pattern = "^[+-]?[0-9]{1,18}$"),
        ("owner" = Option<String>, Query, description = "Admins: only this user's tasks (ignored for others)."),
    ),
    responses(
        (status = 200, description = "One page of tasks, newest first.", body = crate::openapi::TaskPageSchema,
            example = json!({"tasks": [{"id": "0190c3a2-6f1e-7cc1-9a51-2f4b1d7e9a10", "type": "sleep", "payload": {"ms": 500}, "status": "queued", "priority": "high",
                "attempts": 0, "max_attempts": 3, "result": null, "error": null, "progress": null, "owner": "0b7e3c9e-9a4e-4a43-9a57-3f1f2f0d2c11",
                "idempotency_key": null, "created_at": 1767225600000_i64, "started_at": null, "finished_at": null, "worker_id": null,
                "not_before": 1767225600000_i64, "lease_until": null}], "next_cursor": null})),
        (status = 400, description = "A bad query (`invalid_query`, `invalid_status`).", body = ErrorBody),
        (status = 503, description = "The task queue cannot be reached (`queue_unavailable`).", body = ErrorBody),
    )
)]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<TasksQuery>, QueryRejection>,
) -> Result<Json<queue::Page>, Error> {
    let Query(p) = query.map_err(|e| Error::InvalidQuery(e.body_text()))?;
    let status = p.status.as_deref().map(str::parse::<Status>).transpose()?;
    let limit = p.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(Error::InvalidQuery("limit is 1 to 500".into()));
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
        .await?;
    Ok(Json(page))
}

/// `GET /tasks/stats` (admin): tasks by status and queue depth by priority.
#[utoipa::path(
    get,
    path = "/tasks/stats",
    tag = "tasks",
    operation_id = "task_stats",
    summary = "Tasks by status, queue depth by priority",
    responses(
        (status = 200, description = "The queue's counts.", body = crate::openapi::TaskStatsSchema,
            example = json!({"by_status": {"queued": 2, "running": 1, "succeeded": 40, "failed": 0, "dead": 1, "cancelled": 0},
                "depth_by_priority": {"high": 0, "normal": 2, "low": 0}, "backend": "sqlite", "oldest_queued_ms": 120, "gateway_id": "gateway-1"})),
        (status = 503, description = "The task queue cannot be reached (`queue_unavailable`).", body = ErrorBody),
    )
)]
async fn stats(State(state): State<AppState>) -> Result<Json<Tagged<queue::Stats>>, Error> {
    let q = store(&state)?;
    Ok(Json(Tagged {
        inner: q.stats().await?,
        gateway_id: state.inner.instance.id.to_string(),
    }))
}

/// `GET /tasks/types`: the task types and their payload fields.
#[utoipa::path(
    get,
    path = "/tasks/types",
    tag = "tasks",
    operation_id = "task_types",
    summary = "The task types and their payload fields",
    responses((status = 200, description = "Every task type a worker runs.", body = crate::openapi::TaskTypesSchema)),
)]
async fn types() -> Json<TaskTypes<&'static [queue::types::TaskType]>> {
    Json(TaskTypes {
        types: queue::types::TYPES,
    })
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
#[utoipa::path(
    get,
    path = "/tasks/{id}/events",
    tag = "tasks",
    operation_id = "task_events",
    summary = "A task's changes as server-sent events",
    params(("id" = String, Path, description = "The task's id.", example = "0190c3a2-6f1e-7cc1-9a51-2f4b1d7e9a10")),
    responses(
        (status = 200, description = "`event: status` (the whole task) when its status or attempt changes, `event: progress` when only its progress does; the stream ends once the task is final.",
            content_type = "text/event-stream", body = String,
            example = "event: status\ndata: {\"id\":\"0190c3a2-6f1e-7cc1-9a51-2f4b1d7e9a10\",\"status\":\"running\"}\n\n"),
        (status = 404, description = "No task with this id is yours (`not_found`: the same for someone else's).", body = ErrorBody),
        (status = 503, description = "The task queue cannot be reached (`queue_unavailable`).", body = ErrorBody),
    )
)]
async fn events(
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
