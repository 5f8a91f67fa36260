//! The run loop: `concurrency` slots, each claiming and running one task at a time, and a
//! gauge refresher for the queue's depth. At shutdown the queue is told first that this
//! process claims no more (`Queue::stop_claiming`), so that what it fetched ahead (RabbitMQ's
//! prefetched deliveries) goes to other workers while the running tasks finish.
//!
//! A slot's worker id is `<instance>/<slot>` (`worker-1/3`): a slot holds at most one task, so the
//! id names one lease holder, and the queue refuses a late holder's calls.

use std::time::{Duration, Instant};

use queue::{Error as QueueError, Task};
use serde_json::Value;
use tokio::sync::watch;

use crate::AppState;
use crate::handlers::Context;

/// Runs every slot and the gauge refresher until `stop` turns true and the slots are done.
pub(crate) async fn run(state: AppState, stop: watch::Receiver<bool>) {
    let config = &state.inner.config;
    // What the slots hold at most: a queue that fetches ahead of the claims (RabbitMQ's
    // consumer prefetch) sizes its read-ahead from it.
    state
        .inner
        .queue
        .set_claim_capacity(config.concurrency.saturating_mul(config.prefetch));
    // At shutdown, work the queue fetched ahead of the claims goes back at once, while the
    // running tasks get their grace, so that other workers can start it meanwhile.
    let stopping = tokio::spawn({
        let (queue, mut stop) = (state.inner.queue.clone(), stop.clone());
        async move {
            stopped(&mut stop).await;
            queue.stop_claiming().await;
        }
    });
    let mut slots = tokio::task::JoinSet::new();
    for n in 1..=state.inner.config.concurrency {
        slots.spawn(slot(state.clone(), n, stop.clone()));
    }
    let gauges = tokio::spawn(refresh_gauges(state.clone(), stop.clone()));
    let pruning = tokio::spawn(prune(state.clone(), stop.clone()));
    while let Some(done) = slots.join_next().await {
        if let Err(e) = done {
            tracing::error!(error = %e, "a worker slot ended abnormally");
        }
    }
    gauges.abort();
    pruning.abort();
    if *stop.borrow() || stop.has_changed().is_err() {
        // A shutdown (or its sender gone): done by now or soon, the consumer cancelled and its
        // deliveries handed back.
        let _ = stopping.await;
    } else {
        // Every slot ended without a shutdown (each one failed): nothing to hand back in order.
        stopping.abort();
    }
    tracing::info!(id = %state.inner.instance.id, "every slot stopped");
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The borrow `wait_for` returns is not `Send`; drop it here.
    let _ = stop.wait_for(|s| *s).await;
}

/// Waits `d`, or less if `stop` turns true.
async fn pause(d: Duration, stop: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = stopped(stop) => {}
    }
}

/// One slot: claims up to `prefetch` tasks at once under its own id, runs them one after
/// another (renewing the leases of those still waiting while one runs), and stores the results
/// in batches. It claims again only once it holds nothing, so its id never holds two attempts of
/// one task at once.
async fn slot(state: AppState, n: usize, mut stop: watch::Receiver<bool>) {
    let inner = &state.inner;
    let worker_id = format!("{}/{n}", inner.instance.id);
    let lease = Duration::from_millis(inner.config.lease_ms);
    let poll = Duration::from_millis(inner.config.poll_ms);
    let mut held = Held::default();
    while !*stop.borrow() {
        let Some(task) = held.waiting.pop_front() else {
            // Results are stored before the next claim, so that nothing waits behind it.
            held.flush(&state, &worker_id).await;
            match inner
                .queue
                .claim_batch(&worker_id, lease, inner.config.prefetch)
                .await
            {
                Ok(tasks) if !tasks.is_empty() => {
                    // A full claim may have left more behind: wake another idle slot (of this
                    // process) to claim it, since one submission wakes only one slot.
                    if tasks.len() >= inner.config.prefetch {
                        inner.queue.more_work();
                    }
                    held.waiting.extend(tasks)
                }
                Ok(_) => {
                    tokio::select! {
                        _ = inner.queue.wait_for_work(poll) => {}
                        _ = stopped(&mut stop) => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, %worker_id, "claiming failed; retrying");
                    pause(poll * 5, &mut stop).await;
                }
            }
            continue;
        };
        run_one(&state, &worker_id, task, &mut held, &mut stop).await;
    }
    // Shutdown: store what finished, give back what never started (the attempt not counted).
    held.flush(&state, &worker_id).await;
    for task in held.waiting.drain(..) {
        match inner.queue.release(&task.id, &worker_id).await {
            Ok(()) => tracing::info!(task = %task.id, "released unstarted at shutdown"),
            Err(e) => {
                tracing::warn!(error = %e, task = %task.id, "release failed; the lease will lapse")
            }
        }
    }
}

