//! What both SQL engines share: the statements (written once, with `$N` parameters, which SQLite
//! and PostgreSQL both accept) and the [`Queue`](crate::Queue) methods whose code is the same for
//! either pool (the `impl Queue` of each engine is [`queue_impl`], around the engine's own claim).
//!
//! A task's row is changed only by single statements whose `WHERE` states the precondition
//! (`status = 'running' AND worker_id = $2` for a holder's calls), so that a late worker, a
//! concurrent cancel or a second gateway can never half-apply a change: the statement matches,
//! or it changes nothing and the caller is told why.

/// Inserts a task; `ON CONFLICT DO NOTHING` makes a repeated idempotency key return no row.
pub(crate) const INSERT: &str = "INSERT INTO tasks (id, kind, payload, status, priority, attempts, \
    max_attempts, owner, idempotency_key, created_at, not_before) \
    VALUES ($1, $2, $3, 'queued', $4, 0, $5, $6, $7, $8, $8) \
    ON CONFLICT (owner, idempotency_key) DO NOTHING";

/// Marks `dead` the running tasks whose lease lapsed on their last attempt (their worker died
/// with no attempt left), so that they are not redelivered for ever.
pub(crate) const REAP: &str = "UPDATE tasks SET status = 'dead', finished_at = $1, lease_until = NULL, \
    error = 'the lease of ' || COALESCE(worker_id, 'a worker') || ' lapsed on the last attempt' \
    WHERE status IN ('queued', 'failed', 'running') \
      AND status = 'running' AND lease_until < $1 AND attempts >= max_attempts";

/// What a claim may take: waiting tasks whose backoff is over, and running tasks whose lease
/// lapsed with attempts left. Most urgent first, then oldest.
///
/// The leading `status IN (...)` term repeats the `WHERE` of the partial index `tasks_claim`
/// (priority, seq over unfinished tasks): SQLite uses a partial index only when the query's
/// `WHERE` contains that term as such, and without it every claim (and [`REAP`]) scanned the
/// whole table, finished tasks included, and sorted it: claims slowed down as history grew.
pub(crate) const CANDIDATE: &str = "SELECT id FROM tasks \
    WHERE status IN ('queued', 'failed', 'running') \
      AND ((status IN ('queued', 'failed') AND not_before <= $3) \
       OR (status = 'running' AND lease_until < $3 AND attempts < max_attempts)) \
    ORDER BY priority, seq LIMIT 1";

/// What the RabbitMQ backend claims from the store rather than from the broker: retries whose
/// backoff is over and tasks whose lease lapsed (fresh tasks come through the broker). The
/// leading term is there for the index, as in [`CANDIDATE`].
pub(crate) const CANDIDATE_DUE: &str = "SELECT id FROM tasks \
    WHERE status IN ('queued', 'failed', 'running') \
      AND ((status = 'failed' AND not_before <= $3) \
       OR (status = 'running' AND lease_until < $3 AND attempts < max_attempts)) \
    ORDER BY priority, seq LIMIT 1";

/// One queued task by id (`$4`): the RabbitMQ backend's claim of a delivered message.
pub(crate) const CANDIDATE_ID: &str = "SELECT id FROM tasks WHERE id = $4 AND status = 'queued'";

/// Takes the candidate ([`CANDIDATE`] or another, with the engine's locking clause).
pub(crate) fn claim(candidate: &str) -> String {
    format!(
        "UPDATE tasks SET status = 'running', worker_id = $1, lease_until = $2, \
         attempts = attempts + 1, started_at = $3, progress = NULL, \
         error = CASE WHEN status = 'running' \
                 THEN 'the lease of ' || COALESCE(worker_id, 'a worker') || ' lapsed' ELSE error END \
         WHERE id = ({candidate}) RETURNING {}",
        crate::COLUMNS
    )
}

pub(crate) const HEARTBEAT: &str = "UPDATE tasks SET lease_until = $3 \
    WHERE id = $1 AND status = 'running' AND worker_id = $2";

