//! The embedded store: one SQLite file shared by every auth instance on the machine.
//!
//! Several processes open the same file, so the journal is WAL (readers never block the writer)
//! and every connection waits up to `busy_timeout` for the write lock instead of failing at once.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqliteRow};

use super::{CredentialStore, StoredAccount, decode_roles, encode_roles};
use crate::Error;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS accounts (
    id TEXT PRIMARY KEY NOT NULL,
    username TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    roles TEXT NOT NULL,
    created_at INTEGER NOT NULL
)";

/// Accounts in a SQLite file (WAL mode).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens `path`, creating the file, its directory and the schema when missing.
    pub async fn open_file(path: &Path) -> Result<Self, Error> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::Config(format!(
                    "cannot create data directory {}: {e}",
                    dir.display()
                ))
            })?;
        }
        Self::open_with(SqliteConnectOptions::new().filename(path)).await
    }

    /// Opens a `sqlite:` URL, creating the file and the schema when missing.
    pub async fn open_url(url: &str) -> Result<Self, Error> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| Error::Config(format!("invalid SQLite URL {url:?}: {e}")))?;
        Self::open_with(options).await
    }

    async fn open_with(options: SqliteConnectOptions) -> Result<Self, Error> {
        let pool = common::sqlite::open_shared(options, 4, SCHEMA, Duration::from_secs(15)).await?;
        Ok(Self { pool })
    }
}

fn row_to_account(row: &SqliteRow) -> Result<StoredAccount, Error> {
    Ok(StoredAccount {
        id: row.try_get("id")?,
        username: row.try_get("username")?,
        password_hash: row.try_get("password_hash")?,
        roles: decode_roles(&row.try_get::<String, _>("roles")?)?,
        created_at_ms: row.try_get("created_at")?,
    })
}

#[async_trait]
impl CredentialStore for SqliteStore {
    async fn ping(&self) -> Result<(), Error> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn find(&self, username: &str) -> Result<Option<StoredAccount>, Error> {
        let row = sqlx::query(
            "SELECT id, username, password_hash, roles, created_at FROM accounts WHERE username = ?1",
        )
        .bind(username)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(row_to_account).transpose()
    }

    async fn insert(&self, account: &StoredAccount) -> Result<bool, Error> {
        let done = sqlx::query(
            "INSERT INTO accounts (id, username, password_hash, roles, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (username) DO NOTHING",
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
        let done = sqlx::query("DELETE FROM accounts WHERE username = ?1")
            .bind(username)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn set_roles(&self, username: &str, roles: &[String]) -> Result<bool, Error> {
        let done = sqlx::query("UPDATE accounts SET roles = ?2 WHERE username = ?1")
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
    use crate::store::tests::{account, exercise};

    #[tokio::test]
    async fn sqlite_store_behaves() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open_file(&dir.path().join("nested/auth.sqlite"))
            .await
            .expect("open");
        exercise(&store).await;
    }

    #[tokio::test]
    async fn two_pools_on_one_file_share_accounts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("auth.sqlite");
        let (a, b) = tokio::join!(SqliteStore::open_file(&path), SqliteStore::open_file(&path));
        let (a, b) = (a.expect("open a"), b.expect("open b"));
        assert!(
            a.insert(&account("shared", &["user"]))
                .await
                .expect("insert")
        );
        assert!(b.find("shared").await.expect("find").is_some());
        assert!(
            !b.insert(&account("shared", &["user"]))
                .await
                .expect("insert")
        );
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&a.pool)
            .await
            .expect("pragma");
        assert_eq!(mode, "wal");
    }

    #[tokio::test]
    async fn sqlite_urls_work() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("by-url.sqlite").display());
        let store = SqliteStore::open_url(&url).await.expect("open");
        store.ping().await.expect("ping");
        assert!(dir.path().join("by-url.sqlite").exists());
    }
}
