//! The near cache: a small copy, in this gateway's memory, of what it last read from the shared
//! cache service, kept coherent by the service's invalidation stream (`subscription.rs`).
//!
//! It serves only while it is **live**: its subscription is up and its lease is fresh (the last
//! acknowledgement it sent, within `lease`, was answered). The cache service answers a write only
//! once every subscriber acknowledged the write's invalidation or its lease has surely run out
//! (`crates/cache/src/invalidation.rs`), so a near hit never returns a value that a finished write
//! replaced.
//!
//! One race is closed here: a shared read that started before an invalidation may answer after
//! it, with the old value. So a fill takes a [`Ticket`] before its shared read (the connection's
//! epoch and the generation of the key's stripe) and stores only if, under the same lock that
//! invalidations take, neither moved. Every (re)connection, disconnection and flush empties the
//! cache and moves the epoch, so a reconnected gateway starts empty.
//!
//! Bounded: at most `capacity` entries (the oldest stored is evicted first, which with one TTL for
//! all is also the first to expire) and each lives at most `ttl`. Time is tokio's, passed in.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::Cached;

/// Generation stripes: an invalidation of one key refuses the in-flight fills of the keys that
/// share its stripe (one more shared read each, never a wrong answer).
const STRIPES: usize = 1024;

/// What a fill noted before its shared read; see the module's doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket {
    epoch: u64,
    generation: u64,
}

/// The near cache's state; see the module's doc.
#[derive(Debug)]
pub(crate) struct NearCache {
    state: Mutex<State>,
    capacity: usize,
    ttl: Duration,
    hasher: std::collections::hash_map::RandomState,
}

#[derive(Debug)]
struct State {
    /// Moves whenever the entries are all dropped (connect, disconnect, flush): older tickets fail.
    epoch: u64,
    /// The current subscription, while there is one; acknowledgements of another do not count.
    connection: Option<u64>,
    /// Connections so far (the next one's number).
    connections: u64,
    /// Until when it may serve: the send time of the last answered acknowledgement plus the lease.
    lease_until: Option<Instant>,
    entries: HashMap<String, Entry>,
    /// Keys in the order they were stored, with the stamp of that store (stale pairs are skipped).
    order: VecDeque<(String, u64)>,
    next_stamp: u64,
    generations: Vec<u64>,
}

#[derive(Debug)]
struct Entry {
    value: Cached,
    expires: Instant,
    stamp: u64,
}

/// Why a read did not come from the near cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bypass {
    /// Live, but the key is not there (or expired).
    Absent,
    /// Not live: no subscription, or its lease lapsed.
    NotLive,
}

impl NearCache {
    /// An empty, not yet live, near cache of at most `capacity` entries living `ttl` each.
    pub(crate) fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            state: Mutex::new(State {
                epoch: 0,
                connection: None,
                connections: 0,
                lease_until: None,
                entries: HashMap::new(),
                order: VecDeque::new(),
                next_stamp: 0,
                generations: vec![0; STRIPES],
            }),
            capacity: capacity.max(1),
            ttl,
            hasher: Default::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every change below leaves the state consistent, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stripe(&self, key: &str) -> usize {
        self.hasher.hash_one(key) as usize % STRIPES
    }

    /// Whether it may serve at `now`.
    pub(crate) fn live(&self, now: Instant) -> bool {
        live(&self.lock(), now)
    }

    /// The value of `key`, if live and held.
    pub(crate) fn get(&self, key: &str, now: Instant) -> Result<Cached, Bypass> {
        let value = {
            let mut s = self.lock();
            if !live(&s, now) {
                return Err(Bypass::NotLive);
            }
            match s.entries.get(key) {
                Some(e) if e.expires > now => e.value.clone(),
                Some(_) => {
                    s.entries.remove(key);
                    return Err(Bypass::Absent);
                }
                None => return Err(Bypass::Absent),
            }
        };
        Ok(value)
    }

    /// What a fill notes before its shared read; `None` when there is no subscription (then there
    /// is nothing to fill).
    pub(crate) fn ticket(&self, key: &str) -> Option<Ticket> {
        let s = self.lock();
        s.connection?;
        Some(Ticket {
            epoch: s.epoch,
            generation: s.generations[self.stripe(key)],
        })
    }

