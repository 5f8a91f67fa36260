//! `scale`: `/process` throughput and p99 with 1, 2 and 3 service instances, each with bounded
//! concurrency, under a closed-model load with more connections than all instances can serve at
//! once (so that every instance is kept busy and the extra requests queue).

use bench::experiment::{Chart, ScoreRow, Section, Table};
use bench::{Plan, RunConfig};
use serde::Serialize;

use super::cluster::Cluster;
use super::score::{self, Spread};
use super::{Ctx, base_topology, client_errors, counts, ms, say};

/// Service instance counts measured.
const INSTANCES: [usize; 3] = [1, 2, 3];
/// Requests one service instance processes at once.
const MAX_CONCURRENCY: usize = 2;
/// Simulated wait per request, in ms: with `MAX_CONCURRENCY` it bounds one instance at
/// 2 / 20 ms = 100 requests per second.
const WORK_MS: u64 = 20;
/// A little real CPU work per request. Kept small on purpose: on a 2-core machine that also runs
/// the generator, the gateway and the other roles, CPU-bound work cannot scale past the cores,
/// and this scenario is about instances with bounded concurrency.
const CPU_ITERATIONS: u64 = 2000;
/// Connections: four times what three instances admit at once.
const CONNECTIONS: usize = 24;

/// One instance count's figures.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Step {
    pub(super) instances: usize,
    pub(super) requests: u64,
    pub(super) rps: f64,
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
    /// Failed requests plus non-2xx answers.
    pub(super) client_errors: u64,
    /// `/process` answers per service.
    pub(super) services: Spread,
}

/// The figures of the `scale` scenario.
#[derive(Debug, Clone, Serialize)]
pub(super) struct ScaleResult {
    pub(super) steps: Vec<Step>,
    /// Throughput with the most instances over throughput with one.
    pub(super) speedup: Option<f64>,
    /// `speedup / instances` (1.0 is linear).
    pub(super) efficiency: Option<f64>,
}

pub(super) async fn run(ctx: &Ctx) -> anyhow::Result<(ScaleResult, Section)> {
    let mut steps = Vec::new();
    for n in INSTANCES {
        if ctx.stopped() {
            anyhow::bail!("stopped by Ctrl-C");
        }
        say(format!(
            "scale: starting 1 gateway and {n} service instance(s)"
        ));
        let mut topo = base_topology()?;
        // The gateway balances over the services itself; the balancer would only add a hop.
        topo.instances.ports.remove("lb");
        topo.instances.ports.insert("gateway".into(), vec![0]);
        topo.instances.ports.insert("service".into(), vec![0; n]);
        topo.service.max_concurrency = MAX_CONCURRENCY;
        topo.service.work_ms = WORK_MS;
        topo.service.cpu_iterations = CPU_ITERATIONS;
        let cluster = Cluster::start(&format!("scale-{n}"), topo).await?;
        let step = measure(ctx, &cluster, n).await;
        let stopped = cluster.stop().await;
        steps.push(step?);
        stopped?;
    }
    let first = steps.first().map_or(0.0, |s| s.rps);
    let last = steps.last().map_or((0.0, 1), |s| (s.rps, s.instances));
    let result = ScaleResult {
        speedup: score::ratio(last.0, first),
        efficiency: score::efficiency(first, last.0, last.1),
        steps,
    };
    let section = section(ctx, &result);
    Ok((result, section))
}

async fn measure(ctx: &Ctx, cluster: &Cluster, n: usize) -> anyhow::Result<Step> {
    let token = cluster.admin_token().await?;
    let plan = Plan::get(&format!("{}/process", cluster.entry()))?
        .bearer(&token)?
        .count_field("service_id");
    // A short warm-up: connections, the gateway's pools and the services' first requests.
    let warm_up = RunConfig {
        connections: CONNECTIONS,
        duration: Some(ctx.settings.run.mul_f64(0.2)),
        ..RunConfig::default()
    };
    ctx.measure(plan.clone(), warm_up).await?;
    say(format!(
        "scale: {:.1}s of /process with {n} instance(s)",
        ctx.settings.run.as_secs_f64()
    ));
    let report = ctx
        .measure(
            plan,
            RunConfig {
                connections: CONNECTIONS,
                duration: Some(ctx.settings.run),
                ..RunConfig::default()
            },
        )
        .await?;
    Ok(Step {
        instances: n,
        requests: report.requests.total,
        rps: report.rps,
        p50_ms: report.latency.p50_ms,
        p99_ms: report.latency.p99_ms,
        client_errors: client_errors(&report),
        services: score::spread(&cluster.ids("service"), &counts(&report.field_counts)),
    })
}