/// What a slot holds besides the task it runs.
#[derive(Default)]
struct Held {
    /// Claimed and not started yet (the prefetch buffer); their leases are renewed with the
    /// running task's.
    waiting: std::collections::VecDeque<Task>,
    /// Finished with a result not stored yet: (id, type, result, seconds it ran). Still
    /// `running` in the store; a worker that dies now has them run again (at least once).
    finished: Vec<(String, String, Value, f64)>,
    /// When the oldest unstored result must be stored at the latest.
    due: Option<tokio::time::Instant>,
}

/// How long a result may wait to be stored with others.
const STORE_WITHIN: Duration = Duration::from_millis(10);

impl Held {
    fn finish(&mut self, id: String, kind: String, result: Value, ran: f64) {
        self.due
            .get_or_insert_with(|| tokio::time::Instant::now() + STORE_WITHIN);
        self.finished.push((id, kind, result, ran));
    }

    /// Stores the finished results in one batch; each is logged `succeeded` only once stored.
    async fn flush(&mut self, state: &AppState, worker_id: &str) {
        self.due = None;
        if self.finished.is_empty() {
            return;
        }
        let finished = std::mem::take(&mut self.finished);
        let results = finished
            .iter()
            .map(|(id, _, result, _)| (id.clone(), result.clone()))
            .collect();
        match state.inner.queue.complete_batch(worker_id, results).await {
            Ok(outcomes) => {
                for ((id, kind, _, ran), outcome) in finished.iter().zip(outcomes) {
                    match outcome {
                        Ok(_) => tracing::info!(task = %id, %kind, secs = ran, "succeeded"),
                        Err(QueueError::LeaseLost { .. }) => {
                            tracing::warn!(task = %id, "finished after losing the lease; the current holder's result counts")
                        }
                        Err(e) => {
                            tracing::error!(error = %e, task = %id, "could not store the result")
                        }
                    }
                }
            }
            // The results are lost with the store; the leases lapse and the tasks run again.
            Err(e) => {
                for (id, ..) in &finished {
                    tracing::error!(error = %e, task = %id, "could not store the result");
                }
            }
        }
    }

    /// Renews the leases of the waiting tasks; drops those this slot no longer holds.
    async fn renew(&mut self, state: &AppState, worker_id: &str, lease: Duration) {
        let mut kept = std::collections::VecDeque::with_capacity(self.waiting.len());
        for task in self.waiting.drain(..) {
            match state
                .inner
                .queue
                .heartbeat(&task.id, worker_id, lease)
                .await
            {
                Err(QueueError::LeaseLost { .. }) => {
                    tracing::warn!(task = %task.id, "lease lost while waiting to run; another worker has the task")
                }
                // Kept on other errors: the store may be back before the lease runs out.
                _ => kept.push_back(task),
            }
        }
        self.waiting = kept;
    }
}

/// How one attempt ended.
enum Outcome {
    /// The handler returned.
    Done(Result<Value, String>),
    /// The queue says this slot no longer holds the task: another worker runs it now.
    LeaseLost,
    /// Shutdown came and the grace period ran out: give the task back.
    Release,
}

