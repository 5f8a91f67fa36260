//! RabbitMQ: the broker pushes fresh tasks to the workers in priority order; their state and
//! results stay in PostgreSQL (the task store), which remains the source of truth.
//!
//! - A submission is stored, then its id is published to a durable queue declared with
//!   `x-max-priority` (persistent message, priority `high` 2 / `normal` 1 / `low` 0) and the
//!   publisher confirm is awaited; if the broker refuses, the stored task is deleted and the
//!   caller gets `503` (nothing half-written).
//! - A process that claims runs one broker consumer (`basic.qos` prefetch, then `basic.consume`
//!   with manual ack), started by its first claim or wait for work, so that a process that only
//!   submits (a gateway) never holds a delivery. A task of its own moves each delivery into a
//!   local buffer (ordered by priority, then arrival) and wakes one waiting claimer: the broker
//!   pushes, nobody polls it. The prefetch is twice what the claimers hold at once
//!   ([`Queue::set_claim_capacity`](crate::Queue::set_claim_capacity)): the deliveries of
//!   claimed tasks stay unacked while they run and count against it, and as many again wait in
//!   the buffer.
//! - A claim first takes, from the store, a retry whose backoff is over or a task whose lease
//!   lapsed (while deliveries wait in the buffer, at most every [`DUE_EVERY`] per process);
//!   then deliveries from the buffer, and claims those tasks in the store that are still
//!   `queued` (a cancelled or already running task's delivery is acked and skipped). The
//!   delivery of a claimed task stays unacked while it runs: it is acked once the result is
//!   stored, or dead-lettered (`basic.nack`, no requeue) into the queue's dead-letter exchange
//!   when the task dies. A holder told that its lease is lost settles its delivery too (the task
//!   is the store's business from then on), so that no delivery keeps a prefetch slot for ever.
//! - A delivery in the buffer is the broker's until it is acked: a process that dies (or drops
//!   its queue) closes its channel and the broker delivers every unacked message again, claimed
//!   or not; one that stops claiming ([`Queue::stop_claiming`](crate::Queue::stop_claiming), a
//!   worker's SIGTERM) cancels its consumer and hands the buffered deliveries back at once
//!   (`basic.nack` with requeue) while its running tasks finish.
//! - Leases, heartbeats, retries with backoff and "recorded once" are the store's (a
//!   [`SqlQueue`] on PostgreSQL), exactly as without the broker.

use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use serde_json::Value;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::{
    Config, Error, ListQuery, NewTask, Page, Priority, Queue, SqlQueue, Stats, Status, Task,
};

/// What the claimers of a process hold at once when nobody said
/// ([`Queue::set_claim_capacity`]); the prefetch is twice this.
const DEFAULT_CLAIM_CAPACITY: usize = 32;

/// Tasks delivered through RabbitMQ, with their state in PostgreSQL.
#[derive(Debug)]
pub struct RabbitQueue {
    /// The store, the channel, the delivery buffer: what a claim running in a task of its own
    /// and the consumer task need.
    inner: Arc<Inner>,
    /// This process's consumer, started by the first claim or wait for work.
    consumer: tokio::sync::Mutex<Consumer>,
    /// The most tasks this process's claimers hold at once; the prefetch is twice this.
    capacity: AtomicUsize,
    /// Keeps the connection open for as long as the queue lives.
    _connection: Connection,
}

