//! Active health checks: every backend is probed on an interval; it leaves selection after `fall`
//! failed probes in a row and comes back after `rise` good ones (HAProxy's `fall`/`rise`).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Pool;
use crate::conn::probe;

/// Active health check settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Path probed with `GET` on each backend; any 2xx is healthy.
    pub path: String,
    /// Time between probes of one backend, milliseconds.
    pub interval_ms: u64,
    /// A probe slower than this fails, milliseconds.
    pub timeout_ms: u64,
    /// Failed probes in a row that take a backend out.
    pub fall: u32,
    /// Good probes in a row that bring it back.
    pub rise: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            path: "/health".into(),
            interval_ms: 1000,
            timeout_ms: 500,
            fall: 3,
            rise: 2,
        }
    }
}

/// The running checks of one pool; dropping it stops them.
#[derive(Debug)]
pub struct HealthTask(tokio::task::JoinHandle<()>);

impl Drop for HealthTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts probing every backend of `pool` on its configured interval, and the outlier sweep
/// (`outlier.rs`) on its own.
pub fn spawn(pool: Arc<Pool>) -> HealthTask {
    let sweeper = pool.clone();
    let sweep = async move {
        let cfg = sweeper.config().outlier.clone();
        if !cfg.enabled {
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_millis(cfg.interval_ms.max(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let backends = sweeper.backends();
            sweeper.outliers().sweep(&backends, crate::clock::now_ms());
        }
    };
    let checks = async move {
        let cfg = pool.config().health.clone();
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let mut tick = tokio::time::interval(Duration::from_millis(cfg.interval_ms.max(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let backends = pool.backends();
            let probes = backends.iter().map(|b| {
                let b = b.clone();
                let path = cfg.path.clone();
                async move {
                    let ok = probe(&b.authority, &path, timeout).await;
                    b.record_check(ok, cfg.fall.max(1), cfg.rise.max(1));
                }
            });
            futures_join_all(probes).await;
        }
    };
    HealthTask(tokio::spawn(async move {
        tokio::join!(checks, sweep);
    }))
}

/// Runs the probes of one round concurrently, so that one slow backend does not delay the others.
async fn futures_join_all<F: std::future::Future<Output = ()> + Send + 'static>(
    futs: impl Iterator<Item = F>,
) {
    let mut set = tokio::task::JoinSet::new();
    for f in futs {
        set.spawn(f);
    }
    while set.join_next().await.is_some() {}
}
