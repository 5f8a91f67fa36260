//! The slow data service: JSON records by key in SQLite (embedded, the default) or PostgreSQL,
//! served with a configurable simulated latency and failure rate so that the effect of the
//! gateways' cache and of failover is visible from the outside.
//!
//! [`Config`] is the role's section of the topology file. [`AppState::new`] opens the [`Store`]
//! chosen by [`Config::database_url`] ([`SqlStore`], SQLite or PostgreSQL), creates the table and
//! seeds it. [`router`] holds the routes (`routes.rs`: `GET /db`, `GET`/`PUT /db/{key}`,
//! `GET /ready`) inside the standard stack of `common`; [`serve`] runs it on a socket. Start
//! reading at `routes.rs`, then `store.rs`.

mod error;
mod routes;
mod store;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

pub use error::Error;
pub use store::{SqlStore, Store};

/// The `[db]` section of the topology file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the records live. Absent: SQLite in `<data_dir>/db.sqlite` (WAL mode).
    /// `postgres://user@host:port/db`: PostgreSQL. `sqlite:path`: SQLite at that path.
    pub database_url: Option<String>,
    /// The directory for the SQLite file; set by `scalelab` from `--data-dir`, not by this section.
    #[serde(skip)]
    pub data_dir: PathBuf,
    /// Simulated latency, in milliseconds, added to every read and write, so that the cache's
    /// effect is visible.
    pub latency_ms: u64,
    /// Extra random latency, in milliseconds: each query waits `latency_ms` plus a uniformly
    /// random 0 to `jitter_ms`.
    pub jitter_ms: u64,
    /// Share of requests (0.0 to 1.0) answered `503 injected_failure` without touching the store,
    /// to show failover and retries.
    pub failure_rate: f64,
    /// How many `key-1` .. `key-N` records to create at start (`my_data`, the record behind
    /// `GET /db`, is always created). Existing records are never overwritten.
    pub seed_records: u32,
    /// Largest JSON value a `PUT` may store, in bytes once serialised (`413 value_too_large`).
    pub max_value_bytes: usize,
    /// What a read of a key nobody wrote answers: `not_found` (`404`), or `generate` (the lab's
    /// database answers every key): a record made from the key alone (same key, same value,
    /// marked `"generated": true`), stored on that first read so that later reads and writes
    /// treat it like any record. The read pays the latency either way.
    pub unknown_keys: UnknownKeys,
}

/// What a read of an unknown key answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownKeys {
    /// `404 not_found`.
    #[default]
    NotFound,
    /// A record generated from the key, stored on first read.
    Generate,
}

/// The record `generate` makes for `key`: the same for the same key, on every instance.
pub fn generated_value(key: &str) -> serde_json::Value {
    // FNV-1a 64: stable across processes and versions (std's hasher is not).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    serde_json::json!({
        "key": key,
        "value": format!("data for {key}"),
        "number": h % 1000,
        "generated": true,
    })
}

impl Default for Config {
    fn default() -> Self {
        Self {
            database_url: None,
            data_dir: PathBuf::from("data"),
            latency_ms: 100,
            jitter_ms: 20,
            failure_rate: 0.0,
            seed_records: 1000,
            max_value_bytes: 256 * 1024,
            unknown_keys: UnknownKeys::NotFound,
        }
    }
}

impl Config {
    /// Every setting the service cannot honour, as `field: problem` lines (empty when the section
    /// is valid). `scalelab up` reports them before starting anything; [`AppState::new`] refuses
    /// to start on any of them.
    pub fn validate(&self) -> Vec<String> {
        let mut p = common::validate::Problems::new();
        if let Some(url) = &self.database_url {
            p.url("database_url", url, common::validate::database_url);
        }
        p.check(
            (0.0..=1.0).contains(&self.failure_rate),
            "failure_rate",
            format_args!("must be between 0.0 and 1.0; got {}", self.failure_rate),
        );
        p.check(
            self.max_value_bytes > 0,
            "max_value_bytes",
            "must be at least 1",
        );
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

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Latency, jitter, failure rate and value limit are read on every request.
    config: Arc<Config>,
    /// The records; a trait object so that the engine is chosen by config at start.
    store: Arc<dyn Store>,
    /// Answered as `db_id`, labels the metrics, and is needed by the standard stack.
    instance: common::Instance,
}

impl AppState {
    /// Validates `config`, opens the store it names, creates the table if needed and seeds the
    /// records that are missing. Fails if the configuration is wrong or the database unreachable.
    pub async fn new(config: Config, instance: common::Instance) -> Result<AppState, Error> {
        config.check()?;
        let store = store::open(&config).await?;
        Self::with_store(config, instance, store).await
    }

    /// Like [`AppState::new`] with a store opened by the caller (another engine, or a test
    /// double); `config.database_url` and `config.data_dir` are then not used. Seeds the store.
    pub async fn with_store(
        config: Config,
        instance: common::Instance,
        store: Arc<dyn Store>,
    ) -> Result<AppState, Error> {
        config.check()?;
        let seeded = store
            .insert_missing(&store::seed(config.seed_records))
            .await?;
        tracing::info!(engine = store.engine(), seeded, "db store ready");
        Ok(AppState {
            config: Arc::new(config),
            store,
            instance,
        })
    }
}

/// The db's routes inside the standard stack of `common`.
pub fn router(state: AppState) -> Router {
    let instance = state.instance.clone();
    let limits = common::stack::Limits {
        // Room for the `{"value": ...}` envelope around the largest value, so that a value just
        // under the limit is refused by the value check (with its own code), not the body limit.
        body_bytes: state.config.max_value_bytes.saturating_add(4096),
        ..common::stack::Limits::default()
    };
    common::stack::wrap(routes::routes(state), &instance, limits)
}

/// Opens the store, then serves on `listener` until `shutdown` resolves and in-flight requests
/// are drained.
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
