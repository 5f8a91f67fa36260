//! Single flight: concurrent callers asking for the same key share one execution of the work.
//!
//! This is what keeps a burst of cache misses for one key from becoming a burst of `db` reads: the
//! first caller (the leader) starts the work, every caller that arrives while it runs waits for the
//! same result. The work runs in its own task, so that a leader whose client hangs up does not
//! cancel it for the others; a guard removes the key from the map however the task ends (even by
//! panic), so that a key is never stuck. Written by hand on purpose: it is one of the mechanisms the
//! project exists to show.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// Flights in progress, by key. `V` is the shared result (clone it cheaply: `Arc` or small).
#[derive(Debug)]
pub struct SingleFlight<K, V> {
    flights: Arc<Mutex<HashMap<K, watch::Receiver<Option<V>>>>>,
    /// Callers waiting for a result now (leaders and followers): lets tests and metrics see how
    /// many requests one flight serves.
    waiting: AtomicUsize,
}

impl<K, V> Default for SingleFlight<K, V> {
    fn default() -> Self {
        Self {
            flights: Arc::new(Mutex::new(HashMap::new())),
            waiting: AtomicUsize::new(0),
        }
    }
}

/// Counts one waiting caller until dropped (the caller got its result or gave up).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How a caller got its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// This caller started the work.
    Leader,
    /// This caller joined a flight already in progress.
    Follower,
}

/// Why a flight gave no result: its task ended without one (it panicked or the runtime is
/// shutting down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the shared work ended without a result")]
pub struct Aborted;

/// Removes the flight's key when the task ends, whichever way.
struct Landing<K: Hash + Eq, V> {
    flights: Arc<Mutex<HashMap<K, watch::Receiver<Option<V>>>>>,
    key: Option<K>,
}

impl<K: Hash + Eq, V> Drop for Landing<K, V> {
    fn drop(&mut self) {
        if let (Some(key), Ok(mut flights)) = (self.key.take(), self.flights.lock()) {
            flights.remove(&key);
        }
    }
}

impl<K, V> SingleFlight<K, V>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Runs `work` for `key`, or waits for the run already in progress, and returns its result.
    ///
    /// `work` is only called (and spawned) by the leader.
    pub async fn run<F, Fut>(&self, key: K, work: F) -> Result<(V, Role), Aborted>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V> + Send + 'static,
    {
        let (mut rx, role) = {
            let mut flights = self.flights.lock().map_err(|_| Aborted)?;
            match flights.get(&key) {
                Some(rx) => (rx.clone(), Role::Follower),
                None => {
                    let (tx, rx) = watch::channel(None);
                    flights.insert(key.clone(), rx.clone());
                    let landing = Landing {
                        flights: self.flights.clone(),
                        key: Some(key),
                    };
                    let fut = work();
                    tokio::spawn(async move {
                        let value = fut.await;
                        // Leave the map before publishing: a caller arriving from now on starts a
                        // new flight (and, for the cache, finds the value the work just stored).
                        drop(landing);
                        let _ = tx.send(Some(value));
                    });
                    (rx, Role::Leader)
                }
            }
        };
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&self.waiting);
        let value = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Aborted)?
            .clone()
            .ok_or(Aborted)?;
        Ok((value, role))
    }

    /// Callers waiting for a flight's result now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Flights in progress now.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.flights.lock().map(|f| f.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::Notify;

    #[tokio::test]
    async fn concurrent_callers_share_one_run() {
        let sf: Arc<SingleFlight<String, u32>> = Arc::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Notify::new());
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let (sf, runs, gate) = (sf.clone(), runs.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                sf.run("k".to_string(), || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    gate.notified().await;
                    7
                })
                .await
            }));
        }
        // Bounded: a regression that never lets the callers wait fails here instead of hanging.
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while sf.waiting() < 10 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("ten callers waiting on one run");
        assert_eq!(sf.in_flight(), 1);
        gate.notify_one();
        let mut leaders = 0;
        for t in tasks {
            let (v, role) = t.await.unwrap().unwrap();
            assert_eq!(v, 7);
            leaders += usize::from(role == Role::Leader);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(leaders, 1);
        assert_eq!(sf.in_flight(), 0);
        assert_eq!(sf.waiting(), 0);
    }

    #[tokio::test]
    async fn a_panicking_run_frees_the_key() {
        let sf: SingleFlight<&'static str, u32> = SingleFlight::default();
        let r = sf.run("k", || async { panic!("boom") }).await;
        assert_eq!(r, Err(Aborted));
        assert_eq!(sf.in_flight(), 0);
        let (v, role) = sf.run("k", || async { 1 }).await.unwrap();
        assert_eq!((v, role), (1, Role::Leader));
    }
}
