//! A task type of your own: a [`worker::Handler`] registered in the worker's [`worker::Registry`],
//! run end to end against the SQLite task queue in a temporary directory.
//!
//! The example submits a `word_count` task straight into the queue, starts the worker's run loop
//! (the same slots, leases and heartbeats as `scalelab serve worker`), waits until the task has
//! succeeded, prints its result and stops the worker. Run it with
//! `cargo run -p worker --example custom_handler`; it exits by itself.
//!
//! Making the new type submittable over HTTP takes one more step: the gateway accepts only the
//! types listed in `queue::types::TYPES` (where their payloads are described and checked), so add
//! an entry there. The worker checks at start that every listed type has a handler; handlers for
//! types that are not listed, like this one, are allowed.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use queue::{NewTask, Status};
use serde_json::{Value, json};
use tokio::sync::watch;
use worker::{Context, Handler, Registry};

/// `word_count`: `{"text": "..."}` -> how many words, and the longest one.
#[derive(Debug)]
struct WordCount;

#[async_trait]
impl Handler for WordCount {
    fn name(&self) -> &'static str {
        "word_count"
    }

    /// An `Err` fails this attempt with its message; the queue retries it with backoff until
    /// the task runs out of attempts.
    async fn run(&self, payload: Value, ctx: &Context) -> Result<Value, String> {
        let text = payload
            .get("text")
            .and_then(Value::as_str)
            .ok_or("word_count needs a string field text")?;
        let words: Vec<&str> = text.split_whitespace().collect();
        // Progress goes to the store with the next heartbeat (`GET /tasks/{id}` shows it).
        ctx.progress(json!({"done": words.len(), "total": words.len()}));
        let longest = words.iter().max_by_key(|w| w.len()).copied().unwrap_or("");
        Ok(json!({"words": words.len(), "longest": longest}))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    // The same `[queue]` settings `scalelab` hands gateways and workers: SQLite under data_dir.
    let queue_config = queue::Config {
        data_dir: dir.path().to_path_buf(),
        ..queue::Config::default()
    };
    let queue = queue::open(&queue_config).await?;

    // A gateway would validate and submit; here the example is the submitter.
    let text = "the quick brown fox jumps over the lazy dog";
    let submitted = queue
        .submit(NewTask::new(
            "word_count",
            json!({ "text": text }),
            "example",
        ))
        .await?;
    println!("submitted task {} ({})", submitted.id, submitted.kind);

    // The built-in handlers, plus ours.
    let mut registry = Registry::builtin();
    registry.register(Arc::new(WordCount));
    let config = worker::Config {
        concurrency: 1,
        poll_ms: 20,
        queue: queue_config,
        ..worker::Config::default()
    };
    let state = worker::AppState::with_queue(
        config,
        common::Instance::new("worker", "example-1"),
        queue.clone(),
        registry,
    )?;
    let (stop, stopped) = watch::channel(false);
    let runner = tokio::spawn(worker::run(state, stopped));

    // Wait for the result (a few polls); give up after ten seconds rather than hang.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let task = loop {
        let task = queue
            .get(&submitted.id)
            .await?
            .ok_or("the task disappeared")?;
        if matches!(task.status, Status::Succeeded | Status::Dead) {
            break task;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("the task is still {:?} after 10 s", task.status).into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    println!(
        "task {} {:?} after {} attempt(s), run by {}",
        task.id,
        task.status,
        task.attempts,
        task.worker_id.as_deref().unwrap_or("?")
    );
    println!("result: {}", task.result.clone().unwrap_or(Value::Null));

    // Stop the run loop the way `serve` does at shutdown.
    stop.send_replace(true);
    runner.await?;
    if task.status != Status::Succeeded {
        return Err(format!("the task ended {:?}: {:?}", task.status, task.error).into());
    }
    Ok(())
}
