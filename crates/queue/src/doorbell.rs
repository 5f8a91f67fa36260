//! Wake-ups across processes for a queue in a SQLite file, as `LISTEN`/`NOTIFY` does on
//! PostgreSQL: a file has no way to tell another process that a row arrived, so without this an
//! idle worker in another process than the submitter found new work only at its next poll
//! (200 ms by default: a wait of about 70 ms at the median at 250 submissions a second).
//!
//! Every process that claims binds one Unix datagram socket, its bell, in `<file>.doorbells/`;
//! every process that submits, after its commit, sends one byte to each bell there. A ring wakes
//! one idle claimer of the process (the queue's `Notify`, wake-one with a kept permit), which then
//! claims. Rings are coalesced by the caller (one ring for the submissions made while the last
//! one was sent). A bell whose process died (its socket refuses) is removed by the next ring.
//! A bell that cannot be bound (a path too long for a socket, a read-only directory) leaves that
//! process polling, as before.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

/// The bells of one queue file.
#[derive(Debug, Clone)]
pub(crate) struct Doorbells {
    dir: PathBuf,
}

/// This process's bell: rung bells wake `wake`; dropping it removes the socket.
#[derive(Debug)]
pub(crate) struct Bell {
    path: PathBuf,
    task: tokio::task::AbortHandle,
}

impl Drop for Bell {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Distinguishes the bells of several queues opened by one process (tests do that).
static BELLS: AtomicU64 = AtomicU64::new(0);

impl Doorbells {
    /// The bells of the queue file at `path`.
    pub(crate) fn of(path: &Path) -> Self {
        let mut dir = path.as_os_str().to_owned();
        dir.push(".doorbells");
        Self { dir: dir.into() }
    }

    /// Binds a bell for this process; each ring wakes one waiter of `wake`. `None` when it cannot
    /// (the reason is logged; this process's claimers then poll).
    pub(crate) fn listen(&self, wake: Arc<Notify>) -> Option<Bell> {
        let name = format!(
            "{}-{}.sock",
            std::process::id(),
            BELLS.fetch_add(1, Ordering::Relaxed)
        );
        let path = self.dir.join(name);
        let bound =
            std::fs::create_dir_all(&self.dir).and_then(|()| tokio::net::UnixDatagram::bind(&path));
        let socket = match bound {
            Ok(s) => s,
            Err(e) => {
                tracing::info!(path = %path.display(), error = %e, "no doorbell for this queue file; idle workers poll");
                return None;
            }
        };
        let task = tokio::spawn(async move {
            let mut byte = [0u8; 16];
            while socket.recv(&mut byte).await.is_ok() {
                wake.notify_one();
            }
        })
        .abort_handle();
        Some(Bell { path, task })
    }

    /// Rings every bell but `own` (this process's submitters wake their own claimers directly).
    pub(crate) fn ring(&self, own: Option<&Path>) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let Ok(sender) = std::os::unix::net::UnixDatagram::unbound() else {
            return;
        };
        let _ = sender.set_nonblocking(true);
        for entry in entries.flatten() {
            let path = entry.path();
            if own == Some(path.as_path()) {
                continue;
            }
            match sender.send_to(b"!", &path) {
                Ok(_) => {}
                // Nobody bound to it: its process is gone.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    let _ = std::fs::remove_file(&path);
                }
                // A full queue means that bell has rings waiting already.
                Err(_) => {}
            }
        }
    }
}

impl Bell {
    /// Where it is bound.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}
