//! The invalidation stream the gateways' near caches follow, and the wait that makes it
//! synchronous: a write answered by this service has been applied by every near cache that may
//! still serve.
//!
//! A gateway subscribes (`POST /invalidations`): its stream opens with `Hello` (its id, the lease
//! and heartbeat periods), then carries `Invalidate`/`Flush` events and a `Heartbeat` every
//! `heartbeat` when idle, each numbered. The gateway applies each event, then acknowledges its
//! number (`POST /invalidations/{id}/ack`). An acknowledgement renews the subscriber's **lease**:
//! the gateway may serve its near cache until `lease` after it *sent* the acknowledgement; this
//! side records `lease` after it *received* it, which is never earlier. So when this side says a
//! lease is over, the gateway's own reckoning says so too.
//!
//! A write ([`Subscribers::publish`]) pushes its event to every subscriber and waits for each one's
//! acknowledgement up to `ack_timeout`. A subscriber that does not acknowledge in time (or whose
//! queue is full, or whose connection closed) is cut off: its stream ends, its acknowledgements
//! are refused from then on (`410`), so its lease can no longer be renewed; and the write waits
//! until that lease has surely run out before it answers. Either way, once the write is
//! answered, no gateway serves the old value from its near cache: it acknowledged the event
//! (after dropping the key), or its lease is over and it serves nothing from it until it has
//! subscribed again, with an empty near cache.
//!
//! Invariant: a subscriber's lease end, as recorded here, only moves forward while it is
//! subscribed, and once it is gone its last lease end is kept in `departed_until` for every later
//! write to wait on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use api::wire::cache::InvalidationEvent;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Events queued per subscriber before it counts as stuck (and is cut off).
const QUEUE: usize = 1024;

/// The lease and stream settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// How long an acknowledgement lets a subscriber serve its near cache.
    pub(crate) lease: Duration,
    /// How often an idle subscriber gets a heartbeat to acknowledge.
    pub(crate) heartbeat: Duration,
    /// How long a write waits for each acknowledgement before cutting the subscriber off.
    pub(crate) ack_timeout: Duration,
}

impl Timing {
    /// Added to a lease's end before a write relies on it being over: clocks of two processes
    /// may run at slightly different rates.
    fn margin(&self) -> Duration {
        (self.lease / 20).max(Duration::from_millis(5))
    }
}

/// Why a subscription or an acknowledgement was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The service is shutting down.
    Closed,
    /// The subscriber was cut off (or never existed).
    Gone,
}

/// What one write's publication came to (for logs and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Published {
    /// Subscribers that acknowledged.
    pub(crate) acked: usize,
    /// Subscribers cut off by this write.
    pub(crate) cut: usize,
    /// Whether the write had to wait for a lease to run out.
    pub(crate) waited: bool,
}

/// Every subscriber of the stream.
#[derive(Debug)]
pub(crate) struct Subscribers {
    state: Mutex<State>,
    timing: Timing,
    /// Labels the metrics.
    id: Arc<str>,
}

#[derive(Debug)]
struct State {
    next_id: u64,
    subs: HashMap<u64, Sub>,
    /// The latest lease end of every subscriber gone so far: a write waits until it has passed.
    departed_until: Option<Instant>,
    /// Set when shutdown begins: nobody subscribes any more.
    closed: bool,
}

#[derive(Debug)]
struct Sub {
    /// Its stream's queue; dropped when it is cut off, which ends the stream.
    tx: mpsc::Sender<InvalidationEvent>,
    /// The number of the last event queued.
    seq: u64,
    /// The highest number it acknowledged.
    acked: watch::Sender<u64>,
    /// Until when it may serve its near cache, by this side's clock.
    lease_until: Instant,
}

