//! Where records live: the [`Store`] trait and its two engines, [`SqliteStore`] (embedded, the
//! default) and [`PostgresStore`], chosen by [`crate::Config::database_url`].
//!
//! Both keep one table, `records(key TEXT PRIMARY KEY, value TEXT, updated_at TEXT)`: `value` is
//! the JSON text of the value and `updated_at` an RFC 3339 UTC time. The same text in both engines
//! keeps their answers identical, byte for byte.

mod postgres;
mod sqlite;

use std::fmt::Debug;
use std::sync::Arc;

use api::wire::db::Record;
use serde_json::{Value, json};

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

use crate::{Config, Error};

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
        None => {
            tokio::fs::create_dir_all(&config.data_dir).await?;
            let path = config.data_dir.join("db.sqlite");
            Ok(Arc::new(SqliteStore::open(&path).await?))
        }
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Ok(Arc::new(PostgresStore::connect(url).await?))
        }
        Some(url) if url.starts_with("sqlite:") => Ok(Arc::new(SqliteStore::open_url(url).await?)),
        Some(_) => Err(Error::Config(
            "database_url must start with postgres://, postgresql:// or sqlite:".into(),
        )),
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
