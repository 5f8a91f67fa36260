//! RabbitMQ: the broker delivers fresh tasks in priority order; their state and results stay in
//! PostgreSQL (the task store), which remains the source of truth.
//!
//! - A submission is stored, then its id is published to a durable queue declared with
//!   `x-max-priority` (persistent message, priority `high` 2 / `normal` 1 / `low` 0) and the
//!   publisher confirm is awaited; if the broker refuses, the stored task is deleted and the
//!   caller gets `503` (nothing half-written).
//! - A claim first takes, from the store, a retry whose backoff is over or a task whose lease
//!   lapsed; otherwise it gets a message (`basic.get`, manual ack) and claims that task in the
//!   store if it is still `queued` (a cancelled or already running task's message is acked and
//!   skipped). The delivery stays unacked while the task runs: it is acked once the result is
//!   stored (manual ack after completion), or dead-lettered (`basic.nack`, no requeue) into the
//!   queue's dead-letter exchange when the task dies. A worker process that dies closes its
//!   channel, and the broker delivers its messages again.
//! - Leases, heartbeats, retries with backoff and "recorded once" are the store's (a
//!   [`SqlQueue`] on PostgreSQL), exactly as without the broker.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use serde_json::Value;

use crate::{Config, Error, ListQuery, NewTask, Page, Priority, SqlQueue, Stats, Status, Task};

/// Tasks delivered through RabbitMQ, with their state in PostgreSQL.
#[derive(Debug)]
pub struct RabbitQueue {
    /// The task store (PostgreSQL).
    store: SqlQueue,
    /// Keeps the connection open for as long as the queue lives.
    _connection: Connection,
    /// One channel, in confirm mode: publishes, gets and acks (delivery tags are per channel).
    channel: Channel,
    /// The work queue's name; its dead-letter exchange is `<name>.dlx`, bound to `<name>.dead`.
    name: String,
    /// Deliveries this process holds, by task id: settled when the task completes or fails.
    held: Mutex<HashMap<String, u64>>,
}

fn amqp(e: lapin::Error) -> Error {
    Error::Unavailable(format!("RabbitMQ: {e}"))
}

fn broker_priority(p: Priority) -> u8 {
    match p {
        Priority::High => 2,
        Priority::Normal => 1,
        Priority::Low => 0,
    }
}

impl RabbitQueue {
    /// Connects to the broker at `amqp_url` and declares the work queue `name` (durable, priority,
    /// dead-lettered), its dead-letter exchange and dead queue. `config.url` must name the
    /// PostgreSQL task store. `expires` makes the broker delete the queues once unused that long
    /// (for tests).
    pub async fn connect(
        amqp_url: &str,
        name: &str,
        config: &Config,
        expires: Option<Duration>,
    ) -> Result<Self, Error> {
        let store_url = config
            .url
            .as_deref()
            .filter(|u| u.starts_with("postgres://") || u.starts_with("postgresql://"))
            .ok_or_else(|| {
                Error::Config("the RabbitMQ backend keeps task state in PostgreSQL: set url".into())
            })?;
        let store = SqlQueue::open(store_url, config).await?;
        let connection = Connection::connect(amqp_url, ConnectionProperties::default())
            .await
            .map_err(amqp)?;
        let channel = connection.create_channel().await.map_err(amqp)?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(amqp)?;
        let dlx = format!("{name}.dlx");
        let dead = format!("{name}.dead");
        let mut common_args = FieldTable::default();
        if let Some(e) = expires {
            common_args.insert(
                "x-expires".into(),
                AMQPValue::LongUInt(e.as_millis().min(u32::MAX as u128) as u32),
            );
        }
        channel
            .exchange_declare(
                dlx.as_str().into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    auto_delete: expires.is_some(),
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(amqp)?;
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(dead.as_str().into(), durable, common_args.clone())
            .await
            .map_err(amqp)?;
        channel
            .queue_bind(
                dead.as_str().into(),
                dlx.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(amqp)?;
        let mut args = common_args;
        args.insert("x-max-priority".into(), AMQPValue::ShortShortUInt(2));
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(dlx.as_str().into()),
        );
        channel
            .queue_declare(name.into(), durable, args)
            .await
            .map_err(amqp)?;
        Ok(Self {
            store,
            _connection: connection,
            channel,
            name: name.to_string(),
            held: Mutex::new(HashMap::new()),
        })
    }

    /// Publishes a task id to `exchange` (`""`: straight to the work queue) and waits for the
    /// broker's confirm.
    async fn publish(&self, exchange: &str, id: &str, priority: Priority) -> Result<(), Error> {
        self.publish_then(exchange, id, priority, async {}).await
    }

    /// [`publish`](Self::publish), running `meanwhile` once the message is sent and while the
    /// broker's confirm is awaited (the broker confirms a persistent message once it is on
    /// disk, several ms after it can already be delivered).
    async fn publish_then(
        &self,
        exchange: &str,
        id: &str,
        priority: Priority,
        meanwhile: impl std::future::Future<Output = ()>,
    ) -> Result<(), Error> {
        let sent = self
            .channel
            .basic_publish(
                exchange.into(),
                self.name.as_str().into(),
                BasicPublishOptions::default(),
                id.as_bytes(),
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_priority(broker_priority(priority)),
            )
            .await
            .map_err(amqp)?;
        let (confirm, ()) = tokio::join!(sent, meanwhile);
        match confirm.map_err(amqp)? {
            Confirmation::Ack(_) => Ok(()),
            Confirmation::Nack(_) | Confirmation::NotRequested => Err(Error::Unavailable(
                "RabbitMQ did not confirm the message".into(),
            )),
        }
    }

    /// Hands deliveries back to the broker (a claim that failed half-way).
    async fn requeue_all(&self, got: &[(String, u64)]) {
        for (_, tag) in got {
            let requeue = BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            };
            let _ = self.channel.basic_nack(*tag, requeue).await;
        }
    }

