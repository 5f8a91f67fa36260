//! One backend: its address, health state and counters.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::conn::ConnPool;

/// A backend instance behind a [`crate::Pool`].
#[derive(Debug)]
pub struct Backend {
    /// Base URL, e.g. `http://127.0.0.1:5000`.
    pub url: String,
    /// `host:port` to connect to.
    pub authority: String,
    /// Whether selection may pick it; flipped by active checks and passive failures.
    healthy: AtomicBool,
    /// Leaving the pool: no new request goes to it, its connections close after their response.
    draining: AtomicBool,
    /// Requests selected for this backend whose response is not finished yet.
    in_flight: AtomicUsize,
    /// Consecutive failed active checks (reset by a success).
    fails: AtomicU32,
    /// Consecutive successful active checks (reset by a failure).
    successes: AtomicU32,
    requests: AtomicU64,
    errors: AtomicU64,
    /// Time to response headers, in microseconds.
    latency: Mutex<Histogram<u64>>,
    /// Idle keep-alive connections to this backend.
    pub(crate) conns: ConnPool,
}

/// What `/_lb/stats` shows of a backend.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BackendStats {
    /// Base URL.
    pub url: String,
    /// Whether it takes requests now.
    pub healthy: bool,
    /// `active`, `draining` (leaving: no new requests) or `down` (failed its checks).
    pub state: &'static str,
    /// Requests in flight now.
    pub in_flight: usize,
    /// Requests sent to it so far.
    pub requests: u64,
    /// Requests that failed on it (connect errors, timeouts, broken connections).
    pub errors: u64,
    /// Median time to response headers, milliseconds.
    pub latency_p50_ms: f64,
    /// 99th percentile time to response headers, milliseconds.
    pub latency_p99_ms: f64,
}

impl Backend {
    /// A backend at `url` (`http://host:port`), healthy until shown otherwise.
    pub fn new(url: &str, max_idle: usize) -> Arc<Self> {
        let url = url.trim_end_matches('/').to_string();
        let authority = url
            .strip_prefix("http://")
            .unwrap_or(&url)
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        Arc::new(Self {
            conns: ConnPool::new(authority.clone(), max_idle),
            url,
            authority,
            healthy: AtomicBool::new(true),
            draining: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            fails: AtomicU32::new(0),
            successes: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            // 1 µs .. 10 min at 3 significant digits: cannot fail for these bounds.
            latency: Mutex::new(
                Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds"),
            ),
        })
    }

    /// Whether selection may pick it.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Whether it is leaving the pool (no new request goes to it).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Whether selection may pick it: healthy and not draining.
    pub fn is_selectable(&self) -> bool {
        self.is_healthy() && !self.is_draining()
    }

    /// `draining`, `active` or `down`.
    pub fn state(&self) -> &'static str {
        if self.is_draining() {
            "draining"
        } else if self.is_healthy() {
            "active"
        } else {
            "down"
        }
    }

    /// Starts (or calls off) its drain: while draining it gets no new request and each of its
    /// connections closes after its current response; requests in flight finish.
    pub fn set_draining(&self, draining: bool) {
        if self.draining.swap(draining, Ordering::AcqRel) != draining {
            tracing::info!(backend = %self.url, draining, "backend drain state changed");
        }
        self.conns.set_closing(draining);
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Marks it down at once (passive check: connect error or timeout). Returns whether it was up.
    pub fn mark_down(&self) -> bool {
        self.successes.store(0, Ordering::Release);
        let was = self.healthy.swap(false, Ordering::AcqRel);
        // Its kept-alive connections went through whatever made it fail: start afresh when it is
        // back, rather than learn one dead connection at a time.
        self.conns.clear_idle();
        if was {
            tracing::warn!(backend = %self.url, "backend marked down");
            metrics::counter!("scalelab_backend_transitions_total", "backend" => self.url.clone(), "to" => "down").increment(1);
        }
        was
    }

    /// Records one active check result; flips the state after `fall` failures or `rise` successes.
    pub(crate) fn record_check(&self, ok: bool, fall: u32, rise: u32) {
        if ok {
            self.fails.store(0, Ordering::Release);
            let n = self.successes.fetch_add(1, Ordering::AcqRel) + 1;
            if n >= rise && !self.healthy.swap(true, Ordering::AcqRel) {
                tracing::info!(backend = %self.url, "backend back up after {n} good checks");
                metrics::counter!("scalelab_backend_transitions_total", "backend" => self.url.clone(), "to" => "up").increment(1);
            }
        } else {
            self.successes.store(0, Ordering::Release);
            let n = self.fails.fetch_add(1, Ordering::AcqRel) + 1;
            if n >= fall && self.is_healthy() {
                self.mark_down();
            }
        }
    }

    /// Counts a request as started; the guard ends it.
    pub(crate) fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.requests.fetch_add(1, Ordering::Relaxed);
        InFlight {
            backend: self.clone(),
        }
    }

    pub(crate) fn record_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_latency(&self, d: Duration) {
        if let Ok(mut h) = self.latency.lock() {
            h.saturating_record(d.as_micros().max(1) as u64);
        }
    }

    /// A snapshot of its counters.
    pub fn stats(&self) -> BackendStats {
        let (p50, p99) = self
            .latency
            .lock()
            .map(|h| {
                (
                    h.value_at_quantile(0.5) as f64 / 1000.0,
                    h.value_at_quantile(0.99) as f64 / 1000.0,
                )
            })
            .unwrap_or((0.0, 0.0));
        BackendStats {
            url: self.url.clone(),
            healthy: self.is_healthy(),
            state: self.state(),
            in_flight: self.in_flight(),
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            latency_p50_ms: p50,
            latency_p99_ms: p99,
        }
    }
}

/// Holds one unit of a backend's `in_flight` until dropped (when the response body ends).
#[derive(Debug)]
pub struct InFlight {
    backend: Arc<Backend>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.backend.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}
