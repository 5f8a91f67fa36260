//! The shard layout and how each operation is routed over it.
//!
//! - A profile lives on `shard_of(id, n)` (jump hash, `shard.rs`).
//! - Writes go to the shard's primary.
//! - Reads go to the shard's replicas in turn (round robin) when it has any, and to the primary
//!   when a replica fails; a read that asks for `Consistency::Primary` (a user reading their own
//!   profile) goes to the primary, so that nobody ever reads a version older than their own write.
//! - Usernames are unique across shards through an index: the entry `username -> id` lives on
//!   `shard_of(username, n)`. Create claims the entry first (the one place two racing creates
//!   meet), then writes the profile, and releases the claim if that fails. A claim whose profile
//!   does not exist (a crash between the two steps) is taken over by the next create.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use api::wire::users::{Profile, ShardStatus};

use crate::Error;
use crate::shard::shard_of;
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
/// stopped replica costs one failed attempt per period rather than one per read.
const REPLICA_COOLDOWN_MS: u64 = 2000;

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

/// Every shard, in layout order.
#[derive(Debug, Clone)]
pub struct Shards {
    shards: Arc<Vec<Shard>>,
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

impl Shards {
    /// A layout of `shards` (at least one).
    pub fn new(shards: Vec<Shard>) -> Result<Shards, Error> {
        if shards.is_empty() {
            return Err(Error::Config(
                "the users service needs at least one shard".into(),
            ));
        }
        Ok(Shards {
            shards: Arc::new(shards),
        })
    }

    /// How many shards there are.
    pub fn count(&self) -> u32 {
        self.shards.len() as u32
    }

    /// The shard number of a user id.
    pub fn index_of(&self, id: &str) -> u32 {
        shard_of(id, self.count())
    }

    fn of(&self, key: &str) -> (u32, &Shard) {
        let i = self.index_of(key);
        (i, &self.shards[i as usize])
    }

    /// Attaches the shard number to an unavailable-store error (`503` naming the shard).
    fn on(shard: u32) -> impl Fn(Error) -> Error {
        move |e| match e {
            Error::Unavailable(detail) => Error::ShardDown { shard, detail },
            other => other,
        }
    }

    /// Creates a profile: claim the username, write the profile, undo the claim on failure.
    pub async fn create(&self, p: &Profile) -> Result<Profile, Error> {
        let (ui, index) = self.of(&p.username);
        let (pi, home) = self.of(&p.id);
        if !index
            .primary
            .claim_username(&p.username, &p.id)
            .await
            .map_err(Self::on(ui))?
        {
            let holder = index
                .primary
                .lookup_username(&p.username)
                .await
                .map_err(Self::on(ui))?;
            match holder {
                // A retried create of the same user: carry on (the insert below decides).
                Some(id) if id == p.id => {}
                Some(id) => {
                    // A claim with no profile is what a crash between the two steps leaves;
                    // anything else is a real duplicate.
                    let (hi, holder_home) = self.of(&id);
                    if holder_home
                        .primary
                        .get(&id)
                        .await
                        .map_err(Self::on(hi))?
                        .is_some()
                    {
                        return Err(Error::UsernameTaken);
                    }
                    index
                        .primary
                        .release_username(&p.username, &id)
                        .await
                        .map_err(Self::on(ui))?;
                    if !index
                        .primary
                        .claim_username(&p.username, &p.id)
                        .await
                        .map_err(Self::on(ui))?
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
                        .map_err(Self::on(ui))?
                    {
                        return Err(Error::UsernameTaken);
                    }
                }
            }
        }
        match home.primary.insert(p).await.map_err(Self::on(pi)) {
            Ok(true) => Ok(p.clone()),
            Ok(false) => {
                // Same id already stored: a duplicate id, or the same create retried.
                match home.primary.get(&p.id).await.map_err(Self::on(pi))? {
                    Some(existing) if existing.username == p.username => Err(Error::IdTaken),
                    _ => {
                        self.release(ui, index, p).await;
                        Err(Error::IdTaken)
                    }
                }
            }
            Err(e) => {
                self.release(ui, index, p).await;
                Err(e)
            }
        }
    }

    async fn release(&self, ui: u32, index: &Shard, p: &Profile) {
        if let Err(e) = index.primary.release_username(&p.username, &p.id).await {
            // The claim stays; the next create of this name takes it over (see the module doc).
            tracing::warn!(error = %e, shard = ui, username = %p.username, "could not release a username claim");
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
        let (i, shard) = self.of(id);
        let (found, copy) =
            read!(shard, consistency, |store| store.get(id)).map_err(Self::on(i))?;
        found
            .map(|p| (p, copy))
            .ok_or_else(|| Error::NotFound(format!("no user has the id {id:?}")))
    }

    /// The profile with this username (index shard, then home shard).
    pub async fn get_by_username(
        &self,
        username: &str,
        consistency: Consistency,
    ) -> Result<Profile, Error> {
        let (ui, index) = self.of(username);
        let (id, _) = read!(index, consistency, |store| store.lookup_username(username))
            .map_err(Self::on(ui))?;
        let id = id.ok_or_else(|| Error::NotFound(format!("no user is named {username:?}")))?;
        self.get(&id, consistency).await.map_err(|e| match e {
            Error::NotFound(_) => Error::NotFound(format!("no user is named {username:?}")),
            other => other,
        })
    }

    /// Applies `changes` on the primary.
    pub async fn update(&self, id: &str, changes: &Changes) -> Result<Profile, Error> {
        let (i, shard) = self.of(id);
        shard
            .primary
            .update(id, changes)
            .await
            .map_err(Self::on(i))?
            .ok_or_else(|| Error::NotFound(format!("no user has the id {id:?}")))
    }

    /// Deletes the profile, then its username claim.
    pub async fn delete(&self, id: &str) -> Result<Profile, Error> {
        let (i, shard) = self.of(id);
        let p = shard
            .primary
            .get(id)
            .await
            .map_err(Self::on(i))?
            .ok_or_else(|| Error::NotFound(format!("no user has the id {id:?}")))?;
        if !shard.primary.delete(id).await.map_err(Self::on(i))? {
            return Err(Error::NotFound(format!("no user has the id {id:?}")));
        }
        let (ui, index) = self.of(&p.username);
        self.release(ui, index, &p).await;
        Ok(p)
    }

    /// Scatter-gather: up to `limit` profiles after `after` from every shard at once, merged in id
    /// order; the next cursor when more may follow. Any shard that fails fails the page (`503`
    /// naming it): a page with a hole would skip users silently.
    pub async fn list(
        &self,
        after: Option<&str>,
        limit: u32,
        consistency: Consistency,
    ) -> Result<(Vec<Profile>, Option<String>), Error> {
        let reads = self.shards.iter().enumerate().map(|(i, shard)| async move {
            read!(shard, consistency, |store| store.list_after(after, limit))
                .map(|(page, _)| page)
                .map_err(Self::on(i as u32))
        });
        let mut all = Vec::new();
        for page in futures::future::join_all(reads).await {
            all.extend(page?);
        }
        all.sort_by(|a, b| a.id.cmp(&b.id));
        let more = all.len() > limit as usize;
        all.truncate(limit as usize);
        let next = if more {
            all.last().map(|p| p.id.clone())
        } else {
            None
        };
        Ok((all, next))
    }

    /// Count and health of every shard (primary and replicas), probed at once.
    pub async fn status(&self) -> Vec<ShardStatus> {
        let probes = self.shards.iter().enumerate().map(|(i, shard)| async move {
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
