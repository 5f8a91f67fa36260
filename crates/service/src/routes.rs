//! The service's HTTP API: `GET /process`, `GET /ready` and the knobs (`GET`/`PUT /knobs`).

use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use rand::Rng;
use serde_json::{Value, json};
use tokio::time::Instant;

use api::wire::service::ProcessResponse;

use crate::{AppState, Error, work};

pub(crate) fn routes(state: AppState) -> Router {
    Router::new()
        .route("/ready", get(ready))
        .route("/process", get(process))
        .route("/knobs", get(knobs).put(set_knobs))
        .with_state(state)
}

/// `GET /knobs`: the wait and the share of injected failures now.
async fn knobs(State(state): State<AppState>) -> Json<crate::KnobValues> {
    Json(state.knobs.values())
}

/// `PUT /knobs` `{"work_ms": 200, "failure_rate": 0.5}` (either or both): changes this instance's
/// knobs at once, for the requests that start from now on. Like every write to an internal role,
/// it needs the service credential when the instance is bound beyond loopback.
async fn set_knobs(
    State(state): State<AppState>,
    common::Json(change): common::Json<crate::KnobChange>,
) -> Result<Json<crate::KnobValues>, Error> {
    let values = state.knobs.apply(change).map_err(Error::InvalidKnobs)?;
    tracing::warn!(id = %state.instance.id, work_ms = values.work_ms, failure_rate = values.failure_rate, "knobs changed");
    Ok(Json(values))
}

/// `GET /ready`: the service depends on nothing, so it is ready whenever it answers.
async fn ready() -> Json<Value> {
    Json(json!({"status": "ready"}))
}

/// Counts a request in `scalelab_service_in_flight` (waiting or working) for as long as it lives,
/// including when the client gives up and the handler is dropped mid-way.
struct InFlight(metrics::Gauge);

impl InFlight {
    fn enter(id: &str) -> Self {
        let gauge = metrics::gauge!("scalelab_service_in_flight", "id" => id.to_string());
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// `GET /process`: waits for a slot, then does the simulated wait and the CPU work in it.
async fn process(State(state): State<AppState>) -> Result<Json<ProcessResponse>, Error> {
    // tokio's clock, so that tests under paused time measure exactly what they advanced.
    let start = Instant::now();
    let _in_flight = InFlight::enter(&state.instance.id);
    let config = &state.config;

    let queue_timeout = Duration::from_millis(config.queue_timeout_ms);
    let permit = tokio::time::timeout(queue_timeout, state.permits.acquire())
        .await
        .map_err(|_| Error::Overloaded {
            waited_ms: config.queue_timeout_ms,
        })?
        // The semaphore is never closed; if it ever were, no request could run.
        .map_err(|e| Error::Internal(e.to_string()))?;

    let knobs = state.knobs.values();
    if knobs.work_ms > 0 {
        tokio::time::sleep(Duration::from_millis(knobs.work_ms)).await;
    }
    if knobs.failure_rate > 0.0 && rand::thread_rng().gen_bool(knobs.failure_rate.min(1.0)) {
        return Err(Error::Injected);
    }
    if config.cpu_iterations > 0 {
        // Off the async workers: a long loop there would stall every other request of this
        // instance, /health included.
        let iterations = config.cpu_iterations;
        tokio::task::spawn_blocking(move || work::burn(iterations))
            .await
            .map_err(|e| Error::Internal(e.to_string()))?;
    }
    drop(permit);

    Ok(Json(ProcessResponse {
        message: "Business logic executed".to_string(),
        service_id: state.instance.id.to_string(),
        processing_ms: start.elapsed().as_secs_f64() * 1000.0,
    }))
}
