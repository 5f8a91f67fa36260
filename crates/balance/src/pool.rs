//! A pool of backends: selection, passive health, outlier ejection, retry within a budget.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::backend::{Backend, InFlight};
use crate::budget::{RetryBudget, RetryBudgetConfig};
use crate::clock;
use crate::conn::SendError;
use crate::health::{self, HealthConfig, HealthTask};
use crate::outlier::{OutlierConfig, Outliers};
use crate::selection::{Selection, Strategy};

/// How a pool picks, reaches and checks its backends.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    /// `round_robin` (default), `least_connections`, `power_of_two_choices` or `peak_ewma`.
    pub strategy: Strategy,
    /// Longest wait for a TCP connection to a backend, milliseconds (then the next backend).
    pub connect_timeout_ms: u64,
    /// Longest wait for a backend's response headers, milliseconds (then `504`).
    pub response_timeout_ms: u64,
    /// Idle keep-alive connections kept per backend (per worker thread of the balancer's own
    /// engine). Fewer than the requests in flight to a backend means closing connections after
    /// answers and opening new ones for the next requests: with 1,024 client connections and 256
    /// kept, the balancer's p99 was twice nginx's (docs/PERFORMANCE.md, session 10); 1,024 by
    /// default.
    pub max_idle_per_backend: usize,
    /// Most backends tried for one request (retries that may cost a backend work are also
    /// bounded by `retry_budget`).
    pub max_attempts: u32,
    /// Active health checks.
    pub health: HealthConfig,
    /// Expand each backend URL whose host is a DNS name to one backend per address it resolves
    /// to, re-resolved every `refresh_ms` (nginx's `resolve`; for an orchestrator's headless
    /// service). Off: a name is resolved when a connection is made, as one backend.
    pub resolve: bool,
    /// How often a changing membership is read again (DNS names, or the supervisor's list of
    /// instances under `scalelab up`), milliseconds.
    pub refresh_ms: u64,
    /// Whether an idempotent request without a body that got no answer within
    /// `response_timeout_ms` is sent once more to the next backend (nginx's
    /// `proxy_next_upstream timeout`): what makes a host that vanished mid-request (a cut link)
    /// invisible to clients, at the price of running a slow request twice. Off: the timeout is a
    /// `504`.
    pub retry_timeouts: bool,
    /// Whether an idempotent request without a body answered with a 5xx is sent once more to the
    /// next backend (nginx's `proxy_next_upstream http_500 http_502 http_503`, Envoy's
    /// `retry_on: 5xx`), within `retry_budget`. Off: the answer is passed on.
    pub retry_server_errors: bool,
    /// How many retries the pool may add to its load: a share of its requests plus a floor
    /// (Finagle's retry budget). Retries of requests that never left are not counted: they cost
    /// no backend any work.
    pub retry_budget: RetryBudgetConfig,
    /// Outlier ejection: backends answering 5xx in a row, or far slower than their peers, leave
    /// the pool for a while (Envoy's outlier detection).
    pub outlier: OutlierConfig,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            strategy: Strategy::RoundRobin,
            connect_timeout_ms: 1000,
            response_timeout_ms: 30_000,
            max_idle_per_backend: 1024,
            max_attempts: 3,
            health: HealthConfig::default(),
            resolve: false,
            refresh_ms: 1000,
            retry_timeouts: false,
            retry_server_errors: false,
            retry_budget: RetryBudgetConfig::default(),
            outlier: OutlierConfig::default(),
        }
    }
}

impl PoolConfig {
    /// Every setting a pool cannot honour, as `field: problem` lines relative to this section
    /// (empty when valid); the owner of the section prefixes its path (`pool.`, `services.`).
    pub fn validate(&self) -> Vec<String> {
        let h = &self.health;
        let at_least_one = [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("response_timeout_ms", self.response_timeout_ms),
            ("max_attempts", u64::from(self.max_attempts)),
            ("health.interval_ms", h.interval_ms),
            ("health.timeout_ms", h.timeout_ms),
            ("health.fall", u64::from(h.fall)),
            ("health.rise", u64::from(h.rise)),
            ("refresh_ms", self.refresh_ms),
        ];
        let mut problems: Vec<String> = at_least_one
            .iter()
            .filter(|(_, v)| *v == 0)
            .map(|(field, _)| format!("{field}: must be at least 1"))
            .collect();
        if !h.path.starts_with('/') {
            problems.push(format!("health.path: {:?} must start with /", h.path));
        }
        problems.extend(
            self.retry_budget
                .validate()
                .into_iter()
                .map(|p| format!("retry_budget.{p}")),
        );
        problems.extend(
            self.outlier
                .validate()
                .into_iter()
                .map(|p| format!("outlier.{p}")),
        );
        problems
    }
}

