//! `lb`: how the balancer spreads requests over the gateways (`X-Served-By`) and the gateways over
//! the services (`service_id` in `/process` answers), then what a client sees when a gateway is
//! SIGKILLed mid-run (expected: nothing).

use std::collections::BTreeMap;
use std::time::Duration;

use bench::experiment::{Chart, ScoreRow, Section, Table};
use bench::report::ErrorCounts;
use bench::{Plan, RunConfig};
use serde::Serialize;

use super::cluster::Cluster;
use super::score::{self, Spread};
use super::{Ctx, base_topology, client_errors, counts, ms, say};

/// Connections of both runs.
const CONNECTIONS: usize = 16;
/// The gateway killed in the second run.
const VICTIM: &str = "gateway-1";

/// The figures of the `lb` scenario.
#[derive(Debug, Clone, Serialize)]
pub(super) struct LbResult {
    /// Answers in the distribution run.
    pub(super) requests: u64,
    /// Its throughput.
    pub(super) rps: f64,
    /// Answers per gateway (`X-Served-By`).
    pub(super) gateways: Spread,
    /// `/process` answers per service (`service_id`).
    pub(super) services: Spread,
    /// The run during which a gateway was killed.
    pub(super) failover: Failover,
}

/// The run with a gateway killed.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Failover {
    /// Which instance was killed, and when (seconds into the run).
    pub(super) killed: String,
    pub(super) killed_at_s: f64,
    /// Requests sent during the run.
    pub(super) requests: u64,
    /// Failed requests plus non-2xx answers: what a client would notice.
    pub(super) client_errors: u64,
    /// Failed requests by kind.
    pub(super) errors: ErrorCounts,
    /// Answers by status.
    pub(super) status_codes: BTreeMap<String, u64>,
    /// 99th percentile and largest latency of the run, in ms.
    pub(super) p99_ms: f64,
    pub(super) max_ms: f64,
    /// Whether the supervisor had the killed gateway running again (a new pid) after the run.
    pub(super) restarted: bool,
    /// Answers per second (for the chart).
    pub(super) timeline: Vec<(f64, f64, f64)>,
}

pub(super) async fn run(ctx: &Ctx) -> anyhow::Result<(LbResult, Section)> {
    say("lb: starting lb, 2 gateways, 3 services, cache, db, auth");
    let cluster = Cluster::start("lb", base_topology()?).await?;
    let result = measure(ctx, &cluster).await;
    let stopped = cluster.stop().await;
    let result = result?;
    stopped?;
    let section = section(ctx, &result);
    Ok((result, section))
}

