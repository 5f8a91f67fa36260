//! The shard layout and how each operation is routed over it.
//!
//! - A profile lives on `shard_of(id, n)` (jump hash, `placement.rs`).
//! - Writes go to the shard's primary.
//! - Reads go to the shard's replicas in turn (round robin) when it has any, and to the primary
//!   when a replica fails; a read that asks for `Consistency::Primary` (a user reading their own
//!   profile) goes to the primary, so that nobody ever reads a version older than their own write.
//! - Usernames are unique across shards through an index: the entry `username -> id` lives on
//!   `shard_of(username, n)`. Create claims the entry first (the one place two racing creates
//!   meet), then writes the profile, and releases the claim if that fails. A claim whose profile
//!   does not exist (a crash between the two steps) is taken over by the next create.
//! - Rebalancing (`POST /rebalance`, `rebalance.rs` is the mover) changes the shard count from
//!   `count` to `target` while requests go on. During the move a user's *old* shard
//!   (`jump(id, count)`) is the truth while it still holds the row; the *new* one otherwise.
//!   The mover copies a row under the user's lock, verifies the copy, then deletes the old row;
//!   updates and deletes take the same lock; creates go to the new shard. So a read (old, then
//!   new) never misses a user, and a write is never lost. The same holds for username entries.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use api::wire::users::{Profile, ShardStatus};

use crate::Error;
use crate::placement::shard_of;
use crate::store::{Changes, ShardStore};

/// Which copy a read may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// A replica (round robin), falling back to the primary: may lag behind the last write.
    #[default]
    Replica,
    /// The primary: sees every acknowledged write.
    Primary,
}

/// How long a replica that failed a read is skipped before one read tries it again, so that a
/// stopped replica costs one failed attempt (at most its 0.5 s connect wait) per period rather
/// than one per read.
const REPLICA_COOLDOWN_MS: u64 = 5000;

/// A read replica and when it may be tried again after a failure.
#[derive(Debug)]
struct Replica {
    store: Arc<dyn ShardStore>,
    /// Milliseconds since the epoch before which reads skip this replica.
    down_until_ms: AtomicU64,
}

/// One shard: its primary and its read replicas.
#[derive(Debug)]
pub struct Shard {
    /// Where writes (and fallback reads) go.
    pub primary: Arc<dyn ShardStore>,
    /// Read replicas, tried in turn.
    replicas: Vec<Replica>,
    /// The round-robin position over `replicas`.
    next: AtomicUsize,
}

