//! The PostgreSQL store, for topologies whose auth instances run on several machines.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};

use super::{ACQUIRE_TIMEOUT, CredentialStore, StoredAccount, decode_roles, encode_roles};
use crate::Error;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS accounts (
    id TEXT PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    roles TEXT NOT NULL,
    created_at BIGINT NOT NULL
)";

/// An arbitrary constant naming the advisory lock that serialises schema creation: concurrent
/// `CREATE TABLE IF NOT EXISTS` statements can still collide on PostgreSQL's catalog.
const SCHEMA_LOCK: i64 = 0x5ca1_aba0_7400;

/// Accounts in a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects to `url` and creates the schema when missing.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .idle_timeout(Duration::from_secs(300))
            .connect(url)
            .await?;
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(SCHEMA_LOCK)
            .execute(&mut *tx)
            .await?;
        sqlx::query(SCHEMA).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(Self { pool })
    }
}

fn row_to_account(row: &PgRow) -> Result<StoredAccount, Error> {
    Ok(StoredAccount {
        id: row.try_get("id")?,
        username: row.try_get("username")?,
        password_hash: row.try_get("password_hash")?,
        roles: decode_roles(&row.try_get::<String, _>("roles")?)?,
        created_at_ms: row.try_get("created_at")?,
    })
}

#[async_trait]
impl CredentialStore for PgStore {
    async fn ping(&self) -> Result<(), Error> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn find(&self, username: &str) -> Result<Option<StoredAccount>, Error> {
        let row = sqlx::query(
            "SELECT id, username, password_hash, roles, created_at FROM accounts WHERE username = $1",
        )
        .bind(username)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(row_to_account).transpose()
    }

    async fn insert(&self, account: &StoredAccount) -> Result<bool, Error> {
        let done = sqlx::query(
            "INSERT INTO accounts (id, username, password_hash, roles, created_at)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (username) DO NOTHING",
        )
        .bind(&account.id)
        .bind(&account.username)
        .bind(&account.password_hash)
        .bind(encode_roles(&account.roles))
        .bind(account.created_at_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete(&self, username: &str) -> Result<bool, Error> {
        let done = sqlx::query("DELETE FROM accounts WHERE username = $1")
            .bind(username)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn set_roles(&self, username: &str, roles: &[String]) -> Result<bool, Error> {
        let done = sqlx::query("UPDATE accounts SET roles = $2 WHERE username = $1")
            .bind(username)
            .bind(encode_roles(roles))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::exercise;

    #[tokio::test]
    async fn postgres_store_behaves() {
        let Some(db) = common::testing::fresh_postgres("auth").await else {
            return;
        };
        // Two stores on one database, as two auth instances would have: both create the schema.
        let (a, b) = tokio::join!(PgStore::connect(&db.url), PgStore::connect(&db.url));
        let (a, b) = (a.expect("connect a"), b.expect("connect b"));
        exercise(&a).await;
        assert!(b.find("racer").await.expect("find").is_some());
        a.pool.close().await;
        b.pool.close().await;
    }
}
