//! `scalelab`: the one binary. It parses arguments, loads the topology, sets up logging and hands
//! over to a crate: `up` runs the whole topology under the [`supervisor`], `serve ROLE` runs one
//! instance, `config` prints the default topology (or, with `--check FILE`, validates every role's
//! section of a file as `up` does before starting anything), `bench` runs the load generator.
//!
//! This is the only crate that reads argv, environment variables and files.

mod control;
mod scenario;
mod serve;
mod shards;
mod topology;
mod up;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

/// mimalloc rather than glibc's allocator: the proxy and the gateways allocate and free small
/// buffers on every request, and glibc's malloc/free were about a tenth of the balancer's profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// scalelab: a horizontally scalable system you can run, read and measure.
#[derive(Debug, Parser)]
#[command(name = "scalelab", version, about, long_about = None)]
struct Cli {
    /// Log line format of this process (and, under `up`, of every instance).
    #[arg(long, value_enum, default_value_t = LogFormatArg::Text, global = true)]
    log_format: LogFormatArg,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the whole topology on this machine: every instance as a child process, supervised.
    Up(up::UpArgs),
    /// Run one instance of one role (what `up` runs, and what a deployment runs).
    Serve(serve::ServeArgs),
    /// Print the default topology file, every field documented; or check a topology file.
    Config {
        /// Print the effective topology instead: FILE (or the default) with derived URLs filled in.
        #[arg(long)]
        effective: bool,
        /// A topology file to read instead of the built-in one (with --effective).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Lay a preset over the topology and print the result (`casitas`).
        #[arg(long, value_enum, conflicts_with = "check")]
        preset: Option<topology::Preset>,
        /// Check FILE as `scalelab up` would before starting anything (every role's section,
        /// every problem with its path) and exit non-zero if there is any.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["effective", "config"])]
        check: Option<PathBuf>,
        /// Print the gateway's route table instead (token rule, role, guests, rate limit of every
        /// route) as the topology (--config, or the default) applies it.
        #[arg(long, conflicts_with_all = ["effective", "check"])]
        routes: bool,
        /// With --routes: JSON instead of a table.
        #[arg(long, requires = "routes")]
        json: bool,
    },
    /// The instances of the running `up` (of this data directory): role, id, url, pid, state.
    Status {
        #[command(flatten)]
        target: control::Target,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Skip measuring each instance's load (req/s and in flight take a second to measure).
        #[arg(long)]
        no_load: bool,
    },
    /// Start or drain instances of the running `up` until each role has its count
    /// (`scalelab scale gateway=4 service=2`); new instances join their pools once healthy,
    /// removed ones drain first, so no client sees an error.
    Scale {
        #[command(flatten)]
        target: control::Target,
        /// `ROLE=COUNT`, for gateway, service, auth or worker.
        #[arg(required = true, value_name = "ROLE=COUNT")]
        counts: Vec<String>,
    },
    /// Drain one instance (no new requests; stopped once drained).
    Drain {
        #[command(flatten)]
        target: control::Target,
        /// The instance id, like gateway-3.
        id: String,
    },
    /// SIGKILL one instance (the crash demo: the supervisor restarts it).
    Kill {
        #[command(flatten)]
        target: control::Target,
        /// The instance id, like gateway-3.
        id: String,
    },
    /// GET a URL and exit 0 on a 2xx answer within two seconds, 1 otherwise (a container's
    /// HEALTHCHECK: `scalelab probe http://127.0.0.1:5000/health`).
    Probe {
        /// The URL to GET.
        url: String,
    },
    /// Load generator: send requests to a URL and report latency, throughput and distribution.
    Bench(Box<bench::BenchArgs>),
    /// The users service's shards: what a new shard count would move.
    Shards(shards::ShardsArgs),
}

