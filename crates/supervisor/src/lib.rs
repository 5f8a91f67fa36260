//! The process supervisor behind `scalelab up`: starts every instance of the topology as a child
//! process, waits until each answers its health check, restarts the ones that die, and stops them all in
//! reverse order on Ctrl-C, SIGTERM or SIGHUP. Each child watches its supervisor
//! (`SCALELAB_SUPERVISOR_PID`) and stops by itself if `up` is gone (SIGKILLed), so no instance is
//! left orphaned holding its port.
//!
//! Start reading at [`run`]. Each child is owned by one task ([`child::supervise`]) for its whole life:
//! that task spawns it, waits for its health, restarts it with backoff when it exits, and on a stop
//! request sends it SIGTERM and, after the grace period, SIGKILL. Because only the owning task signals
//! a child and it does so before reaping it, a signal can never reach a recycled pid.
//!
//! Invariants:
//! - Nothing is started unless every port is free (checked by binding `127.0.0.1:PORT` first).
//! - Roles start in the order the caller gives them, each role's instances healthy before the next
//!   role is spawned; shutdown goes the other way (the balancer stops before the gateways behind it).
//! - Once shutdown has begun, no child is restarted.
//! - A stop is clean only if every child exits with status 0 on SIGTERM within the grace period;
//!   otherwise [`run`] fails naming each child that needed SIGKILL or exited otherwise, so `up`
//!   exits non-zero.
//! - Every line a child writes is printed whole, prefixed with its instance id (`gateway-1 | ...`).

pub mod autoscale;
mod child;
pub mod control;
pub mod fleet;
pub mod guard;
mod ops;
mod output;
pub mod ports;
mod registry;
pub mod scaler;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use futures::future::join_all;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use fleet::{Elastic, Event, Fleet, InstanceStatus, SpecFactory, State};
use output::Logger;
use registry::Registry;

/// The environment variable by which the supervisor tells each child its pid (the child stops by
/// itself when its parent is no longer that process).
pub const SUPERVISOR_PID_ENV: &str = "SCALELAB_SUPERVISOR_PID";

/// One instance for the supervisor to run: which program, with what arguments, and where it answers.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    /// The role (`gateway`, `lb`, ...): shown in the table and in `instances.json`. Consecutive specs
    /// with the same role are started together and stopped together.
    pub role: String,
    /// The instance id (`gateway-1`), the prefix of every line the child prints.
    pub id: String,
    /// The port the child listens on; checked to be free before anything starts.
    pub port: u16,
    /// Base URL of the instance (`http://127.0.0.1:5000`).
    pub url: String,
    /// The path that must answer 200 for the instance to count as healthy, normally `/health` (the
    /// balancer proxies `/health`, so its own is under its admin prefix).
    pub health_path: String,
    /// The program to run, normally `std::env::current_exe()`.
    pub program: PathBuf,
    /// Its arguments, e.g. `serve gateway --id gateway-1 --port 5000 --config ... --data-dir ...`.
    pub args: Vec<String>,
    /// Extra environment variables, on top of the inherited environment.
    pub env: Vec<(String, String)>,
    /// `Some(host)`: the supervisor binds `host:port` itself and hands the listening socket to the
    /// child (systemd's socket-activation protocol: descriptor 3, `LISTEN_FDS=1`). The port is then
    /// held from the check before anything starts until the child serves on it, so no other
    /// process (an outgoing connection's ephemeral port, a second `up`) can take it in between.
    /// `None`: the child binds its own port.
    pub listen_host: Option<String>,
}

impl ChildSpec {
    /// `url` + `health_path`, e.g. `http://127.0.0.1:5000/health`.
    fn health_url(&self) -> String {
        let path = self.health_path.trim_start_matches('/');
        format!("{}/{path}", self.url.trim_end_matches('/'))
    }
}

