//! A circuit breaker per peer (resilience4j's state machine): `closed` counts calls and failures
//! over a sliding time window; once at least `min_calls` calls saw a failure rate of
//! `failure_rate_percent` or more, it opens. `open` refuses every call at once (the caller answers
//! `503 circuit_open` with `Retry-After`) for `open_ms`; then `half_open` lets `half_open_calls`
//! trial calls through: if their failure rate stays under the threshold it closes (with a fresh
//! window), else it opens again.
//!
//! What is a failure is the caller's call (see [`Fused`]: a 5xx answer, a connect error, a
//! timeout, a pool with no instance; never a 4xx, which is the client's mistake, not the peer's
//! sickness).
//!
//! Cost per call while closed: one atomic load to admit it, one compare-and-swap to count it (two
//! on a failure, plus reading the window's ten slots); a lock is taken only to change state.
//! Time is a parameter (milliseconds on the [`crate::clock`]), so tests drive it by hand.

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use api::client::{BoxFuture, ClientError, Inbound, Outbound, Transport};
use serde::{Deserialize, Serialize};

use crate::clock;
use crate::profile::Profile;
use crate::window::Window;

/// The `breaker` table: when a peer's breaker opens, how long it stays open, how it tries again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "BreakerSection", into = "BreakerSection")]
pub struct BreakerConfig {
    /// The defaults the section started from.
    pub profile: Profile,
    /// Off: calls always go through (no state is kept).
    pub enabled: bool,
    /// The sliding window the failure rate is computed over, milliseconds.
    pub window_ms: u64,
    /// Fewest calls in the window before the rate may open the breaker (resilience4j: 100).
    pub min_calls: u32,
    /// Failure rate that opens it, percent (resilience4j: 50).
    pub failure_rate_percent: u32,
    /// How long it stays open before trial calls, milliseconds (resilience4j: 60 s).
    pub open_ms: u64,
    /// Trial calls let through while half-open (resilience4j: 10).
    pub half_open_calls: u32,
}

impl BreakerConfig {
    /// The profile's settings.
    pub fn of(profile: Profile) -> Self {
        match profile {
            Profile::Standard => Self {
                profile,
                enabled: true,
                window_ms: 10_000,
                min_calls: 100,
                failure_rate_percent: 50,
                open_ms: 60_000,
                half_open_calls: 10,
            },
            Profile::Demo => Self {
                profile,
                enabled: true,
                window_ms: 2_000,
                min_calls: 10,
                failure_rate_percent: 50,
                open_ms: 1_000,
                half_open_calls: 3,
            },
        }
    }

    /// Problems as `field: problem` lines relative to this table.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        for (field, v) in [
            ("window_ms", self.window_ms),
            ("min_calls", u64::from(self.min_calls)),
            ("open_ms", self.open_ms),
            ("half_open_calls", u64::from(self.half_open_calls)),
        ] {
            if v == 0 {
                p.push(format!("{field}: must be at least 1"));
            }
        }
        if !(1..=100).contains(&self.failure_rate_percent) {
            p.push("failure_rate_percent: must be between 1 and 100".into());
        }
        p
    }
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self::of(Profile::Standard)
    }
}

/// The table as written: a profile, and any setting changed from it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct BreakerSection {
    profile: Profile,
    enabled: Option<bool>,
    window_ms: Option<u64>,
    min_calls: Option<u32>,
    failure_rate_percent: Option<u32>,
    open_ms: Option<u64>,
    half_open_calls: Option<u32>,
}

impl From<BreakerSection> for BreakerConfig {
    fn from(s: BreakerSection) -> Self {
        let d = BreakerConfig::of(s.profile);
        Self {
            profile: s.profile,
            enabled: s.enabled.unwrap_or(d.enabled),
            window_ms: s.window_ms.unwrap_or(d.window_ms),
            min_calls: s.min_calls.unwrap_or(d.min_calls),
            failure_rate_percent: s.failure_rate_percent.unwrap_or(d.failure_rate_percent),
            open_ms: s.open_ms.unwrap_or(d.open_ms),
            half_open_calls: s.half_open_calls.unwrap_or(d.half_open_calls),
        }
    }
}

