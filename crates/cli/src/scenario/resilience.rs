//! `resilience`: what the fuses buy, in three parts.
//!
//! 1. Latency-aware selection: a balancer over two backends, one answering in 50 ms and one at
//!    once, under 32 connections, with each strategy (round robin, least connections, power of
//!    two choices, Peak-EWMA): requests per second and the slow backend's share (tower's demo).
//! 2. The retry budget: three backends each failing half of their requests, retried on a 5xx up
//!    to three attempts, without and with the budget: how many attempts the backends saw per
//!    client request, and what the clients saw.
//! 3. Fuses on and off in the whole system: one service made slow and failing through its knobs,
//!    then every service failing: p99 and error rate of `/process` with the breaker, outlier
//!    ejection and retry budget on (`demo` profile) and Peak-EWMA over the services, and off
//!    (round robin, nothing else).
//!
//! Parts 1 and 2 run the balancer and the services in this process on free ports (the balancer
//! talks HTTP to them as to any backend); part 3 starts the topology through the supervisor.

use anyhow::Context;
use balance::{BreakerConfig, OutlierConfig, PoolConfig, Profile, RetryBudgetConfig, Strategy};
use bench::experiment::{Chart, ScoreRow, Section, Table};
use bench::{Plan, Report, RunConfig};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use super::cluster::Cluster;
use super::{Ctx, base_topology, client_errors, ms, say};

/// Connections of every run (the issue's `wrk -c32`).
const CONNECTIONS: usize = 32;
/// The slow backend's wait in part 1, ms.
const SLOW_MS: u64 = 50;
/// Part 3: the sick service's wait (ms) and share of failures.
const SICK_MS: u64 = 300;
const SICK_FAILURES: f64 = 0.5;

/// One strategy's run in part 1.
#[derive(Debug, Clone, Serialize)]
pub(super) struct SelectionRun {
    pub(super) strategy: String,
    pub(super) requests: u64,
    pub(super) rps: f64,
    pub(super) p99_ms: f64,
    /// Percent of the answers that came from the slow backend.
    pub(super) slow_share: f64,
}

/// One run of part 2.
#[derive(Debug, Clone, Serialize)]
pub(super) struct BudgetRun {
    pub(super) budget: bool,
    /// Requests the clients sent.
    pub(super) requests: u64,
    /// Requests the backends received (first attempts and retries).
    pub(super) attempts: u64,
    /// `attempts / requests`: the load the retries multiplied.
    pub(super) amplification: f64,
    pub(super) retries_granted: u64,
    pub(super) retries_refused: u64,
    /// Percent of client requests that got an error.
    pub(super) error_rate: f64,
}

/// One run of part 3.
#[derive(Debug, Clone, Serialize)]
pub(super) struct FuseRun {
    pub(super) fuses: bool,
    /// `one sick service` or `every service failing`.
    pub(super) phase: String,
    pub(super) requests: u64,
    pub(super) rps: f64,
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
    /// Percent of client requests that got an error.
    pub(super) error_rate: f64,
    /// Answers by status.
    pub(super) statuses: Vec<(String, u64)>,
}

/// The figures of the `resilience` scenario.
#[derive(Debug, Clone, Serialize)]
pub(super) struct ResilienceResult {
    pub(super) selection: Vec<SelectionRun>,
    pub(super) budget: Vec<BudgetRun>,
    pub(super) fuses: Vec<FuseRun>,
}

pub(super) async fn run(ctx: &Ctx) -> anyhow::Result<(ResilienceResult, Section)> {
    let selection = selection(ctx).await.context("latency-aware selection")?;
    let budget = budget(ctx).await.context("retry budget")?;
    let mut fuses = Vec::new();
    for on in [false, true] {
        fuses.extend(system(ctx, on).await.context("fuses in the system")?);
    }
    let result = ResilienceResult {
        selection,
        budget,
        fuses,
    };
    let section = section(ctx, &result);
    Ok((result, section))
}

