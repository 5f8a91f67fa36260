//! One shard's database: the [`ShardStore`] trait and [`SqlStore`], its implementation over
//! SQLite (embedded, one file per shard) and PostgreSQL (one database per shard).
//!
//! Both engines run the same SQL text (`$1` placeholders work in both), so one implementation
//! serves both; the trait exists so that tests can put a shard that is down in the layout.
//!
//! Each shard holds two tables:
//! - `profiles`: the profiles whose id hashes to this shard;
//! - `usernames`: the username index entries whose *username* hashes to this shard, so that a
//!   username is unique across shards with one lookup on one shard (see `shards.rs`).

use std::fmt::Debug;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use api::wire::users::Profile;
use async_trait::async_trait;
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};

use crate::Error;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS profiles (
    id TEXT PRIMARY KEY NOT NULL,
    username TEXT NOT NULL UNIQUE,
    email TEXT,
    first_name TEXT,
    last_name TEXT,
    role TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS usernames (
    username TEXT PRIMARY KEY NOT NULL,
    id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS layout (
    name TEXT PRIMARY KEY NOT NULL,
    shard_count BIGINT NOT NULL,
    target BIGINT
);";

const COLUMNS: &str = "id, username, email, first_name, last_name, role, created_at, updated_at";

/// The changes of one update, already validated; `None` leaves a field alone.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// New email.
    pub email: Option<String>,
    /// New first name.
    pub first_name: Option<String>,
    /// New last name.
    pub last_name: Option<String>,
    /// New role.
    pub role: Option<String>,
    /// The write time (RFC 3339).
    pub updated_at: String,
}

/// What a shard database does. Implementations only store; routing, validation and the
/// username index's protocol are the caller's.
#[async_trait]
pub trait ShardStore: Send + Sync + Debug {
    /// `sqlite` or `postgres`.
    fn engine(&self) -> &'static str;
    /// Answers when the database does.
    async fn ping(&self) -> Result<(), Error>;
    /// Inserts a profile; `Ok(false)` when its id or username exists on this shard.
    async fn insert(&self, p: &Profile) -> Result<bool, Error>;
    /// The profile with this id.
    async fn get(&self, id: &str) -> Result<Option<Profile>, Error>;
    /// Applies `changes`; the profile after, `None` when there is no such id.
    async fn update(&self, id: &str, changes: &Changes) -> Result<Option<Profile>, Error>;
    /// Deletes the profile; `Ok(false)` when there was none.
    async fn delete(&self, id: &str) -> Result<bool, Error>;
    /// Up to `limit` profiles with ids greater than `after`, ids ascending.
    async fn list_after(&self, after: Option<&str>, limit: u32) -> Result<Vec<Profile>, Error>;
    /// How many profiles the shard holds.
    async fn count(&self) -> Result<u64, Error>;
    /// Records `username -> id` in the index; `Ok(false)` when the username is already there.
    async fn claim_username(&self, username: &str, id: &str) -> Result<bool, Error>;
    /// The id the index holds for `username`.
    async fn lookup_username(&self, username: &str) -> Result<Option<String>, Error>;
    /// Removes the index entry if it still points at `id`.
    async fn release_username(&self, username: &str, id: &str) -> Result<(), Error>;

    // What rebalancing needs. Defaults refuse, so that a store that cannot move users (a test
    // double) still serves everything else.

    /// Writes `p` whole, inserting or replacing the row with its id.
    async fn upsert(&self, p: &Profile) -> Result<(), Error> {
        let _ = p;
        Err(Error::Internal(format!(
            "{} cannot rebalance",
            self.engine()
        )))
    }
    /// Up to `limit` index entries with usernames greater than `after`, ascending.
    async fn usernames_after(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, String)>, Error> {
        let _ = (after, limit);
        Err(Error::Internal(format!(
            "{} cannot rebalance",
            self.engine()
        )))
    }
    /// Writes the index entry `username -> id`, replacing any.
    async fn put_username(&self, username: &str, id: &str) -> Result<(), Error> {
        let _ = (username, id);
        Err(Error::Internal(format!(
            "{} cannot rebalance",
            self.engine()
        )))
    }
    /// The layout recorded on this store (shard 0 keeps it): the shard count and the target of
    /// a move in progress.
    async fn load_layout(&self) -> Result<Option<(u32, Option<u32>)>, Error> {
        Ok(None)
    }
    /// Records the layout.
    async fn save_layout(&self, count: u32, target: Option<u32>) -> Result<(), Error> {
        let _ = (count, target);
        Err(Error::Internal(format!(
            "{} cannot rebalance",
            self.engine()
        )))
    }
}

#[derive(Debug, Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs the same body against whichever pool is open (each arm is its own concrete type).
macro_rules! on_pool {
    ($self:ident, |$pool:ident| $body:expr) => {
        match &$self.pool {
            Pool::Sqlite($pool) => $body,
            Pool::Postgres($pool) => $body,
        }
    };
}

/// A shard database over SQLite or PostgreSQL.
#[derive(Debug)]
pub struct SqlStore {
    pool: Pool,
    /// PostgreSQL pools connect lazily, so that a shard that is down at start does not stop the
    /// others from serving; the schema is created on the first query that reaches it.
    schema_ready: AtomicBool,
}

impl SqlStore {
    /// Opens `url`: `sqlite:PATH` (created if missing, WAL) or `postgres://...` (lazily).
    pub async fn open(url: &str) -> Result<SqlStore, Error> {
        Self::open_pool(url, false).await
    }

    async fn open_pool(url: &str, replica: bool) -> Result<SqlStore, Error> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url)
                .map_err(|e| Error::Config(format!("bad PostgreSQL URL: {e}")))?;
            let pool = PgPoolOptions::new()
                .max_connections(8)
                // A shard that does not answer within this is reported down (503) rather than
                // holding requests until the stack's timeout. A replica gets less: its reads
                // have the primary to fall back to.
                .acquire_timeout(if replica {
                    Duration::from_millis(500)
                } else {
                    Duration::from_secs(2)
                })
                .connect_lazy_with(options);
            let store = SqlStore {
                pool: Pool::Postgres(pool),
                schema_ready: AtomicBool::new(replica),
            };
            if replica {
                return Ok(store);
            }
            if let Err(e) = store.ensure_schema().await {
                tracing::warn!(error = %e, "a PostgreSQL shard is not reachable at start; its users get 503 until it is");
            }
            Ok(store)
        } else if let Some(rest) = url.strip_prefix("sqlite:") {
            let options = SqliteConnectOptions::from_str(&format!("sqlite:{rest}"))
                .map_err(|e| Error::Config(format!("bad SQLite URL: {e}")))?;
            let pool =
                common::sqlite::open_shared(options, 8, SCHEMA, Duration::from_secs(15)).await?;
            Ok(SqlStore {
                pool: Pool::Sqlite(pool),
                schema_ready: AtomicBool::new(true),
            })
        } else {
            Err(Error::Config(format!(
                "a shard URL must start with sqlite: or postgres://; got {:?}",
                url.split("://").next().unwrap_or_default()
            )))
        }
    }

    /// Opens a read replica: like [`SqlStore::open`] for SQLite; for PostgreSQL no schema is
    /// created (a hot standby refuses DDL; the schema arrives from the primary by replication).
    pub async fn open_replica(url: &str) -> Result<SqlStore, Error> {
        let store = Self::open_pool(url, true).await?;
        Ok(store)
    }

    async fn ensure_schema(&self) -> Result<(), Error> {
        if self.schema_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        on_pool!(self, |p| sqlx::raw_sql(SCHEMA).execute(p).await.map(|_| ()))?;
        self.schema_ready.store(true, Ordering::Release);
        Ok(())
    }
}

