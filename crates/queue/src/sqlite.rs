//! The embedded engine: one SQLite file in WAL mode, shared by the gateways and workers of one
//! machine. A claim runs in an `IMMEDIATE` transaction: it takes the file's write lock before
//! reading, so two processes can never pick the same task.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};

use crate::shared::{self, queue_impl};
use crate::{Config, Error, Task};

const SCHEMA: &str = "
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
";

/// Tasks in a SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteQueue {
    pool: SqlitePool,
    /// Default attempts and the backoff.
    config: Config,
    /// The claim statement (built once).
    claim: String,
}

impl SqliteQueue {
    /// Opens (creating if needed) the queue file at `path`.
    pub async fn open(path: &Path, config: &Config) -> Result<Self, Error> {
        Self::with_options(SqliteConnectOptions::new().filename(path), config).await
    }

    /// Opens a `sqlite:` URL (`sqlite:data/queue.sqlite`, `sqlite::memory:` ...).
    pub async fn open_url(url: &str, config: &Config) -> Result<Self, Error> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| Error::Config(format!("bad sqlite URL: {e}")))?;
        Self::with_options(options, config).await
    }

    async fn with_options(options: SqliteConnectOptions, config: &Config) -> Result<Self, Error> {
        config.validate()?;
        let pool = common::sqlite::open_shared(options, 8, SCHEMA, Duration::from_secs(15)).await?;
        Ok(Self {
            pool,
            config: config.clone(),
            claim: shared::claim(shared::CANDIDATE),
        })
    }

    async fn pool(&self) -> Result<&SqlitePool, Error> {
        Ok(&self.pool)
    }
}

impl SqliteQueue {
    /// The engine's claim (see [`Queue::claim`]).
    async fn claim_one(&self, worker_id: &str, lease: Duration) -> Result<Option<Task>, Error> {
        let now = crate::now_ms();
        // IMMEDIATE: the write lock is taken before the candidate is read, so no other process
        // can claim between the read and the update.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(shared::REAP)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query(&self.claim)
            .bind(worker_id)
            .bind(now + crate::ms(lease))
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        row.map(|row| crate::read_row!(&row)?.into_task())
            .transpose()
    }
}

queue_impl!(SqliteQueue, "sqlite");

#[cfg(test)]
mod tests {
    use super::*;

    /// `EXPLAIN QUERY PLAN` of `sql` (its `$N` parameters all bound to 0), one line per step.
    async fn plan(q: &SqliteQueue, sql: &str) -> String {
        let sql = (1..=4).fold(sql.to_string(), |s, n| s.replace(&format!("${n}"), "?"));
        let params = sql.matches('?').count();
        let explain = format!("EXPLAIN QUERY PLAN {sql}");
        let mut query = sqlx::query_as::<_, (i64, i64, i64, String)>(&explain);
        for _ in 0..params {
            query = query.bind(0_i64);
        }
        let rows = query.fetch_all(&q.pool).await.expect("query plan");
        rows.into_iter().map(|r| r.3).collect::<Vec<_>>().join("\n")
    }

    /// A claim reads only unfinished tasks, in claim order, through the partial index: its cost
    /// does not grow with the number of finished tasks kept for their results.
    #[tokio::test]
    async fn claims_and_the_reaper_use_the_claim_index() {
        let q = SqliteQueue::open_url("sqlite::memory:", &Config::default())
            .await
            .expect("open");
        for sql in [shared::CANDIDATE, shared::REAP, &q.claim] {
            let plan = plan(&q, sql).await;
            assert!(plan.contains("USING INDEX tasks_claim"), "{sql}\n{plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{sql}\n{plan}");
        }
    }
}