impl Shard {
    /// A shard of `primary` and `replicas`.
    pub fn new(primary: Arc<dyn ShardStore>, replicas: Vec<Arc<dyn ShardStore>>) -> Shard {
        Shard {
            primary,
            replicas: replicas
                .into_iter()
                .map(|store| Replica {
                    store,
                    down_until_ms: AtomicU64::new(0),
                })
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// The copies a read tries, in order: the next replica not cooling down after a failure (if
    /// the read may use one), then the primary. The `usize` names the replica.
    fn readers(
        &self,
        consistency: Consistency,
    ) -> Vec<(&'static str, &Arc<dyn ShardStore>, Option<usize>)> {
        let mut out = Vec::with_capacity(2);
        if consistency == Consistency::Replica && !self.replicas.is_empty() {
            let now = common::now_ms();
            let start = self.next.fetch_add(1, Ordering::Relaxed);
            let n = self.replicas.len();
            if let Some(i) = (0..n)
                .map(|k| (start + k) % n)
                .find(|&i| self.replicas[i].down_until_ms.load(Ordering::Relaxed) <= now)
            {
                out.push(("replica", &self.replicas[i].store, Some(i)));
            }
        }
        out.push(("primary", &self.primary, None));
        out
    }

    fn replica_failed(&self, i: usize) {
        self.replicas[i]
            .down_until_ms
            .store(common::now_ms() + REPLICA_COOLDOWN_MS, Ordering::Relaxed);
    }
}

/// The shard count, and the count being moved to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Users are placed by `jump(id, count)`.
    pub count: u32,
    /// A move in progress to this many shards.
    pub target: Option<u32>,
}

impl Layout {
    /// The shard that holds `key` now, and the one it moves to (when a move changes it).
    fn homes(&self, key: &str) -> (u32, Option<u32>) {
        let old = shard_of(key, self.count);
        let new = self.target.map(|t| shard_of(key, t)).filter(|n| *n != old);
        (old, new)
    }
}

/// Every shard, and the layout over them.
#[derive(Debug, Clone)]
pub struct Shards {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Every open shard: at least `max(count, target)`.
    stores: RwLock<Vec<Arc<Shard>>>,
    layout: RwLock<Layout>,
    /// Per-key locks (striped) that the mover and the writes of a moving user share.
    locks: Vec<tokio::sync::Mutex<()>>,
    /// Held (shared) by every operation, taken (exclusive) by the mover at each layout change so
    /// that no operation still runs under the previous layout.
    gate: tokio::sync::RwLock<()>,
    /// Users and username entries moved by the current move.
    pub(crate) moved: std::sync::atomic::AtomicU64,
    /// Whether a mover task runs.
    pub(crate) moving: std::sync::atomic::AtomicBool,
    /// Held by a request to start a move from its check of the layout to the recording of its
    /// target, so that two requests for different counts cannot both pass the check.
    starting: tokio::sync::Mutex<()>,
}

/// Runs a read on the copies `readers` names until one answers; a replica that fails is logged
/// and skipped, the primary's failure is the answer.
macro_rules! read {
    ($shard:expr, $consistency:expr, |$store:ident| $call:expr) => {{
        let readers = $shard.readers($consistency);
        let last = readers.len() - 1;
        let mut result = None;
        for (i, (copy, $store, replica)) in readers.into_iter().enumerate() {
            match $call.await {
                Ok(v) => {
                    metrics::counter!("scalelab_users_reads_total", "copy" => copy).increment(1);
                    result = Some(Ok((v, copy)));
                    break;
                }
                Err(e) if i < last => {
                    if let Some(r) = replica {
                        $shard.replica_failed(r);
                    }
                    tracing::warn!(error = %e, "a replica failed a read; reading the primary");
                }
                Err(e) => {
                    result = Some(Err(e));
                    break;
                }
            }
        }
        result.unwrap_or_else(|| Err(Error::Internal("a shard has no copy to read".into())))
    }};
}

/// Attaches the shard number to an unavailable-store error (`503` naming the shard).
fn on(shard: u32) -> impl Fn(Error) -> Error {
    move |e| match e {
        Error::Unavailable(detail) => Error::ShardDown { shard, detail },
        other => other,
    }
}

fn not_found(id: &str) -> Error {
    Error::NotFound(format!("no user has the id {id:?}"))
}

impl Shards {
    /// A layout of `shards` (at least one), all in use.
    pub fn new(shards: Vec<Shard>) -> Result<Shards, Error> {
        let count = shards.len() as u32;
        Self::with_layout(
            shards,
            Layout {
                count,
                target: None,
            },
        )
    }

