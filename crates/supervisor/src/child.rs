//! One child's whole life: spawn, wait for health, restart with backoff, stop on request.

use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until};

use super::output::{self, Tail};
use super::{ChildSpec, Ctx};

/// The descriptor a child is given its listening socket on (systemd's `SD_LISTEN_FDS_START`).
const LISTEN_FD: i32 = 3;

/// How long to wait for a dead child's last output lines before reporting its failure.
const DRAIN_TIMEOUT: Duration = Duration::from_millis(500);

/// Runs `spec` until told to stop: reports the first health (or the start-up failure) on `ready`, then
/// restarts the child whenever it exits, until `stop` brings the SIGKILL deadline.
///
/// During start-up (before `ready` is sent) a failure is not retried: it is reported and the task
/// ends, leaving it to [`super::run`] to stop the others.
///
/// `listener` is the socket reserved for the first start of a child that takes its listener from
/// the supervisor ([`ChildSpec::listen_host`]); each restart binds the port again.
///
/// Returns how the child's stop went wrong (it needed SIGKILL, or exited with another status
/// than 0), or `None` for a clean stop or when there was no child left to stop.
pub(super) async fn supervise(
    spec: ChildSpec,
    mut listener: Option<std::net::TcpListener>,
    ctx: Arc<Ctx>,
    ready: oneshot::Sender<Result<(), String>>,
    mut stop: oneshot::Receiver<Instant>,
) -> Option<String> {
    let mut ready = Some(ready);
    let tail = Tail::default();
    let mut backoff = Backoff::new(ctx.opts.backoff_base, ctx.opts.backoff_max);
    let mut restarts = 0u32;
    let mut shutting_down = ctx.shutting_down.clone();
    let id = spec.id.as_str();

    loop {
        let mut proc = match Proc::spawn(&spec, listener.take(), &ctx, &tail) {
            Ok(proc) => proc,
            Err(e) => {
                let message = format!("cannot start {id}: {e}");
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Err(message));
                    return None;
                }
                let what = message;
                if !pause(
                    &ctx,
                    &mut stop,
                    &mut shutting_down,
                    &mut backoff,
                    &mut restarts,
                    what,
                )
                .await
                {
                    return None;
                }
                continue;
            }
        };
        if let Err(e) = ctx.registry.set_pid(id, proc.pid) {
            ctx.log
                .line(format!("[up] cannot update the instances file: {e}"));
        }

        let health_url = spec.health_url();
        let health = tokio::select! {
            biased;
            deadline = &mut stop => {
                return proc.terminate(&ctx, id, deadline.ok()).await;
            }
            health = proc.until_healthy(&ctx, &health_url) => health,
        };
        let exit = match health {
            Health::Healthy => {
                match ready.take() {
                    Some(ready) => {
                        let _ = ready.send(Ok(()));
                    }
                    None => ctx.log.line(format!(
                        "[up] {id} is healthy again (pid {}, restart #{restarts})",
                        proc.pid
                    )),
                }
                let up_since = Instant::now();
                let exit = tokio::select! {
                    biased;
                    deadline = &mut stop => {
                        return proc.terminate(&ctx, id, deadline.ok()).await;
                    }
                    exit = proc.wait() => exit,
                };
                if up_since.elapsed() >= ctx.opts.backoff_reset {
                    backoff.reset();
                }
                exit
            }
            Health::Exited(exit) => {
                if let Some(ready) = ready.take() {
                    proc.drain(DRAIN_TIMEOUT).await;
                    let _ = ready.send(Err(format!(
                        "{id} exited during start-up ({exit}); its last lines:\n{}",
                        tail.render()
                    )));
                    return None;
                }
                exit
            }
            Health::TimedOut => {
                let message = format!(
                    "{id} did not answer GET {} with 200 within {:?}",
                    health_url, ctx.opts.start_timeout
                );
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Err(message));
                    // Keep the child until `run` stops everyone in order.
                    let deadline = (&mut stop).await;
                    return proc.terminate(&ctx, id, deadline.ok()).await;
                }
                ctx.log.line(format!("[up] {message}; killing it"));
                proc.kill().await
            }
        };

        let what = format!("{id} exited ({exit})");
        if !pause(
            &ctx,
            &mut stop,
            &mut shutting_down,
            &mut backoff,
            &mut restarts,
            what,
        )
        .await
        {
            return None;
        }
    }
}

/// Logs `what` happened and waits out the restart delay. False means the task must end: shutdown has
/// begun.
async fn pause(
    ctx: &Ctx,
    stop: &mut oneshot::Receiver<Instant>,
    shutting_down: &mut tokio::sync::watch::Receiver<bool>,
    backoff: &mut Backoff,
    restarts: &mut u32,
    what: String,
) -> bool {
    if *shutting_down.borrow() {
        // Never restart during shutdown; `run` will send the stop, which finds nothing to stop.
        ctx.log.line(format!("[up] {what}"));
        let _ = stop.await;
        return false;
    }
    *restarts += 1;
    let delay = backoff.next_delay();
    ctx.log.line(format!(
        "[up] {what}; restarting in {delay:?} (restart #{restarts})"
    ));
    // The watch's guard is not `Send`: drop it inside the branch future.
    let shutdown_begins = async {
        let _ = shutting_down.wait_for(|s| *s).await;
    };
    tokio::select! {
        biased;
        _ = &mut *stop => return false,
        () = shutdown_begins => {}
        () = sleep(delay) => return true,
    }
    let _ = stop.await;
    false
}

/// Exponential backoff: `base`, `2 base`, `4 base`, ... up to `max`.
#[derive(Debug)]
pub(super) struct Backoff {
    base: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(super) fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            next: base.min(max),
        }
    }

    pub(super) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    pub(super) fn reset(&mut self) {
        self.next = self.base.min(self.max);
    }
}

