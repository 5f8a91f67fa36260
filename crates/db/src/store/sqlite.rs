//! The embedded engine: one SQLite file in WAL mode, so that reads never wait for a write.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use api::wire::db::Record;
use serde_json::Value;
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};

use super::{Store, record};
use crate::Error;
use common::time::now_rfc3339;

const CREATE: &str = "CREATE TABLE IF NOT EXISTS records (
    key TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL,
    updated_at TEXT NOT NULL
)";

/// Records in a SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path` and its table.
    pub async fn open(path: &Path) -> Result<Self, Error> {
        Self::with_options(SqliteConnectOptions::new().filename(path)).await
    }

    /// Opens a `sqlite:` URL (`sqlite:data/db.sqlite`, `sqlite::memory:` ...) and its table.
    pub async fn open_url(url: &str) -> Result<Self, Error> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| Error::Config(format!("bad sqlite URL: {e}")))?;
        Self::with_options(options).await
    }

    async fn with_options(options: SqliteConnectOptions) -> Result<Self, Error> {
        let pool = common::sqlite::open_shared(options, 8, CREATE, Duration::from_secs(15)).await?;
        Ok(Self { pool })
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    fn engine(&self) -> &'static str {
        "sqlite"
    }

    async fn get(&self, key: &str) -> Result<Option<Record>, Error> {
        let row = sqlx::query("SELECT value, updated_at FROM records WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            let value: String = row.try_get("value")?;
            record(key, &value, row.try_get("updated_at")?)
        })
        .transpose()
    }

    async fn put(&self, key: &str, value: &Value) -> Result<Record, Error> {
        let updated_at = now_rfc3339();
        sqlx::query(
            "INSERT INTO records (key, value, updated_at) VALUES (?, ?, ?)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        )
        .bind(key)
        .bind(value.to_string())
        .bind(&updated_at)
        .execute(&self.pool)
        .await?;
        Ok(Record {
            key: key.to_string(),
            value: value.clone(),
            updated_at,
        })
    }

    async fn insert_missing(&self, records: &[(String, Value)]) -> Result<u64, Error> {
        let updated_at = now_rfc3339();
        // One transaction: a thousand single-row commits would each wait for the disk.
        let mut tx = self.pool.begin().await?;
        let mut written = 0;
        for (key, value) in records {
            written += sqlx::query(
                "INSERT INTO records (key, value, updated_at) VALUES (?, ?, ?)
                 ON CONFLICT (key) DO NOTHING",
            )
            .bind(key)
            .bind(value.to_string())
            .bind(&updated_at)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(written)
    }

    async fn ping(&self) -> Result<(), Error> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