/// Why a request could not be served by any backend.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    /// Every backend is marked down (or there are none).
    #[error("no healthy backend in pool {pool}")]
    NoHealthyBackend {
        /// The pool's name.
        pool: String,
    },
    /// Backends were tried and none could be reached.
    #[error("no backend of pool {pool} could be reached: {detail}")]
    Unreachable {
        /// The pool's name.
        pool: String,
        /// The last transport error (for logs).
        detail: String,
    },
    /// The backend did not answer in time.
    #[error("backend {backend} did not answer within {timeout_ms} ms")]
    Timeout {
        /// The backend's URL.
        backend: String,
        /// The timeout.
        timeout_ms: u64,
    },
    /// The connection broke after the request was (maybe partly) sent, and it could not be replayed.
    #[error("connection to {backend} broke: {detail}")]
    Broken {
        /// The backend's URL.
        backend: String,
        /// The transport error (for logs).
        detail: String,
    },
}

impl PoolError {
    /// The status a proxy answers with: `503` (none healthy), `502` (unreachable, broken), `504`.
    pub fn status(&self) -> StatusCode {
        match self {
            PoolError::NoHealthyBackend { .. } => StatusCode::SERVICE_UNAVAILABLE,
            PoolError::Unreachable { .. } | PoolError::Broken { .. } => StatusCode::BAD_GATEWAY,
            PoolError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The stable error code for the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            PoolError::NoHealthyBackend { .. } => "no_healthy_backend",
            PoolError::Unreachable { .. } => "backend_unreachable",
            PoolError::Timeout { .. } => "backend_timeout",
            PoolError::Broken { .. } => "backend_connection_broken",
        }
    }

    /// A message safe to show a client (no addresses or transport details).
    pub fn public_message(&self) -> String {
        match self {
            PoolError::NoHealthyBackend { pool } => {
                format!("no healthy {pool} instance is available; try again shortly")
            }
            PoolError::Unreachable { pool, .. } => format!("no {pool} instance could be reached"),
            PoolError::Timeout { timeout_ms, .. } => {
                format!("the upstream instance did not answer within {timeout_ms} ms")
            }
            PoolError::Broken { .. } => "the connection to the upstream instance broke".into(),
        }
    }
}

/// A response from a backend, and which backend gave it.
#[derive(Debug)]
pub struct Forwarded {
    /// The response; its body keeps the backend's in-flight count until it ends.
    pub response: Response<Body>,
    /// The backend that answered.
    pub backend: Arc<Backend>,
    /// How many backends were tried (1 when the first one answered).
    pub attempts: u32,
}

/// A set of backends behind one selection strategy. Its membership may change while it serves
/// ([`Pool::set_members`]): each request works on the set as it was when the request started.
#[derive(Debug)]
pub struct Pool {
    name: String,
    /// Swapped whole on a membership change; read without a lock by every request.
    backends: ArcSwap<Vec<Arc<Backend>>>,
    selection: Arc<dyn Selection>,
    config: PoolConfig,
    /// Retries allowed beside the requests (shared by all requests of the pool).
    budget: RetryBudget,
    /// Decides ejections; the counts are the backends'.
    outliers: Outliers,
}

/// One backend as a membership source lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its base URL.
    pub url: String,
    /// Whether it is leaving (no new requests; in-flight ones finish).
    pub draining: bool,
}

impl Member {
    /// An active member at `url`.
    pub fn active(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            draining: false,
        }
    }
}

/// What [`Pool::set_members`] changed, by URL.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MembershipChange {
    /// Backends that joined.
    pub added: Vec<String>,
    /// Backends that left (requests in flight on them finish).
    pub removed: Vec<String>,
    /// Backends that started draining.
    pub draining: Vec<String>,
    /// Backends whose drain was called off.
    pub resumed: Vec<String>,
}

impl MembershipChange {
    /// Whether anything changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.draining.is_empty()
            && self.resumed.is_empty()
    }
}

impl Pool {
    /// A pool named `name` (used in errors: `gateway`, `service`) over `urls`, choosing with
    /// `config.strategy`.
    pub fn new(name: &str, urls: &[String], config: PoolConfig) -> Arc<Self> {
        let selection = config.strategy.build();
        Self::with_selection(name, urls, config, selection)
    }

