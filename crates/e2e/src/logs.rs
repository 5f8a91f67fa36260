//! `up`'s output, captured line by line for waits on a log line and for failure reports.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::time::Instant;

use crate::wait::POLL;

/// Everything `up` printed (stdout and stderr), line by line. `SCALELAB_E2E_ECHO=1` also copies
/// it to the test's stderr as it comes.
#[derive(Clone, Default)]
pub(crate) struct Logs {
    text: Arc<Mutex<String>>,
    /// Streams not yet at their end, so that a report can wait for the last lines.
    open: Arc<AtomicUsize>,
}

impl Logs {
    pub(crate) fn capture(&self, stream: impl AsyncRead + Unpin + Send + 'static) {
        let logs = self.clone();
        let echo = std::env::var_os("SCALELAB_E2E_ECHO").is_some();
        self.open.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if echo {
                    eprintln!("{line}");
                }
                let mut text = logs.text.lock().unwrap_or_else(|e| e.into_inner());
                text.push_str(&line);
                text.push('\n');
            }
            logs.open.fetch_sub(1, Ordering::SeqCst);
        });
    }

    pub(crate) fn text(&self) -> String {
        self.text.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits (bounded) until every stream has reached its end, i.e. `up` has exited and all its
    /// output is in.
    pub(crate) async fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.open.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(POLL).await;
        }
    }
}
