//! PostgreSQL, for several machines: a claim locks its candidate row with
//! `SELECT ... FOR UPDATE SKIP LOCKED`, so concurrent claimers skip each other's rows instead of
//! waiting on them, and never take the same one.
//!
//! The pool connects on first use and the table is created then: a gateway starts while the
//! database is down, answers `503 queue_unavailable`, and works as soon as it is back.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use tokio::sync::OnceCell;

use crate::shared::{self, queue_impl};
use crate::{Config, Error, Task};

const SCHEMA: &str = "
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
";

/// Tasks in a PostgreSQL database.
#[derive(Debug)]
pub struct PostgresQueue {
    pool: PgPool,
    /// Set once the table exists.
    schema: OnceCell<()>,
    /// Default attempts and the backoff.
    config: Config,
    /// The claim statement (built once).
    claim: String,
    /// The RabbitMQ backend's claims: due retries and lapsed leases, and one task by id.
    claim_due: String,
    claim_id: String,
}

impl PostgresQueue {
    /// A queue on the database at `url`; connects (and creates the table) on first use.
    pub fn connect_lazy(url: &str, config: &Config) -> Result<Self, Error> {
        config.validate()?;
        let options: PgConnectOptions = url
            .parse()
            .map_err(|e| Error::Config(format!("bad PostgreSQL URL: {e}")))?;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy_with(options);
        Ok(Self {
            pool,
            schema: OnceCell::new(),
            config: config.clone(),
            claim: shared::claim(&format!("{} FOR UPDATE SKIP LOCKED", shared::CANDIDATE)),
            claim_due: shared::claim(&format!("{} FOR UPDATE SKIP LOCKED", shared::CANDIDATE_DUE)),
            claim_id: shared::claim(&format!("{} FOR UPDATE SKIP LOCKED", shared::CANDIDATE_ID)),
        })
    }

    /// The pool, once the table exists (created on the first call that reaches the database).
    async fn pool(&self) -> Result<&PgPool, Error> {
        self.schema
            .get_or_try_init(|| create_schema(self.pool.clone()))
            .await?;
        Ok(&self.pool)
    }
}

/// Creates the table and its indexes if needed.
async fn create_schema(pool: PgPool) -> Result<(), Error> {
    // One simple query is one transaction. Two processes creating the table at once can collide
    // on the catalog; the advisory lock makes them take turns.
    let script = format!("SELECT pg_advisory_xact_lock(7262537);{SCHEMA}");
    sqlx::raw_sql(&script).execute(&pool).await?;
    Ok(())
}

impl PostgresQueue {
    /// The engine's claim (see [`Queue::claim`]).
    async fn claim_one(&self, worker_id: &str, lease: Duration) -> Result<Option<Task>, Error> {
        self.claim_with(&self.claim, worker_id, lease, None).await
    }

    /// Marks dead the lapsed last attempts, then runs the claim statement `sql`.
    async fn claim_with(
        &self,
        sql: &str,
        worker_id: &str,
        lease: Duration,
        id: Option<&str>,
    ) -> Result<Option<Task>, Error> {
        let pool = self.pool().await?;
        let now = crate::now_ms();
        sqlx::query(shared::REAP).bind(now).execute(pool).await?;
        let mut query = sqlx::query(sql)
            .bind(worker_id)
            .bind(now + crate::ms(lease))
            .bind(now);
        if let Some(id) = id {
            query = query.bind(id);
        }
        let row = query.fetch_optional(pool).await?;
        row.map(|row| crate::read_row!(&row)?.into_task())
            .transpose()
    }

    /// Claims a due retry or a task whose lease lapsed (not fresh tasks).
    pub(crate) async fn claim_due(
        &self,
        worker_id: &str,
        lease: Duration,
    ) -> Result<Option<Task>, Error> {
        self.claim_with(&self.claim_due, worker_id, lease, None)
            .await
    }

    /// Claims the task `id` if it is queued.
    pub(crate) async fn claim_id(
        &self,
        id: &str,
        worker_id: &str,
        lease: Duration,
    ) -> Result<Option<Task>, Error> {
        self.claim_with(&self.claim_id, worker_id, lease, Some(id))
            .await
    }

    /// Stores a submission; `true` when it is new (`false`: the idempotency key's first task).
    pub(crate) async fn insert(&self, task: crate::NewTask) -> Result<(Task, bool), Error> {
        let pool = self.pool().await?;
        let max_attempts = crate::attempts_of(&task, self.config.max_attempts)?;
        let inserted = sqlx::query(&shared::returning(shared::INSERT))
            .bind(crate::new_id())
            .bind(&task.kind)
            .bind(task.payload.to_string())
            .bind(task.priority.rank())
            .bind(max_attempts)
            .bind(&task.owner)
            .bind(task.idempotency_key.as_deref())
            .bind(crate::now_ms())
            .fetch_optional(pool)
            .await?;
        match inserted {
            Some(row) => Ok((crate::read_row!(&row)?.into_task()?, true)),
            None => {
                let row = sqlx::query(&shared::select_by_key())
                    .bind(&task.owner)
                    .bind(task.idempotency_key.as_deref())
                    .fetch_one(pool)
                    .await?;
                Ok((crate::read_row!(&row)?.into_task()?, false))
            }
        }
    }

    /// Deletes a task that was never announced (a submission undone).
    pub(crate) async fn delete(&self, id: &str) -> Result<(), Error> {
        let pool = self.pool().await?;
        sqlx::query("DELETE FROM tasks WHERE id = $1 AND status = 'queued'")
            .bind(id)
            .execute(pool)
            .await?;
        Ok(())
    }
}

queue_impl!(PostgresQueue, "postgres");