impl From<BreakerConfig> for BreakerSection {
    fn from(c: BreakerConfig) -> Self {
        Self {
            profile: c.profile,
            enabled: Some(c.enabled),
            window_ms: Some(c.window_ms),
            min_calls: Some(c.min_calls),
            failure_rate_percent: Some(c.failure_rate_percent),
            open_ms: Some(c.open_ms),
            half_open_calls: Some(c.half_open_calls),
        }
    }
}

/// A breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Calls go through; failures are counted.
    Closed,
    /// Calls are refused at once.
    Open,
    /// A few trial calls go through; the rest are refused.
    HalfOpen,
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

impl State {
    fn of(v: u8) -> Self {
        match v {
            OPEN => State::Open,
            HALF_OPEN => State::HalfOpen,
            _ => State::Closed,
        }
    }

    fn code(self) -> u8 {
        match self {
            State::Closed => CLOSED,
            State::Open => OPEN,
            State::HalfOpen => HALF_OPEN,
        }
    }

    /// Its name in stats and logs.
    pub fn name(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }

    /// Its value in the `scalelab_breaker_state` gauge: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> f64 {
        match self {
            State::Closed => 0.0,
            State::HalfOpen => 1.0,
            State::Open => 2.0,
        }
    }
}

/// A refused call: when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    /// Milliseconds until the breaker lets calls through again (at least 1).
    pub retry_after_ms: u64,
}

/// One peer's breaker.
#[derive(Debug)]
pub struct Breaker {
    /// The peer's role (`service`, `db`), for logs and metric labels.
    peer: String,
    /// Who holds it (the gateway's instance id), for metric labels.
    owner: String,
    config: BreakerConfig,
    /// [`State`] as a byte: read by every call without a lock.
    state: AtomicU8,
    /// While open: when trial calls may start (milliseconds on the clock).
    open_until_ms: AtomicU64,
    /// Bumped on every change of state, so that a trial's answer arriving after its half-open
    /// period is over counts for nothing.
    generation: AtomicU32,
    /// Calls and failures of the sliding window (closed state).
    calls: Window,
    failures: Window,
    /// Half-open: trial calls still to hand out, and the answers of those handed out.
    trials_left: AtomicU32,
    trial_ok: AtomicU32,
    trial_failed: AtomicU32,
    /// Times it opened since start.
    opened: AtomicU64,
    /// Calls refused since start.
    rejected: AtomicU64,
    /// Taken only to change state, so that two callers never both make the same change.
    transition: Mutex<()>,
}

/// What `/metrics` and the stats show of a breaker.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BreakerStats {
    /// The peer.
    pub peer: String,
    /// `closed`, `open` or `half_open`.
    pub state: State,
    /// Times it opened since start.
    pub opened: u64,
    /// Calls refused since start.
    pub rejected: u64,
    /// Calls in the window now.
    pub window_calls: u64,
    /// Failed calls in the window now.
    pub window_failures: u64,
}

impl Breaker {
    /// A closed breaker for calls to `peer`, held by `owner` (its state is in `/metrics` from
    /// the start, as `scalelab_breaker_state{id, peer}`).
    pub fn new(peer: &str, owner: &str, config: BreakerConfig) -> Self {
        if config.enabled {
            metrics::gauge!("scalelab_breaker_state", "id" => owner.to_string(), "peer" => peer.to_string())
                .set(State::Closed.gauge());
        }
        Self {
            peer: peer.to_string(),
            owner: owner.to_string(),
            calls: Window::new(config.window_ms),
            failures: Window::new(config.window_ms),
            config,
            state: AtomicU8::new(CLOSED),
            open_until_ms: AtomicU64::new(0),
            generation: AtomicU32::new(0),
            trials_left: AtomicU32::new(0),
            trial_ok: AtomicU32::new(0),
            trial_failed: AtomicU32::new(0),
            opened: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            transition: Mutex::new(()),
        }
    }

