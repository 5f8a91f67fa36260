//! The durable task queue: tasks kept until they are done, claimed by workers under a lease,
//! retried with exponential backoff and jitter, and `dead` once out of attempts.
//!
//! [`Queue`] is the one trait every backend implements ([`SqliteQueue`], embedded and the default,
//! [`PostgresQueue`], `SELECT ... FOR UPDATE SKIP LOCKED`, and [`RabbitQueue`], deliveries through
//! RabbitMQ with the state in PostgreSQL); [`open`] picks one from a
//! [`Config`]. [`Task`] is the record every caller sees. [`types`] is the registry of task types
//! and their payload checks, shared by the gateway (which refuses bad submissions) and the worker
//! (which runs them), so that neither depends on the other.
//!
//! Start reading at [`Queue`] (the semantics, method by method), then `sqlite.rs`, then
//! `docs/queue.md` for the guarantees. The conformance suite in `tests/conformance.rs` runs the
//! same tests against every backend.

mod error;
mod postgres;
mod rabbitmq;
mod shared;
mod sqlite;
pub mod types;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use error::Error;
pub use postgres::PostgresQueue;
pub use rabbitmq::RabbitQueue;
pub use sqlite::SqliteQueue;

/// The `[queue]` section of the topology file: where the tasks live and how failures retry.
/// Gateways (which submit) and workers (which run) must name the same store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where tasks live. Absent: SQLite in `<data_dir>/queue.sqlite`, shared by every process of
    /// one machine. `postgres://user@host:port/db`: PostgreSQL (several machines).
    /// `sqlite:path`: SQLite at that path.
    pub url: Option<String>,
    /// RabbitMQ (`amqp://guest:guest@127.0.0.1:5672/%2f`): tasks are delivered through it in
    /// priority order, and their state and results stay in `url`, which must then be PostgreSQL.
    pub amqp_url: Option<String>,
    /// The RabbitMQ work queue's name (its dead-letter exchange is `<name>.dlx`, bound to the
    /// queue `<name>.dead`).
    pub amqp_queue: String,
    /// The directory for the SQLite file; set by `scalelab` from `--data-dir`, not by this section.
    #[serde(skip)]
    pub data_dir: PathBuf,
    /// Attempts a task gets when its submission does not say (the first run counts).
    pub max_attempts: u32,
    /// The wait before the first retry, in milliseconds; it doubles with every further failure.
    pub retry_base_ms: u64,
    /// The longest wait between two attempts, in milliseconds.
    pub retry_max_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            url: None,
            amqp_url: None,
            amqp_queue: "scalelab.tasks".into(),
            data_dir: PathBuf::from("data"),
            max_attempts: 3,
            retry_base_ms: 1000,
            retry_max_ms: 60_000,
        }
    }
}

impl Config {
    /// Refuses settings the queue cannot honour.
    pub fn validate(&self) -> Result<(), Error> {
        if self.max_attempts == 0 || self.max_attempts > MAX_ATTEMPTS {
            return Err(Error::Config(format!(
                "max_attempts must be 1 to {MAX_ATTEMPTS}; got {}",
                self.max_attempts
            )));
        }
        if self.retry_base_ms == 0 || self.retry_max_ms < self.retry_base_ms {
            return Err(Error::Config(
                "retry_base_ms must be at least 1 and retry_max_ms at least retry_base_ms".into(),
            ));
        }
        Ok(())
    }

    /// The backoff these settings describe.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            base: Duration::from_millis(self.retry_base_ms),
            max: Duration::from_millis(self.retry_max_ms),
        }
    }
}

/// The most attempts a task may ask for.
pub const MAX_ATTEMPTS: u32 = 25;

