//! The worker: runs queued tasks. Each instance has `concurrency` slots; a slot claims the most
//! urgent task under a lease, runs its [`Handler`], renews the lease by heartbeat while it runs
//! (storing the handler's latest progress with it), and completes or fails the task, which the
//! queue acks in the same statement that stores the result. On shutdown the slots stop claiming,
//! give running tasks `shutdown_grace_ms` to finish, release the rest back to the queue, and end.
//!
//! [`Config`] is the `[worker]` section; [`AppState::new`] opens the queue; [`router`] serves
//! `/health`, `/ready` and `/metrics` (queue depth by priority, wait and run time histograms,
//! retries, dead tasks, tasks in flight); [`serve`] runs the HTTP side and the run loop
//! (`run.rs`). The handlers are in `handlers.rs`; the Casitas preset's reports in `reports.rs`.

mod handlers;
mod reports;
mod run;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use api::client::{DbClient, JsonClient, RentalClient};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use common::ApiError;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use handlers::{Context, Handler, LongTask, Registry};

/// The `[worker]` section of the topology file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Tasks this instance runs at once (its slots).
    pub concurrency: usize,
    /// How long a claimed task stays reserved without a heartbeat, in milliseconds. A worker
    /// that dies loses its tasks to another worker this long after its last heartbeat.
    pub lease_ms: u64,
    /// How often a running task's lease is renewed, in milliseconds (well under `lease_ms`).
    pub heartbeat_ms: u64,
    /// How long an idle slot waits before asking the queue again, in milliseconds.
    pub poll_ms: u64,
    /// Tasks a slot claims at once (one statement) and holds in its prefetch buffer, running
    /// them one after another; their results are stored in batches of up to as many. Each is
    /// leased on its own and its lease renewed while it waits. 1: one task at a time. A worker
    /// killed holds up to `concurrency * prefetch` tasks, which run again once their leases lapse.
    /// On RabbitMQ the worker's consumer prefetches twice that many deliveries (those of its held
    /// tasks, and as many again read ahead; docs/queue.md).
    pub prefetch: usize,
    /// At shutdown, how long running tasks get to finish before they are released back to the
    /// queue (to run elsewhere), in milliseconds. Keep it under `scalelab up`'s stop grace (10 s).
    pub shutdown_grace_ms: u64,
    /// How long the lab's generic `longtask` works, in milliseconds (simulated work).
    pub longtask_ms: u64,
    /// How often the queue gauges of `/metrics` (depth by priority, tasks by status) are
    /// refreshed, in milliseconds.
    pub stats_interval_ms: u64,
    /// Base URL of the `db` service, read by `report` tasks; filled from the topology.
    pub db_url: String,
    /// Base URL of the Casitas preset's `finances` service, read by `finance_report` tasks;
    /// filled from the topology (empty without the preset: those tasks fail, saying so).
    pub finances_url: String,
    /// Base URL of the Casitas preset's `legal` service, read by `legal_report` tasks; filled
    /// from the topology.
    pub legal_url: String,
    /// The task store, shared with the gateways; set by `scalelab` from `[queue]`.
    #[serde(skip)]
    pub queue: queue::Config,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            concurrency: 4,
            lease_ms: 15_000,
            heartbeat_ms: 3_000,
            poll_ms: 200,
            prefetch: 1,
            shutdown_grace_ms: 5_000,
            stats_interval_ms: 2_000,
            longtask_ms: 3_000,
            db_url: String::new(),
            finances_url: String::new(),
            legal_url: String::new(),
            queue: queue::Config::default(),
        }
    }
}

impl Config {
    /// Every setting the worker cannot honour, as `field: problem` lines (empty when the section
    /// is valid); the shared `[queue]` section is checked by `queue::Config::validate`.
    /// `scalelab up` reports them before starting anything; [`AppState::new`] refuses to start on
    /// any of them.
    pub fn validate(&self) -> Vec<String> {
        let mut p = common::validate::Problems::new();
        p.check(
            (1..=1024).contains(&self.concurrency),
            "concurrency",
            "must be 1 to 1024",
        );
        p.check(
            self.heartbeat_ms > 0 && self.heartbeat_ms.saturating_mul(2) <= self.lease_ms,
            "heartbeat_ms",
            format_args!(
                "must be at least 1 and at most half of lease_ms ({}), so that one late \
                 heartbeat does not lose the lease",
                self.lease_ms
            ),
        );
        p.check(self.poll_ms > 0, "poll_ms", "must be at least 1");
        p.check(
            (1..=1000).contains(&self.prefetch),
            "prefetch",
            "must be 1 to 1000",
        );
        p.check(
            self.stats_interval_ms > 0,
            "stats_interval_ms",
            "must be at least 1",
        );
        for (field, url) in [
            ("db_url", &self.db_url),
            ("finances_url", &self.finances_url),
            ("legal_url", &self.legal_url),
        ] {
            if !url.is_empty() {
                p.url(field, url, common::validate::http_url);
            }
        }
        p.into_vec()
    }

    /// [`Config::validate`] as the error start-up fails with.
    fn check(&self) -> Result<(), Error> {
        match common::validate::joined(&self.validate()) {
            Some(problems) => Err(Error::Config(problems)),
            None => Ok(()),
        }
    }
}

