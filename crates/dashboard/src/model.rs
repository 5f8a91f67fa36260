//! From two scrapes of every instance to one [`Frame`]: rates are differences of counters over the
//! time between the scrapes, percentiles come from the histogram buckets observed in between (as
//! Prometheus's `rate` and `histogram_quantile` would give them), gauges are read as they are.
//! Everything here is arithmetic on parsed pages: no I/O, so it is tested with pages written out.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::discover::Target;
use crate::prom::{self, Buckets, Sample};

/// Routes the dashboard and the supervisor call themselves: not traffic.
const PROBES: [&str; 4] = ["/metrics", "/health", "/ready", "/cache/stats"];

/// What one scrape of one instance gave, reduced to what the frame needs. Counters are totals
/// since the instance started; gauges are values now.
#[derive(Debug, Clone, Default)]
pub(crate) struct Counters {
    requests: f64,
    /// Answers by status class: index 1 = 1xx ... 5 = 5xx.
    by_class: [f64; 6],
    /// `429` answers (a kind of 4xx worth its own column).
    limited: f64,
    latency: Buckets,
    in_flight: f64,
    /// lb: answers per backend URL, and refusals at the edge per reason.
    backends: BTreeMap<String, f64>,
    refused: BTreeMap<String, f64>,
    /// gateway: cache-aside outcomes and their latency; rate-limit refusals.
    hits: f64,
    misses: f64,
    hit_latency: Buckets,
    miss_latency: Buckets,
    rate_limited: f64,
    /// worker: finished tasks by outcome, their wait, the queue as it reads it, busy and slots.
    tasks: BTreeMap<String, f64>,
    task_wait: Buckets,
    queue_depth: BTreeMap<String, f64>,
    queue_tasks: BTreeMap<String, f64>,
    oldest_wait_secs: Option<f64>,
    busy: f64,
    slots: Option<f64>,
    /// cache service: from `GET /cache/stats`.
    entries: Option<f64>,
    evictions: Option<f64>,
    /// gateway: each peer's circuit breaker (`scalelab_breaker_state`: 0 closed, 1 half-open,
    /// 2 open).
    breakers: BTreeMap<String, f64>,
    /// lb and gateway: which backends (by URL) their pools have ejected as outliers now.
    ejected: BTreeMap<String, f64>,
}