/// How the supervisor waits, restarts and reports. `Default` gives the values `scalelab up` uses.
#[derive(Debug, Clone)]
pub struct SupervisorOptions {
    /// How long a child may take to answer `GET /health` with 200 after it was spawned.
    pub start_timeout: Duration,
    /// How long shutdown waits, in total, for the children to exit after SIGTERM before SIGKILL.
    pub grace: Duration,
    /// Delay before the first restart of a child that exited; doubled on each further failure.
    pub backoff_base: Duration,
    /// The largest restart delay.
    pub backoff_max: Duration,
    /// A child that stayed up this long is considered good again: its next restart is immediate-ish
    /// (`backoff_base`).
    pub backoff_reset: Duration,
    /// Interval between two `GET /health` polls while waiting for a child.
    pub health_interval: Duration,
    /// Print the table of instances (and the hints) once everything is healthy.
    pub print_table: bool,
    /// Lines printed after the table, e.g. curl commands to try.
    pub hints: Vec<String>,
    /// Where to write `instances.json` (`[{"role","id","url","port","pid"}]`), rewritten on restarts.
    pub instances_file: Option<PathBuf>,
    /// Stop on SIGINT and SIGTERM (in addition to the caller's shutdown future).
    pub handle_signals: bool,
    /// Where output lines go; `None` prints them to stdout. Tests collect them here.
    pub log: Option<mpsc::UnboundedSender<String>>,
    /// The control API (`control.rs`) on this listener, and how the fleet may change; `None`: the
    /// instances are fixed.
    pub control: Option<Control>,
}

/// Where the control API listens and what it may change.
#[derive(Debug, Clone)]
pub struct Control {
    /// Bound by the caller (loopback), so that its address can be written before anything starts.
    pub listener: Arc<std::net::TcpListener>,
    /// Scaling, draining and killing.
    pub elastic: Elastic,
    /// The deployment's service credential, sent to auth when checking an admin credential.
    pub service_token: Option<String>,
}

impl Default for SupervisorOptions {
    fn default() -> Self {
        Self {
            start_timeout: Duration::from_secs(60),
            grace: Duration::from_secs(10),
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            backoff_reset: Duration::from_secs(30),
            health_interval: Duration::from_millis(50),
            print_table: true,
            hints: Vec::new(),
            instances_file: None,
            handle_signals: true,
            log: None,
            control: None,
        }
    }
}

/// What every child's task shares.
pub(crate) struct Ctx {
    pub(crate) opts: SupervisorOptions,
    /// Where every line goes (stdout or the caller's channel), one whole line at a time.
    pub(crate) log: Logger,
    /// Width of the id column of log lines, so that the `|` separators line up.
    id_width: usize,
    /// One client for all health checks (no proxy, no pooled connections to children that may die).
    http: reqwest::Client,
    /// The pids behind `instances.json`.
    pub(crate) registry: Registry,
    /// Becomes true when shutdown begins; from then on no child is restarted.
    shutting_down: watch::Receiver<bool>,
}

/// A running child task, as seen from [`run`].
pub(crate) struct Supervised {
    pub(crate) id: String,
    /// Tells the task to stop its child, with the instant after which it uses SIGKILL.
    pub(crate) stop: oneshot::Sender<Instant>,
    /// Ends with what made the child's stop unclean, if anything did.
    pub(crate) task: JoinHandle<Option<String>>,
}

/// Runs `specs` until SIGINT, SIGTERM or `shutdown`, then stops them and returns `Ok` if every
/// child exited with status 0 within the grace period.
///
/// Returns an error, after stopping whatever it started, if a port is taken, a child cannot be spawned,
/// a child exits or stays unhealthy during start-up, or the stop was not clean: the error names
/// every child that needed SIGKILL or exited with another status than 0.
pub async fn run(
    specs: Vec<ChildSpec>,
    opts: SupervisorOptions,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let reserved = reserve_ports(&specs)?;
    let (log, printer) = output::logger(opts.log.clone());
    let result = run_checked(specs, reserved, opts, shutdown, log).await;
    // Let the children's last lines reach stdout before the process exits.
    printer.finish(Duration::from_secs(2)).await;
    result
}

