//! [`TtlCache`]: a bounded in-memory cache with a time to live per entry and the counters of
//! `GET /cache/stats`. It is the store of the `cache` service and the gateway's `local` cache
//! backend: one piece, so that the two cannot drift apart again.
//!
//! Built on `moka::future::Cache`, bounded by entry count, with per-entry expiry through moka's
//! [`Expiry`] (each entry lives for the TTL it was written with; a rewrite restarts the clock with
//! the new TTL; reads do not extend it: a TTL, not an idle timeout).
//!
//! Eviction is **LRU**, not moka's default TinyLFU. TinyLFU admits a new key into a full cache
//! only if its estimated frequency beats the victim's, so a key written once may be refused and
//! the very next read misses. Both users of this cache write a value because it is about to be
//! read (cache-aside fills, clients of the cache service), so "what was just stored can be read
//! back" matters more here than TinyLFU's better hit ratio on scan-heavy workloads.
//!
//! Invariant: an entry is never returned after its TTL ran out, even if moka has not yet removed
//! it (moka checks expiry on read). The `expired` counter moves when moka does remove it:
//! [`TtlCache::stats`] runs moka's pending maintenance first, but moka tracks expiry on a timer
//! wheel whose finest slots are about a second wide, so `expired` (and `entries`) may trail the
//! moment an entry stopped being served by up to about a second. moka's clock is real time, so
//! paused tokio time does not move it.
//!
//! **Reads past moka.** A lookup in moka costs about 1.5k instructions (hash, concurrent table,
//! the read recorded for LRU), a seventh of a gateway's cache hit; a memo hit about 260 (callgrind,
//! `bench/gateway-vs-hello.sh`). Each thread keeps a small memo of the entries it read lately
//! (`Memo`: a direct-mapped table of [`MEMO_SLOTS`] slots), each
//! stamped with the cache's write generation when it was read; a memo slot answers only while no
//! write, removal, clear or eviction happened in the whole cache since (the generation is
//! unchanged), before the entry's own deadline, and for at most [`MEMO_REFRESH`] reads in a row:
//! every `MEMO_REFRESH`-th read goes to moka again, so that a key read mostly from memos still
//! counts as recently used. A memo answers as moka would: never with a value older than a write
//! that has returned, nor older than one another reader has already seen (a task can move between
//! threads, so one reader can use two memos). A change counts itself as under way before it
//! changes moka, moves the generation after, then stops counting; a memo slot is stamped with the
//! generation read before moka was asked, and answers only when no change is under way and the
//! generation is still its stamp (checked in that order: a change whose value anyone could have
//! read is either still counted or has moved the generation).

use std::cell::RefCell;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use api::wire::cache::CacheStats;
use moka::Expiry;
use moka::notification::RemovalCause;
use moka::policy::EvictionPolicy;
use thread_local::ThreadLocal;

/// One stored value and the TTL it was stored with.
#[derive(Debug, Clone)]
struct Entry<V> {
    value: V,
    /// Read by [`PerEntryTtl`] when the entry is written.
    ttl: Duration,
    /// When the TTL runs out, taken just before moka stores the entry (so never later than
    /// moka's own deadline); `None` when it is too far away to represent.
    expires: Option<Instant>,
}

/// Slots in each thread's memo (see the module documentation).
pub const MEMO_SLOTS: usize = 256;
/// A memo slot answers at most this many reads in a row before moka is asked again.
pub const MEMO_REFRESH: u32 = 32;

/// One entry a thread read from moka, and when.
struct Slot<V> {
    key: String,
    value: V,
    expires: Instant,
    /// The cache's write generation read before moka was asked.
    generation: u64,
    /// Reads answered from this slot since moka was last asked.
    uses: u32,
}

/// A thread's memo: slot `hash(key) % MEMO_SLOTS` holds the last entry of such a key it read.
struct Memo<V> {
    slots: Box<[Option<Slot<V>>]>,
}

impl<V> Memo<V> {
    fn new() -> Self {
        Self {
            slots: (0..MEMO_SLOTS).map(|_| None).collect(),
        }
    }
}

/// Gives every entry the TTL it was stored with; a new write of a key restarts its clock with
/// the new TTL, and reads leave it alone (moka's default for `expire_after_read`).
struct PerEntryTtl;

impl<V> Expiry<String, Entry<V>> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &String,
        entry: &Entry<V>,
        _at: Instant,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &String,
        entry: &Entry<V>,
        _at: Instant,
        _remaining: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
}

