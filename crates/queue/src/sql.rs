//! The SQL store: [`SqlQueue`], tasks in one table of SQLite (one file in WAL mode, shared by
//! the gateways and workers of one machine) or PostgreSQL (several machines), through
//! `common::sql`. Every statement is the same text for both (`statements.rs`); the claim is where
//! the engines differ:
//! - SQLite runs the claim in a `BEGIN IMMEDIATE` transaction: it takes the file's write lock
//!   before reading, so two processes can never pick the same task;
//! - PostgreSQL locks the candidate row with `SELECT ... FOR UPDATE SKIP LOCKED`, so concurrent
//!   claimers skip each other's rows instead of waiting on them, and never take the same one.
//!
//! A PostgreSQL pool connects on first use and the table is created then: a gateway starts while
//! the database is down, answers `503 queue_unavailable`, and works as soon as it is back.
//!
//! On PostgreSQL the commits whose loss in a database crash the lease already covers (claims from
//! the store, lease renewals, the `NOTIFY` hint) go through a second small pool whose connections
//! run with `synchronous_commit = off` ([`SqlQueue`]'s `lax`); everything a caller is told it can
//! rely on (submissions, results, failures, dead tasks, cancels, re-queues, releases) commits
//! synchronously through the main pool. docs/queue.md, "Durability", has the list and the why.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::sql::{self, Arg, Db, Engine, Pool, Schema};
use serde_json::Value;

use crate::statements::{self as st};
use crate::{Config, Error, ListQuery, NewTask, Page, Priority, Queue, Stats, Status, Task};

/// The table. Per engine only the `seq` column (SQLite `AUTOINCREMENT`, PostgreSQL `BIGSERIAL`).
const SCHEMA: Schema = Schema {
    sqlite: "
CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL,
    priority INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    result TEXT,
    error TEXT,
    progress TEXT,
    owner TEXT NOT NULL,
    idempotency_key TEXT,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    worker_id TEXT,
    not_before INTEGER NOT NULL,
    lease_until INTEGER,
    UNIQUE (owner, idempotency_key)
);
CREATE INDEX IF NOT EXISTS tasks_claim ON tasks (priority, seq)
    WHERE status IN ('queued', 'failed', 'running');
CREATE INDEX IF NOT EXISTS tasks_owner ON tasks (owner, seq);
CREATE INDEX IF NOT EXISTS tasks_finished ON tasks (finished_at)
    WHERE status IN ('succeeded', 'cancelled');
CREATE INDEX IF NOT EXISTS tasks_lease ON tasks (lease_until) WHERE status = 'running';
",
    postgres: "
CREATE TABLE IF NOT EXISTS tasks (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL,
    priority BIGINT NOT NULL,
    attempts BIGINT NOT NULL,
    max_attempts BIGINT NOT NULL,
    result TEXT,
    error TEXT,
    progress TEXT,
    owner TEXT NOT NULL,
    idempotency_key TEXT,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT,
    worker_id TEXT,
    not_before BIGINT NOT NULL,
    lease_until BIGINT,
    UNIQUE (owner, idempotency_key)
);
CREATE INDEX IF NOT EXISTS tasks_claim ON tasks (priority, seq)
    WHERE status IN ('queued', 'failed', 'running');
CREATE INDEX IF NOT EXISTS tasks_owner ON tasks (owner, seq);
CREATE INDEX IF NOT EXISTS tasks_finished ON tasks (finished_at)
    WHERE status IN ('succeeded', 'cancelled');
CREATE INDEX IF NOT EXISTS tasks_lease ON tasks (lease_until) WHERE status = 'running';
-- The RabbitMQ backend's claim of due retries (statements::CANDIDATE_DUE).
CREATE INDEX IF NOT EXISTS tasks_retry ON tasks (not_before) WHERE status = 'failed';
-- Vacuumed once 1% of the rows (at least 1,000) are dead, not the default 20%: a claim walks the
-- dead entries of tasks_claim until then, and a queue's table is mostly finished tasks.
ALTER TABLE tasks SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000);
",
};

/// Tasks in a SQLite file or a PostgreSQL database.
#[derive(Debug)]
pub struct SqlQueue {
    db: Db,
    /// PostgreSQL: a small second pool on the same database whose connections commit with
    /// `synchronous_commit = off` (no wait for the log flush), for the statements whose loss in
    /// a database crash leaves a state the lease already covers: a claim lost makes its task
    /// claimable again once the lease lapses (its holder is refused as `lease_lost`, the task
    /// runs again: at least once), a renewal lost lets a lease lapse early (the same). A later
    /// synchronous commit (a completion) flushes the log up to itself, so it makes every earlier
    /// lax commit durable with it: nothing acknowledged ever rests on a lost one. A second pool
    /// rather than `SET LOCAL synchronous_commit = off`: that needs an explicit transaction,
    /// three more round trips per statement (sqlx does not pipeline), on the hottest path.
    /// `None` on SQLite, whose commits stay as they are (`synchronous = NORMAL`).
    lax: Option<sqlx::PgPool>,
    /// Default attempts and the backoff.
    config: Config,
    /// The claim statements, built once with the engine's locking clause.
    claims: Claims,
    /// Woken at every submission through this queue and, on PostgreSQL, at every `NOTIFY` of
    /// another process's submission: idle claimers wait on it instead of sleeping a full poll.
    /// One submission wakes one claimer (`notify_one`), and a wake-up that finds nobody waiting
    /// is kept for the next (its permit), so that a submission landing between a claimer's empty
    /// claim and its wait is not lost. Waking every idle claimer instead made each submission
    /// cost one claim per idle slot of every worker.
    wake: Arc<tokio::sync::Notify>,
    /// The PostgreSQL `LISTEN` task, once started (by the first wait for work); stopped with
    /// the queue.
    listening: std::sync::OnceLock<tokio::task::AbortHandle>,
    /// PostgreSQL: signalled at every submission; the notifier task (`notifying`) sends one
    /// `NOTIFY` for all the submissions signalled since its last one.
    submitted: Arc<tokio::sync::Notify>,
    /// The notifier task, once started (by the first submission); stopped with the queue.
    notifying: std::sync::OnceLock<tokio::task::AbortHandle>,
    /// SQLite in a file: the other processes' bells, rung by the notifier task
    /// (`doorbell.rs`, SQLite's `NOTIFY`).
    doorbells: Option<crate::doorbell::Doorbells>,
    /// This process's bell, once bound (by the first wait for work): SQLite's `LISTEN`.
    bell: std::sync::OnceLock<Option<crate::doorbell::Bell>>,
}

