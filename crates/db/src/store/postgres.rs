//! The real-engine store: PostgreSQL, for a database shared by several `db` instances.

use std::time::Duration;

use api::wire::db::Record;
use serde_json::Value;
use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions};

use super::{Store, record};
use crate::Error;
use common::time::now_rfc3339;

const CREATE: &str = "CREATE TABLE IF NOT EXISTS records (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at TEXT NOT NULL
)";

/// Records in a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user@host:port/db`) and creates the table if needed.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            // A database that does not answer within this is reported as unavailable (503)
            // rather than holding requests until the stack's timeout.
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await?;
        sqlx::query(CREATE).execute(&pool).await?;
        Ok(Self { pool })
    }
}

#[async_trait::async_trait]
impl Store for PostgresStore {
    fn engine(&self) -> &'static str {
        "postgres"
    }

    async fn get(&self, key: &str) -> Result<Option<Record>, Error> {
        let row = sqlx::query("SELECT value, updated_at FROM records WHERE key = $1")
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
            "INSERT INTO records (key, value, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = EXCLUDED.updated_at",
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
        let (keys, values): (Vec<String>, Vec<String>) = records
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .unzip();
        // One statement for the whole batch: a round trip per record would make the first start
        // against a remote server slow.
        let written = sqlx::query(
            "INSERT INTO records (key, value, updated_at)
             SELECT k, v, $3 FROM UNNEST($1::text[], $2::text[]) AS s(k, v)
             ON CONFLICT (key) DO NOTHING",
        )
        .bind(keys)
        .bind(values)
        .bind(&updated_at)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(written)
    }

    async fn ping(&self) -> Result<(), Error> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
