//! The control API of a running `scalelab up`: HTTP + JSON on loopback (what `scalelab status`,
//! `scale`, `drain` and `kill` call, and what the pools read their membership from).
//!
//! | route | what |
//! |---|---|
//! | `GET /instances` | every instance: role, id, url, pid, state, uptime |
//! | `GET /members/{role}` | one role's instances and states, as pools read them |
//! | `POST /scale` `{"gateway": 4, "service": 2}` | start or drain instances until each role has its count |
//! | `POST /instances/{id}/drain` | out of its pools now, stopped after the drain delay |
//! | `POST /instances/{id}/kill` | SIGKILL (the supervisor restarts it) |
//! | `GET /events[?after=MS]` | what happened: starts, drains, stops, kills, scale requests, autoscaler decisions |
//! | `GET /metrics` | Prometheus text: instances per role and state, autoscaler desired/current per role |
//! | `GET /events/stream` | the same as server-sent events, as they happen (for the dashboard) |
//! | `GET /autoscale` | each autoscaled role's policy and latest decision, with its arithmetic |
//! | `POST /cache/flush` | every shared cache instance empties (`ops.rs`) |
//! | `POST /load` `{"route": "/data", "seconds": 10, "connections": 16}` | a short run of the built-in generator through the balancer; its summary is a `load` event |
//!
//! On loopback (the default) whoever can reach it can already signal the processes; bound to
//! another address (`scalelab up --control-addr`), every `POST` needs the admin credential
//! (`guard.rs`). Errors are the one JSON shape `{"error", "message"}`.

use std::collections::BTreeMap;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use api::wire::control::{Member, Members};

use crate::fleet::Fleet;
use crate::guard::AdminGuard;

pub(crate) fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"error": code, "message": message.into()})),
    )
        .into_response()
}

/// Refuses a call that changes the fleet without the admin credential, when the guard requires it.
async fn admin_only(
    State((fleet, guard)): State<(Fleet, AdminGuard)>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if req.method() != axum::http::Method::GET {
        let header = req
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if let Err(why) = guard.check(&fleet, header).await {
            let mut resp = error(StatusCode::UNAUTHORIZED, "unauthorized", why);
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Basic realm=\"scalelab control\""),
            );
            return resp;
        }
    }
    next.run(req).await
}

/// The routes over `fleet`; calls that change it pass `guard` first.
pub fn router(fleet: Fleet, guard: AdminGuard) -> Router {
    let admin = axum::middleware::from_fn_with_state((fleet.clone(), guard.clone()), admin_only);
    let ops = crate::ops::Ops {
        fleet: fleet.clone(),
        guard,
        loading: std::sync::Arc::default(),
    };
    Router::new()
        .route(
            "/cache/flush",
            post(crate::ops::flush).with_state(ops.clone()),
        )
        .route("/load", post(crate::ops::load).with_state(ops))
        .route("/instances", get(instances))
        .route("/members/{role}", get(members))
        .route("/scale", post(scale))
        .route("/instances/{id}/drain", post(drain))
        .route("/instances/{id}/kill", post(kill))
        .route("/events", get(events))
        .route("/events/stream", get(stream))
        .route("/autoscale", get(autoscale))
        .route("/metrics", get(metrics))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .with_state(fleet)
        .layer(admin)
}

async fn instances(State(fleet): State<Fleet>) -> Response {
    Json(json!({"instances": fleet.status()})).into_response()
}

async fn members(State(fleet): State<Fleet>, Path(role): Path<String>) -> Json<Members> {
    let members = fleet
        .members(&role)
        .into_iter()
        .map(|(id, url, state)| Member {
            id,
            url,
            state: state.as_str().into(),
        })
        .collect();
    Json(Members { role, members })
}

async fn scale(
    State(fleet): State<Fleet>,
    body: Result<Json<BTreeMap<String, usize>>, JsonRejection>,
) -> Response {
    let Ok(Json(wanted)) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "the body is a JSON object of role counts, like {\"gateway\": 4}",
        );
    };
    if wanted.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "name at least one role",
        );
    }
    match fleet.scale(&wanted) {
        Ok(done) => Json(json!({"changes": done})).into_response(),
        Err(why) => {
            fleet.event("refused", None, format!("scale refused: {why}"));
            error(StatusCode::BAD_REQUEST, "refused", why)
        }
    }
}

