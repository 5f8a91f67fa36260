//! The dashboard's routes: the page and its assets, the stream, the JSON a page without SSE polls,
//! and the controls (`controls.rs`).
//!
//! | route | what |
//! |---|---|
//! | `GET /` | the page (`page/index.html`, `app.js`, `style.css` embedded) |
//! | `GET /api/stream` | SSE: `history` once (points and events kept), then a `frame` per round |
//! | `GET /api/frame` | the latest frame (what a `frame` event carries) |
//! | `GET /api/history` | the kept points and events |
//! | `GET /api/events?after=MS` | events after a time |
//! | `GET /api/info` | whether controls are available, the scrape period |
//! | `POST /api/session`, `/api/scale`, `/api/instances/{id}/drain|kill`, `/api/cache/flush`, `/api/load` | controls (admin) |

use std::convert::Infallible;

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event as Sse, KeepAlive};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::AppState;
use crate::controls;

const INDEX: &str = include_str!("page/index.html");
const APP: &str = include_str!("page/app.js");
const STYLE: &str = include_str!("page/style.css");

/// The one JSON error shape, as every role answers it.
pub(crate) fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    common::ApiError::new(status, code, message).into_response()
}

pub(crate) fn routes(state: AppState) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP) }),
        )
        .route(
            "/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route("/api/stream", get(stream))
        .route("/api/frame", get(frame))
        .route("/api/history", get(history))
        .route("/api/events", get(events))
        .route("/api/info", get(info))
        .route("/api/session", post(controls::session))
        .route("/api/scale", post(controls::scale))
        .route("/api/instances/{id}/{action}", post(controls::instance))
        .route("/api/cache/flush", post(controls::flush))
        .route("/api/load", post(controls::load))
        .with_state(state)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn stream(State(state): State<AppState>) -> Response {
    let history = Sse::default()
        .event("history")
        .json_data(state.hub.history())
        .unwrap_or_else(|_| Sse::default().event("history").data("{}"));
    let rx = state.hub.subscribe();
    let closing = state.closing.clone();
    let frames = futures::stream::unfold((rx, closing), |(mut rx, mut closing)| async move {
        loop {
            let next = tokio::select! {
                next = rx.recv() => next,
                _ = closing.wait_for(|c| *c) => return None,
            };
            match next {
                Ok(update) => {
                    let sse = Sse::default().event("frame").data(&*update.frame);
                    return Some((Ok::<_, Infallible>(sse), (rx, closing)));
                }
                // A slow reader skips frames; the next one is whole.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let first = futures::stream::once(async move { Ok::<_, Infallible>(history) });
    axum::response::sse::Sse::new(futures::StreamExt::chain(first, frames))
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn frame(State(state): State<AppState>) -> Response {
    match state.hub.latest() {
        Some(json) => (
            [(header::CONTENT_TYPE, "application/json")],
            json.to_string(),
        )
            .into_response(),
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the first round of scrapes has not finished yet",
        ),
    }
}

async fn history(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(state.hub.history())
}

#[derive(Deserialize)]
struct After {
    #[serde(default)]
    after: u64,
}

async fn events(
    State(state): State<AppState>,
    q: Result<Query<After>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(After { after })) = q else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "after is milliseconds since the Unix epoch",
        );
    };
    Json(json!({"events": state.hub.events_after(after)})).into_response()
}

async fn info(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({
        "id": state.instance.id.to_string(),
        "controls": state.control_url.is_some(),
        "scrape_ms": state.scrape_ms,
    }))
}