    fn take_held(&self, id: &str) -> Option<u64> {
        self.held.lock().ok().and_then(|mut h| h.remove(id))
    }

    /// Acks (or, with `dead_letter`, rejects into the dead-letter exchange) the delivery held for
    /// task `id`, if this process holds one. Returns whether it did.
    async fn settle(&self, id: &str, dead_letter: bool) -> bool {
        let Some(tag) = self.take_held(id) else {
            return false;
        };
        let done = if dead_letter {
            self.channel
                .basic_nack(
                    tag,
                    BasicNackOptions {
                        requeue: false,
                        ..BasicNackOptions::default()
                    },
                )
                .await
        } else {
            self.channel
                .basic_ack(tag, BasicAckOptions::default())
                .await
        };
        if let Err(e) = done {
            // The store already has the outcome; a redelivered message is skipped.
            tracing::warn!(error = %e, task = id, "settling the delivery failed");
        }
        true
    }
}

#[async_trait::async_trait]
impl crate::Queue for RabbitQueue {
    fn backend(&self) -> &'static str {
        "rabbitmq"
    }

    async fn submit(&self, task: NewTask) -> Result<Task, Error> {
        let (task, new) = self.store.insert(task).await?;
        if !new {
            return Ok(task);
        }
        // Announced once the broker has the message, not when the store does (a claimer woken
        // between the two finds no message and sleeps out its poll), and without waiting for
        // the broker's confirm, which comes only after its disk write. A claimer that gets the
        // message of a submission undone below finds no queued task for it and skips it; one
        // that claimed it first (the broker delivered, then refused it: an internal broker
        // error, and possible before this order too, since a message can be delivered before it
        // is confirmed) runs it although the submission answered an error, and a retry with the
        // same idempotency key finds that task.
        let announce = self.store.announce();
        if let Err(e) = self
            .publish_then("", &task.id, task.priority, announce)
            .await
        {
            // Undo the store so that nothing is half-written.
            if let Err(undo) = self.store.delete(&task.id).await {
                tracing::error!(error = %undo, task = %task.id, "could not undo a submission the broker refused");
            }
            return Err(e);
        }
        Ok(task)
    }

    async fn claim(&self, worker_id: &str, lease: Duration) -> Result<Option<Task>, Error> {
        Ok(self.claim_batch(worker_id, lease, 1).await?.pop())
    }

    async fn claim_batch(
        &self,
        worker_id: &str,
        lease: Duration,
        n: usize,
    ) -> Result<Vec<Task>, Error> {
        let mut tasks = self.store.claim_due(worker_id, lease, n).await?;
        // Messages of tasks that are no longer queued are acked and skipped; a bounded number
        // of rounds keeps one claim short.
        for _ in 0..4 {
            let want = n.saturating_sub(tasks.len());
            if want == 0 {
                break;
            }
            // The gets are pipelined on the channel (one round trip for the lot, not one each);
            // the broker answers them in order, each with a message or "empty".
            let gets = (0..want).map(|_| {
                self.channel
                    .basic_get(self.name.as_str().into(), BasicGetOptions { no_ack: false })
            });
            let mut got: Vec<(String, u64)> = Vec::with_capacity(want);
            let mut failed = None;
            for answer in futures::future::join_all(gets).await {
                match answer {
                    Ok(Some(message)) => got.push((
                        String::from_utf8_lossy(&message.delivery.data).to_string(),
                        message.delivery.delivery_tag,
                    )),
                    Ok(None) => {}
                    Err(e) => failed = Some(amqp(e)),
                }
            }
            if let Some(e) = failed {
                self.requeue_all(&got).await;
                return Err(e);
            }
            if got.is_empty() {
                break;
            }
            let ids: Vec<String> = got.iter().map(|(id, _)| id.clone()).collect();
            match self.store.claim_ids(&ids, worker_id, lease).await {
                Ok(claimed) => {
                    let claimed_ids: std::collections::HashSet<&str> =
                        claimed.iter().map(|t| t.id.as_str()).collect();
                    for (id, tag) in &got {
                        if claimed_ids.contains(id.as_str()) {
                            if let Ok(mut held) = self.held.lock() {
                                held.insert(id.clone(), *tag);
                            }
                        } else {
                            let _ = self
                                .channel
                                .basic_ack(*tag, BasicAckOptions::default())
                                .await;
                        }
                    }
                    // Claimed in broker order: the broker delivers by priority, then FIFO.
                    let mut claimed = claimed;
                    claimed.sort_by_key(|t| ids.iter().position(|i| *i == t.id));
                    tasks.extend(claimed);
                }
                Err(e) => {
                    self.requeue_all(&got).await;
                    return Err(e);
                }
            }
        }
        Ok(tasks)
    }

    async fn wait_for_work(&self, timeout: Duration) {
        // Submissions are announced by the store (PostgreSQL's NOTIFY) as well as published.
        self.store.wait_for_work(timeout).await
    }

    fn more_work(&self) {
        self.store.more_work()
    }

    async fn heartbeat(&self, id: &str, worker_id: &str, lease: Duration) -> Result<(), Error> {
        self.store.heartbeat(id, worker_id, lease).await
    }

    async fn progress(
        &self,
        id: &str,
        worker_id: &str,
        progress: Value,
        lease: Duration,
    ) -> Result<(), Error> {
        self.store.progress(id, worker_id, progress, lease).await
    }

    async fn complete(&self, id: &str, worker_id: &str, result: Value) -> Result<Task, Error> {
        // The result is stored first; only then is the message acked.
        let task = self.store.complete(id, worker_id, result).await?;
        self.settle(id, false).await;
        Ok(task)
    }

    async fn complete_batch(
        &self,
        worker_id: &str,
        results: Vec<(String, Value)>,
    ) -> Result<Vec<Result<Task, Error>>, Error> {
        // Every result is stored (one transaction) before any message is acked.
        let ids: Vec<String> = results.iter().map(|(id, _)| id.clone()).collect();
        let outcomes = self.store.complete_batch(worker_id, results).await?;
        for (id, outcome) in ids.iter().zip(&outcomes) {
            if outcome.is_ok() {
                self.settle(id, false).await;
            }
        }
        Ok(outcomes)
    }

    async fn fail(&self, id: &str, worker_id: &str, error: &str) -> Result<Task, Error> {
        let task = self.store.fail(id, worker_id, error).await?;
        if task.status == Status::Dead {
            if !self.settle(id, true).await {
                // Claimed from the store (a retry): no delivery to reject; announce it directly.
                let dlx = format!("{}.dlx", self.name);
                if let Err(e) = self.publish(&dlx, id, task.priority).await {
                    tracing::warn!(error = %e, task = id, "could not dead-letter the task");
                }
            }
        } else {
            // The retry is the store's (after its backoff); this delivery is done.
            self.settle(id, false).await;
        }
        Ok(task)
    }

    async fn release(&self, id: &str, worker_id: &str) -> Result<(), Error> {
        self.store.release(id, worker_id).await?;
        match self.take_held(id) {
            Some(tag) => {
                let requeue = BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                };
                self.channel.basic_nack(tag, requeue).await.map_err(amqp)
            }
            None => {
                let task = self
                    .store
                    .get(id)
                    .await?
                    .ok_or_else(|| Error::NotFound(id.into()))?;
                self.publish("", id, task.priority).await
            }
        }
    }

    async fn cancel(&self, id: &str) -> Result<Task, Error> {
        // Its message stays in the broker and is skipped when delivered.
        self.store.cancel(id).await
    }

    async fn requeue(&self, id: &str) -> Result<Task, Error> {
        let task = self.store.requeue(id).await?;
        self.publish("", id, task.priority).await?;
        Ok(task)
    }

    async fn get(&self, id: &str) -> Result<Option<Task>, Error> {
        self.store.get(id).await
    }

    async fn list(&self, query: &ListQuery) -> Result<Page, Error> {
        self.store.list(query).await
    }

    async fn stats(&self) -> Result<Stats, Error> {
        let mut stats = self.store.stats().await?;
        stats.backend = self.backend().to_string();
        Ok(stats)
    }

    async fn prune(&self, age: Duration, limit: usize) -> Result<u64, Error> {
        self.store.prune(age, limit).await
    }

    async fn ping(&self) -> Result<(), Error> {
        if !self.channel.status().connected() {
            return Err(Error::Unavailable("RabbitMQ channel closed".into()));
        }
        self.store.ping().await
    }
}
