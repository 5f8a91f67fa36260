//! `elastic`: an open-model load on `/process` that ramps to five times its base rate and back,
//! with tasks submitted on the same ramp, against a topology whose gateways and services
//! autoscale on requests in flight and whose workers autoscale on queue depth (the demo profile:
//! Kubernetes HPA's rules on a clock of seconds), and the same ramp with autoscaling off beside
//! it. Each step records the offered and served rate, p50/p99, errors, and the instances per role
//! at its end; the autoscaler's decisions come with their arithmetic; after the ramp, every
//! accepted task must have run (none lost).

use bench::experiment::{Chart, ScoreRow, Section, Table};
use bench::{Load, Plan, RunConfig};
use serde::Serialize;

use super::cluster::Cluster;
use super::{Ctx, base_topology, client_errors, ms, say};
use crate::topology::{AutoscaleProfile, AutoscaleSection};

/// Requests per second of the first and last steps.
const BASE_RATE: f64 = 40.0;
/// Each step's rate, in multiples of [`BASE_RATE`]: up ×5 and back.
const RAMP: [f64; 10] = [1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 4.0, 3.0, 2.0, 1.0];
/// Requests one service instance processes at once (with [`WORK_MS`]: ~100 req/s per instance).
const MAX_CONCURRENCY: usize = 2;
/// Simulated wait per `/process` request, in ms.
const WORK_MS: u64 = 20;
/// Connections of the open-model generator (enough for the peak rate).
const CONNECTIONS: usize = 64;
/// Requests in flight per instance the autoscalers aim at.
const TARGET_IN_FLIGHT: f64 = 2.0;
/// Most instances per role.
const MAX_INSTANCES: u32 = 4;
/// Tasks per second of the first and last steps (`sleep` tasks of [`TASK_MS`]).
const BASE_TASK_RATE: f64 = 6.0;
/// How long one task works, in ms: one worker of [`WORKER_SLOTS`] runs ~20 tasks a second.
const TASK_MS: u64 = 100;
/// Tasks one worker runs at once.
const WORKER_SLOTS: usize = 2;
/// Queued tasks per worker the workers' autoscaler aims at.
const TARGET_QUEUE: f64 = 5.0;

/// One step of one run.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Point {
    /// Seconds since the run began, at the end of the step.
    pub(super) t_s: f64,
    /// The rate asked for.
    pub(super) offered_rps: f64,
    /// The rate answered.
    pub(super) rps: f64,
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
    /// Failed requests plus non-2xx answers.
    pub(super) errors: u64,
    /// Active gateways at the end of the step.
    pub(super) gateways: usize,
    /// Active services at the end of the step.
    pub(super) services: usize,
    /// Active workers at the end of the step.
    pub(super) workers: usize,
    /// Tasks accepted (`202`) in the step.
    pub(super) tasks_accepted: u64,
}

/// One run of the ramp.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Run {
    pub(super) autoscale: bool,
    pub(super) points: Vec<Point>,
    /// The autoscalers' decisions that changed something, with their arithmetic.
    pub(super) decisions: Vec<String>,
    /// Tasks accepted over the ramp.
    pub(super) tasks_accepted: u64,
    /// Of those, how many succeeded once the queue had drained.
    pub(super) tasks_succeeded: u64,
}

impl Run {
    fn errors(&self) -> u64 {
        self.points.iter().map(|p| p.errors).sum()
    }
    fn p99_max(&self) -> f64 {
        self.points.iter().map(|p| p.p99_ms).fold(0.0, f64::max)
    }
    fn most(&self, f: impl Fn(&Point) -> usize) -> usize {
        self.points.iter().map(f).max().unwrap_or(0)
    }
}

/// The figures of the `elastic` scenario.
#[derive(Debug, Clone, Serialize)]
pub(super) struct ElasticResult {
    /// Autoscaling on.
    pub(super) on: Run,
    /// The same ramp, one gateway and one service throughout.
    pub(super) off: Run,
}

