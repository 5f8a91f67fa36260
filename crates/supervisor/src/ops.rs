//! Two control-API calls that act on the system rather than on the fleet, for the dashboard's
//! buttons and for scripts: `POST /cache/flush` (every shared cache instance empties) and
//! `POST /load` (a short run of the built-in generator against a route through the balancer,
//! one at a time, its summary an event).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use api::wire::control::LoadRequest;
use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::control::error;
use crate::fleet::{Fleet, State as InstanceState};
use crate::guard::AdminGuard;

/// What these calls share.
#[derive(Clone)]
pub(crate) struct Ops {
    pub(crate) fleet: Fleet,
    pub(crate) guard: AdminGuard,
    /// True while a load runs: one at a time, so that two clicks do not double it.
    pub(crate) loading: Arc<AtomicBool>,
}

fn active(fleet: &Fleet, role: &str) -> Vec<(String, String)> {
    fleet
        .members(role)
        .into_iter()
        .filter(|(_, _, s)| *s == InstanceState::Active)
        .map(|(id, url, _)| (id, url))
        .collect()
}

/// `POST /cache/flush`: `POST /cache/flush` at every active cache instance.
pub(crate) async fn flush(State(ops): State<Ops>) -> Response {
    let caches = active(&ops.fleet, "cache");
    if caches.is_empty() {
        return error(
            StatusCode::CONFLICT,
            "no_cache_service",
            "no shared cache service runs (the gateways use a local or Redis cache): nothing to flush here",
        );
    }
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default();
    let mut flushed = serde_json::Map::new();
    for (id, url) in caches {
        let mut call = http.post(format!("{url}/cache/flush"));
        if let Some(t) = ops.guard.service_token() {
            call = call.header(api::headers::SERVICE_TOKEN, t);
        }
        let answer = match call.send().await {
            Ok(r) if r.status().is_success() => r
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|v| v["flushed"].as_u64()),
            _ => None,
        };
        let Some(n) = answer else {
            return error(
                StatusCode::BAD_GATEWAY,
                "flush_failed",
                format!("{id} did not flush"),
            );
        };
        ops.fleet.event(
            "flush",
            Some(&id),
            format!("{id} flushed: {n} entries dropped"),
        );
        flushed.insert(id, n.into());
    }
    Json(json!({"flushed": flushed})).into_response()
}

/// `POST /load`: starts the run and answers at once (`202`); the summary is a `load` event. With
/// an HTTP Basic credential the generator logs in with it first and sends the token.
pub(crate) async fn load(
    State(ops): State<Ops>,
    headers: HeaderMap,
    body: Result<Json<LoadRequest>, JsonRejection>,
) -> Response {
    let Ok(Json(req)) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "the body is {\"route\": \"/data\", \"seconds\": 10, \"connections\": 16}",
        );
    };
    if let Some((code, why)) = req.problem() {
        return error(StatusCode::BAD_REQUEST, code, why);
    }
    let Some(entry) = active(&ops.fleet, "lb")
        .into_iter()
        .chain(active(&ops.fleet, "gateway"))
        .next()
    else {
        return error(
            StatusCode::CONFLICT,
            "no_entry",
            "no balancer or gateway is active to send the load to",
        );
    };
    let login = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| api::admin::basic_credential(h).ok())
        .map(|(u, p)| format!("{u}:{p}"));
    if ops.loading.swap(true, Ordering::AcqRel) {
        return error(
            StatusCode::CONFLICT,
            "load_running",
            "a load is already running; wait for its summary",
        );
    }
    let url = format!("{}{}", entry.1, req.route);
    let args = bench::BenchArgs {
        command: None,
        urls: vec![url.clone()],
        connections: req.connections,
        rate: None,
        duration: Some(Duration::from_secs(req.seconds)),
        requests: None,
        method: "GET".into(),
        headers: Vec::new(),
        body: None,
        body_file: None,
        token: None,
        login,
        timeout: Duration::from_secs(10),
        count_field: None,
        progress: false,
        json: None,
        report: None,
    };
    let what = format!(
        "load on {} for {} s with {} connections",
        req.route, req.seconds, req.connections
    );
    ops.fleet.event("load", None, format!("{what} started"));
    let fleet = ops.fleet.clone();
    let loading = ops.loading.clone();
    tokio::spawn(async move {
        let message = match run(args).await {
            Ok(r) => format!(
                "{what}: {} requests answered ({:.0} req/s), p50 {:.1} ms, p99 {:.1} ms, {} failed, statuses {}",
                r.requests.answered,
                r.rps,
                r.latency.p50_ms,
                r.latency.p99_ms,
                r.requests.failed,
                r.status_codes
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Err(e) => format!("{what} failed: {e}"),
        };
        fleet.event("load", None, message);
        loading.store(false, Ordering::Release);
    });
    (
        StatusCode::ACCEPTED,
        Json(json!({"started": url, "seconds": req.seconds, "connections": req.connections})),
    )
        .into_response()
}

async fn run(args: bench::BenchArgs) -> Result<bench::Report, bench::Error> {
    let plan = bench::plan_from_args(&args).await?;
    bench::execute(plan, bench::config_from_args(&args), std::future::pending()).await
}
