//! `scalelab bench scenario NAME`: experiments that show, in numbers and charts, what each tactic
//! of the system buys. Each scenario starts the topology variant it needs on free ports (through
//! the supervisor and the child specs of `scalelab up`: [`cluster::Cluster`]), loads it with the
//! `bench` library, stops it, and returns its figures and a report [`Section`]; `all` runs every
//! scenario and ends the report with the tactic scorecard.
//!
//! Start at [`run`]; the scenarios are `lb.rs`, `cache.rs`, `scale.rs`, `queued.rs` (the
//! `async` one), `elastic.rs` (a load ramp against autoscaling gateways and services) and
//! `resilience.rs` (latency-aware selection, the retry budget, the fuses on and off with a sick
//! service); `score.rs` holds the arithmetic of the findings.

mod cache;
mod cluster;
mod elastic;
mod lb;
mod queued;
mod resilience;
mod scale;
mod score;

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use bench::experiment::{Experiment, ScoreRow, Section};
use bench::{Plan, Report, RunConfig, ScenarioArgs, ScenarioName};
use serde::Serialize;
use tokio::sync::watch;

use crate::topology::Topology;

/// How long and how hard the scenarios load the system.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    /// `--quick`: short runs that check everything works.
    quick: bool,
    /// Length of each measured run.
    run: Duration,
    /// Keys read in the cold and the warm pass of the cache scenario.
    cold_keys: u64,
    /// What to append to `scalelab bench scenario NAME` to reproduce these settings.
    flags: String,
}

impl Settings {
    fn new(args: &ScenarioArgs) -> Self {
        let default = if args.quick {
            Duration::from_millis(1500)
        } else {
            Duration::from_secs(10)
        };
        let mut flags = String::new();
        if args.quick {
            flags.push_str(" --quick");
        }
        if let Some(d) = args.duration {
            flags.push_str(&format!(" --duration {}ms", d.as_millis()));
        }
        Settings {
            quick: args.quick,
            run: args.duration.unwrap_or(default),
            cold_keys: if args.quick { 60 } else { 300 },
            flags,
        }
    }
}

/// What every scenario gets: the settings and the stop signal (Ctrl-C).
pub(super) struct Ctx {
    settings: Settings,
    stop: watch::Receiver<bool>,
}

impl Ctx {
    /// Whether Ctrl-C was pressed.
    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// One `bench` run; Ctrl-C ends it early (the report says so).
    async fn measure(&self, plan: Plan, config: RunConfig) -> anyhow::Result<Report> {
        let mut stop = self.stop.clone();
        let report = bench::execute(plan, config, async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await?;
        anyhow::ensure!(!report.stopped_early, "stopped by Ctrl-C");
        Ok(report)
    }

    /// The command that reproduces scenario `name` with these settings.
    fn command(&self, name: &str) -> String {
        format!("scalelab bench scenario {name}{}", self.settings.flags)
    }
}

/// The figures of every scenario that ran (the `--json` output).
#[derive(Debug, Default, Serialize)]
struct Results {
    /// Short runs (`--quick`).
    quick: bool,
    /// Length of each measured run, in seconds.
    run_s: f64,
    /// Wall time of the whole command, in seconds.
    elapsed_s: f64,
    lb: Option<lb::LbResult>,
    cache: Option<cache::CacheResult>,
    scale: Option<scale::ScaleResult>,
    #[serde(rename = "async")]
    queued: Option<queued::QueuedResult>,
    elastic: Option<elastic::ElasticResult>,
    resilience: Option<resilience::ResilienceResult>,
    /// One row per tactic (with `all`, or whichever scenarios ran).
    scorecard: Vec<ScoreRow>,
}

/// Runs `scalelab bench scenario NAME`: prints each scenario's figures, and writes the HTML report
/// (`--report DIR`) and the JSON results (`--json FILE`). `stop` (Ctrl-C) ends the run early.
pub(crate) async fn run(
    args: ScenarioArgs,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        stop.await;
        let _ = stop_tx.send(true);
    });
    let ctx = Ctx {
        settings: Settings::new(&args),
        stop: stop_rx,
    };
    let wanted = |n: ScenarioName| args.name == n || args.name == ScenarioName::All;
    let mut results = Results {
        quick: ctx.settings.quick,
        run_s: ctx.settings.run.as_secs_f64(),
        ..Results::default()
    };
    let mut sections = Vec::new();
    let show = |section: Section, sections: &mut Vec<Section>| {
        print_section(&section);
        sections.push(section);
    };

    if wanted(ScenarioName::Lb) {
        let (result, section) = lb::run(&ctx).await.context("scenario lb")?;
        results.lb = Some(result);
        show(section, &mut sections);
    }
    if wanted(ScenarioName::Cache) {
        let (result, section) = cache::run(&ctx).await.context("scenario cache")?;
        results.cache = Some(result);
        show(section, &mut sections);
    }
    if wanted(ScenarioName::Scale) {
        let (result, section) = scale::run(&ctx).await.context("scenario scale")?;
        results.scale = Some(result);
        show(section, &mut sections);
    }
    if wanted(ScenarioName::Async) {
        let (result, section) = queued::run(&ctx).await.context("scenario async")?;
        results.queued = Some(result);
        show(section, &mut sections);
    }
    if wanted(ScenarioName::Elastic) {
        let (result, section) = elastic::run(&ctx).await.context("scenario elastic")?;
        results.elastic = Some(result);
        show(section, &mut sections);
    }
    if wanted(ScenarioName::Resilience) {
        let (result, section) = resilience::run(&ctx).await.context("scenario resilience")?;
        results.resilience = Some(result);
        show(section, &mut sections);
    }

    results.scorecard = scorecard(&ctx, &results);
    results.elapsed_s = started.elapsed().as_secs_f64();
    if args.name == ScenarioName::All || results.scorecard.len() > 1 {
        println!("\n== Tactic scorecard ==");
        for row in &results.scorecard {
            println!(
                "  {:<23} {}\n  {:<23} reproduce: {}",
                row.tactic, row.gain, "", row.command
            );
        }
    }
    println!("\n(scenarios took {:.0}s)", results.elapsed_s);

    let experiment = Experiment {
        title: "scalelab: what each tactic buys".into(),
        intro: format!(
            "scalelab bench scenario {}{}: each scenario started its own topology on free ports \
             on this machine ({} CPU cores), loaded it with scalelab's generator for {:.1} s per \
             run, and stopped it; the whole command took {:.0} s. Figures from a shared, noisy \
             machine are indicative: rerun the command to reproduce them.",
            name_of(args.name),
            ctx.settings.flags,
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            ctx.settings.run.as_secs_f64(),
            results.elapsed_s
        ),
        sections,
        scorecard: results.scorecard.clone(),
    };
    if let Some(dir) = &args.report {
        let page = experiment.write(dir)?;
        eprintln!("wrote {}", page.display());
    }
    if let Some(path) = &args.json {
        write_json(path, &results)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn name_of(name: ScenarioName) -> &'static str {
    match name {
        ScenarioName::Lb => "lb",
        ScenarioName::Cache => "cache",
        ScenarioName::Scale => "scale",
        ScenarioName::Async => "async",
        ScenarioName::Elastic => "elastic",
        ScenarioName::Resilience => "resilience",
        ScenarioName::All => "all",
    }
}

