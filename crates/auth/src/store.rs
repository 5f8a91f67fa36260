//! Where accounts live: the [`CredentialStore`] trait and its two implementations, embedded SQLite
//! ([`sqlite::SqliteStore`]) and PostgreSQL ([`postgres::PgStore`]), chosen by
//! `Config::database_url`.
//!
//! Every auth instance of a topology uses the same store, so an account registered through one
//! instance logs in through the other. Usernames are unique (case-sensitive) in the store itself:
//! two instances racing to create the same name end with one account, and the loser sees `false`
//! from [`CredentialStore::insert`].

pub(crate) mod postgres;
pub(crate) mod sqlite;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::{Config, Error};

/// How long a request waits for a store connection before answering `503 store_unavailable`.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

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
        None | Some("") => {
            let path = config.data_dir.join("auth.sqlite");
            Ok(Arc::new(sqlite::SqliteStore::open_file(&path).await?))
        }
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Ok(Arc::new(postgres::PgStore::connect(url).await?))
        }
        Some(url) if url.starts_with("sqlite:") => {
            Ok(Arc::new(sqlite::SqliteStore::open_url(url).await?))
        }
        Some(url) => Err(Error::Config(format!(
            "database_url {:?} is neither postgres://... nor sqlite:...",
            crate::config::redact_url(url)
        ))),
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
