//! Password hashing: argon2id with the configured cost, off the async threads and bounded.
//!
//! Hashing is deliberately expensive (tens of milliseconds and ~19 MiB each by default), so every
//! hash or verification runs on a blocking thread and holds a permit of a semaphore sized by
//! `max_concurrent_hashes`: a login flood queues up instead of taking every core and all memory.

use std::sync::Arc;
use std::time::Instant;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::Rng;
use tokio::sync::Semaphore;

use crate::{Config, Error};

/// Hashes and verifies passwords; cheap to clone.
#[derive(Clone)]
pub(crate) struct Hasher {
    argon2: Argon2<'static>,
    /// One permit per hash allowed to run at once.
    permits: Arc<Semaphore>,
    /// The hash of a random password, made with the configured cost at start: verified when the
    /// user does not exist, so that "unknown user" takes as long as "wrong password".
    dummy_hash: Arc<str>,
    /// The instance id, the `id` label of the hashing metrics.
    id: Arc<str>,
}

impl Hasher {
    /// Checks the configured cost and makes the dummy hash.
    pub(crate) async fn new(config: &Config, id: Arc<str>) -> Result<Self, Error> {
        let params = Params::new(
            config.argon2_memory_kib,
            config.argon2_iterations,
            config.argon2_parallelism,
            None,
        )
        .map_err(|e| Error::Config(format!("argon2 parameters: {e}")))?;
        if config.max_concurrent_hashes == 0 {
            return Err(Error::Config(
                "max_concurrent_hashes must be at least 1".to_string(),
            ));
        }
        let mut hasher = Self {
            argon2: Argon2::new(Algorithm::Argon2id, Version::V0x13, params),
            permits: Arc::new(Semaphore::new(config.max_concurrent_hashes)),
            dummy_hash: Arc::from(""),
            id,
        };
        hasher.dummy_hash = Arc::from(hasher.hash(random_password()).await?);
        Ok(hasher)
    }

    /// The PHC string (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`) of `password`, salted afresh.
    pub(crate) async fn hash(&self, password: String) -> Result<String, Error> {
        let argon2 = self.argon2.clone();
        self.blocking("hash", move || {
            let salt = SaltString::generate(&mut rand::rngs::OsRng);
            argon2
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| Error::Internal(format!("argon2 hash: {e}")))
        })
        .await
    }

    /// Whether `password` matches `phc`, with the cost recorded in `phc` itself (so accounts made
    /// under older settings still log in).
    pub(crate) async fn verify(&self, password: String, phc: &str) -> Result<bool, Error> {
        let argon2 = self.argon2.clone();
        let phc = phc.to_string();
        self.blocking("verify", move || {
            let parsed = PasswordHash::new(&phc)
                .map_err(|e| Error::Internal(format!("stored hash is not a PHC string: {e}")))?;
            match argon2.verify_password(password.as_bytes(), &parsed) {
                Ok(()) => Ok(true),
                Err(argon2::password_hash::Error::Password) => Ok(false),
                Err(e) => Err(Error::Internal(format!("argon2 verify: {e}"))),
            }
        })
        .await
    }

    /// Spends the time of one verification against the dummy hash; the answer is ignored.
    pub(crate) async fn verify_dummy(&self, password: String) -> Result<(), Error> {
        let dummy = self.dummy_hash.clone();
        self.verify(password, &dummy).await.map(|_| ())
    }

    /// Runs `work` on a blocking thread once a permit is free. The permit moves into the thread,
    /// so that a request cancelled by its timeout still counts until its hash really ends.
    async fn blocking<T: Send + 'static>(
        &self,
        op: &'static str,
        work: impl FnOnce() -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| Error::Internal(format!("hash semaphore: {e}")))?;
        let id = self.id.to_string();
        tokio::task::spawn_blocking(move || {
            let start = Instant::now();
            let out = work();
            metrics::histogram!("scalelab_auth_password_hash_seconds", "op" => op, "id" => id)
                .record(start.elapsed().as_secs_f64());
            drop(permit);
            out
        })
        .await
        .map_err(|e| Error::Internal(format!("hash task: {e}")))?
    }
}

/// A random password of 24 characters from `[A-Za-z0-9]` (about 143 bits).
pub(crate) fn random_password() -> String {
    rand::rngs::OsRng
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> Config {
        Config {
            argon2_memory_kib: 64,
            argon2_iterations: 1,
            argon2_parallelism: 1,
            ..Config::default()
        }
    }

    #[tokio::test]
    async fn hashes_verify_and_use_the_configured_cost() {
        let hasher = Hasher::new(&cheap(), "auth-test".into())
            .await
            .expect("hasher");
        let phc = hasher.hash("correct horse".into()).await.expect("hash");
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{phc}");
        assert!(
            hasher
                .verify("correct horse".into(), &phc)
                .await
                .expect("verify")
        );
        assert!(
            !hasher
                .verify("wrong horse".into(), &phc)
                .await
                .expect("verify")
        );
        // Two hashes of one password differ (fresh salt).
        assert_ne!(
            phc,
            hasher.hash("correct horse".into()).await.expect("hash")
        );
        hasher.verify_dummy("anything".into()).await.expect("dummy");
    }

    #[tokio::test]
    async fn bad_settings_are_refused() {
        let zero_lanes = Config {
            argon2_parallelism: 0,
            ..cheap()
        };
        assert!(matches!(
            Hasher::new(&zero_lanes, "auth-test".into()).await,
            Err(Error::Config(_))
        ));
        let no_permits = Config {
            max_concurrent_hashes: 0,
            ..cheap()
        };
        assert!(matches!(
            Hasher::new(&no_permits, "auth-test".into()).await,
            Err(Error::Config(_))
        ));
    }

    #[tokio::test]
    async fn a_corrupt_stored_hash_is_an_internal_error() {
        let hasher = Hasher::new(&cheap(), "auth-test".into())
            .await
            .expect("hasher");
        assert!(matches!(
            hasher.verify("pw".into(), "not-a-hash").await,
            Err(Error::Internal(_))
        ));
    }

    #[test]
    fn random_passwords_are_long_and_distinct() {
        let (a, b) = (random_password(), random_password());
        assert_eq!(a.len(), 24);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }
}