/// One row per tactic whose scenario ran.
fn scorecard(ctx: &Ctx, r: &Results) -> Vec<ScoreRow> {
    let mut rows = Vec::new();
    if let Some(lb) = &r.lb {
        rows.push(lb.score_row(ctx.command("lb")));
    }
    if let Some(cache) = &r.cache {
        rows.push(cache.score_row(ctx.command("cache")));
    }
    if let Some(scale) = &r.scale {
        rows.push(scale.score_row(ctx.command("scale")));
    }
    if let Some(queued) = &r.queued {
        rows.push(queued.score_row(ctx.command("async")));
    }
    if let Some(elastic) = &r.elastic {
        rows.push(elastic.score_row(ctx.command("elastic")));
    }
    if let Some(resilience) = &r.resilience {
        rows.push(resilience.score_row(ctx.command("resilience")));
    }
    rows
}

fn print_section(s: &Section) {
    println!("\n== {} ==\n{}", s.title, s.setup);
    print!("{}", s.table.to_text());
    for f in &s.findings {
        println!("  * {f}");
    }
    println!("  reproduce: {}", s.command);
}

fn write_json(path: &Path, results: &Results) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_vec_pretty(results)?)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The topology the scenarios start from: the built-in one with one auth instance (logins are
/// not what is measured) and cached values that outlive every run (so that hit ratios depend on
/// key popularity, not on expiry).
fn base_topology() -> anyhow::Result<Topology> {
    let mut topo = Topology::builtin()?;
    topo.instances.ports.insert("auth".into(), vec![0]);
    topo.gateway.cache_ttl_secs = 600;
    Ok(topo)
}

/// Progress on stderr (the figures go to stdout).
fn say(line: impl std::fmt::Display) {
    eprintln!("[scenario] {line}");
}

/// Milliseconds with a precision that suits the size.
fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Errors a client saw: failed requests plus answers with a 5xx or 4xx status.
fn client_errors(r: &Report) -> u64 {
    let bad: u64 = r
        .status_codes
        .iter()
        .filter(|(code, _)| !code.starts_with('2'))
        .map(|(_, n)| n)
        .sum();
    r.requests.failed + bad
}

/// `(id, count)` pairs of a report's instance or field counts.
fn counts(shares: &[bench::report::InstanceShare]) -> Vec<(String, u64)> {
    shares.iter().map(|s| (s.id.clone(), s.count)).collect()
}