impl Subscribers {
    /// No subscribers yet.
    pub(crate) fn new(timing: Timing, id: Arc<str>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                next_id: 1,
                subs: HashMap::new(),
                departed_until: None,
                closed: false,
            }),
            timing,
            id,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn gauge(&self, n: usize) {
        metrics::gauge!("scalelab_cache_subscribers", "id" => self.id.to_string()).set(n as f64);
    }

    /// A new subscriber: its id and its stream's events, `Hello` first. It holds no lease until
    /// it acknowledges something.
    pub(crate) fn subscribe(&self) -> Result<(u64, mpsc::Receiver<InvalidationEvent>), Refused> {
        let mut s = self.lock();
        if s.closed {
            return Err(Refused::Closed);
        }
        let id = s.next_id;
        s.next_id += 1;
        let (tx, rx) = mpsc::channel(QUEUE);
        let hello = InvalidationEvent::Hello {
            subscriber: id,
            lease_ms: self.timing.lease.as_millis() as u64,
            heartbeat_ms: self.timing.heartbeat.as_millis() as u64,
        };
        // The queue is new and empty: this cannot fail.
        let _ = tx.try_send(hello);
        s.subs.insert(
            id,
            Sub {
                tx,
                seq: 0,
                acked: watch::Sender::new(0),
                lease_until: Instant::now(),
            },
        );
        self.gauge(s.subs.len());
        Ok((id, rx))
    }

    /// `id` applied every event up to `seq`: its lease runs until `lease` after `now`.
    pub(crate) fn ack(&self, id: u64, seq: u64, now: Instant) -> Result<Duration, Refused> {
        let mut s = self.lock();
        let sub = s.subs.get_mut(&id).ok_or(Refused::Gone)?;
        // An acknowledgement of an event not sent yet acknowledges what was sent.
        let seq = seq.min(sub.seq);
        sub.acked.send_if_modified(|acked| {
            let moved = seq > *acked;
            *acked = (*acked).max(seq);
            moved
        });
        sub.lease_until = sub.lease_until.max(now + self.timing.lease);
        Ok(self.timing.lease)
    }

    /// Removes `id` (cut off, or its connection closed), keeping its lease end for later writes.
    fn depart(&self, s: &mut State, id: u64) {
        if let Some(sub) = s.subs.remove(&id) {
            s.departed_until = Some(
                s.departed_until
                    .map_or(sub.lease_until, |d| d.max(sub.lease_until)),
            );
            metrics::counter!("scalelab_cache_subscribers_departed_total", "id" => self.id.to_string())
                .increment(1);
        }
        self.gauge(s.subs.len());
    }

    /// `id`'s stream is gone (the connection closed).
    pub(crate) fn remove(&self, id: u64) {
        let mut s = self.lock();
        self.depart(&mut s, id);
    }

    /// Queues `event(seq)` for every subscriber, each under its next number; cuts off those whose
    /// queue is full or closed. Returns the ones to wait for.
    fn push(
        &self,
        event: &(dyn Fn(u64) -> InvalidationEvent + Sync),
    ) -> Vec<(u64, u64, watch::Receiver<u64>)> {
        let mut s = self.lock();
        let mut waits = Vec::with_capacity(s.subs.len());
        let mut stuck = Vec::new();
        for (id, sub) in &mut s.subs {
            sub.seq += 1;
            if sub.tx.try_send(event(sub.seq)).is_ok() {
                waits.push((*id, sub.seq, sub.acked.subscribe()));
            } else {
                stuck.push(*id);
            }
        }
        for id in stuck {
            self.depart(&mut s, id);
        }
        waits
    }

    /// Sends a heartbeat to every subscriber (acknowledging it renews the lease).
    pub(crate) fn heartbeat(&self) {
        self.push(&|seq| InvalidationEvent::Heartbeat { seq });
    }

    /// Publishes a write (`event(seq)` is its event under each subscriber's number) and returns
    /// once every subscriber applied it or can no longer serve (see the module's doc).
    pub(crate) async fn publish(
        &self,
        event: &(dyn Fn(u64) -> InvalidationEvent + Sync),
    ) -> Published {
        metrics::counter!("scalelab_cache_invalidations_total", "id" => self.id.to_string())
            .increment(1);
        let waits = self.push(event);
        let deadline = Instant::now() + self.timing.ack_timeout;
        let outcomes =
            futures::future::join_all(waits.into_iter().map(|(id, seq, mut acked)| async move {
                let done = tokio::time::timeout_at(deadline, acked.wait_for(|a| *a >= seq)).await;
                (id, matches!(done, Ok(Ok(_))))
            }))
            .await;
        let mut report = Published::default();
        let until = {
            let mut s = self.lock();
            for (id, acked) in outcomes {
                if acked {
                    report.acked += 1;
                } else {
                    self.depart(&mut s, id);
                    report.cut += 1;
                }
            }
            s.departed_until
        };
        if let Some(until) = until {
            let until = until + self.timing.margin();
            if until > Instant::now() {
                report.waited = true;
                tokio::time::sleep_until(until).await;
            }
        }
        report
    }

    /// Shutdown: every stream ends and nobody subscribes any more.
    pub(crate) fn close(&self) {
        let mut s = self.lock();
        s.closed = true;
        let ids: Vec<u64> = s.subs.keys().copied().collect();
        for id in ids {
            self.depart(&mut s, id);
        }
    }

    /// How many subscribers there are.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().subs.len()
    }
}

/// Sends heartbeats every `timing.heartbeat` until `subscribers` is dropped or closed.
pub(crate) fn spawn_heartbeats(subscribers: &Arc<Subscribers>) -> tokio::task::JoinHandle<()> {
    let weak: Weak<Subscribers> = Arc::downgrade(subscribers);
    let every = subscribers.timing.heartbeat;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(subscribers) = weak.upgrade() else {
                return;
            };
            if subscribers.lock().closed {
                return;
            }
            subscribers.heartbeat();
        }
    })
}

/// Removes the subscriber when its stream is dropped (the connection closed or shutdown).
#[derive(Debug)]
pub(crate) struct Departure {
    pub(crate) subscribers: Arc<Subscribers>,
    pub(crate) id: u64,
}

