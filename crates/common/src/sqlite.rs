//! Opening a SQLite file that several processes share (two `auth` instances, gateways and workers).

use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

/// Opens a pool on `options` in WAL mode with a busy timeout and runs `schema` (idempotent DDL).
///
/// When two processes open a new file at the same moment, switching it to WAL and creating the
/// schema can fail at once with `SQLITE_BUSY` (SQLite skips the busy handler where waiting could
/// deadlock). Such failures are retried with backoff for up to `patience`; any other error is
/// returned at once.
pub async fn open_shared(
    options: SqliteConnectOptions,
    max_connections: u32,
    schema: &str,
    patience: Duration,
) -> Result<SqlitePool, sqlx::Error> {
    let options = options
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // NORMAL is durable across process crashes in WAL mode; only a power cut can lose the
        // last transactions, the right trade for this system's data.
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5));
    let deadline = tokio::time::Instant::now() + patience;
    let mut delay = Duration::from_millis(10);
    loop {
        let attempt = async {
            let pool = SqlitePoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(5))
                .connect_with(options.clone())
                .await?;
            sqlx::raw_sql(schema).execute(&pool).await?;
            Ok::<_, sqlx::Error>(pool)
        };
        match attempt.await {
            Ok(pool) => return Ok(pool),
            Err(e) if is_busy(&e) && tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "SQLite file busy while opening; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(200));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether `e` is SQLite's "database is locked" / "table is locked" (codes 5 and 6, and their
/// extended forms).
pub fn is_busy(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .and_then(|c| c.parse::<i32>().ok())
        .is_some_and(|c| matches!(c & 0xff, 5 | 6))
}
