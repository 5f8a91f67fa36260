//! The command line face: [`BenchArgs`] (`scalelab bench URL... [options]`) and its subcommands.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

/// `scalelab bench`: load an HTTP target and report latency, throughput, status codes, errors,
/// the spread over instances (`X-Served-By`) and the cache outcome (`X-Cache`).
#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct BenchArgs {
    /// `compare A.json B.json`; without a subcommand, run a benchmark against URL.
    #[command(subcommand)]
    pub command: Option<BenchCommand>,

    /// Target URLs (http:// only), used round robin. Placeholders in the path and query:
    /// `{seq}` (1, 2, 3, ...), `{uniform:N}` and `{zipf:N}` (a key in 1..=N, Zipf with s = 1),
    /// e.g. `http://127.0.0.1:8000/data?key=key-{zipf:1000}`.
    #[arg(value_name = "URL", required = true)]
    pub urls: Vec<String>,

    /// Concurrent keep-alive connections, each with one request in flight at a time.
    #[arg(short = 'c', long, default_value_t = 50)]
    pub connections: usize,

    /// Open model: send this many requests per second in all (spread over the connections) and
    /// measure latency from each request's intended send time. Without it: closed model.
    #[arg(short = 'r', long)]
    pub rate: Option<f64>,

    /// How long to send (`10s`, `500ms`, `2m`). Default 10s unless `-n` is given.
    #[arg(short = 'd', long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Send this many requests in all, then stop.
    #[arg(short = 'n', long = "requests", value_name = "COUNT")]
    pub requests: Option<u64>,

    /// HTTP method.
    #[arg(short = 'm', long, default_value = "GET")]
    pub method: String,

    /// Extra header `Name: value`; repeatable.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,

    /// Request body (sent as application/json unless a Content-Type header is given).
    #[arg(long, conflicts_with = "body_file")]
    pub body: Option<String>,

    /// Read the request body from this file.
    #[arg(long, value_name = "FILE")]
    pub body_file: Option<PathBuf>,

    /// Send `Authorization: Bearer TOKEN`.
    #[arg(long, conflicts_with = "login")]
    pub token: Option<String>,

    /// Log in first (`POST {first URL's host}/login` with `{"username","password"}`) and send
    /// the returned token as a bearer token.
    #[arg(long, value_name = "USER:PASS")]
    pub login: Option<String>,

    /// A request not answered in full within this long counts as a timeout error.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub timeout: Duration,

    /// Count the values of this top-level JSON field of the answers' bodies (e.g. `service_id`
    /// to see the spread over the services behind the gateways). Costs a JSON parse per answer.
    #[arg(long, value_name = "NAME")]
    pub count_field: Option<String>,

    /// Print a progress line on stderr every second even when stderr is not a terminal.
    #[arg(long)]
    pub progress: bool,

    /// Write the full report as JSON (schema: crates/bench/schema/report.schema.json).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Write a self-contained HTML report with charts to DIR/index.html.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
}

/// Subcommands of `scalelab bench`.
#[derive(Debug, Clone, Subcommand)]
pub enum BenchCommand {
    /// Print two JSON reports side by side (and plot them with `--report DIR`).
    Compare(CompareArgs),
    /// Run an experiment on its own topology and report what a tactic buys (`lb`, `cache`,
    /// `scale`, `async` or `all`). Needs the `scalelab` binary, which starts the topologies.
    Scenario(ScenarioArgs),
}

/// Which experiment `scalelab bench scenario` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScenarioName {
    /// Load balancing: spread over gateways and services, one gateway killed mid-run.
    Lb,
    /// Caching: cold vs warm, hit vs miss latency, Zipf hit ratio, local vs shared cache.
    Cache,
    /// Scaling out: `/process` throughput and p99 with 1, 2 and 3 service instances.
    Scale,
    /// Synchronous vs queued work (needs the task queue).
    Async,
    /// Elasticity: a load ramp ×5 and back, gateways and services autoscaling (and not, beside it).
    Elastic,
    /// Resilience: latency-aware selection (round robin, least connections, P2C, Peak-EWMA over a
    /// slow and a fast backend), the retry budget, and one service made slow and failing with
    /// the fuses (breaker, outlier ejection, retry budget) on and off.
    Resilience,
    /// Every scenario, one report, ending in the tactic scorecard.
    All,
}

