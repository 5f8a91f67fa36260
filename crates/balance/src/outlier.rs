//! Outlier ejection (Envoy's outlier detection), beside the active health checks: a backend that
//! answers `consecutive_failures` times in a row with a 5xx (or not at all: connect error,
//! timeout, broken connection), or whose mean time to answer over an interval is `slow_ratio`
//! times its peers' median (and at least `slow_min_ms`), leaves selection for
//! `base_ejection_ms` × the number of times it was ejected (capped at `max_ejection_ms`; the
//! multiplier goes down by one for every interval it then serves without a failure).
//!
//! At most `max_ejection_percent` of a pool's backends are ejected at once, but always at least
//! one may be (Envoy's rule); and never the last backend that still takes requests, since an
//! empty pool would turn one sick backend into a total outage (Envoy's panic threshold has the
//! same purpose).
//!
//! The counting is per backend, in atomics ([`crate::Backend`]); a pool-level lock is taken only
//! to decide an ejection, and by the sweep that runs every `interval_ms` (it brings ejected
//! backends back when their time is over, and judges latency). Time is a parameter.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::profile::Profile;

/// The `outlier` table of a pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "OutlierSection", into = "OutlierSection")]
pub struct OutlierConfig {
    /// The defaults the section started from.
    pub profile: Profile,
    /// Off: backends leave selection only through health checks and connect errors.
    pub enabled: bool,
    /// Failed answers in a row that eject a backend (Envoy's `consecutive_5xx`: 5).
    pub consecutive_failures: u32,
    /// How often ejected backends are reconsidered and latencies compared, milliseconds (Envoy: 10 s).
    pub interval_ms: u64,
    /// Length of a first ejection, milliseconds; the n-th lasts n times as long (Envoy: 30 s).
    pub base_ejection_ms: u64,
    /// Longest ejection, milliseconds (Envoy: 300 s).
    pub max_ejection_ms: u64,
    /// Most backends ejected at once, percent of the pool; at least one may always be (Envoy: 10).
    pub max_ejection_percent: u32,
    /// A backend whose mean time to answer over an interval is this many times its peers'
    /// median is slow and ejected; 0 turns latency ejection off.
    pub slow_ratio: f64,
    /// ... if that mean is also at least this, milliseconds (a backend at 2 ms beside peers at
    /// 0.2 ms is not sick).
    pub slow_min_ms: u64,
    /// Fewest answers in an interval for a backend's latency to be judged, or to be a peer.
    pub min_requests: u64,
}

impl OutlierConfig {
    /// The profile's settings.
    pub fn of(profile: Profile) -> Self {
        match profile {
            Profile::Standard => Self {
                profile,
                enabled: true,
                consecutive_failures: 5,
                interval_ms: 10_000,
                base_ejection_ms: 30_000,
                max_ejection_ms: 300_000,
                max_ejection_percent: 10,
                slow_ratio: 5.0,
                slow_min_ms: 100,
                min_requests: 100,
            },
            Profile::Demo => Self {
                profile,
                enabled: true,
                consecutive_failures: 5,
                interval_ms: 500,
                base_ejection_ms: 1_500,
                max_ejection_ms: 15_000,
                max_ejection_percent: 10,
                slow_ratio: 5.0,
                slow_min_ms: 50,
                min_requests: 5,
            },
        }
    }

    /// Problems as `field: problem` lines relative to this table.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        for (field, v) in [
            ("consecutive_failures", u64::from(self.consecutive_failures)),
            ("interval_ms", self.interval_ms),
            ("base_ejection_ms", self.base_ejection_ms),
            ("max_ejection_ms", self.max_ejection_ms),
        ] {
            if v == 0 {
                p.push(format!("{field}: must be at least 1"));
            }
        }
        if self.max_ejection_percent > 100 {
            p.push("max_ejection_percent: must be at most 100".into());
        }
        if !(self.slow_ratio == 0.0 || self.slow_ratio > 1.0) || !self.slow_ratio.is_finite() {
            p.push("slow_ratio: must be 0 (off) or more than 1".into());
        }
        p
    }

    /// How long the `level`-th ejection lasts, milliseconds.
    pub fn ejection_ms(&self, level: u32) -> u64 {
        self.base_ejection_ms
            .saturating_mul(u64::from(level.max(1)))
            .min(self.max_ejection_ms)
    }
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self::of(Profile::Standard)
    }
}