    /// `shards` open, used as `layout` says (which must not name more shards than are open).
    pub fn with_layout(shards: Vec<Shard>, layout: Layout) -> Result<Shards, Error> {
        let needed = layout.count.max(layout.target.unwrap_or(0)) as usize;
        if shards.is_empty() || layout.count == 0 || shards.len() < needed {
            return Err(Error::Config(format!(
                "the layout needs {needed} shards and {} are configured",
                shards.len()
            )));
        }
        Ok(Shards {
            inner: Arc::new(Inner {
                stores: RwLock::new(shards.into_iter().map(Arc::new).collect()),
                layout: RwLock::new(layout),
                locks: (0..256).map(|_| tokio::sync::Mutex::new(())).collect(),
                gate: tokio::sync::RwLock::new(()),
                moved: Default::default(),
                moving: Default::default(),
                starting: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The layout in use.
    pub fn layout(&self) -> Layout {
        *self.inner.layout.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_layout(&self, layout: Layout) {
        *self.inner.layout.write().unwrap_or_else(|e| e.into_inner()) = layout;
    }

    pub(crate) fn inner_moved(&self) -> &std::sync::atomic::AtomicU64 {
        &self.inner.moved
    }

    pub(crate) fn inner_moving(&self) -> &std::sync::atomic::AtomicBool {
        &self.inner.moving
    }

    /// Taken by each request to start a move (see `rebalance::start`).
    pub(crate) async fn starting(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.inner.starting.lock().await
    }

    /// Waits until no operation runs under an older layout.
    pub(crate) async fn drain(&self) {
        drop(self.inner.gate.write().await);
    }

    /// Adds open shards at the end (before a move to more shards than are open).
    pub(crate) fn add_stores(&self, more: Vec<Shard>) {
        let mut stores = self.inner.stores.write().unwrap_or_else(|e| e.into_inner());
        stores.extend(more.into_iter().map(Arc::new));
    }

    /// How many shards are open.
    pub(crate) fn open_count(&self) -> usize {
        self.stores().len()
    }

    pub(crate) fn stores(&self) -> Vec<Arc<Shard>> {
        self.inner
            .stores
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many shards users are placed on.
    pub fn count(&self) -> u32 {
        self.layout().count
    }

    /// The shard number of a user id (under the current count).
    pub fn index_of(&self, id: &str) -> u32 {
        shard_of(id, self.count())
    }

    pub(crate) async fn lock(&self, key: &str) -> tokio::sync::MutexGuard<'_, ()> {
        let i = crate::placement::fnv1a64(key.as_bytes()) as usize % self.inner.locks.len();
        self.inner.locks[i].lock().await
    }

    /// Locks two keys (in stripe order, once if they share a stripe).
    async fn lock2(
        &self,
        a: &str,
        b: &str,
    ) -> (
        tokio::sync::MutexGuard<'_, ()>,
        Option<tokio::sync::MutexGuard<'_, ()>>,
    ) {
        let n = self.inner.locks.len();
        let (i, j) = (
            crate::placement::fnv1a64(a.as_bytes()) as usize % n,
            crate::placement::fnv1a64(b.as_bytes()) as usize % n,
        );
        if i == j {
            (self.inner.locks[i].lock().await, None)
        } else {
            let (lo, hi) = (i.min(j), i.max(j));
            let first = self.inner.locks[lo].lock().await;
            (first, Some(self.inner.locks[hi].lock().await))
        }
    }

    /// Creates a profile: claim the username, write the profile, undo the claim on failure.
    pub async fn create(&self, p: &Profile) -> Result<Profile, Error> {
        let _gate = self.inner.gate.read().await;
        let _locks = self
            .lock2(&format!("u:{}", p.username), &format!("i:{}", p.id))
            .await;
        let layout = self.layout();
        let stores = self.stores();
        let (uo, un) = layout.homes(&p.username);
        let (po, pn) = layout.homes(&p.id);
        let ui = un.unwrap_or(uo);
        let pi = pn.unwrap_or(po);
        let index = &stores[ui as usize];
        let home = &stores[pi as usize];
        if let Some(old) = un.map(|_| &stores[uo as usize]) {
            // Mid-move, the entry may still be on the old index shard.
            if let Some(holder) = old
                .primary
                .lookup_username(&p.username)
                .await
                .map_err(on(uo))?
            {
                if holder != p.id && self.find(&layout, &stores, &holder).await?.is_some() {
                    return Err(Error::UsernameTaken);
                }
                old.primary
                    .release_username(&p.username, &holder)
                    .await
                    .map_err(on(uo))?;
            }
        }
        if pn.is_some()
            && stores[po as usize]
                .primary
                .get(&p.id)
                .await
                .map_err(on(po))?
                .is_some()
        {
            return Err(Error::IdTaken);
        }
        if !index
            .primary
            .claim_username(&p.username, &p.id)
            .await
            .map_err(on(ui))?
        {
            let holder = index
                .primary
                .lookup_username(&p.username)
                .await
                .map_err(on(ui))?;
            match holder {
                // A retried create of the same user: carry on (the insert below decides).
                Some(id) if id == p.id => {}
                Some(id) => {
                    // A claim with no profile is what a crash between the two steps leaves;
                    // anything else is a real duplicate.
                    if self.find(&layout, &stores, &id).await?.is_some() {
                        return Err(Error::UsernameTaken);
                    }
                    index
                        .primary
                        .release_username(&p.username, &id)
                        .await
                        .map_err(on(ui))?;
                    if !index
                        .primary
                        .claim_username(&p.username, &p.id)
                        .await
                        .map_err(on(ui))?
                    {
                        return Err(Error::UsernameTaken);
                    }
                    tracing::info!(username = %p.username, stale = %id, "took over a username claim without a profile");
                }
                // Released between our insert and our look: try once more.
                None => {
                    if !index
                        .primary
                        .claim_username(&p.username, &p.id)
                        .await
                        .map_err(on(ui))?
                    {
                        return Err(Error::UsernameTaken);
                    }
                }
            }
        }
        match home.primary.insert(p).await.map_err(on(pi)) {
            Ok(true) => Ok(p.clone()),
            Ok(false) => {
                // Same id already stored: a duplicate id, or the same create retried.
                match home.primary.get(&p.id).await.map_err(on(pi))? {
                    Some(existing) if existing.username == p.username => Err(Error::IdTaken),
                    _ => {
                        release(ui, index, p).await;
                        Err(Error::IdTaken)
                    }
                }
            }
            Err(e) => {
                release(ui, index, p).await;
                Err(e)
            }
        }
    }

    /// The profile on the primaries, wherever a move has it (old shard first).
    async fn find(
        &self,
        layout: &Layout,
        stores: &[Arc<Shard>],
        id: &str,
    ) -> Result<Option<Profile>, Error> {
        let (o, n) = layout.homes(id);
        if let Some(p) = stores[o as usize].primary.get(id).await.map_err(on(o))? {
            return Ok(Some(p));
        }
        match n {
            Some(n) => stores[n as usize].primary.get(id).await.map_err(on(n)),
            None => Ok(None),
        }
    }

    /// The profile with this id.
    pub async fn get(&self, id: &str, consistency: Consistency) -> Result<Profile, Error> {
        self.get_from(id, consistency).await.map(|(p, _)| p)
    }

    /// The profile with this id and the copy that answered (`primary` or `replica`).
    pub async fn get_from(
        &self,
        id: &str,
        consistency: Consistency,
    ) -> Result<(Profile, &'static str), Error> {
        let _gate = self.inner.gate.read().await;
        let layout = self.layout();
        let stores = self.stores();
        let (o, n) = layout.homes(id);
        let shard = &stores[o as usize];
        let (found, copy) = read!(shard, consistency, |store| store.get(id)).map_err(on(o))?;
        if let Some(p) = found {
            return Ok((p, copy));
        }
        // Mid-move: moved rows are on the new shard, read from its primary (the copy is new).
        if let Some(n) = n {
            let found = stores[n as usize].primary.get(id).await.map_err(on(n))?;
            return found.map(|p| (p, "primary")).ok_or_else(|| not_found(id));
        }
        Err(not_found(id))
    }

    /// The profile with this username (index shard, then home shard).
    pub async fn get_by_username(
        &self,
        username: &str,
        consistency: Consistency,
    ) -> Result<Profile, Error> {
        let id = {
            let _gate = self.inner.gate.read().await;
            let layout = self.layout();
            let stores = self.stores();
            let (o, n) = layout.homes(username);
            let index = &stores[o as usize];
            let (mut id, _) = read!(index, consistency, |store| store.lookup_username(username))
                .map_err(on(o))?;
            if let (None, Some(n)) = (&id, n) {
                id = stores[n as usize]
                    .primary
                    .lookup_username(username)
                    .await
                    .map_err(on(n))?;
            }
            id.ok_or_else(|| Error::NotFound(format!("no user is named {username:?}")))?
        };
        self.get(&id, consistency).await.map_err(|e| match e {
            Error::NotFound(_) => Error::NotFound(format!("no user is named {username:?}")),
            other => other,
        })
    }

    /// Applies `changes` on the primary that holds the user.
    pub async fn update(&self, id: &str, changes: &Changes) -> Result<Profile, Error> {
        let _gate = self.inner.gate.read().await;
        let _lock = self.lock(&format!("i:{id}")).await;
        let layout = self.layout();
        let stores = self.stores();
        let (o, n) = layout.homes(id);
        if let Some(p) = stores[o as usize]
            .primary
            .update(id, changes)
            .await
            .map_err(on(o))?
        {
            return Ok(p);
        }
        match n {
            Some(n) => stores[n as usize]
                .primary
                .update(id, changes)
                .await
                .map_err(on(n))?
                .ok_or_else(|| not_found(id)),
            None => Err(not_found(id)),
        }
    }

    /// Deletes the profile, then its username claim.
    pub async fn delete(&self, id: &str) -> Result<Profile, Error> {
        let _gate = self.inner.gate.read().await;
        let layout = self.layout();
        let stores = self.stores();
        let p = {
            let _lock = self.lock(&format!("i:{id}")).await;
            let p = self
                .find(&layout, &stores, id)
                .await?
                .ok_or_else(|| not_found(id))?;
            let (o, n) = layout.homes(id);
            let mut deleted = stores[o as usize].primary.delete(id).await.map_err(on(o))?;
            if let Some(n) = n {
                deleted |= stores[n as usize].primary.delete(id).await.map_err(on(n))?;
            }
            if !deleted {
                return Err(not_found(id));
            }
            p
        };
        let _lock = self.lock(&format!("u:{}", p.username)).await;
        let (uo, un) = layout.homes(&p.username);
        for ui in std::iter::once(uo).chain(un) {
            release(ui, &stores[ui as usize], &p).await;
        }
        Ok(p)
    }

    /// Scatter-gather: up to `limit` profiles after `after` from every shard at once, merged in id
    /// order; the next cursor when more may follow. Any shard that fails fails the page (`503`
    /// naming it): a page with a hole would skip users silently. Mid-move a user may be on two
    /// shards for an instant (copied, not yet deleted): the copies are equal and counted once.
    pub async fn list(
        &self,
        after: Option<&str>,
        limit: u32,
        consistency: Consistency,
    ) -> Result<(Vec<Profile>, Option<String>), Error> {
        let _gate = self.inner.gate.read().await;
        let layout = self.layout();
        let stores = self.stores();
        let used = layout.count.max(layout.target.unwrap_or(0)) as usize;
        let reads = stores[..used]
            .iter()
            .enumerate()
            .map(|(i, shard)| async move {
                read!(shard, consistency, |store| store.list_after(after, limit))
                    .map(|(page, _)| page)
                    .map_err(on(i as u32))
            });
        let mut all = Vec::new();
        for page in futures::future::join_all(reads).await {
            all.extend(page?);
        }
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all.dedup_by(|a, b| a.id == b.id);
        let more = all.len() > limit as usize;
        all.truncate(limit as usize);
        let next = if more {
            all.last().map(|p| p.id.clone())
        } else {
            None
        };
        Ok((all, next))
    }

    /// Count and health of every shard in use (primary and replicas), probed at once.
    pub async fn status(&self) -> Vec<ShardStatus> {
        let layout = self.layout();
        let stores = self.stores();
        let used = layout.count.max(layout.target.unwrap_or(0)) as usize;
        let probes = stores[..used]
            .iter()
            .enumerate()
            .map(|(i, shard)| async move {
                let (count, replicas) = tokio::join!(
                    shard.primary.count(),
                    futures::future::join_all(shard.replicas.iter().map(|r| r.store.ping()))
                );
                ShardStatus {
                    shard: i as u32,
                    engine: shard.primary.engine().to_string(),
                    healthy: count.is_ok(),
                    users: count.ok(),
                    replicas: replicas.iter().map(Result::is_ok).collect(),
                }
            });
        futures::future::join_all(probes).await
    }
}

async fn release(ui: u32, index: &Shard, p: &Profile) {
    if let Err(e) = index.primary.release_username(&p.username, &p.id).await {
        // The claim stays; the next create of this name takes it over (see the module doc).
        tracing::warn!(error = %e, shard = ui, username = %p.username, "could not release a username claim");
    }
}
