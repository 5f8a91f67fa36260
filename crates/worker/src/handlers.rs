//! The task handlers: the [`Handler`] trait and the built-in types (`add`, `report`, `sleep`,
//! `cpu`, `fail`). Their payloads were checked at submission against [`queue::types`]; a handler
//! still refuses a payload it cannot read, which fails the attempt (a bug, not a user error).

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use api::client::DbClient;
use serde_json::{Value, json};
use tokio::sync::watch;

/// What a handler may use while it runs.
#[derive(Debug, Clone)]
pub struct Context {
    /// The task's id (for logs and request ids).
    pub task_id: String,
    /// The db service, for handlers that read real data.
    pub db: Option<DbClient>,
    /// The latest progress report; the run loop stores it with the next heartbeat.
    progress: watch::Sender<Option<Value>>,
}

impl Context {
    /// A context whose progress reports go to `progress`.
    pub fn new(
        task_id: &str,
        db: Option<DbClient>,
        progress: watch::Sender<Option<Value>>,
    ) -> Self {
        Self {
            task_id: task_id.to_string(),
            db,
            progress,
        }
    }

    /// Reports progress (any JSON; `{"done", "total"}` by convention). Only the latest report is
    /// kept: the run loop writes it to the store with the next heartbeat, so a handler may report
    /// as often as it likes.
    pub fn progress(&self, progress: Value) {
        self.progress.send_replace(Some(progress));
    }
}

/// One task type's code. An `Err` fails the attempt with that message (retried with backoff until
/// the task is out of attempts).
#[async_trait::async_trait]
pub trait Handler: Send + Sync + std::fmt::Debug {
    /// The task type it runs (a name in [`queue::types::TYPES`]).
    fn name(&self) -> &'static str;

    /// Runs one attempt.
    async fn run(&self, payload: Value, ctx: &Context) -> Result<Value, String>;
}

/// Handlers by task type.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    handlers: HashMap<&'static str, Arc<dyn Handler>>,
}

impl Registry {
    /// Every built-in handler.
    pub fn builtin() -> Self {
        let mut r = Registry::default();
        r.register(Arc::new(Add));
        r.register(Arc::new(Report));
        r.register(Arc::new(Sleep));
        r.register(Arc::new(Cpu));
        r.register(Arc::new(Fail));
        r.register(Arc::new(LongTask::default()));
        // Without their services (set by `AppState::new` from the config) they fail, saying so.
        r.register(Arc::new(crate::reports::FinanceReportTask::default()));
        r.register(Arc::new(crate::reports::LegalReportTask::default()));
        r
    }

    /// Adds (or replaces) the handler of its type.
    pub fn register(&mut self, handler: Arc<dyn Handler>) {
        self.handlers.insert(handler.name(), handler);
    }

    /// The handler of `kind`.
    pub fn get(&self, kind: &str) -> Option<Arc<dyn Handler>> {
        self.handlers.get(kind).cloned()
    }

    /// The task types of the queue's registry that have no handler here.
    pub fn missing(&self) -> Vec<&'static str> {
        queue::types::TYPES
            .iter()
            .map(|t| t.name)
            .filter(|n| !self.handlers.contains_key(n))
            .collect()
    }
}

fn field<'a>(payload: &'a Value, name: &str) -> Option<&'a Value> {
    payload.as_object().and_then(|o| o.get(name))
}

/// `add`: `a + b` (whole numbers stay whole).
#[derive(Debug)]
struct Add;

#[async_trait::async_trait]
impl Handler for Add {
    fn name(&self) -> &'static str {
        "add"
    }

    async fn run(&self, payload: Value, _: &Context) -> Result<Value, String> {
        let (a, b) = (field(&payload, "a"), field(&payload, "b"));
        let whole = (a.and_then(Value::as_i64), b.and_then(Value::as_i64));
        if let (Some(a), Some(b)) = whole
            && let Some(sum) = a.checked_add(b)
        {
            return Ok(json!(sum));
        }
        match (a.and_then(Value::as_f64), b.and_then(Value::as_f64)) {
            (Some(a), Some(b)) => Ok(json!(a + b)),
            _ => Err("add needs two numbers a and b".into()),
        }
    }
}

/// `report`: reads `records` db records (`key-1` ..), one at a time, reporting progress, and
/// summarises them. Every read pays the db's simulated latency: the task takes seconds.
#[derive(Debug)]
struct Report;

#[async_trait::async_trait]
impl Handler for Report {
    fn name(&self) -> &'static str {
        "report"
    }

    async fn run(&self, payload: Value, ctx: &Context) -> Result<Value, String> {
        let total = field(&payload, "records")
            .and_then(Value::as_u64)
            .unwrap_or(20);
        let db = ctx
            .db
            .as_ref()
            .ok_or("this worker has no db_url: report cannot read records")?;
        let rid = format!("task-{}", ctx.task_id);
        let (mut found, mut bytes, mut ids) = (0u64, 0u64, 0u64);
        ctx.progress(json!({"done": 0, "total": total}));
        for i in 1..=total {
            match db.get(&format!("key-{i}"), &rid).await {
                Ok(Some(record)) => {
                    found += 1;
                    bytes += record.value.to_string().len() as u64;
                    ids += record.value["id"].as_u64().unwrap_or(0);
                }
                Ok(None) => {}
                Err(e) => return Err(format!("reading key-{i} from the db failed: {e}")),
            }
            ctx.progress(json!({"done": i, "total": total}));
        }
        Ok(json!({
            "records_read": total,
            "found": found,
            "missing": total - found,
            "value_bytes": bytes,
            "sum_of_ids": ids,
        }))
    }
}