/// Reads a role's page into counters.
pub(crate) fn counters(role: &str, samples: &[Sample], cache: Option<&CacheStats>) -> Counters {
    let mut c = Counters::default();
    let traffic = |s: &Sample| !s.label("route").is_some_and(|r| PROBES.contains(&r));
    if role == "lb" {
        for s in samples
            .iter()
            .filter(|s| s.name == "scalelab_lb_requests_total")
        {
            c.requests += s.value;
            count_status(&mut c, s);
            if let Some(b) = s.label("backend") {
                *c.backends.entry(b.to_string()).or_default() += s.value;
            }
        }
        c.latency = prom::buckets(samples, "scalelab_lb_request_duration_seconds", |_| true);
        c.in_flight = prom::sum(samples, "scalelab_lb_backend_in_flight", |_| true);
        for s in samples
            .iter()
            .filter(|s| s.name == "scalelab_lb_refused_total")
        {
            let reason = s.label("reason").unwrap_or("other").to_string();
            *c.refused.entry(reason).or_default() += s.value;
        }
    } else {
        for s in samples
            .iter()
            .filter(|s| s.name == "scalelab_http_requests_total" && traffic(s))
        {
            c.requests += s.value;
            count_status(&mut c, s);
        }
        c.latency = prom::buckets(samples, "scalelab_http_request_duration_seconds", traffic);
        c.in_flight = prom::sum(samples, "scalelab_http_in_flight", |_| true);
    }
    let outcome = |o: &'static str| move |s: &Sample| s.label("outcome") == Some(o);
    c.hits = prom::sum(samples, "scalelab_gateway_cache_total", outcome("hit"));
    c.misses = prom::sum(samples, "scalelab_gateway_cache_total", outcome("miss"));
    c.hit_latency = prom::buckets(samples, "scalelab_gateway_data_seconds", outcome("hit"));
    c.miss_latency = prom::buckets(samples, "scalelab_gateway_data_seconds", outcome("miss"));
    c.rate_limited = prom::sum(samples, "scalelab_gateway_rate_limited_total", |_| true);
    for s in samples.iter() {
        let key = |l: &str| s.label(l).unwrap_or("").to_string();
        match s.name.as_str() {
            "scalelab_tasks_total" => *c.tasks.entry(key("outcome")).or_default() += s.value,
            "scalelab_queue_depth" => *c.queue_depth.entry(key("priority")).or_default() += s.value,
            "scalelab_queue_tasks" => *c.queue_tasks.entry(key("status")).or_default() += s.value,
            "scalelab_queue_oldest_wait_seconds" => c.oldest_wait_secs = Some(s.value),
            "scalelab_worker_in_flight" => c.busy += s.value,
            "scalelab_worker_slots" => *c.slots.get_or_insert(0.0) += s.value,
            _ => {}
        }
    }
    c.task_wait = prom::buckets(samples, "scalelab_task_wait_seconds", |_| true);
    for s in samples {
        match s.name.as_str() {
            "scalelab_breaker_state" => {
                if let Some(peer) = s.label("peer") {
                    c.breakers.insert(peer.to_string(), s.value);
                }
            }
            "scalelab_pool_backend_ejected" => {
                if let Some(url) = s.label("backend") {
                    let e = c.ejected.entry(url.to_string()).or_default();
                    *e = e.max(s.value);
                }
            }
            _ => {}
        }
    }
    if let Some(stats) = cache {
        c.entries = Some(stats.entries as f64);
        c.evictions = Some(stats.evictions as f64);
    }
    c
}

fn count_status(c: &mut Counters, s: &Sample) {
    let Some(status) = s.label("status").and_then(|v| v.parse::<u16>().ok()) else {
        return;
    };
    let class = usize::from(status / 100).min(5);
    c.by_class[class] += s.value;
    if status == 429 {
        c.limited += s.value;
    }
}

/// The cache service's own counts (`GET /cache/stats`).
pub(crate) type CacheStats = api::wire::cache::CacheStats;

/// One instance's scrape: its counters, whether it answered, when.
#[derive(Debug, Clone)]
pub(crate) struct Reading {
    pub(crate) target: Target,
    /// `None` when healthy; why not otherwise.
    pub(crate) down: Option<String>,
    pub(crate) counters: Option<Counters>,
    /// Seconds on the dashboard's clock.
    pub(crate) at: f64,
}

/// One instance in a frame.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct InstanceView {
    pub(crate) id: String,
    pub(crate) role: String,
    pub(crate) url: String,
    /// The supervisor's state (`starting`, `active`, `draining`, `stopping`).
    pub(crate) state: String,
    /// `up` (its health check answered 200) or `down`.
    pub(crate) health: &'static str,
    /// Why it is down.
    pub(crate) why: Option<String>,
    pub(crate) uptime_secs: Option<f64>,
    pub(crate) restarts: Option<u64>,
    /// Restarted by the supervisor within the last few seconds (it died between two scrapes, or
    /// was seen down): shown like a down instance for a moment, so that a crash is visible even
    /// when the restart was quicker than a scrape.
    pub(crate) restarting: bool,
    pub(crate) rps: f64,
    pub(crate) in_flight: f64,
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p95_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
    /// 4xx and 5xx answers per second, 429s among the 4xx also on their own.
    pub(crate) client_errors_per_s: f64,
    pub(crate) server_errors_per_s: f64,
    pub(crate) limited_per_s: f64,
    /// Its part of its role's requests (0..1).
    pub(crate) share: f64,
    /// Workers: tasks running now and slots.
    pub(crate) busy: Option<f64>,
    pub(crate) slots: Option<f64>,
    /// Ejected as an outlier by a pool in front of it (the balancer's, a gateway's): it answers
    /// its health checks but fails or is slow, and gets no traffic for a while.
    pub(crate) ejected: bool,
    /// Gateways: the peers whose circuit breaker is not closed, as `peer` (open) or
    /// `peer (half-open)`.
    pub(crate) breakers: Vec<String>,
}