pub(super) async fn run(ctx: &Ctx) -> anyhow::Result<(ElasticResult, Section)> {
    let on = ramp(ctx, true).await?;
    let off = ramp(ctx, false).await?;
    let result = ElasticResult { on, off };
    let section = section(ctx, &result);
    Ok((result, section))
}

/// How long each step lasts.
fn step(ctx: &Ctx) -> std::time::Duration {
    if ctx.settings.quick {
        std::time::Duration::from_secs(1)
    } else {
        ctx.settings.run.mul_f64(0.5)
    }
}

async fn ramp(ctx: &Ctx, autoscale: bool) -> anyhow::Result<Run> {
    let mut topo = base_topology()?;
    topo.instances.ports.insert("gateway".into(), vec![0]);
    topo.instances.ports.insert("service".into(), vec![0]);
    topo.service.max_concurrency = MAX_CONCURRENCY;
    topo.service.work_ms = WORK_MS;
    topo.service.cpu_iterations = 2000;
    topo.instances.ports.insert("worker".into(), vec![0]);
    topo.worker.concurrency = WORKER_SLOTS;
    topo.worker.poll_ms = 20;
    // The pools follow membership changes within a quarter second.
    topo.lb.pool.refresh_ms = 250;
    topo.gateway.services.refresh_ms = 250;
    if autoscale {
        use supervisor::autoscale::Metric;
        for (role, metric, target) in [
            ("gateway", Metric::InFlight, TARGET_IN_FLIGHT),
            ("service", Metric::InFlight, TARGET_IN_FLIGHT),
            ("worker", Metric::QueueDepth, TARGET_QUEUE),
        ] {
            topo.autoscale.insert(
                role.into(),
                AutoscaleSection {
                    profile: AutoscaleProfile::Demo,
                    metric,
                    target,
                    min: 1,
                    max: MAX_INSTANCES,
                    tolerance: None,
                    evaluate_every_ms: None,
                    up_stabilization_ms: None,
                    down_stabilization_ms: None,
                },
            );
        }
    }
    let name = if autoscale {
        "elastic-on"
    } else {
        "elastic-off"
    };
    say(format!(
        "elastic: starting the topology (autoscaling {})",
        if autoscale { "on" } else { "off" }
    ));
    let cluster = Cluster::start_elastic(name, topo).await?;
    let result = measure(ctx, &cluster, autoscale).await;
    let stopped = cluster.stop().await;
    let run = result?;
    stopped?;
    Ok(run)
}

async fn measure(ctx: &Ctx, cluster: &Cluster, autoscale: bool) -> anyhow::Result<Run> {
    let token = cluster.admin_token().await?;
    let plan = Plan::get(&format!("{}/process", cluster.entry()))?.bearer(&token)?;
    let task = serde_json::json!({"type": "sleep", "payload": {"ms": TASK_MS}}).to_string();
    let tasks = Plan::new(
        reqwest::Method::POST,
        &[format!("{}/tasks", cluster.entry())],
    )?
    .bearer(&token)?
    .body(task);
    let started = std::time::Instant::now();
    let mut points = Vec::new();
    for x in RAMP {
        if ctx.stopped() {
            anyhow::bail!("stopped by Ctrl-C");
        }
        let rate = BASE_RATE * x;
        say(format!("elastic: {rate:.0} req/s for {:.1?}", step(ctx)));
        let (report, submitted) = tokio::join!(
            ctx.measure(
                plan.clone(),
                RunConfig {
                    connections: CONNECTIONS,
                    load: Load::Open { rate },
                    duration: Some(step(ctx)),
                    ..RunConfig::default()
                },
            ),
            ctx.measure(
                tasks.clone(),
                RunConfig {
                    connections: 4,
                    load: Load::Open {
                        rate: BASE_TASK_RATE * x
                    },
                    duration: Some(step(ctx)),
                    ..RunConfig::default()
                },
            )
        );
        let (report, submitted) = (report?, submitted?);
        let active = |role: &str, v: &serde_json::Value| {
            v["instances"].as_array().map_or(1, |all| {
                all.iter()
                    .filter(|i| i["role"] == role && i["state"] == "active")
                    .count()
            })
        };
        let instances = cluster.control("/instances").await.unwrap_or_default();
        points.push(Point {
            t_s: started.elapsed().as_secs_f64(),
            offered_rps: rate,
            rps: report.rps,
            p50_ms: report.latency.p50_ms,
            p99_ms: report.latency.p99_ms,
            errors: client_errors(&report) + client_errors(&submitted),
            gateways: active("gateway", &instances),
            services: active("service", &instances),
            workers: active("worker", &instances),
            tasks_accepted: submitted.status_codes.get("202").copied().unwrap_or(0),
        });
    }
    let tasks_accepted: u64 = points.iter().map(|p| p.tasks_accepted).sum();
    say(format!(
        "elastic: waiting for the {tasks_accepted} tasks to finish"
    ));
    let tasks_succeeded = drained(ctx, cluster, &token, tasks_accepted).await?;
    let events = cluster.control("/events").await.unwrap_or_default();
    let decisions = events["events"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|e| e["kind"] == "autoscale")
        .filter_map(|e| e["message"].as_str())
        .filter(|m| m.contains("→ desired") || m.contains("raised to") || m.contains("capped"))
        .map(str::to_string)
        .collect();
    Ok(Run {
        autoscale,
        points,
        decisions,
        tasks_accepted,
        tasks_succeeded,
    })
}

