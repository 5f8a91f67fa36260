//! Config checks that report every problem, each with its path in the section.
//!
//! Every service crate's `Config::validate(&self) -> Vec<String>` returns lines of the form
//! `field.path: what is wrong`, relative to its own section. `scalelab up` and
//! `scalelab config --check` prefix the section's name (`gateway.rate_limit...`) and print them all
//! before any process starts; each crate's start-up turns the same list into its own
//! `Error::Config` (see [`joined`]), so that there is one check and not two.

use std::fmt::Display;

/// Collects the problems of one config section.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Problems(Vec<String>);

impl Problems {
    /// No problems yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `field: message` unless `ok`.
    pub fn check(&mut self, ok: bool, field: &str, message: impl Display) {
        if !ok {
            self.push(field, message);
        }
    }

    /// Records `field: message`.
    pub fn push(&mut self, field: &str, message: impl Display) {
        self.0.push(format!("{field}: {message}"));
    }

    /// Records the problems of a nested section (`pool`), each under `prefix.`.
    pub fn nested(&mut self, prefix: &str, problems: Vec<String>) {
        self.0
            .extend(problems.into_iter().map(|p| format!("{prefix}.{p}")));
    }

    /// Records a problem `check` reports about `url` in `field`.
    pub fn url(&mut self, field: &str, url: &str, check: fn(&str) -> Result<(), String>) {
        if let Err(message) = check(url) {
            self.push(field, message);
        }
    }

    /// The problems, in the order found.
    pub fn into_vec(self) -> Vec<String> {
        self.0
    }
}

/// The problems as one sentence for a start-up error (`None` when there are none).
pub fn joined(problems: &[String]) -> Option<String> {
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// A peer's base URL: `http://host:port` (what `balance` and the typed clients can reach).
pub fn http_url(url: &str) -> Result<(), String> {
    match url.strip_prefix("http://") {
        Some(rest) if !rest.is_empty() && !rest.starts_with('/') => Ok(()),
        _ => Err(format!("{url:?} is not of the form http://host:port")),
    }
}

/// A database URL: `postgres://...`, `postgresql://...` or `sqlite:...`.
pub fn database_url(url: &str) -> Result<(), String> {
    let url = url.trim();
    if ["postgres://", "postgresql://", "sqlite:"]
        .iter()
        .any(|scheme| url.starts_with(scheme) && url.len() > scheme.len())
    {
        Ok(())
    } else {
        // Only the scheme is shown: the rest may hold a password.
        let scheme = url.split_once(':').map_or("", |(s, _)| s);
        Err(format!(
            "must start with postgres://, postgresql:// or sqlite: (got a {scheme:?} URL)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_carry_their_paths() {
        let mut p = Problems::new();
        p.check(true, "fine", "never shown");
        p.check(false, "max_entries", "must be at least 1");
        p.nested("pool", vec!["max_attempts: must be at least 1".into()]);
        p.url("backends[0]", "https://x", http_url);
        p.url("url", "mysql://u:secret@h/db", database_url);
        let all = p.into_vec();
        assert_eq!(
            all,
            vec![
                "max_entries: must be at least 1",
                "pool.max_attempts: must be at least 1",
                "backends[0]: \"https://x\" is not of the form http://host:port",
                "url: must start with postgres://, postgresql:// or sqlite: (got a \"mysql\" URL)",
            ]
        );
        assert!(!all.iter().any(|l| l.contains("secret")));
        assert_eq!(joined(&[]), None);
        assert_eq!(
            joined(&all[..2]).unwrap(),
            format!("{}; {}", all[0], all[1])
        );
    }

    #[test]
    fn urls() {
        assert!(http_url("http://127.0.0.1:5000").is_ok());
        assert!(http_url("http://").is_err());
        assert!(http_url("127.0.0.1:5000").is_err());
        for ok in [
            "postgres://u@h/db",
            "postgresql://h/db",
            "sqlite:data/x.sqlite",
        ] {
            assert!(database_url(ok).is_ok(), "{ok}");
        }
        assert!(database_url("sqlite:").is_err());
    }
}