/// Counters that moka does not keep itself.
#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    /// Moved by the eviction listener on `RemovalCause::Size`.
    evictions: AtomicU64,
    /// Moved by the eviction listener on `RemovalCause::Expired`.
    expired: AtomicU64,
    /// Moved after every change of the entries (insert, remove, clear, eviction): a memo slot
    /// stamped with an older generation is not used.
    generation: AtomicU64,
    /// Changes under way (moved up before moka is changed, down after `generation` moved): no
    /// memo slot is used while one is, since a reader may already have seen its value in moka.
    changing: AtomicU64,
}

/// A cache of `V` by string key, at most `max_entries` entries (LRU beyond), each with its own
/// TTL. Cheap to clone: clones share the entries and the counters.
///
/// `V` is cloned on every hit, so store something cheap to clone (an `Arc`) when values are big.
#[derive(Clone)]
pub struct TtlCache<V: Send> {
    /// Keys hashed with foldhash's seeded `quality` hasher: keys come from clients, so the hash
    /// is seeded per process (as SipHash's is), at a fraction of SipHash's cost per lookup.
    entries: moka::future::Cache<String, Entry<V>, foldhash::quality::RandomState>,
    counters: Arc<Counters>,
    /// Each thread's memo of recent reads.
    memos: Arc<ThreadLocal<RefCell<Memo<V>>>>,
    /// Picks a key's memo slot (seeded, like the table's hasher).
    slot_hasher: foldhash::fast::RandomState,
}

impl<V: Send> fmt::Debug for TtlCache<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TtlCache")
            .field("entries", &self.entries.entry_count())
            .finish_non_exhaustive()
    }
}

