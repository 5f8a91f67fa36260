//! One SQL layer for every crate that keeps rows (`auth`, `db`, `users`, `queue`): a database
//! opened from a URL ([`Db::open`]) over SQLite or PostgreSQL ([`Pool`]), statements written once
//! with `$N` parameters (SQLite accepts them too) and run with [`Arg`]s, rows read by column name
//! ([`Row::get`]), and one answer to "is the database down?" ([`is_unavailable`]).
//!
//! How a database is opened, the same for every crate:
//! - SQLite (`sqlite:PATH`, `sqlite://PATH`, `sqlite::memory:` or a file path through
//!   [`Db::open_file`]) is opened at once: the file is created if missing, switched to WAL with a
//!   busy timeout, and the schema is created, retrying while another process that opens the same
//!   file at the same moment holds it (`SQLITE_BUSY`). A local file that cannot be opened is a
//!   configuration error, best reported at start.
//! - PostgreSQL (`postgres://...`, `postgresql://...`) connects on first use, and the schema is
//!   created by the first statement that reaches the server, under an advisory lock (two
//!   processes starting together would otherwise collide on the catalog). A server can be down
//!   while a service starts; the service then starts anyway, answers `503` and recovers when the
//!   server is back. A service that needs its database at start (seeding, the admin account)
//!   fails at start because that first statement does.
//!
//! What really differs per engine (a transaction that must take SQLite's write lock first, an
//! array parameter only PostgreSQL has) is written by the caller against [`Db::pool`].

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::pool::PoolOptions;
use sqlx::postgres::{PgConnectOptions, PgPool, PgRow, Postgres};
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, Database, Decode, Encode, Type};
use tokio::sync::OnceCell;

/// How long opening a SQLite file keeps retrying while other processes hold it.
const SQLITE_OPEN_PATIENCE: Duration = Duration::from_secs(15);

/// Pool options for `options`: size, acquire timeout, and the ping rule
/// ([`Options::ping_if_idle_for`]).
fn pool_options<DB: Database>(options: &Options) -> PoolOptions<DB> {
    let ping_if_idle_for = options.ping_if_idle_for;
    PoolOptions::<DB>::new()
        .max_connections(options.max_connections)
        .acquire_timeout(options.acquire_timeout)
        .test_before_acquire(false)
        .before_acquire(move |conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= ping_if_idle_for {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
}

/// The advisory lock that serialises schema creation on PostgreSQL (an arbitrary constant, the
/// same for every crate, so that crates sharing one database also take turns).
const SCHEMA_LOCK: i64 = 0x5ca1_ab5c_4e3a;

/// Which engine a [`Db`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// An embedded SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

impl Engine {
    /// `sqlite` or `postgres` (for logs, `/tasks/stats` and `engine()` methods).
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Sqlite => "sqlite",
            Engine::Postgres => "postgres",
        }
    }
}

/// The connection pool of either engine, for the statements that really differ per engine.
#[derive(Debug, Clone)]
pub enum Pool {
    /// SQLite (WAL mode, busy timeout).
    Sqlite(SqlitePool),
    /// PostgreSQL (connects on first use).
    Postgres(PgPool),
}

/// The schema a [`Db`] creates: idempotent DDL (`CREATE TABLE IF NOT EXISTS ...`), usually the
/// same text for both engines.
#[derive(Debug, Clone, Copy)]
pub struct Schema {
    /// The DDL run on SQLite.
    pub sqlite: &'static str,
    /// The DDL run on PostgreSQL.
    pub postgres: &'static str,
}

impl Schema {
    /// One DDL text for both engines.
    pub const fn same(ddl: &'static str) -> Schema {
        Schema {
            sqlite: ddl,
            postgres: ddl,
        }
    }
}

