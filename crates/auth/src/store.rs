//! Where accounts live: the [`CredentialStore`] trait and [`SqlStore`], its implementation over
//! embedded SQLite or PostgreSQL (`common::sql`), chosen by `Config::database_url`.
//!
//! Every auth instance of a topology uses the same store, so an account registered through one
//! instance logs in through the other. Usernames are unique (case-sensitive) in the store itself:
//! two instances racing to create the same name end with one account, and the loser sees `false`
//! from [`CredentialStore::insert`].

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::sql::{self, Db, Schema};

use crate::{Config, Error};

/// How long a request waits for a store connection before answering `503 store_unavailable`.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: Schema = Schema::same(
    "CREATE TABLE IF NOT EXISTS accounts (
    id TEXT PRIMARY KEY NOT NULL,
    username TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    roles TEXT NOT NULL,
    created_at BIGINT NOT NULL
)",
);

const COLUMNS: &str = "id, username, password_hash, roles, created_at";

/// One row of the `accounts` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAccount {
    /// Stable id (UUID v4), the `sub` claim of the account's tokens.
    pub id: String,
    /// The unique account name.
    pub username: String,
    /// The argon2id PHC string (`$argon2id$v=19$m=...`).
    pub password_hash: String,
    /// Roles, carried in the `roles` claim.
    pub roles: Vec<String>,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at_ms: i64,
}

impl StoredAccount {
    /// The public view: no hash, ever.
    pub fn to_account(&self) -> api::wire::auth::Account {
        api::wire::auth::Account {
            id: self.id.clone(),
            username: self.username.clone(),
            roles: self.roles.clone(),
        }
    }
}

/// The account store `auth` needs: four operations, small enough that a new backend is an
/// afternoon's work.
#[async_trait]
pub trait CredentialStore: Send + Sync + 'static {
    /// Answers when the store is reachable (`SELECT 1`); used by `GET /ready`.
    async fn ping(&self) -> Result<(), Error>;
    /// The account named `username`, if any.
    async fn find(&self, username: &str) -> Result<Option<StoredAccount>, Error>;
    /// Inserts `account` unless its username exists; `Ok(false)` means the name was taken (by an
    /// earlier or a concurrent insert).
    async fn insert(&self, account: &StoredAccount) -> Result<bool, Error>;
    /// Deletes the account named `username`; `Ok(false)` when there was none.
    async fn delete(&self, username: &str) -> Result<bool, Error>;
    /// Replaces the roles of the account named `username` (effective from its next token);
    /// `Ok(false)` when there is none.
    async fn set_roles(&self, username: &str, roles: &[String]) -> Result<bool, Error>;
}

/// Opens (and creates the schema of) the store `config` names.
pub(crate) async fn open(config: &Config) -> Result<Arc<dyn CredentialStore>, Error> {
    match config.database_url.as_deref().map(str::trim) {
        None | Some("") => Ok(Arc::new(
            SqlStore::open_file(&config.data_dir.join("auth.sqlite")).await?,
        )),
        Some(url) => Ok(Arc::new(SqlStore::open(url).await?)),
    }
}

/// Accounts in a SQLite file (WAL mode, shared by every auth instance on the machine) or a
/// PostgreSQL database (instances on several machines).
#[derive(Debug)]
pub struct SqlStore {
    db: Db,
}

impl SqlStore {
    /// Opens `url` (`sqlite:PATH` or `postgres://...`; see `common::sql` for when it connects).
    pub async fn open(url: &str) -> Result<Self, Error> {
        Ok(Self {
            db: Db::open(url, SCHEMA, options()).await?,
        })
    }

    /// Opens the SQLite file at `path`, creating the file, its directory and the schema when
    /// missing.
    pub async fn open_file(path: &Path) -> Result<Self, Error> {
        Ok(Self {
            db: Db::open_file(path, SCHEMA, options()).await?,
        })
    }
}

fn options() -> sql::Options {
    sql::Options {
        max_connections: 8,
        acquire_timeout: ACQUIRE_TIMEOUT,
        ..sql::Options::default()
    }
}

fn row_to_account(row: &sql::Row) -> Result<StoredAccount, Error> {
    Ok(StoredAccount {
        id: row.get("id")?,
        username: row.get("username")?,
        password_hash: row.get("password_hash")?,
        roles: decode_roles(&row.get::<String>("roles")?)?,
        created_at_ms: row.get("created_at")?,
    })
}

#[async_trait]
impl CredentialStore for SqlStore {
    async fn ping(&self) -> Result<(), Error> {
        Ok(self.db.ping().await?)
    }

    async fn find(&self, username: &str) -> Result<Option<StoredAccount>, Error> {
        let row = self
            .db
            .fetch_optional(
                &format!("SELECT {COLUMNS} FROM accounts WHERE username = $1"),
                &[username.into()],
            )
            .await?;
        row.as_ref().map(row_to_account).transpose()
    }

    async fn insert(&self, account: &StoredAccount) -> Result<bool, Error> {
        let roles = encode_roles(&account.roles);
        let inserted = self
            .db
            .execute(
                &format!(
                    "INSERT INTO accounts ({COLUMNS}) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (username) DO NOTHING"
                ),
                &[
                    (&account.id).into(),
                    (&account.username).into(),
                    (&account.password_hash).into(),
                    (&roles).into(),
                    account.created_at_ms.into(),
                ],
            )
            .await?;
        Ok(inserted == 1)
    }

