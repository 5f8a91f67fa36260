//! The retry budget (Finagle's `RetryBudget`, linkerd's retry budgets): retries may add at most
//! `percent` of the requests of the last `ttl_ms`, plus a floor of `min_per_sec` retries per
//! second, so that a sick backend cannot multiply the load the healthy ones see. A bare attempt
//! count (`max_attempts`) still bounds one request; the budget bounds them all together.
//!
//! Both counts are [`Window`]s: depositing (a request) and withdrawing (a retry) are one atomic
//! operation each, without a lock.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::window::Window;

/// The `retry_budget` table of a pool.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RetryBudgetConfig {
    /// Off: every request may use all of `max_attempts` (the behaviour without a budget).
    pub enabled: bool,
    /// Retries allowed as a share of the requests of the last `ttl_ms`, in percent (Finagle: 20).
    pub percent: u32,
    /// Retries always allowed per second, however few the requests (Finagle: 10), so that a
    /// quiet pool can still fail over.
    pub min_per_sec: u32,
    /// How long a request counts towards the budget, milliseconds (Finagle: 10 s).
    pub ttl_ms: u64,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            percent: 20,
            min_per_sec: 10,
            ttl_ms: 10_000,
        }
    }
}

impl RetryBudgetConfig {
    /// Problems as `field: problem` lines relative to this table.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.percent > 1000 {
            p.push("percent: must be at most 1000".to_string());
        }
        if self.ttl_ms == 0 {
            p.push("ttl_ms: must be at least 1".to_string());
        }
        p
    }
}

/// One pool's budget.
#[derive(Debug)]
pub struct RetryBudget {
    config: RetryBudgetConfig,
    /// First attempts of the last `ttl_ms`.
    requests: Window,
    /// Retries granted in the last `ttl_ms`.
    retries: Window,
    /// Retries refused since start (for stats).
    refused: AtomicU64,
    /// Retries granted since start (for stats).
    granted: AtomicU64,
}

impl RetryBudget {
    /// A budget with `config`'s ratio, floor and time to live.
    pub fn new(config: RetryBudgetConfig) -> Self {
        Self {
            requests: Window::new(config.ttl_ms),
            retries: Window::new(config.ttl_ms),
            config,
            refused: AtomicU64::new(0),
            granted: AtomicU64::new(0),
        }
    }

    /// Counts one request (its first attempt) at `now_ms`.
    pub fn deposit(&self, now_ms: u64) {
        if self.config.enabled {
            self.requests.add(now_ms, 1);
        }
    }

    /// Whether one more retry fits the budget at `now_ms`; a granted retry is counted.
    pub fn try_withdraw(&self, now_ms: u64) -> bool {
        if !self.config.enabled {
            self.granted.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        let c = &self.config;
        // In hundredths of a retry, so that 20% of 7 requests is 1.4 retries, not 1.
        let allowed = self.requests.sum(now_ms) * u64::from(c.percent)
            + u64::from(c.min_per_sec) * c.ttl_ms / 10;
        let used = self.retries.sum(now_ms);
        if (used + 1) * 100 <= allowed {
            self.retries.add(now_ms, 1);
            self.granted.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            self.refused.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// Retries granted since start.
    pub fn granted(&self) -> u64 {
        self.granted.load(Ordering::Relaxed)
    }

    /// Retries refused since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(percent: u32, min_per_sec: u32) -> RetryBudget {
        RetryBudget::new(RetryBudgetConfig {
            enabled: true,
            percent,
            min_per_sec,
            ttl_ms: 10_000,
        })
    }

    /// Deposits `requests` at `t`, then asks for retries until refused: how many were granted.
    fn granted_after(b: &RetryBudget, t: u64, requests: u32) -> u32 {
        for _ in 0..requests {
            b.deposit(t);
        }
        let mut n = 0;
        while b.try_withdraw(t) {
            n += 1;
            assert!(n < 100_000, "a budget never ends");
        }
        n
    }

    #[test]
    fn retries_are_a_share_of_requests_plus_a_floor() {
        // (percent, floor per second, requests, retries granted)
        let table: &[(u32, u32, u32, u32)] = &[
            // 20% of 1000 requests, no floor.
            (20, 0, 1000, 200),
            // 20% of 7 is 1.4: one retry.
            (20, 0, 7, 1),
            // No requests: only the floor, 10/s over the 10 s window.
            (20, 10, 0, 100),
            // Both add up.
            (20, 10, 1000, 300),
            // A budget of nothing refuses every retry.
            (0, 0, 1000, 0),
        ];
        for &(percent, floor, requests, want) in table {
            let b = budget(percent, floor);
            assert_eq!(
                granted_after(&b, 0, requests),
                want,
                "{percent}% + {floor}/s over {requests} requests"
            );
            assert_eq!(b.granted(), u64::from(want));
            assert_eq!(b.refused(), 1);
        }
    }

    #[test]
    fn spent_retries_come_back_when_they_leave_the_window() {
        let b = budget(20, 0);
        assert_eq!(granted_after(&b, 0, 100), 20);
        // 5 s later, 50 more requests: 20% of 150 is 30, 20 already spent.
        assert_eq!(granted_after(&b, 5_000, 50), 10);
        // At 10 s the first slice left: 50 requests and 10 retries count, 20% of 50 is 10.
        assert_eq!(granted_after(&b, 10_000, 0), 0);
        // At 15 s everything left.
        assert_eq!(granted_after(&b, 15_000, 10), 2);
    }

    #[test]
    fn a_disabled_budget_grants_every_retry() {
        let b = RetryBudget::new(RetryBudgetConfig {
            enabled: false,
            ..RetryBudgetConfig::default()
        });
        assert!((0..10_000).all(|_| b.try_withdraw(0)));
        assert_eq!(b.refused(), 0);
    }
}