/// A server running in this process until dropped (or stopped).
struct Local {
    url: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Local {
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A `service` instance named `id` in this process: a wait of `work_ms`, no CPU work, failing
/// `failure_rate` of its requests.
async fn local_service(id: &str, work_ms: u64, failure_rate: f64) -> anyhow::Result<Local> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let config = service::Config {
        work_ms,
        cpu_iterations: 0,
        max_concurrency: 10_000,
        failure_rate,
        ..service::Config::default()
    };
    let instance = common::Instance::new("service", id);
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let stopped = async move {
            let _ = rx.await;
        };
        if let Err(e) = service::serve(listener, config, instance, stopped).await {
            tracing::error!(error = %e, "scenario service failed");
        }
    });
    Ok(Local {
        url,
        stop: Some(tx),
        task,
    })
}

/// A balancer in this process over `backends`.
async fn local_lb(backends: &[&Local], pool: PoolConfig) -> anyhow::Result<Local> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let config = lb::Config {
        backends: backends.iter().map(|b| b.url.clone()).collect(),
        pool,
        ..lb::Config::default()
    };
    let instance = common::Instance::new("lb", "lb-scenario");
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let stopped = async move {
            let _ = rx.await;
        };
        if let Err(e) = lb::serve(listener, config, instance, stopped).await {
            tracing::error!(error = %e, "scenario balancer failed");
        }
    });
    Ok(Local {
        url,
        stop: Some(tx),
        task,
    })
}

fn closed(ctx: &Ctx) -> RunConfig {
    RunConfig {
        connections: CONNECTIONS,
        duration: Some(ctx.settings.run),
        ..RunConfig::default()
    }
}

/// Percent of `part` in `whole`.
fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

fn error_rate(r: &Report) -> f64 {
    percent(client_errors(r), r.requests.total)
}

/// Part 1: each strategy over a slow and a fast backend.
async fn selection(ctx: &Ctx) -> anyhow::Result<Vec<SelectionRun>> {
    let slow = local_service("slow", SLOW_MS, 0.0).await?;
    let fast = local_service("fast", 0, 0.0).await?;
    let mut runs = Vec::new();
    for strategy in [
        Strategy::RoundRobin,
        Strategy::LeastConnections,
        Strategy::PowerOfTwoChoices,
        Strategy::PeakEwma,
    ] {
        if ctx.stopped() {
            anyhow::bail!("stopped by Ctrl-C");
        }
        let pool = PoolConfig {
            strategy,
            // Selection alone: latency ejection would take the slow backend out by itself.
            outlier: OutlierConfig {
                enabled: false,
                ..OutlierConfig::default()
            },
            ..PoolConfig::default()
        };
        let lb = local_lb(&[&slow, &fast], pool).await?;
        let name = strategy.build().name();
        say(format!(
            "resilience: {:.1}s through a balancer ({name}) over a {SLOW_MS} ms and an instant backend",
            ctx.settings.run.as_secs_f64()
        ));
        let report = ctx
            .measure(Plan::get(&format!("{}/process", lb.url))?, closed(ctx))
            .await?;
        lb.stop().await;
        let by_slow = report
            .instances
            .iter()
            .filter(|s| s.id == "slow")
            .map(|s| s.count)
            .sum();
        runs.push(SelectionRun {
            strategy: name.to_string(),
            requests: report.requests.total,
            rps: report.rps,
            p99_ms: report.latency.p99_ms,
            slow_share: percent(by_slow, report.requests.answered),
        });
    }
    slow.stop().await;
    fast.stop().await;
    Ok(runs)
}