    /// Stores `value` under `key` if nothing dropped it since `ticket` was taken; whether it did.
    pub(crate) fn insert(&self, key: &str, value: Cached, ticket: Ticket, now: Instant) -> bool {
        let stripe = self.stripe(key);
        let mut s = self.lock();
        if s.connection.is_none()
            || s.epoch != ticket.epoch
            || s.generations[stripe] != ticket.generation
        {
            return false;
        }
        let stamp = s.next_stamp;
        s.next_stamp += 1;
        let entry = Entry {
            value,
            expires: now + self.ttl,
            stamp,
        };
        if s.entries.insert(key.to_owned(), entry).is_none() {
            while s.entries.len() > self.capacity {
                let Some((old, old_stamp)) = s.order.pop_front() else {
                    break;
                };
                if s.entries.get(&old).is_some_and(|e| e.stamp == old_stamp) {
                    s.entries.remove(&old);
                }
            }
        }
        s.order.push_back((key.to_owned(), stamp));
        // Replaced and dropped keys leave stale pairs behind: rebuild before they pile up.
        if s.order.len() > 2 * self.capacity + 16 {
            let State { order, entries, .. } = &mut *s;
            order.retain(|(k, st)| entries.get(k).is_some_and(|e| e.stamp == *st));
        }
        true
    }

    /// These keys were written: drop them, and refuse the fills that read them before.
    pub(crate) fn invalidate(&self, keys: &[String]) {
        let mut s = self.lock();
        for key in keys {
            let stripe = self.stripe(key);
            s.generations[stripe] += 1;
            s.entries.remove(key);
        }
    }

    /// The shared cache was flushed: drop everything.
    pub(crate) fn clear(&self) {
        empty(&mut self.lock());
    }

    /// A subscription started (its `Hello` came): empty, not live until its first answered
    /// acknowledgement. Returns its connection number, for [`NearCache::renewed`].
    pub(crate) fn connected(&self) -> u64 {
        let mut s = self.lock();
        empty(&mut s);
        s.connections += 1;
        s.connection = Some(s.connections);
        s.lease_until = None;
        s.connections
    }

    /// The subscription ended: not live, empty.
    pub(crate) fn disconnected(&self) {
        let mut s = self.lock();
        empty(&mut s);
        s.connection = None;
        s.lease_until = None;
    }

    /// An acknowledgement of `connection`, sent at `sent_at`, was answered: live until
    /// `sent_at + lease`.
    pub(crate) fn renewed(&self, connection: u64, sent_at: Instant, lease: Duration) {
        let mut s = self.lock();
        if s.connection == Some(connection) {
            let until = sent_at + lease;
            s.lease_until = Some(s.lease_until.map_or(until, |u| u.max(until)));
        }
    }

