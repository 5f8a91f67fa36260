//! `async`: long work done synchronously (`GET /process` holds the client until the work is
//! done) vs submitted to the task queue (`POST /tasks` answers `202` at once and a worker does the
//! work): client latency and throughput of each, and how long the queued work itself took.
//!
//! Both sides get the same capacity: two service instances of [`SLOTS`] slots each doing
//! [`WORK_MS`] of work per request, and two workers of [`SLOTS`] slots each running a `sleep`
//! task of [`WORK_MS`]. The queued run submits as many tasks as the synchronous run completed,
//! then waits until the last one has succeeded, so that both runs did the same amount of work.

use std::time::{Duration, Instant};

use anyhow::Context;
use bench::experiment::{Chart, ScoreRow, Section, Table};
use bench::{Plan, Report, RunConfig};
use serde::Serialize;
use serde_json::Value;

use super::cluster::Cluster;
use super::score;
use super::{Ctx, base_topology, client_errors, ms, say};

/// The long work of one request or task, in milliseconds.
const WORK_MS: u64 = 100;
/// Slots per service instance and per worker (two of each): 8 pieces of work at once on either
/// side, so either side tops out near 8 / 100 ms = 80 per second.
const SLOTS: usize = 4;
/// Connections of both runs: four times the slots, so that synchronous requests queue.
const CONNECTIONS: usize = 32;
/// The fewest tasks the queued run submits (when the synchronous run completed fewer).
const MIN_TASKS: u64 = 50;

/// One run's figures as the client saw them.
#[derive(Debug, Clone, Serialize)]
pub(super) struct ClientSide {
    pub(super) requests: u64,
    pub(super) rps: f64,
    pub(super) p50_ms: f64,
    pub(super) p90_ms: f64,
    pub(super) p99_ms: f64,
    /// Failed requests plus non-2xx answers.
    pub(super) client_errors: u64,
}

impl ClientSide {
    fn of(r: &Report) -> Self {
        ClientSide {
            requests: r.requests.total,
            rps: r.rps,
            p50_ms: r.latency.p50_ms,
            p90_ms: r.latency.p90_ms,
            p99_ms: r.latency.p99_ms,
            client_errors: client_errors(r),
        }
    }
}

/// The figures of the `async` scenario.
#[derive(Debug, Clone, Serialize)]
pub(super) struct QueuedResult {
    /// The work per request or task, in ms.
    pub(super) work_ms: u64,
    /// `GET /process`: the client waits for the work.
    pub(super) sync: ClientSide,
    /// `POST /tasks`: the client waits for the submission only.
    pub(super) submit: ClientSide,
    /// Tasks that ended `succeeded`.
    pub(super) tasks_succeeded: u64,
    /// From the first submission to the last task done, in seconds.
    pub(super) drain_s: f64,
    /// Tasks done per second over `drain_s` (the work's throughput, bounded by the workers).
    pub(super) work_per_s: f64,
    /// Submission to `succeeded`, per task (`finished_at - created_at`), in ms.
    pub(super) done_p50_ms: f64,
    pub(super) done_p90_ms: f64,
    pub(super) done_p99_ms: f64,
    /// Synchronous p50 over submission p50: how much sooner the client is free.
    pub(super) client_p50_gain: Option<f64>,
}

pub(super) async fn run(ctx: &Ctx) -> anyhow::Result<(QueuedResult, Section)> {
    say(format!(
        "async: starting 1 gateway, 2 services and 2 workers of {SLOTS} slots, {WORK_MS} ms of work each"
    ));
    let mut topo = base_topology()?;
    // One gateway and no balancer: the comparison is about where the work waits, not about hops.
    topo.instances.ports.remove("lb");
    topo.instances.ports.insert("gateway".into(), vec![0]);
    topo.instances.ports.insert("service".into(), vec![0; 2]);
    topo.instances.ports.insert("worker".into(), vec![0; 2]);
    topo.service.max_concurrency = SLOTS;
    topo.service.work_ms = WORK_MS;
    topo.service.cpu_iterations = 0;
    topo.service.queue_timeout_ms = 10_000;
    topo.worker.concurrency = SLOTS;
    // Idle slots ask the queue often, so that "done" is not a polling artefact.
    topo.worker.poll_ms = 20;
    let cluster = Cluster::start("async", topo).await?;
    let result = measure(ctx, &cluster).await;
    let stopped = cluster.stop().await;
    let result = result?;
    stopped?;
    let section = section(ctx, &result);
    Ok((result, section))
}