    /// Like [`Pool::new`] with a [`Selection`] of the caller's own (the extension point: see
    /// `examples/custom_selection.rs`); `config.strategy` is then ignored. Health checks, retries
    /// and in-flight counting are the pool's and work the same with any selection.
    pub fn with_selection(
        name: &str,
        urls: &[String],
        config: PoolConfig,
        selection: Arc<dyn Selection>,
    ) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_string(),
            backends: ArcSwap::from_pointee(
                urls.iter()
                    .map(|u| Backend::new(u, config.max_idle_per_backend))
                    .collect(),
            ),
            selection,
            budget: RetryBudget::new(config.retry_budget.clone()),
            outliers: Outliers::new(name, config.outlier.clone()),
            config,
        })
    }

    /// Its retry budget (granted and refused counts).
    pub fn budget(&self) -> &RetryBudget {
        &self.budget
    }

    /// Its outlier detector.
    pub fn outliers(&self) -> &Outliers {
        &self.outliers
    }

    /// Its backends now, in membership order (a snapshot: later changes do not show in it).
    pub fn backends(&self) -> Arc<Vec<Arc<Backend>>> {
        self.backends.load_full()
    }

    /// Makes `members` the pool's backends: a URL already in the pool keeps its backend (health,
    /// counters, connections) and takes the member's drain state; a new URL joins (healthy until
    /// shown otherwise); a URL no longer listed leaves. Requests in flight finish wherever they
    /// are; new ones see the new set. A member listed twice counts once.
    pub fn set_members(&self, members: &[Member]) -> MembershipChange {
        let current = self.backends.load_full();
        let mut change = MembershipChange::default();
        let mut next: Vec<Arc<Backend>> = Vec::with_capacity(members.len());
        for m in members {
            let url = m.url.trim_end_matches('/');
            if next.iter().any(|b| b.url == url) {
                continue;
            }
            let backend = match current.iter().find(|b| b.url == url) {
                Some(b) => b.clone(),
                None => {
                    change.added.push(url.to_string());
                    Backend::new(url, self.config.max_idle_per_backend)
                }
            };
            match (backend.is_draining(), m.draining) {
                (false, true) => change.draining.push(backend.url.clone()),
                (true, false) => change.resumed.push(backend.url.clone()),
                _ => {}
            }
            backend.set_draining(m.draining);
            next.push(backend);
        }
        for gone in current
            .iter()
            .filter(|b| !next.iter().any(|n| n.url == b.url))
        {
            // Whatever it still has in flight finishes; no new request can reach it.
            gone.set_draining(true);
            change.removed.push(gone.url.clone());
        }
        if !change.is_empty() {
            tracing::info!(pool = %self.name, ?change, "pool membership changed");
            metrics::gauge!("scalelab_pool_backends", "pool" => self.name.clone())
                .set(next.len() as f64);
            self.backends.store(Arc::new(next));
        }
        change
    }

    /// Its settings.
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    /// Its strategy's name.
    pub fn strategy(&self) -> &'static str {
        self.selection.name()
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Starts following a changing membership, if there is one to follow: the supervisor's list at
    /// `supervisor` (`http://HOST:PORT/members/ROLE`, given by `scalelab up`), else the DNS names of
    /// `urls` when `resolve` is on. It stops when the returned task is dropped.
    pub fn spawn_membership(
        self: &Arc<Self>,
        urls: &[String],
        supervisor: Option<String>,
    ) -> Option<crate::membership::MembershipTask> {
        use crate::membership::{Source, SystemResolver, has_names, spawn};
        let every = Duration::from_millis(self.config.refresh_ms.max(1));
        let source = match supervisor.filter(|u| !u.is_empty()) {
            Some(url) => Source::Supervisor { url },
            None if self.config.resolve && has_names(urls) => Source::Dns {
                urls: urls.to_vec(),
                resolver: Arc::new(SystemResolver),
            },
            None => return None,
        };
        tracing::info!(pool = %self.name, ?source, "following the pool's membership");
        Some(spawn(self.clone(), source, every))
    }

    /// Starts the active health checks and the outlier sweep; they stop when the returned task
    /// is dropped.
    pub fn spawn_health_checks(self: &Arc<Self>) -> HealthTask {
        health::spawn(self.clone())
    }

    /// Sends `req` to one backend and returns its response.
    ///
    /// Backends are chosen by the strategy among the healthy ones. A backend that cannot be
    /// reached is marked down and the request goes to the next one (the request had not left, so
    /// this is always safe). A connection that breaks after the request left is retried only for
    /// an idempotent method with an empty body, which can be replayed exactly. A response that
    /// does not start within the response timeout ends in [`PoolError::Timeout`], not a retry, so
    /// that a slow backend does not get the same work twice (unless `retry_timeouts`). With
    /// `retry_server_errors`, an idempotent bodiless request answered 5xx goes to the next
    /// backend. Every retry that may cost a backend work must fit the retry budget; when one is
    /// refused, what the last attempt got is passed on. Every answer feeds outlier ejection.
    pub async fn send(&self, req: Request<Body>) -> Result<Forwarded, PoolError> {
        let replay = Replay::of(&req);
        self.admit();
        let mut req = Some(req);
        // The membership as this request found it; a change meanwhile applies to the next one.
        let backends = self.backends.load();
        // On the stack for pools of up to 16 backends: no allocation per request.
        let mut tried: SmallVec<[usize; 4]> = SmallVec::new();
        let mut last: Option<PoolError> = None;
        let connect_timeout = Duration::from_millis(self.config.connect_timeout_ms);
        let response_timeout = Duration::from_millis(self.config.response_timeout_ms);

        let max_attempts = self.config.max_attempts.max(1);
        for attempt in 1..=max_attempts {
            let Some(i) = self.pick(&backends, &tried) else {
                break;
            };
            tried.push(i);
            let backend = &backends[i];
            let Some(request) = req.take().or_else(|| replay.as_ref().map(Replay::build)) else {
                break;
            };
            let guard = backend.start();
            let started = clock::now_ns();
            let outcome = tokio::time::timeout(
                response_timeout,
                backend.conns.send(request, connect_timeout),
            )
            .await;
            match outcome {
                Ok(Ok((resp, conn))) => {
                    let failed = resp.status().is_server_error();
                    let now = self.answered(&backends, i, started, failed);
                    if failed
                        && self.config.retry_server_errors
                        && replay.is_some()
                        && attempt < max_attempts
                        && self.has_untried(&backends, &tried)
                        && self.may_retry(now / 1_000_000)
                    {
                        tracing::debug!(pool = %self.name, backend = %backend.url, status = %resp.status(), "server error; replaying the idempotent request on the next backend");
                        metrics::counter!("scalelab_pool_retries_total", "pool" => self.name.clone())
                            .increment(1);
                        // The answer is dropped unread: its connection closes.
                        drop(resp);
                        drop(guard);
                        continue;
                    }
                    let response = resp.map(|inner| {
                        let mut body = Guarded {
                            inner,
                            conn,
                            _guard: guard,
                        };
                        // An empty body is over before anyone reads it.
                        if body.inner.is_end_stream() {
                            body.conn.give_back();
                        }
                        Body::new(body)
                    });
                    return Ok(Forwarded {
                        response,
                        backend: backend.clone(),
                        attempts: attempt,
                    });
                }
                Ok(Err(SendError::NotSent {
                    request,
                    kind,
                    detail,
                })) => {
                    // Refused, timed out, or closed before the request was written: all say
                    // the backend is gone or going, so it leaves selection until checks pass.
                    // The retry is not counted against the budget: no backend did any work.
                    self.unanswered(backend);
                    tracing::debug!(?kind, "send failed before the request left");
                    tracing::warn!(pool = %self.name, backend = %backend.url, %detail, "backend unreachable, trying the next one");
                    metrics::counter!("scalelab_pool_retries_total", "pool" => self.name.clone())
                        .increment(1);
                    req = Some(*request);
                    last = Some(PoolError::Unreachable {
                        pool: self.name.clone(),
                        detail,
                    });
                }
                Ok(Err(SendError::Failed { detail })) => {
                    self.unanswered(backend);
                    let err = PoolError::Broken {
                        backend: backend.url.clone(),
                        detail,
                    };
                    if replay.is_none() || !self.may_retry(clock::now_ms()) {
                        return Err(err);
                    }
                    tracing::warn!(pool = %self.name, backend = %backend.url, "connection broke; replaying the idempotent request on the next backend");
                    metrics::counter!("scalelab_pool_retries_total", "pool" => self.name.clone())
                        .increment(1);
                    last = Some(err);
                }
                Err(_elapsed) => {
                    self.unanswered(backend);
                    let err = PoolError::Timeout {
                        backend: backend.url.clone(),
                        timeout_ms: self.config.response_timeout_ms,
                    };
                    if !self.config.retry_timeouts
                        || replay.is_none()
                        || !self.may_retry(clock::now_ms())
                    {
                        return Err(err);
                    }
                    tracing::warn!(pool = %self.name, backend = %backend.url, "no answer in time; replaying the idempotent request on the next backend");
                    metrics::counter!("scalelab_pool_retries_total", "pool" => self.name.clone())
                        .increment(1);
                    last = Some(err);
                }
            }
        }
        Err(last.unwrap_or_else(|| PoolError::NoHealthyBackend {
            pool: self.name.clone(),
        }))
    }

    /// Counts one request towards the retry budget (its deposit): once per request, before
    /// its first attempt. [`Pool::send`] does it; a caller that moves the bytes itself
    /// (`lb::h1`) calls it, then [`Pool::pick`], [`Pool::answered`] or [`Pool::unanswered`] per
    /// attempt, and [`Pool::may_retry`] before a retry that may cost a backend work.
    pub fn admit(&self) {
        if self.config.retry_budget.enabled {
            self.budget.deposit(clock::now_ms());
        }
    }

    /// The backends as they are now: one request works on this set, whatever membership does
    /// meanwhile (no reference count is taken).
    pub fn current(&self) -> arc_swap::Guard<Arc<Vec<Arc<Backend>>>> {
        self.backends.load()
    }

    /// The strategy's choice among the selectable backends not in `tried`, `None` when none is left.
    pub fn pick(&self, backends: &[Arc<Backend>], tried: &[usize]) -> Option<usize> {
        // On the stack for pools of up to 16 backends: no allocation per request.
        let candidates: SmallVec<[usize; 16]> = (0..backends.len())
            .filter(|i| !tried.contains(i) && backends[*i].is_selectable())
            .collect();
        (!candidates.is_empty()).then(|| self.selection.select(backends, &candidates))
    }

    /// Records that `backends[i]`, asked at `started_ns` on the [`clock`], answered now
    /// (`server_error` for a 5xx): latency, Peak-EWMA, outlier counts. Returns now (ns).
    pub fn answered(
        &self,
        backends: &[Arc<Backend>],
        i: usize,
        started_ns: u64,
        server_error: bool,
    ) -> u64 {
        let now = clock::now_ns();
        let streak = backends[i].record_answer(
            Duration::from_nanos(now.saturating_sub(started_ns)),
            server_error,
            now,
        );
        if server_error {
            self.outliers
                .on_failure(backends, i, streak, now / 1_000_000);
        }
        now
    }

    /// Records that `backend` gave no answer (unreachable, connection broken, no answer in time):
    /// it leaves selection until its health checks pass again.
    pub fn unanswered(&self, backend: &Backend) {
        backend.record_error();
        backend.mark_down();
    }

    /// Whether a backend not yet tried for this request may take it.
    pub fn has_untried(&self, backends: &[Arc<Backend>], tried: &[usize]) -> bool {
        (0..backends.len()).any(|j| !tried.contains(&j) && backends[j].is_selectable())
    }

    /// Whether the retry budget allows one more retry now (counted if so).
    pub fn may_retry(&self, now_ms: u64) -> bool {
        if self.budget.try_withdraw(now_ms) {
            return true;
        }
        tracing::debug!(pool = %self.name, "retry refused: the retry budget is spent");
        metrics::counter!("scalelab_pool_retries_refused_total", "pool" => self.name.clone())
            .increment(1);
        false
    }
}