fn profile<R: Row>(row: &R) -> Result<Profile, sqlx::Error>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(Profile {
        id: row.try_get("id")?,
        username: row.try_get("username")?,
        email: row.try_get("email")?,
        first_name: row.try_get("first_name")?,
        last_name: row.try_get("last_name")?,
        role: row.try_get("role")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.kind() == sqlx::error::ErrorKind::UniqueViolation)
}

#[async_trait]
impl ShardStore for SqlStore {
    fn engine(&self) -> &'static str {
        match self.pool {
            Pool::Sqlite(_) => "sqlite",
            Pool::Postgres(_) => "postgres",
        }
    }

    async fn ping(&self) -> Result<(), Error> {
        self.ensure_schema().await?;
        on_pool!(self, |p| sqlx::query("SELECT 1")
            .execute(p)
            .await
            .map(|_| ()))?;
        Ok(())
    }

    async fn insert(&self, p: &Profile) -> Result<bool, Error> {
        self.ensure_schema().await?;
        let sql =
            format!("INSERT INTO profiles ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)");
        let result = on_pool!(self, |pool| sqlx::query(&sql)
            .bind(&p.id)
            .bind(&p.username)
            .bind(&p.email)
            .bind(&p.first_name)
            .bind(&p.last_name)
            .bind(&p.role)
            .bind(&p.created_at)
            .bind(&p.updated_at)
            .execute(pool)
            .await
            .map(|_| ()));
        match result {
            Ok(()) => Ok(true),
            Err(e) if is_unique_violation(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn get(&self, id: &str) -> Result<Option<Profile>, Error> {
        self.ensure_schema().await?;
        let sql = format!("SELECT {COLUMNS} FROM profiles WHERE id = $1");
        let found = on_pool!(self, |pool| {
            sqlx::query(&sql)
                .bind(id)
                .fetch_optional(pool)
                .await?
                .map(|r| profile(&r))
                .transpose()
        })?;
        Ok(found)
    }

    async fn update(&self, id: &str, c: &Changes) -> Result<Option<Profile>, Error> {
        self.ensure_schema().await?;
        // COALESCE keeps the fields the update does not name; one statement, so concurrent
        // updates of different fields do not undo each other.
        let sql = format!(
            "UPDATE profiles SET email = COALESCE($2, email), first_name = COALESCE($3, first_name),
             last_name = COALESCE($4, last_name), role = COALESCE($5, role), updated_at = $6
             WHERE id = $1 RETURNING {COLUMNS}"
        );
        let found = on_pool!(self, |pool| {
            sqlx::query(&sql)
                .bind(id)
                .bind(&c.email)
                .bind(&c.first_name)
                .bind(&c.last_name)
                .bind(&c.role)
                .bind(&c.updated_at)
                .fetch_optional(pool)
                .await?
                .map(|r| profile(&r))
                .transpose()
        })?;
        Ok(found)
    }

    async fn delete(&self, id: &str) -> Result<bool, Error> {
        self.ensure_schema().await?;
        let n = on_pool!(self, |pool| sqlx::query(
            "DELETE FROM profiles WHERE id = $1"
        )
        .bind(id)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(n > 0)
    }

    async fn list_after(&self, after: Option<&str>, limit: u32) -> Result<Vec<Profile>, Error> {
        self.ensure_schema().await?;
        let sql = format!("SELECT {COLUMNS} FROM profiles WHERE id > $1 ORDER BY id LIMIT $2");
        let rows = on_pool!(self, |pool| {
            sqlx::query(&sql)
                .bind(after.unwrap_or(""))
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
                .iter()
                .map(profile)
                .collect::<Result<Vec<_>, _>>()
        })?;
        Ok(rows)
    }

    async fn count(&self) -> Result<u64, Error> {
        self.ensure_schema().await?;
        let n: i64 = on_pool!(self, |pool| sqlx::query(
            "SELECT COUNT(*) AS n FROM profiles"
        )
        .fetch_one(pool)
        .await
        .and_then(|r| r.try_get("n")))?;
        Ok(n.max(0) as u64)
    }

    async fn claim_username(&self, username: &str, id: &str) -> Result<bool, Error> {
        self.ensure_schema().await?;
        let n = on_pool!(self, |pool| {
            sqlx::query(
            "INSERT INTO usernames (username, id) VALUES ($1, $2) ON CONFLICT (username) DO NOTHING"
        )
        .bind(username)
        .bind(id)
        .execute(pool)
        .await
        .map(|r| r.rows_affected())
        })?;
        Ok(n > 0)
    }

    async fn lookup_username(&self, username: &str) -> Result<Option<String>, Error> {
        self.ensure_schema().await?;
        let id = on_pool!(self, |pool| {
            sqlx::query("SELECT id FROM usernames WHERE username = $1")
                .bind(username)
                .fetch_optional(pool)
                .await?
                .map(|r| r.try_get::<String, _>("id"))
                .transpose()
        })?;
        Ok(id)
    }

    async fn upsert(&self, p: &Profile) -> Result<(), Error> {
        self.ensure_schema().await?;
        let sql = format!(
            "INSERT INTO profiles ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (id) DO UPDATE SET username = excluded.username, email = excluded.email,
             first_name = excluded.first_name, last_name = excluded.last_name,
             role = excluded.role, created_at = excluded.created_at, updated_at = excluded.updated_at"
        );
        on_pool!(self, |pool| sqlx::query(&sql)
            .bind(&p.id)
            .bind(&p.username)
            .bind(&p.email)
            .bind(&p.first_name)
            .bind(&p.last_name)
            .bind(&p.role)
            .bind(&p.created_at)
            .bind(&p.updated_at)
            .execute(pool)
            .await
            .map(|_| ()))?;
        Ok(())
    }

    async fn usernames_after(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, String)>, Error> {
        self.ensure_schema().await?;
        let rows = on_pool!(self, |pool| {
            sqlx::query(
                "SELECT username, id FROM usernames WHERE username > $1 ORDER BY username LIMIT $2",
            )
            .bind(after.unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| Ok::<_, sqlx::Error>((r.try_get("username")?, r.try_get("id")?)))
            .collect::<Result<Vec<_>, _>>()
        })?;
        Ok(rows)
    }

    async fn put_username(&self, username: &str, id: &str) -> Result<(), Error> {
        self.ensure_schema().await?;
        on_pool!(self, |pool| sqlx::query(
            "INSERT INTO usernames (username, id) VALUES ($1, $2)
             ON CONFLICT (username) DO UPDATE SET id = excluded.id"
        )
        .bind(username)
        .bind(id)
        .execute(pool)
        .await
        .map(|_| ()))?;
        Ok(())
    }

    async fn load_layout(&self) -> Result<Option<(u32, Option<u32>)>, Error> {
        self.ensure_schema().await?;
        let row = on_pool!(self, |pool| {
            sqlx::query("SELECT shard_count, target FROM layout WHERE name = 'users'")
                .fetch_optional(pool)
                .await?
                .map(|r| {
                    Ok::<_, sqlx::Error>((
                        r.try_get::<i64, _>("shard_count")?,
                        r.try_get::<Option<i64>, _>("target")?,
                    ))
                })
                .transpose()
        })?;
        Ok(row.map(|(c, t)| (c.max(1) as u32, t.map(|t| t.max(1) as u32))))
    }

    async fn save_layout(&self, count: u32, target: Option<u32>) -> Result<(), Error> {
        self.ensure_schema().await?;
        on_pool!(self, |pool| {
            sqlx::query(
            "INSERT INTO layout (name, shard_count, target) VALUES ('users', $1, $2)
             ON CONFLICT (name) DO UPDATE SET shard_count = excluded.shard_count, target = excluded.target"
        )
        .bind(i64::from(count))
        .bind(target.map(i64::from))
        .execute(pool)
        .await
        .map(|_| ())
        })?;
        Ok(())
    }

    async fn release_username(&self, username: &str, id: &str) -> Result<(), Error> {
        self.ensure_schema().await?;
        on_pool!(self, |pool| sqlx::query(
            "DELETE FROM usernames WHERE username = $1 AND id = $2"
        )
        .bind(username)
        .bind(id)
        .execute(pool)
        .await
        .map(|_| ()))?;
        Ok(())
    }
}