/// Waits until `expected` tasks have finished (the topology is fresh: every task is this run's);
/// how many succeeded.
async fn drained(ctx: &Ctx, cluster: &Cluster, token: &str, expected: u64) -> anyhow::Result<u64> {
    let http = reqwest::Client::builder().no_proxy().build()?;
    // One worker alone needs expected × TASK_MS / slots; four times that, and a margin.
    let need = std::time::Duration::from_millis(expected * TASK_MS / WORKER_SLOTS as u64);
    let deadline = std::time::Instant::now() + need * 4 + std::time::Duration::from_secs(30);
    loop {
        let stats: serde_json::Value = http
            .get(format!("{}/tasks/stats", cluster.entry()))
            .bearer_auth(token)
            .send()
            .await?
            .json()
            .await?;
        let n = |s: &str| stats["by_status"][s].as_u64().unwrap_or(0);
        if n("succeeded") + n("dead") + n("cancelled") >= expected {
            return Ok(n("succeeded"));
        }
        anyhow::ensure!(!ctx.stopped(), "stopped by Ctrl-C");
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the queue did not drain in time: {stats}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn instances_chart(r: &ElasticResult) -> Chart {
    let line = |name: &str, run: &Run, f: fn(&Point) -> f64| {
        (
            name.to_string(),
            run.points.iter().map(|p| (p.t_s, f(p))).collect(),
        )
    };
    Chart::Lines {
        title: "offered load (x base rate) and instances, autoscaling on".into(),
        x_desc: "seconds".into(),
        y_desc: "x base rate / instances".into(),
        series: vec![
            line("offered load (x base)", &r.on, |p| {
                p.offered_rps / BASE_RATE
            }),
            line("gateways", &r.on, |p| p.gateways as f64),
            line("services", &r.on, |p| p.services as f64),
            line("workers", &r.on, |p| p.workers as f64),
        ],
    }
}

fn latency_chart(r: &ElasticResult) -> Chart {
    let line = |name: &str, run: &Run, f: fn(&Point) -> f64| {
        (
            name.to_string(),
            run.points.iter().map(|p| (p.t_s, f(p))).collect(),
        )
    };
    Chart::Lines {
        title: "/process latency over the ramp: autoscaling on vs off".into(),
        x_desc: "seconds".into(),
        y_desc: "ms".into(),
        series: vec![
            line("p99, off", &r.off, |p| p.p99_ms),
            line("p50, off", &r.off, |p| p.p50_ms),
            line("p99, on", &r.on, |p| p.p99_ms),
            line("p50, on", &r.on, |p| p.p50_ms),
        ],
    }
}

fn section(ctx: &Ctx, r: &ElasticResult) -> Section {
    let mut table = Table::new(&[
        "autoscaling",
        "t s",
        "offered req/s",
        "served req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "gateways",
        "services",
        "workers",
        "tasks accepted",
    ]);
    for run in [&r.on, &r.off] {
        for p in &run.points {
            table.row([
                if run.autoscale { "on" } else { "off" }.to_string(),
                format!("{:.0}", p.t_s),
                format!("{:.0}", p.offered_rps),
                format!("{:.0}", p.rps),
                ms(p.p50_ms),
                ms(p.p99_ms),
                p.errors.to_string(),
                p.gateways.to_string(),
                p.services.to_string(),
                p.workers.to_string(),
                p.tasks_accepted.to_string(),
            ]);
        }
    }
    let mut findings = vec![
        format!(
            "autoscaling on: gateways 1→{}→{}, services 1→{}→{}, workers 1→{}→{}, p99 at most {} ms, \
             {} errors; off: p99 at most {} ms, {} errors.",
            r.on.most(|p| p.gateways),
            r.on.points.last().map_or(0, |p| p.gateways),
            r.on.most(|p| p.services),
            r.on.points.last().map_or(0, |p| p.services),
            r.on.most(|p| p.workers),
            r.on.points.last().map_or(0, |p| p.workers),
            ms(r.on.p99_max()),
            r.on.errors(),
            ms(r.off.p99_max()),
            r.off.errors()
        ),
        format!(
            "tasks: {} of {} accepted ran with autoscaling on ({} lost), {} of {} off.",
            r.on.tasks_succeeded,
            r.on.tasks_accepted,
            r.on.tasks_accepted.saturating_sub(r.on.tasks_succeeded),
            r.off.tasks_succeeded,
            r.off.tasks_accepted
        ),
    ];
    findings.extend(
        r.on.decisions
            .iter()
            .take(8)
            .map(|d| format!("decision: {d}")),
    );
    Section {
        title: "Elasticity".into(),
        setup: format!(
            "GET /process through the balancer, open model at {BASE_RATE:.0} req/s rising to ×5 and \
             back in {} steps of {:.1} s; one service instance serves at most {MAX_CONCURRENCY} \
             requests at once ({WORK_MS} ms each, about {} req/s). With autoscaling on, gateways \
             and services start at 1 and scale on requests in flight (target \
             {TARGET_IN_FLIGHT}/instance, max {MAX_INSTANCES}) with the demo profile (HPA's rules, \
             evaluated every second, 10 s scale-down window); off: 1 gateway and 1 service \
             throughout. Alongside, `sleep` tasks of {TASK_MS} ms are submitted at {BASE_TASK_RATE:.0} \
             a second on the same ramp, for workers of {WORKER_SLOTS} slots that autoscale on queue \
             depth (target {TARGET_QUEUE}/worker). Instances are counted at the end of each step.",
            RAMP.len(),
            step(ctx).as_secs_f64(),
            MAX_CONCURRENCY as u64 * 1000 / WORK_MS
        ),
        table,
        findings,
        charts: vec![instances_chart(r), latency_chart(r)],
        command: ctx.command("elastic"),
    }
}

impl ElasticResult {
    pub(super) fn score_row(&self, command: String) -> ScoreRow {
        let gain = format!(
            "load ×5: services 1→{}→{}, workers 1→{}→{}, p99 ≤ {} ms throughout vs {} ms without \
             autoscaling, {} errors, {} tasks lost",
            self.on.most(|p| p.services),
            self.on.points.last().map_or(0, |p| p.services),
            self.on.most(|p| p.workers),
            self.on.points.last().map_or(0, |p| p.workers),
            ms(self.on.p99_max()),
            ms(self.off.p99_max()),
            self.on.errors(),
            self.on
                .tasks_accepted
                .saturating_sub(self.on.tasks_succeeded)
        );
        ScoreRow {
            tactic: "elasticity".into(),
            gain,
            chart: Some(instances_chart(self)),
            command,
        }
    }
}