impl Drop for SqlQueue {
    fn drop(&mut self) {
        for task in [self.listening.get(), self.notifying.get()]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
    }
}

/// The PostgreSQL channel a submission notifies and idle workers listen on.
const CHANNEL: &str = "scalelab_tasks";

/// The three claims: any claimable task, and the RabbitMQ backend's two (due retries and lapsed
/// leases; one task by id).
#[derive(Debug)]
struct Claims {
    /// Lax on PostgreSQL.
    any: String,
    /// Lax on PostgreSQL.
    due: String,
    /// With `$IDS` standing for the list of parameters `$5, $6, ...`. Synchronous: the broker's
    /// delivery of a task claimed this way is acked when its holder is told `lease_lost`, and
    /// the RabbitMQ backend never hands out a `queued` task from the store, so a lost claim
    /// would leave its task `queued` for ever.
    by_ids: String,
}

/// How a claim commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Commit {
    /// Through the main pool: the claim's commit is on disk before it is answered.
    Synchronous,
    /// PostgreSQL: through the lax pool (`synchronous_commit = off`); the reap of lapsed last
    /// attempts, whose `dead` is final, runs first on its own through the main pool.
    Lax,
}

impl SqlQueue {
    /// Opens the queue at `url` (`sqlite:PATH`, `sqlite::memory:`, `postgres://...`), creating
    /// its table if needed (on first use for PostgreSQL).
    pub async fn open(url: &str, config: &Config) -> Result<Self, Error> {
        config.check()?;
        let mut queue = Self::new(Db::open(url, SCHEMA, options()).await?, config);
        // `sqlite:PATH` (or `sqlite://PATH`), options after `?`; not `sqlite::memory:`.
        if let Some(path) = url
            .strip_prefix("sqlite:")
            .map(|p| p.trim_start_matches("//"))
            .map(|p| p.split('?').next().unwrap_or(p))
            .filter(|p| !p.is_empty() && !p.starts_with(':'))
        {
            queue.doorbells = Some(crate::doorbell::Doorbells::of(Path::new(path)));
        }
        Ok(queue)
    }

    /// Opens (creating if needed) the queue file at `path`.
    pub async fn open_file(path: &Path, config: &Config) -> Result<Self, Error> {
        config.check()?;
        let mut queue = Self::new(Db::open_file(path, SCHEMA, options()).await?, config);
        queue.doorbells = Some(crate::doorbell::Doorbells::of(path));
        Ok(queue)
    }

    fn new(db: Db, config: &Config) -> Self {
        // Per engine: PostgreSQL locks the candidate row; SQLite's claim holds the write lock.
        let lock = match db.engine() {
            Engine::Sqlite => "",
            Engine::Postgres => " FOR UPDATE SKIP LOCKED",
        };
        let claim = |candidate: &str, commit: Commit| {
            let claim = st::claim(&format!("{candidate}{lock}"));
            match (db.engine(), commit) {
                // SQLite reaps in the claim's transaction, PostgreSQL's lax claims before it,
                // durably (`Claim::run`).
                (Engine::Sqlite, _) | (Engine::Postgres, Commit::Lax) => claim,
                (Engine::Postgres, Commit::Synchronous) => st::reap_then(&claim),
            }
        };
        Self {
            claims: Claims {
                any: claim(st::CANDIDATE, Commit::Lax),
                due: claim(st::CANDIDATE_DUE, Commit::Lax),
                by_ids: claim(st::CANDIDATE_IDS, Commit::Synchronous),
            },
            lax: db.sibling_pool(lax_options()),
            db,
            config: config.clone(),
            wake: Arc::new(tokio::sync::Notify::new()),
            listening: std::sync::OnceLock::new(),
            submitted: Arc::new(tokio::sync::Notify::new()),
            notifying: std::sync::OnceLock::new(),
            doorbells: None,
            bell: std::sync::OnceLock::new(),
        }
    }

