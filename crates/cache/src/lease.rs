//! Fill leases (memcache's): close the cache-aside race across gateways.
//!
//! A gateway that misses a key reads its source (the db) and then stores what it read. If a write
//! lands between the read and the store, the store would put the old value back for a whole TTL.
//! So a miss asked with `?lease=on_miss` hands out a token, the fill carries it, and every write of
//! the key (delete, set, flush) voids the key's outstanding tokens first: a fill whose token was
//! voided is refused. A write that happens before the miss is harmless, because the source read
//! that follows the miss already sees it.
//!
//! Tokens are numbers from a counter that starts at a random point, so that a token handed out by
//! a previous run of the service is (almost surely) unknown to this one and refused.
//!
//! Memory is bounded: at most `max` outstanding tokens (expired ones are swept when the table is
//! full; then none is handed out, and that fill is skipped), at most [`PER_KEY`] per key (the
//! oldest is dropped: one more refused fill). Time is passed in, so that tests need no clock.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Outstanding tokens kept per key: concurrent misses of one key on different gateways.
pub(crate) const PER_KEY: usize = 8;

/// The outstanding fill leases, by key.
#[derive(Debug)]
pub(crate) struct Leases {
    state: Mutex<State>,
    /// How long a token stays valid: longer than any fill takes (a db read and a store).
    lifetime: Duration,
    /// Most tokens outstanding at once.
    max: usize,
}

#[derive(Debug)]
struct State {
    /// The next token.
    next: u64,
    /// Each key's valid tokens, oldest first, with when they were handed out.
    by_key: HashMap<String, Vec<(u64, Instant)>>,
    /// Tokens in `by_key`.
    count: usize,
}

impl Leases {
    /// An empty table: tokens live `lifetime`, at most `max` at once.
    pub(crate) fn new(lifetime: Duration, max: usize) -> Self {
        let mut seed = std::collections::hash_map::RandomState::new().build_hasher();
        seed.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        // The top bit clear leaves 2^63 tokens before the counter could wrap.
        Self::with_first(lifetime, max, seed.finish() >> 1)
    }