/// Part 2: three backends failing half their requests, 5xx retried, without and with a budget.
async fn budget(ctx: &Ctx) -> anyhow::Result<Vec<BudgetRun>> {
    let mut runs = Vec::new();
    for on in [false, true] {
        let backends = [
            local_service("sick-1", 1, 0.5).await?,
            local_service("sick-2", 1, 0.5).await?,
            local_service("sick-3", 1, 0.5).await?,
        ];
        let pool = PoolConfig {
            retry_server_errors: true,
            max_attempts: 3,
            retry_budget: RetryBudgetConfig {
                enabled: on,
                ..RetryBudgetConfig::default()
            },
            // Every backend is equally sick: ejection is not what is measured.
            outlier: OutlierConfig {
                enabled: false,
                ..OutlierConfig::default()
            },
            ..PoolConfig::default()
        };
        let refs: Vec<&Local> = backends.iter().collect();
        let lb = local_lb(&refs, pool).await?;
        say(format!(
            "resilience: {:.1}s of 5xx retries over 3 backends failing 50%, budget {}",
            ctx.settings.run.as_secs_f64(),
            if on { "on" } else { "off" }
        ));
        let report = ctx
            .measure(Plan::get(&format!("{}/process", lb.url))?, closed(ctx))
            .await?;
        let stats: Value = reqwest::Client::builder()
            .no_proxy()
            .build()?
            .get(format!("{}/_lb/stats", lb.url))
            .send()
            .await?
            .json()
            .await?;
        lb.stop().await;
        for b in backends {
            b.stop().await;
        }
        let attempts = stats["requests"].as_u64().unwrap_or(0);
        runs.push(BudgetRun {
            budget: on,
            requests: report.requests.total,
            attempts,
            amplification: attempts as f64 / report.requests.total.max(1) as f64,
            retries_granted: stats["retries"]["granted"].as_u64().unwrap_or(0),
            retries_refused: stats["retries"]["refused"].as_u64().unwrap_or(0),
            error_rate: error_rate(&report),
        });
    }
    Ok(runs)
}

/// Part 3 with the fuses `on` or off: one sick service, then every service failing.
async fn system(ctx: &Ctx, on: bool) -> anyhow::Result<Vec<FuseRun>> {
    let mut topo = base_topology()?;
    topo.service.work_ms = 5;
    topo.service.cpu_iterations = 2000;
    topo.service.max_concurrency = 16;
    if on {
        topo.gateway.breaker = BreakerConfig::of(Profile::Demo);
        // Latency-aware selection belongs with the fuses: the slow instance gets little even
        // between its ejections.
        topo.gateway.services.strategy = Strategy::PeakEwma;
        topo.gateway.services.outlier = OutlierConfig::of(Profile::Demo);
        topo.lb.pool.outlier = OutlierConfig::of(Profile::Demo);
    } else {
        topo.gateway.breaker.enabled = false;
        topo.gateway.services.outlier.enabled = false;
        topo.gateway.services.retry_budget.enabled = false;
        topo.lb.pool.outlier.enabled = false;
        topo.lb.pool.retry_budget.enabled = false;
    }
    let label = if on { "on" } else { "off" };
    say(format!(
        "resilience: starting lb, 2 gateways, 3 services with the fuses {label}"
    ));
    let cluster = Cluster::start(&format!("resilience-{label}"), topo).await?;
    let runs = measure_system(ctx, &cluster, on).await;
    let stopped = cluster.stop().await;
    let runs = runs?;
    stopped?;
    Ok(runs)
}