/// One role, all instances together.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct RoleView {
    pub(crate) role: String,
    pub(crate) instances: usize,
    pub(crate) up: usize,
    pub(crate) rps: f64,
    pub(crate) in_flight: f64,
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
    pub(crate) errors_per_s: f64,
}

/// Traffic from one place to another: `from` is an instance id or a role (`gateway` for the
/// gateways together, `queue` for the task queue).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Edge {
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) rps: f64,
    /// Its part of what `to`'s role receives (0..1).
    pub(crate) share: f64,
}

/// Cache-aside as the gateways see it, and the shared cache's size.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub(crate) struct CacheView {
    pub(crate) hits_per_s: f64,
    pub(crate) misses_per_s: f64,
    /// Over this frame's interval; `None` without lookups.
    pub(crate) hit_ratio: Option<f64>,
    /// Since the gateways started.
    pub(crate) hit_ratio_total: Option<f64>,
    pub(crate) hit_p50_ms: Option<f64>,
    pub(crate) hit_p99_ms: Option<f64>,
    pub(crate) miss_p50_ms: Option<f64>,
    pub(crate) miss_p99_ms: Option<f64>,
    /// The cache service's entries and evictions (absent with a local or Redis cache).
    pub(crate) entries: Option<f64>,
    pub(crate) evictions: Option<f64>,
    pub(crate) evictions_per_s: Option<f64>,
}

/// Rate limiting: admitted against refused, per second.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub(crate) struct LimitView {
    /// Requests the balancers forwarded.
    pub(crate) admitted_per_s: f64,
    /// Refused at the balancers' edge, by reason (`rate_limit`, `acl`).
    pub(crate) edge_refused_per_s: BTreeMap<String, f64>,
    /// Refused by the gateways' per-user limit.
    pub(crate) gateway_refused_per_s: f64,
}

/// The task queue and its workers.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub(crate) struct QueueView {
    /// Waiting tasks by priority (`high`, `normal`, `low`).
    pub(crate) depth: BTreeMap<String, f64>,
    /// Tasks by status (`running`, `succeeded`, `dead`, ...).
    pub(crate) by_status: BTreeMap<String, f64>,
    /// Finished attempts per second by outcome (`succeeded`, `failed`, `dead`, ...).
    pub(crate) outcomes_per_s: BTreeMap<String, f64>,
    pub(crate) oldest_wait_secs: Option<f64>,
    pub(crate) wait_p50_ms: Option<f64>,
    pub(crate) wait_p99_ms: Option<f64>,
    pub(crate) busy: f64,
    pub(crate) slots: Option<f64>,
}

/// A point of the time series: per role req/s, p99, errors/s and instances.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Point {
    pub(crate) at_ms: u64,
    pub(crate) roles: BTreeMap<String, PointRole>,
}

/// One role in a [`Point`].
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct PointRole {
    pub(crate) rps: f64,
    pub(crate) p99_ms: Option<f64>,
    pub(crate) errors_per_s: f64,
    pub(crate) instances: usize,
}

/// Everything the page shows at one moment (the SSE stream's `frame` event).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Frame {
    pub(crate) seq: u64,
    pub(crate) at_ms: u64,
    /// Seconds between the two scrapes the rates come from.
    pub(crate) interval_secs: f64,
    pub(crate) instances: Vec<InstanceView>,
    pub(crate) roles: Vec<RoleView>,
    pub(crate) edges: Vec<Edge>,
    pub(crate) cache: CacheView,
    pub(crate) limits: LimitView,
    pub(crate) queue: QueueView,
    pub(crate) point: Point,
    /// Why the instance list could not be read this round, if it could not.
    pub(crate) discovery_error: Option<String>,
}

