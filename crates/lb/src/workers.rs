//! The balancer's worker threads: one single-threaded tokio runtime per core, each serving the
//! client connections it is given from start to end (nginx's worker processes, in threads).
//!
//! The accept loop stays on the main runtime (with the lossless stop of
//! `common::serve_connections`) and deals each new connection to the next worker in turn. Inside
//! a worker, tasks are run in the order they became ready, so every connection gets its turn:
//! tokio's multi-threaded scheduler, with one worker per core, moves tasks that overflow a
//! worker's local queue to a shared queue it visits only now and then, which under a thousand
//! busy connections left some waiting over a hundred milliseconds (docs/PERFORMANCE.md). A
//! connection and the upstream connections it makes stay on their worker's reactor (`h1::idle`).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// Running worker threads; dropping them stops them (after the tasks they run are done or
/// cancelled).
#[derive(Debug)]
pub struct Workers {
    handles: Vec<Handle>,
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    next: AtomicUsize,
}

impl Workers {
    /// Starts `n` worker threads (at least one), each with its own runtime.
    pub fn start(n: usize) -> std::io::Result<Self> {
        let mut workers = Self {
            handles: Vec::new(),
            stops: Vec::new(),
            threads: Vec::new(),
            next: AtomicUsize::new(0),
        };
        for i in 0..n.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (stop, stopped) = oneshot::channel::<()>();
            workers.handles.push(runtime.handle().clone());
            workers.stops.push(stop);
            workers.threads.push(
                std::thread::Builder::new()
                    .name(format!("lb-worker-{i}"))
                    .spawn(move || {
                        runtime.block_on(async {
                            let _ = stopped.await;
                        });
                    })?,
            );
        }
        Ok(workers)
    }

    /// How many workers run.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Whether none runs (never, once started).
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Runs `task` on the next worker in turn; resolves when it is done.
    pub fn run<F>(&self, task: F) -> impl Future<Output = ()> + Send + 'static + use<F>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        let joined = self.handles[i].spawn(task);
        async move {
            let _ = joined.await;
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