/// Everything that can go wrong in a worker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The task store failed.
    #[error(transparent)]
    Queue(#[from] queue::Error),
    /// The configuration cannot be honoured; reported at start.
    #[error("invalid worker configuration: {0}")]
    Config(String),
    /// The listener failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        match self {
            Error::Queue(e) => e.to_api_error(),
            e => ApiError::internal(e),
        }
        .into_response()
    }
}

/// What the run loop and the routes share; cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Lease, heartbeat, polling and grace settings.
    config: Config,
    /// Names the worker ids of the slots (`worker-1/3`) and labels the metrics.
    instance: common::Instance,
    /// The task store.
    queue: Arc<dyn queue::Queue>,
    /// The code of each task type.
    registry: Registry,
    /// The db service, for `report`.
    db: Option<DbClient>,
}

impl AppState {
    /// Validates `config`, opens the queue it names and checks that every task type the gateways
    /// accept has a handler here.
    pub async fn new(config: Config, instance: common::Instance) -> Result<AppState, Error> {
        // Checked before the queue is opened, so that a bad setting does not create a file.
        config.check()?;
        let queue = queue::open(&config.queue).await?;
        let mut registry = Registry::builtin();
        registry.register(std::sync::Arc::new(handlers::LongTask {
            ms: config.longtask_ms,
        }));
        let rental = |service: &'static str, url: &str| {
            (!url.is_empty())
                .then(|| RentalClient(JsonClient::new(service, url, Duration::from_secs(10))))
        };
        registry.register(Arc::new(reports::FinanceReportTask {
            finances: rental("finances", &config.finances_url),
        }));
        registry.register(Arc::new(reports::LegalReportTask {
            legal: rental("legal", &config.legal_url),
        }));
        Self::with_queue(config, instance, queue, registry)
    }

    /// Like [`AppState::new`] with a queue and handlers given by the caller.
    pub fn with_queue(
        config: Config,
        instance: common::Instance,
        queue: Arc<dyn queue::Queue>,
        registry: Registry,
    ) -> Result<AppState, Error> {
        config.check()?;
        let missing = registry.missing();
        if !missing.is_empty() {
            return Err(Error::Config(format!(
                "no handler for the task types {missing:?}"
            )));
        }
        let db = (!config.db_url.is_empty()).then(|| {
            DbClient(JsonClient::new(
                "db",
                config.db_url.clone(),
                Duration::from_secs(10),
            ))
        });
        Ok(AppState {
            inner: Arc::new(Inner {
                config,
                instance,
                queue,
                registry,
                db,
            }),
        })
    }
}

/// `/health`, `/metrics` (from `common::stack`) and `/ready` (the queue answers).
pub fn router(state: AppState) -> Router {
    let instance = state.inner.instance.clone();
    let routes = Router::new()
        .route("/ready", get(ready))
        .route("/task/{id}", get(task))
        .route("/tasks/{id}", get(task))
        .with_state(state);
    common::stack::wrap(routes, &instance, common::stack::Limits::default())
}

/// `GET /task/{id}`, `GET /tasks/{id}`: a task's state, as the gateway shows it (the lab's scripts
/// poll the worker's own port). Internal like the rest of the worker's port: the id, a UUIDv7 with
/// 74 random bits, is what a caller must know.
async fn task(
    State(state): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<axum::Json<queue::Task>, Error> {
    match state.inner.queue.get(&id).await? {
        Some(t) => Ok(axum::Json(t)),
        None => Err(Error::Queue(queue::Error::NotFound(id))),
    }
}

async fn ready(State(state): State<AppState>) -> Result<axum::Json<Value>, Response> {
    match state.inner.queue.ping().await {
        Ok(()) => Ok(axum::Json(json!({
            "status": "ready",
            "queue": state.inner.queue.backend(),
            "concurrency": state.inner.config.concurrency,
        }))),
        Err(e) => {
            tracing::debug!(error = %e, "ready: the queue does not answer");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "the task queue does not answer",
            )
            .into_response())
        }
    }
}

/// Opens the queue, then runs the slots and serves `/health` and `/metrics` on `listener` until
/// `shutdown` resolves; then stops claiming, lets running tasks finish (or releases them after
/// `shutdown_grace_ms`) and returns.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    instance: common::Instance,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let state = AppState::new(config, instance).await?;
    tracing::info!(
        id = %state.inner.instance.id,
        queue = state.inner.queue.backend(),
        concurrency = state.inner.config.concurrency,
        "worker running"
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let runner = tokio::spawn(run::run(state.clone(), stop_rx));
    let http = common::serve(listener, router(state), async move {
        shutdown.await;
        tracing::info!("shutting down: no new tasks; finishing or releasing the running ones");
        let _ = stop_tx.send(true);
    });
    http.await?;
    if let Err(e) = runner.await {
        tracing::error!(error = %e, "the run loop ended abnormally");
    }
    Ok(())
}

/// Runs the slots without an HTTP side until `stop` turns true (for tests and embedding).
pub async fn run(state: AppState, stop: watch::Receiver<bool>) {
    run::run(state, stop).await
}