/// Opens the queue `config` names, creating its table if needed. A PostgreSQL queue connects on
/// first use, so that a gateway starts (and answers `503`) while the database is down.
pub async fn open(config: &Config) -> Result<Arc<dyn Queue>, Error> {
    config.validate()?;
    if let Some(amqp_url) = config.amqp_url.as_deref() {
        let q = RabbitQueue::connect(amqp_url, &config.amqp_queue, config, None).await?;
        return Ok(Arc::new(q));
    }
    match config.url.as_deref() {
        None => {
            tokio::fs::create_dir_all(&config.data_dir).await?;
            let path = config.data_dir.join("queue.sqlite");
            Ok(Arc::new(SqliteQueue::open(&path, config).await?))
        }
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Ok(Arc::new(PostgresQueue::connect_lazy(url, config)?))
        }
        Some(url) if url.starts_with("sqlite:") => {
            Ok(Arc::new(SqliteQueue::open_url(url, config).await?))
        }
        Some(_) => Err(Error::Config(
            "queue url must start with postgres://, postgresql:// or sqlite:".into(),
        )),
    }
}

/// Exponential backoff with jitter: attempt `n` (1-based) waits a random time between half and
/// all of `base * 2^(n-1)`, at most `max`. The jitter keeps tasks that failed together (a peer
/// was down) from retrying together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The wait after the first failure (before jitter).
    pub base: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Backoff {
    /// The wait after the `attempt`-th failed attempt.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let full = self
            .base
            .saturating_mul(1u32 << exp)
            .min(self.max)
            .as_millis() as u64;
        let half = full / 2;
        let jitter = if full > half {
            rand::Rng::gen_range(&mut rand::thread_rng(), 0..=full - half)
        } else {
            0
        };
        Duration::from_millis(half + jitter)
    }
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting for a worker.
    Queued,
    /// A worker holds it under a lease.
    Running,
    /// Done; `result` holds the answer.
    Succeeded,
    /// The last attempt failed; it runs again after its backoff (`error` says why).
    Failed,
    /// Out of attempts; `error` holds the last error. An admin can re-queue it.
    Dead,
    /// Cancelled while queued; it never runs.
    Cancelled,
}

impl Status {
    /// Every status, in the order of a task's life.
    pub const ALL: [Status; 6] = [
        Status::Queued,
        Status::Running,
        Status::Succeeded,
        Status::Failed,
        Status::Dead,
        Status::Cancelled,
    ];

    /// The name used in JSON and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Dead => "dead",
            Status::Cancelled => "cancelled",
        }
    }

    /// Whether the task will never change again by itself (a dead task only by an admin).
    pub fn is_final(self) -> bool {
        matches!(self, Status::Succeeded | Status::Dead | Status::Cancelled)
    }

    fn parse(s: &str) -> Result<Status, Error> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| Error::Corrupt(format!("unknown status {s:?} in the store")))
    }
}

impl std::str::FromStr for Status {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                Error::InvalidQuery(format!(
                    "unknown status {s:?}; one of queued, running, succeeded, failed, dead, cancelled"
                ))
            })
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which tasks run first: every `high` task before any `normal` one, every `normal` before any
/// `low`; first in, first out within one priority.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Runs first.
    High,
    /// The default.
    #[default]
    Normal,
    /// Runs when nothing else waits.
    Low,
}

impl Priority {
    /// Every priority, most urgent first.
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    /// The name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }

    /// The stored rank: claims order by it, ascending.
    fn rank(self) -> i64 {
        match self {
            Priority::High => 0,
            Priority::Normal => 1,
            Priority::Low => 2,
        }
    }

    fn from_rank(rank: i64) -> Result<Priority, Error> {
        Priority::ALL
            .into_iter()
            .find(|p| p.rank() == rank)
            .ok_or_else(|| Error::Corrupt(format!("unknown priority rank {rank} in the store")))
    }
}

impl std::str::FromStr for Priority {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                Error::InvalidPriority(format!("unknown priority {s:?}; one of high, normal, low"))
            })
    }
}