/// The table as written: a profile, and any setting changed from it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct OutlierSection {
    profile: Profile,
    enabled: Option<bool>,
    consecutive_failures: Option<u32>,
    interval_ms: Option<u64>,
    base_ejection_ms: Option<u64>,
    max_ejection_ms: Option<u64>,
    max_ejection_percent: Option<u32>,
    slow_ratio: Option<f64>,
    slow_min_ms: Option<u64>,
    min_requests: Option<u64>,
}

impl From<OutlierSection> for OutlierConfig {
    fn from(s: OutlierSection) -> Self {
        let d = OutlierConfig::of(s.profile);
        Self {
            profile: s.profile,
            enabled: s.enabled.unwrap_or(d.enabled),
            consecutive_failures: s.consecutive_failures.unwrap_or(d.consecutive_failures),
            interval_ms: s.interval_ms.unwrap_or(d.interval_ms),
            base_ejection_ms: s.base_ejection_ms.unwrap_or(d.base_ejection_ms),
            max_ejection_ms: s.max_ejection_ms.unwrap_or(d.max_ejection_ms),
            max_ejection_percent: s.max_ejection_percent.unwrap_or(d.max_ejection_percent),
            slow_ratio: s.slow_ratio.unwrap_or(d.slow_ratio),
            slow_min_ms: s.slow_min_ms.unwrap_or(d.slow_min_ms),
            min_requests: s.min_requests.unwrap_or(d.min_requests),
        }
    }
}

impl From<OutlierConfig> for OutlierSection {
    fn from(c: OutlierConfig) -> Self {
        Self {
            profile: c.profile,
            enabled: Some(c.enabled),
            consecutive_failures: Some(c.consecutive_failures),
            interval_ms: Some(c.interval_ms),
            base_ejection_ms: Some(c.base_ejection_ms),
            max_ejection_ms: Some(c.max_ejection_ms),
            max_ejection_percent: Some(c.max_ejection_percent),
            slow_ratio: Some(c.slow_ratio),
            slow_min_ms: Some(c.slow_min_ms),
            min_requests: Some(c.min_requests),
        }
    }
}

/// Why a backend was ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `consecutive_failures` failed answers in a row.
    Failures,
    /// Its mean latency was far above its peers'.
    Slow,
}

impl Reason {
    /// Its name in logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Reason::Failures => "consecutive_failures",
            Reason::Slow => "slow",
        }
    }
}

/// One pool's outlier detector: the settings and the lock under which ejections are decided.
#[derive(Debug)]
pub struct Outliers {
    pool: String,
    config: OutlierConfig,
    /// Held while deciding an ejection or sweeping, so that two failures at once cannot both
    /// take the last ejection the cap allows.
    deciding: Mutex<()>,
}

impl Outliers {
    /// The detector of pool `pool`.
    pub fn new(pool: &str, config: OutlierConfig) -> Self {
        Self {
            pool: pool.to_string(),
            config,
            deciding: Mutex::new(()),
        }
    }

    /// Its settings.
    pub fn config(&self) -> &OutlierConfig {
        &self.config
    }

    /// After `backends[i]` failed an answer that was its `streak`-th failure in a row: ejects it
    /// if that is enough and the cap allows. Returns whether it was ejected.
    pub fn on_failure(
        &self,
        backends: &[Arc<Backend>],
        i: usize,
        streak: u32,
        now_ms: u64,
    ) -> bool {
        if !self.config.enabled || streak < self.config.consecutive_failures {
            return false;
        }
        let _guard = self
            .deciding
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.try_eject(backends, i, Reason::Failures, now_ms)
    }