async fn run_one(
    state: &AppState,
    worker_id: &str,
    task: Task,
    held: &mut Held,
    stop: &mut watch::Receiver<bool>,
) {
    let inner = &state.inner;
    let id = inner.instance.id.to_string();
    let kind = task.kind.clone();
    let lease = Duration::from_millis(inner.config.lease_ms);
    if let Some(started) = task.started_at {
        let waited = (started - task.created_at).max(0) as f64 / 1000.0;
        metrics::histogram!("scalelab_task_wait_seconds", "type" => kind.clone()).record(waited);
    }
    let in_flight = metrics::gauge!("scalelab_worker_in_flight", "id" => id.clone());
    in_flight.increment(1.0);
    tracing::info!(task = %task.id, %kind, attempt = task.attempts, %worker_id, "running");

    let (progress_tx, mut progress_rx) = watch::channel(None);
    let ctx = Context::new(&task.id, inner.db.clone(), progress_tx);
    let started = Instant::now();
    let outcome = match inner.registry.get(&kind) {
        None => Outcome::Done(Err(format!("this worker has no handler for {kind:?}"))),
        Some(handler) => {
            let work = handler.run(task.payload.clone(), &ctx);
            tokio::pin!(work);
            // First tick one period from now. Not `interval` and its first tick awaited: that
            // tick, "immediate", goes through the timer wheel, which fires it at the runtime's
            // next millisecond tick, so every task waited about a millisecond before its handler
            // ran (16 no-op tasks of a batch took 20 ms; docs/PERFORMANCE.md).
            let every = Duration::from_millis(inner.config.heartbeat_ms);
            let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            let mut grace: Option<tokio::time::Instant> = None;
            loop {
                let deadline = grace.unwrap_or_else(|| tokio::time::Instant::now() + lease);
                tokio::select! {
                    out = &mut work => break Outcome::Done(out),
                    _ = beat.tick() => {
                        let renewed = if progress_rx.has_changed().unwrap_or(false) {
                            let p = progress_rx.borrow_and_update().clone().unwrap_or(Value::Null);
                            inner.queue.progress(&task.id, worker_id, p, lease).await
                        } else {
                            inner.queue.heartbeat(&task.id, worker_id, lease).await
                        };
                        match renewed {
                            Ok(()) => {}
                            Err(QueueError::LeaseLost { .. }) => break Outcome::LeaseLost,
                            // The store may be back before the lease runs out; keep working.
                            Err(e) => tracing::warn!(error = %e, task = %task.id, "heartbeat failed"),
                        }
                        held.renew(state, worker_id, lease).await;
                    }
                    _ = tokio::time::sleep_until(held.due.unwrap_or(deadline)), if held.due.is_some() => {
                        held.flush(state, worker_id).await;
                    }
                    _ = stopped(stop), if grace.is_none() => {
                        grace = Some(tokio::time::Instant::now()
                            + Duration::from_millis(inner.config.shutdown_grace_ms));
                    }
                    _ = tokio::time::sleep_until(deadline), if grace.is_some() => break Outcome::Release,
                }
            }
        }
    };
    // The last progress report, so that a finished task shows how far it got.
    if progress_rx.has_changed().unwrap_or(false) {
        let p = progress_rx
            .borrow_and_update()
            .clone()
            .unwrap_or(Value::Null);
        let _ = inner.queue.progress(&task.id, worker_id, p, lease).await;
    }
    let ran = started.elapsed().as_secs_f64();
    let label = match &outcome {
        Outcome::Done(Ok(_)) => "succeeded",
        Outcome::Done(Err(_)) => "failed",
        Outcome::LeaseLost => "lease_lost",
        Outcome::Release => "released",
    };
    metrics::histogram!("scalelab_task_run_seconds", "type" => kind.clone(), "outcome" => label)
        .record(ran);
    metrics::counter!("scalelab_tasks_total", "type" => kind.clone(), "outcome" => label, "id" => id)
        .increment(1);
    match outcome {
        // Stored with the slot's next batch of results (within `STORE_WITHIN`, or before its
        // next claim, or when the batch is full), and only then logged `succeeded`.
        Outcome::Done(Ok(result)) => {
            held.finish(task.id.clone(), kind.clone(), result, ran);
            if held.finished.len() >= inner.config.prefetch || held.waiting.is_empty() {
                held.flush(state, worker_id).await;
            }
        }
        Outcome::Done(Err(message)) => {
            match inner.queue.fail(&task.id, worker_id, &message).await {
                Ok(t) if t.status == queue::Status::Dead => {
                    metrics::counter!("scalelab_task_dead_total", "type" => kind.clone())
                        .increment(1);
                    tracing::warn!(task = %task.id, %kind, error = %message, "dead: out of attempts");
                }
                Ok(t) => {
                    metrics::counter!("scalelab_task_retries_total", "type" => kind.clone())
                        .increment(1);
                    tracing::info!(task = %task.id, %kind, error = %message, retry_at = t.not_before, "failed; will retry");
                }
                Err(e) => {
                    tracing::warn!(error = %e, task = %task.id, "could not record the failure")
                }
            }
        }
        Outcome::LeaseLost => {
            tracing::warn!(task = %task.id, "lease lost while running; another worker has the task")
        }
        Outcome::Release => match inner.queue.release(&task.id, worker_id).await {
            Ok(()) => {
                tracing::info!(task = %task.id, "released at shutdown; it runs again elsewhere")
            }
            Err(e) => {
                tracing::warn!(error = %e, task = %task.id, "release failed; the lease will lapse")
            }
        },
    }
    in_flight.decrement(1.0);
}

