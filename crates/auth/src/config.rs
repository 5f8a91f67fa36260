//! The `[auth]` section of the topology file.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The `[auth]` section of the topology file: where accounts live, how tokens are signed and how
/// expensive password hashing is.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where accounts are stored. Empty: an embedded SQLite file `<data_dir>/auth.sqlite` (created
    /// if missing, WAL mode, shared by every auth instance on this machine). `postgres://...`: a
    /// PostgreSQL database. `sqlite://PATH`: a SQLite file at PATH.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    /// Where the SQLite file and the signing key live; set by `scalelab` from `data_dir` or
    /// `--data-dir`, not read from this section.
    #[serde(skip)]
    pub data_dir: PathBuf,
    /// Lifetime of a login token, in seconds.
    pub token_ttl_secs: u64,
    /// Lifetime of a guest token (`POST /guest-token`), in seconds.
    pub guest_token_ttl_secs: u64,
    /// The `iss` claim of every token; verifiers check it.
    pub issuer: String,
    /// The Ed25519 signing key (PKCS#8 PEM). Empty: `<data_dir>/auth-signing-key.pem`, generated on
    /// first start with mode 0600 and shared by every auth instance. When set, the file must exist.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_key_file: Option<PathBuf>,
    /// Compatibility mode only: sign tokens with HS256 and this shared secret (kid `hs256`) instead
    /// of Ed25519. The JWKS is then empty and every verifier needs the secret. Leave unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hs256_secret: Option<String>,
    /// The roles an account may hold (`POST /register`'s `role`, `PUT /accounts/{name}/roles`).
    /// `user` and `admin` always; a preset adds its own (Casitas: `finance`, `legal`). Each is a
    /// lowercase word of up to 32 characters; `guest` is the guest tokens' and cannot be held.
    /// The gateways and the users service take the same list from here.
    pub roles: Vec<String>,
    /// The account created with role `admin` on first start when no account of that name exists.
    pub admin_username: String,
    /// The bootstrap admin's password; `scalelab` fills it from `SCALELAB_ADMIN_PASSWORD`. Empty: a
    /// random one is generated and logged once at WARN.
    #[serde(skip)]
    pub admin_password: Option<String>,
    /// Shortest password `POST /register` accepts (the longest is 1024).
    pub password_min_len: usize,
    /// argon2id memory cost in KiB (OWASP's minimum is 19456).
    pub argon2_memory_kib: u32,
    /// argon2id number of passes.
    pub argon2_iterations: u32,
    /// argon2id lanes.
    pub argon2_parallelism: u32,
    /// At most this many password hashes run at once (each on a blocking thread), so that a login
    /// flood cannot take every core from the rest of the instance.
    pub max_concurrent_hashes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            database_url: None,
            data_dir: PathBuf::from("data"),
            token_ttl_secs: 3600,
            roles: api::wire::users::DEFAULT_ROLES.map(String::from).to_vec(),
            guest_token_ttl_secs: 300,
            issuer: "scalelab-auth".to_string(),
            signing_key_file: None,
            hs256_secret: None,
            admin_username: "admin".to_string(),
            admin_password: None,
            password_min_len: 8,
            argon2_memory_kib: 19456,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            max_concurrent_hashes: 2,
        }
    }
}

impl Config {
    /// Every setting auth cannot honour, as `field: problem` lines (empty when the section is
    /// valid). `scalelab up` reports them before starting anything; `AppState::new` refuses to
    /// start on any of them. Whether `signing_key_file` exists is left to start-up (it is the
    /// machine's state, not the file's).
    pub fn validate(&self) -> Vec<String> {
        let mut p = common::validate::Problems::new();
        if let Some(url) = self
            .database_url
            .as_deref()
            .filter(|u| !u.trim().is_empty())
        {
            p.url("database_url", url, common::validate::database_url);
        }
        p.check(
            self.token_ttl_secs > 0,
            "token_ttl_secs",
            "must be at least 1",
        );
        p.check(
            self.guest_token_ttl_secs > 0,
            "guest_token_ttl_secs",
            "must be at least 1",
        );
        p.check(!self.issuer.is_empty(), "issuer", "must not be empty");
        for role in &self.roles {
            p.check(
                api::wire::users::is_role_name(role),
                "roles",
                format_args!(
                    "{role:?} is not a role name (a lowercase word of up to 32 characters of a-z 0-9 _, not \"guest\")"
                ),
            );
        }
        for needed in api::wire::users::DEFAULT_ROLES {
            p.check(
                self.roles.iter().any(|r| r == needed),
                "roles",
                format_args!("must include {needed:?}"),
            );
        }
        p.check(
            self.hs256_secret.as_deref() != Some(""),
            "hs256_secret",
            "is empty (leave it unset for Ed25519)",
        );
        p.check(
            crate::validate::username(&self.admin_username).is_ok(),
            "admin_username",
            format_args!(
                "{:?} is not a valid username (3 to 64 of A-Z a-z 0-9 _ . -)",
                self.admin_username
            ),
        );
        p.check(
            (1..=crate::validate::MAX_PASSWORD_CHARS).contains(&self.password_min_len),
            "password_min_len",
            format_args!("must be 1 to {}", crate::validate::MAX_PASSWORD_CHARS),
        );
        if let Err(e) = argon2::Params::new(
            self.argon2_memory_kib,
            self.argon2_iterations,
            self.argon2_parallelism,
            None,
        ) {
            p.push(
                "argon2_memory_kib, argon2_iterations, argon2_parallelism",
                e,
            );
        }
        p.check(
            self.max_concurrent_hashes > 0,
            "max_concurrent_hashes",
            "must be at least 1",
        );
        p.into_vec()
    }