async fn measure(ctx: &Ctx, cluster: &Cluster) -> anyhow::Result<QueuedResult> {
    let token = cluster.admin_token().await?;
    let entry = cluster.entry();
    let sync_plan = Plan::get(&format!("{entry}/process"))?.bearer(&token)?;
    let warm_up = RunConfig {
        connections: CONNECTIONS,
        duration: Some(ctx.settings.run.mul_f64(0.2)),
        ..RunConfig::default()
    };
    ctx.measure(sync_plan.clone(), warm_up).await?;
    say(format!(
        "async: {:.1}s of synchronous GET /process",
        ctx.settings.run.as_secs_f64()
    ));
    let sync = ctx
        .measure(
            sync_plan,
            RunConfig {
                connections: CONNECTIONS,
                duration: Some(ctx.settings.run),
                ..RunConfig::default()
            },
        )
        .await?;

    // The same amount of work, submitted to the queue.
    let completed = sync.status_codes.get("200").copied().unwrap_or(0);
    let tasks = completed.max(MIN_TASKS);
    say(format!("async: {tasks} tasks through POST /tasks"));
    let submit_plan = Plan::new(reqwest::Method::POST, &[format!("{entry}/tasks")])?
        .bearer(&token)?
        .header("content-type", "application/json")?
        .body(format!(
            r#"{{"type":"sleep","payload":{{"ms":{WORK_MS}}}}}"#
        ));
    let first_submit = Instant::now();
    let submit = ctx
        .measure(
            submit_plan,
            RunConfig {
                connections: CONNECTIONS,
                requests: Some(tasks),
                ..RunConfig::default()
            },
        )
        .await?;
    let accepted = submit.status_codes.get("202").copied().unwrap_or(0);
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()?;
    let api = Api {
        http,
        entry: entry.clone(),
        token: token.clone(),
    };
    let tasks_succeeded = wait_drained(ctx, &api, accepted).await?;
    let drain_s = first_submit.elapsed().as_secs_f64();
    let done = done_latencies(&api).await?;
    let pick = |q: f64| percentile(&done, q);
    let sync = ClientSide::of(&sync);
    let submit = ClientSide::of(&submit);
    Ok(QueuedResult {
        work_ms: WORK_MS,
        client_p50_gain: score::ratio(sync.p50_ms, submit.p50_ms),
        sync,
        submit,
        tasks_succeeded,
        drain_s,
        work_per_s: if drain_s > 0.0 {
            tasks_succeeded as f64 / drain_s
        } else {
            0.0
        },
        done_p50_ms: pick(0.50),
        done_p90_ms: pick(0.90),
        done_p99_ms: pick(0.99),
    })
}

/// The admin's view of the queue, for the few control reads (the load goes through `bench`).
struct Api {
    http: reqwest::Client,
    entry: String,
    token: String,
}

impl Api {
    /// `GET path` as the admin; the JSON answer, or an error for a non-2xx status.
    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.entry);
        self.http
            .get(&url)
            .bearer_auth(&self.token)
            .send()
            .await?
            .error_for_status()
            .with_context(|| format!("GET {url}"))?
            .json()
            .await
            .with_context(|| format!("GET {url}: not JSON"))
    }
}

