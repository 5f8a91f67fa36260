//! `async`: long work done synchronously (`GET /process` waits for it) vs submitted to the task
//! queue (`POST /tasks` answers at once, a worker does the work): client latency and throughput
//! of each.
//!
//! Not measurable yet: the queue and the workers are issue 4. When they land, [`run`] is the
//! hook: start [`super::base_topology`] with the queue and worker roles and a long `work_ms`,
//! run the same closed-model load against `GET /process` and against `POST /tasks` (with
//! `Plan::new(POST, ..).body(..)`), and fill [`QueuedResult`] with both runs' p50, p99 and
//! req/s (plus the time until the last task is done, read from `GET /tasks/{id}`).

use bench::experiment::{ScoreRow, Section};
use serde::Serialize;

use super::{Ctx, say};

/// Why the scenario did not run.
const SKIPPED: &str = "skipped: needs the task queue (issue 4)";

/// The figures of the `async` scenario (only the reason it was skipped, for now).
#[derive(Debug, Clone, Serialize)]
pub(super) struct QueuedResult {
    /// Whether it ran.
    pub(super) skipped: bool,
    /// What happened.
    pub(super) note: String,
}

pub(super) async fn run(ctx: &Ctx) -> anyhow::Result<(QueuedResult, Section)> {
    say(format!("async: {SKIPPED}"));
    let result = QueuedResult {
        skipped: true,
        note: SKIPPED.into(),
    };
    let section = Section {
        title: "Asynchronous work".into(),
        setup: "Long work done synchronously (GET /process) vs submitted to the task queue \
                (POST /tasks): client latency and throughput of each."
            .into(),
        findings: vec![SKIPPED.into()],
        command: ctx.command("async"),
        ..Section::default()
    };
    Ok((result, section))
}

impl QueuedResult {
    pub(super) fn score_row(&self, command: String) -> ScoreRow {
        ScoreRow {
            tactic: "asynchronous work".into(),
            gain: self.note.clone(),
            chart: None,
            command,
        }
    }
}