/// One task, as stored and as answered by `GET /tasks/{id}`. Times are milliseconds since the
/// Unix epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Unique, time-ordered (UUID v7).
    pub id: String,
    /// The handler that runs it (see [`types`]).
    #[serde(rename = "type")]
    pub kind: String,
    /// The handler's input.
    pub payload: Value,
    /// Where it is in its life.
    pub status: Status,
    /// Its priority.
    pub priority: Priority,
    /// Attempts started so far (a claim starts one).
    pub attempts: u32,
    /// Attempts it gets before it is `dead`.
    pub max_attempts: u32,
    /// The handler's answer once `succeeded`.
    pub result: Option<Value>,
    /// The last error (after a failed attempt, a lapsed lease, or when `dead`).
    pub error: Option<String>,
    /// The last progress report of the worker running it.
    pub progress: Option<Value>,
    /// Who submitted it (a user id); only they and admins see it.
    pub owner: String,
    /// The submitter's idempotency key, if any.
    pub idempotency_key: Option<String>,
    /// When it was submitted.
    pub created_at: i64,
    /// When its latest attempt started.
    pub started_at: Option<i64>,
    /// When it reached a final status.
    pub finished_at: Option<i64>,
    /// The worker (slot) holding or last holding it.
    pub worker_id: Option<String>,
    /// Not claimable before this time (the backoff of a failed attempt).
    pub not_before: i64,
    /// Until when the holder's lease runs, while `running`.
    pub lease_until: Option<i64>,
}

/// A submission.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    /// The task type (checked by the caller with [`types::validate`]).
    pub kind: String,
    /// The handler's input.
    pub payload: Value,
    /// Its priority.
    pub priority: Priority,
    /// The submitter.
    pub owner: String,
    /// A retried submission with the same owner and key returns the first task.
    pub idempotency_key: Option<String>,
    /// Attempts before `dead`; the queue's default when `None`.
    pub max_attempts: Option<u32>,
}

impl NewTask {
    /// A `normal` task of `kind` for `owner`, without idempotency key.
    pub fn new(kind: &str, payload: Value, owner: &str) -> Self {
        Self {
            kind: kind.to_string(),
            payload,
            priority: Priority::Normal,
            owner: owner.to_string(),
            idempotency_key: None,
            max_attempts: None,
        }
    }
}

/// A page request of [`Queue::list`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListQuery {
    /// Only this owner's tasks (`None`: everyone's, for admins).
    pub owner: Option<String>,
    /// Only tasks in this status.
    pub status: Option<Status>,
    /// Only tasks of this type.
    pub kind: Option<String>,
    /// At most this many (1 to 500).
    pub limit: u32,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// One page of tasks, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page {
    /// The tasks.
    pub tasks: Vec<Task>,
    /// Pass it as `cursor` for the next page; `None` on the last one.
    pub next_cursor: Option<String>,
}

/// The queue's counts (`GET /tasks/stats`, the workers' gauges).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Tasks by status (every status present, zero included).
    pub by_status: BTreeMap<String, u64>,
    /// Tasks waiting to run (`queued`, or `failed` and waiting for their retry) by priority.
    pub depth_by_priority: BTreeMap<String, u64>,
    /// The engine's name.
    pub backend: String,
}

/// The task store and its operations. Every method is atomic: a caller that gets an error has
/// changed nothing.
///
/// Life of a task: [`submit`](Queue::submit) makes it `queued`; [`claim`](Queue::claim) gives it
/// to one worker under a lease (`running`); the worker renews the lease with
/// [`heartbeat`](Queue::heartbeat) or [`progress`](Queue::progress) and ends with
/// [`complete`](Queue::complete) (`succeeded`), [`fail`](Queue::fail) (`failed` until its
/// backoff passes, or `dead`), or [`release`](Queue::release) (back to `queued`, at shutdown).
/// A lease that lapses makes the task claimable again, and the late holder's calls are refused
/// with [`Error::LeaseLost`]: a result is recorded once, by the current holder.
#[async_trait::async_trait]
pub trait Queue: Send + Sync + fmt::Debug {
    /// The engine's name (`sqlite`, `postgres`).
    fn backend(&self) -> &'static str;

    /// Stores a new `queued` task, or returns the existing one when `owner` already submitted
    /// one with the same idempotency key.
    async fn submit(&self, task: NewTask) -> Result<Task, Error>;

    /// The most urgent claimable task, now `running` for `worker_id` until `lease` passes, with
    /// one more attempt counted. Claimable: `queued`, or `failed` with its backoff over, or
    /// `running` with a lapsed lease and attempts left. Highest priority first, then oldest.
    async fn claim(&self, worker_id: &str, lease: Duration) -> Result<Option<Task>, Error>;