/// Polls `GET /tasks/stats` until `expected` tasks have finished (this topology is fresh, so
/// every task in it is this run's); returns how many succeeded.
async fn wait_drained(ctx: &Ctx, api: &Api, expected: u64) -> anyhow::Result<u64> {
    // Four times the time the workers need, plus a margin for a loaded machine.
    let need = Duration::from_millis(expected * WORK_MS / (2 * SLOTS as u64));
    let deadline = Instant::now() + need * 4 + Duration::from_secs(30);
    loop {
        let stats = api.get("/tasks/stats").await?;
        let n = |s: &str| stats["by_status"][s].as_u64().unwrap_or(0);
        let finished = n("succeeded") + n("dead") + n("cancelled");
        if finished >= expected {
            return Ok(n("succeeded"));
        }
        anyhow::ensure!(!ctx.stopped(), "stopped by Ctrl-C");
        anyhow::ensure!(
            Instant::now() < deadline,
            "the queue did not drain in time: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `finished_at - created_at` of every succeeded task, in ms, sorted.
async fn done_latencies(api: &Api) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = "/tasks?status=succeeded&limit=500".to_string();
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = api.get(&path).await?;
        let tasks = page["tasks"]
            .as_array()
            .context("GET /tasks has no tasks")?;
        out.extend(tasks.iter().filter_map(|t: &Value| {
            Some((t["finished_at"].as_i64()? - t["created_at"].as_i64()?) as f64)
        }));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    out.sort_by(f64::total_cmp);
    Ok(out)
}

/// The `q` quantile of sorted `values` (nearest rank), 0 when empty.
fn percentile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let rank = (q * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

fn latency_chart(r: &QueuedResult) -> Chart {
    Chart::Bars {
        title: "Client latency: synchronous work vs a queued task".into(),
        y_desc: "ms".into(),
        categories: vec!["p50".into(), "p90".into(), "p99".into()],
        groups: vec![
            (
                "GET /process (client waits for the work)".into(),
                vec![r.sync.p50_ms, r.sync.p90_ms, r.sync.p99_ms],
            ),
            (
                "POST /tasks (client waits for 202)".into(),
                vec![r.submit.p50_ms, r.submit.p90_ms, r.submit.p99_ms],
            ),
            (
                "task submitted -> succeeded".into(),
                vec![r.done_p50_ms, r.done_p90_ms, r.done_p99_ms],
            ),
        ],
    }
}

fn section(ctx: &Ctx, r: &QueuedResult) -> Section {
    let mut table = Table::new(&[
        "run",
        "requests",
        "client req/s",
        "client p50 ms",
        "client p99 ms",
        "errors",
        "work done/s",
        "until done p50 ms",
        "until done p99 ms",
    ]);
    let sync_work = r.sync.rps;
    table.row([
        format!("synchronous GET /process ({} ms)", r.work_ms),
        r.sync.requests.to_string(),
        format!("{:.0}", r.sync.rps),
        ms(r.sync.p50_ms),
        ms(r.sync.p99_ms),
        r.sync.client_errors.to_string(),
        format!("{sync_work:.0}"),
        ms(r.sync.p50_ms),
        ms(r.sync.p99_ms),
    ]);
    table.row([
        format!("queued POST /tasks (sleep {} ms)", r.work_ms),
        r.submit.requests.to_string(),
        format!("{:.0}", r.submit.rps),
        ms(r.submit.p50_ms),
        ms(r.submit.p99_ms),
        r.submit.client_errors.to_string(),
        format!("{:.0}", r.work_per_s),
        ms(r.done_p50_ms),
        ms(r.done_p99_ms),
    ]);
    let mut findings = vec![format!(
        "The client is free after {} ms (p50) instead of {} ms{}: submissions are accepted at \
         {:.0} req/s against {:.0} req/s of synchronous work.",
        ms(r.submit.p50_ms),
        ms(r.sync.p50_ms),
        r.client_p50_gain
            .map_or(String::new(), |g| format!(" ({} sooner)", score::times(g))),
        r.submit.rps,
        r.sync.rps
    )];
    findings.push(format!(
        "The work itself is not faster: {} tasks took {:.1} s to drain ({:.0} tasks/s on the same \
         {} slots), and a task waited {} ms (p50) / {} ms (p99) from submission to done. The \
         queue absorbs the burst and keeps every task; it does not add capacity.",
        r.tasks_succeeded,
        r.drain_s,
        r.work_per_s,
        2 * SLOTS,
        ms(r.done_p50_ms),
        ms(r.done_p99_ms)
    ));
    Section {
        title: "Asynchronous work".into(),
        setup: format!(
            "One gateway; {WORK_MS} ms of work per request or task on 2 x {SLOTS} slots either \
             way (2 service instances for GET /process, 2 workers for the sleep task). Closed \
             model, {CONNECTIONS} connections: {:.1}s of GET /process after a short warm-up, \
             then as many POST /tasks as the synchronous run completed, then a wait until the \
             last task succeeded (GET /tasks/stats).",
            ctx.settings.run.as_secs_f64()
        ),
        table,
        findings,
        charts: vec![latency_chart(r)],
        command: ctx.command("async"),
    }
}

impl QueuedResult {
    pub(super) fn score_row(&self, command: String) -> ScoreRow {
        let gain = format!(
            "client free after {} ms instead of {} ms (p50{}), {:.0} vs {:.0} req/s accepted; \
             the work still runs at {:.0}/s",
            ms(self.submit.p50_ms),
            ms(self.sync.p50_ms),
            self.client_p50_gain
                .map_or(String::new(), |g| format!(", {}", score::times(g))),
            self.submit.rps,
            self.sync.rps,
            self.work_per_s
        );
        ScoreRow {
            tactic: "asynchronous processing".into(),
            gain,
            chart: Some(latency_chart(self)),
            command,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.50), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert_eq!(percentile(&[7.0], 0.5), 7.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