#[derive(Debug)]
struct Inner {
    /// The task store (PostgreSQL).
    store: SqlQueue,
    /// One channel, in confirm mode: publishes, the consumer, acks (delivery tags are per
    /// channel).
    channel: Channel,
    /// The work queue's name; its dead-letter exchange is `<name>.dlx`, bound to `<name>.dead`.
    name: String,
    /// Deliveries received and not claimed yet.
    buffer: Mutex<Buffer>,
    /// Deliveries of claimed tasks, by task id: settled when the task completes or fails, or
    /// when its holder learns that it lost the lease.
    held: Mutex<HashMap<String, u64>>,
    /// Woken once per delivery (one claimer each) and by `more_work`; a wake-up with nobody
    /// waiting is kept for the next wait (the `Notify`'s permit).
    wake: Notify,
    /// Messages this process has put in the work queue (confirmed), and how many of them the
    /// last sync of the consumer covered: a claim that finds its buffer short syncs only when
    /// this process published since, so that a claim sees every task this process submitted
    /// before it (the broker had delivered them when it confirmed them).
    published: AtomicU64,
    synced: AtomicU64,
    /// When this process's claims last looked for due retries and lapsed leases in the store
    /// (milliseconds since `started`); see [`DUE_EVERY`].
    due_looked: AtomicU64,
    started: std::time::Instant,
}

/// While deliveries wait in the buffer, a claim looks for due retries and lapsed leases in the
/// store only if this long passed since this process last looked: under load, that look is a
/// round trip and a transaction per claim (a quarter of PostgreSQL's statements per task at a
/// steady 500 tasks/s) that almost always finds nothing. A claim with nothing buffered always
/// looks. The price: a retry whose backoff ended, or a task whose lease lapsed, can wait up to
/// this long more behind fresh tasks of any priority.
const DUE_EVERY: Duration = Duration::from_millis(100);

/// The state of this process's consumer.
#[derive(Debug)]
enum Consumer {
    /// Not started: nothing claimed or waited yet (a process that only submits stays here).
    Idle,
    /// Consuming: the broker pushes up to the prefetch.
    Running {
        /// The consumer tag, to cancel it.
        tag: ShortString,
        /// The task moving deliveries into the buffer; it ends with the consumer.
        task: tokio::task::JoinHandle<()>,
        /// Asks that task for a sync: a round trip on the channel, answered once every delivery
        /// the broker sent before its reply is in the buffer.
        sync: mpsc::UnboundedSender<oneshot::Sender<()>>,
    },
    /// [`Queue::stop_claiming`] ran: no consumer, claims take only due tasks from the store.
    Stopped,
}

/// Deliveries waiting for a claim, most urgent first: by priority, then in arrival order.
#[derive(Debug, Default)]
struct Buffer {
    ready: BinaryHeap<Ready>,
    /// Arrival order.
    next: u64,
    /// Set by [`Queue::stop_claiming`]: deliveries given back later go to the broker instead.
    closed: bool,
}

/// One delivery in the buffer.
#[derive(Debug, PartialEq, Eq)]
struct Ready {
    priority: u8,
    seq: u64,
    id: String,
    tag: u64,
}

impl Ord for Ready {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // A max-heap: the higher priority first, then the earlier arrival.
        self.priority
            .cmp(&other.priority)
            .then(other.seq.cmp(&self.seq))
    }
}

