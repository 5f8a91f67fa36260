//! One shard's database: the [`ShardStore`] trait and [`SqlStore`], its implementation over
//! SQLite (embedded, one file per shard) and PostgreSQL (one database per shard).
//!
//! Both engines run the same SQL text through `common::sql`, so one implementation serves both;
//! the trait exists so that tests can put a shard that is down in the layout.
//!
//! Each shard holds two tables:
//! - `profiles`: the profiles whose id hashes to this shard;
//! - `usernames`: the username index entries whose *username* hashes to this shard, so that a
//!   username is unique across shards with one lookup on one shard (see `sharded.rs`).

use std::fmt::Debug;
use std::time::Duration;

use api::wire::users::Profile;
use async_trait::async_trait;
use common::sql::{self, Arg, Db, Schema};

use crate::Error;

const SCHEMA: Schema = Schema::same(
    "
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
);",
);

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

/// A shard database over SQLite or PostgreSQL (`common::sql`: one SQL text for both).
#[derive(Debug)]
pub struct SqlStore {
    db: Db,
}

impl SqlStore {
    /// Opens `url`: `sqlite:PATH` (created if missing, WAL) or `postgres://...` (connects on
    /// first use, so that a shard that is down at start does not stop the others from serving).
    pub async fn open(url: &str) -> Result<SqlStore, Error> {
        Self::open_with(url, false).await
    }

    /// Opens a read replica: like [`SqlStore::open`] for SQLite; for PostgreSQL no schema is
    /// created (a hot standby refuses DDL; the schema arrives from the primary by replication).
    pub async fn open_replica(url: &str) -> Result<SqlStore, Error> {
        Self::open_with(url, true).await
    }

    async fn open_with(url: &str, replica: bool) -> Result<SqlStore, Error> {
        let options = sql::Options {
            max_connections: 8,
            // A shard that does not answer within this is reported down (503) rather than
            // holding requests until the stack's timeout. A replica gets less: its reads have
            // the primary to fall back to.
            acquire_timeout: if replica {
                Duration::from_millis(500)
            } else {
                Duration::from_secs(2)
            },
            replica,
            ..sql::Options::default()
        };
        Ok(SqlStore {
            db: Db::open(url, SCHEMA, options).await?,
        })
    }
}

fn profile(row: &sql::Row) -> Result<Profile, sqlx::Error> {
    Ok(Profile {
        id: row.get("id")?,
        username: row.get("username")?,
        email: row.get("email")?,
        first_name: row.get("first_name")?,
        last_name: row.get("last_name")?,
        role: row.get("role")?,
        created_at: row.get("created_at")?,
        updated_at: row.get("updated_at")?,
    })
}

/// The eight columns of a profile, in [`COLUMNS`] order, as statement arguments.
fn profile_args(p: &Profile) -> [Arg<'_>; 8] {
    [
        (&p.id).into(),
        (&p.username).into(),
        (&p.email).into(),
        (&p.first_name).into(),
        (&p.last_name).into(),
        (&p.role).into(),
        (&p.created_at).into(),
        (&p.updated_at).into(),
    ]
}