async fn measure_system(ctx: &Ctx, cluster: &Cluster, on: bool) -> anyhow::Result<Vec<FuseRun>> {
    let token = cluster.admin_token().await?;
    let plan = Plan::get(&format!("{}/process", cluster.entry()))?.bearer(&token)?;
    let http = reqwest::Client::builder().no_proxy().build()?;
    let services = cluster.urls("service");
    let knobs = |urls: Vec<String>, change: Value| {
        let http = http.clone();
        async move {
            for url in urls {
                http.put(format!("{url}/knobs"))
                    .json(&change)
                    .send()
                    .await?
                    .error_for_status()
                    .with_context(|| format!("PUT {url}/knobs"))?;
            }
            anyhow::Ok(())
        }
    };
    let mut runs = Vec::new();
    let phases = [
        (
            "one sick service",
            services.iter().take(1).cloned().collect::<Vec<_>>(),
            json!({"work_ms": SICK_MS, "failure_rate": SICK_FAILURES}),
        ),
        (
            "every service failing",
            services.clone(),
            json!({"work_ms": 100, "failure_rate": 1.0}),
        ),
    ];
    for (phase, urls, change) in phases {
        knobs(urls, change).await?;
        say(format!(
            "resilience: {:.1}s of /process, {phase}, fuses {}",
            ctx.settings.run.as_secs_f64(),
            if on { "on" } else { "off" }
        ));
        let report = ctx.measure(plan.clone(), closed(ctx)).await?;
        runs.push(FuseRun {
            fuses: on,
            phase: phase.to_string(),
            requests: report.requests.total,
            rps: report.rps,
            p50_ms: report.latency.p50_ms,
            p99_ms: report.latency.p99_ms,
            error_rate: error_rate(&report),
            statuses: report
                .status_codes
                .iter()
                .map(|(c, n)| (c.clone(), *n))
                .collect(),
        });
    }
    Ok(runs)
}

fn find<'a>(r: &'a ResilienceResult, on: bool, phase: &str) -> Option<&'a FuseRun> {
    r.fuses.iter().find(|f| f.fuses == on && f.phase == phase)
}

fn section(ctx: &Ctx, r: &ResilienceResult) -> Section {
    let mut table = Table::new(&[
        "part", "variant", "req/s", "p50 ms", "p99 ms", "errors", "detail",
    ]);
    for s in &r.selection {
        table.row([
            "selection".to_owned(),
            s.strategy.clone(),
            format!("{:.0}", s.rps),
            "".to_owned(),
            ms(s.p99_ms),
            "0%".to_owned(),
            format!("{:.1}% to the slow backend", s.slow_share),
        ]);
    }
    for b in &r.budget {
        table.row([
            "retry budget".to_owned(),
            if b.budget {
                "budget 20% + 10/s"
            } else {
                "no budget"
            }
            .to_owned(),
            "".to_owned(),
            "".to_owned(),
            "".to_owned(),
            format!("{:.1}%", b.error_rate),
            format!(
                "{:.2} attempts per request ({} retries, {} refused)",
                b.amplification, b.retries_granted, b.retries_refused
            ),
        ]);
    }
    for f in &r.fuses {
        table.row([
            format!("system: {}", f.phase),
            if f.fuses { "fuses on" } else { "fuses off" }.to_owned(),
            format!("{:.0}", f.rps),
            ms(f.p50_ms),
            ms(f.p99_ms),
            format!("{:.1}%", f.error_rate),
            f.statuses
                .iter()
                .map(|(c, n)| format!("{c}: {n}"))
                .collect::<Vec<_>>()
                .join(", "),
        ]);
    }
    let mut findings = Vec::new();
    let rps = |name: &str| r.selection.iter().find(|s| s.strategy == name);
    if let (Some(rr), Some(p2c), Some(ewma)) = (
        rps("round_robin"),
        rps("power_of_two_choices"),
        rps("peak_ewma"),
    ) {
        findings.push(format!(
            "Over a {SLOW_MS} ms and an instant backend: round robin {:.0} req/s ({:.0}% slow), \
             P2C (two distinct draws) {:.0} req/s ({:.1}% slow), Peak-EWMA {:.0} req/s ({:.1}% slow).",
            rr.rps, rr.slow_share, p2c.rps, p2c.slow_share, ewma.rps, ewma.slow_share
        ));
    }
    if let [off, on] = r.budget.as_slice() {
        findings.push(format!(
            "Three backends failing 50%, 5xx retried up to 3 attempts: the backends saw {:.2} \
             attempts per request without a budget and {:.2} with it ({:.1}% vs {:.1}% errors: \
             the budget trades errors for load).",
            off.amplification, on.amplification, off.error_rate, on.error_rate
        ));
    }
    for phase in ["one sick service", "every service failing"] {
        if let (Some(off), Some(on)) = (find(r, false, phase), find(r, true, phase)) {
            findings.push(format!(
                "{phase}: p50 {} / p99 {} ms and {:.1}% errors with the fuses off, p50 {} / p99 \
                 {} ms and {:.1}% with them on ({:.0} vs {:.0} req/s).",
                ms(off.p50_ms),
                ms(off.p99_ms),
                off.error_rate,
                ms(on.p50_ms),
                ms(on.p99_ms),
                on.error_rate,
                off.rps,
                on.rps
            ));
        }
    }
    Section {
        title: "Resilience: fuses and latency-aware selection".into(),
        setup: format!(
            "Closed model, {CONNECTIONS} connections, {:.1}s per run. Selection: a balancer \
             in this process over two services, one waiting {SLOW_MS} ms and one not. Retry \
             budget: three services failing 50%, 5xx retried (max 3 attempts), budget off/on. \
             System: lb, 2 gateways, 3 services; service-1 made slow ({SICK_MS} ms) and failing \
             ({:.0}%) through PUT /knobs, then every service failing; fuses on (breaker, outlier \
             ejection, retry budget: demo profile; Peak-EWMA over the services) or off (round \
             robin, nothing else).",
            ctx.settings.run.as_secs_f64(),
            SICK_FAILURES * 100.0
        ),
        table,
        findings,
        charts: charts(r),
        command: ctx.command("resilience"),
    }
}