impl PartialOrd for Ready {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data stays consistent across a panic (each critical section is one push or pop).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RabbitQueue {
    /// Connects to the broker at `amqp_url` and declares the work queue `name` (durable, priority,
    /// dead-lettered), its dead-letter exchange and dead queue. `config.url` must name the
    /// PostgreSQL task store. `expires` makes the broker delete the queues once unused that long
    /// (for tests). Nothing is consumed until the first claim or wait for work.
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
            inner: Arc::new(Inner {
                store,
                channel,
                name: name.to_string(),
                buffer: Mutex::new(Buffer::default()),
                held: Mutex::new(HashMap::new()),
                wake: Notify::new(),
                published: AtomicU64::new(0),
                synced: AtomicU64::new(0),
                due_looked: AtomicU64::new(0),
                started: std::time::Instant::now(),
            }),
            consumer: tokio::sync::Mutex::new(Consumer::Idle),
            capacity: AtomicUsize::new(DEFAULT_CLAIM_CAPACITY),
            _connection: connection,
        })
    }

    /// Starts the consumer unless it runs (or was stopped). Returns how to ask it for a sync
    /// (`None` once stopped) and whether it started just now (its first deliveries may still be
    /// on the way).
    async fn consuming(
        &self,
    ) -> Result<(Option<mpsc::UnboundedSender<oneshot::Sender<()>>>, bool), Error> {
        let mut consumer = self.consumer.lock().await;
        match &*consumer {
            Consumer::Stopped => return Ok((None, false)),
            Consumer::Running { task, sync, .. } if !task.is_finished() => {
                return Ok((Some(sync.clone()), false));
            }
            // Never started, or ended without being stopped (the broker cancelled it or the
            // channel failed): its deliveries, if the channel still stands, go back first.
            Consumer::Running { .. } => self.inner.give_back_buffer().await,
            Consumer::Idle => {}
        }
        let capacity = self.capacity.load(Ordering::Relaxed).max(1);
        let prefetch = u16::try_from(capacity.saturating_mul(2)).unwrap_or(u16::MAX);
        let channel = &self.inner.channel;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(amqp)?;
        let deliveries = channel
            .basic_consume(
                self.inner.name.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(amqp)?;
        let tag = deliveries.tag();
        let (sync, syncs) = mpsc::unbounded_channel();
        let task = tokio::spawn(consume(self.inner.clone(), deliveries, prefetch, syncs));
        *consumer = Consumer::Running {
            tag,
            task,
            sync: sync.clone(),
        };
        Ok((Some(sync), true))
    }
}

impl Drop for RabbitQueue {
    fn drop(&mut self) {
        // The consumer task holds the channel open; without it, the channel and then the
        // connection close, and the broker delivers every unacked message again.
        if let Consumer::Running { task, .. } = self.consumer.get_mut() {
            task.abort();
        }
    }
}

/// The consumer task: moves each delivery into the buffer and wakes one claimer, and answers
/// sync requests. Ends when the consumer does (cancelled, or the channel failed).
async fn consume(
    inner: Arc<Inner>,
    mut deliveries: lapin::Consumer,
    prefetch: u16,
    mut syncs: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
) {
    let ended = loop {
        tokio::select! {
            next = deliveries.next() => {
                if let Err(why) = inner.received(next) {
                    break why;
                }
            }
            Some(first) = syncs.recv() => {
                let mut waiting = vec![first];
                while let Ok(more) = syncs.try_recv() {
                    waiting.push(more);
                }
                let covers = inner.published.load(Ordering::SeqCst);
                // A round trip on the channel (the prefetch again, which changes nothing): the
                // broker sends the deliveries it routed to this consumer before it handles the
                // request, and lapin hands them to the stream before it resolves the reply.
                let round_trip = inner
                    .channel
                    .basic_qos(prefetch, BasicQosOptions::default());
                tokio::pin!(round_trip);
                let mut ended = None;
                let answered = loop {
                    tokio::select! {
                        answered = &mut round_trip => break answered,
                        next = deliveries.next(), if ended.is_none() => {
                            ended = inner.received(next).err();
                        }
                    }
                };
                // What arrived before the reply is in the stream now: take it all.
                while ended.is_none() {
                    match futures::poll!(deliveries.next()) {
                        Poll::Ready(next) => ended = inner.received(next).err(),
                        Poll::Pending => break,
                    }
                }
                if answered.is_ok() {
                    inner.synced.fetch_max(covers, Ordering::SeqCst);
                }
                for w in waiting {
                    let _ = w.send(());
                }
                if let Some(why) = ended {
                    break why;
                }
            }
        }
    };
    tracing::debug!(queue = %inner.name, why = %ended, "the RabbitMQ consumer ended");
    // Waiting claimers claim again now (and find the consumer gone).
    inner.wake.notify_waiters();
}