    /// Starts, once, the task that `LISTEN`s on PostgreSQL and wakes this queue's idle claimers
    /// when any process submits. It reconnects after a failure (the claimers poll meanwhile).
    fn listen(&self, pool: &sqlx::PgPool) {
        self.listening.get_or_init(|| {
            let (pool, wake) = (pool.clone(), self.wake.clone());
            let task = tokio::spawn(async move {
                loop {
                    let e = relay_notifications(&pool, &wake).await;
                    tracing::debug!(error = %e, "LISTEN failed; polling until it is back");
                    // Whatever was submitted while nobody listened is found by the next poll;
                    // every waiter polls now.
                    wake.notify_waiters();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
            task.abort_handle()
        });
    }

    /// The engine this queue runs on.
    pub(crate) fn engine(&self) -> Engine {
        self.db.engine()
    }

    /// The pool for the commits whose loss the lease covers, once the schema exists: the lax
    /// pool on PostgreSQL (`synchronous_commit = off`), the one pool on SQLite.
    async fn lax_pool(&self) -> Result<Pool, Error> {
        let pool = self.db.pool().await?;
        Ok(match &self.lax {
            Some(lax) => Pool::Postgres(lax.clone()),
            None => pool.clone(),
        })
    }

    /// Marks dead the lapsed last attempts, then runs the claim statement `sql` for at most
    /// `limit` tasks; the tasks in claim order (priority, then submission).
    ///
    /// The claim runs in a task of its own, so that it always ends, committed or rolled back,
    /// whatever becomes of the caller's future: a caller dropped (a shutdown, a timeout) or
    /// unwinding while the claim waits on the store can never leave a transaction open on a
    /// pooled connection (on SQLite, one such connection holds the file's write lock and every
    /// other process waits on it), and the tasks a caller was not there to receive are released
    /// at once rather than left to their lease.
    ///
    /// `commit` says through which pool the claim commits (the statement `sql` was built for it:
    /// [`Claims`]).
    async fn claim_with(
        &self,
        sql: &str,
        commit: Commit,
        worker_id: &str,
        lease: Duration,
        ids: &[String],
        limit: usize,
    ) -> Result<Vec<Task>, Error> {
        let durable = self.db.pool().await?.clone();
        let (pool, reap_first) = match (commit, &self.lax) {
            (Commit::Lax, Some(lax)) => (Pool::Postgres(lax.clone()), true),
            _ => (durable.clone(), false),
        };
        let claim = Claim {
            pool,
            durable,
            reap_first,
            sql: sql.to_string(),
            worker_id: worker_id.to_string(),
            lease,
            ids: ids.to_vec(),
            limit: i64::try_from(limit.max(1)).unwrap_or(i64::MAX),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let claimed = claim.run().await;
            if let Err(Ok(tasks)) = tx.send(claimed) {
                claim.release(&tasks).await;
            }
        });
        rx.await
            .map_err(|_| Error::Unavailable("the claim ended abnormally".into()))?
    }

    /// Claims up to `n` due retries or tasks whose lease lapsed (not fresh tasks).
    pub(crate) async fn claim_due(
        &self,
        worker_id: &str,
        lease: Duration,
        n: usize,
    ) -> Result<Vec<Task>, Error> {
        self.claim_with(&self.claims.due, Commit::Lax, worker_id, lease, &[], n)
            .await
    }

    /// Claims those of the tasks `ids` that are queued, in one statement.
    pub(crate) async fn claim_ids(
        &self,
        ids: &[String],
        worker_id: &str,
        lease: Duration,
    ) -> Result<Vec<Task>, Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let list = (0..ids.len())
            .map(|i| format!("${}", i + 5))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = self.claims.by_ids.replace("$IDS", &list);
        self.claim_with(&sql, Commit::Synchronous, worker_id, lease, ids, ids.len())
            .await
    }

    /// Stores a submission; `true` when it is new (`false`: the idempotency key's first task).
    /// It wakes no claimer: the caller announces the task once it can be claimed (the RabbitMQ
    /// backend leaves that to the broker's delivery).
    pub(crate) async fn insert(&self, task: NewTask) -> Result<(Task, bool), Error> {
        let max_attempts = attempts_of(&task, self.config.max_attempts)?;
        let id = new_id();
        let payload = task.payload.to_string();
        let inserted = self
            .db
            .fetch_optional(
                &st::returning(st::INSERT),
                &[
                    (&id).into(),
                    (&task.kind).into(),
                    (&payload).into(),
                    task.priority.rank().into(),
                    max_attempts.into(),
                    (&task.owner).into(),
                    (&task.idempotency_key).into(),
                    now_ms().into(),
                ],
            )
            .await?;
        match inserted {
            Some(row) => Ok((self::task(&row)?, true)),
            // The key was used before: the first submission's task, whatever its status.
            None => {
                let row = self
                    .db
                    .fetch_one(
                        &st::select_by_key(),
                        &[(&task.owner).into(), (&task.idempotency_key).into()],
                    )
                    .await?;
                Ok((self::task(&row)?, false))
            }
        }
    }

    /// Tells idle claimers that a task was submitted: those of this process at once, those of
    /// other processes through PostgreSQL's `NOTIFY` (SQLite has no such thing: other processes
    /// find the task at their next poll). A hint only: a lost one costs one poll.
    ///
    /// The `NOTIFY` is sent by a task of its own, one for every submission made before it
    /// starts, however many: PostgreSQL serialises the commits of notifying transactions (one
    /// lock on its notification queue, held through the commit's log flush), so one `NOTIFY`
    /// per submission, let alone one inside the submission's own transaction (measured: every
    /// insert queued on that lock, ~300 submissions/s), would cap the submission rate. It
    /// commits through the lax pool, so that the lock is not held through a log flush: the
    /// submission it announces committed durably before, and a `NOTIFY` lost in a crash is a
    /// hint lost (every listener loses its connection then, and polls).
    pub(crate) async fn announce(&self) {
        self.wake.notify_one();
        if let Some(doorbells) = &self.doorbells {
            self.notifying.get_or_init(|| {
                let (doorbells, submitted) = (doorbells.clone(), self.submitted.clone());
                let own = self
                    .bell
                    .get()
                    .and_then(|b| b.as_ref().map(|b| b.path().to_path_buf()));
                tokio::spawn(async move {
                    loop {
                        // As the NOTIFY task below: a submission signalled while the last ring
                        // was being sent left a permit, and gets a ring after its commit.
                        submitted.notified().await;
                        let (doorbells, own) = (doorbells.clone(), own.clone());
                        // A few file-system calls: off the runtime's threads.
                        let _ = tokio::task::spawn_blocking(move || doorbells.ring(own.as_deref()))
                            .await;
                    }
                })
                .abort_handle()
            });
            self.submitted.notify_one();
        }
        if let Ok(Pool::Postgres(pool)) = self.lax_pool().await {
            self.notifying.get_or_init(|| {
                let (pool, submitted) = (pool.clone(), self.submitted.clone());
                tokio::spawn(async move {
                    loop {
                        // A submission signalled while the last NOTIFY was being sent left a
                        // permit: it gets a NOTIFY that starts after its commit.
                        submitted.notified().await;
                        if let Err(e) = sql::query("SELECT pg_notify($1, '')", &[CHANNEL.into()])
                            .execute(&pool)
                            .await
                        {
                            tracing::debug!(error = %e, "NOTIFY failed; the workers will poll");
                        }
                    }
                })
                .abort_handle()
            });
            self.submitted.notify_one();
        }
    }

    /// Deletes a task that was never announced (a submission undone).
    pub(crate) async fn delete(&self, id: &str) -> Result<(), Error> {
        self.db.execute(st::DELETE_QUEUED, &[id.into()]).await?;
        Ok(())
    }

    /// Runs a statement that returns the changed task; `None` when it matched nothing.
    async fn change(&self, sql: &str, args: &[Arg<'_>]) -> Result<Option<Task>, Error> {
        let row = self.db.fetch_optional(&st::returning(sql), args).await?;
        row.as_ref().map(task).transpose()
    }
}

/// One claim, owned, so that it can run in a task of its own (see [`SqlQueue::claim_with`]).
struct Claim {
    /// The pool the claim commits through (the lax one for a lax claim on PostgreSQL).
    pool: Pool,
    /// The main pool: the reap before a lax claim, and the release of tasks claimed for a
    /// caller that left, commit through it.
    durable: Pool,
    /// PostgreSQL, a lax claim: the reap of lapsed last attempts runs first, on its own, through
    /// the main pool, since the `dead` it writes is final. A reap that finds nothing writes
    /// nothing and waits for no flush.
    reap_first: bool,
    sql: String,
    worker_id: String,
    lease: Duration,
    /// The tasks wanted, for the claim by ids (`$5`, `$6`, ...).
    ids: Vec<String>,
    limit: i64,
}

impl Claim {
    /// Marks dead the lapsed last attempts, then claims (one statement on PostgreSQL); the
    /// tasks in claim order.
    async fn run(&self) -> Result<Vec<Task>, Error> {
        // The claim's time (`started_at`, the lease) is read once the claim can proceed: a claimer
        // that waited for SQLite's write lock must not stamp its tasks earlier than the claims
        // committed while it waited.
        let args = |now: i64| {
            let mut args: Vec<Arg<'_>> = vec![
                self.worker_id.as_str().into(),
                (now + ms(self.lease)).into(),
                now.into(),
                self.limit.into(),
            ];
            args.extend(self.ids.iter().map(Arg::from));
            args
        };
        let rows: Vec<sql::Row> = match &self.pool {
            // Per engine: IMMEDIATE takes SQLite's write lock before the candidates are read, so
            // no other process can claim between the read and the update. The transaction lives
            // in this function: an error drops it, which rolls it back at once on SQLite.
            Pool::Sqlite(pool) => {
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let now = now_ms();
                let args = args(now);
                sql::query(st::REAP, &[now.into()])
                    .execute(&mut *tx)
                    .await?;
                let rows = sql::query(&self.sql, &args).fetch_all(&mut *tx).await?;
                tx.commit().await?;
                rows.into_iter().map(sql::Row::Sqlite).collect()
            }
            // PostgreSQL's statement locks its rows (`FOR UPDATE SKIP LOCKED`) by itself. A
            // synchronous claim reaps in the same statement (`st::reap_then`: one transaction);
            // a lax one reaps first through the main pool. The two never touch the same row.
            Pool::Postgres(pool) => {
                if self.reap_first {
                    execute(&self.durable, st::REAP, &[now_ms().into()]).await?;
                }
                let args = args(now_ms());
                sql::query(&self.sql, &args)
                    .fetch_all(pool)
                    .await?
                    .into_iter()
                    .map(sql::Row::Postgres)
                    .collect()
            }
        };
        let mut claimed = Vec::with_capacity(rows.len());
        for row in &rows {
            claimed.push((row.get::<i64>("seq")?, task(row)?));
        }
        claimed.sort_by_key(|(seq, t)| (t.priority.rank(), *seq));
        Ok(claimed.into_iter().map(|(_, t)| t).collect())
    }

    /// Gives back tasks claimed for a caller that was gone by the time they came.
    async fn release(&self, tasks: &[Task]) {
        for t in tasks {
            let args = [
                t.id.as_str().into(),
                self.worker_id.as_str().into(),
                now_ms().into(),
            ];
            let done = execute(&self.durable, st::RELEASE, &args).await;
            if let Err(e) = done {
                tracing::warn!(error = %e, task = %t.id, "could not give back a task claimed for a caller that left; its lease will lapse");
            }
        }
    }
}

/// The lax pool's (PostgreSQL): small, since only claims and lease renewals use it, and with
/// commits that do not wait for the log flush (see [`SqlQueue`]'s `lax`).
fn lax_options() -> sql::Options {
    sql::Options {
        max_connections: 4,
        pg_settings: &[("synchronous_commit", "off")],
        ..options()
    }
}

fn options() -> sql::Options {
    sql::Options {
        max_connections: 8,
        acquire_timeout: Duration::from_secs(3),
        // The claim must walk `tasks_claim` in order (an index scan), never collect it into a
        // bitmap: every claim and completion leaves a dead entry in that index until vacuum,
        // and only an index scan marks the dead ones it passes (`LP_DEAD`) so that the next
        // claims skip them without reading the table. With the bitmap scan the planner picks
        // for a small or unanalysed table, each claim read every dead entry's heap page again:
        // 21 ms per claim after 20,000 tasks (0.6 ms by index scan; docs/PERFORMANCE.md), and a
        // burn-down slowed as it went. The queue's other statements lose nothing by it.
        pg_settings: &[("enable_bitmapscan", "off")],
        // Claims, renewals and completions follow each other on the same few connections: a
        // ping before each (sqlx's default) was one round trip more per statement, about 15%
        // of PostgreSQL's CPU in a burn-down (docs/PERFORMANCE.md). A connection the database
        // dropped within the last 500 ms fails one statement instead: a worker retries its
        // claim, a submission answers `503` once.
        ping_if_idle_for: Duration::from_millis(500),
        ..sql::Options::default()
    }
}

#[async_trait::async_trait]
impl Queue for SqlQueue {
    fn backend(&self) -> &'static str {
        self.engine().as_str()
    }