impl Drop for Departure {
    fn drop(&mut self) {
        self.subscribers.remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMING: Timing = Timing {
        lease: Duration::from_millis(1000),
        heartbeat: Duration::from_millis(250),
        ack_timeout: Duration::from_millis(200),
    };

    fn subscribers() -> Arc<Subscribers> {
        Subscribers::new(TIMING, Arc::from("cache-test"))
    }

    fn invalidate(keys: &'static [&'static str]) -> impl Fn(u64) -> InvalidationEvent {
        move |seq| InvalidationEvent::Invalidate {
            seq,
            keys: keys.iter().map(|k| k.to_string()).collect(),
        }
    }

    /// A subscriber that applies and acknowledges every event, as a gateway does.
    fn follow(subs: &Arc<Subscribers>) -> (u64, tokio::task::JoinHandle<Vec<InvalidationEvent>>) {
        let (id, mut rx) = subs.subscribe().unwrap();
        let subs = subs.clone();
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(event) = rx.recv().await {
                if subs.ack(id, event.seq(), Instant::now()).is_err() {
                    break;
                }
                seen.push(event);
            }
            seen
        });
        (id, task)
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_returns_once_every_subscriber_acknowledged() {
        let subs = subscribers();
        let (a, ta) = follow(&subs);
        let (b, tb) = follow(&subs);
        assert_ne!(a, b);
        let started = Instant::now();
        let report = subs.publish(&invalidate(&["k"])).await;
        assert_eq!(
            report,
            Published {
                acked: 2,
                cut: 0,
                waited: false
            }
        );
        assert!(
            Instant::now() < started + TIMING.ack_timeout,
            "nobody waited for a timeout"
        );
        subs.close();
        for task in [ta, tb] {
            let seen = task.await.unwrap();
            assert!(matches!(seen[0], InvalidationEvent::Hello { .. }));
            assert_eq!(
                seen[1],
                InvalidationEvent::Invalidate {
                    seq: 1,
                    keys: vec!["k".into()]
                }
            );
        }
        assert_eq!(subs.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_subscriber_is_cut_off_and_the_write_outlasts_its_lease() {
        let subs = subscribers();
        let (_, follower) = follow(&subs);
        // This one acknowledges its hello (so it holds a lease) and then goes silent.
        let (silent, mut rx) = subs.subscribe().unwrap();
        let _hello = rx.recv().await.unwrap();
        let acked_at = Instant::now();
        subs.ack(silent, 0, acked_at).unwrap();
        let report = subs.publish(&invalidate(&["k"])).await;
        assert_eq!(
            report,
            Published {
                acked: 1,
                cut: 1,
                waited: true
            }
        );
        // The write answered only after the silent one's lease (counted from the latest moment
        // it could have sent its acknowledgement) was surely over.
        assert!(
            Instant::now() >= acked_at + TIMING.lease,
            "answered within the lease"
        );
        // Cut off: its acknowledgements are refused from now on, so its lease cannot be renewed,
        // and its stream ends after what was queued.
        assert_eq!(subs.ack(silent, 1, Instant::now()), Err(Refused::Gone));
        assert!(matches!(
            rx.recv().await,
            Some(InvalidationEvent::Invalidate { .. })
        ));
        assert!(rx.recv().await.is_none(), "its stream ended");
        assert_eq!(subs.len(), 1);
        subs.close();
        follower.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_connection_is_waited_for_by_the_next_write() {
        let subs = subscribers();
        let (id, rx) = subs.subscribe().unwrap();
        let acked_at = Instant::now();
        subs.ack(id, 0, acked_at).unwrap();
        // The connection closes; the gateway may not know yet and still count on its lease.
        drop(Departure {
            subscribers: subs.clone(),
            id,
        });
        drop(rx);
        let report = subs.publish(&invalidate(&["k"])).await;
        assert_eq!((report.acked, report.waited), (0, true));
        assert!(Instant::now() >= acked_at + TIMING.lease);
        // Later writes, after that lease, do not wait.
        let report = subs.publish(&invalidate(&["k"])).await;
        assert_eq!(report, Published::default());
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_renew_leases_and_shutdown_ends_every_stream() {
        let subs = subscribers();
        let (_, follower) = follow(&subs);
        let beats = spawn_heartbeats(&subs);
        tokio::time::sleep(TIMING.heartbeat * 4 + Duration::from_millis(1)).await;
        subs.close();
        let seen = follower.await.unwrap();
        let heartbeats = seen
            .iter()
            .filter(|e| matches!(e, InvalidationEvent::Heartbeat { .. }))
            .count();
        assert!(heartbeats >= 4, "{seen:?}");
        // Numbers increase one by one.
        let seqs: Vec<u64> = seen.iter().map(InvalidationEvent::seq).collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
        assert_eq!(subs.subscribe().err(), Some(Refused::Closed));
        beats.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_early_acknowledgement_counts_only_what_was_sent() {
        let subs = subscribers();
        let (id, _rx) = subs.subscribe().unwrap();
        // Acknowledging event 5 before it exists must not acknowledge it in advance.
        subs.ack(id, 5, Instant::now()).unwrap();
        let report = subs.publish(&invalidate(&["k"])).await;
        assert_eq!(report.cut, 1);
    }
}