async fn run_checked(
    specs: Vec<ChildSpec>,
    mut reserved: HashMap<String, std::net::TcpListener>,
    opts: SupervisorOptions,
    shutdown: impl Future<Output = ()>,
    log: Logger,
) -> anyhow::Result<()> {
    let mut sigint = install(opts.handle_signals, SignalKind::interrupt())?;
    let mut sigterm = install(opts.handle_signals, SignalKind::terminate())?;
    // Closing the terminal sends SIGHUP: stop in order, as for SIGTERM, rather than die and leave
    // every instance running and holding its port.
    let mut sighup = install(opts.handle_signals, SignalKind::hangup())?;
    let stop_requested = async {
        tokio::select! {
            () = shutdown => "shutdown requested",
            () = recv(&mut sigint) => "SIGINT received",
            () = recv(&mut sigterm) => "SIGTERM received",
            () = recv(&mut sighup) => "SIGHUP received (terminal closed)",
        }
    };
    tokio::pin!(stop_requested);

    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(2))
        .build()
        .context("building the health-check client")?;
    let (shutting_tx, shutting_rx) = watch::channel(false);
    let ctx = Arc::new(Ctx {
        id_width: specs.iter().map(|s| s.id.len()).max().unwrap_or(0),
        registry: Registry::new(&specs, opts.instances_file.clone()),
        opts,
        log,
        http,
        shutting_down: shutting_rx,
    });

    let elastic = ctx.opts.control.as_ref().map(|c| c.elastic.clone());
    let fleet = Fleet::new(&specs, Arc::clone(&ctx), elastic);
    // The control API serves from the start: pools read their membership from it as they start.
    let _control = match &ctx.opts.control {
        Some(control) => Some(serve_control(control, fleet.clone())?),
        None => None,
    };

    let started_at = Instant::now();
    for group in role_groups(&specs) {
        let mut readies = Vec::new();
        for spec in group {
            let (ready_tx, ready_rx) = oneshot::channel();
            let (stop_tx, stop_rx) = oneshot::channel();
            let task = tokio::spawn(child::supervise(
                spec.clone(),
                reserved.remove(&spec.id),
                Arc::clone(&ctx),
                ready_tx,
                stop_rx,
            ));
            readies.push(ready_rx);
            fleet.attach(
                &spec.id,
                Supervised {
                    id: spec.id.clone(),
                    stop: stop_tx,
                    task,
                },
            );
        }

        let outcome = tokio::select! {
            biased;
            reason = &mut stop_requested => Err(Ok(reason)),
            results = join_all(readies) => first_failure(results).map_err(Err),
        };
        match outcome {
            Ok(()) => {
                for spec in group {
                    fleet.set_state(&spec.id, State::Active);
                }
            }
            Err(Ok(reason)) => {
                let unclean = stop_all(&ctx, fleet.close(), &shutting_tx, reason).await;
                return verdict(unclean);
            }
            Err(Err(message)) => {
                ctx.log.line(format!("[up] {message}"));
                stop_all(&ctx, fleet.close(), &shutting_tx, "start-up failed").await;
                bail!(message);
            }
        }
    }

    ctx.registry
        .publish()
        .context("writing the instances file")?;
    if ctx.opts.print_table {
        print_table(&ctx, &specs);
    }
    ctx.log.line(format!(
        "[up] {} instances healthy in {:.1?}; Ctrl-C stops them",
        specs.len(),
        started_at.elapsed()
    ));

    // The autoscalers start once everything is up, and stop with the fleet.
    let _scalers: Vec<AbortOnDrop> = fleet
        .autoscaled()
        .into_iter()
        .map(|(role, policy)| AbortOnDrop(tokio::spawn(scaler::run(fleet.clone(), role, policy))))
        .collect();
    let reason = stop_requested.await;
    let unclean = stop_all(&ctx, fleet.close(), &shutting_tx, reason).await;
    verdict(unclean)
}

/// Serves the control API on `control`'s listener until the returned task is dropped.
fn serve_control(control: &Control, fleet: Fleet) -> anyhow::Result<AbortOnDrop> {
    let std_listener = control
        .listener
        .try_clone()
        .context("the control API's listener")?;
    std_listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    let guard = guard::AdminGuard::for_addr(listener.local_addr()?, control.service_token.clone());
    let app = control::router(fleet, guard);
    Ok(AbortOnDrop(tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    })))
}

/// Aborts a task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `Ok` for a clean stop, otherwise an error naming each child whose stop was not clean.
fn verdict(unclean: Vec<String>) -> anyhow::Result<()> {
    if unclean.is_empty() {
        return Ok(());
    }
    bail!("not every instance stopped cleanly: {}", unclean.join("; "))
}

/// Fails with a message naming the port, role and id if a port is taken (or given twice). Returns,
/// by instance id, the listening sockets of the children that take theirs from the supervisor
/// ([`ChildSpec::listen_host`]), held until each child's first start.
fn reserve_ports(specs: &[ChildSpec]) -> anyhow::Result<HashMap<String, std::net::TcpListener>> {
    let mut reserved = HashMap::new();
    let mut seen: HashMap<u16, &ChildSpec> = HashMap::new();
    for spec in specs {
        if spec.port == 0 {
            bail!(
                "{} ({}) has port 0; every instance needs a fixed port",
                spec.id,
                spec.role
            );
        }
        if let Some(other) = seen.insert(spec.port, spec) {
            bail!(
                "port {} is given to both {} ({}) and {} ({})",
                spec.port,
                other.id,
                other.role,
                spec.id,
                spec.role
            );
        }
        let host = spec.listen_host.as_deref().unwrap_or("127.0.0.1");
        match std::net::TcpListener::bind((host, spec.port)) {
            Ok(listener) if spec.listen_host.is_some() => {
                reserved.insert(spec.id.clone(), listener);
            }
            Ok(listener) => drop(listener),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => bail!(
                "port {} ({} {}) is already in use",
                spec.port,
                spec.role,
                spec.id
            ),
            Err(e) => bail!(
                "cannot bind port {} ({} {}): {e}",
                spec.port,
                spec.role,
                spec.id
            ),
        }
    }
    Ok(reserved)
}

