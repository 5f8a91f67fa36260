//! Process control: signals to instances, stopping `up` (SIGTERM, bounded wait, SIGKILL as a last
//! resort), and the cleanup when a [`Running`] is dropped.

use std::process::ExitStatus;
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::Child;

use crate::running::Running;
use crate::wait::POLL;

/// How long `stop` (and `Drop`) wait for `up` to exit after SIGTERM (its own grace is 10 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How many of `up`'s last lines are printed when a test fails.
const LINES_ON_FAILURE: usize = 300;

impl Running {
    /// Sends `signal` to instance `id` and returns the pid it went to (for [`Self::wait_restarted`]).
    pub fn kill(&self, id: &str, signal: Signal) -> anyhow::Result<u32> {
        let pid = self.pid(id)?;
        kill(Pid::from_raw(pid as i32), signal).with_context(|| format!("kill -{signal} {id}"))?;
        Ok(pid)
    }

    /// Sends SIGTERM to `up` and waits (bounded) for it to exit; returns its exit status.
    pub async fn stop(self) -> anyhow::Result<ExitStatus> {
        self.shutdown().await
    }

    /// Sends `signal` to `up` itself (SIGHUP: the terminal closed; SIGKILL: `up` killed) and waits
    /// (bounded) for it to exit; returns its exit status. The instances are not touched.
    pub async fn stop_with(self, signal: Signal) -> anyhow::Result<ExitStatus> {
        self.shutdown_with(signal).await
    }

    /// Like [`Self::stop`], and also returns everything `up` printed, to its last line (what it
    /// said about each instance's stop).
    pub async fn stop_with_logs(self) -> anyhow::Result<(ExitStatus, String)> {
        let status = self.shutdown().await?;
        self.logs.settle().await;
        Ok((status, self.logs()))
    }

    pub(crate) async fn shutdown(&self) -> anyhow::Result<ExitStatus> {
        self.shutdown_with(Signal::SIGTERM).await
    }

    async fn shutdown_with(&self, signal: Signal) -> anyhow::Result<ExitStatus> {
        let Some(mut up) = self.take_up() else {
            bail!("`up` was already stopped");
        };
        if let Some(pid) = up.id() {
            // An error means it has exited already; `wait` then returns at once.
            let _ = kill(Pid::from_raw(pid as i32), signal);
        }
        match tokio::time::timeout(STOP_TIMEOUT, up.wait()).await {
            Ok(status) => status.context("waiting for `up`"),
            Err(_) => {
                let _ = up.kill().await;
                self.kill_instances();
                bail!("`up` did not exit within {STOP_TIMEOUT:?} of {signal}; killed it")
            }
        }
    }

    /// `up`'s exit status if it has exited (or was stopped).
    pub(crate) fn up_exited(&self) -> Option<String> {
        let mut up = self.up.lock().unwrap_or_else(|e| e.into_inner());
        match up.as_mut() {
            None => Some("stopped by the harness".to_owned()),
            Some(child) => match child.try_wait() {
                Ok(Some(status)) => Some(status.to_string()),
                Ok(None) => None,
                Err(e) => Some(format!("cannot wait for it: {e}")),
            },
        }
    }

    pub(crate) fn take_up(&self) -> Option<Child> {
        self.up.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Last resort when `up` itself had to be killed: its children are in their own process groups
    /// and would outlive it.
    fn kill_instances(&self) {
        if let Ok(records) = self.instances() {
            for pid in records.iter().filter_map(|r| r.pid) {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = self.logs();
            let lines: Vec<&str> = logs.lines().collect();
            let skip = lines.len().saturating_sub(LINES_ON_FAILURE);
            eprintln!(
                "---- scalelab up (data dir {}), last {} lines ----\n{}",
                self.data_dir.display(),
                lines.len() - skip,
                lines[skip..].join("\n")
            );
        }
        if let Some(mut up) = self.take_up() {
            // Drop cannot await: signal, then poll the exit with a deadline.
            if let Some(pid) = up.id() {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            }
            let deadline = std::time::Instant::now() + STOP_TIMEOUT;
            let exited = loop {
                match up.try_wait() {
                    Ok(Some(_)) | Err(_) => break true,
                    Ok(None) if std::time::Instant::now() >= deadline => break false,
                    Ok(None) => std::thread::sleep(POLL),
                }
            };
            if !exited {
                let _ = up.start_kill();
                self.kill_instances();
            }
        }
        if std::env::var_os("SCALELAB_E2E_KEEP").is_some()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("keeping {}", dir.keep().display());
        }
    }
}
