//! Task routes: submission (checked against `queue::types` before anything is stored), status,
//! listing, cancellation, re-queueing, live events, and the lab's `/longtask`, `/add` and
//! `/result/{id}` calls, all on the queue store shared with the workers.
//!
//! Owners see and cancel only their own tasks; anyone else's id answers `404`, exactly like an
//! unknown one, so that ids cannot be probed. Admins see everything; who may re-queue dead tasks
//! and read the queue's counts is the route table's (`policy.rs`).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use common::{ApiError, Json};
use futures::Stream;
use queue::{ListQuery, NewTask, Priority, Queue, Status, Task};
use serde_json::{Map, Value};

use api::wire::gateway::{
    AddQueued, AddRequest, SubmitTask, Tagged, TaskQueued, TaskResult, TaskTypes, TasksQuery,
};

use crate::policy::{ADMIN, Endpoint};
use crate::tokens::Caller;
use crate::{AppState, Error};
/// The header that makes a retried submission return the first task.
const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Longest idempotency key, in bytes.
const MAX_KEY_BYTES: usize = 200;
/// How often the events stream reads the task.
const EVENTS_POLL: Duration = Duration::from_millis(200);

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

/// `POST /tasks` `{"type","payload","priority"?,"max_attempts"?}` → `202` with the task.
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
async fn longtask(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
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
async fn get_task(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Task>, Error> {
    let q = store(&state)?;
    Ok(Json(visible(&*q, &caller, &id).await?))
}

/// `DELETE /tasks/{id}`: cancels a task that waits to run; `409` when running or finished.
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
async fn stats(State(state): State<AppState>) -> Result<Json<Tagged<queue::Stats>>, Error> {
    let q = store(&state)?;
    Ok(Json(Tagged {
        inner: q.stats().await?,
        gateway_id: state.inner.instance.id.to_string(),
    }))
}

/// `GET /tasks/types`: the task types and their payload fields.
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