pub(crate) const PROGRESS: &str = "UPDATE tasks SET lease_until = $3, progress = $4 \
    WHERE id = $1 AND status = 'running' AND worker_id = $2";

pub(crate) const RELEASE: &str = "UPDATE tasks SET status = 'queued', attempts = attempts - 1, \
    worker_id = NULL, lease_until = NULL, not_before = $3, \
    started_at = CASE WHEN attempts <= 1 THEN NULL ELSE started_at END \
    WHERE id = $1 AND status = 'running' AND worker_id = $2";

pub(crate) const HELD: &str = "SELECT attempts, max_attempts FROM tasks WHERE id = $1 AND status = 'running' AND worker_id = $2";

/// Builds the statements that return the changed row.
pub(crate) fn returning(sql: &str) -> String {
    format!("{sql} RETURNING {}", crate::COLUMNS)
}

pub(crate) const COMPLETE: &str = "UPDATE tasks SET status = 'succeeded', result = $3, \
    finished_at = $4, lease_until = NULL, error = NULL \
    WHERE id = $1 AND status = 'running' AND worker_id = $2";

pub(crate) const FAIL_DEAD: &str = "UPDATE tasks SET status = 'dead', error = $4, finished_at = $5, \
    lease_until = NULL WHERE id = $1 AND status = 'running' AND worker_id = $2 AND attempts = $3";

pub(crate) const FAIL_RETRY: &str = "UPDATE tasks SET status = 'failed', error = $4, not_before = $5, \
    lease_until = NULL WHERE id = $1 AND status = 'running' AND worker_id = $2 AND attempts = $3";

pub(crate) const CANCEL: &str = "UPDATE tasks SET status = 'cancelled', finished_at = $2 \
    WHERE id = $1 AND status IN ('queued', 'failed')";

pub(crate) const REQUEUE: &str = "UPDATE tasks SET status = 'queued', attempts = 0, not_before = $2, \
    finished_at = NULL, worker_id = NULL, lease_until = NULL, started_at = NULL \
    WHERE id = $1 AND status = 'dead'";

pub(crate) fn select_by_id() -> String {
    format!("SELECT {} FROM tasks WHERE id = $1", crate::COLUMNS)
}

pub(crate) fn select_by_key() -> String {
    format!(
        "SELECT {} FROM tasks WHERE owner = $1 AND idempotency_key = $2",
        crate::COLUMNS
    )
}

pub(crate) fn list() -> String {
    format!(
        "SELECT {}, seq FROM tasks \
         WHERE ($1 IS NULL OR owner = $1) AND ($2 IS NULL OR status = $2) \
           AND ($3 IS NULL OR kind = $3) AND ($4 IS NULL OR seq < $4) \
         ORDER BY seq DESC LIMIT $5",
        crate::COLUMNS
    )
}

pub(crate) const COUNT_BY_STATUS: &str = "SELECT status, COUNT(*) AS n FROM tasks GROUP BY status";

pub(crate) const DEPTH_BY_PRIORITY: &str = "SELECT priority, COUNT(*) AS n FROM tasks \
    WHERE status IN ('queued', 'failed') GROUP BY priority";