    /// Renews the lease of a task `worker_id` holds. [`Error::LeaseLost`] when it no longer does.
    async fn heartbeat(&self, id: &str, worker_id: &str, lease: Duration) -> Result<(), Error>;

    /// Records progress of a task `worker_id` holds and renews its lease.
    async fn progress(
        &self,
        id: &str,
        worker_id: &str,
        progress: Value,
        lease: Duration,
    ) -> Result<(), Error>;

    /// Stores the result and marks the task `succeeded`, in one statement, if `worker_id` still
    /// holds it; [`Error::LeaseLost`] otherwise (and nothing is written).
    async fn complete(&self, id: &str, worker_id: &str, result: Value) -> Result<Task, Error>;

    /// Records a failed attempt of a task `worker_id` holds: `failed` with a backoff before the
    /// next attempt, or `dead` when it has had all its attempts.
    async fn fail(&self, id: &str, worker_id: &str, error: &str) -> Result<Task, Error>;

    /// Gives a held task back without counting the attempt (a worker shutting down).
    async fn release(&self, id: &str, worker_id: &str) -> Result<(), Error>;

    /// Cancels a task waiting to run (`queued` or `failed`); [`Error::Conflict`] when it is
    /// running or finished.
    async fn cancel(&self, id: &str) -> Result<Task, Error>;

    /// Puts a `dead` task back in the queue with fresh attempts; [`Error::Conflict`] otherwise.
    async fn requeue(&self, id: &str) -> Result<Task, Error>;

    /// The task with this id.
    async fn get(&self, id: &str) -> Result<Option<Task>, Error>;

    /// A page of tasks, newest first.
    async fn list(&self, query: &ListQuery) -> Result<Page, Error>;

    /// Counts by status and depth by priority.
    async fn stats(&self) -> Result<Stats, Error>;

    /// Checks that the store answers.
    async fn ping(&self) -> Result<(), Error>;
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    common::now_ms() as i64
}

/// A duration in milliseconds, for arithmetic on stored times.
pub(crate) fn ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

/// The page size actually used.
pub(crate) fn page_limit(limit: u32) -> i64 {
    i64::from(limit.clamp(1, 500))
}

/// The store's cursor: the sequence number of the last task of the previous page.
pub(crate) fn parse_cursor(cursor: Option<&str>) -> Result<Option<i64>, Error> {
    cursor
        .map(|c| {
            c.parse::<i64>()
                .map_err(|_| Error::InvalidQuery("cursor is not one this server gave".into()))
        })
        .transpose()
}

/// Fills the zero counts so that every status and priority is always present.
pub(crate) fn complete_stats(stats: &mut Stats) {
    for s in Status::ALL {
        stats.by_status.entry(s.as_str().to_string()).or_insert(0);
    }
    for p in Priority::ALL {
        stats
            .depth_by_priority
            .entry(p.as_str().to_string())
            .or_insert(0);
    }
}

/// A row as both engines return it (the same columns, the same text).
pub(crate) struct Row {
    pub(crate) id: String,
    pub(crate) kind: String,
    pub(crate) payload: String,
    pub(crate) status: String,
    pub(crate) priority: i64,
    pub(crate) attempts: i64,
    pub(crate) max_attempts: i64,
    pub(crate) result: Option<String>,
    pub(crate) error: Option<String>,
    pub(crate) progress: Option<String>,
    pub(crate) owner: String,
    pub(crate) idempotency_key: Option<String>,
    pub(crate) created_at: i64,
    pub(crate) started_at: Option<i64>,
    pub(crate) finished_at: Option<i64>,
    pub(crate) worker_id: Option<String>,
    pub(crate) not_before: i64,
    pub(crate) lease_until: Option<i64>,
}

/// The columns of [`Row`], in order, for `SELECT` and `RETURNING`.
pub(crate) const COLUMNS: &str = "id, kind, payload, status, priority, attempts, max_attempts, \
    result, error, progress, owner, idempotency_key, created_at, started_at, finished_at, \
    worker_id, not_before, lease_until";