    async fn delete(&self, username: &str) -> Result<bool, Error> {
        let deleted = self
            .db
            .execute(
                "DELETE FROM accounts WHERE username = $1",
                &[username.into()],
            )
            .await?;
        Ok(deleted > 0)
    }

    async fn set_roles(&self, username: &str, roles: &[String]) -> Result<bool, Error> {
        let roles = encode_roles(roles);
        let changed = self
            .db
            .execute(
                "UPDATE accounts SET roles = $2 WHERE username = $1",
                &[username.into(), (&roles).into()],
            )
            .await?;
        Ok(changed > 0)
    }
}

/// Roles are stored as a JSON array in a TEXT column (portable across both engines).
fn encode_roles(roles: &[String]) -> String {
    serde_json::Value::from(roles.to_vec()).to_string()
}

fn decode_roles(text: &str) -> Result<Vec<String>, Error> {
    serde_json::from_str(text)
        .map_err(|e| Error::Internal(format!("stored roles {text:?} are not a JSON array: {e}")))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn account(username: &str, roles: &[&str]) -> StoredAccount {
        StoredAccount {
            id: uuid::Uuid::new_v4().to_string(),
            username: username.to_string(),
            password_hash: "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA".to_string(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            created_at_ms: 1_700_000_000_000,
        }
    }

    /// The behaviour every backend must have.
    pub(crate) async fn exercise(store: &dyn CredentialStore) {
        store.ping().await.expect("ping");
        assert_eq!(store.find("alice").await.expect("find"), None);

        let alice = account("alice", &["user", "admin"]);
        assert!(store.insert(&alice).await.expect("insert"));
        assert_eq!(
            store.find("alice").await.expect("find"),
            Some(alice.clone())
        );

        // The name is taken even with another id; the first account is untouched.
        let other = account("alice", &["user"]);
        assert!(!store.insert(&other).await.expect("second insert"));
        assert_eq!(
            store.find("alice").await.expect("find").map(|a| a.id),
            Some(alice.id)
        );

        // Names are case-sensitive and exact.
        assert_eq!(store.find("Alice").await.expect("find"), None);

        assert!(store.delete("alice").await.expect("delete"));
        assert!(!store.delete("alice").await.expect("delete again"));
        assert_eq!(store.find("alice").await.expect("find"), None);

        // Concurrent inserts of one name: exactly one wins.
        let results = futures_join(store).await;
        assert_eq!(results.iter().filter(|won| **won).count(), 1, "{results:?}");
    }

    async fn futures_join(store: &dyn CredentialStore) -> Vec<bool> {
        let accounts: Vec<_> = (0..4).map(|_| account("racer", &["user"])).collect();
        let (a, b, c, d) = tokio::join!(
            store.insert(&accounts[0]),
            store.insert(&accounts[1]),
            store.insert(&accounts[2]),
            store.insert(&accounts[3]),
        );
        [a, b, c, d]
            .into_iter()
            .map(|r| r.expect("insert"))
            .collect()
    }

    #[test]
    fn roles_round_trip() {
        let roles = vec!["user".to_string(), "admin".to_string()];
        assert_eq!(encode_roles(&roles), r#"["user","admin"]"#);
        assert_eq!(decode_roles(&encode_roles(&roles)).expect("decode"), roles);
        assert!(decode_roles("user,admin").is_err());
    }

    #[tokio::test]
    async fn sqlite_store_behaves() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqlStore::open_file(&dir.path().join("nested/auth.sqlite"))
            .await
            .expect("open");
        exercise(&store).await;
    }

    #[tokio::test]
    async fn two_pools_on_one_file_share_accounts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("auth.sqlite");
        let (a, b) = tokio::join!(SqlStore::open_file(&path), SqlStore::open_file(&path));
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
        let mode =
            a.db.fetch_one("PRAGMA journal_mode", &[])
                .await
                .expect("pragma")
                .get::<String>("journal_mode")
                .expect("mode");
        assert_eq!(mode, "wal");
    }

    #[tokio::test]
    async fn sqlite_urls_work() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("by-url.sqlite").display());
        let store = SqlStore::open(&url).await.expect("open");
        store.ping().await.expect("ping");
        assert!(dir.path().join("by-url.sqlite").exists());
    }

    #[tokio::test]
    async fn postgres_store_behaves() {
        let Some(db) = common::testing::fresh_postgres("auth").await else {
            return;
        };
        // Two stores on one database, as two auth instances would have: both create the schema.
        let (a, b) = tokio::join!(SqlStore::open(&db.url), SqlStore::open(&db.url));
        let (a, b) = (a.expect("connect a"), b.expect("connect b"));
        let (pa, pb) = tokio::join!(a.ping(), b.ping());
        pa.and(pb).expect("both create the schema");
        exercise(&a).await;
        assert!(b.find("racer").await.expect("find").is_some());
        a.db.close().await;
        b.db.close().await;
    }

    #[tokio::test]
    async fn unsupported_urls_are_a_config_error() {
        let config = Config {
            database_url: Some("mysql://u:pw@h/db".into()),
            ..Config::default()
        };
        match open(&config).await {
            Err(Error::Config(msg)) => assert!(!msg.contains("pw"), "{msg}"),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("mysql is not supported"),
        }
    }
}
