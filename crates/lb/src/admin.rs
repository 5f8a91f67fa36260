//! The admin routes under `/_lb/`: health of the balancer itself, per-backend stats, metrics.

use axum::extract::State;
use axum::response::IntoResponse;
use serde_json::json;

use crate::AppState;

/// `GET /_lb/health`: the balancer itself is up (whatever its backends are doing).
pub async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let healthy = state
        .pool
        .backends()
        .iter()
        .filter(|b| b.is_healthy())
        .count();
    axum::Json(json!({
        "status": "ok",
        "id": &*state.instance.id,
        "role": "lb",
        "healthy_backends": healthy,
    }))
}

/// `GET /_lb/stats`: each backend's state (`active`, `down`, `ejected`, `draining`), in-flight
/// count, requests, errors, ejections and latency; the retry budget's granted and refused retries.
pub async fn stats(State(state): State<AppState>) -> impl IntoResponse {
    let backends: Vec<_> = state.pool.backends().iter().map(|b| b.stats()).collect();
    let requests: u64 = backends.iter().map(|b| b.requests).sum();
    let errors: u64 = backends.iter().map(|b| b.errors).sum();
    axum::Json(json!({
        "id": &*state.instance.id,
        "strategy": state.pool.strategy(),
        "requests": requests,
        "errors": errors,
        "retries": {
            "granted": state.pool.budget().granted(),
            "refused": state.pool.budget().refused(),
        },
        "backends": backends,
    }))
}

/// `GET /_lb/metrics`: Prometheus text, with per-backend gauges refreshed at scrape time.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    for b in state.pool.backends().iter() {
        let s = b.stats();
        metrics::gauge!("scalelab_lb_backend_healthy", "backend" => s.url.clone())
            .set(if s.healthy { 1.0 } else { 0.0 });
        metrics::gauge!("scalelab_lb_backend_in_flight", "backend" => s.url.clone())
            .set(s.in_flight as f64);
        metrics::gauge!("scalelab_lb_backend_ejected", "backend" => s.url.clone())
            .set(if s.state == "ejected" { 1.0 } else { 0.0 });
        metrics::gauge!("scalelab_lb_backend_rtt_ewma_seconds", "backend" => s.url.clone())
            .set(s.rtt_ewma_ms / 1000.0);
    }
    common::metrics::render().await
}