fn main() -> std::process::ExitCode {
    // First, while this is the only thread: reading the handed-over sockets clears their variables.
    let mut handed = listenfd::ListenFd::from_env();
    let cli = Cli::parse();
    common::telemetry::init(match cli.log_format {
        LogFormatArg::Text => common::telemetry::LogFormat::Text,
        LogFormatArg::Json => common::telemetry::LogFormat::Json,
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => up::run(args).await,
            Command::Serve(args) => match handed.take_tcp_listener(0) {
                Ok(listener) => serve::run(args, listener).await,
                Err(e) => Err(anyhow::anyhow!(
                    "the socket handed over on descriptor 3 (LISTEN_FDS) is not a TCP listener: {e}"
                )),
            },
            Command::Config {
                effective,
                config,
                preset,
                check,
                routes,
                json,
            } => match check {
                Some(file) => check_config(&file),
                None if routes => print_routes(config, preset, json),
                None => print_config(effective, config, preset),
            },
            Command::Status {
                target,
                json,
                no_load,
            } => control::status(target, json, no_load).await,
            Command::Scale { target, counts } => control::scale(target, counts).await,
            Command::Drain { target, id } => control::instance(target, id, "drain").await,
            Command::Kill { target, id } => control::instance(target, id, "kill").await,
            Command::Probe { url } => probe(&url).await,
            Command::Bench(args) => bench_cmd(*args).await,
            Command::Shards(args) => shards::run(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `scalelab probe URL`.
async fn probe(url: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(2))
        .build()?;
    let status = http
        .get(url)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{url}: {e}"))?
        .status();
    anyhow::ensure!(status.is_success(), "{url} answered {status}");
    Ok(())
}

fn print_config(
    effective: bool,
    path: Option<PathBuf>,
    preset: Option<topology::Preset>,
) -> anyhow::Result<()> {
    if !effective {
        let text = topology::Topology::text(path.as_deref(), preset)?;
        // A preset's result is checked before it is printed: what is shown is what `up` runs.
        if preset.is_some() {
            topology::Topology::parse(&text)?.check()?;
            stdout(&format!(
                "# scalelab's topology with the {} preset laid over it (presets/*.toml)\n\n",
                preset
                    .and_then(|p| clap::ValueEnum::to_possible_value(&p))
                    .map(|v| v.get_name().to_string())
                    .unwrap_or_default()
            ))?;
        }
        return stdout(&text);
    }
    let mut t = topology::Topology::load_with(path.as_deref(), preset)?;
    t.resolve(None);
    stdout(&t.to_toml()?)?;
    Ok(())
}

/// `scalelab config --routes [--config FILE] [--json]`: the gateway's route table, with the file's
/// role and rate limit overrides applied.
fn print_routes(
    path: Option<PathBuf>,
    preset: Option<topology::Preset>,
    json: bool,
) -> anyhow::Result<()> {
    let mut t = topology::Topology::load_with(path.as_deref(), preset)?;
    // The URLs decide which of the preset's routes exist.
    t.resolve(None);
    let rows = gateway::route_table(&t.gateway);
    if json {
        return stdout(&(serde_json::to_string_pretty(&rows)? + "\n"));
    }
    let cell = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let table: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            let role = match (&r.role, r.role_applies.as_str()) {
                (Some(role), "always") => role.clone(),
                (Some(role), applies) => format!("{role} ({applies})"),
                (None, _) => "-".into(),
            };
            [
                format!("{} {}", r.method, r.path),
                r.token.clone(),
                role,
                if r.guests { "yes" } else { "no" }.into(),
                cell(&r.bucket),
                cell(&r.limit),
                r.summary.clone(),
            ]
        })
        .collect();
    let head = [
        "ROUTE", "TOKEN", "ROLE", "GUESTS", "BUCKET", "LIMIT", "WHAT",
    ];
    let mut widths = head.map(str::len);
    for row in &table {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let mut text = String::new();
    let mut line = |cells: &[&str]| {
        let mut out = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  "));
            }
        }
        text.push_str(out.trim_end());
        text.push('\n');
    };
    line(&head);
    for row in &table {
        line(&row.iter().map(String::as_str).collect::<Vec<_>>());
    }
    stdout(&text)
}

/// Writes `text` to standard output. A reader that went away (`scalelab config | head`) is not an
/// error: the output was not wanted any further.
fn stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// `scalelab config --check FILE`: the checks of `scalelab up`, without starting anything.
fn check_config(file: &std::path::Path) -> anyhow::Result<()> {
    let mut topo = topology::Topology::load(Some(file))?;
    topo.secrets_from_env();
    topo.check()
        .with_context(|| format!("in the topology file {}", file.display()))?;
    println!(
        "{}: ok ({} instances)",
        file.display(),
        topo.instances().len()
    );
    Ok(())
}

async fn bench_cmd(args: bench::BenchArgs) -> anyhow::Result<()> {
    // Scenarios start topologies, which only this crate can do; the rest is the bench crate's.
    if let Some(bench::BenchCommand::Scenario(s)) = args.command {
        return scenario::run(s, shutdown_signal()).await;
    }
    bench::dispatch(args, shutdown_signal()).await?;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
        () = supervisor_gone() => {
            tracing::warn!("the supervisor (scalelab up) is gone; stopping");
        }
    }
}

use supervisor::SUPERVISOR_PID_ENV;

/// Resolves when the process that started this one as `up`'s child is no longer its parent (it
/// died, even by SIGKILL, and this process was handed to another parent); never for a process not
/// started by `up`. A watch rather than a parent-death signal: that signal follows the parent's
/// *thread*, and `up` spawns from runtime threads that may come and go.
async fn supervisor_gone() {
    let supervisor = std::env::var(SUPERVISOR_PID_ENV)
        .ok()
        .and_then(|v| v.parse::<i32>().ok());
    let Some(supervisor) = supervisor else {
        return std::future::pending().await;
    };
    loop {
        if nix::unistd::getppid().as_raw() != supervisor {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
