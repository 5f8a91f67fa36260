//! The write fence: keeps a cache fill that raced a write from putting the old value back.
//!
//! Cache-aside has one classic race: a miss reads the db (old value), a write lands and deletes the
//! cached entry, then the miss stores the old value it read, which then stays until its TTL. The
//! fence closes it within one gateway. Every key maps to a stripe holding a generation counter and
//! a lock. A fill notes the generation before its db read and stores its value only if, under the
//! stripe's lock, the generation is unchanged; a write, after its db write, bumps the generation and
//! deletes the cached entry under the same lock. So either the fill stored before the delete (and
//! the delete removes it) or it sees the bump and stores nothing.
//!
//! Across gateways (a fill on one gateway, a write on another) this fence cannot see the write.
//! With `cache = "service"` the cache service's fill leases close that race: the miss hands the
//! fill a lease, the other gateway's delete voids it, and the fill is refused
//! (`crates/cache/src/lease.rs`). With `local` there is nothing shared to race on; with `redis` the
//! TTL still bounds it.

use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Mutex;

/// Stripes: enough that unrelated keys rarely wait on each other.
const STRIPES: usize = 256;

#[derive(Debug, Default)]
struct Stripe {
    generation: AtomicU64,
    lock: Mutex<()>,
}

/// Generation counters and locks for cache fills and invalidations, by key stripe.
#[derive(Debug)]
pub struct WriteFence {
    stripes: Vec<Stripe>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for WriteFence {
    fn default() -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| Stripe::default()).collect(),
            hasher: Default::default(),
        }
    }
}

impl WriteFence {
    fn stripe(&self, key: &(impl Hash + ?Sized)) -> &Stripe {
        let h = self.hasher.hash_one(key) as usize;
        &self.stripes[h % self.stripes.len()]
    }

    /// The key's generation now; note it before reading the source of a fill.
    pub fn generation(&self, key: &str) -> u64 {
        self.stripe(key).generation.load(Ordering::Acquire)
    }

    /// Runs `fill` (the cache store) only if no write to the key's stripe happened since
    /// `seen`; returns whether it ran.
    pub async fn fill_if_unchanged<F: Future>(
        &self,
        key: &str,
        seen: u64,
        fill: F,
    ) -> Option<F::Output> {
        let stripe = self.stripe(key);
        let _held = stripe.lock.lock().await;
        if stripe.generation.load(Ordering::Acquire) != seen {
            return None;
        }
        Some(fill.await)
    }

    /// Marks a write to `key` (call it after the write reached the source) and runs `invalidate`
    /// (the cache delete) so that no fill that read before the write can store afterwards.
    pub async fn invalidate<F: Future>(&self, key: &str, invalidate: F) -> F::Output {
        let stripe = self.stripe(key);
        let _held = stripe.lock.lock().await;
        stripe.generation.fetch_add(1, Ordering::AcqRel);
        invalidate.await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_fill_that_read_before_a_write_does_not_store() {
        let fence = WriteFence::default();
        let seen = fence.generation("k");
        // A write lands between the fill's read and its store.
        fence.invalidate("k", async {}).await;
        assert_eq!(fence.fill_if_unchanged("k", seen, async { 1 }).await, None);
        // A fill that starts after the write stores.
        let seen = fence.generation("k");
        assert_eq!(
            fence.fill_if_unchanged("k", seen, async { 2 }).await,
            Some(2)
        );
    }

    #[tokio::test]
    async fn fills_of_unwritten_keys_store() {
        let fence = WriteFence::default();
        let seen = fence.generation("a");
        fence.invalidate("some-other-key-far-away", async {}).await;
        // Another key may share the stripe; then the fill is skipped, which is safe (one more miss).
        let stored = fence.fill_if_unchanged("a", seen, async { 3 }).await;
        let same_stripe = std::ptr::eq(fence.stripe("a"), fence.stripe("some-other-key-far-away"));
        assert_eq!(stored.is_none(), same_stripe);
    }
}