/// How a [`Db`] is opened.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Connections in the pool.
    pub max_connections: u32,
    /// How long a statement waits for a connection before failing with
    /// `PoolTimedOut` (which [`is_unavailable`] counts as down: a `503`).
    pub acquire_timeout: Duration,
    /// A PostgreSQL read replica (hot standby): no DDL is run, the schema arrives from the
    /// primary by replication. A SQLite "replica" is a file of its own and gets its schema.
    pub replica: bool,
    /// PostgreSQL run-time parameters set on every connection of the pool when it opens
    /// (`options=-c name=value`), for a store whose statements need a planner setting.
    pub pg_settings: &'static [(&'static str, &'static str)],
    /// A pooled connection idle for this long or longer is pinged before it is handed out (one
    /// round trip, and a broken one is replaced); one used more recently is handed out as it is.
    /// `ZERO` (the default) pings every time, as sqlx does by default.
    ///
    /// sqlx pings a connection when it hands it out and again when it takes it back, so every
    /// statement costs three round trips to the server, each a wake-up of its backend process.
    /// A store on a hot path (the task queue) can skip the first ping for connections used a
    /// moment ago (HikariCP's 500 ms "alive bypass window"): a connection that answered a moment
    /// ago is alive. The price: one that broke since (a database restart) fails the next
    /// statement instead of being replaced silently, is closed with it, and the failure is
    /// reported like any store error (`503`, or a worker's retry); the statements after it get a
    /// new connection. The other stores keep the default, so that a user's first request after
    /// a database comes back succeeds (`users::a_shard_down_fails_only_its_own_users`).
    pub ping_if_idle_for: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_connections: 8,
            acquire_timeout: Duration::from_secs(5),
            replica: false,
            pg_settings: &[],
            ping_if_idle_for: Duration::ZERO,
        }
    }
}

/// An open database: the pool, and whether its schema exists yet.
#[derive(Debug)]
pub struct Db {
    pool: Pool,
    schema: Schema,
    /// Set once the schema exists (at open for SQLite and replicas, on first use for PostgreSQL).
    ready: OnceCell<()>,
}

