//! `cache`: what cache-aside saves. A cold pass over N keys (all misses: each goes to the slow db)
//! then a warm pass over the same keys (all hits); hit vs miss latency; the hit ratio under Zipf
//! key popularity with the shared cache service, then with one local cache per gateway.

use bench::experiment::{Chart, ScoreRow, Section, Table};
use bench::report::LatencySummary;
use bench::{Plan, Report, RunConfig};
use serde::Serialize;

use super::cluster::Cluster;
use super::score;
use super::{Ctx, base_topology, ms, say};

/// Connections of the Zipf runs (and at most of the passes).
const CONNECTIONS: usize = 16;
/// Requests per second of the cold and the warm pass (open model): low enough that misses
/// (about 110 ms each) never need more than the connections there are.
const PASS_RATE: f64 = 100.0;
/// Keys of the Zipf runs: the db seeds `key-1` .. `key-1000`.
const ZIPF_KEYS: u64 = 1000;

/// The figures of one run.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Pass {
    /// What the run was.
    pub(super) name: String,
    pub(super) requests: u64,
    pub(super) hits: u64,
    pub(super) misses: u64,
    pub(super) hit_ratio: f64,
    pub(super) rps: f64,
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
    /// Failed requests plus non-2xx answers.
    pub(super) client_errors: u64,
}

impl Pass {
    fn of(name: &str, r: &Report) -> Self {
        Pass {
            name: name.to_owned(),
            requests: r.requests.total,
            hits: r.cache.hits,
            misses: r.cache.misses,
            hit_ratio: r.cache.hit_ratio.unwrap_or(0.0),
            rps: r.rps,
            p50_ms: r.latency.p50_ms,
            p99_ms: r.latency.p99_ms,
            client_errors: super::client_errors(r),
        }
    }
}

/// The figures of the `cache` scenario.
#[derive(Debug, Clone, Serialize)]
pub(super) struct CacheResult {
    /// Keys of the cold and warm passes.
    pub(super) keys: u64,
    /// Cold pass, warm pass, Zipf with the shared cache, Zipf with local caches.
    pub(super) passes: Vec<Pass>,
    /// Latency of the warm pass's hits and of the cold pass's misses.
    pub(super) hit_latency: LatencySummary,
    pub(super) miss_latency: LatencySummary,
    /// Miss p50 / hit p50.
    pub(super) speedup_p50: Option<f64>,
    /// Hit ratio of the Zipf runs: shared cache service, local caches.
    pub(super) zipf_shared_hit_ratio: f64,
    pub(super) zipf_local_hit_ratio: f64,
}

pub(super) async fn run(ctx: &Ctx) -> anyhow::Result<(CacheResult, Section)> {
    say("cache: starting the topology with the shared cache service");
    let cluster = Cluster::start("cache-shared", base_topology()?).await?;
    let shared = shared_runs(ctx, &cluster).await;
    let stopped = cluster.stop().await;
    let (cold, warm, zipf_shared) = shared?;
    stopped?;

    say("cache: starting the topology with one local cache per gateway");
    let mut topo = base_topology()?;
    topo.gateway.cache = gateway::CacheBackend::Local;
    let cluster = Cluster::start("cache-local", topo).await?;
    let local = zipf_run(ctx, &cluster, "local").await;
    let stopped = cluster.stop().await;
    let zipf_local = local?;
    stopped?;

    let hit_latency = warm.cache.hit_latency.clone().unwrap_or_default();
    let miss_latency = cold.cache.miss_latency.clone().unwrap_or_default();
    let result = CacheResult {
        keys: ctx.settings.cold_keys,
        passes: vec![
            Pass::of("cold pass (every key once)", &cold),
            Pass::of("warm pass (the same keys again)", &warm),
            Pass::of("Zipf keys, shared cache service", &zipf_shared),
            Pass::of("Zipf keys, local cache per gateway", &zipf_local),
        ],
        speedup_p50: score::ratio(miss_latency.p50_ms, hit_latency.p50_ms),
        hit_latency,
        miss_latency,
        zipf_shared_hit_ratio: zipf_shared.cache.hit_ratio.unwrap_or(0.0),
        zipf_local_hit_ratio: zipf_local.cache.hit_ratio.unwrap_or(0.0),
    };
    let section = section(ctx, &result);
    Ok((result, section))
}

/// Cold pass, warm pass and the Zipf run on the shared-cache topology.
async fn shared_runs(ctx: &Ctx, cluster: &Cluster) -> anyhow::Result<(Report, Report, Report)> {
    let token = cluster.admin_token().await?;
    cluster.flush_caches(&token).await?;
    let keys = ctx.settings.cold_keys;
    let pass = || -> anyhow::Result<(Plan, RunConfig)> {
        let plan =
            Plan::get(&format!("{}/data?key=key-{{seq}}", cluster.entry()))?.bearer(&token)?;
        // The same modest open-model rate for both passes, so that their latencies compare the
        // cache with the db and not a saturated machine with an idle one.
        let config = RunConfig {
            connections: CONNECTIONS.min(keys as usize),
            load: bench::Load::Open { rate: PASS_RATE },
            requests: Some(keys),
            ..RunConfig::default()
        };
        Ok((plan, config))
    };
    say(format!(
        "cache: cold pass over {keys} keys, then the warm pass"
    ));
    let (plan, config) = pass()?;
    let cold = ctx.measure(plan, config).await?;
    let (plan, config) = pass()?;
    let warm = ctx.measure(plan, config).await?;
    // The Zipf run starts from an empty cache too.
    cluster.flush_caches(&token).await?;
    let zipf = zipf_with(ctx, cluster, &token, "shared").await?;
    Ok((cold, warm, zipf))
}