/// Splits `specs` into runs of consecutive specs with the same role, in order.
fn role_groups(specs: &[ChildSpec]) -> Vec<&[ChildSpec]> {
    specs.chunk_by(|a, b| a.role == b.role).collect::<Vec<_>>()
}

/// The first start-up failure among a group's ready reports, if any.
fn first_failure(
    results: Vec<Result<Result<(), String>, oneshot::error::RecvError>>,
) -> Result<(), String> {
    for result in results {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(message)) => return Err(message),
            Err(_) => return Err("a supervisor task ended unexpectedly".to_owned()),
        }
    }
    Ok(())
}

/// Stops every child, the last-started role first, within one shared grace period. Returns what
/// made each unclean stop unclean (SIGKILL needed, another status than 0), in stop order.
async fn stop_all(
    ctx: &Ctx,
    groups: Vec<Vec<Supervised>>,
    shutting: &watch::Sender<bool>,
    reason: &str,
) -> Vec<String> {
    // Set first, so that no task restarts a child that exits while others are being stopped.
    shutting.send_replace(true);
    let count: usize = groups.iter().map(Vec::len).sum();
    ctx.log.line(format!(
        "[up] {reason}: stopping {count} instances (grace {:?})",
        ctx.opts.grace
    ));
    let deadline = Instant::now() + ctx.opts.grace;
    let mut unclean = Vec::new();
    for group in groups.into_iter().rev() {
        let mut tasks = Vec::new();
        for supervised in group {
            // A task that already ended (its child failed to start) has dropped its receiver.
            let _ = supervised.stop.send(deadline);
            tasks.push((supervised.id, supervised.task));
        }
        for (id, task) in tasks {
            match task.await {
                Ok(None) => {}
                Ok(Some(problem)) => unclean.push(problem),
                Err(e) => {
                    ctx.log
                        .line(format!("[up] the supervisor task of {id} failed: {e}"));
                    unclean.push(format!("the supervisor task of {id} failed"));
                }
            }
        }
    }
    if unclean.is_empty() {
        ctx.log.line("[up] all instances stopped cleanly");
    } else {
        ctx.log.line(format!(
            "[up] all instances stopped, not cleanly: {}",
            unclean.join("; ")
        ));
    }
    unclean
}

/// Prints `ROLE ID URL PID HEALTH` for every instance, then the caller's hints.
fn print_table(ctx: &Ctx, specs: &[ChildSpec]) {
    let pids = ctx.registry.pids();
    let rows: Vec<[String; 5]> = specs
        .iter()
        .map(|s| {
            let pid = pids
                .get(&s.id)
                .copied()
                .flatten()
                .map_or_else(|| "-".to_owned(), |p| p.to_string());
            [
                s.role.clone(),
                s.id.clone(),
                s.url.clone(),
                pid,
                "healthy".to_owned(),
            ]
        })
        .collect();
    for line in table(["ROLE", "ID", "URL", "PID", "HEALTH"], &rows) {
        ctx.log.line(line);
    }
    if !ctx.opts.hints.is_empty() {
        ctx.log.line("");
        for hint in &ctx.opts.hints {
            ctx.log.line(hint.clone());
        }
    }
    ctx.log.line("");
}

/// Formats rows as left-aligned columns separated by two spaces.
pub fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> Vec<String> {
    let mut widths = header.map(str::len);
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let format = |cells: Vec<&str>| {
        let line: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        line.join("  ").trim_end().to_owned()
    };
    let mut lines = vec![format(header.to_vec())];
    lines.extend(
        rows.iter()
            .map(|row| format(row.iter().map(String::as_str).collect())),
    );
    lines
}

fn install(enabled: bool, kind: SignalKind) -> anyhow::Result<Option<Signal>> {
    if !enabled {
        return Ok(None);
    }
    signal(kind)
        .map(Some)
        .with_context(|| format!("installing a handler for signal {}", kind.as_raw_value()))
}

/// Resolves on the next delivery of the signal; never if signals are not handled.
async fn recv(signal: &mut Option<Signal>) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending().await,
    }
}