    async fn submit(&self, task: NewTask) -> Result<Task, Error> {
        let (task, new) = self.insert(task).await?;
        if new {
            self.announce().await;
        }
        Ok(task)
    }

    async fn claim(&self, worker_id: &str, lease: Duration) -> Result<Option<Task>, Error> {
        let mut tasks = self
            .claim_with(&self.claims.any, Commit::Lax, worker_id, lease, &[], 1)
            .await?;
        Ok(tasks.pop())
    }

    async fn claim_batch(
        &self,
        worker_id: &str,
        lease: Duration,
        n: usize,
    ) -> Result<Vec<Task>, Error> {
        self.claim_with(&self.claims.any, Commit::Lax, worker_id, lease, &[], n)
            .await
    }

    async fn complete_batch(
        &self,
        worker_id: &str,
        results: Vec<(String, Value)>,
    ) -> Result<Vec<Result<Task, Error>>, Error> {
        let pool = self.db.pool().await?.clone();
        let worker_id = worker_id.to_string();
        // In a task of its own for the reason the claim is (`claim_with`): the transaction ends
        // whatever becomes of the caller.
        tokio::spawn(async move { complete_all(&pool, &worker_id, &results).await })
            .await
            .map_err(|_| Error::Unavailable("the completion ended abnormally".into()))?
    }

    async fn wait_for_work(&self, timeout: Duration) {
        // A wake-up that came since this claimer's last claim is kept as the `Notify`'s permit,
        // and this returns at once.
        let woken = self.wake.notified();
        if let Some(doorbells) = &self.doorbells {
            self.bell
                .get_or_init(|| doorbells.listen(self.wake.clone()));
        }
        if let Ok(Pool::Postgres(pool)) = self.db.pool().await {
            self.listen(pool);
        }
        let _ = tokio::time::timeout(timeout, woken).await;
    }

    fn more_work(&self) {
        self.wake.notify_one();
    }

