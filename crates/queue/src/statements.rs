//! Every statement of the SQL store, written once with `$N` parameters for both engines (only
//! the claim's locking clause and the table's `seq` column differ: see `sql.rs`).
//!
//! A task's row is changed only by single statements whose `WHERE` states the precondition
//! (`status = 'running' AND worker_id = $2` for a holder's calls), so that a late worker, a
//! concurrent cancel or a second gateway can never half-apply a change: the statement matches,
//! or it changes nothing and the caller is told why.
//!
//! On PostgreSQL the claims from the store, [`HEARTBEAT`] and [`PROGRESS`] commit without waiting
//! for the log flush (`sql.rs`, `SqlQueue`'s `lax` pool), every other statement synchronously:
//! docs/queue.md, "Durability", gives the reason for each.

/// The columns a task is read from, in order, for `SELECT` and `RETURNING`.
pub(crate) const COLUMNS: &str = "id, kind, payload, status, priority, attempts, max_attempts, \
    result, error, progress, owner, idempotency_key, created_at, started_at, finished_at, \
    worker_id, not_before, lease_until";

/// Inserts a task; `ON CONFLICT DO NOTHING` makes a repeated idempotency key return no row.
pub(crate) const INSERT: &str = "INSERT INTO tasks (id, kind, payload, status, priority, attempts, \
    max_attempts, owner, idempotency_key, created_at, not_before) \
    VALUES ($1, $2, $3, 'queued', $4, 0, $5, $6, $7, $8, $8) \
    ON CONFLICT (owner, idempotency_key) DO NOTHING";

/// Marks `dead` the running tasks whose lease lapsed on their last attempt (their worker died
/// with no attempt left), so that they are not redelivered for ever.
///
/// It runs before every claim, so it must not read the backlog: its `WHERE` starts with the
/// condition of the partial index `tasks_lease` (lease end of running tasks only), and it reads
/// only the running tasks whose lease has lapsed. Through `tasks_claim` instead it read every
/// unfinished task on every claim: a 20,000-task backlog drained at 1,380 tasks/s on SQLite and
/// 580 on PostgreSQL (docs/PERFORMANCE.md).
pub(crate) const REAP: &str = "UPDATE tasks SET status = 'dead', finished_at = $1, lease_until = NULL, \
    error = 'the lease of ' || COALESCE(worker_id, 'a worker') || ' lapsed on the last attempt' \
    WHERE status = 'running' AND lease_until < $1 AND attempts >= max_attempts";

/// PostgreSQL: [`REAP`] and a claim (whose `$3` is the time) in one statement, one round trip
/// and one commit instead of two, for the claims that commit synchronously (the RabbitMQ
/// backend's claim by id); a claim that commits laxly runs [`REAP`] first on its own, since the
/// `dead` it writes must be durable. The two never touch the same row: `REAP` takes running
/// tasks on their last attempt, a claim only tasks with attempts left.
pub(crate) fn reap_then(claim: &str) -> String {
    format!("WITH reaped AS ({}) {claim}", REAP.replace("$1", "$3"))
}

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
    ORDER BY priority, seq LIMIT $4";

/// What the RabbitMQ backend claims from the store rather than from the broker: retries whose
/// backoff is over and tasks whose lease lapsed (fresh tasks come through the broker). Most
/// urgent first, then oldest.
///
/// The ids come from two range scans of partial indexes, failed tasks by `not_before`
/// (`tasks_retry`) and running ones by `lease_until` (`tasks_lease`), each of which stops at the
/// first task not due yet, so a claim costs the same with any backlog. Walking `tasks_claim` in
/// claim order instead (as [`CANDIDATE`] does, and as this did) reads every queued task before
/// it finds none due: with 20,000 tasks waiting for their messages, about 300 pages and 6 to 8
/// ms of the server's time per claim, which made PostgreSQL the RabbitMQ backend's bottleneck.
/// The outer conditions repeat the inner ones so that a row changed under the claim is checked
/// again on its new version before it is locked.
pub(crate) const CANDIDATE_DUE: &str = "SELECT id FROM tasks \
    WHERE id IN (SELECT id FROM tasks WHERE status = 'failed' AND not_before <= $3 \
                 UNION ALL \
                 SELECT id FROM tasks WHERE status = 'running' AND lease_until < $3 \
                                         AND attempts < max_attempts) \
      AND ((status = 'failed' AND not_before <= $3) \
       OR (status = 'running' AND lease_until < $3 AND attempts < max_attempts)) \
    ORDER BY priority, seq LIMIT $4";

/// The queued tasks among the ids `$IDS` (replaced by `$5, $6, ...`; `$4` is the claim's limit,
/// their number): the RabbitMQ backend's claim of the messages it got.
pub(crate) const CANDIDATE_IDS: &str =
    "SELECT id FROM tasks WHERE id IN ($IDS) AND status = 'queued' LIMIT $4";

/// Deletes a task that was never announced (the RabbitMQ backend's undone submission).
pub(crate) const DELETE_QUEUED: &str = "DELETE FROM tasks WHERE id = $1 AND status = 'queued'";