    /// Its state now (an open breaker whose wait is over still reads `open` until a call comes).
    pub fn state(&self) -> State {
        State::of(self.state.load(Ordering::Acquire))
    }

    /// Its settings.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// The peer it guards.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// A snapshot for stats.
    pub fn stats(&self, now_ms: u64) -> BreakerStats {
        BreakerStats {
            peer: self.peer.clone(),
            state: self.state(),
            opened: self.opened.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            window_calls: self.calls.sum(now_ms),
            window_failures: self.failures.sum(now_ms),
        }
    }

    /// Asks to make one call at `now_ms`: a permit to report its outcome with, or a refusal.
    pub fn admit(&self, now_ms: u64) -> Result<Permit<'_>, Rejected> {
        if !self.config.enabled {
            return Ok(self.permit(false, 0));
        }
        loop {
            match self.state.load(Ordering::Acquire) {
                CLOSED => return Ok(self.permit(false, 0)),
                OPEN => {
                    let until = self.open_until_ms.load(Ordering::Acquire);
                    if now_ms < until {
                        return Err(self.reject(until - now_ms));
                    }
                    // The wait is over: the first caller to see it starts the trials.
                    self.change(State::Open, State::HalfOpen, now_ms);
                }
                _ => {
                    let generation = self.generation.load(Ordering::Acquire);
                    let took = self
                        .trials_left
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                        .is_ok();
                    if took {
                        return Ok(self.permit(true, generation));
                    }
                    // Every trial is out; their answers decide. A second is a fair guess.
                    return Err(self.reject(self.config.open_ms.min(1000)));
                }
            }
        }
    }

    fn permit(&self, trial: bool, generation: u32) -> Permit<'_> {
        Permit {
            breaker: self,
            trial,
            generation,
            done: false,
        }
    }

    fn reject(&self, retry_after_ms: u64) -> Rejected {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        Rejected {
            retry_after_ms: retry_after_ms.max(1),
        }
    }

    /// Counts the outcome of a call made under a permit.
    fn record(&self, trial: bool, generation: u32, ok: bool, now_ms: u64) {
        if !self.config.enabled {
            return;
        }
        if trial {
            if self.generation.load(Ordering::Acquire) != generation
                || self.state.load(Ordering::Acquire) != HALF_OPEN
            {
                return;
            }
            let n = u64::from(self.config.half_open_calls);
            let rate = u64::from(self.config.failure_rate_percent);
            if ok {
                let ok_count = u64::from(self.trial_ok.fetch_add(1, Ordering::AcqRel)) + 1;
                // Closed once the trials still out could no longer bring the rate to the threshold.
                if n.saturating_sub(ok_count) * 100 < rate * n {
                    self.change(State::HalfOpen, State::Closed, now_ms);
                }
            } else {
                let failed = u64::from(self.trial_failed.fetch_add(1, Ordering::AcqRel)) + 1;
                if failed * 100 >= rate * n {
                    self.change(State::HalfOpen, State::Open, now_ms);
                }
            }
            return;
        }
        self.calls.add(now_ms, 1);
        if ok {
            return;
        }
        self.failures.add(now_ms, 1);
        if self.state.load(Ordering::Acquire) != CLOSED {
            return;
        }
        let calls = self.calls.sum(now_ms);
        let failures = self.failures.sum(now_ms);
        if calls >= u64::from(self.config.min_calls)
            && failures * 100 >= u64::from(self.config.failure_rate_percent) * calls
        {
            self.change(State::Closed, State::Open, now_ms);
        }
    }

    /// A trial that never got an answer (its caller gave up) gives its place back.
    fn abandon(&self, generation: u32) {
        if self.generation.load(Ordering::Acquire) == generation
            && self.state.load(Ordering::Acquire) == HALF_OPEN
        {
            self.trials_left.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Moves from `from` to `to` if it is still in `from`.
    fn change(&self, from: State, to: State, now_ms: u64) {
        // A poisoned lock only means a panic elsewhere; the state it guards is the atomics.
        let _guard = self
            .transition
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.state.load(Ordering::Acquire) != from.code() {
            return;
        }
        match to {
            State::Open => {
                self.open_until_ms.store(
                    now_ms.saturating_add(self.config.open_ms),
                    Ordering::Release,
                );
                self.opened.fetch_add(1, Ordering::Relaxed);
            }
            State::HalfOpen => {
                self.trial_ok.store(0, Ordering::Release);
                self.trial_failed.store(0, Ordering::Release);
                self.trials_left
                    .store(self.config.half_open_calls, Ordering::Release);
            }
            State::Closed => {
                // A fresh start: the failures that opened it are history.
                self.calls.clear();
                self.failures.clear();
            }
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.state.store(to.code(), Ordering::Release);
        match to {
            State::Open => tracing::warn!(
                peer = %self.peer,
                from = from.name(),
                open_ms = self.config.open_ms,
                "circuit breaker opened: calls fail fast"
            ),
            _ => {
                tracing::info!(peer = %self.peer, from = from.name(), to = to.name(), "circuit breaker changed state")
            }
        }
        metrics::gauge!("scalelab_breaker_state", "id" => self.owner.clone(), "peer" => self.peer.clone())
            .set(to.gauge());
        metrics::counter!("scalelab_breaker_transitions_total", "id" => self.owner.clone(), "peer" => self.peer.clone(), "to" => to.name())
            .increment(1);
    }
}

/// Leave to make one call; report its outcome with [`Permit::record`]. Dropped without a record
/// (the caller gave up), a trial call gives its place back.
#[derive(Debug)]
pub struct Permit<'a> {
    breaker: &'a Breaker,
    trial: bool,
    generation: u32,
    done: bool,
}

impl Permit<'_> {
    /// Whether this is one of the half-open trial calls.
    pub fn is_trial(&self) -> bool {
        self.trial
    }

    /// Reports the call's outcome at `now_ms`: `ok` unless the peer failed.
    pub fn record(mut self, ok: bool, now_ms: u64) {
        self.done = true;
        self.breaker.record(self.trial, self.generation, ok, now_ms);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.done && self.trial {
            self.breaker.abandon(self.generation);
        }
    }
}

