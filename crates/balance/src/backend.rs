//! One backend: its address, health state, counters, outlier state and Peak-EWMA latency
//! estimate, all in atomics (read by every selection, written by every answer, never locked
//! except for its latency histogram).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::clock;
use crate::conn::ConnPool;

/// The round-trip time a backend is assumed to have before its first answer (linkerd's and
/// tower's default), so that a new backend is neither shunned nor flooded.
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);

/// How fast the Peak-EWMA estimate forgets, nanoseconds (linkerd's and tower's 10 s): the weight
/// of the past is `exp(-elapsed / DECAY_NS)`.
pub const DECAY_NS: f64 = 10e9;

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
    /// Requests that got no answer (connect errors, timeouts, broken connections).
    errors: AtomicU64,
    /// Answers with a 5xx status.
    server_errors: AtomicU64,
    /// Failed answers (5xx or none) in a row, reset by any other answer: what outlier ejection
    /// counts (`outlier.rs`).
    streak: AtomicU32,
    /// Out of selection after an outlier ejection, until the sweep brings it back.
    ejected: AtomicBool,
    /// When its ejection is over (milliseconds on the clock).
    ejected_until_ms: AtomicU64,
    /// The multiplier of its next ejection's length: raised by each ejection, lowered by each
    /// interval served without a failure.
    ejection_level: AtomicU32,
    /// Times it was ejected since it joined.
    ejections: AtomicU64,
    /// This outlier interval's answers, failures and summed time to headers (microseconds),
    /// taken and reset by the sweep.
    interval_answers: AtomicU64,
    interval_failures: AtomicU64,
    interval_latency_us: AtomicU64,
    /// Peak-EWMA round-trip estimate, nanoseconds (an `f64` as bits), and when it was last fed
    /// (nanoseconds on the clock): what the `peak_ewma` strategy compares.
    rtt_ns: AtomicU64,
    rtt_at_ns: AtomicU64,
    /// Time to response headers, in microseconds.
    latency: Mutex<Histogram<u64>>,
    /// Idle keep-alive connections to this backend.
    pub conns: ConnPool,
}