/// Takes the candidates ([`CANDIDATE`] or another, with the engine's locking clause), at most
/// `$4` of them, each under its own lease. `seq` comes back too: the rows of `RETURNING` come in
/// no promised order, and the caller sorts them into claim order.
pub(crate) fn claim(candidate: &str) -> String {
    format!(
        "UPDATE tasks SET status = 'running', worker_id = $1, lease_until = $2, \
         attempts = attempts + 1, started_at = $3, progress = NULL, \
         error = CASE WHEN status = 'running' \
                 THEN 'the lease of ' || COALESCE(worker_id, 'a worker') || ' lapsed' ELSE error END \
         WHERE id IN ({candidate}) RETURNING {}, seq",
        COLUMNS
    )
}

/// Renews the lease of a task the caller holds (lax on PostgreSQL: a lost renewal at worst lets
/// the lease lapse early).
pub(crate) const HEARTBEAT: &str = "UPDATE tasks SET lease_until = $3 \
    WHERE id = $1 AND status = 'running' AND worker_id = $2";

/// [`HEARTBEAT`] with the handler's latest progress (lax on PostgreSQL, like it).
pub(crate) const PROGRESS: &str = "UPDATE tasks SET lease_until = $3, progress = $4 \
    WHERE id = $1 AND status = 'running' AND worker_id = $2";

pub(crate) const RELEASE: &str = "UPDATE tasks SET status = 'queued', attempts = attempts - 1, \
    worker_id = NULL, lease_until = NULL, not_before = $3, \
    started_at = CASE WHEN attempts <= 1 THEN NULL ELSE started_at END \
    WHERE id = $1 AND status = 'running' AND worker_id = $2";

pub(crate) const HELD: &str = "SELECT attempts, max_attempts FROM tasks WHERE id = $1 AND status = 'running' AND worker_id = $2";

/// Builds the statements that return the changed row.
pub(crate) fn returning(sql: &str) -> String {
    format!("{sql} RETURNING {}", COLUMNS)
}

pub(crate) const COMPLETE: &str = "UPDATE tasks SET status = 'succeeded', result = $3, \
    finished_at = $4, lease_until = NULL, error = NULL \
    WHERE id = $1 AND status = 'running' AND worker_id = $2";

/// [`COMPLETE`] for `n` tasks in one statement: `$1` the holder, `$2` the time, then each task's
/// id and result (`$3, $4`, `$5, $6`, ...; `column1`, `column2` are the names both engines give
/// the columns of `VALUES`). Each row keeps the holder's precondition; the rows it
/// returns are the results stored.
pub(crate) fn complete_batch(n: usize) -> String {
    let values = (0..n)
        .map(|i| format!("(${}, ${})", 2 * i + 3, 2 * i + 4))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "UPDATE tasks SET status = 'succeeded', result = v.column2, finished_at = $2, \
         lease_until = NULL, error = NULL \
         FROM (VALUES {values}) AS v \
         WHERE tasks.id = v.column1 AND tasks.status = 'running' AND tasks.worker_id = $1 \
         RETURNING {}",
        COLUMNS
    )
}

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
    format!("SELECT {} FROM tasks WHERE id = $1", COLUMNS)
}

pub(crate) fn select_by_key() -> String {
    format!(
        "SELECT {} FROM tasks WHERE owner = $1 AND idempotency_key = $2",
        COLUMNS
    )
}

pub(crate) fn list() -> String {
    format!(
        "SELECT {}, seq FROM tasks \
         WHERE ($1 IS NULL OR owner = $1) AND ($2 IS NULL OR status = $2) \
           AND ($3 IS NULL OR kind = $3) AND ($4 IS NULL OR seq < $4) \
         ORDER BY seq DESC LIMIT $5",
        COLUMNS
    )
}

/// Every count `stats` reports, in one pass over the table: tasks per status and priority (the
/// depth is the `queued` and `failed` ones per priority), and when the oldest task still waiting
/// for its first run was submitted (`oldest`, NULL in the groups of other statuses).
///
/// It was three statements: the counts per status (a scan of the table), the depth per priority
/// and the oldest waiting task (each an index walk over every waiting task, reading its row to
/// check its status). With 20,000 tasks waiting they took 20, 18 and 18 ms of PostgreSQL's time
/// per call, and the burn-down benchmark's poll of `GET /tasks/stats` took a third of the
/// machine's two cores from the workers it was measuring (docs/PERFORMANCE.md).
pub(crate) const STATS: &str = "SELECT status, priority, COUNT(*) AS n, \
    MIN(CASE WHEN status = 'queued' THEN created_at END) AS oldest \
    FROM tasks GROUP BY status, priority";

/// Deletes up to `$2` finished tasks (`succeeded`, `cancelled`) that finished before `$1`,
/// oldest first, through the partial index `tasks_finished`.
pub(crate) const PRUNE: &str = "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks \
    WHERE status IN ('succeeded', 'cancelled') AND finished_at < $1 \
    ORDER BY finished_at LIMIT $2)";