/// What is needed to send an idempotent, bodiless request again.
#[derive(Debug)]
struct Replay {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Replay {
    fn of(req: &Request<Body>) -> Option<Self> {
        let idempotent = matches!(
            *req.method(),
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        );
        let empty = req.body().size_hint().exact() == Some(0);
        (idempotent && empty).then(|| Self {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
        })
    }

    fn build(&self) -> Request<Body> {
        let mut r = Request::new(Body::empty());
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.version_mut() = self.version;
        *r.headers_mut() = self.headers.clone();
        r
    }
}

/// A backend's response body that holds the backend's in-flight count until it ends or is dropped.
struct Guarded {
    inner: Incoming,
    /// The connection the response came on, given back once the body has ended.
    conn: crate::conn::Lent,
    _guard: InFlight,
}

impl HttpBody for Guarded {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        match &frame {
            Poll::Ready(None) => this.conn.give_back(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.conn.give_back(),
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_reports_every_unusable_setting_with_its_path() {
        assert_eq!(PoolConfig::default().validate(), Vec::<String>::new());
        let mut bad = PoolConfig {
            max_attempts: 0,
            connect_timeout_ms: 0,
            ..PoolConfig::default()
        };
        bad.health.fall = 0;
        bad.health.path = "health".into();
        assert_eq!(
            bad.validate(),
            vec![
                "connect_timeout_ms: must be at least 1",
                "max_attempts: must be at least 1",
                "health.fall: must be at least 1",
                "health.path: \"health\" must start with /",
            ]
        );
    }
}