    /// The periodic pass at `now_ms`: brings back backends whose ejection is over, ejects a
    /// backend far slower than its peers, lowers the multiplier of backends that served a whole
    /// interval without failing, and starts a new interval. Returns the backends ejected and
    /// brought back (by URL), for tests and logs.
    pub fn sweep(&self, backends: &[Arc<Backend>], now_ms: u64) -> Sweep {
        let mut sweep = Sweep::default();
        if !self.config.enabled {
            return sweep;
        }
        let _guard = self
            .deciding
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for b in backends {
            if b.is_ejected() && now_ms >= b.ejected_until_ms() {
                b.set_ejected(false, 0);
                tracing::info!(pool = %self.pool, backend = %b.url, "ejected backend back in the pool");
                metrics::gauge!("scalelab_pool_backend_ejected", "pool" => self.pool.clone(), "backend" => b.url.clone()).set(0.0);
                sweep.returned.push(b.url.clone());
            }
        }
        let intervals: Vec<(u64, u64, u64)> = backends.iter().map(|b| b.take_interval()).collect();
        if self.config.slow_ratio > 0.0 {
            // Mean time to answer of every backend that answered enough to be judged.
            let means: Vec<Option<f64>> = backends
                .iter()
                .zip(&intervals)
                .map(|(b, &(answers, _, latency_us))| {
                    (answers >= self.config.min_requests.max(1) && b.is_selectable())
                        .then(|| latency_us as f64 / answers as f64)
                })
                .collect();
            for (i, mean) in means.iter().enumerate() {
                let Some(mean) = *mean else { continue };
                let mut peers: Vec<f64> = means
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .filter_map(|(_, m)| *m)
                    .collect();
                if peers.is_empty() {
                    continue;
                }
                peers.sort_by(f64::total_cmp);
                let median = peers[peers.len() / 2];
                if mean >= self.config.slow_min_ms as f64 * 1000.0
                    && mean > self.config.slow_ratio * median
                    && self.try_eject(backends, i, Reason::Slow, now_ms)
                {
                    sweep.ejected.push(backends[i].url.clone());
                }
            }
        }
        for (b, &(answers, failures, _)) in backends.iter().zip(&intervals) {
            if !b.is_ejected() && answers > 0 && failures == 0 {
                b.lower_ejection_level();
            }
        }
        sweep
    }

    /// Ejects `backends[i]` if the cap allows and another backend still takes requests.
    fn try_eject(&self, backends: &[Arc<Backend>], i: usize, reason: Reason, now_ms: u64) -> bool {
        let b = &backends[i];
        if b.is_ejected() || !b.is_selectable() {
            return false;
        }
        let ejected = backends.iter().filter(|b| b.is_ejected()).count();
        let allowed = (backends.len() * self.config.max_ejection_percent as usize / 100).max(1);
        let others_serving = backends
            .iter()
            .enumerate()
            .any(|(j, o)| j != i && o.is_selectable());
        if ejected >= allowed || !others_serving {
            tracing::debug!(pool = %self.pool, backend = %b.url, reason = reason.name(), ejected, allowed, "outlier not ejected: the cap is reached or it is the last backend");
            return false;
        }
        let level = b.raise_ejection_level();
        let for_ms = self.config.ejection_ms(level);
        b.set_ejected(true, now_ms.saturating_add(for_ms));
        tracing::warn!(pool = %self.pool, backend = %b.url, reason = reason.name(), for_ms, times = level, "backend ejected from the pool");
        metrics::counter!("scalelab_pool_ejections_total", "pool" => self.pool.clone(), "backend" => b.url.clone(), "reason" => reason.name()).increment(1);
        metrics::gauge!("scalelab_pool_backend_ejected", "pool" => self.pool.clone(), "backend" => b.url.clone()).set(1.0);
        true
    }
}

/// What one sweep changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Sweep {
    /// Backends ejected for slowness.
    pub ejected: Vec<String>,
    /// Backends whose ejection ended.
    pub returned: Vec<String>,
}

#[cfg(test)]
mod tests;
