//! `users`: user profiles sharded over N databases by a stable hash of the user id, with read
//! replicas per shard. It is an internal API: the gateway calls it (registration, `/users/me`,
//! admin listing), clients never do.
//!
//! [`Config`] is the `[users]` section of the topology: the shard layout (embedded: `shard_count`
//! SQLite files in the data directory; distributed: one PostgreSQL URL per shard, each with its
//! replicas). [`AppState::new`] opens every shard; [`router`] serves `routes.rs` inside the standard
//! stack. Start reading at `placement.rs` (which shard a user lives on: jump hash over FNV-1a),
//! then `sharded.rs` ([`Shards`]: routing of reads, writes, the username index and
//! scatter-gather), `store.rs` (one shard's SQL, over `common::sql`), `rebalance.rs` (moving
//! users to a new shard count online) and `routes.rs`.

mod error;
pub mod placement;
mod rebalance;
mod routes;
mod sharded;
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
pub use sharded::{Consistency, Layout, Shard, Shards};
pub use store::{Changes, ShardStore, SqlStore};

/// The `[users]` section of the topology file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// How many shards the embedded layout has when `shards` is empty: one SQLite file
    /// `<data_dir>/users-shard-<n>.sqlite` each. It starts a fresh layout; once users exist the
    /// count recorded on shard 0 wins, and `scalelab shards rebalance --to N` changes it.
    pub shard_count: u32,
    /// The explicit layout, one entry per shard in shard order (distributed: one PostgreSQL
    /// database each). When set, `shard_count` is ignored and the layout is this list.
    pub shards: Vec<ShardConfig>,
    /// Largest page `GET /users?limit=` returns.
    pub max_page_size: u32,
    /// The directory of the SQLite files; set by `scalelab` from `--data-dir`.
    #[serde(skip)]
    pub data_dir: PathBuf,
    /// The roles a profile may hold; set by `scalelab` from `[auth] roles`, not by this section.
    #[serde(skip)]
    pub roles: Vec<String>,
}

/// One shard of an explicit layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardConfig {
    /// The primary: `postgres://user@host:port/db` or `sqlite:PATH`.
    pub url: String,
    /// Read replicas of the primary (streaming replicas for PostgreSQL), tried in turn.
    #[serde(default)]
    pub replicas: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            shard_count: 3,
            shards: Vec::new(),
            max_page_size: 100,
            data_dir: PathBuf::from("data"),
            roles: api::wire::users::DEFAULT_ROLES.map(String::from).to_vec(),
        }
    }
}

impl Config {
    /// The layout in effect: `shards`, or `shard_count` SQLite files in the data directory.
    pub fn layout(&self) -> Vec<ShardConfig> {
        if !self.shards.is_empty() {
            return self.shards.clone();
        }
        self.layout_for(self.shard_count).unwrap_or_default()
    }

    /// The first `n` shards: SQLite files named by number, or the first `n` of `shards` (which
    /// must list that many: a move to more shards needs their databases in the topology).
    pub fn layout_for(&self, n: u32) -> Result<Vec<ShardConfig>, Error> {
        if !self.shards.is_empty() {
            if self.shards.len() < n as usize {
                return Err(Error::Config(format!(
                    "{n} shards are needed and [[users.shards]] lists {}",
                    self.shards.len()
                )));
            }
            return Ok(self.shards[..n as usize].to_vec());
        }
        Ok((0..n)
            .map(|i| ShardConfig {
                url: format!(
                    "sqlite:{}",
                    self.data_dir
                        .join(format!("users-shard-{i}.sqlite"))
                        .display()
                ),
                replicas: Vec::new(),
            })
            .collect())
    }