impl Db {
    /// Opens `url`: `sqlite:PATH`, `sqlite://PATH`, `sqlite::memory:`, `postgres://...` or
    /// `postgresql://...` (see the module documentation for when each connects). A URL of
    /// another scheme, or one that does not parse, is `sqlx::Error::Configuration`, whose
    /// message never repeats the URL (it may hold a password).
    pub async fn open(url: &str, schema: Schema, options: Options) -> Result<Db, sqlx::Error> {
        let url = url.trim();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let connect = PgConnectOptions::from_str(url)
                .map_err(|e| configuration(format!("bad PostgreSQL URL: {e}")))?
                .options(options.pg_settings.iter().copied());
            let pool = pool_options::<Postgres>(&options).connect_lazy_with(connect);
            let ready = OnceCell::new();
            if options.replica {
                let _ = ready.set(());
            }
            Ok(Db {
                pool: Pool::Postgres(pool),
                schema,
                ready,
            })
        } else if url.starts_with("sqlite:") {
            let connect = SqliteConnectOptions::from_str(url)
                .map_err(|e| configuration(format!("bad SQLite URL: {e}")))?;
            Self::open_sqlite(connect, schema, options).await
        } else {
            let scheme = url.split_once(':').map(|(s, _)| s).unwrap_or_default();
            Err(configuration(format!(
                "a database URL must start with sqlite: or postgres://; got {scheme:?}"
            )))
        }
    }

    /// Opens the SQLite file at `path`, creating it, its directory and the schema when missing.
    pub async fn open_file(
        path: &Path,
        schema: Schema,
        options: Options,
    ) -> Result<Db, sqlx::Error> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                configuration(format!("cannot create directory {}: {e}", dir.display()))
            })?;
        }
        Self::open_sqlite(SqliteConnectOptions::new().filename(path), schema, options).await
    }

    /// Opens a pool in WAL mode with a busy timeout and runs the schema.
    ///
    /// When two processes open a new file at the same moment, switching it to WAL and creating
    /// the schema can fail at once with `SQLITE_BUSY` (SQLite skips the busy handler where
    /// waiting could deadlock). Such failures are retried with backoff for a while; any other
    /// error is returned at once.
    async fn open_sqlite(
        connect: SqliteConnectOptions,
        schema: Schema,
        options: Options,
    ) -> Result<Db, sqlx::Error> {
        let connect = connect
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL is durable across process crashes in WAL mode; only a power cut can lose the
            // last transactions, the right trade for this system's data.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5));
        let deadline = tokio::time::Instant::now() + SQLITE_OPEN_PATIENCE;
        let mut delay = Duration::from_millis(10);
        loop {
            let attempt = async {
                let pool = pool_options::<Sqlite>(&options)
                    .connect_with(connect.clone())
                    .await?;
                sqlx::raw_sql(schema.sqlite).execute(&pool).await?;
                Ok::<_, sqlx::Error>(pool)
            };
            match attempt.await {
                Ok(pool) => {
                    return Ok(Db {
                        pool: Pool::Sqlite(pool),
                        schema,
                        ready: OnceCell::new_with(Some(())),
                    });
                }
                Err(e) if is_busy(&e) && tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "SQLite file busy while opening; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The engine this database runs on.
    pub fn engine(&self) -> Engine {
        match self.pool {
            Pool::Sqlite(_) => Engine::Sqlite,
            Pool::Postgres(_) => Engine::Postgres,
        }
    }

    /// The pool, once the schema exists: for the statements that differ per engine.
    pub async fn pool(&self) -> Result<&Pool, sqlx::Error> {
        self.ready
            .get_or_try_init(|| async {
                match &self.pool {
                    Pool::Sqlite(p) => {
                        sqlx::raw_sql(self.schema.sqlite).execute(p).await?;
                    }
                    Pool::Postgres(p) => {
                        // One simple query is one transaction, so the advisory lock is held until
                        // the whole script is done.
                        let script = format!(
                            "SELECT pg_advisory_xact_lock({SCHEMA_LOCK});{}",
                            self.schema.postgres
                        );
                        sqlx::raw_sql(&script).execute(p).await?;
                    }
                };
                Ok::<_, sqlx::Error>(())
            })
            .await?;
        Ok(&self.pool)
    }

    /// PostgreSQL: a second pool on the same database, for the statements of one store that
    /// must run under other settings than the rest (the queue's claims and lease renewals, which
    /// commit with `synchronous_commit = off`). Its connections get this pool's settings, then
    /// `options.pg_settings`; `options.max_connections` and `options.acquire_timeout` size it
    /// (`options.replica` is not used). It connects on first use, like this pool, but creates no
    /// schema: run its statements only once [`Db::pool`] has answered. `None` on SQLite, where
    /// every connection of a file runs with the same settings.
    pub fn sibling_pool(&self, options: Options) -> Option<PgPool> {
        let Pool::Postgres(pool) = &self.pool else {
            return None;
        };
        let connect = (*pool.connect_options())
            .clone()
            .options(options.pg_settings.iter().copied());
        Some(pool_options::<Postgres>(&options).connect_lazy_with(connect))
    }

    /// Runs a statement; the number of rows it changed.
    pub async fn execute(&self, sql: &str, args: &[Arg<'_>]) -> Result<u64, sqlx::Error> {
        Ok(match self.pool().await? {
            Pool::Sqlite(p) => query::<Sqlite>(sql, args).execute(p).await?.rows_affected(),
            Pool::Postgres(p) => query::<Postgres>(sql, args)
                .execute(p)
                .await?
                .rows_affected(),
        })
    }

    /// Runs a query; its first row, if any.
    pub async fn fetch_optional(
        &self,
        sql: &str,
        args: &[Arg<'_>],
    ) -> Result<Option<Row>, sqlx::Error> {
        Ok(match self.pool().await? {
            Pool::Sqlite(p) => query::<Sqlite>(sql, args)
                .fetch_optional(p)
                .await?
                .map(Row::Sqlite),
            Pool::Postgres(p) => query::<Postgres>(sql, args)
                .fetch_optional(p)
                .await?
                .map(Row::Postgres),
        })
    }

    /// Runs a query that returns a row (`sqlx::Error::RowNotFound` when it does not).
    pub async fn fetch_one(&self, sql: &str, args: &[Arg<'_>]) -> Result<Row, sqlx::Error> {
        self.fetch_optional(sql, args)
            .await?
            .ok_or(sqlx::Error::RowNotFound)
    }

    /// Runs a query; all its rows.
    pub async fn fetch_all(&self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, sqlx::Error> {
        Ok(match self.pool().await? {
            Pool::Sqlite(p) => query::<Sqlite>(sql, args)
                .fetch_all(p)
                .await?
                .into_iter()
                .map(Row::Sqlite)
                .collect(),
            Pool::Postgres(p) => query::<Postgres>(sql, args)
                .fetch_all(p)
                .await?
                .into_iter()
                .map(Row::Postgres)
                .collect(),
        })
    }

    /// Answers when the database does (`SELECT 1`, after creating the schema if needed).
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        self.execute("SELECT 1", &[]).await.map(|_| ())
    }

    /// Closes the pool (waits for the connections in use to come back).
    pub async fn close(&self) {
        match &self.pool {
            Pool::Sqlite(p) => p.close().await,
            Pool::Postgres(p) => p.close().await,
        }
    }
}

/// A value bound to a `$N` parameter: text or a 64-bit integer, either possibly `NULL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arg<'a> {
    /// `TEXT`.
    Text(Option<&'a str>),
    /// `INTEGER` / `BIGINT`.
    Int(Option<i64>),
}

impl<'a> From<&'a str> for Arg<'a> {
    fn from(v: &'a str) -> Self {
        Arg::Text(Some(v))
    }
}

impl<'a> From<&'a String> for Arg<'a> {
    fn from(v: &'a String) -> Self {
        Arg::Text(Some(v))
    }
}

impl<'a> From<Option<&'a str>> for Arg<'a> {
    fn from(v: Option<&'a str>) -> Self {
        Arg::Text(v)
    }
}

impl<'a> From<&'a Option<String>> for Arg<'a> {
    fn from(v: &'a Option<String>) -> Self {
        Arg::Text(v.as_deref())
    }
}

impl From<i64> for Arg<'_> {
    fn from(v: i64) -> Self {
        Arg::Int(Some(v))
    }
}

