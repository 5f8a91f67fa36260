//! The durable task queue: tasks kept until they are done, claimed by workers under a lease,
//! retried with exponential backoff and jitter, and `dead` once out of attempts.
//!
//! [`Queue`] is the one trait every backend implements: [`SqlQueue`] (SQLite, embedded and the
//! default, or PostgreSQL, through `common::sql`) and [`RabbitQueue`] (deliveries through
//! RabbitMQ with the state in a [`SqlQueue`] on PostgreSQL); [`open`] picks one from a
//! [`Config`]. [`Task`] is the record every caller sees (`task.rs`). [`types`] is the registry of
//! task types and their payload checks, shared by the gateway (which refuses bad submissions) and
//! the worker (which runs them), so that neither depends on the other.
//!
//! Start reading at [`Queue`] (the semantics, method by method), then `sql.rs` (the store and its
//! claim, the one place where the engines differ) and `statements.rs` (every statement, with the
//! precondition in its `WHERE`), then `docs/queue.md` for the guarantees. The conformance suite in
//! `tests/conformance.rs` runs the same tests against every backend.

mod config;
mod doorbell;
mod error;
mod rabbitmq;
mod sql;
mod statements;
mod task;
pub mod types;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

pub use config::{Backoff, Config, MAX_ATTEMPTS};
pub use error::Error;
pub use rabbitmq::RabbitQueue;
pub use sql::SqlQueue;
pub use task::{ListQuery, NewTask, Page, Priority, Stats, Status, Task};

/// Opens the queue `config` names, creating its table if needed. A PostgreSQL queue connects on
/// first use, so that a gateway starts (and answers `503`) while the database is down.
pub async fn open(config: &Config) -> Result<Arc<dyn Queue>, Error> {
    config.check()?;
    if let Some(amqp_url) = config.amqp_url.as_deref() {
        let q = RabbitQueue::connect(amqp_url, &config.amqp_queue, config, None).await?;
        return Ok(Arc::new(q));
    }
    match config.url.as_deref() {
        None => Ok(Arc::new(
            SqlQueue::open_file(&config.data_dir.join("queue.sqlite"), config).await?,
        )),
        Some(url) => Ok(Arc::new(SqlQueue::open(url, config).await?)),
    }
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

    /// Up to `n` of the most urgent claimable tasks, in claim order, each `running` for
    /// `worker_id` under its own lease (as [`claim`](Queue::claim) gives one). A caller that
    /// holds tasks before running them (a prefetch buffer) renews their leases meanwhile. The
    /// default claims them one by one; the SQL store takes them in one statement.
    async fn claim_batch(
        &self,
        worker_id: &str,
        lease: Duration,
        n: usize,
    ) -> Result<Vec<Task>, Error> {
        let mut tasks = Vec::new();
        while tasks.len() < n {
            match self.claim(worker_id, lease).await? {
                Some(t) => tasks.push(t),
                None => break,
            }
        }
        Ok(tasks)
    }

    /// [`complete`](Queue::complete) for several tasks `worker_id` holds: one outcome per task,
    /// in order, each stored (durable) by the time this returns. The default completes them one
    /// by one; the SQL store does it in one transaction.
    async fn complete_batch(
        &self,
        worker_id: &str,
        results: Vec<(String, Value)>,
    ) -> Result<Vec<Result<Task, Error>>, Error> {
        let mut out = Vec::with_capacity(results.len());
        for (id, result) in results {
            out.push(self.complete(&id, worker_id, result).await);
        }
        Ok(out)
    }

    /// Waits until a submission may have made work claimable, or `timeout` passes, whichever
    /// comes first (a hint, never a promise: a caller claims after it either way). One
    /// submission wakes one waiting claimer, not all of them, and a submission made while no
    /// claimer waits (between a claimer's empty claim and its wait) ends the next wait at once.
    /// The default just waits `timeout` (polling).
    async fn wait_for_work(&self, timeout: Duration) {
        tokio::time::sleep(timeout).await;
    }

    /// Tells one other waiting claimer that there may be more work: a claimer whose claim came
    /// back full calls it, so that a burst of submissions spreads over idle claimers one by one
    /// (each woken claimer that finds work wakes the next) instead of every submission waking
    /// them all. The default does nothing (its claimers poll).
    fn more_work(&self) {}

    /// Tells the queue the most tasks this process's claimers hold at once (a worker: its slots
    /// times the tasks each claims at once), before they first claim. A backend that fetches
    /// work ahead of the claims sizes that read-ahead from it: RabbitMQ's consumer prefetch is
    /// twice this (the deliveries of held tasks stay unacked and count against it). The default
    /// ignores it.
    fn set_claim_capacity(&self, tasks: usize) {
        let _ = tasks;
    }

    /// Tells the queue that this process claims no more (a worker shutting down), so that work
    /// it fetched ahead of a claim goes back at once for other processes to claim: RabbitMQ's
    /// consumer is cancelled and its buffered deliveries requeued. Tasks already claimed are
    /// untouched (finish or [`release`](Queue::release) them); later claims take only what the
    /// store hands out itself. The default does nothing (nothing is fetched ahead).
    async fn stop_claiming(&self) {}

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

    /// Deletes up to `limit` `succeeded` or `cancelled` tasks that finished more than `age` ago;
    /// how many it deleted. The default keeps everything.
    async fn prune(&self, age: Duration, limit: usize) -> Result<u64, Error> {
        let _ = (age, limit);
        Ok(0)
    }

    /// Checks that the store answers.
    async fn ping(&self) -> Result<(), Error>;
}
