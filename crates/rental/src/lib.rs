//! The Casitas preset's three rental domain services in one crate: `units` (the rental units and
//! their status), `finances` (money movements per unit and month) and `legal` (leases,
//! inspections, permits, insurance). A process serves one [`Domain`], on a database of its own
//! (SQLite, the default, or PostgreSQL, through `common::sql`), with a simulated latency per query
//! so that the gateway's cache shows; the domains never read each other's data.
//!
//! [`Config`] is the domain's section of the topology file (`[units]`, `[finances]`, `[legal]`).
//! [`AppState::new`] opens the domain's `Store` (`store.rs`), creates its table and, on a first start, writes
//! the seed data set (`seed.rs`). [`router`] holds the domain's routes (`routes.rs`, checked by
//! `validation.rs`, answering the paths and bodies of `api::client::RentalClient` with the types
//! of `api::wire::rental`) inside the standard stack of `common`; [`serve`] runs it on a socket.
//! Start reading at `routes.rs`, then `store.rs`.

mod error;
mod routes;
mod seed;
mod store;
#[cfg(test)]
mod tests;
mod validation;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

pub use error::Error;
use store::Store;

/// Which of the three domains a process serves; each has its own routes, table and database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Domain {
    /// `GET`/`POST /units`, `GET`/`PATCH /units/{id}`.
    Units,
    /// `GET`/`POST /transactions`.
    Finances,
    /// `GET /documents`.
    Legal,
}

impl Domain {
    /// Every domain, in the order the preset lists them.
    pub const ALL: [Domain; 3] = [Domain::Units, Domain::Finances, Domain::Legal];

    /// The role name: `units`, `finances` or `legal` (also the topology section and the SQLite
    /// file's name).
    pub fn name(self) -> &'static str {
        match self {
            Domain::Units => "units",
            Domain::Finances => "finances",
            Domain::Legal => "legal",
        }
    }

    /// The domain whose role name is `name`.
    pub fn from_name(name: &str) -> Option<Domain> {
        Domain::ALL.into_iter().find(|d| d.name() == name)
    }
}

impl std::fmt::Display for Domain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The `[units]`, `[finances]` or `[legal]` section of the topology file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the domain's rows live. Absent: SQLite in `<data_dir>/<domain>.sqlite` (WAL mode).
    /// `postgres://user@host:port/db`: PostgreSQL. `sqlite:path`: SQLite at that path.
    pub database_url: Option<String>,
    /// The directory for the SQLite file; set by `scalelab` from `--data-dir`, not by this section.
    #[serde(skip)]
    pub data_dir: PathBuf,
    /// Simulated latency, in milliseconds, added to every read and write (not to `/ready`), so
    /// that the gateway's cache shows.
    pub latency_ms: u64,
    /// Whether a first start (an empty table) writes the seed data set: 40 units, their
    /// transactions over 2026, their documents. A table that has rows is never seeded again, so
    /// a restart neither overwrites nor duplicates anything.
    pub seed: bool,
    /// Largest request body accepted, in bytes (`413 payload_too_large` beyond).
    pub max_body_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            database_url: None,
            data_dir: PathBuf::from("data"),
            latency_ms: 50,
            seed: true,
            max_body_bytes: 16 * 1024,
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
            self.max_body_bytes > 0,
            "max_body_bytes",
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
    /// Which routes exist and which table the store holds.
    domain: Domain,
    /// The latency is read on every request.
    config: Arc<Config>,
    /// The domain's rows.
    store: Arc<Store>,
    /// Labels the metrics, and is needed by the standard stack.
    instance: common::Instance,
}

impl AppState {
    /// Validates `config`, opens the domain's database, creates its table if needed and, when
    /// [`Config::seed`] is on and the table is empty, writes the seed data set. Fails if the
    /// configuration is wrong or the database unreachable while seeding.
    pub async fn new(
        domain: Domain,
        config: Config,
        instance: common::Instance,
    ) -> Result<AppState, Error> {
        config.check()?;
        let store = Store::open(domain, &config).await?;
        let seeded = if config.seed { store.seed().await? } else { 0 };
        tracing::info!(
            domain = domain.name(),
            engine = store.engine(),
            seeded,
            "rental store ready"
        );
        Ok(AppState {
            domain,
            config: Arc::new(config),
            store: Arc::new(store),
            instance,
        })
    }

    /// The domain this state serves.
    pub fn domain(&self) -> Domain {
        self.domain
    }
}

/// The domain's routes inside the standard stack of `common`.
pub fn router(state: AppState) -> Router {
    let instance = state.instance.clone();
    let limits = common::stack::Limits {
        body_bytes: state.config.max_body_bytes,
        ..common::stack::Limits::default()
    };
    common::stack::wrap(routes::routes(state), &instance, limits)
}

/// Opens the domain's store (seeding it on a first start), then serves on `listener` until
/// `shutdown` resolves and in-flight requests are drained.
pub async fn serve(
    listener: TcpListener,
    domain: Domain,
    config: Config,
    instance: common::Instance,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let state = AppState::new(domain, config, instance).await?;
    common::serve(listener, router(state), shutdown)
        .await
        .map_err(Error::Io)
}