impl From<Option<i64>> for Arg<'_> {
    fn from(v: Option<i64>) -> Self {
        Arg::Int(v)
    }
}

/// `sql` with `args` bound in order, for either engine (for the statements a caller runs on
/// [`Db::pool`] itself, in a transaction).
pub fn query<'q, DB>(
    sql: &'q str,
    args: &[Arg<'q>],
) -> sqlx::query::Query<'q, DB, <DB as Database>::Arguments<'q>>
where
    DB: Database,
    Option<&'q str>: Encode<'q, DB> + Type<DB>,
    Option<i64>: Encode<'q, DB> + Type<DB>,
{
    args.iter()
        .fold(sqlx::query::<DB>(sql), |q, arg| match *arg {
            Arg::Text(v) => q.bind(v),
            Arg::Int(v) => q.bind(v),
        })
}

/// A row of either engine, read by column name.
pub enum Row {
    /// A SQLite row.
    Sqlite(SqliteRow),
    /// A PostgreSQL row.
    Postgres(PgRow),
}

impl std::fmt::Debug for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let engine = match self {
            Row::Sqlite(_) => "sqlite",
            Row::Postgres(_) => "postgres",
        };
        f.debug_struct("Row")
            .field("engine", &engine)
            .finish_non_exhaustive()
    }
}

impl Row {
    /// The value of `column` (`String`, `i64`, their `Option`s, ...).
    pub fn get<T>(&self, column: &str) -> Result<T, sqlx::Error>
    where
        T: for<'r> Decode<'r, Sqlite>
            + Type<Sqlite>
            + for<'r> Decode<'r, Postgres>
            + Type<Postgres>,
    {
        match self {
            Row::Sqlite(r) => sqlx::Row::try_get(r, column),
            Row::Postgres(r) => sqlx::Row::try_get(r, column),
        }
    }
}

/// Whether `e` means "the database cannot answer now" (worth a `503` and a retry) rather than
/// "it refused this statement" (a bug, `500`):
/// - the pool or the connection failed: no connection within the acquire timeout, pool closed,
///   I/O or TLS errors, the SQLite worker thread gone;
/// - SQLite's "database is locked" / "table is locked" (codes 5 and 6 and their extended forms:
///   another process held the file longer than the busy timeout);
/// - PostgreSQL's "not reachable now": connection exceptions (class 08), shutting down or
///   starting up (57P01-57P03), too many connections (53300), and a database that does not
///   accept connections (55000, `ALLOW_CONNECTIONS false`).
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => match d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
            Some(pg) => {
                let c = pg.code();
                c.starts_with("08") || matches!(c, "57P01" | "57P02" | "57P03" | "53300" | "55000")
            }
            None => is_busy(e),
        },
        _ => false,
    }
}

/// Whether `e` is a unique constraint refusing a row (a duplicate key), on either engine.
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.kind() == sqlx::error::ErrorKind::UniqueViolation)
}

/// Whether `e` is SQLite's "database is locked" / "table is locked" (codes 5 and 6, and their
/// extended forms).
fn is_busy(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .filter(|d| d.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some())
        .and_then(|d| d.code())
        .and_then(|c| c.parse::<i32>().ok())
        .is_some_and(|c| matches!(c & 0xff, 5 | 6))
}

fn configuration(message: String) -> sqlx::Error {
    sqlx::Error::Configuration(message.into())
}

#[cfg(test)]
mod tests;