    async fn heartbeat(&self, id: &str, worker_id: &str, lease: Duration) -> Result<(), Error> {
        // Lax: a renewal lost in a crash at worst lets the lease lapse early.
        let until = now_ms() + ms(lease);
        let rows = execute(
            &self.lax_pool().await?,
            st::HEARTBEAT,
            &[id.into(), worker_id.into(), until.into()],
        )
        .await?;
        held(rows, id, worker_id)
    }

    async fn progress(
        &self,
        id: &str,
        worker_id: &str,
        progress: Value,
        lease: Duration,
    ) -> Result<(), Error> {
        // Lax, as a heartbeat: the progress lost with it is a report, and the next one replaces
        // it anyway.
        let until = now_ms() + ms(lease);
        let progress = progress.to_string();
        let rows = execute(
            &self.lax_pool().await?,
            st::PROGRESS,
            &[
                id.into(),
                worker_id.into(),
                until.into(),
                (&progress).into(),
            ],
        )
        .await?;
        held(rows, id, worker_id)
    }

    async fn complete(&self, id: &str, worker_id: &str, result: Value) -> Result<Task, Error> {
        let result = result.to_string();
        let args = [
            id.into(),
            worker_id.into(),
            (&result).into(),
            now_ms().into(),
        ];
        self.change(st::COMPLETE, &args)
            .await?
            .ok_or_else(|| lease_lost(id, worker_id))
    }

    async fn fail(&self, id: &str, worker_id: &str, error: &str) -> Result<Task, Error> {
        let Some(held) = self
            .db
            .fetch_optional(st::HELD, &[id.into(), worker_id.into()])
            .await?
        else {
            return Err(lease_lost(id, worker_id));
        };
        let attempts: i64 = held.get("attempts")?;
        let max_attempts: i64 = held.get("max_attempts")?;
        let now = now_ms();
        // The statement repeats the precondition (and the attempt read above), so a lease taken
        // over in between makes it match nothing.
        let (sql, at) = if attempts >= max_attempts {
            (st::FAIL_DEAD, now)
        } else {
            let wait = self
                .config
                .backoff()
                .delay(u32::try_from(attempts).unwrap_or(u32::MAX));
            (st::FAIL_RETRY, now + ms(wait))
        };
        let args = [
            id.into(),
            worker_id.into(),
            attempts.into(),
            error.into(),
            at.into(),
        ];
        self.change(sql, &args)
            .await?
            .ok_or_else(|| lease_lost(id, worker_id))
    }

    async fn release(&self, id: &str, worker_id: &str) -> Result<(), Error> {
        let rows = self
            .db
            .execute(st::RELEASE, &[id.into(), worker_id.into(), now_ms().into()])
            .await?;
        held(rows, id, worker_id)
    }

    async fn cancel(&self, id: &str) -> Result<Task, Error> {
        match self
            .change(st::CANCEL, &[id.into(), now_ms().into()])
            .await?
        {
            Some(task) => Ok(task),
            None => Err(refusal(self, id, "cancelling", "queued").await),
        }
    }

    async fn requeue(&self, id: &str) -> Result<Task, Error> {
        match self
            .change(st::REQUEUE, &[id.into(), now_ms().into()])
            .await?
        {
            Some(task) => Ok(task),
            None => Err(refusal(self, id, "re-queueing", "dead").await),
        }
    }

    async fn get(&self, id: &str) -> Result<Option<Task>, Error> {
        let row = self
            .db
            .fetch_optional(&st::select_by_id(), &[id.into()])
            .await?;
        row.as_ref().map(task).transpose()
    }

    async fn list(&self, query: &ListQuery) -> Result<Page, Error> {
        let limit = page_limit(query.limit);
        let args = [
            query.owner.as_deref().into(),
            query.status.map(Status::as_str).into(),
            query.kind.as_deref().into(),
            parse_cursor(query.cursor.as_deref())?.into(),
            (limit + 1).into(),
        ];
        let rows = self.db.fetch_all(&st::list(), &args).await?;
        let mut tasks = Vec::with_capacity(rows.len());
        let mut next_cursor = None;
        for (i, row) in rows.iter().enumerate() {
            if i as i64 == limit {
                break;
            }
            if i as i64 == limit - 1 && rows.len() as i64 > limit {
                let seq: i64 = row.get("seq")?;
                next_cursor = Some(seq.to_string());
            }
            tasks.push(task(row)?);
        }
        Ok(Page { tasks, next_cursor })
    }

    async fn stats(&self) -> Result<Stats, Error> {
        let mut stats = Stats {
            backend: self.backend().to_string(),
            ..Stats::default()
        };
        let mut oldest: Option<i64> = None;
        for row in self.db.fetch_all(st::STATS, &[]).await? {
            let status: String = row.get("status")?;
            let priority = Priority::from_rank(row.get("priority")?)?;
            let n = row.get::<i64>("n")?.max(0) as u64;
            if let Some(at) = row.get::<Option<i64>>("oldest")? {
                oldest = Some(oldest.map_or(at, |o| o.min(at)));
            }
            if status == Status::Queued.as_str() || status == Status::Failed.as_str() {
                *stats
                    .depth_by_priority
                    .entry(priority.as_str().to_string())
                    .or_insert(0) += n;
            }
            *stats.by_status.entry(status).or_insert(0) += n;
        }
        stats.oldest_queued_ms = oldest.map(|at| (now_ms() - at).max(0) as u64);
        // Every status and priority is present, zero included.
        for s in Status::ALL {
            stats.by_status.entry(s.as_str().to_string()).or_insert(0);
        }
        for p in Priority::ALL {
            stats
                .depth_by_priority
                .entry(p.as_str().to_string())
                .or_insert(0);
        }
        Ok(stats)
    }

    async fn prune(&self, age: Duration, limit: usize) -> Result<u64, Error> {
        let before = now_ms() - ms(age);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Ok(self
            .db
            .execute(st::PRUNE, &[before.into(), limit.into()])
            .await?)
    }

    async fn ping(&self) -> Result<(), Error> {
        Ok(self.db.ping().await?)
    }
}

