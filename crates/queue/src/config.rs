//! The `[queue]` section of the topology file and the retry backoff it describes.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Error;

/// The `[queue]` section of the topology file: where the tasks live and how failures retry.
/// Gateways (which submit) and workers (which run) must name the same store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where tasks live. Absent: SQLite in `<data_dir>/queue.sqlite`, shared by every process of
    /// one machine. `postgres://user@host:port/db`: PostgreSQL (several machines).
    /// `sqlite:path`: SQLite at that path.
    pub url: Option<String>,
    /// RabbitMQ (`amqp://guest:guest@127.0.0.1:5672/%2f`): tasks are delivered through it in
    /// priority order, and their state and results stay in `url`, which must then be PostgreSQL.
    pub amqp_url: Option<String>,
    /// The RabbitMQ work queue's name (its dead-letter exchange is `<name>.dlx`, bound to the
    /// queue `<name>.dead`).
    pub amqp_queue: String,
    /// The directory for the SQLite file; set by `scalelab` from `--data-dir`, not by this section.
    #[serde(skip)]
    pub data_dir: PathBuf,
    /// Attempts a task gets when its submission does not say (the first run counts).
    pub max_attempts: u32,
    /// The wait before the first retry, in milliseconds; it doubles with every further failure.
    pub retry_base_ms: u64,
    /// The longest wait between two attempts, in milliseconds.
    pub retry_max_ms: u64,
    /// How long a `succeeded` or `cancelled` task is kept after it finished, in milliseconds;
    /// the workers delete older ones (then `GET /tasks/{id}` answers 404 and its idempotency key
    /// is free again). `dead` tasks are kept for re-queueing. 0: keep every task.
    pub retention_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            url: None,
            amqp_url: None,
            amqp_queue: "scalelab.tasks".into(),
            data_dir: PathBuf::from("data"),
            max_attempts: 3,
            retry_base_ms: 1000,
            retry_max_ms: 60_000,
            retention_ms: 86_400_000,
        }
    }
}

impl Config {
    /// Every setting the queue cannot honour, as `field: problem` lines (empty when the section
    /// is valid). `scalelab up` reports them before starting anything; opening a queue refuses
    /// any of them ([`Config::check`]).
    pub fn validate(&self) -> Vec<String> {
        let mut p = common::validate::Problems::new();
        if let Some(url) = &self.url {
            p.url("url", url, common::validate::database_url);
        }
        if let Some(amqp_url) = &self.amqp_url {
            p.check(
                amqp_url.starts_with("amqp://") || amqp_url.starts_with("amqps://"),
                "amqp_url",
                "must start with amqp:// or amqps://",
            );
            p.check(
                self.url
                    .as_deref()
                    .is_some_and(|u| u.starts_with("postgres://") || u.starts_with("postgresql://")),
                "url",
                "the RabbitMQ backend (amqp_url) keeps task state in PostgreSQL: set a postgres:// url",
            );
            p.check(
                !self.amqp_queue.is_empty(),
                "amqp_queue",
                "must not be empty",
            );
        }
        p.check(
            (1..=MAX_ATTEMPTS).contains(&self.max_attempts),
            "max_attempts",
            format_args!("must be 1 to {MAX_ATTEMPTS}; got {}", self.max_attempts),
        );
        p.check(
            self.retry_base_ms > 0,
            "retry_base_ms",
            "must be at least 1",
        );
        p.check(
            self.retry_max_ms >= self.retry_base_ms,
            "retry_max_ms",
            format_args!("must be at least retry_base_ms ({})", self.retry_base_ms),
        );
        p.into_vec()
    }

    /// [`Config::validate`] as the error opening a queue fails with.
    pub fn check(&self) -> Result<(), Error> {
        match common::validate::joined(&self.validate()) {
            Some(problems) => Err(Error::Config(problems)),
            None => Ok(()),
        }
    }

    /// The backoff these settings describe.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            base: Duration::from_millis(self.retry_base_ms),
            max: Duration::from_millis(self.retry_max_ms),
        }
    }
}

/// The most attempts a task may ask for.
pub const MAX_ATTEMPTS: u32 = 25;

/// Exponential backoff with jitter: attempt `n` (1-based) waits a random time between half and
/// all of `base * 2^(n-1)`, at most `max`. The jitter keeps tasks that failed together (a peer
/// was down) from retrying together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The wait after the first failure (before jitter).
    pub base: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Backoff {
    /// The wait after the `attempt`-th failed attempt.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let full = self
            .base
            .saturating_mul(1u32 << exp)
            .min(self.max)
            .as_millis() as u64;
        let half = full / 2;
        let jitter = if full > half {
            rand::Rng::gen_range(&mut rand::thread_rng(), 0..=full - half)
        } else {
            0
        };
        Duration::from_millis(half + jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_a_ceiling() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_millis(1000),
        };
        for _ in 0..50 {
            let d1 = b.delay(1).as_millis();
            assert!((50..=100).contains(&d1), "{d1}");
            let d3 = b.delay(3).as_millis();
            assert!((200..=400).contains(&d3), "{d3}");
            let d9 = b.delay(9).as_millis();
            assert!((500..=1000).contains(&d9), "{d9}");
        }
    }
}