fn charts(r: &ResilienceResult) -> Vec<Chart> {
    let selection = Chart::Bars {
        title: format!("Requests per second over a {SLOW_MS} ms and an instant backend"),
        y_desc: "req/s".into(),
        categories: r.selection.iter().map(|s| s.strategy.clone()).collect(),
        groups: vec![("req/s".into(), r.selection.iter().map(|s| s.rps).collect())],
    };
    let phases = ["one sick service", "every service failing"];
    let p99 = |on: bool| {
        phases
            .iter()
            .map(|p| find(r, on, p).map_or(0.0, |f| f.p99_ms))
            .collect::<Vec<_>>()
    };
    let fuses = Chart::Bars {
        title: "/process p99 with the fuses off and on".into(),
        y_desc: "ms".into(),
        categories: phases.iter().map(|p| p.to_string()).collect(),
        groups: vec![
            ("fuses off".into(), p99(false)),
            ("fuses on".into(), p99(true)),
        ],
    };
    vec![selection, fuses]
}

impl ResilienceResult {
    pub(super) fn score_row(&self, command: String) -> ScoreRow {
        let sick = (
            find(self, false, "one sick service"),
            find(self, true, "one sick service"),
        );
        let ewma = self.selection.iter().find(|s| s.strategy == "peak_ewma");
        let rr = self.selection.iter().find(|s| s.strategy == "round_robin");
        let mut gain = String::new();
        if let (Some(off), Some(on)) = sick {
            gain.push_str(&format!(
                "one sick service: p99 {} -> {} ms, errors {:.1}% -> {:.1}% with the fuses",
                ms(off.p99_ms),
                ms(on.p99_ms),
                off.error_rate,
                on.error_rate
            ));
        }
        if let (Some(rr), Some(ewma)) = (rr, ewma) {
            gain.push_str(&format!(
                "; Peak-EWMA {:.0} vs round robin {:.0} req/s over a slow backend",
                ewma.rps, rr.rps
            ));
        }
        ScoreRow {
            tactic: "resilience (fuses)".into(),
            gain,
            chart: charts(self).pop(),
            command,
        }
    }
}