/// `sleep`: waits `ms` milliseconds, reporting progress every second.
#[derive(Debug)]
struct Sleep;

#[async_trait::async_trait]
impl Handler for Sleep {
    fn name(&self) -> &'static str {
        "sleep"
    }

    async fn run(&self, payload: Value, ctx: &Context) -> Result<Value, String> {
        let ms = field(&payload, "ms")
            .and_then(Value::as_u64)
            .ok_or("sleep needs ms")?;
        let mut left = ms;
        while left > 0 {
            let step = left.min(1000);
            tokio::time::sleep(Duration::from_millis(step)).await;
            left -= step;
            ctx.progress(json!({"done": ms - left, "total": ms}));
        }
        Ok(json!({"slept_ms": ms}))
    }
}

/// `longtask`: the lab's generic long task (what `POST /longtask` runs when its body names no known
/// type): simulated work for `ms` milliseconds, with progress, and the whole payload echoed back.
#[derive(Debug)]
pub struct LongTask {
    /// How long one run works, in milliseconds (`[worker] longtask_ms`).
    pub ms: u64,
}

impl Default for LongTask {
    fn default() -> Self {
        Self { ms: 3000 }
    }
}

#[async_trait::async_trait]
impl Handler for LongTask {
    fn name(&self) -> &'static str {
        queue::types::LONGTASK
    }

    async fn run(&self, payload: Value, ctx: &Context) -> Result<Value, String> {
        let total = self.ms;
        let mut left = total;
        while left > 0 {
            let step = left.min(500);
            tokio::time::sleep(Duration::from_millis(step)).await;
            left -= step;
            ctx.progress(json!({"done": total - left, "total": total}));
        }
        Ok(json!({"status": "completed", "worked_ms": total, "echo": payload}))
    }
}

/// `cpu`: `iterations` rounds of hashing, on a blocking thread so the run loop keeps beating.
#[derive(Debug)]
struct Cpu;

#[async_trait::async_trait]
impl Handler for Cpu {
    fn name(&self) -> &'static str {
        "cpu"
    }

    async fn run(&self, payload: Value, _: &Context) -> Result<Value, String> {
        let n = field(&payload, "iterations")
            .and_then(Value::as_u64)
            .ok_or("cpu needs iterations")?;
        let digest = tokio::task::spawn_blocking(move || {
            let mut h = 0u64;
            for i in 0..n {
                let mut s = DefaultHasher::new();
                (h, i).hash(&mut s);
                h = s.finish();
            }
            h
        })
        .await
        .map_err(|e| format!("the hashing thread failed: {e}"))?;
        Ok(json!({"iterations": n, "digest": format!("{digest:016x}")}))
    }
}

/// `fail`: always fails, to show retries and dead tasks.
#[derive(Debug)]
struct Fail;

#[async_trait::async_trait]
impl Handler for Fail {
    fn name(&self) -> &'static str {
        "fail"
    }

    async fn run(&self, payload: Value, _: &Context) -> Result<Value, String> {
        Err(field(&payload, "message")
            .and_then(Value::as_str)
            .unwrap_or("this task always fails")
            .to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> (Context, watch::Receiver<Option<Value>>) {
        let (tx, rx) = watch::channel(None);
        (Context::new("t", None, tx), rx)
    }

    #[tokio::test]
    async fn builtin_handlers_cover_every_type_and_compute() {
        let r = Registry::builtin();
        assert!(r.missing().is_empty(), "{:?}", r.missing());
        let (c, rx) = ctx();
        let run = |kind: &str, p: Value| {
            let h = r.get(kind).expect(kind);
            let c = c.clone();
            async move { h.run(p, &c).await }
        };
        assert_eq!(run("add", json!({"a": 2, "b": 3})).await, Ok(json!(5)));
        assert_eq!(run("add", json!({"a": 0.5, "b": 1})).await, Ok(json!(1.5)));
        assert_eq!(
            run("fail", json!({"message": "x"})).await,
            Err("x".to_string())
        );
        assert_eq!(
            run("sleep", json!({"ms": 5})).await,
            Ok(json!({"slept_ms": 5}))
        );
        assert_eq!(*rx.borrow(), Some(json!({"done": 5, "total": 5})));
        let cpu = run("cpu", json!({"iterations": 1000})).await.unwrap();
        assert_eq!(cpu["iterations"], 1000);
        assert!(run("report", json!({})).await.is_err(), "no db");
    }
}