/// Reads a [`Row`] from an sqlx row of either engine (the same column names and types).
macro_rules! read_row {
    ($row:expr) => {{
        use sqlx::Row as _;
        let row = $row;
        (|| -> Result<$crate::Row, sqlx::Error> {
            Ok($crate::Row {
                id: row.try_get("id")?,
                kind: row.try_get("kind")?,
                payload: row.try_get("payload")?,
                status: row.try_get("status")?,
                priority: row.try_get("priority")?,
                attempts: row.try_get("attempts")?,
                max_attempts: row.try_get("max_attempts")?,
                result: row.try_get("result")?,
                error: row.try_get("error")?,
                progress: row.try_get("progress")?,
                owner: row.try_get("owner")?,
                idempotency_key: row.try_get("idempotency_key")?,
                created_at: row.try_get("created_at")?,
                started_at: row.try_get("started_at")?,
                finished_at: row.try_get("finished_at")?,
                worker_id: row.try_get("worker_id")?,
                not_before: row.try_get("not_before")?,
                lease_until: row.try_get("lease_until")?,
            })
        })()
    }};
}
pub(crate) use read_row;

impl Row {
    pub(crate) fn into_task(self) -> Result<Task, Error> {
        let json = |what: &str, text: &str| {
            serde_json::from_str::<Value>(text)
                .map_err(|e| Error::Corrupt(format!("{what} of task {} is not JSON: {e}", self.id)))
        };
        Ok(Task {
            payload: json("payload", &self.payload)?,
            result: self
                .result
                .as_deref()
                .map(|t| json("result", t))
                .transpose()?,
            progress: self
                .progress
                .as_deref()
                .map(|t| json("progress", t))
                .transpose()?,
            status: Status::parse(&self.status)?,
            priority: Priority::from_rank(self.priority)?,
            attempts: u32::try_from(self.attempts).unwrap_or(0),
            max_attempts: u32::try_from(self.max_attempts).unwrap_or(0),
            error: self.error,
            owner: self.owner,
            idempotency_key: self.idempotency_key,
            created_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
            worker_id: self.worker_id,
            not_before: self.not_before,
            lease_until: self.lease_until,
            kind: self.kind,
            id: self.id,
        })
    }
}

/// `Ok` when a holder's statement changed the row; [`Error::LeaseLost`] when it matched nothing.
pub(crate) fn held(rows: u64, id: &str, worker_id: &str) -> Result<(), Error> {
    if rows == 1 {
        Ok(())
    } else {
        Err(Error::LeaseLost {
            id: id.to_string(),
            worker_id: worker_id.to_string(),
        })
    }
}

/// Why a status-guarded change matched nothing: no such task, or it is in another status.
pub(crate) async fn refusal<Q: Queue + ?Sized>(
    queue: &Q,
    id: &str,
    action: &'static str,
    needs: &'static str,
) -> Error {
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
pub(crate) fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The attempts a submission gets, checked.
pub(crate) fn attempts_of(task: &NewTask, default: u32) -> Result<i64, Error> {
    let n = task.max_attempts.unwrap_or(default);
    if n == 0 || n > MAX_ATTEMPTS {
        return Err(Error::InvalidPayload(format!(
            "max_attempts must be 1 to {MAX_ATTEMPTS}; got {n}"
        )));
    }
    Ok(i64::from(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_a_ceiling() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_millis(1000),
        };
        for _ in 0..50 {
            let d1 = b.delay(1).as_millis();
            assert!((50..=100).contains(&d1), "{d1}");
            let d3 = b.delay(3).as_millis();
            assert!((200..=400).contains(&d3), "{d3}");
            let d9 = b.delay(9).as_millis();
            assert!((500..=1000).contains(&d9), "{d9}");
        }
    }

    #[test]
    fn names_parse_and_print() {
        for s in Status::ALL {
            assert_eq!(s.as_str().parse::<Status>().unwrap(), s);
        }
        assert!("done".parse::<Status>().is_err());
        assert_eq!("high".parse::<Priority>().unwrap(), Priority::High);
        assert!(matches!(
            "urgent".parse::<Priority>(),
            Err(Error::InvalidPriority(_))
        ));
    }
}