fn throughput_chart(r: &ScaleResult) -> Chart {
    let one = r.steps.first().map_or(0.0, |s| s.rps);
    Chart::Lines {
        title: "/process throughput vs service instances".into(),
        x_desc: "service instances".into(),
        y_desc: "req/s".into(),
        // The measured line last, so that it is drawn over the reference when they coincide.
        series: vec![
            (
                "linear (n x one instance)".into(),
                r.steps
                    .iter()
                    .map(|s| (s.instances as f64, one * s.instances as f64))
                    .collect(),
            ),
            (
                "measured".into(),
                r.steps
                    .iter()
                    .map(|s| (s.instances as f64, s.rps))
                    .collect(),
            ),
        ],
    }
}

fn section(ctx: &Ctx, r: &ScaleResult) -> Section {
    let mut table = Table::new(&[
        "service instances",
        "requests",
        "req/s",
        "vs 1",
        "p50 ms",
        "p99 ms",
        "errors",
        "spread over services",
    ]);
    let one = r.steps.first().map_or(0.0, |s| s.rps);
    for s in &r.steps {
        table.row([
            s.instances.to_string(),
            s.requests.to_string(),
            format!("{:.0}", s.rps),
            score::ratio(s.rps, one).map_or("-".into(), score::times),
            ms(s.p50_ms),
            ms(s.p99_ms),
            s.client_errors.to_string(),
            s.services
                .shares
                .iter()
                .map(|s| format!("{:.0}%", s.percent))
                .collect::<Vec<_>>()
                .join(" / "),
        ]);
    }
    let mut findings = Vec::new();
    if let (Some(x), Some(e), Some(first), Some(last)) =
        (r.speedup, r.efficiency, r.steps.first(), r.steps.last())
    {
        findings.push(format!(
            "{} instances: {} the throughput of 1 ({:.0} vs {:.0} req/s, {} of linear); p99 {} ms \
             -> {} ms.",
            last.instances,
            score::times(x),
            last.rps,
            first.rps,
            score::pct(e),
            ms(first.p99_ms),
            ms(last.p99_ms)
        ));
    }
    let p99 = Chart::Lines {
        title: "/process p99 latency vs service instances".into(),
        x_desc: "service instances".into(),
        y_desc: "ms".into(),
        series: vec![
            (
                "p99".into(),
                r.steps
                    .iter()
                    .map(|s| (s.instances as f64, s.p99_ms))
                    .collect(),
            ),
            (
                "p50".into(),
                r.steps
                    .iter()
                    .map(|s| (s.instances as f64, s.p50_ms))
                    .collect(),
            ),
        ],
    };
    Section {
        title: "Scaling out".into(),
        setup: format!(
            "GET /process through one gateway (round robin over the services), closed model, \
             {CONNECTIONS} connections, {:.1}s per step after a short warm-up; each service \
             instance processes at most {MAX_CONCURRENCY} requests at once, each waiting \
             {WORK_MS} ms plus {CPU_ITERATIONS} hash rounds, so one instance tops out near \
             {} req/s. One fresh topology per instance count.",
            ctx.settings.run.as_secs_f64(),
            MAX_CONCURRENCY as u64 * 1000 / WORK_MS
        ),
        table,
        findings,
        charts: vec![throughput_chart(r), p99],
        command: ctx.command("scale"),
    }
}

impl ScaleResult {
    pub(super) fn score_row(&self, command: String) -> ScoreRow {
        let gain = match (self.speedup, self.steps.first(), self.steps.last()) {
            (Some(x), Some(first), Some(last)) => format!(
                "{} instances: {} throughput of 1 ({:.0} vs {:.0} req/s), p99 {} -> {} ms",
                last.instances,
                score::times(x),
                last.rps,
                first.rps,
                ms(first.p99_ms),
                ms(last.p99_ms)
            ),
            _ => "not measured".into(),
        };
        ScoreRow {
            tactic: "scaling out".into(),
            gain,
            chart: Some(throughput_chart(self)),
            command,
        }
    }
}