impl Inner {
    /// Takes what the consumer stream yielded: a delivery goes into the buffer and wakes one
    /// claimer; the end of the stream is an error saying why.
    fn received(&self, next: Option<Result<Delivery, lapin::Error>>) -> Result<(), String> {
        match next {
            Some(Ok(d)) => {
                let id = String::from_utf8_lossy(&d.data).into_owned();
                let priority = d.properties.priority().unwrap_or(1);
                let closed = {
                    let mut buffer = lock(&self.buffer);
                    if !buffer.closed {
                        let seq = buffer.next;
                        buffer.next += 1;
                        buffer.ready.push(Ready {
                            priority,
                            seq,
                            id,
                            tag: d.delivery_tag,
                        });
                    }
                    buffer.closed
                };
                if closed {
                    // Stopped claiming: a delivery sent before the cancel reached the broker.
                    let channel = self.channel.clone();
                    tokio::spawn(async move { requeue(&channel, d.delivery_tag).await });
                } else {
                    self.wake.notify_one();
                }
                Ok(())
            }
            Some(Err(e)) => Err(e.to_string()),
            None => Err("cancelled".into()),
        }
    }

    /// Whether a claim looks for due retries and lapsed leases in the store now (see
    /// [`DUE_EVERY`]); if so, the look counts as done.
    fn look_for_due(&self) -> bool {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.due_looked.load(Ordering::Relaxed);
        let buffered = !lock(&self.buffer).ready.is_empty();
        if buffered && now.saturating_sub(last) < DUE_EVERY.as_millis() as u64 {
            return false;
        }
        self.due_looked.store(now, Ordering::Relaxed);
        true
    }

    /// Up to `n` deliveries from the buffer, most urgent first.
    fn take(&self, n: usize) -> Vec<Ready> {
        let mut buffer = lock(&self.buffer);
        let mut taken = Vec::with_capacity(n.min(buffer.ready.len()));
        while taken.len() < n {
            match buffer.ready.pop() {
                Some(r) => taken.push(r),
                None => break,
            }
        }
        taken
    }

    /// Puts deliveries back in the buffer, in their place; once claiming stopped, hands them
    /// back to the broker instead.
    async fn put_back(&self, deliveries: Vec<Ready>) {
        let refused = {
            let mut buffer = lock(&self.buffer);
            if buffer.closed {
                deliveries
            } else {
                buffer.ready.extend(deliveries);
                Vec::new()
            }
        };
        if refused.is_empty() {
            self.wake.notify_one();
        } else {
            futures::future::join_all(refused.iter().map(|r| requeue(&self.channel, r.tag))).await;
        }
    }

    /// Hands every buffered delivery back to the broker.
    async fn give_back_buffer(&self) {
        let ready = std::mem::take(&mut lock(&self.buffer).ready);
        futures::future::join_all(ready.iter().map(|r| requeue(&self.channel, r.tag))).await;
    }

    /// Records the delivery of a task just claimed. A delivery held before for the same task
    /// (a redelivery the store re-queued since) is stale: acked.
    async fn hold(&self, id: String, tag: u64) {
        let stale = lock(&self.held).insert(id, tag);
        if let Some(stale) = stale {
            ack(&self.channel, stale).await;
        }
    }