/// Keeps the queue gauges of `/metrics` current. They carry the worker's `id`, like its other
/// series: each worker reports the queue as it reads it, and one process's recorder may hold
/// several workers' series (tests).
async fn refresh_gauges(state: AppState, mut stop: watch::Receiver<bool>) {
    let every = Duration::from_millis(state.inner.config.stats_interval_ms);
    let id = state.inner.instance.id.to_string();
    while !*stop.borrow() {
        match state.inner.queue.stats().await {
            Ok(stats) => {
                for (priority, n) in &stats.depth_by_priority {
                    metrics::gauge!("scalelab_queue_depth", "priority" => priority.clone(), "id" => id.clone())
                        .set(*n as f64);
                }
                // How many tasks it can run at once, beside `scalelab_worker_in_flight` (the
                // dashboard's busy slots); set with each refresh, since a value set before the
                // metrics recorder is installed would be lost.
                metrics::gauge!("scalelab_worker_slots", "id" => id.clone())
                    .set(state.inner.config.concurrency as f64);
                metrics::gauge!("scalelab_queue_oldest_wait_seconds", "id" => id.clone())
                    .set(stats.oldest_queued_ms.unwrap_or(0) as f64 / 1000.0);
                for (status, n) in &stats.by_status {
                    metrics::gauge!("scalelab_queue_tasks", "status" => status.clone(), "id" => id.clone())
                        .set(*n as f64);
                }
            }
            Err(e) => tracing::debug!(error = %e, "queue stats failed"),
        }
        pause(every, &mut stop).await;
    }
}

/// Deletes finished tasks older than `[queue] retention_ms`, a chunk at a time (each chunk one
/// short statement, so that claims never wait long behind it), every tenth of the retention (at
/// most a minute apart). Every worker does it; a chunk two workers race for is deleted once.
async fn prune(state: AppState, mut stop: watch::Receiver<bool>) {
    const CHUNK: usize = 5_000;
    let retention = state.inner.config.queue.retention_ms;
    if retention == 0 {
        return;
    }
    let age = Duration::from_millis(retention);
    let every = (age / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
    while !*stop.borrow() {
        loop {
            match state.inner.queue.prune(age, CHUNK).await {
                Ok(n) if n > 0 => {
                    tracing::debug!(deleted = n, "pruned finished tasks");
                    if (n as usize) < CHUNK {
                        break;
                    }
                }
                Ok(_) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "pruning failed");
                    break;
                }
            }
        }
        pause(every, &mut stop).await;
    }
}
