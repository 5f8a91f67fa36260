//! Where the supervisor's lines go: one channel, drained by a single writer, so that a line is always
//! written whole and lines from different children never mix within a line.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// How many of a child's last lines are kept for the error message when it fails to start.
const TAIL_LINES: usize = 20;

/// Sends whole lines to the writer. Cheap to clone; sending never blocks.
#[derive(Clone)]
pub(super) struct Logger {
    tx: mpsc::UnboundedSender<String>,
}

impl Logger {
    /// Queues one line (without its newline).
    pub(super) fn line(&self, line: impl Into<String>) {
        // The receiver only goes away once `run` is over; a line sent after that is of no use.
        let _ = self.tx.send(line.into());
    }
}

/// The stdout writer thread, if there is one.
pub(super) struct Printer {
    done: Option<oneshot::Receiver<()>>,
}

impl Printer {
    /// Waits (bounded) until every queued line is written, i.e. until every [`Logger`] is dropped.
    pub(super) async fn finish(self, timeout: Duration) {
        if let Some(done) = self.done {
            let _ = tokio::time::timeout(timeout, done).await;
        }
    }
}

/// A logger writing to `sink`, or to stdout through a dedicated thread when `sink` is `None`.
///
/// Stdout gets its own thread so that a slow terminal or a full pipe holds up the output, never the
/// runtime that health-checks and restarts the children.
pub(super) fn logger(sink: Option<mpsc::UnboundedSender<String>>) -> (Logger, Printer) {
    if let Some(tx) = sink {
        return (Logger { tx }, Printer { done: None });
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let (done_tx, done_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("up-output".to_owned())
        .spawn(move || {
            let stdout = std::io::stdout();
            while let Some(line) = rx.blocking_recv() {
                let mut out = stdout.lock();
                // A closed stdout is no reason to stop the children; the lines are simply lost.
                let _ = writeln!(out, "{line}").and_then(|()| out.flush());
            }
            let _ = done_tx.send(());
        })
        .map(|_| ())
        .unwrap_or_else(|e| eprintln!("[up] cannot start the output thread: {e}"));
    (
        Logger { tx },
        Printer {
            done: Some(done_rx),
        },
    )
}

/// The last lines a child printed, kept across restarts.
#[derive(Clone, Default)]
pub(super) struct Tail(Arc<Mutex<VecDeque<String>>>);

impl Tail {
    fn push(&self, line: &str) {
        let mut lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() == TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(line.to_owned());
    }

    /// The kept lines, each indented, or a note that there were none.
    pub(super) fn render(&self) -> String {
        let lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if lines.is_empty() {
            return "  (no output)".to_owned();
        }
        lines
            .iter()
            .map(|l| format!("  {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Copies `stream` line by line to `log`, each line prefixed with `id` padded to `width`.
pub(super) fn forward(
    stream: impl AsyncRead + Unpin + Send + 'static,
    id: String,
    width: usize,
    log: Logger,
    tail: Tail,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&buf);
                    let text = text.trim_end_matches(['\n', '\r']);
                    tail.push(text);
                    log.line(format!("{id:<width$} | {text}"));
                }
            }
        }
    })
}