    fn with_first(lifetime: Duration, max: usize, first: u64) -> Self {
        Self {
            state: Mutex::new(State {
                next: first.max(1),
                by_key: HashMap::new(),
                count: 0,
            }),
            lifetime,
            max: max.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock leaves the table consistent (every change is one
        // statement), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A token for a fill of `key`, or `None` when the table is full of valid tokens.
    pub(crate) fn issue(&self, key: &str, now: Instant) -> Option<u64> {
        let mut s = self.lock();
        if s.count >= self.max {
            let lifetime = self.lifetime;
            let mut count = 0;
            s.by_key.retain(|_, tokens| {
                tokens.retain(|(_, at)| now.duration_since(*at) < lifetime);
                count += tokens.len();
                !tokens.is_empty()
            });
            s.count = count;
            if s.count >= self.max {
                return None;
            }
        }
        let token = s.next;
        s.next += 1;
        let tokens = s.by_key.entry(key.to_owned()).or_default();
        let dropped = if tokens.len() >= PER_KEY {
            tokens.remove(0);
            1
        } else {
            0
        };
        tokens.push((token, now));
        s.count = s.count + 1 - dropped;
        Some(token)
    }

    /// Whether `token` is a valid lease of `key`; a valid one is used up.
    pub(crate) fn redeem(&self, key: &str, token: u64, now: Instant) -> bool {
        let mut s = self.lock();
        let Some(tokens) = s.by_key.get_mut(key) else {
            return false;
        };
        let Some(i) = tokens.iter().position(|(t, _)| *t == token) else {
            return false;
        };
        let (_, at) = tokens.remove(i);
        if tokens.is_empty() {
            s.by_key.remove(key);
        }
        s.count -= 1;
        now.duration_since(at) < self.lifetime
    }

    /// A write of `key`: every outstanding lease of it is void.
    pub(crate) fn void(&self, key: &str) {
        let mut s = self.lock();
        if let Some(tokens) = s.by_key.remove(key) {
            s.count -= tokens.len();
        }
    }

    /// A flush: every outstanding lease is void.
    pub(crate) fn void_all(&self) {
        let mut s = self.lock();
        s.by_key.clear();
        s.count = 0;
    }

    /// Tokens outstanding (expired ones included until swept).
    #[cfg(test)]
    pub(crate) fn outstanding(&self) -> usize {
        self.lock().count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIFE: Duration = Duration::from_secs(10);

    #[test]
    fn a_write_voids_the_leases_of_its_key_only() {
        let leases = Leases::with_first(LIFE, 100, 1);
        let now = Instant::now();
        let a = leases.issue("a", now).unwrap();
        let b = leases.issue("b", now).unwrap();
        leases.void("a");
        assert!(
            !leases.redeem("a", a, now),
            "a fill that raced a write is refused"
        );
        assert!(leases.redeem("b", b, now), "other keys keep theirs");
        // A miss after the write gets a new lease, which is good.
        let a2 = leases.issue("a", now).unwrap();
        assert!(leases.redeem("a", a2, now));
        assert_eq!(leases.outstanding(), 0);
    }

    #[test]
    fn a_lease_is_used_once_and_only_for_its_key() {
        let leases = Leases::with_first(LIFE, 100, 1);
        let now = Instant::now();
        let t = leases.issue("k", now).unwrap();
        assert!(!leases.redeem("other", t, now));
        assert!(leases.redeem("k", t, now));
        assert!(!leases.redeem("k", t, now), "used up");
        assert!(!leases.redeem("k", 12345, now), "never handed out");
    }

    #[test]
    fn concurrent_misses_each_get_one_and_a_flush_voids_all() {
        let leases = Leases::with_first(LIFE, 100, 1);
        let now = Instant::now();
        let t1 = leases.issue("k", now).unwrap();
        let t2 = leases.issue("k", now).unwrap();
        let other = leases.issue("o", now).unwrap();
        assert_ne!(t1, t2);
        assert!(leases.redeem("k", t2, now));
        leases.void_all();
        assert!(!leases.redeem("k", t1, now));
        assert!(!leases.redeem("o", other, now));
        assert_eq!(leases.outstanding(), 0);
    }

    #[test]
    fn expired_leases_are_refused_and_swept_when_full() {
        let leases = Leases::with_first(LIFE, 2, 1);
        let start = Instant::now();
        let old = leases.issue("a", start).unwrap();
        leases.issue("b", start).unwrap();
        assert_eq!(leases.issue("c", start), None, "full of valid leases");
        let later = start + LIFE;
        assert!(!leases.redeem("a", old, later), "expired");
        // Full again after the redeem? One slot was freed by it; the sweep frees the other.
        assert!(leases.issue("c", later).is_some());
        assert!(leases.issue("d", later).is_some());
        assert_eq!(leases.outstanding(), 2);
    }

    #[test]
    fn a_key_keeps_its_newest_leases() {
        let leases = Leases::with_first(LIFE, 100, 1);
        let now = Instant::now();
        let tokens: Vec<u64> = (0..PER_KEY + 1)
            .map(|_| leases.issue("k", now).unwrap())
            .collect();
        assert_eq!(leases.outstanding(), PER_KEY);
        assert!(
            !leases.redeem("k", tokens[0], now),
            "the oldest was dropped"
        );
        assert!(leases.redeem("k", tokens[PER_KEY], now));
    }

    #[test]
    fn runs_start_at_different_tokens() {
        let now = Instant::now();
        let a = Leases::new(LIFE, 10).issue("k", now).unwrap();
        let b = Leases::new(LIFE, 10).issue("k", now).unwrap();
        assert_ne!(
            a, b,
            "a token of a previous run must not be valid in this one"
        );
    }
}
