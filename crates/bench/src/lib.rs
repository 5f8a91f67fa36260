//! `bench`: scalelab's load generator and its reports. It treats the system as a black box: any
//! `http://` URL, one keep-alive HTTP/1.1 connection (spoken by `h1.rs` on the connection's own
//! task) per virtual connection, a closed model (`-c N`, back to back) or an open model (`--rate R`, latency from
//! each request's intended send time, corrected for coordinated omission as wrk2 does).
//!
//! Start with [`execute`] (the library entry: a [`Plan`] of what to send, a [`RunConfig`] of how,
//! a stop future, and back comes a [`Report`]), then `engine.rs` (the connection tasks and the
//! aggregator), `h1.rs` (the HTTP/1.1 client: one write per request, answers parsed with
//! `httparse` into a reused buffer), `report.rs` (what is measured; HDR histograms in microseconds, 3 significant
//! digits), `summary.rs` (the text table) and `html.rs` (the HTML report with SVG charts).
//! The command line face is [`BenchArgs`], run by [`dispatch`] (or [`run`] and [`compare`]).
//! `experiment.rs` renders the multi-run report of `scalelab bench scenario` from plain numbers
//! (the scenarios themselves live in the `cli` crate, which can start topologies).
//! The JSON layout is described by `schema/report.schema.json` and the crate's README.

mod args;
mod engine;
mod error;
pub mod experiment;
mod h1;
pub mod html;
mod plan;
pub mod report;
pub mod summary;
pub mod template;

use std::future::Future;
use std::io::IsTerminal;
use std::path::Path;

pub use args::{BenchArgs, BenchCommand, CompareArgs, ScenarioArgs, ScenarioName, parse_duration};
pub use engine::execute;
pub use error::Error;
pub use plan::{Load, Plan, RunConfig};
pub use report::Report;

/// The JSON Schema of [`Report`]'s JSON form (draft 2020-12).
pub const REPORT_SCHEMA: &str = include_str!("../schema/report.schema.json");

/// Runs `scalelab bench` as parsed: a benchmark, or the `compare` subcommand. This is what the
/// `cli` crate calls; output goes to stdout (summary) and stderr (progress, written files).
/// `scenario` starts topologies, which only the binary can do: the caller handles it before
/// calling this (here it is an error).
pub async fn dispatch(args: BenchArgs, stop: impl Future<Output = ()>) -> Result<(), Error> {
    match &args.command {
        Some(BenchCommand::Compare(c)) => compare(c),
        Some(BenchCommand::Scenario(_)) => Err(Error::Args(
            "`bench scenario` is run by the scalelab binary, not by bench::dispatch".into(),
        )),
        None => run(args, stop).await.map(drop),
    }
}

/// Builds the [`Plan`] a command line asks for (logging in first with `--login`).
pub async fn plan_from_args(args: &BenchArgs) -> Result<Plan, Error> {
    let method = http::Method::from_bytes(args.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| Error::Args(format!("bad method `{}`", args.method)))?;
    let mut plan = Plan::new(method, &args.urls)?;
    if let Some(field) = &args.count_field {
        plan = plan.count_field(field);
    }
    for line in &args.headers {
        plan = plan.header_line(line)?;
    }
    if let Some(body) = &args.body {
        plan = plan.body(body.clone().into_bytes());
    } else if let Some(path) = &args.body_file {
        let body = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        plan = plan.body(body);
    }
    if let Some(token) = &args.token {
        plan = plan.bearer(token)?;
    } else if let Some(login) = &args.login {
        let (user, pass) = login
            .split_once(':')
            .ok_or_else(|| Error::Args("--login expects USER:PASS".into()))?;
        let token = engine::login(&args.urls[0], user, pass).await?;
        plan = plan.bearer(&token)?;
    }
    Ok(plan)
}

/// The [`RunConfig`] a command line asks for.
pub fn config_from_args(args: &BenchArgs) -> RunConfig {
    RunConfig {
        connections: args.connections,
        load: match args.rate {
            Some(rate) => Load::Open { rate },
            None => Load::Closed,
        },
        duration: args.duration,
        requests: args.requests,
        timeout: args.timeout,
        progress: args.progress || std::io::stderr().is_terminal(),
    }
}

/// Runs one benchmark from the command line: prints the summary on stdout, writes `--json` and
/// `--report` if asked, and returns the report. `stop` resolving (wire it to Ctrl-C) ends the run
/// early; the report is still printed and written.
pub async fn run(args: BenchArgs, stop: impl Future<Output = ()>) -> Result<Report, Error> {
    if args.command.is_some() {
        return Err(Error::Args(
            "run() benchmarks a URL; use dispatch() for subcommands".into(),
        ));
    }
    let plan = plan_from_args(&args).await?;
    let report = execute(plan, config_from_args(&args), stop).await?;
    print!("{}", summary::render(&report));
    if let Some(path) = &args.json {
        write_json(path, &report)?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(dir) = &args.report {
        let page = html::write_report(dir, &report)?;
        eprintln!("wrote {}", page.display());
    }
    Ok(report)
}

/// `compare A.json B.json`: prints both runs side by side with deltas, and writes the HTML
/// comparison with `--report DIR`.
pub fn compare(args: &CompareArgs) -> Result<(), Error> {
    let a = read_json(&args.a)?;
    let b = read_json(&args.b)?;
    let (a_name, b_name) = (args.a.display().to_string(), args.b.display().to_string());
    print!("{}", summary::render_comparison(&a_name, &a, &b_name, &b));
    if let Some(dir) = &args.report {
        let page = html::write_comparison(dir, &a_name, &a, &b_name, &b)?;
        eprintln!("wrote {}", page.display());
    }
    Ok(())
}

/// Writes a report as pretty JSON.
pub fn write_json(path: &Path, report: &Report) -> Result<(), Error> {
    let json = serde_json::to_vec_pretty(report).map_err(|source| Error::Json {
        path: path.to_owned(),
        source,
    })?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::write(path, json).map_err(|e| Error::io(path, e))
}

/// Reads a report written by [`write_json`].
pub fn read_json(path: &Path) -> Result<Report, Error> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|source| Error::Json {
        path: path.to_owned(),
        source,
    })
}