enum Health {
    Healthy,
    Exited(String),
    TimedOut,
}

/// A spawned child and the tasks forwarding its output.
struct Proc {
    child: Child,
    pid: u32,
    output: Vec<JoinHandle<()>>,
}

impl Proc {
    /// Starts the child; with [`ChildSpec::listen_host`], hands it `listener` (or, on a restart, a
    /// newly bound one) as descriptor 3. The supervisor's copy is closed once the child runs, so the
    /// port closes when the child dies, as if the child had bound it itself.
    fn spawn(
        spec: &ChildSpec,
        listener: Option<std::net::TcpListener>,
        ctx: &Ctx,
        tail: &Tail,
    ) -> Result<Self, String> {
        let mut command = Command::new(&spec.program);
        // Only the descriptor handed over below is this child's; not whatever `up` was given.
        command.env_remove("LISTEN_FDS").env_remove("LISTEN_PID");
        if let Some(host) = &spec.listen_host {
            let listener = match listener {
                Some(l) => l,
                None => std::net::TcpListener::bind((host.as_str(), spec.port))
                    .map_err(|e| format!("cannot listen on {host}:{}: {e}", spec.port))?,
            };
            command
                .fd_mappings(vec![FdMapping {
                    parent_fd: listener.into(),
                    child_fd: LISTEN_FD,
                }])
                .map_err(|e| format!("cannot hand over its listener: {e}"))?;
            command.env("LISTEN_FDS", "1");
        }
        command
            .args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            // The child stops by itself when this process is gone (see `shutdown_signal`).
            .env(crate::SUPERVISOR_PID_ENV, std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A Ctrl-C in the terminal goes to the whole foreground process group. Children in their
            // own group do not see it, so they do not exit on their own before `up` has marked the
            // shutdown (it would restart them) and they stop in order instead.
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .map_err(|e| format!("{} failed to run: {e}", spec.program.display()))?;
        let pid = child
            .id()
            .ok_or_else(|| "the child exited before its pid was read".to_owned())?;
        let mut output = Vec::with_capacity(2);
        if let Some(stdout) = child.stdout.take() {
            output.push(output::forward(
                stdout,
                spec.id.clone(),
                ctx.id_width,
                ctx.log.clone(),
                tail.clone(),
            ));
        }
        if let Some(stderr) = child.stderr.take() {
            output.push(output::forward(
                stderr,
                spec.id.clone(),
                ctx.id_width,
                ctx.log.clone(),
                tail.clone(),
            ));
        }
        Ok(Self { child, pid, output })
    }

    /// Polls `GET health_url` until it answers 200, the child exits, or the start timeout passes.
    async fn until_healthy(&mut self, ctx: &Ctx, health_url: &str) -> Health {
        let deadline = Instant::now() + ctx.opts.start_timeout;
        let poll = async {
            loop {
                let healthy = ctx
                    .http
                    .get(health_url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == reqwest::StatusCode::OK);
                if healthy {
                    return;
                }
                sleep(ctx.opts.health_interval).await;
            }
        };
        tokio::select! {
            biased;
            exit = self.child.wait() => Health::Exited(describe(exit)),
            () = poll => Health::Healthy,
            () = sleep_until(deadline) => Health::TimedOut,
        }
    }

    async fn wait(&mut self) -> String {
        describe(self.child.wait().await)
    }

    /// SIGKILL, then reap.
    async fn kill(&mut self) -> String {
        let _ = self.child.start_kill();
        self.wait().await
    }

    /// Waits (bounded) for the output tasks to reach the end of the child's pipes.
    async fn drain(&mut self, timeout: Duration) {
        let tasks = futures::future::join_all(self.output.drain(..));
        let _ = tokio::time::timeout(timeout, tasks).await;
    }

    /// SIGTERM, then SIGKILL at `deadline` (at once without one), then reap. Returns what made the
    /// stop unclean (SIGKILL was needed, or the child exited with another status than 0), if
    /// anything did.
    async fn terminate(mut self, ctx: &Ctx, id: &str, deadline: Option<Instant>) -> Option<String> {
        // The child is not reaped yet (only `wait` reaps), so its pid cannot have been reused.
        let pid = Pid::from_raw(self.pid as i32);
        let exit = match deadline {
            Some(deadline) => {
                // An error here means the child has already exited; `wait` then returns at once.
                let _ = kill(pid, Signal::SIGTERM);
                tokio::select! {
                    exit = self.child.wait() => Some((exit.as_ref().is_ok_and(ExitStatus::success), describe(exit))),
                    () = sleep_until(deadline) => None,
                }
            }
            None => None,
        };
        let problem = match &exit {
            Some((true, _)) => None,
            Some((false, exit)) => Some(format!("{id} exited with {exit} on SIGTERM")),
            None if deadline.is_some() => Some(format!("{id} needed SIGKILL")),
            // No deadline: the caller is gone, and nobody is waiting for a verdict.
            None => None,
        };
        let exit = match exit {
            Some((_, exit)) => exit,
            None => {
                if deadline.is_some() {
                    ctx.log.line(format!(
                        "[up] {id} did not stop within the grace period; sending SIGKILL"
                    ));
                }
                self.kill().await
            }
        };
        self.drain(DRAIN_TIMEOUT).await;
        ctx.log.line(format!("[up] {id} stopped ({exit})"));
        problem
    }
}

/// `status 1`, `signal 9`, or why waiting failed.
pub(super) fn describe(exit: std::io::Result<ExitStatus>) -> String {
    match exit {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => format!("status {code}"),
            (None, Some(signal)) => format!("signal {signal}"),
            (None, None) => status.to_string(),
        },
        Err(e) => format!("waiting for it failed: {e}"),
    }
}
