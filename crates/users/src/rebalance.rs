//! The mover: changes the shard count while the service keeps answering.
//!
//! `POST /rebalance {"to": M}` records `target = M` in the layout row on shard 0 (so that a
//! restart resumes the move), then runs [`run`]: for every shard, every profile and username
//! entry whose place changes is copied to its new shard under its lock, read back and compared
//! (verify), and only then deleted from the old one. When a whole pass is done the layout row
//! says `count = M, target = none` (switch) and the service places users over M shards. Every
//! step is idempotent, so a kill at any point and a restart (or a rerun) finish the job with no
//! user lost or duplicated; `sharded.rs` explains why reads and writes stay right meanwhile.
//!
//! The per-user locks are in this process: a move needs the topology's single `users` instance
//! (the default).

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;

use crate::placement::shard_of;
use crate::sharded::{Layout, Shards};
use crate::{Config, Error, Shard, ShardStore, SqlStore};

/// `GET /rebalance`.
#[derive(Debug, Serialize)]
pub(crate) struct Status {
    count: u32,
    target: Option<u32>,
    moving: bool,
    moved: u64,
}

pub(crate) fn status(shards: &Shards) -> Status {
    let layout = shards.layout();
    Status {
        count: layout.count,
        target: layout.target,
        moving: shards.inner_moving().load(Ordering::SeqCst),
        moved: shards.inner_moved().load(Ordering::SeqCst),
    }
}

/// Opens the shards `config` lists beyond the `open` first ones, up to `needed`.
pub(crate) async fn open_more(
    config: &Config,
    open: usize,
    needed: u32,
) -> Result<Vec<Shard>, Error> {
    let layout = config.layout_for(needed)?;
    let mut more = Vec::new();
    for s in layout.into_iter().skip(open) {
        let primary: std::sync::Arc<dyn ShardStore> =
            std::sync::Arc::new(SqlStore::open(&s.url).await?);
        let mut replicas: Vec<std::sync::Arc<dyn ShardStore>> = Vec::new();
        for r in &s.replicas {
            replicas.push(std::sync::Arc::new(SqlStore::open_replica(r).await?));
        }
        more.push(Shard::new(primary, replicas));
    }
    Ok(more)
}

/// Starts (or joins) a move to `to` shards. A move to another count is refused until the
/// running one is over: recorded while a mover runs for another count, it would never run.
pub(crate) async fn start(shards: &Shards, config: &Config, to: u32) -> Result<Status, Error> {
    if to == 0 {
        return Err(Error::Invalid {
            code: "invalid_target",
            message: "the new shard count must be at least 1".into(),
        });
    }
    // From the check to the recorded target, one request at a time: two requests for different
    // counts would otherwise both pass the check, and the layout would name one while the mover
    // moves users to the other.
    let _starting = shards.starting().await;
    let layout = shards.layout();
    let in_progress = |t: u32, what: &str| Error::Invalid {
        code: "move_in_progress",
        message: format!("a move to {t} shards is {what}; ask again once it is over"),
    };
    match layout.target {
        Some(t) if t != to => return Err(in_progress(t, "in progress")),
        Some(_) => {}
        None if layout.count == to => return Ok(status(shards)),
        // The mover has switched to its count and waits for the last operations under the old
        // layout; it runs one move, so a target recorded now would never be reached.
        None if shards.inner_moving().load(Ordering::SeqCst) => {
            return Err(in_progress(layout.count, "finishing"));
        }
        None => {
            let open = shards.open_count();
            if (to as usize) > open {
                let more = open_more(config, open, to).await.map_err(|e| match e {
                    Error::Config(message) => Error::Invalid {
                        code: "shards_not_listed",
                        message,
                    },
                    other => other,
                })?;
                shards.add_stores(more);
            }
            let record = shards.stores()[0].primary.clone();
            record
                .save_layout(layout.count, Some(to))
                .await
                .map_err(|e| match e {
                    Error::Unavailable(detail) => Error::ShardDown { shard: 0, detail },
                    other => other,
                })?;
            shards.inner_moved().store(0, Ordering::SeqCst);
            shards.set_layout(Layout {
                count: layout.count,
                target: Some(to),
            });
            tracing::info!(from = layout.count, to, "rebalance started");
        }
    }
    spawn(shards.clone(), to);
    Ok(status(shards))
}

/// Runs the mover unless one runs already.
pub(crate) fn spawn(shards: Shards, to: u32) {
    if shards
        .inner_moving()
        .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
    {
        return;
    }
    tokio::spawn(async move {
        let mut delay = Duration::from_millis(200);
        loop {
            match run(&shards, to).await {
                Ok(()) => break,
                Err(e) => {
                    // A shard down stops the move, not the service: retry until it is back.
                    tracing::warn!(error = %e, "rebalance pass failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        shards.inner_moving().store(false, Ordering::SeqCst);
    });
}

/// One full pass: copy, verify, delete every moving row; then switch.
async fn run(shards: &Shards, to: u32) -> Result<(), Error> {
    // No operation may still be running under the layout without the target.
    shards.drain().await;
    let layout = shards.layout();
    let stores = shards.stores();
    for from in 0..layout.count {
        let source = &stores[from as usize].primary;
        let mut after: Option<String> = None;
        loop {
            let page = source.list_after(after.as_deref(), 200).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            for p in page.iter().filter(|p| shard_of(&p.id, to) != from) {
                let _lock = shards.lock(&format!("i:{}", p.id)).await;
                // Read again under the lock: the row may have changed or gone since the page.
                let Some(p) = source.get(&p.id).await? else {
                    continue;
                };
                let dest = &stores[shard_of(&p.id, to) as usize].primary;
                dest.upsert(&p).await?;
                if dest.get(&p.id).await?.as_ref() != Some(&p) {
                    return Err(Error::Internal(format!("the copy of {} differs", p.id)));
                }
                source.delete(&p.id).await?;
                shards.inner_moved().fetch_add(1, Ordering::SeqCst);
            }
        }
        let mut after: Option<String> = None;
        loop {
            let page = source.usernames_after(after.as_deref(), 200).await?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (username, _) in page.iter().filter(|(u, _)| shard_of(u, to) != from) {
                let _lock = shards.lock(&format!("u:{username}")).await;
                let Some(id) = source.lookup_username(username).await? else {
                    continue;
                };
                let dest = &stores[shard_of(username, to) as usize].primary;
                dest.put_username(username, &id).await?;
                if dest.lookup_username(username).await?.as_deref() != Some(id.as_str()) {
                    return Err(Error::Internal(format!("the copy of {username} differs")));
                }
                source.release_username(username, &id).await?;
                shards.inner_moved().fetch_add(1, Ordering::SeqCst);
            }
        }
    }
    // Switch: recorded first, so that a restart from here on uses the new count.
    stores[0].primary.save_layout(to, None).await?;
    shards.set_layout(Layout {
        count: to,
        target: None,
    });
    shards.drain().await;
    tracing::info!(
        to,
        moved = shards.inner_moved().load(Ordering::SeqCst),
        "rebalance done"
    );
    Ok(())
}
