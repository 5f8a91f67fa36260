//! Where records live: the [`Store`] trait and [`SqlStore`], its implementation over SQLite
//! (embedded, the default) or PostgreSQL (`common::sql`), chosen by
//! [`crate::Config::database_url`].
//!
//! One table, `records(key TEXT PRIMARY KEY, value TEXT, updated_at TEXT)`: `value` is the JSON
//! text of the value and `updated_at` an RFC 3339 UTC time. The same text in both engines keeps
//! their answers identical, byte for byte.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use api::wire::db::Record;
use common::sql::{self, Db, Pool, Schema};
use common::time::now_rfc3339;
use serde_json::{Value, json};

use crate::{Config, Error};

const SCHEMA: Schema = Schema::same(
    "CREATE TABLE IF NOT EXISTS records (
    key TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL,
    updated_at TEXT NOT NULL
)",
);

/// The key of the record behind `GET /db`.
pub(crate) const MY_DATA: &str = "my_data";

/// A key/value store of JSON records.
///
/// Implementations only store; latency, failures, key checks and metrics are the router's.
#[async_trait::async_trait]
pub trait Store: Send + Sync + Debug {
    /// The engine's name, for logs (`sqlite`, `postgres`).
    fn engine(&self) -> &'static str;

    /// The record under `key`, if any.
    async fn get(&self, key: &str) -> Result<Option<Record>, Error>;

    /// Writes `value` under `key`, replacing any previous value, and returns the record as stored.
    async fn put(&self, key: &str, value: &Value) -> Result<Record, Error>;

    /// Writes the records whose keys are absent and leaves the others alone (seeding must not undo
    /// a user's writes on restart); returns how many were written.
    async fn insert_missing(&self, records: &[(String, Value)]) -> Result<u64, Error>;

    /// Checks that the database answers (`GET /ready`).
    async fn ping(&self) -> Result<(), Error>;
}

/// Opens the store that `config` names, creating the table if needed.
pub(crate) async fn open(config: &Config) -> Result<Arc<dyn Store>, Error> {
    match config.database_url.as_deref() {
        None => Ok(Arc::new(
            SqlStore::open_file(&config.data_dir.join("db.sqlite")).await?,
        )),
        Some(url) => Ok(Arc::new(SqlStore::open(url).await?)),
    }
}

/// Records in a SQLite file (WAL mode, so that reads never wait for a write) or a PostgreSQL
/// database shared by several `db` instances.
#[derive(Debug)]
pub struct SqlStore {
    db: Db,
}

impl SqlStore {
    /// Opens `url` (`sqlite:PATH`, `sqlite::memory:`, `postgres://user@host:port/db`; see
    /// `common::sql` for when it connects) and creates the table if needed.
    pub async fn open(url: &str) -> Result<Self, Error> {
        Ok(Self {
            db: Db::open(url, SCHEMA, options()).await?,
        })
    }

    /// Opens (creating if needed) the SQLite file at `path` and its table.
    pub async fn open_file(path: &std::path::Path) -> Result<Self, Error> {
        Ok(Self {
            db: Db::open_file(path, SCHEMA, options()).await?,
        })
    }
}

fn options() -> sql::Options {
    sql::Options {
        max_connections: 16,
        // A database that does not answer within this is reported as unavailable (503) rather
        // than holding requests until the stack's timeout.
        acquire_timeout: Duration::from_secs(5),
        ..sql::Options::default()
    }
}

#[async_trait::async_trait]
impl Store for SqlStore {
    fn engine(&self) -> &'static str {
        self.db.engine().as_str()
    }

    async fn get(&self, key: &str) -> Result<Option<Record>, Error> {
        let row = self
            .db
            .fetch_optional(
                "SELECT value, updated_at FROM records WHERE key = $1",
                &[key.into()],
            )
            .await?;
        row.map(|row| record(key, &row.get::<String>("value")?, row.get("updated_at")?))
            .transpose()
    }

    async fn put(&self, key: &str, value: &Value) -> Result<Record, Error> {
        let updated_at = now_rfc3339();
        let text = value.to_string();
        self.db
            .execute(
                "INSERT INTO records (key, value, updated_at) VALUES ($1, $2, $3)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                &[key.into(), (&text).into(), (&updated_at).into()],
            )
            .await?;
        Ok(Record {
            key: key.to_string(),
            value: value.clone(),
            updated_at,
        })
    }

    async fn insert_missing(&self, records: &[(String, Value)]) -> Result<u64, Error> {
        let updated_at = now_rfc3339();
        let (keys, values): (Vec<String>, Vec<String>) = records
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .unzip();
        // Per engine: PostgreSQL takes the batch as arrays in one statement (a round trip per
        // record would make the first start against a remote server slow); SQLite has no arrays,
        // so one transaction of single-row inserts (a commit each would wait for the disk).
        let written = match self.db.pool().await? {
            Pool::Postgres(pool) => sqlx::query(
                "INSERT INTO records (key, value, updated_at)
                 SELECT k, v, $3 FROM UNNEST($1::text[], $2::text[]) AS s(k, v)
                 ON CONFLICT (key) DO NOTHING",
            )
            .bind(keys)
            .bind(values)
            .bind(&updated_at)
            .execute(pool)
            .await?
            .rows_affected(),
            Pool::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                let mut written = 0;
                for (key, value) in keys.iter().zip(&values) {
                    written += sql::query(
                        "INSERT INTO records (key, value, updated_at) VALUES ($1, $2, $3)
                         ON CONFLICT (key) DO NOTHING",
                        &[key.into(), value.into(), (&updated_at).into()],
                    )
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                }
                tx.commit().await?;
                written
            }
        };
        Ok(written)
    }

    async fn ping(&self) -> Result<(), Error> {
        Ok(self.db.ping().await?)
    }
}

/// The records every fresh database starts with: the lab's `my_data` and `key-1` ..
/// `key-<count>`.
pub(crate) fn seed(count: u32) -> Vec<(String, Value)> {
    let mut records = Vec::with_capacity(count as usize + 1);
    records.push((
        MY_DATA.to_string(),
        json!({"message": "Hello from the database", "items": [1, 2, 3]}),
    ));
    records.extend((1..=count).map(|i| {
        (
            format!("key-{i}"),
            json!({"id": i, "name": format!("record {i}")}),
        )
    }));
    records
}

/// Turns a stored row back into a record.
fn record(key: &str, value: &str, updated_at: String) -> Result<Record, Error> {
    let value = serde_json::from_str(value).map_err(|source| Error::Corrupt {
        key: key.to_string(),
        source,
    })?;
    Ok(Record {
        key: key.to_string(),
        value,
        updated_at,
    })
}