/// Per-second rate of a counter between two readings; a counter that went down (a restart)
/// counts from zero.
fn rate(now: f64, before: f64, dt: f64) -> f64 {
    if dt <= 0.0 {
        return 0.0;
    }
    let d = if now >= before { now - before } else { now };
    d / dt
}

fn ms(q: Option<f64>) -> Option<f64> {
    q.map(|s| (s * 1000.0 * 100.0).round() / 100.0)
}

fn add(into: &mut Buckets, from: &Buckets) {
    for (le, n) in from {
        match into.iter_mut().find(|(l, _)| l == le) {
            Some((_, m)) => *m += n,
            None => into.push((*le, *n)),
        }
    }
    into.sort_by(|a, b| a.0.total_cmp(&b.0));
}

/// Builds a frame from this round's readings and the previous round's counters (by instance id).
/// An instance seen for the first time has no rates yet (they need two scrapes).
pub(crate) fn frame(
    seq: u64,
    at_ms: u64,
    readings: &[Reading],
    previous: &BTreeMap<String, (Counters, f64)>,
) -> Frame {
    let empty = Counters::default();
    let mut instances = Vec::new();
    let mut role_latency: BTreeMap<String, Buckets> = BTreeMap::new();
    let mut role_errors: BTreeMap<String, f64> = BTreeMap::new();
    let mut cache = CacheView::default();
    let (mut hit_b, mut miss_b, mut wait_b) = (Buckets::new(), Buckets::new(), Buckets::new());
    let (mut hits_total, mut misses_total) = (0.0, 0.0);
    let mut limits = LimitView::default();
    let mut queue = QueueView::default();
    let mut backend_rates: BTreeMap<String, f64> = BTreeMap::new();
    let mut worker_rates: Vec<(String, f64)> = Vec::new();
    let mut interval: f64 = 0.0;
    // Every backend some pool has ejected now, whoever scraped it.
    let ejected: Vec<&str> = readings
        .iter()
        .filter_map(|r| r.counters.as_ref())
        .flat_map(|c| c.ejected.iter())
        .filter(|(_, v)| **v > 0.0)
        .map(|(url, _)| url.trim_end_matches('/'))
        .collect();
    for r in readings {
        let now = r.counters.as_ref();
        let before = previous.get(&r.target.id);
        let dt = before.map_or(0.0, |(_, at)| r.at - at);
        interval = interval.max(dt);
        let b = before.map_or(&empty, |(c, _)| c);
        let (rps, lat, client, server, limited) = match (now, before) {
            (Some(c), Some(_)) => (
                rate(c.requests, b.requests, dt),
                prom::delta(&c.latency, &b.latency),
                rate(c.by_class[4], b.by_class[4], dt),
                rate(c.by_class[5], b.by_class[5], dt),
                rate(c.limited, b.limited, dt),
            ),
            _ => (0.0, Buckets::new(), 0.0, 0.0, 0.0),
        };
        add(role_latency.entry(r.target.role.clone()).or_default(), &lat);
        *role_errors.entry(r.target.role.clone()).or_default() += client + server;
        if let (Some(c), Some(_)) = (now, before) {
            for (url, n) in &c.backends {
                let was = b.backends.get(url).copied().unwrap_or(0.0);
                *backend_rates.entry(url.clone()).or_default() += rate(*n, was, dt);
            }
            for (reason, n) in &c.refused {
                let was = b.refused.get(reason).copied().unwrap_or(0.0);
                *limits.edge_refused_per_s.entry(reason.clone()).or_default() += rate(*n, was, dt);
            }
            if r.target.role == "lb" {
                limits.admitted_per_s += rps;
            }
            limits.gateway_refused_per_s += rate(c.rate_limited, b.rate_limited, dt);
            cache.hits_per_s += rate(c.hits, b.hits, dt);
            cache.misses_per_s += rate(c.misses, b.misses, dt);
            add(&mut hit_b, &prom::delta(&c.hit_latency, &b.hit_latency));
            add(&mut miss_b, &prom::delta(&c.miss_latency, &b.miss_latency));
            add(&mut wait_b, &prom::delta(&c.task_wait, &b.task_wait));
            let mut done = 0.0;
            for (outcome, n) in &c.tasks {
                let was = b.tasks.get(outcome).copied().unwrap_or(0.0);
                let per_s = rate(*n, was, dt);
                done += per_s;
                *queue.outcomes_per_s.entry(outcome.clone()).or_default() += per_s;
            }
            if r.target.role == "worker" {
                worker_rates.push((r.target.id.clone(), done));
            }
            if let (Some(e), Some(was)) = (c.evictions, b.evictions) {
                *cache.evictions_per_s.get_or_insert(0.0) += rate(e, was, dt);
            }
        }
        if let Some(c) = now {
            hits_total += c.hits;
            misses_total += c.misses;
            if let Some(e) = c.entries {
                *cache.entries.get_or_insert(0.0) += e;
            }
            if let Some(e) = c.evictions {
                *cache.evictions.get_or_insert(0.0) += e;
            }
            if r.target.role == "worker" {
                // Every worker reads the same queue: the depth is the freshest reading, not a sum.
                for (p, n) in &c.queue_depth {
                    let d = queue.depth.entry(p.clone()).or_default();
                    *d = d.max(*n);
                }
                for (s, n) in &c.queue_tasks {
                    let d = queue.by_status.entry(s.clone()).or_default();
                    *d = d.max(*n);
                }
                if let Some(o) = c.oldest_wait_secs {
                    queue.oldest_wait_secs = Some(queue.oldest_wait_secs.map_or(o, |q| q.max(o)));
                }
                queue.busy += c.busy;
                if let Some(s) = c.slots {
                    *queue.slots.get_or_insert(0.0) += s;
                }
            }
        }
        instances.push(InstanceView {
            id: r.target.id.clone(),
            role: r.target.role.clone(),
            url: r.target.url.clone(),
            state: r.target.state.clone(),
            health: if r.down.is_none() { "up" } else { "down" },
            why: r.down.clone(),
            uptime_secs: r.target.uptime_secs,
            restarts: r.target.restarts,
            restarting: false,
            rps: round2(rps),
            in_flight: now.map_or(0.0, |c| c.in_flight.max(0.0)),
            p50_ms: ms(prom::quantile(&lat, 0.5)),
            p95_ms: ms(prom::quantile(&lat, 0.95)),
            p99_ms: ms(prom::quantile(&lat, 0.99)),
            client_errors_per_s: round2(client),
            server_errors_per_s: round2(server),
            limited_per_s: round2(limited),
            share: 0.0,
            busy: (r.target.role == "worker").then(|| now.map_or(0.0, |c| c.busy)),
            slots: now.and_then(|c| c.slots),
            ejected: ejected.contains(&r.target.url.trim_end_matches('/')),
            breakers: now.map_or_else(Vec::new, |c| {
                c.breakers
                    .iter()
                    .filter(|(_, v)| **v >= 1.0)
                    .map(|(peer, v)| {
                        if *v >= 2.0 {
                            peer.clone()
                        } else {
                            format!("{peer} (half-open)")
                        }
                    })
                    .collect()
            }),
        });
    }
    // Shares within each role.
    let mut role_rps: BTreeMap<String, f64> = BTreeMap::new();
    for i in &instances {
        *role_rps.entry(i.role.clone()).or_default() += i.rps;
    }
    for i in &mut instances {
        let total = role_rps[&i.role];
        i.share = if total > 0.0 {
            round3(i.rps / total)
        } else {
            0.0
        };
    }
    let mut roles = Vec::new();
    let mut point = Point {
        at_ms,
        roles: BTreeMap::new(),
    };
    for i in &instances {
        if roles.iter().any(|r: &RoleView| r.role == i.role) {
            continue;
        }
        let of_role: Vec<_> = instances.iter().filter(|j| j.role == i.role).collect();
        let lat = &role_latency[&i.role];
        let view = RoleView {
            role: i.role.clone(),
            instances: of_role.len(),
            up: of_role.iter().filter(|j| j.health == "up").count(),
            rps: round2(role_rps[&i.role]),
            in_flight: of_role.iter().map(|j| j.in_flight).sum(),
            p50_ms: ms(prom::quantile(lat, 0.5)),
            p99_ms: ms(prom::quantile(lat, 0.99)),
            errors_per_s: round2(role_errors[&i.role]),
        };
        point.roles.insert(
            view.role.clone(),
            PointRole {
                rps: view.rps,
                p99_ms: view.p99_ms,
                errors_per_s: view.errors_per_s,
                instances: view.instances,
            },
        );
        roles.push(view);
    }
    let edges = edges(&instances, &backend_rates, &worker_rates);
    let lookups = cache.hits_per_s + cache.misses_per_s;
    cache.hit_ratio = (lookups > 0.0).then(|| round3(cache.hits_per_s / lookups));
    let all = hits_total + misses_total;
    cache.hit_ratio_total = (all > 0.0).then(|| round3(hits_total / all));
    cache.hits_per_s = round2(cache.hits_per_s);
    cache.misses_per_s = round2(cache.misses_per_s);
    cache.hit_p50_ms = ms(prom::quantile(&hit_b, 0.5));
    cache.hit_p99_ms = ms(prom::quantile(&hit_b, 0.99));
    cache.miss_p50_ms = ms(prom::quantile(&miss_b, 0.5));
    cache.miss_p99_ms = ms(prom::quantile(&miss_b, 0.99));
    queue.wait_p50_ms = ms(prom::quantile(&wait_b, 0.5));
    queue.wait_p99_ms = ms(prom::quantile(&wait_b, 0.99));
    for v in queue.outcomes_per_s.values_mut() {
        *v = round2(*v);
    }
    limits.admitted_per_s = round2(limits.admitted_per_s);
    Frame {
        seq,
        at_ms,
        interval_secs: round3(interval),
        instances,
        roles,
        edges,
        cache,
        limits,
        queue,
        point,
        discovery_error: None,
    }
}

