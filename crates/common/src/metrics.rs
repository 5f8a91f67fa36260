//! Prometheus metrics: one process-wide recorder, rendered at `GET /metrics`.
//!
//! Every instance records through the `metrics` facade (`metrics::counter!`, `histogram!`); the
//! recorder is installed once per process, on first use, so that tests running several services in
//! one process share it (each series carries the `id` label of its instance).
//!
//! The exporter keeps every histogram sample until it is drained into the buckets, which only
//! rendering or its upkeep does; an installed recorder has no upkeep of its own. So the first use
//! also starts a thread that drains them every [`UPKEEP`]: without it a balancer nobody scrapes
//! kept about 16 bytes per request it served, for ever (66 MB per 4 million samples in
//! `tests/metrics_upkeep.rs` without the drain; about 2 GB an hour at 40k requests/s).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// How often histogram samples are drained into their buckets. Short, so that each drain is small
/// (at 80k requests/s, 80k samples: about a millisecond of work on whatever core it runs).
pub const UPKEEP: Duration = Duration::from_secs(1);

/// Drains done since the process started.
static UPKEEPS: AtomicU64 = AtomicU64::new(0);

/// Latency buckets in seconds: from 100 µs to 30 s, dense where web latencies live.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// The process's Prometheus handle, installing the recorder on first call.
///
/// If some other recorder is already installed (a test harness), a detached recorder is used so
/// that `/metrics` still answers; it then renders only what was recorded through it.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let handle = match builder.install_recorder() {
            Ok(h) => h,
            Err(_) => PrometheusBuilder::new().build_recorder().handle(),
        };
        let drained = handle.clone();
        // A plain thread: the recorder outlives every runtime of the process.
        let started = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP);
                    drained.run_upkeep();
                    UPKEEPS.fetch_add(1, Ordering::Release);
                }
            });
        if let Err(e) = started {
            tracing::warn!(error = %e, "no metrics upkeep thread: histogram samples wait for /metrics");
        }
        handle
    })
}

/// How many upkeep drains have run in this process.
pub fn upkeeps() -> u64 {
    UPKEEPS.load(Ordering::Acquire)
}

/// `GET /metrics` handler: the Prometheus text format.
pub async fn render() -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle().render(),
    )
}