/// A [`Transport`] behind a [`Breaker`]: what the gateway's typed clients send through. A
/// failure is an answer with a 5xx status or no answer at all (unreachable, timed out, no
/// instance in the pool, body unreadable); a 4xx is an answer.
#[derive(Debug, Clone)]
pub struct Fused<T> {
    inner: T,
    breaker: Arc<Breaker>,
}

impl<T: Transport> Fused<T> {
    /// `inner` behind `breaker`.
    pub fn new(inner: T, breaker: Arc<Breaker>) -> Self {
        Self { inner, breaker }
    }
}

impl<T: Transport> Transport for Fused<T> {
    fn service(&self) -> &'static str {
        self.inner.service()
    }

    fn send<'a>(&'a self, req: Outbound<'a>) -> BoxFuture<'a, Result<Inbound, ClientError>> {
        Box::pin(async move {
            let permit = match self.breaker.admit(clock::now_ms()) {
                Ok(p) => p,
                Err(r) => {
                    return Err(ClientError::CircuitOpen {
                        service: self.inner.service(),
                        retry_after_ms: r.retry_after_ms,
                    });
                }
            };
            let answer = self.inner.send(req).await;
            let ok = matches!(&answer, Ok(inbound) if !inbound.status.is_server_error());
            permit.record(ok, clock::now_ms());
            answer
        })
    }
}

#[cfg(test)]
mod tests;