/// The [`Queue`](crate::Queue) methods whose code is the same for both pools. The engine provides
/// `self.pool().await? -> &Pool`, `self.config: crate::Config` and `self.claim_one(worker, lease)`.
macro_rules! queue_impl {
    ($engine:ty, $name:literal) => {
        #[async_trait::async_trait]
        impl crate::Queue for $engine {
            fn backend(&self) -> &'static str {
                $name
            }

            async fn claim(
                &self,
                worker_id: &str,
                lease: std::time::Duration,
            ) -> Result<Option<crate::Task>, crate::Error> {
                self.claim_one(worker_id, lease).await
            }

            async fn submit(&self, task: crate::NewTask) -> Result<crate::Task, crate::Error> {
                let pool = self.pool().await?;
                let max_attempts = crate::attempts_of(&task, self.config.max_attempts)?;
                let inserted = sqlx::query(&crate::shared::returning(crate::shared::INSERT))
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
                let row = match inserted {
                    Some(row) => row,
                    // The key was used before: the first submission's task, whatever its status.
                    None => {
                        sqlx::query(&crate::shared::select_by_key())
                            .bind(&task.owner)
                            .bind(task.idempotency_key.as_deref())
                            .fetch_one(pool)
                            .await?
                    }
                };
                crate::read_row!(&row)?.into_task()
            }

            async fn heartbeat(
                &self,
                id: &str,
                worker_id: &str,
                lease: std::time::Duration,
            ) -> Result<(), crate::Error> {
                let pool = self.pool().await?;
                let done = sqlx::query(crate::shared::HEARTBEAT)
                    .bind(id)
                    .bind(worker_id)
                    .bind(crate::now_ms() + crate::ms(lease))
                    .execute(pool)
                    .await?;
                crate::held(done.rows_affected(), id, worker_id)
            }

            async fn progress(
                &self,
                id: &str,
                worker_id: &str,
                progress: serde_json::Value,
                lease: std::time::Duration,
            ) -> Result<(), crate::Error> {
                let pool = self.pool().await?;
                let done = sqlx::query(crate::shared::PROGRESS)
                    .bind(id)
                    .bind(worker_id)
                    .bind(crate::now_ms() + crate::ms(lease))
                    .bind(progress.to_string())
                    .execute(pool)
                    .await?;
                crate::held(done.rows_affected(), id, worker_id)
            }

            async fn complete(
                &self,
                id: &str,
                worker_id: &str,
                result: serde_json::Value,
            ) -> Result<crate::Task, crate::Error> {
                let pool = self.pool().await?;
                let row = sqlx::query(&crate::shared::returning(crate::shared::COMPLETE))
                    .bind(id)
                    .bind(worker_id)
                    .bind(result.to_string())
                    .bind(crate::now_ms())
                    .fetch_optional(pool)
                    .await?;
                match row {
                    Some(row) => crate::read_row!(&row)?.into_task(),
                    None => Err(crate::Error::LeaseLost {
                        id: id.to_string(),
                        worker_id: worker_id.to_string(),
                    }),
                }
            }

            async fn fail(
                &self,
                id: &str,
                worker_id: &str,
                error: &str,
            ) -> Result<crate::Task, crate::Error> {
                use sqlx::Row as _;
                let pool = self.pool().await?;
                let lost = || crate::Error::LeaseLost {
                    id: id.to_string(),
                    worker_id: worker_id.to_string(),
                };
                let Some(held) = sqlx::query(crate::shared::HELD)
                    .bind(id)
                    .bind(worker_id)
                    .fetch_optional(pool)
                    .await?
                else {
                    return Err(lost());
                };
                let attempts: i64 = held.try_get("attempts")?;
                let max_attempts: i64 = held.try_get("max_attempts")?;
                let now = crate::now_ms();
                // The statement repeats the precondition (and the attempt read above), so a lease
                // taken over in between makes it match nothing.
                let (sql, at) = if attempts >= max_attempts {
                    (crate::shared::FAIL_DEAD, now)
                } else {
                    let wait = self
                        .config
                        .backoff()
                        .delay(u32::try_from(attempts).unwrap_or(u32::MAX));
                    (crate::shared::FAIL_RETRY, now + crate::ms(wait))
                };
                let row = sqlx::query(&crate::shared::returning(sql))
                    .bind(id)
                    .bind(worker_id)
                    .bind(attempts)
                    .bind(error)
                    .bind(at)
                    .fetch_optional(pool)
                    .await?;
                match row {
                    Some(row) => crate::read_row!(&row)?.into_task(),
                    None => Err(lost()),
                }
            }

            async fn release(&self, id: &str, worker_id: &str) -> Result<(), crate::Error> {
                let pool = self.pool().await?;
                let done = sqlx::query(crate::shared::RELEASE)
                    .bind(id)
                    .bind(worker_id)
                    .bind(crate::now_ms())
                    .execute(pool)
                    .await?;
                crate::held(done.rows_affected(), id, worker_id)
            }

            async fn cancel(&self, id: &str) -> Result<crate::Task, crate::Error> {
                let pool = self.pool().await?;
                let row = sqlx::query(&crate::shared::returning(crate::shared::CANCEL))
                    .bind(id)
                    .bind(crate::now_ms())
                    .fetch_optional(pool)
                    .await?;
                match row {
                    Some(row) => crate::read_row!(&row)?.into_task(),
                    None => Err(crate::refusal(self, id, "cancelling", "queued").await),
                }
            }

            async fn requeue(&self, id: &str) -> Result<crate::Task, crate::Error> {
                let pool = self.pool().await?;
                let row = sqlx::query(&crate::shared::returning(crate::shared::REQUEUE))
                    .bind(id)
                    .bind(crate::now_ms())
                    .fetch_optional(pool)
                    .await?;
                match row {
                    Some(row) => crate::read_row!(&row)?.into_task(),
                    None => Err(crate::refusal(self, id, "re-queueing", "dead").await),
                }
            }

            async fn get(&self, id: &str) -> Result<Option<crate::Task>, crate::Error> {
                let pool = self.pool().await?;
                let row = sqlx::query(&crate::shared::select_by_id())
                    .bind(id)
                    .fetch_optional(pool)
                    .await?;
                row.map(|row| crate::read_row!(&row)?.into_task())
                    .transpose()
            }

            async fn list(&self, query: &crate::ListQuery) -> Result<crate::Page, crate::Error> {
                use sqlx::Row as _;
                let pool = self.pool().await?;
                let limit = crate::page_limit(query.limit);
                let rows = sqlx::query(&crate::shared::list())
                    .bind(query.owner.as_deref())
                    .bind(query.status.map(crate::Status::as_str))
                    .bind(query.kind.as_deref())
                    .bind(crate::parse_cursor(query.cursor.as_deref())?)
                    .bind(limit + 1)
                    .fetch_all(pool)
                    .await?;
                let mut tasks = Vec::with_capacity(rows.len());
                let mut next_cursor = None;
                for (i, row) in rows.iter().enumerate() {
                    if i as i64 == limit {
                        break;
                    }
                    if i as i64 == limit - 1 && rows.len() as i64 > limit {
                        let seq: i64 = row.try_get("seq")?;
                        next_cursor = Some(seq.to_string());
                    }
                    tasks.push(crate::read_row!(row)?.into_task()?);
                }
                Ok(crate::Page { tasks, next_cursor })
            }

            async fn stats(&self) -> Result<crate::Stats, crate::Error> {
                use sqlx::Row as _;
                let pool = self.pool().await?;
                let mut stats = crate::Stats {
                    backend: self.backend().to_string(),
                    ..crate::Stats::default()
                };
                for row in sqlx::query(crate::shared::COUNT_BY_STATUS)
                    .fetch_all(pool)
                    .await?
                {
                    let status: String = row.try_get("status")?;
                    let n: i64 = row.try_get("n")?;
                    stats.by_status.insert(status, n.max(0) as u64);
                }
                for row in sqlx::query(crate::shared::DEPTH_BY_PRIORITY)
                    .fetch_all(pool)
                    .await?
                {
                    let rank: i64 = row.try_get("priority")?;
                    let n: i64 = row.try_get("n")?;
                    let p = crate::Priority::from_rank(rank)?;
                    stats
                        .depth_by_priority
                        .insert(p.as_str().to_string(), n.max(0) as u64);
                }
                crate::complete_stats(&mut stats);
                Ok(stats)
            }

            async fn ping(&self) -> Result<(), crate::Error> {
                let pool = self.pool().await?;
                sqlx::query("SELECT 1").execute(pool).await?;
                Ok(())
            }
        }
    };
}
pub(crate) use queue_impl;