/// What `/_lb/stats` shows of a backend.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BackendStats {
    /// Base URL.
    pub url: String,
    /// Whether it takes requests now.
    pub healthy: bool,
    /// `active`, `draining` (leaving: no new requests), `down` (failed its checks) or `ejected`
    /// (an outlier: failing or slow answers; back after its ejection time).
    pub state: &'static str,
    /// Requests in flight now.
    pub in_flight: usize,
    /// Requests sent to it so far.
    pub requests: u64,
    /// Requests that failed on it (connect errors, timeouts, broken connections).
    pub errors: u64,
    /// Answers with a 5xx status.
    pub server_errors: u64,
    /// Failed answers in a row now.
    pub consecutive_failures: u32,
    /// Times it was ejected as an outlier.
    pub ejections: u64,
    /// Milliseconds until its ejection ends (0 when not ejected).
    pub ejected_for_ms: u64,
    /// Its Peak-EWMA round-trip estimate now, milliseconds.
    pub rtt_ewma_ms: f64,
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
            server_errors: AtomicU64::new(0),
            streak: AtomicU32::new(0),
            ejected: AtomicBool::new(false),
            ejected_until_ms: AtomicU64::new(0),
            ejection_level: AtomicU32::new(0),
            ejections: AtomicU64::new(0),
            interval_answers: AtomicU64::new(0),
            interval_failures: AtomicU64::new(0),
            interval_latency_us: AtomicU64::new(0),
            rtt_ns: AtomicU64::new((DEFAULT_RTT.as_nanos() as f64).to_bits()),
            rtt_at_ns: AtomicU64::new(clock::now_ns()),
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

    /// Whether selection may pick it: healthy, not draining, not ejected.
    pub fn is_selectable(&self) -> bool {
        self.is_healthy() && !self.is_draining() && !self.is_ejected()
    }

    /// Whether it is out of selection as an outlier.
    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Acquire)
    }

    /// `draining`, `down`, `ejected` or `active`.
    pub fn state(&self) -> &'static str {
        if self.is_draining() {
            "draining"
        } else if !self.is_healthy() {
            "down"
        } else if self.is_ejected() {
            "ejected"
        } else {
            "active"
        }
    }

    /// When its ejection ends (milliseconds on the clock).
    pub(crate) fn ejected_until_ms(&self) -> u64 {
        self.ejected_until_ms.load(Ordering::Acquire)
    }

    /// Ejects it until `until_ms`, or brings it back.
    pub(crate) fn set_ejected(&self, ejected: bool, until_ms: u64) {
        self.ejected_until_ms.store(until_ms, Ordering::Release);
        if ejected {
            self.ejections.fetch_add(1, Ordering::Relaxed);
        } else {
            // Back with a clean slate: the failures that ejected it are history.
            self.streak.store(0, Ordering::Release);
        }
        self.ejected.store(ejected, Ordering::Release);
    }

    /// Raises the ejection multiplier; returns the new one.
    pub(crate) fn raise_ejection_level(&self) -> u32 {
        self.ejection_level.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Lowers the ejection multiplier by one (not below 0).
    pub(crate) fn lower_ejection_level(&self) {
        let _ = self
            .ejection_level
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// The current outlier interval's answers, failures and summed latency (microseconds),
    /// starting a new interval.
    pub(crate) fn take_interval(&self) -> (u64, u64, u64) {
        (
            self.interval_answers.swap(0, Ordering::AcqRel),
            self.interval_failures.swap(0, Ordering::AcqRel),
            self.interval_latency_us.swap(0, Ordering::AcqRel),
        )
    }

    /// Counts an answer that came after `latency` at `now_ns`; `failed` for a 5xx status.
    /// Returns the failed answers in a row (0 after a good one).
    pub(crate) fn record_answer(&self, latency: Duration, failed: bool, now_ns: u64) -> u32 {
        let latency_ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.record_latency(latency);
        self.observe_rtt(latency_ns, now_ns);
        self.interval_answers.fetch_add(1, Ordering::Relaxed);
        self.interval_latency_us
            .fetch_add(latency_ns / 1000, Ordering::Relaxed);
        if failed {
            self.server_errors.fetch_add(1, Ordering::Relaxed);
            self.interval_failures.fetch_add(1, Ordering::Relaxed);
            self.streak.fetch_add(1, Ordering::AcqRel) + 1
        } else {
            if self.streak.load(Ordering::Relaxed) != 0 {
                self.streak.store(0, Ordering::Release);
            }
            0
        }
    }

    /// Feeds one round trip into the Peak-EWMA estimate (tower's `RttEstimate::update`): a
    /// round trip above the estimate becomes the estimate at once (the peak); one below pulls it
    /// down as much as the time since the last one allows. Two answers at once may each write
    /// their own result; one sample is then lost, which an average can afford.
    fn observe_rtt(&self, rtt_ns: u64, now_ns: u64) {
        let prev = f64::from_bits(self.rtt_ns.load(Ordering::Relaxed));
        let at = self.rtt_at_ns.load(Ordering::Relaxed);
        let next = peak_ewma(prev, now_ns.saturating_sub(at), rtt_ns as f64);
        self.rtt_ns.store(next.to_bits(), Ordering::Relaxed);
        self.rtt_at_ns.store(now_ns, Ordering::Relaxed);
    }

    /// Its Peak-EWMA round-trip estimate at `now_ns`, decayed towards zero for the time since it
    /// was last fed (tower decays on every read the same way), so that a backend that stopped
    /// getting requests because it was slow is tried again in time.
    pub fn rtt_estimate_ns(&self, now_ns: u64) -> f64 {
        let prev = f64::from_bits(self.rtt_ns.load(Ordering::Relaxed));
        let at = self.rtt_at_ns.load(Ordering::Relaxed);
        peak_ewma(prev, now_ns.saturating_sub(at), 0.0)
    }

    /// What the `peak_ewma` strategy compares: the round-trip estimate times the requests that
    /// would be in flight with this one (linkerd's and tower's load).
    pub fn peak_ewma_cost(&self, now_ns: u64) -> f64 {
        self.rtt_estimate_ns(now_ns) * (self.in_flight() as f64 + 1.0)
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
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.requests.fetch_add(1, Ordering::Relaxed);
        InFlight {
            backend: self.clone(),
        }
    }

    /// Counts a request that got no answer (connect error, timeout, broken connection); returns
    /// the failed answers in a row.
    pub(crate) fn record_error(&self) -> u32 {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.interval_failures.fetch_add(1, Ordering::Relaxed);
        self.streak.fetch_add(1, Ordering::AcqRel) + 1
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
            server_errors: self.server_errors.load(Ordering::Relaxed),
            consecutive_failures: self.streak.load(Ordering::Relaxed),
            ejections: self.ejections.load(Ordering::Relaxed),
            ejected_for_ms: if self.is_ejected() {
                self.ejected_until_ms().saturating_sub(clock::now_ms())
            } else {
                0
            },
            rtt_ewma_ms: self.rtt_estimate_ns(clock::now_ns()) / 1e6,
            latency_p50_ms: p50,
            latency_p99_ms: p99,
        }
    }
}

/// The Peak-EWMA step: the estimate `prev` (ns), `elapsed_ns` after it was made, fed a round
/// trip of `rtt` ns (0 to only decay it).
pub(crate) fn peak_ewma(prev: f64, elapsed_ns: u64, rtt: f64) -> f64 {
    if rtt > prev {
        return rtt;
    }
    let decay = (-(elapsed_ns as f64) / DECAY_NS).exp();
    prev * decay + rtt * (1.0 - decay)
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