    fn take_held(&self, id: &str) -> Option<u64> {
        lock(&self.held).remove(id)
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

    /// The store said that the caller no longer holds task `id`: whoever holds it now got it
    /// from the store, so this process's delivery (if any) has done its work. It is settled so
    /// that it stops taking a prefetch slot: dead-lettered if the task is dead, acked otherwise.
    async fn lost(&self, id: &str) {
        if !lock(&self.held).contains_key(id) {
            return;
        }
        let dead = matches!(self.store.get(id).await, Ok(Some(t)) if t.status == Status::Dead);
        self.settle(id, dead).await;
    }

    /// Calls [`lost`](Self::lost) when `result` says the lease is lost.
    async fn check<T>(&self, id: &str, result: Result<T, Error>) -> Result<T, Error> {
        if let Err(Error::LeaseLost { .. }) = &result {
            self.lost(id).await;
        }
        result
    }

    /// Publishes a task id to `exchange` (`""`: straight to the work queue) and waits for the
    /// broker's confirm.
    async fn publish(&self, exchange: &str, id: &str, priority: Priority) -> Result<(), Error> {
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
        match sent.await.map_err(amqp)? {
            Confirmation::Ack(_) => {
                if exchange.is_empty() {
                    self.published.fetch_add(1, Ordering::SeqCst);
                }
                Ok(())
            }
            Confirmation::Nack(_) | Confirmation::NotRequested => Err(Error::Unavailable(
                "RabbitMQ did not confirm the message".into(),
            )),
        }
    }

    /// Claims up to `n` of the tasks whose deliveries wait in the buffer; `sync` asks the
    /// consumer to catch up first when the buffer is short and this process published since
    /// its last sync (or `force`: the consumer just started).
    async fn claim_delivered(
        &self,
        worker_id: &str,
        lease: Duration,
        n: usize,
        sync: Option<mpsc::UnboundedSender<oneshot::Sender<()>>>,
        mut force: bool,
    ) -> Result<Vec<Task>, Error> {
        let mut tasks: Vec<Task> = Vec::new();
        let mut synced = false;
        // Deliveries of tasks that are no longer queued are acked and skipped; a bounded number
        // of rounds keeps one claim short.
        for _ in 0..4 {
            let want = n.saturating_sub(tasks.len());
            if want == 0 {
                break;
            }
            let mut taken = self.take(want);
            if taken.len() < want && !synced {
                let behind = force
                    || self.published.load(Ordering::SeqCst) > self.synced.load(Ordering::SeqCst);
                if let (true, Some(sync)) = (behind, &sync) {
                    let (answer, answered) = oneshot::channel();
                    if sync.send(answer).is_ok() {
                        let _ = answered.await;
                    }
                    synced = true;
                    force = false;
                    taken.extend(self.take(want - taken.len()));
                }
            }
            if taken.is_empty() {
                break;
            }
            let mut ids: Vec<String> = taken.iter().map(|r| r.id.clone()).collect();
            ids.sort();
            ids.dedup();
            let claimed = match self.store.claim_ids(&ids, worker_id, lease).await {
                Ok(claimed) => claimed,
                Err(e) => {
                    self.put_back(taken).await;
                    if tasks.is_empty() {
                        return Err(e);
                    }
                    tracing::warn!(error = %e, "claiming delivered tasks failed; keeping those claimed");
                    break;
                }
            };
            // One delivery per claimed task is held; any other (a cancelled or running task,
            // or a second message of the same task) is acked and skipped.
            let mut unheld: HashSet<&str> = claimed.iter().map(|t| t.id.as_str()).collect();
            let mut skipped = Vec::new();
            for r in taken {
                if unheld.remove(r.id.as_str()) {
                    self.hold(r.id, r.tag).await;
                } else {
                    skipped.push(r.tag);
                }
            }
            futures::future::join_all(skipped.into_iter().map(|tag| ack(&self.channel, tag))).await;
            tasks.extend(claimed);
        }
        Ok(tasks)
    }

    /// Gives back a task `worker_id` holds: `queued` again in the store, and its delivery back
    /// in the buffer (or to the broker once claiming stopped); a task claimed from the store is
    /// published again.
    async fn release(&self, id: &str, worker_id: &str) -> Result<(), Error> {
        self.check(id, self.store.release(id, worker_id).await)
            .await?;
        match self.take_held(id) {
            Some(tag) => {
                let task = self.store.get(id).await.ok().flatten();
                let priority = task.map_or(1, |t| broker_priority(t.priority));
                // A seq before every arrival: a released task was claimed first, it goes
                // first again within its priority.
                let again = Ready {
                    priority,
                    seq: 0,
                    id: id.to_string(),
                    tag,
                };
                self.put_back(vec![again]).await;
                Ok(())
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
}

async fn ack(channel: &Channel, tag: u64) {
    if let Err(e) = channel.basic_ack(tag, BasicAckOptions::default()).await {
        tracing::debug!(error = %e, tag, "ack failed; the message will be skipped when redelivered");
    }
}

async fn requeue(channel: &Channel, tag: u64) {
    let requeue = BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    };
    if let Err(e) = channel.basic_nack(tag, requeue).await {
        tracing::debug!(error = %e, tag, "requeue failed; the broker redelivers once the channel closes");
    }
}

#[async_trait::async_trait]
impl Queue for RabbitQueue {
    fn backend(&self) -> &'static str {
        "rabbitmq"
    }

    async fn submit(&self, task: NewTask) -> Result<Task, Error> {
        let (task, new) = self.inner.store.insert(task).await?;
        if !new {
            return Ok(task);
        }
        // No NOTIFY: the broker pushes the message to a consumer, which wakes a claimer of its
        // process. A consumer that gets the message of a submission undone below finds no
        // queued task for it and skips it; one that claimed it first (the broker delivered,
        // then refused it: an internal broker error; a message can be delivered before it is
        // confirmed) runs it although the submission answered an error, and a retry with the
        // same idempotency key finds that task.
        if let Err(e) = self.inner.publish("", &task.id, task.priority).await {
            // Undo the store so that nothing is half-written.
            if let Err(undo) = self.inner.store.delete(&task.id).await {
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
        let mut tasks = if self.inner.look_for_due() {
            self.inner.store.claim_due(worker_id, lease, n).await?
        } else {
            Vec::new()
        };
        let want = n.saturating_sub(tasks.len());
        if want == 0 {
            return Ok(tasks);
        }
        let (sync, started) = match self.consuming().await {
            Ok(c) => c,
            Err(e) if tasks.is_empty() => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "the RabbitMQ consumer could not start");
                return Ok(tasks);
            }
        };
        // In a task of its own, like the store's claims: once deliveries leave the buffer, the
        // claim finishes whatever becomes of the caller, and tasks claimed for a caller that
        // is gone are given back at once (store first, then the delivery).
        let inner = self.inner.clone();
        let worker = worker_id.to_string();
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let claimed = inner
                .claim_delivered(&worker, lease, want, sync, started)
                .await;
            if let Err(Ok(orphans)) = tx.send(claimed) {
                for t in orphans {
                    if let Err(e) = inner.release(&t.id, &worker).await {
                        tracing::warn!(error = %e, task = %t.id, "could not give back a task claimed for a caller that left; its lease will lapse");
                    }
                }
            }
        });
        match rx.await {
            Ok(Ok(claimed)) => tasks.extend(claimed),
            Ok(Err(e)) if tasks.is_empty() => return Err(e),
            Ok(Err(e)) => tracing::warn!(error = %e, "claiming delivered tasks failed"),
            Err(_) if tasks.is_empty() => {
                return Err(Error::Unavailable("the claim ended abnormally".into()));
            }
            Err(_) => tracing::warn!("claiming delivered tasks ended abnormally"),
        }
        Ok(tasks)
    }