    /// [`Config::validate`] as the error start-up fails with.
    pub(crate) fn check(&self) -> Result<(), crate::Error> {
        match common::validate::joined(&self.validate()) {
            Some(problems) => Err(crate::Error::Config(problems)),
            None => Ok(()),
        }
    }

    /// The signing key file in effect: the configured one or `<data_dir>/auth-signing-key.pem`.
    pub fn signing_key_path(&self) -> PathBuf {
        self.signing_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("auth-signing-key.pem"))
    }
}

// Written by hand so that secrets never reach a log line through `{:?}`.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |o: &Option<String>| o.as_ref().map(|_| "<redacted>");
        f.debug_struct("Config")
            .field(
                "database_url",
                &self.database_url.as_ref().map(|u| redact_url(u)),
            )
            .field("data_dir", &self.data_dir)
            .field("token_ttl_secs", &self.token_ttl_secs)
            .field("guest_token_ttl_secs", &self.guest_token_ttl_secs)
            .field("issuer", &self.issuer)
            .field("signing_key_file", &self.signing_key_file)
            .field("hs256_secret", &redacted(&self.hs256_secret))
            .field("admin_username", &self.admin_username)
            .field("admin_password", &redacted(&self.admin_password))
            .field("password_min_len", &self.password_min_len)
            .field("argon2_memory_kib", &self.argon2_memory_kib)
            .field("argon2_iterations", &self.argon2_iterations)
            .field("argon2_parallelism", &self.argon2_parallelism)
            .field("max_concurrent_hashes", &self.max_concurrent_hashes)
            .finish()
    }
}

/// `postgres://user:secret@host/db` becomes `postgres://user:***@host/db`.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_ones() {
        let c: Config = toml_like_empty();
        assert_eq!(c.token_ttl_secs, 3600);
        assert_eq!(c.guest_token_ttl_secs, 300);
        assert_eq!(c.issuer, "scalelab-auth");
        assert_eq!(c.admin_username, "admin");
        assert_eq!(c.password_min_len, 8);
        assert_eq!(c.argon2_memory_kib, 19456);
        assert_eq!(c.argon2_iterations, 2);
        assert_eq!(c.argon2_parallelism, 1);
        assert_eq!(c.max_concurrent_hashes, 2);
        assert!(c.hs256_secret.is_none());
        assert_eq!(c.data_dir, PathBuf::from("data"));
        assert_eq!(
            c.signing_key_path(),
            PathBuf::from("data").join("auth-signing-key.pem")
        );
    }

    fn toml_like_empty() -> Config {
        serde_json::from_str("{}").expect("an empty section is a valid config")
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<Config>(r#"{"token_ttl": 5}"#);
        assert!(err.is_err());
    }

    #[test]
    fn secrets_are_skipped_or_redacted() {
        // `admin_password` and `data_dir` are never read from the file.
        assert!(serde_json::from_str::<Config>(r#"{"admin_password": "x"}"#).is_err());
        let c = Config {
            hs256_secret: Some("topsecret".into()),
            admin_password: Some("hunter22".into()),
            database_url: Some("postgres://u:pw@h/db".into()),
            ..Config::default()
        };
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("topsecret") && !dbg.contains("hunter22") && !dbg.contains(":pw@"));
        assert!(dbg.contains("postgres://u:***@h/db"));
    }

    #[test]
    fn urls_are_redacted() {
        for (input, want) in [
            ("postgres://u:p@h:5432/db", "postgres://u:***@h:5432/db"),
            ("postgres://u@h/db", "postgres://u@h/db"),
            ("postgres://h/db", "postgres://h/db"),
            ("sqlite://data/a.sqlite", "sqlite://data/a.sqlite"),
        ] {
            assert_eq!(redact_url(input), want, "{input}");
        }
    }
}