    /// Every setting the service cannot honour, as `field: problem` lines (empty when the section
    /// is valid). `scalelab up` reports them before starting anything; [`AppState::new`] refuses
    /// to start on any of them.
    pub fn validate(&self) -> Vec<String> {
        let mut p = common::validate::Problems::new();
        p.check(
            !self.shards.is_empty() || self.shard_count > 0,
            "shard_count",
            "must be at least 1",
        );
        for (i, shard) in self.shards.iter().enumerate() {
            p.url(
                &format!("shards[{i}].url"),
                &shard.url,
                common::validate::database_url,
            );
            for (j, replica) in shard.replicas.iter().enumerate() {
                p.url(
                    &format!("shards[{i}].replicas[{j}]"),
                    replica,
                    common::validate::database_url,
                );
            }
        }
        p.check(
            self.max_page_size > 0,
            "max_page_size",
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

/// What every handler shares; cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The page limit.
    config: Arc<Config>,
    /// The layout and its stores.
    shards: Shards,
    /// Who we are (the standard stack, metric labels).
    instance: common::Instance,
}

impl AppState {
    /// Validates `config` and opens every shard (SQLite files are created; PostgreSQL shards
    /// connect lazily so that one shard down at start does not stop the others).
    pub async fn new(config: Config, instance: common::Instance) -> Result<AppState, Error> {
        config.check()?;
        tokio::fs::create_dir_all(&config.data_dir).await?;
        let mut shards = Vec::new();
        for s in config.layout() {
            let primary: Arc<dyn ShardStore> = Arc::new(SqlStore::open(&s.url).await?);
            let mut replicas: Vec<Arc<dyn ShardStore>> = Vec::new();
            for r in &s.replicas {
                replicas.push(Arc::new(SqlStore::open_replica(r).await?));
            }
            shards.push(Shard::new(primary, replicas));
        }
        // The layout row on shard 0 is where every instance and every restart agree on the
        // count (and on a move in progress); the topology's count only starts it.
        let configured = shards.len() as u32;
        let layout = match shards[0].primary.load_layout().await {
            Ok(Some((count, target))) => {
                let needed = count.max(target.unwrap_or(0));
                if needed as usize > shards.len() {
                    shards.extend(rebalance::open_more(&config, shards.len(), needed).await?);
                }
                if count != configured && target.is_none() {
                    tracing::warn!(
                        configured,
                        recorded = count,
                        "the topology's shard count differs from the one recorded after a rebalance; using the recorded one (update the topology)"
                    );
                }
                Layout { count, target }
            }
            Ok(None) => {
                if let Err(e) = shards[0].primary.save_layout(configured, None).await {
                    tracing::warn!(error = %e, "could not record the shard layout");
                }
                Layout {
                    count: configured,
                    target: None,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not read the recorded shard layout; using the topology's");
                Layout {
                    count: configured,
                    target: None,
                }
            }
        };
        let shards = Shards::with_layout(shards, layout)?;
        if let Some(to) = layout.target {
            tracing::info!(from = layout.count, to, "resuming an unfinished rebalance");
            rebalance::spawn(shards.clone(), to);
        }
        Self::with_shards(config, instance, shards)
    }

    /// Like [`AppState::new`] with shards the caller built (test doubles, shards that are down).
    pub fn with_shards(
        config: Config,
        instance: common::Instance,
        shards: Shards,
    ) -> Result<AppState, Error> {
        config.check()?;
        tracing::info!(shards = shards.count(), "users ready");
        Ok(AppState {
            config: Arc::new(config),
            shards,
            instance,
        })
    }
}

/// What changing the shard count to `to` would move, counted over every profile on the current
/// layout's primaries (read-only; the service may keep running). Under `hash % N` beside it.
pub async fn plan_move(config: &Config, to: u32) -> Result<placement::MovePlan, Error> {
    config.check()?;
    if to == 0 {
        return Err(Error::Config(
            "the new shard count must be at least 1".into(),
        ));
    }
    // The count recorded on shard 0 (after an earlier rebalance) wins over the topology's.
    let mut layout = config.layout();
    if let Some(first) = layout.first() {
        let recorded = SqlStore::open(&first.url).await?.load_layout().await?;
        if let Some((count, None)) = recorded {
            layout = config.layout_for(count)?;
        }
    }
    let mut ids = Vec::new();
    for (i, s) in layout.iter().enumerate() {
        let store = SqlStore::open(&s.url).await?;
        let mut after: Option<String> = None;
        loop {
            let page = store
                .list_after(after.as_deref(), 1000)
                .await
                .map_err(|e| match e {
                    Error::Unavailable(detail) => Error::ShardDown {
                        shard: i as u32,
                        detail,
                    },
                    other => other,
                })?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            ids.extend(page.into_iter().map(|p| p.id));
        }
    }
    Ok(placement::MovePlan::new(
        ids.iter().map(String::as_str),
        layout.len() as u32,
        to,
    ))
}

/// The users API inside the standard stack of `common`.
pub fn router(state: AppState) -> Router {
    let instance = state.instance.clone();
    common::stack::wrap(
        routes::routes(state),
        &instance,
        common::stack::Limits::default(),
    )
}

/// Opens the shards, then serves on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    instance: common::Instance,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let state = AppState::new(config, instance).await?;
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, id = %state.instance.id, "users listening");
    }
    common::serve(listener, router(state), shutdown).await?;
    Ok(())
}