/// Runs a statement on `pool`; the number of rows it changed.
async fn execute(pool: &Pool, sql: &str, args: &[Arg<'_>]) -> Result<u64, Error> {
    Ok(match pool {
        Pool::Sqlite(p) => sql::query(sql, args).execute(p).await?.rows_affected(),
        Pool::Postgres(p) => sql::query(sql, args).execute(p).await?.rows_affected(),
    })
}

/// Wakes `wake` at every notification on [`CHANNEL`] until the listening connection fails;
/// returns why it did.
async fn relay_notifications(pool: &sqlx::PgPool, wake: &tokio::sync::Notify) -> sqlx::Error {
    let mut listener = match sqlx::postgres::PgListener::connect_with(pool).await {
        Ok(l) => l,
        Err(e) => return e,
    };
    if let Err(e) = listener.listen(CHANNEL).await {
        return e;
    }
    loop {
        if let Err(e) = listener.recv().await {
            return e;
        }
        // One submission, one claimer: a claimer that finds more passes it on (`more_work`).
        wake.notify_one();
    }
}

/// Stores several results of tasks `worker_id` holds in one statement (one commit, one sync of
/// the log, for the whole batch): [`st::complete_batch`] keeps the holder's precondition for each
/// row, so a task whose lease was taken over is refused alone ([`Error::LeaseLost`]) and the
/// others are stored.
async fn complete_all(
    pool: &Pool,
    worker_id: &str,
    results: &[(String, Value)],
) -> Result<Vec<Result<Task, Error>>, Error> {
    if results.is_empty() {
        return Ok(Vec::new());
    }
    let sql = st::complete_batch(results.len());
    let texts: Vec<String> = results.iter().map(|(_, r)| r.to_string()).collect();
    let mut args: Vec<Arg<'_>> = vec![worker_id.into(), now_ms().into()];
    for ((id, _), text) in results.iter().zip(&texts) {
        args.push(id.as_str().into());
        args.push(text.as_str().into());
    }
    let rows: Vec<sql::Row> = match pool {
        Pool::Sqlite(p) => sql::query(&sql, &args)
            .fetch_all(p)
            .await?
            .into_iter()
            .map(sql::Row::Sqlite)
            .collect(),
        Pool::Postgres(p) => sql::query(&sql, &args)
            .fetch_all(p)
            .await?
            .into_iter()
            .map(sql::Row::Postgres)
            .collect(),
    };
    let mut stored = std::collections::HashMap::with_capacity(rows.len());
    for row in &rows {
        let t = task(row)?;
        stored.insert(t.id.clone(), t);
    }
    Ok(results
        .iter()
        .map(|(id, _)| stored.remove(id).ok_or_else(|| lease_lost(id, worker_id)))
        .collect())
}

/// Reads a task from a row of [`st::COLUMNS`].
fn task(row: &sql::Row) -> Result<Task, Error> {
    let id: String = row.get("id")?;
    let json = |what: &str, text: &str| {
        serde_json::from_str::<Value>(text)
            .map_err(|e| Error::Corrupt(format!("{what} of task {id} is not JSON: {e}")))
    };
    let optional_json = |what: &str, column: &str| -> Result<Option<Value>, Error> {
        row.get::<Option<String>>(column)?
            .map(|t| json(what, &t))
            .transpose()
    };
    Ok(Task {
        kind: row.get("kind")?,
        payload: json("payload", &row.get::<String>("payload")?)?,
        status: Status::parse(&row.get::<String>("status")?)?,
        priority: Priority::from_rank(row.get("priority")?)?,
        attempts: u32::try_from(row.get::<i64>("attempts")?).unwrap_or(0),
        max_attempts: u32::try_from(row.get::<i64>("max_attempts")?).unwrap_or(0),
        result: optional_json("result", "result")?,
        error: row.get("error")?,
        progress: optional_json("progress", "progress")?,
        owner: row.get("owner")?,
        idempotency_key: row.get("idempotency_key")?,
        created_at: row.get("created_at")?,
        started_at: row.get("started_at")?,
        finished_at: row.get("finished_at")?,
        worker_id: row.get("worker_id")?,
        not_before: row.get("not_before")?,
        lease_until: row.get("lease_until")?,
        id,
    })
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    common::now_ms() as i64
}

/// A duration in milliseconds, for arithmetic on stored times.
fn ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

/// The page size actually used.
fn page_limit(limit: u32) -> i64 {
    i64::from(limit.clamp(1, 500))
}

/// The store's cursor: the sequence number of the last task of the previous page.
fn parse_cursor(cursor: Option<&str>) -> Result<Option<i64>, Error> {
    cursor
        .map(|c| {
            c.parse::<i64>()
                .map_err(|_| Error::InvalidQuery("cursor is not one this server gave".into()))
        })
        .transpose()
}

fn lease_lost(id: &str, worker_id: &str) -> Error {
    Error::LeaseLost {
        id: id.to_string(),
        worker_id: worker_id.to_string(),
    }
}

/// `Ok` when a holder's statement changed the row; [`Error::LeaseLost`] when it matched nothing.
fn held(rows: u64, id: &str, worker_id: &str) -> Result<(), Error> {
    if rows == 1 {
        Ok(())
    } else {
        Err(lease_lost(id, worker_id))
    }
}

/// Why a status-guarded change matched nothing: no such task, or it is in another status.
async fn refusal(queue: &SqlQueue, id: &str, action: &'static str, needs: &'static str) -> Error {
    match queue.get(id).await {
        Ok(None) => Error::NotFound(id.to_string()),
        Ok(Some(task)) => Error::Conflict {
            id: id.to_string(),
            status: task.status,
            action,
            needs,
        },
        Err(e) => e,
    }
}

/// A new task id: a UUID v7, so that ids sort by submission time.
fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The attempts a submission gets, checked.
fn attempts_of(task: &NewTask, default: u32) -> Result<i64, Error> {
    let n = task.max_attempts.unwrap_or(default);
    if n == 0 || n > crate::MAX_ATTEMPTS {
        return Err(Error::InvalidPayload(format!(
            "max_attempts must be 1 to {}; got {n}",
            crate::MAX_ATTEMPTS
        )));
    }
    Ok(i64::from(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `EXPLAIN QUERY PLAN` of `sql` (its `$N` parameters all bound to 0), one line per step.
    async fn plan(q: &SqlQueue, sql: &str) -> String {
        let sql = (1..=4).fold(sql.to_string(), |s, n| s.replace(&format!("${n}"), "?"));
        let params = sql.matches('?').count();
        let explain = format!("EXPLAIN QUERY PLAN {sql}");
        let Pool::Sqlite(pool) = q.db.pool().await.expect("pool") else {
            panic!("a SQLite queue")
        };
        let mut query = sqlx::query_as::<_, (i64, i64, i64, String)>(&explain);
        for _ in 0..params {
            query = query.bind(0_i64);
        }
        let rows = query.fetch_all(pool).await.expect("query plan");
        rows.into_iter().map(|r| r.3).collect::<Vec<_>>().join("\n")
    }

    /// A claim reads only unfinished tasks, in claim order, through the partial index: its cost
    /// does not grow with the number of finished tasks kept for their results. The reaper, run
    /// before every claim, reads only running tasks by lease end: its cost does not grow with the
    /// backlog either.
    #[tokio::test]
    async fn claims_and_the_reaper_use_their_partial_indexes() {
        let q = SqlQueue::open("sqlite::memory:", &Config::default())
            .await
            .expect("open");
        for (sql, index) in [
            (st::CANDIDATE, "tasks_claim"),
            (&q.claims.any, "tasks_claim"),
            (st::REAP, "tasks_lease"),
        ] {
            let plan = plan(&q, sql).await;
            assert!(
                plan.contains(&format!("USING INDEX {index}")),
                "{sql}\n{plan}"
            );
            assert!(!plan.contains("TEMP B-TREE"), "{sql}\n{plan}");
        }
    }

    /// PostgreSQL: every change commits as docs/queue.md ("Durability") says. A trigger on
    /// `tasks` records, inside the changing statement's own transaction, the
    /// `synchronous_commit` that transaction commits with: `off` only for the claims from the
    /// store and the lease renewals, `on` for everything a caller is told it can rely on (a
    /// submission, a result, a failure, a dead task, a release, a cancel, a re-queue) and for
    /// the RabbitMQ backend's claims by id.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_only_claims_and_lease_renewals_commit_without_waiting_for_the_log() {
        let Some(db) = common::testing::fresh_postgres("queue_commit").await else {
            return;
        };
        let q = SqlQueue::open(&db.url, &Config::default())
            .await
            .expect("open");
        q.ping().await.expect("the schema");
        // The test's own connection, with the server's default (`on`).
        let pool = sqlx::PgPool::connect(&db.url).await.expect("connect");
        sqlx::raw_sql(
            "CREATE TABLE commits (n BIGSERIAL PRIMARY KEY, change TEXT, mode TEXT);
             CREATE FUNCTION note_commit() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 INSERT INTO commits (change, mode) VALUES (
                     CASE TG_OP WHEN 'INSERT' THEN 'new>' || NEW.status
                                WHEN 'UPDATE' THEN OLD.status || '>' || NEW.status
                                ELSE OLD.status || '>gone' END,
                     current_setting('synchronous_commit'));
                 RETURN NULL;
             END $$;
             CREATE TRIGGER note_commit AFTER INSERT OR UPDATE OR DELETE ON tasks
                 FOR EACH ROW EXECUTE FUNCTION note_commit();",
        )
        .execute(&pool)
        .await
        .expect("the trigger");
        // The changes recorded since the last call, in order, as `from>to mode`.
        let seen = || async {
            sqlx::query_scalar::<_, String>(
                "WITH d AS (DELETE FROM commits RETURNING n, change, mode) \
                 SELECT change || ' ' || mode FROM d ORDER BY n",
            )
            .fetch_all(&pool)
            .await
            .expect("the recorded commits")
        };
        let set = |sql: &'static str| async {
            sqlx::query(sql).execute(&pool).await.expect(sql);
            seen().await
        };
        let new = |max_attempts: u32| NewTask {
            max_attempts: Some(max_attempts),
            ..NewTask::new("add", serde_json::json!({"a": 1, "b": 2}), "alice")
        };
        let (w, lease) = ("worker-1/1", Duration::from_secs(30));

        // A submission, then its repeat with the same key (which writes nothing).
        let keyed = || NewTask {
            idempotency_key: Some("k".into()),
            ..new(3)
        };
        let first = q.submit(keyed()).await.expect("submit");
        assert_eq!(seen().await, ["new>queued on"]);
        assert_eq!(q.submit(keyed()).await.expect("again").id, first.id);
        assert!(seen().await.is_empty());

        // A claim and the renewals are lax; the result is not.
        let t = q.claim(w, lease).await.expect("claim").expect("a task");
        assert_eq!(seen().await, ["queued>running off"]);
        q.heartbeat(&t.id, w, lease).await.expect("heartbeat");
        assert_eq!(seen().await, ["running>running off"]);
        q.progress(&t.id, w, serde_json::json!(0.5), lease)
            .await
            .expect("progress");
        assert_eq!(seen().await, ["running>running off"]);
        q.complete(&t.id, w, serde_json::json!(3))
            .await
            .expect("complete");
        assert_eq!(seen().await, ["running>succeeded on"]);

        // The same in batches.
        for _ in 0..2 {
            q.submit(new(3)).await.expect("submit");
        }
        seen().await;
        let batch = q.claim_batch(w, lease, 2).await.expect("claim a batch");
        assert_eq!(seen().await, ["queued>running off"; 2]);
        let results = batch
            .iter()
            .map(|t| (t.id.clone(), serde_json::json!(3)))
            .collect();
        for done in q.complete_batch(w, results).await.expect("complete") {
            done.expect("stored");
        }
        assert_eq!(seen().await, ["running>succeeded on"; 2]);

        // A failure with attempts left, its retry's claim (due at once), the last failure, a
        // re-queue, a release and a cancel.
        let t = q.submit(new(2)).await.expect("submit");
        q.claim(w, lease).await.expect("claim").expect("a task");
        seen().await;
        q.fail(&t.id, w, "boom").await.expect("fail");
        assert_eq!(seen().await, ["running>failed on"]);
        set("UPDATE tasks SET not_before = 0 WHERE status = 'failed'").await;
        assert_eq!(q.claim_due(w, lease, 1).await.expect("claim").len(), 1);
        assert_eq!(seen().await, ["failed>running off"]);
        q.fail(&t.id, w, "boom").await.expect("fail");
        assert_eq!(seen().await, ["running>dead on"]);
        q.requeue(&t.id).await.expect("requeue");
        assert_eq!(seen().await, ["dead>queued on"]);
        q.claim(w, lease).await.expect("claim").expect("a task");
        seen().await;
        q.release(&t.id, w).await.expect("release");
        assert_eq!(seen().await, ["running>queued on"]);
        q.cancel(&t.id).await.expect("cancel");
        assert_eq!(seen().await, ["queued>cancelled on"]);

        // A last attempt whose lease lapsed is made dead by the next claim, durably, before
        // that claim takes another task laxly.
        let last = q.submit(new(1)).await.expect("submit");
        q.claim(w, lease).await.expect("claim").expect("a task");
        set("UPDATE tasks SET lease_until = 0 WHERE status = 'running'").await;
        q.submit(new(3)).await.expect("submit");
        seen().await;
        let t = q.claim(w, lease).await.expect("claim").expect("a task");
        assert_ne!(t.id, last.id);
        assert_eq!(seen().await, ["running>dead on", "queued>running off"]);

        // The RabbitMQ backend's claim of delivered tasks, and its undone submission.
        let t = q.submit(new(3)).await.expect("submit");
        seen().await;
        assert_eq!(
            q.claim_ids(&[t.id], w, lease).await.expect("claim").len(),
            1
        );
        assert_eq!(seen().await, ["queued>running on"]);
        let t = q.submit(new(3)).await.expect("submit");
        seen().await;
        q.delete(&t.id).await.expect("delete");
        assert_eq!(seen().await, ["queued>gone on"]);

        // Retention.
        set("UPDATE tasks SET finished_at = 0 WHERE status IN ('succeeded', 'cancelled')").await;
        assert_eq!(q.prune(Duration::ZERO, 100).await.expect("prune"), 4);
        let pruned = seen().await;
        assert_eq!(pruned.len(), 4, "{pruned:?}");
        assert!(pruned.iter().all(|c| c.ends_with(">gone on")), "{pruned:?}");
        pool.close().await;
    }

    /// PostgreSQL: after a drain has left dead entries in `tasks_claim`, a claim still walks
    /// that index in order (an index scan, which marks the dead entries it passes so the next
    /// claim skips them), never a bitmap scan that reads every dead entry's row again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_postgres_claim_walks_the_claim_index_after_a_drain() {
        let Some(db) = common::testing::fresh_postgres("queue_plan").await else {
            return;
        };
        let q = SqlQueue::open(&db.url, &Config::default())
            .await
            .expect("open");
        // 20,000 tasks submitted, claimed and finished, set-wise (as a drain leaves them: each
        // row's queued and running versions dead in `tasks_claim`).
        let Pool::Postgres(pool) = q.db.pool().await.expect("pool") else {
            panic!("a PostgreSQL queue")
        };
        for sql in [
            "INSERT INTO tasks (id, kind, payload, status, priority, attempts, max_attempts, owner, \
             created_at, not_before) SELECT 't' || n, 'add', '{}', 'queued', 1, 0, 3, 'o', n, n \
             FROM generate_series(1, 20000) AS n",
            "UPDATE tasks SET status = 'running', worker_id = 'w', lease_until = 0, attempts = 1",
            "UPDATE tasks SET status = 'succeeded', finished_at = 1, lease_until = NULL",
        ] {
            sqlx::query(sql).execute(pool).await.expect(sql);
        }
        let explain = format!(
            "EXPLAIN {}",
            st::CANDIDATE.replace("$3", "0").replace("$4", "16")
        );
        let plan: Vec<String> = sqlx::query_scalar(&explain)
            .fetch_all(pool)
            .await
            .expect("plan");
        let plan = plan.join("\n");
        assert!(plan.contains("Index Scan using tasks_claim"), "{plan}");
        assert!(!plan.contains("Bitmap"), "{plan}");
    }

    /// PostgreSQL: the RabbitMQ backend's claim of due retries and lapsed leases, run before
    /// every claim of delivered tasks, reads a few pages however many tasks wait for their
    /// messages (it read all of them, about 300 pages for 20,000, and made the server the
    /// backend's bottleneck). With the plan PostgreSQL picks for the statement as sqlx runs it
    /// (prepared, then generic) and with a custom one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_postgres_due_claim_reads_a_few_pages_behind_any_backlog() {
        let Some(db) = common::testing::fresh_postgres("queue_due").await else {
            return;
        };
        let q = SqlQueue::open(&db.url, &Config::default())
            .await
            .expect("open");
        q.ping().await.expect("the schema");
        let Pool::Postgres(pool) = q.db.pool().await.expect("pool") else {
            panic!("a PostgreSQL queue")
        };
        let mut conn = pool.acquire().await.expect("a connection");
        for sql in [
            // The backlog: queued, each waiting for its broker message.
            "INSERT INTO tasks (id, kind, payload, status, priority, attempts, max_attempts, owner, \
             created_at, not_before) SELECT 'q' || n, 'add', '{}', 'queued', 1, 0, 3, 'o', n, 0 \
             FROM generate_series(1, 20000) AS n",
            // Running under live leases, and one retry not due yet.
            "INSERT INTO tasks (id, kind, payload, status, priority, attempts, max_attempts, owner, \
             created_at, not_before, lease_until) SELECT 'r' || n, 'add', '{}', 'running', 1, 1, \
             3, 'o', n, 0, 5000 FROM generate_series(1, 64) AS n",
            "INSERT INTO tasks (id, kind, payload, status, priority, attempts, max_attempts, owner, \
             created_at, not_before) VALUES ('f', 'add', '{}', 'failed', 1, 1, 3, 'o', 1, 5000)",
            "ANALYZE tasks",
        ] {
            sqlx::query(sql).execute(&mut *conn).await.expect(sql);
        }
        let due = st::CANDIDATE_DUE.replace("$3", "$1").replace("$4", "$2");
        sqlx::raw_sql(&format!(
            "PREPARE due(bigint, bigint) AS {due} FOR UPDATE SKIP LOCKED"
        ))
        .execute(&mut *conn)
        .await
        .expect("prepare");
        for mode in ["force_custom_plan", "force_generic_plan"] {
            sqlx::raw_sql(&format!("SET plan_cache_mode = {mode}"))
                .execute(&mut *conn)
                .await
                .expect("set");
            // Nothing due at 1,000: a few pages. At 6,000 the retry and every lease are due
            // (the pages then grow with the tasks due, not with the backlog).
            for (now, found) in [(1000, 0), (6000, 16)] {
                let explain: Value = sqlx::query_scalar(&format!(
                    "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE due({now}, 16)"
                ))
                .fetch_one(&mut *conn)
                .await
                .expect("explain");
                let top = &explain[0]["Plan"];
                let pages = top["Shared Hit Blocks"].as_u64().unwrap_or(0)
                    + top["Shared Read Blocks"].as_u64().unwrap_or(0);
                assert_eq!(
                    top["Actual Rows"].as_u64(),
                    Some(found),
                    "{mode} {now}: {explain}"
                );
                if found == 0 {
                    assert!(pages < 60, "{mode} at {now}: {pages} pages\n{explain:#}");
                }
            }
        }
    }
}