impl<V: Clone + Send + Sync + 'static> TtlCache<V> {
    /// An empty cache holding at most `max_entries` entries.
    pub fn new(max_entries: u64) -> Self {
        let counters = Arc::new(Counters::default());
        let listener = counters.clone();
        let entries = moka::future::Cache::builder()
            .max_capacity(max_entries)
            // LRU: a new key is always admitted (see the module doc for why not TinyLFU).
            .eviction_policy(EvictionPolicy::lru())
            .expire_after(PerEntryTtl)
            .eviction_listener(move |_key, _value, cause| match cause {
                RemovalCause::Size => {
                    listener.evictions.fetch_add(1, Ordering::Relaxed);
                    listener.generation.fetch_add(1, Ordering::SeqCst);
                }
                RemovalCause::Expired => {
                    listener.expired.fetch_add(1, Ordering::Relaxed);
                }
                // Replaced and explicitly removed entries are the caller's doing, not the cache's.
                RemovalCause::Replaced | RemovalCause::Explicit => {}
            })
            .build_with_hasher(foldhash::quality::RandomState::default());
        Self {
            entries,
            counters,
            memos: Arc::new(ThreadLocal::new()),
            slot_hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// The value under `key` (`None` when absent or expired), counting a hit or a miss.
    pub async fn get(&self, key: &str) -> Option<V> {
        let found = self.read(key).await;
        let counter = if found.is_some() {
            &self.counters.hits
        } else {
            &self.counters.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// The value under `key`: from this thread's memo when its slot is still good (see the
    /// module documentation), else from moka, remembered in the memo.
    async fn read(&self, key: &str) -> Option<V> {
        let slot = self.slot_hasher.hash_one(key) as usize % MEMO_SLOTS;
        // In this order (see the module documentation): no change under way, then the
        // generation, read before moka is asked, so that a change made after moves it on.
        let quiet = self.counters.changing.load(Ordering::SeqCst) == 0;
        let generation = self.counters.generation.load(Ordering::SeqCst);
        if quiet
            && let Some(s) = self.memo().borrow_mut().slots[slot].as_mut()
            && s.generation == generation
            && s.uses < MEMO_REFRESH
            && s.key == key
            && Instant::now() < s.expires
        {
            s.uses += 1;
            return Some(s.value.clone());
        }
        let entry = self.entries.get(key).await?;
        if let Some(expires) = entry.expires {
            // This thread's memo (the task may have moved to another thread while moka ran).
            let mut memo = self.memo().borrow_mut();
            match &mut memo.slots[slot] {
                // Reuses the slot's key buffer when it held this key already.
                Some(s) if s.key == key => {
                    s.value = entry.value.clone();
                    s.expires = expires;
                    s.generation = generation;
                    s.uses = 0;
                }
                other => {
                    *other = Some(Slot {
                        key: key.to_owned(),
                        value: entry.value.clone(),
                        expires,
                        generation,
                        uses: 0,
                    })
                }
            }
        }
        Some(entry.value)
    }

    /// This thread's memo.
    fn memo(&self) -> &RefCell<Memo<V>> {
        self.memos.get_or(|| RefCell::new(Memo::new()))
    }

    /// Runs `change` (of moka's entries) counted as under way, then makes every memo slot stale.
    /// A change whose future is dropped half way ends the same way (a guard does the last two).
    async fn change<T>(&self, change: impl Future<Output = T>) -> T {
        struct Done<'a>(&'a Counters);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.generation.fetch_add(1, Ordering::SeqCst);
                self.0.changing.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.counters.changing.fetch_add(1, Ordering::SeqCst);
        let _done = Done(&self.counters);
        change.await
    }

    /// The value under `key` (`None` when absent or expired), counting nothing: for a writer
    /// that compares, not for a reader.
    pub async fn peek(&self, key: &str) -> Option<V> {
        self.entries.get(key).await.map(|e| e.value)
    }

    /// Stores `value` under `key` for `ttl`, replacing any previous value and TTL.
    pub async fn insert(&self, key: String, value: V, ttl: Duration) {
        let expires = Instant::now().checked_add(ttl);
        let entry = Entry {
            value,
            ttl,
            expires,
        };
        self.change(self.entries.insert(key, entry)).await;
    }

    /// Removes `key`; whether a live entry was there.
    pub async fn remove(&self, key: &str) -> bool {
        self.change(self.entries.remove(key)).await.is_some()
    }

    /// Removes every entry; how many live entries there were.
    ///
    /// Live entries are removed key by key and counted, so the number is the entries a reader
    /// could still have seen. What is left after that goes too, uncounted: entries whose TTL ran
    /// out but that moka had not dropped yet (they would otherwise stay in `entries` for up to a
    /// second), and entries written while the clear ran.
    pub async fn clear(&self) -> u64 {
        self.change(async {
            let keys: Vec<Arc<String>> = self.entries.iter().map(|(k, _)| k).collect();
            let mut removed = 0;
            for key in keys {
                if self.entries.remove(key.as_str()).await.is_some() {
                    removed += 1;
                }
            }
            self.entries.invalidate_all();
            self.entries.run_pending_tasks().await;
            removed
        })
        .await
    }

    /// Size and counters, as `GET /cache/stats` shows them.
    pub async fn stats(&self) -> CacheStats {
        // moka applies evictions, expirations and the entry count lazily; run that maintenance
        // now so that the numbers describe the cache as it is, not as it was a moment ago.
        self.entries.run_pending_tasks().await;
        let hits = self.counters.hits.load(Ordering::Relaxed);
        let misses = self.counters.misses.load(Ordering::Relaxed);
        let lookups = hits + misses;
        CacheStats {
            entries: self.entries.entry_count(),
            hits,
            misses,
            hit_ratio: if lookups == 0 {
                0.0
            } else {
                hits as f64 / lookups as f64
            },
            evictions: self.counters.evictions.load(Ordering::Relaxed),
            expired: self.counters.expired.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn a_full_cache_admits_every_new_key_and_evicts_the_least_recently_used() {
        let c = TtlCache::new(3);
        for k in ["a", "b", "c"] {
            c.insert(k.to_string(), k, MINUTE).await;
        }
        // Reading "a" makes "b" the least recently used one.
        assert_eq!(c.get("a").await, Some("a"));
        c.stats().await;
        for k in ["d", "e"] {
            c.insert(k.to_string(), k, MINUTE).await;
            // A key just written is always readable: TinyLFU could have refused it here.
            assert_eq!(c.get(k).await, Some(k), "{k} was not admitted");
        }
        let st = c.stats().await;
        assert_eq!((st.entries, st.evictions, st.expired), (3, 2, 0), "{st:?}");
        assert_eq!(c.get("b").await, None, "the least recently used goes first");
    }

    #[tokio::test]
    async fn each_entry_keeps_its_own_ttl_and_a_rewrite_restarts_it() {
        let c = TtlCache::new(10);
        c.insert("short".into(), 1, Duration::from_millis(1)).await;
        c.insert("long".into(), 2, MINUTE).await;
        c.insert("renewed".into(), 3, Duration::from_millis(1))
            .await;
        c.insert("renewed".into(), 4, MINUTE).await;
        // moka's clock is real time: wait for the deadline rather than a fixed sleep.
        let deadline = Instant::now() + Duration::from_secs(5);
        while c.get("short").await.is_some() {
            assert!(Instant::now() < deadline, "the entry never expired");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(c.get("long").await, Some(2));
        assert_eq!(c.get("renewed").await, Some(4), "the rewrite's TTL applies");
    }

    #[tokio::test]
    async fn counters_remove_and_clear() {
        let c = TtlCache::new(10);
        let empty = c.stats().await;
        assert_eq!((empty.entries, empty.hit_ratio), (0, 0.0));
        for i in 0..4 {
            c.insert(format!("k{i}"), i, MINUTE).await;
        }
        c.get("k0").await;
        c.get("k1").await;
        c.get("k2").await;
        c.get("nope").await;
        assert!(c.remove("k3").await);
        assert!(!c.remove("k3").await, "already gone");
        let st = c.stats().await;
        assert_eq!(
            (st.entries, st.hits, st.misses, st.hit_ratio),
            (3, 3, 1, 0.75)
        );
        // An entry past its TTL is no longer served but may still be counted by moka.
        c.insert("gone".into(), 9, Duration::from_millis(1)).await;
        while c.get("gone").await.is_some() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(c.clear().await, 3, "only live entries are counted");
        assert_eq!(c.stats().await.entries, 0, "the expired one is gone too");
        assert_eq!(c.clear().await, 0);
    }

    #[tokio::test]
    async fn a_memo_never_answers_past_a_write_a_removal_or_a_clear() {
        let c = TtlCache::new(10);
        c.insert("k".into(), 1, MINUTE).await;
        for _ in 0..5 {
            assert_eq!(c.get("k").await, Some(1));
        }
        c.insert("k".into(), 2, MINUTE).await;
        assert_eq!(c.get("k").await, Some(2), "the write is seen at once");
        assert_eq!(c.get("k").await, Some(2));
        // A write of another key makes the memo stale too; the value stays right.
        c.insert("other".into(), 9, MINUTE).await;
        assert_eq!(c.get("k").await, Some(2));
        assert!(c.remove("k").await);
        assert_eq!(
            c.get("k").await,
            None,
            "a removed key is not answered from the memo"
        );
        c.insert("k".into(), 3, MINUTE).await;
        assert_eq!(c.get("k").await, Some(3));
        assert_eq!(c.clear().await, 2);
        assert_eq!(
            c.get("k").await,
            None,
            "a cleared key is not answered from the memo"
        );
        let st = c.stats().await;
        assert_eq!((st.hits, st.misses), (9, 2), "memo answers count as hits");
    }

    /// Readers on other threads, reading while a writer writes 1, 2, 3, ...: once an insert has
    /// returned, no reader anywhere answers an older value, and each reader's values only grow.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn readers_on_every_thread_see_each_write_once_it_returned() {
        const WRITES: u64 = 2_000;
        let c = TtlCache::new(100);
        c.insert("k".into(), 0u64, MINUTE).await;
        let written = Arc::new(AtomicU64::new(0));
        let mut readers = Vec::new();
        for _ in 0..3 {
            let (c, written) = (c.clone(), written.clone());
            readers.push(tokio::spawn(async move {
                let mut last = 0;
                let mut reads = 0u64;
                loop {
                    let returned = written.load(Ordering::SeqCst);
                    let v = c.get("k").await.expect("the key is always there");
                    assert!(
                        v >= returned,
                        "read {v} after the write of {returned} returned"
                    );
                    assert!(v >= last, "read {v} after {last}");
                    last = v;
                    reads += 1;
                    if v == WRITES {
                        return reads;
                    }
                    // Lets the writer run on a busy runtime now and then.
                    if reads.is_multiple_of(64) {
                        tokio::task::yield_now().await;
                    }
                }
            }));
        }
        for v in 1..=WRITES {
            c.insert("k".into(), v, MINUTE).await;
            written.store(v, Ordering::SeqCst);
            if v.is_multiple_of(16) {
                tokio::task::yield_now().await;
            }
        }
        for r in readers {
            assert!(r.await.expect("reader") > 0);
        }
    }

    /// A key read mostly from the memo still counts as recently used: every `MEMO_REFRESH`-th
    /// read goes to moka, so the LRU order sees it.
    #[tokio::test]
    async fn a_key_read_from_the_memo_stays_recently_used() {
        let c = TtlCache::new(3);
        for k in ["a", "b", "c"] {
            c.insert(k.to_string(), k, MINUTE).await;
        }
        // moka orders entries when it applies its pending writes and reads.
        c.stats().await;
        // Recency a < b < c as moka saw it, then "a" read from the memo past one refresh
        // (without the refresh, "a" would be the least recently used).
        for k in ["a", "b", "c"] {
            assert_eq!(c.get(k).await, Some(k));
        }
        c.stats().await;
        for _ in 0..=MEMO_REFRESH {
            assert_eq!(c.get("a").await, Some("a"));
        }
        c.stats().await;
        c.insert("d".into(), "d", MINUTE).await;
        c.stats().await;
        assert_eq!(c.get("b").await, None, "b was the least recently used");
        assert_eq!(c.get("a").await, Some("a"), "a was refreshed in moka");
    }
}