/// `scalelab bench scenario NAME [--report DIR] [--json FILE] [--duration D] [--quick]`.
#[derive(Debug, Clone, Args)]
pub struct ScenarioArgs {
    /// The experiment.
    #[arg(value_enum)]
    pub name: ScenarioName,
    /// Write the HTML report (sections with inline SVG charts, the scorecard) to DIR/index.html.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// Write the scenario results as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Length of each measured run (default 10s; 1.5s with --quick).
    #[arg(short = 'd', long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Short runs and fewer keys: checks that everything works (tests), figures are rough.
    #[arg(long)]
    pub quick: bool,
}

/// `scalelab bench compare A.json B.json [--report DIR]`.
#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// The baseline run (`--json` output).
    pub a: PathBuf,
    /// The run compared with it.
    pub b: PathBuf,
    /// Write an HTML page with both runs' charts to DIR/index.html.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
}

/// Parses `250ms`, `10s`, `2m`, `1h` or a plain number of seconds (fractions allowed).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{s}`: expected a duration like 500ms, 10s or 2m"))?;
    let seconds = match unit.trim() {
        "us" => value / 1e6,
        "ms" => value / 1e3,
        "s" | "sec" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("`{s}`: unknown unit `{other}` (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("`{s}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Parser, Subcommand};

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Top,
    }

    #[derive(Subcommand)]
    enum Top {
        Bench(BenchArgs),
    }

    fn bench(argv: &[&str]) -> BenchArgs {
        let Top::Bench(args) = Cli::try_parse_from(argv).unwrap().command;
        args
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("3 weeks").is_err());
    }

    #[test]
    fn run_arguments() {
        let a = bench(&[
            "scalelab",
            "bench",
            "http://127.0.0.1:8000/x",
            "http://127.0.0.1:8000/y",
            "-c",
            "8",
            "--rate",
            "100",
            "-d",
            "5s",
            "-H",
            "X-A: 1",
            "-H",
            "X-B: 2",
            "-m",
            "POST",
            "--body",
            "{}",
            "--json",
            "out.json",
        ]);
        assert!(a.command.is_none());
        assert_eq!(a.urls.len(), 2);
        assert_eq!(a.connections, 8);
        assert_eq!(a.rate, Some(100.0));
        assert_eq!(a.duration, Some(Duration::from_secs(5)));
        assert_eq!(a.headers, ["X-A: 1", "X-B: 2"]);
        assert_eq!(a.method, "POST");
    }

    #[test]
    fn compare_subcommand() {
        let a = bench(&[
            "scalelab", "bench", "compare", "a.json", "b.json", "--report", "r",
        ]);
        let Some(BenchCommand::Compare(c)) = a.command else {
            panic!("expected compare")
        };
        assert_eq!(c.a, PathBuf::from("a.json"));
        assert_eq!(c.report, Some(PathBuf::from("r")));
    }

    #[test]
    fn scenario_subcommand() {
        let a = bench(&[
            "scalelab", "bench", "scenario", "all", "--quick", "--report", "out",
        ]);
        let Some(BenchCommand::Scenario(s)) = a.command else {
            panic!("expected scenario")
        };
        assert_eq!(s.name, ScenarioName::All);
        assert!(s.quick);
        assert_eq!(s.report, Some(PathBuf::from("out")));
        assert!(Cli::try_parse_from(["scalelab", "bench", "scenario", "nope"]).is_err());
    }

    #[test]
    fn a_url_is_required_without_subcommand() {
        assert!(Cli::try_parse_from(["scalelab", "bench"]).is_err());
        assert!(
            Cli::try_parse_from([
                "scalelab", "bench", "--token", "t", "--login", "a:b", "http://x"
            ])
            .is_err()
        );
    }
}
