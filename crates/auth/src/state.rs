//! [`AppState`]: everything a request handler needs, built once at start.

use std::fmt;
use std::sync::Arc;

use api::wire::auth::{Claims, TokenResponse};
use common::Instance;
use serde_json::Value;

use crate::keys::Signer;
use crate::password::{Hasher, random_password};
use crate::store::{self, CredentialStore, StoredAccount};
use crate::{Config, Error, validate};

/// The shared state of an auth instance; cloning is cheap (one `Arc`).
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    /// TTLs, issuer and password rules (the admin password is removed once used).
    config: Config,
    /// Who we are: the `id` label of our metrics.
    instance: Instance,
    /// The accounts, shared with every other auth instance.
    store: Arc<dyn CredentialStore>,
    /// argon2id, bounded by a semaphore.
    hasher: Hasher,
    /// The Ed25519 key (or the HS256 secret) tokens are signed with.
    signer: Signer,
}

impl AppState {
    /// Opens the store `config` names, loads or makes the signing key and makes sure the
    /// bootstrap admin account exists.
    pub async fn new(config: Config, instance: Instance) -> Result<AppState, Error> {
        // Before the store is opened, so that a bad setting creates no file.
        config.check()?;
        let store = store::open(&config).await?;
        Self::with_store(config, instance, store).await
    }

    /// Like [`AppState::new`], with a store the caller built (another backend, or a test double).
    pub async fn with_store(
        mut config: Config,
        instance: Instance,
        store: Arc<dyn CredentialStore>,
    ) -> Result<AppState, Error> {
        config.check()?;
        let signer = Signer::from_config(&config)?;
        let hasher = Hasher::new(&config, instance.id.clone()).await?;
        let admin_password = config.admin_password.take();
        let state = AppState {
            inner: Arc::new(Inner {
                config,
                instance,
                store,
                hasher,
                signer,
            }),
        };
        state.bootstrap_admin(admin_password).await?;
        tracing::info!(
            id = %state.inner.instance.id,
            kid = state.inner.signer.kid(),
            "auth ready"
        );
        Ok(state)
    }

    /// The JWK set of `GET /.well-known/jwks.json`.
    pub fn jwks(&self) -> Value {
        self.inner.signer.jwks()
    }

    /// The key id in the header of every token this instance signs.
    pub fn kid(&self) -> &str {
        self.inner.signer.kid()
    }

    /// The instance this state belongs to.
    pub fn instance(&self) -> &Instance {
        &self.inner.instance
    }

    pub(crate) fn config(&self) -> &Config {
        &self.inner.config
    }

    pub(crate) fn store(&self) -> &dyn CredentialStore {
        self.inner.store.as_ref()
    }

    pub(crate) fn hasher(&self) -> &Hasher {
        &self.inner.hasher
    }

    /// A signed token for `sub`, valid `ttl_secs` from now.
    pub(crate) fn issue(
        &self,
        sub: &str,
        username: &str,
        roles: &[String],
        ttl_secs: u64,
    ) -> Result<TokenResponse, Error> {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: sub.to_string(),
            username: username.to_string(),
            roles: roles.to_vec(),
            iat: now,
            exp: now.saturating_add(ttl_secs),
            iss: self.inner.config.issuer.clone(),
        };
        Ok(TokenResponse {
            token: self.inner.signer.sign(&claims)?,
            token_type: "Bearer".to_string(),
            expires_in: ttl_secs,
        })
    }

    /// Creates the admin account when none of that name exists. Several instances may run this at
    /// once: the store's unique name lets one insert win, and only the winner logs.
    async fn bootstrap_admin(&self, password: Option<String>) -> Result<(), Error> {
        let config = &self.inner.config;
        let name = config.admin_username.as_str();
        if self.store().find(name).await?.is_some() {
            return Ok(());
        }
        validate::username(name).map_err(|_| {
            Error::Config(format!("admin_username {name:?} is not a valid username"))
        })?;
        let (password, generated) = match password {
            Some(p) => {
                validate::password(&p, config.password_min_len).map_err(|_| {
                    Error::Config(format!(
                        "SCALELAB_ADMIN_PASSWORD must be {} to {} characters long",
                        config.password_min_len,
                        validate::MAX_PASSWORD_CHARS
                    ))
                })?;
                (p, false)
            }
            None => (random_password(), true),
        };
        let account = StoredAccount {
            id: uuid::Uuid::new_v4().to_string(),
            username: name.to_string(),
            password_hash: self.hasher().hash(password.clone()).await?,
            roles: vec!["admin".to_string()],
            created_at_ms: common::now_ms() as i64,
        };
        if !self.store().insert(&account).await? {
            // Another instance created it between our lookup and our insert.
            return Ok(());
        }
        if generated {
            tracing::warn!(
                "created admin user {name:?} with generated password: {password} \
                 (shown once; set SCALELAB_ADMIN_PASSWORD to choose it)"
            );
        } else {
            tracing::info!(
                "created admin user {name:?} with the password from SCALELAB_ADMIN_PASSWORD"
            );
        }
        Ok(())
    }
}

impl fmt::Debug for AppState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppState")
            .field("instance", &self.inner.instance.id)
            .field("kid", &self.kid())
            .finish_non_exhaustive()
    }
}