async fn drain(State(fleet): State<Fleet>, Path(id): Path<String>) -> Response {
    match fleet.drain(&id) {
        Ok(()) => Json(json!({"draining": id})).into_response(),
        Err(why) if why.starts_with("no instance") => {
            error(StatusCode::NOT_FOUND, "not_found", why)
        }
        Err(why) => error(StatusCode::BAD_REQUEST, "refused", why),
    }
}

async fn kill(State(fleet): State<Fleet>, Path(id): Path<String>) -> Response {
    match fleet.kill(&id) {
        Ok(pid) => Json(json!({"killed": id, "pid": pid})).into_response(),
        Err(why) if why.starts_with("no instance") => {
            error(StatusCode::NOT_FOUND, "not_found", why)
        }
        Err(why) => error(StatusCode::CONFLICT, "refused", why),
    }
}

async fn autoscale(State(fleet): State<Fleet>) -> Response {
    let policies: Vec<_> = fleet
        .autoscaled()
        .into_iter()
        .map(|(role, p)| json!({"role": role, "profile": p.profile_name(), "policy": p}))
        .collect();
    Json(json!({"policies": policies, "decisions": fleet.decisions()})).into_response()
}

/// `scalelab_instances{role,state}` and, per autoscaled role, `scalelab_autoscale_desired` and
/// `scalelab_autoscale_current` (written here: the supervisor has no metrics registry of its own).
async fn metrics(State(fleet): State<Fleet>) -> Response {
    let mut counts: BTreeMap<(String, &'static str), usize> = BTreeMap::new();
    for i in fleet.status() {
        *counts.entry((i.role, i.state.as_str())).or_default() += 1;
    }
    let mut text = String::from(
        "# HELP scalelab_instances Instances of each role by state.\n# TYPE scalelab_instances gauge\n",
    );
    for ((role, state), n) in counts {
        text.push_str(&format!(
            "scalelab_instances{{role=\"{role}\",state=\"{state}\"}} {n}\n"
        ));
    }
    let decisions = fleet.decisions();
    text.push_str("# HELP scalelab_autoscale_desired The autoscaler's latest desired count.\n# TYPE scalelab_autoscale_desired gauge\n");
    for d in &decisions {
        text.push_str(&format!(
            "scalelab_autoscale_desired{{role=\"{}\"}} {}\n",
            d.role, d.desired
        ));
    }
    text.push_str("# HELP scalelab_autoscale_current The count the autoscaler saw.\n# TYPE scalelab_autoscale_current gauge\n");
    for d in &decisions {
        text.push_str(&format!(
            "scalelab_autoscale_current{{role=\"{}\"}} {}\n",
            d.role, d.current
        ));
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    )
        .into_response()
}

/// `GET /events/stream`: each event as an SSE `event: <kind>` with the event as JSON data.
async fn stream(State(fleet): State<Fleet>) -> Response {
    use axum::response::sse::{Event as Sse, KeepAlive};
    let rx = fleet.subscribe();
    let events = futures::stream::unfold(rx, |mut rx| async move {
        let sse = match rx.recv().await {
            Ok(e) => Sse::default()
                .event(e.kind.clone())
                .json_data(&e)
                .unwrap_or_else(|_| Sse::default().data(e.message.clone())),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => Sse::default()
                .event("lagged")
                .data(format!("{n} events missed")),
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok::<_, std::convert::Infallible>(sse), rx))
    });
    axum::response::sse::Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[derive(Deserialize)]
struct After {
    #[serde(default)]
    after: u64,
}

async fn events(
    State(fleet): State<Fleet>,
    q: Result<Query<After>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(After { after })) = q else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "after is milliseconds since the epoch",
        );
    };
    Json(json!({"events": fleet.events(after)})).into_response()
}