async fn measure(ctx: &Ctx, cluster: &Cluster) -> anyhow::Result<LbResult> {
    let token = cluster.admin_token().await?;
    let entry = cluster.entry();
    let plan = Plan::new(
        reqwest::Method::GET,
        &[format!("{entry}/process"), format!("{entry}/data")],
    )?
    .bearer(&token)?
    .count_field("service_id");
    let config = RunConfig {
        connections: CONNECTIONS,
        duration: Some(ctx.settings.run),
        ..RunConfig::default()
    };

    say(format!(
        "lb: {:.1}s of /process and /data through the balancer",
        ctx.settings.run.as_secs_f64()
    ));
    let spread_run = ctx.measure(plan.clone(), config.clone()).await?;
    let gateways = score::spread(&cluster.ids("gateway"), &counts(&spread_run.instances));
    let services = score::spread(&cluster.ids("service"), &counts(&spread_run.field_counts));

    let old_pid = cluster.pid(VICTIM)?;
    let kill_after = ctx.settings.run.mul_f64(0.4);
    say(format!(
        "lb: the same load again; {VICTIM} (pid {old_pid}) gets SIGKILL after {:.1}s",
        kill_after.as_secs_f64()
    ));
    let (failover_run, killed) = tokio::join!(ctx.measure(plan, config), async {
        tokio::time::sleep(kill_after).await;
        cluster.kill(VICTIM)
    });
    let failover_run = failover_run?;
    killed?;
    // The supervisor restarts the gateway with backoff; give it a moment to be back.
    let mut restarted = false;
    for _ in 0..100 {
        if cluster.pid(VICTIM).is_ok_and(|p| p != old_pid) {
            restarted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    Ok(LbResult {
        requests: spread_run.requests.answered,
        rps: spread_run.rps,
        gateways,
        services,
        failover: Failover {
            killed: VICTIM.into(),
            killed_at_s: kill_after.as_secs_f64(),
            requests: failover_run.requests.total,
            client_errors: client_errors(&failover_run),
            errors: failover_run.errors,
            status_codes: failover_run.status_codes.clone(),
            p99_ms: failover_run.latency.p99_ms,
            max_ms: failover_run.latency.max_ms,
            restarted,
            // The last second is usually a sliver (answers after the deadline): as a rate it
            // would plot as a drop that did not happen.
            timeline: failover_run
                .timeline
                .iter()
                .filter(|s| s.second as f64 + 1.0 <= failover_run.elapsed_s + 0.05)
                .map(|s| (s.second as f64 + 0.5, s.requests as f64, s.errors as f64))
                .collect(),
        },
    })
}

fn evenness(s: &Spread) -> String {
    format!(
        "{} (largest deviation from an even split: {})",
        if s.even {
            format!("even within {}", score::pct(score::EVEN_TOLERANCE))
        } else {
            "NOT even".to_owned()
        },
        score::pct(s.max_deviation)
    )
}

fn shares_chart(r: &LbResult) -> Chart {
    let bars: Vec<(String, f64)> = r
        .gateways
        .shares
        .iter()
        .chain(&r.services.shares)
        .map(|s| (s.id.clone(), s.percent))
        .collect();
    Chart::bars("Share of answers per instance", "% of its tier", &bars)
}

fn section(ctx: &Ctx, r: &LbResult) -> Section {
    let f = &r.failover;
    let mut table = Table::new(&["tier", "instance", "answers", "share"]);
    for (tier, spread) in [
        ("gateway (X-Served-By)", &r.gateways),
        ("service (service_id)", &r.services),
    ] {
        for s in &spread.shares {
            table.row([
                tier.to_owned(),
                s.id.clone(),
                s.count.to_string(),
                format!("{:.1}%", s.percent),
            ]);
        }
    }
    let status: Vec<String> = f
        .status_codes
        .iter()
        .map(|(c, n)| format!("{c}: {n}"))
        .collect();
    let findings = vec![
        format!(
            "{} answers at {:.0} req/s over {CONNECTIONS} connections.",
            r.requests, r.rps
        ),
        format!("Gateways: {}.", evenness(&r.gateways)),
        format!("Services: {}.", evenness(&r.services)),
        format!(
            "{} SIGKILLed {:.1}s into a second run of {} requests: {} client-visible errors \
             ({} failed: connect {}, timeout {}, reset {}, other {}; statuses {}); p99 {} ms, max {} ms.",
            f.killed,
            f.killed_at_s,
            f.requests,
            f.client_errors,
            f.errors.total(),
            f.errors.connect,
            f.errors.timeout,
            f.errors.reset,
            f.errors.other,
            status.join(", "),
            ms(f.p99_ms),
            ms(f.max_ms)
        ),
        if f.restarted {
            format!("The supervisor restarted {} (new pid).", f.killed)
        } else {
            format!("{} was not yet restarted when the run ended.", f.killed)
        },
    ];
    let failover_chart = Chart::Lines {
        title: format!(
            "Answers and errors per second ({} killed at {:.1}s)",
            f.killed, f.killed_at_s
        ),
        x_desc: "seconds".into(),
        y_desc: "per second".into(),
        series: vec![
            (
                "answers".into(),
                f.timeline.iter().map(|t| (t.0, t.1)).collect(),
            ),
            (
                "errors".into(),
                f.timeline.iter().map(|t| (t.0, t.2)).collect(),
            ),
        ],
    };
    Section {
        title: "Load balancing".into(),
        setup: format!(
            "Closed model, {CONNECTIONS} connections, {:.1}s: GET /process and GET /data in turn \
             through the balancer (round robin over 2 gateways; each gateway round robin over 3 \
             services). Then the same load again while {VICTIM} is killed with SIGKILL.",
            ctx.settings.run.as_secs_f64()
        ),
        table,
        findings,
        charts: vec![shares_chart(r), failover_chart],
        command: ctx.command("lb"),
    }
}

impl LbResult {
    pub(super) fn score_row(&self, command: String) -> ScoreRow {
        let shares = |s: &Spread| {
            s.shares
                .iter()
                .map(|s| format!("{:.0}", s.percent))
                .collect::<Vec<_>>()
                .join("/")
        };
        ScoreRow {
            tactic: "load balancing".into(),
            gain: format!(
                "{} gateways {}% and {} services {}% (each within {} of even); {} client-visible \
                 errors with a gateway SIGKILLed mid-run",
                self.gateways.shares.len(),
                shares(&self.gateways),
                self.services.shares.len(),
                shares(&self.services),
                score::pct(self.gateways.max_deviation.max(self.services.max_deviation)),
                self.failover.client_errors
            ),
            chart: Some(shares_chart(self)),
            command,
        }
    }
}