/// lb → each gateway from the balancers' per-backend counts; the gateways → every instance of the
/// roles behind them from what those instances served; the queue → each worker from the tasks it
/// finished.
fn edges(
    instances: &[InstanceView],
    backend_rates: &BTreeMap<String, f64>,
    worker_rates: &[(String, f64)],
) -> Vec<Edge> {
    let mut edges = Vec::new();
    let to_gateways: f64 = backend_rates.values().sum();
    for g in instances.iter().filter(|i| i.role == "gateway") {
        let rps = backend_rates.get(&g.url).copied().unwrap_or(0.0);
        edges.push(Edge {
            from: "lb".into(),
            to: g.id.clone(),
            rps: round2(rps),
            share: if to_gateways > 0.0 {
                round3(rps / to_gateways)
            } else {
                0.0
            },
        });
    }
    for i in instances
        .iter()
        .filter(|i| !matches!(i.role.as_str(), "lb" | "gateway" | "worker"))
    {
        edges.push(Edge {
            from: "gateway".into(),
            to: i.id.clone(),
            rps: i.rps,
            share: i.share,
        });
    }
    let tasks: f64 = worker_rates.iter().map(|(_, r)| r).sum();
    for (id, r) in worker_rates {
        edges.push(Edge {
            from: "queue".into(),
            to: id.clone(),
            rps: round2(*r),
            share: if tasks > 0.0 { round3(r / tasks) } else { 0.0 },
        });
    }
    edges
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(role: &str, id: &str, url: &str) -> Target {
        Target {
            id: id.into(),
            role: role.into(),
            url: url.into(),
            state: "active".into(),
            uptime_secs: None,
            restarts: None,
        }
    }

    fn gateway_page(data: u64, health: u64, errors: u64, hits: u64, misses: u64) -> String {
        format!(
            "scalelab_http_requests_total{{role=\"gateway\",id=\"g\",route=\"/data\",method=\"GET\",status=\"200\"}} {data}\n\
             scalelab_http_requests_total{{role=\"gateway\",id=\"g\",route=\"/health\",method=\"GET\",status=\"200\"}} {health}\n\
             scalelab_http_requests_total{{role=\"gateway\",id=\"g\",route=\"/data\",method=\"GET\",status=\"503\"}} {errors}\n\
             scalelab_http_request_duration_seconds_bucket{{role=\"gateway\",id=\"g\",route=\"/data\",method=\"GET\",le=\"0.001\"}} {data}\n\
             scalelab_http_request_duration_seconds_bucket{{role=\"gateway\",id=\"g\",route=\"/data\",method=\"GET\",le=\"+Inf\"}} {}\n\
             scalelab_http_request_duration_seconds_bucket{{role=\"gateway\",id=\"g\",route=\"/health\",method=\"GET\",le=\"0.001\"}} 0\n\
             scalelab_http_request_duration_seconds_bucket{{role=\"gateway\",id=\"g\",route=\"/health\",method=\"GET\",le=\"+Inf\"}} {health}\n\
             scalelab_gateway_cache_total{{outcome=\"hit\",id=\"g\"}} {hits}\n\
             scalelab_gateway_cache_total{{outcome=\"miss\",id=\"g\"}} {misses}\n",
            data + errors
        )
    }

    fn reading(t: Target, page: &str, at: f64) -> Reading {
        let role = t.role.clone();
        Reading {
            target: t,
            down: None,
            counters: Some(counters(&role, &prom::parse(page), None)),
            at,
        }
    }

    #[test]
    fn rates_come_from_two_scrapes_and_probes_are_not_traffic() {
        let g = target("gateway", "gateway-1", "http://127.0.0.1:5000");
        let first = reading(g.clone(), &gateway_page(100, 10, 0, 60, 40), 10.0);
        let f = frame(1, 0, std::slice::from_ref(&first), &BTreeMap::new());
        assert_eq!(f.instances[0].rps, 0.0, "one scrape gives no rate yet");
        let mut prev = BTreeMap::new();
        prev.insert(
            "gateway-1".to_string(),
            (first.counters.clone().unwrap(), 10.0),
        );
        // Two seconds later: 300 more /data (all fast), 20 more health checks, 10 errors, and 240
        // hits against 60 misses.
        let second = reading(g, &gateway_page(400, 30, 10, 300, 100), 12.0);
        let f = frame(2, 0, &[second], &prev);
        let i = &f.instances[0];
        assert_eq!(
            i.rps, 155.0,
            "(300 + 10) / 2 s; the health checks are not counted"
        );
        assert_eq!(i.server_errors_per_s, 5.0);
        // 310 observations (the 10 errors above 1 ms): rank 155 is 155/300 of the way through the
        // first bucket's 300.
        assert_eq!(i.p50_ms, Some(0.52));
        assert_eq!(f.cache.hits_per_s, 120.0);
        assert_eq!(f.cache.hit_ratio, Some(0.8));
        assert_eq!(f.cache.hit_ratio_total, Some(0.75));
        assert_eq!(f.roles[0].rps, 155.0);
        assert_eq!(f.point.roles["gateway"].errors_per_s, 5.0);
    }

    #[test]
    fn the_balancer_shares_traffic_between_gateways_as_edges() {
        let lb = target("lb", "lb-1", "http://127.0.0.1:8000");
        let g1 = target("gateway", "gateway-1", "http://127.0.0.1:5000");
        let g2 = target("gateway", "gateway-2", "http://127.0.0.1:5003");
        let page = |a: u64, b: u64, refused: u64| {
            format!(
                "scalelab_lb_requests_total{{backend=\"http://127.0.0.1:5000\",status=\"200\"}} {a}\n\
                 scalelab_lb_requests_total{{backend=\"http://127.0.0.1:5003\",status=\"200\"}} {b}\n\
                 scalelab_lb_refused_total{{reason=\"rate_limit\"}} {refused}\n"
            )
        };
        let first = reading(lb.clone(), &page(0, 0, 0), 0.0);
        let mut prev = BTreeMap::new();
        prev.insert("lb-1".to_string(), (first.counters.unwrap(), 0.0));
        let f = frame(
            2,
            0,
            &[
                reading(lb, &page(300, 100, 8), 1.0),
                reading(g1, "", 1.0),
                reading(g2, "", 1.0),
            ],
            &prev,
        );
        let to = |id: &str| f.edges.iter().find(|e| e.to == id).unwrap().clone();
        assert_eq!(to("gateway-1").share, 0.75);
        assert_eq!(to("gateway-2").rps, 100.0);
        assert_eq!(f.limits.admitted_per_s, 400.0);
        assert_eq!(f.limits.edge_refused_per_s["rate_limit"], 8.0);
    }

    #[test]
    fn the_queue_depth_is_read_once_not_summed_over_workers() {
        let page = "scalelab_queue_depth{priority=\"high\",id=\"w\"} 7\n\
                    scalelab_queue_depth{priority=\"low\",id=\"w\"} 2\n\
                    scalelab_worker_in_flight{id=\"w\"} 3\n\
                    scalelab_worker_slots{id=\"w\"} 4\n";
        let f = frame(
            1,
            0,
            &[
                reading(target("worker", "worker-1", "u1"), page, 0.0),
                reading(target("worker", "worker-2", "u2"), page, 0.0),
            ],
            &BTreeMap::new(),
        );
        assert_eq!(f.queue.depth["high"], 7.0);
        assert_eq!(f.queue.busy, 6.0);
        assert_eq!(f.queue.slots, Some(8.0));
        assert_eq!(f.instances[1].busy, Some(3.0));
    }

    #[test]
    fn an_ejected_backend_and_an_open_breaker_are_shown_on_their_instances() {
        // The balancer's pool ejected gateway-2; gateway-1's pool ejected service-2 and its
        // breaker for `db` is open, the one for `users` half-open.
        let lb = target("lb", "lb-1", "http://127.0.0.1:8000");
        let g1 = target("gateway", "gateway-1", "http://127.0.0.1:5000");
        let g2 = target("gateway", "gateway-2", "http://127.0.0.1:5003");
        let s2 = target("service", "service-2", "http://127.0.0.1:5006");
        let lb_page = "scalelab_pool_backend_ejected{pool=\"gateway\",backend=\"http://127.0.0.1:5003\"} 1\n\
                       scalelab_pool_backend_ejected{pool=\"gateway\",backend=\"http://127.0.0.1:5000\"} 0\n";
        let g1_page = "scalelab_pool_backend_ejected{pool=\"service\",backend=\"http://127.0.0.1:5006\"} 1\n\
                       scalelab_breaker_state{id=\"gateway-1\",peer=\"db\"} 2\n\
                       scalelab_breaker_state{id=\"gateway-1\",peer=\"users\"} 1\n\
                       scalelab_breaker_state{id=\"gateway-1\",peer=\"service\"} 0\n";
        let readings = [
            reading(lb, lb_page, 1.0),
            reading(g1, g1_page, 1.0),
            reading(g2, "", 1.0),
            reading(s2, "", 1.0),
        ];
        let f = frame(1, 0, &readings, &BTreeMap::new());
        let by_id = |id: &str| f.instances.iter().find(|i| i.id == id).unwrap();
        assert!(!by_id("lb-1").ejected && !by_id("gateway-1").ejected);
        assert!(by_id("gateway-2").ejected && by_id("service-2").ejected);
        assert_eq!(by_id("gateway-1").breakers, vec!["db", "users (half-open)"]);
        assert!(by_id("gateway-2").breakers.is_empty());
    }

    #[test]
    fn a_restarted_instance_counts_from_zero_not_negative() {
        assert_eq!(rate(5.0, 100.0, 1.0), 5.0);
        assert_eq!(rate(110.0, 100.0, 2.0), 5.0);
    }
}