async fn zipf_run(ctx: &Ctx, cluster: &Cluster, what: &str) -> anyhow::Result<Report> {
    let token = cluster.admin_token().await?;
    zipf_with(ctx, cluster, &token, what).await
}

async fn zipf_with(
    ctx: &Ctx,
    cluster: &Cluster,
    token: &str,
    what: &str,
) -> anyhow::Result<Report> {
    say(format!(
        "cache: {:.1}s of Zipf-popular keys ({what} cache)",
        ctx.settings.run.as_secs_f64()
    ));
    let plan = Plan::get(&format!(
        "{}/data?key=key-{{zipf:{ZIPF_KEYS}}}",
        cluster.entry()
    ))?
    .bearer(token)?;
    let config = RunConfig {
        connections: CONNECTIONS,
        duration: Some(ctx.settings.run),
        ..RunConfig::default()
    };
    ctx.measure(plan, config).await
}

fn hit_miss_chart(r: &CacheResult) -> Chart {
    let pick = |l: &LatencySummary| vec![l.p50_ms, l.p90_ms, l.p99_ms];
    Chart::Bars {
        title: "Latency of a cache hit vs a miss".into(),
        y_desc: "ms".into(),
        categories: vec!["p50".into(), "p90".into(), "p99".into()],
        groups: vec![
            ("hit (warm pass)".into(), pick(&r.hit_latency)),
            ("miss (cold pass)".into(), pick(&r.miss_latency)),
        ],
    }
}

fn section(ctx: &Ctx, r: &CacheResult) -> Section {
    let mut table = Table::new(&[
        "run",
        "requests",
        "hits",
        "misses",
        "hit ratio",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
    ]);
    for p in &r.passes {
        table.row([
            p.name.clone(),
            p.requests.to_string(),
            p.hits.to_string(),
            p.misses.to_string(),
            score::pct(p.hit_ratio),
            format!("{:.0}", p.rps),
            ms(p.p50_ms),
            ms(p.p99_ms),
            p.client_errors.to_string(),
        ]);
    }
    let mut findings = vec![match r.speedup_p50 {
        Some(x) => format!(
            "A hit is {} faster than a miss at the median ({} ms vs {} ms; p99 {} ms vs {} ms).",
            score::times(x),
            ms(r.hit_latency.p50_ms),
            ms(r.miss_latency.p50_ms),
            ms(r.hit_latency.p99_ms),
            ms(r.miss_latency.p99_ms)
        ),
        None => "No hit/miss pair to compare.".to_owned(),
    }];
    findings.push(format!(
        "Zipf key popularity over {ZIPF_KEYS} keys: hit ratio {} with the shared cache service, \
         {} with a local cache in each of the 2 gateways (each gateway misses once per key \
         before its own copy is warm).",
        score::pct(r.zipf_shared_hit_ratio),
        score::pct(r.zipf_local_hit_ratio)
    ));
    let ratios = Chart::bars(
        "Hit ratio",
        "% hits",
        &r.passes
            .iter()
            .map(|p| {
                (
                    p.name.split(" (").next().unwrap_or(&p.name).to_owned(),
                    100.0 * p.hit_ratio,
                )
            })
            .collect::<Vec<_>>(),
    );
    Section {
        title: "Caching".into(),
        setup: format!(
            "GET /data through the balancer (db latency 100 ms ± 20 ms, cache TTL 600 s). Cold \
             pass: keys key-1..key-{k} once each from an empty cache; warm pass: the same keys \
             again; both at {PASS_RATE} req/s (open model). Then {:.1}s of key-{{zipf:{ZIPF_KEYS}}} ({CONNECTIONS} connections) from an \
             empty cache, with the shared cache service and, on a second topology, with a local \
             cache per gateway.",
            ctx.settings.run.as_secs_f64(),
            k = r.keys
        ),
        table,
        findings,
        charts: vec![hit_miss_chart(r), ratios],
        command: ctx.command("cache"),
    }
}

impl CacheResult {
    pub(super) fn score_row(&self, command: String) -> ScoreRow {
        let speed = match self.speedup_p50 {
            Some(x) => format!(
                "cache hit {} faster than miss (p50 {} vs {} ms)",
                score::times(x),
                ms(self.hit_latency.p50_ms),
                ms(self.miss_latency.p50_ms)
            ),
            None => "no hit/miss pair measured".to_owned(),
        };
        ScoreRow {
            tactic: "caching".into(),
            gain: format!(
                "{speed}; Zipf hit ratio {} shared vs {} local",
                score::pct(self.zipf_shared_hit_ratio),
                score::pct(self.zipf_local_hit_ratio)
            ),
            chart: Some(hit_miss_chart(self)),
            command,
        }
    }
}