    /// Entries held (expired ones included until read or evicted).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

fn live(s: &State, now: Instant) -> bool {
    s.connection.is_some() && s.lease_until.is_some_and(|u| now < u)
}

fn empty(s: &mut State) {
    s.entries.clear();
    s.order.clear();
    s.epoch += 1;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TTL: Duration = Duration::from_secs(5);
    const LEASE: Duration = Duration::from_secs(1);

    /// A live near cache, as after a subscription's first answered acknowledgement.
    fn live_cache(capacity: usize) -> (NearCache, u64, Instant) {
        let near = NearCache::new(capacity, TTL);
        let now = Instant::now();
        let connection = near.connected();
        near.renewed(connection, now, LEASE);
        (near, connection, now)
    }

    fn fill(near: &NearCache, key: &str, value: serde_json::Value, now: Instant) -> bool {
        let ticket = near.ticket(key).expect("subscribed");
        near.insert(key, Cached::from_value(&value), ticket, now)
    }

    #[test]
    fn serves_only_while_subscribed_and_within_the_lease() {
        let near = NearCache::new(10, TTL);
        let now = Instant::now();
        assert_eq!(
            near.get("k", now).map(|c| c.value()),
            Err(Bypass::NotLive),
            "never subscribed"
        );
        assert!(
            near.ticket("k").is_none(),
            "nothing to fill without a subscription"
        );
        let connection = near.connected();
        assert!(fill(&near, "k", json!(1), now));
        assert_eq!(
            near.get("k", now).map(|c| c.value()),
            Err(Bypass::NotLive),
            "subscribed, but no acknowledgement answered yet"
        );
        near.renewed(connection, now, LEASE);
        assert_eq!(near.get("k", now).map(|c| c.value()), Ok(json!(1)));
        // The lease lapses without a renewal: not served, though still held.
        assert_eq!(
            near.get("k", now + LEASE).map(|c| c.value()),
            Err(Bypass::NotLive)
        );
        near.renewed(connection, now + LEASE, LEASE);
        assert_eq!(near.get("k", now + LEASE).map(|c| c.value()), Ok(json!(1)));
        // A renewal of an older connection does not count.
        near.disconnected();
        let newer = near.connected();
        near.renewed(connection, now + LEASE, LEASE);
        assert_eq!(
            near.get("k", now + LEASE).map(|c| c.value()),
            Err(Bypass::NotLive)
        );
        near.renewed(newer, now + LEASE, LEASE);
        assert_eq!(
            near.get("k", now + LEASE).map(|c| c.value()),
            Err(Bypass::Absent),
            "a new subscription starts empty"
        );
    }

    #[test]
    fn a_shared_read_that_raced_an_invalidation_is_not_stored() {
        let (near, _, now) = live_cache(10);
        // A fill notes its ticket, reads the shared cache (old value)...
        let ticket = near.ticket("k").unwrap();
        // ...the invalidation of a write comes first...
        near.invalidate(&["k".to_string()]);
        // ...and the old value that comes back is not stored.
        assert!(!near.insert("k", Cached::from_value(&json!("old")), ticket, now));
        assert_eq!(near.get("k", now).map(|c| c.value()), Err(Bypass::Absent));
        // A fill that starts after the invalidation stores.
        assert!(fill(&near, "k", json!("new"), now));
        assert_eq!(near.get("k", now).map(|c| c.value()), Ok(json!("new")));
        near.invalidate(&["k".to_string()]);
        assert_eq!(
            near.get("k", now).map(|c| c.value()),
            Err(Bypass::Absent),
            "dropped"
        );
    }

    #[test]
    fn a_reconnection_or_flush_refuses_older_fills_and_empties() {
        let (near, _, now) = live_cache(10);
        assert!(fill(&near, "a", json!(1), now));
        let ticket = near.ticket("b").unwrap();
        near.clear();
        assert_eq!(near.get("a", now).map(|c| c.value()), Err(Bypass::Absent));
        assert!(!near.insert("b", Cached::from_value(&json!(2)), ticket, now));
        let ticket = near.ticket("b").unwrap();
        // Invalidations missed while disconnected cannot leave an old value behind.
        near.disconnected();
        let connection = near.connected();
        near.renewed(connection, now, LEASE);
        assert!(!near.insert("b", Cached::from_value(&json!(2)), ticket, now));
        assert_eq!(near.len(), 0);
    }

    #[test]
    fn bounded_by_entries_and_ttl() {
        let (near, connection, now) = live_cache(3);
        for i in 0..5 {
            assert!(fill(&near, &format!("k{i}"), json!(i), now));
        }
        assert_eq!(near.len(), 3);
        assert_eq!(
            near.get("k0", now).map(|c| c.value()),
            Err(Bypass::Absent),
            "oldest evicted"
        );
        assert_eq!(near.get("k4", now).map(|c| c.value()), Ok(json!(4)));
        // Rewriting a key does not grow the cache, nor evict a live key.
        assert!(fill(&near, "k4", json!(40), now));
        assert_eq!(near.len(), 3);
        assert_eq!(near.get("k2", now).map(|c| c.value()), Ok(json!(2)));
        // An entry does not outlive its TTL, even with a fresh lease.
        let later = now + TTL;
        near.renewed(connection, later, LEASE);
        assert_eq!(
            near.get("k4", later).map(|c| c.value()),
            Err(Bypass::Absent)
        );
        // Many rewrites leave the order queue bounded.
        for i in 0..1000 {
            assert!(fill(&near, "hot", json!(i), later));
        }
        assert!(near.lock().order.len() <= 2 * 3 + 16 + 1);
        assert_eq!(near.get("hot", later).map(|c| c.value()), Ok(json!(999)));
    }
}