    async fn wait_for_work(&self, timeout: Duration) {
        // A wake-up that came since this claimer's last claim is kept as the `Notify`'s permit,
        // and this returns at once.
        let woken = self.inner.wake.notified();
        // The first wait starts the consumer too, so that a delivery can end it.
        if let Err(e) = self.consuming().await {
            tracing::debug!(error = %e, "the RabbitMQ consumer could not start; polling");
        }
        let _ = tokio::time::timeout(timeout, woken).await;
    }

    fn more_work(&self) {
        self.inner.wake.notify_one();
    }

    fn set_claim_capacity(&self, tasks: usize) {
        self.capacity.store(tasks.max(1), Ordering::Relaxed);
    }

    async fn stop_claiming(&self) {
        let mut consumer = self.consumer.lock().await;
        lock(&self.inner.buffer).closed = true;
        if let Consumer::Running { tag, task, .. } =
            std::mem::replace(&mut *consumer, Consumer::Stopped)
        {
            // After cancel-ok the broker sends nothing more; the stream yields what it sent
            // before, then ends, and the task hands those back (the buffer is closed).
            match self
                .inner
                .channel
                .basic_cancel(tag, BasicCancelOptions::default())
                .await
            {
                Ok(()) => {
                    let _ = task.await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cancelling the RabbitMQ consumer failed");
                    task.abort();
                }
            }
        }
        self.inner.give_back_buffer().await;
    }