#[async_trait]
impl ShardStore for SqlStore {
    fn engine(&self) -> &'static str {
        self.db.engine().as_str()
    }

    async fn ping(&self) -> Result<(), Error> {
        Ok(self.db.ping().await?)
    }

    async fn insert(&self, p: &Profile) -> Result<bool, Error> {
        let sql =
            format!("INSERT INTO profiles ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)");
        match self.db.execute(&sql, &profile_args(p)).await {
            Ok(_) => Ok(true),
            Err(e) if sql::is_unique_violation(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn get(&self, id: &str) -> Result<Option<Profile>, Error> {
        let sql = format!("SELECT {COLUMNS} FROM profiles WHERE id = $1");
        let row = self.db.fetch_optional(&sql, &[id.into()]).await?;
        Ok(row.as_ref().map(profile).transpose()?)
    }

    async fn update(&self, id: &str, c: &Changes) -> Result<Option<Profile>, Error> {
        // COALESCE keeps the fields the update does not name; one statement, so concurrent
        // updates of different fields do not undo each other.
        let sql = format!(
            "UPDATE profiles SET email = COALESCE($2, email), first_name = COALESCE($3, first_name),
             last_name = COALESCE($4, last_name), role = COALESCE($5, role), updated_at = $6
             WHERE id = $1 RETURNING {COLUMNS}"
        );
        let row = self
            .db
            .fetch_optional(
                &sql,
                &[
                    id.into(),
                    (&c.email).into(),
                    (&c.first_name).into(),
                    (&c.last_name).into(),
                    (&c.role).into(),
                    (&c.updated_at).into(),
                ],
            )
            .await?;
        Ok(row.as_ref().map(profile).transpose()?)
    }

    async fn delete(&self, id: &str) -> Result<bool, Error> {
        let n = self
            .db
            .execute("DELETE FROM profiles WHERE id = $1", &[id.into()])
            .await?;
        Ok(n > 0)
    }

    async fn list_after(&self, after: Option<&str>, limit: u32) -> Result<Vec<Profile>, Error> {
        let sql = format!("SELECT {COLUMNS} FROM profiles WHERE id > $1 ORDER BY id LIMIT $2");
        let rows = self
            .db
            .fetch_all(&sql, &[after.unwrap_or("").into(), i64::from(limit).into()])
            .await?;
        Ok(rows.iter().map(profile).collect::<Result<Vec<_>, _>>()?)
    }

    async fn count(&self) -> Result<u64, Error> {
        let n: i64 = self
            .db
            .fetch_one("SELECT COUNT(*) AS n FROM profiles", &[])
            .await?
            .get("n")?;
        Ok(n.max(0) as u64)
    }

    async fn claim_username(&self, username: &str, id: &str) -> Result<bool, Error> {
        let n = self
            .db
            .execute(
                "INSERT INTO usernames (username, id) VALUES ($1, $2) ON CONFLICT (username) DO NOTHING",
                &[username.into(), id.into()],
            )
            .await?;
        Ok(n > 0)
    }

    async fn lookup_username(&self, username: &str) -> Result<Option<String>, Error> {
        let row = self
            .db
            .fetch_optional(
                "SELECT id FROM usernames WHERE username = $1",
                &[username.into()],
            )
            .await?;
        Ok(row.map(|r| r.get("id")).transpose()?)
    }

    async fn upsert(&self, p: &Profile) -> Result<(), Error> {
        let sql = format!(
            "INSERT INTO profiles ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (id) DO UPDATE SET username = excluded.username, email = excluded.email,
             first_name = excluded.first_name, last_name = excluded.last_name,
             role = excluded.role, created_at = excluded.created_at, updated_at = excluded.updated_at"
        );
        self.db.execute(&sql, &profile_args(p)).await?;
        Ok(())
    }

    async fn usernames_after(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, String)>, Error> {
        let rows = self
            .db
            .fetch_all(
                "SELECT username, id FROM usernames WHERE username > $1 ORDER BY username LIMIT $2",
                &[after.unwrap_or("").into(), i64::from(limit).into()],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| Ok::<_, sqlx::Error>((r.get("username")?, r.get("id")?)))
            .collect::<Result<Vec<_>, _>>()?)
    }

    async fn put_username(&self, username: &str, id: &str) -> Result<(), Error> {
        self.db
            .execute(
                "INSERT INTO usernames (username, id) VALUES ($1, $2)
                 ON CONFLICT (username) DO UPDATE SET id = excluded.id",
                &[username.into(), id.into()],
            )
            .await?;
        Ok(())
    }

    async fn load_layout(&self) -> Result<Option<(u32, Option<u32>)>, Error> {
        let row = self
            .db
            .fetch_optional(
                "SELECT shard_count, target FROM layout WHERE name = 'users'",
                &[],
            )
            .await?;
        let row = row
            .map(|r| {
                Ok::<_, sqlx::Error>((
                    r.get::<i64>("shard_count")?,
                    r.get::<Option<i64>>("target")?,
                ))
            })
            .transpose()?;
        Ok(row.map(|(c, t)| (c.max(1) as u32, t.map(|t| t.max(1) as u32))))
    }

    async fn save_layout(&self, count: u32, target: Option<u32>) -> Result<(), Error> {
        self.db
            .execute(
                "INSERT INTO layout (name, shard_count, target) VALUES ('users', $1, $2)
                 ON CONFLICT (name) DO UPDATE SET shard_count = excluded.shard_count, target = excluded.target",
                &[i64::from(count).into(), target.map(i64::from).into()],
            )
            .await?;
        Ok(())
    }

    async fn release_username(&self, username: &str, id: &str) -> Result<(), Error> {
        self.db
            .execute(
                "DELETE FROM usernames WHERE username = $1 AND id = $2",
                &[username.into(), id.into()],
            )
            .await?;
        Ok(())
    }
}
