//! The business microservice: `GET /process` does a fixed amount of waiting and real CPU work, at
//! most [`Config::max_concurrency`] requests at a time, so that one instance has a bounded
//! throughput and adding instances behind the gateways visibly raises it.
//!
//! [`Config`] is the role's section of the topology file; [`AppState::new`] builds the semaphore
//! that bounds concurrency and the knobs (`GET`/`PUT /knobs`: the wait and a share of injected
//! failures, changed while it runs, so that one instance can be made slow and failing on
//! purpose); [`router`] holds the routes (`routes.rs`) inside the standard stack of
//! `common`; [`serve`] runs it on a socket. Start reading at `routes.rs`; the CPU work is in
//! `work.rs`.

mod error;
mod routes;
#[cfg(test)]
mod tests;
mod work;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub use error::Error;

/// The `[service]` section of the topology file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Simulated wait per request, in milliseconds, like a call to something slow; it holds one
    /// of the `max_concurrency` slots.
    pub work_ms: u64,
    /// Rounds of real CPU work (a cheap hash over a small buffer) per request, run on the
    /// blocking thread pool; 0 for none.
    pub cpu_iterations: u64,
    /// Requests processed at once by this instance; the others wait for a free slot. This bounds
    /// one instance's throughput to about `max_concurrency / (work_ms + cpu time)`.
    pub max_concurrency: usize,
    /// Longest a request waits for a free slot, in milliseconds, before it is answered
    /// `503 overloaded` with `Retry-After: 1`; 0 refuses at once when every slot is busy.
    pub queue_timeout_ms: u64,
    /// Share of `/process` requests answered `500 injected_failure` after their wait (0.0 to
    /// 1.0), to show what the gateways' fuses do with a sick instance; `PUT /knobs` changes it
    /// on one running instance.
    pub failure_rate: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            work_ms: 20,
            cpu_iterations: 20_000,
            max_concurrency: 4,
            queue_timeout_ms: 5000,
            failure_rate: 0.0,
        }
    }
}

impl Config {
    /// Every setting the service cannot honour, as `field: problem` lines (empty when the section
    /// is valid). `scalelab up` reports them before starting anything; [`AppState::new`] refuses
    /// to start on any of them.
    pub fn validate(&self) -> Vec<String> {
        let mut p = common::validate::Problems::new();
        p.check(
            (1..=Semaphore::MAX_PERMITS).contains(&self.max_concurrency),
            "max_concurrency",
            format_args!("must be between 1 and {}", Semaphore::MAX_PERMITS),
        );
        p.check(
            (0.0..=1.0).contains(&self.failure_rate),
            "failure_rate",
            "must be between 0.0 and 1.0",
        );
        p.into_vec()
    }
}

/// What `PUT /knobs` may change on a running instance, and what `GET /knobs` shows.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnobValues {
    /// The simulated wait per request, milliseconds (at most 600000).
    pub work_ms: u64,
    /// Share of requests answered `500 injected_failure`, 0.0 to 1.0.
    pub failure_rate: f64,
}

/// A `PUT /knobs` body: any of the knobs; the others keep their values.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnobChange {
    /// New wait per request, milliseconds.
    pub work_ms: Option<u64>,
    /// New share of injected failures.
    pub failure_rate: Option<f64>,
}

/// The knobs of one running instance, read by every request (atomics: no lock).
#[derive(Debug)]
pub(crate) struct Knobs {
    work_ms: AtomicU64,
    /// An `f64` as bits.
    failure_rate: AtomicU64,
}

impl Knobs {
    fn new(config: &Config) -> Self {
        Self {
            work_ms: AtomicU64::new(config.work_ms),
            failure_rate: AtomicU64::new(config.failure_rate.to_bits()),
        }
    }

    /// The values now.
    pub(crate) fn values(&self) -> KnobValues {
        KnobValues {
            work_ms: self.work_ms.load(Ordering::Relaxed),
            failure_rate: f64::from_bits(self.failure_rate.load(Ordering::Relaxed)),
        }
    }

    /// Applies `change` if every value in it is acceptable; else says what is wrong.
    pub(crate) fn apply(&self, change: KnobChange) -> Result<KnobValues, String> {
        if let Some(rate) = change.failure_rate
            && !(0.0..=1.0).contains(&rate)
        {
            return Err(format!("failure_rate: {rate} is not between 0.0 and 1.0"));
        }
        if let Some(ms) = change.work_ms
            && ms > 600_000
        {
            return Err(format!("work_ms: {ms} is more than 600000"));
        }
        if let Some(ms) = change.work_ms {
            self.work_ms.store(ms, Ordering::Relaxed);
        }
        if let Some(rate) = change.failure_rate {
            self.failure_rate.store(rate.to_bits(), Ordering::Relaxed);
        }
        Ok(self.values())
    }
}

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The amounts of work and the queue timeout, read on every request.
    config: Arc<Config>,
    /// One permit per slot of [`Config::max_concurrency`]: what makes an instance's throughput
    /// bounded, and so what makes scaling out visible.
    permits: Arc<Semaphore>,
    /// Answered as `service_id`, labels the metrics, and is needed by the standard stack.
    instance: common::Instance,
    /// The wait and the injected failures, changeable while it runs (`PUT /knobs`).
    knobs: Arc<Knobs>,
}

impl AppState {
    /// Validates `config` and builds the slots. Fails with [`Error::Config`] when
    /// `max_concurrency` is 0 (no request could ever run).
    pub async fn new(config: Config, instance: common::Instance) -> Result<AppState, Error> {
        if let Some(problems) = common::validate::joined(&config.validate()) {
            return Err(Error::Config(problems));
        }
        let permits = Arc::new(Semaphore::new(config.max_concurrency));
        Ok(AppState {
            knobs: Arc::new(Knobs::new(&config)),
            config: Arc::new(config),
            permits,
            instance,
        })
    }
}

/// The service's routes inside the standard stack of `common`.
pub fn router(state: AppState) -> Router {
    let instance = state.instance.clone();
    common::stack::wrap(
        routes::routes(state),
        &instance,
        common::stack::Limits::default(),
    )
}

/// Serves on `listener` until `shutdown` resolves, then drains in-flight requests.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    instance: common::Instance,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let state = AppState::new(config, instance).await?;
    common::serve(listener, router(state), shutdown)
        .await
        .map_err(Error::Io)
}