    async fn heartbeat(&self, id: &str, worker_id: &str, lease: Duration) -> Result<(), Error> {
        let renewed = self.inner.store.heartbeat(id, worker_id, lease).await;
        self.inner.check(id, renewed).await
    }

    async fn progress(
        &self,
        id: &str,
        worker_id: &str,
        progress: Value,
        lease: Duration,
    ) -> Result<(), Error> {
        let renewed = self
            .inner
            .store
            .progress(id, worker_id, progress, lease)
            .await;
        self.inner.check(id, renewed).await
    }

    async fn complete(&self, id: &str, worker_id: &str, result: Value) -> Result<Task, Error> {
        // The result is stored first; only then is the message acked.
        let task = self
            .inner
            .check(id, self.inner.store.complete(id, worker_id, result).await)
            .await?;
        self.inner.settle(id, false).await;
        Ok(task)
    }

    async fn complete_batch(
        &self,
        worker_id: &str,
        results: Vec<(String, Value)>,
    ) -> Result<Vec<Result<Task, Error>>, Error> {
        // Every result is stored (one transaction) before any message is acked.
        let ids: Vec<String> = results.iter().map(|(id, _)| id.clone()).collect();
        let outcomes = self.inner.store.complete_batch(worker_id, results).await?;
        let inner = &self.inner;
        futures::future::join_all(ids.iter().zip(&outcomes).map(|(id, outcome)| async move {
            match outcome {
                Ok(_) => {
                    inner.settle(id, false).await;
                }
                Err(Error::LeaseLost { .. }) => inner.lost(id).await,
                Err(_) => {}
            }
        }))
        .await;
        Ok(outcomes)
    }

    async fn fail(&self, id: &str, worker_id: &str, error: &str) -> Result<Task, Error> {
        let task = self
            .inner
            .check(id, self.inner.store.fail(id, worker_id, error).await)
            .await?;
        if task.status == Status::Dead {
            if !self.inner.settle(id, true).await {
                // Claimed from the store (a retry): no delivery to reject; announce it directly.
                let dlx = format!("{}.dlx", self.inner.name);
                if let Err(e) = self.inner.publish(&dlx, id, task.priority).await {
                    tracing::warn!(error = %e, task = id, "could not dead-letter the task");
                }
            }
        } else {
            // The retry is the store's (after its backoff); this delivery is done.
            self.inner.settle(id, false).await;
        }
        Ok(task)
    }

    async fn release(&self, id: &str, worker_id: &str) -> Result<(), Error> {
        self.inner.release(id, worker_id).await
    }

    async fn cancel(&self, id: &str) -> Result<Task, Error> {
        // Its message stays in the broker (or a consumer's buffer) and is acked and skipped
        // when a claim takes it.
        self.inner.store.cancel(id).await
    }

    async fn requeue(&self, id: &str) -> Result<Task, Error> {
        let task = self.inner.store.requeue(id).await?;
        self.inner.publish("", id, task.priority).await?;
        Ok(task)
    }

    async fn get(&self, id: &str) -> Result<Option<Task>, Error> {
        self.inner.store.get(id).await
    }

    async fn list(&self, query: &ListQuery) -> Result<Page, Error> {
        self.inner.store.list(query).await
    }

    async fn stats(&self) -> Result<Stats, Error> {
        let mut stats = self.inner.store.stats().await?;
        stats.backend = self.backend().to_string();
        Ok(stats)
    }

    async fn prune(&self, age: Duration, limit: usize) -> Result<u64, Error> {
        self.inner.store.prune(age, limit).await
    }

    async fn ping(&self) -> Result<(), Error> {
        if !self.inner.channel.status().connected() {
            return Err(Error::Unavailable("RabbitMQ channel closed".into()));
        }
        self.inner.store.ping().await
    }
}
