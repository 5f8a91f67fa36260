//! End to end, issue 13's first point: a worker whose `scalelab up` is gone (its stderr a pipe
//! nobody reads any more) still works, and stops on SIGTERM by itself, with every task either
//! finished or handed back.
//!
//! Before the fix, the first log line written to the broken pipe panicked (the log subscriber
//! reported the failed write with `eprintln!`, which panics on a broken stderr), in the middle of
//! whatever was logging, and a worker so interrupted kept SQLite's write lock on `queue.sqlite`
//! and ignored SIGTERM.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use queue::{NewTask, Queue, Status};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Tasks in the queue when the worker starts: more than it can run before the test stops it.
const TASKS: usize = 3_000;
/// How long the test lets the worker take to stop before it kills it and fails: far beyond its
/// grace (1 s) plus a second, so that only a hang fails it, never a slow machine.
const STOP_DEADLINE: Duration = Duration::from_secs(30);

async fn counts(q: &dyn Queue) -> BTreeMap<String, u64> {
    q.stats()
        .await
        .expect("stats")
        .by_status
        .into_iter()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_stderr_is_gone_stops_on_sigterm_with_every_task_finished_or_released() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let config = dir.path().join("topology.toml");
    std::fs::write(
        &config,
        "[instances]\nhost = \"127.0.0.1\"\nworker = [5005]\n\
         [worker]\nconcurrency = 4\npoll_ms = 5\nshutdown_grace_ms = 1000\n",
    )
    .expect("topology");
    let q = queue::open(&queue::Config {
        data_dir: data.clone(),
        ..queue::Config::default()
    })
    .await
    .expect("queue");
    for _ in 0..TASKS {
        q.submit(NewTask::new("sleep", json!({"ms": 5}), "test"))
            .await
            .expect("submit");
    }

    let mut worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_scalelab"))
        .args(["serve", "worker", "--id", "worker-1", "--port", "0"])
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(&data)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("scalelab serve worker");
    let pid = nix::unistd::Pid::from_raw(worker.id().expect("pid") as i32);

    // Under load: read its log until it has finished a few tasks, then close the pipe, as the
    // death of `up` does.
    let mut lines = BufReader::new(worker.stderr.take().expect("stderr")).lines();
    let mut finished = 0;
    while finished < 20 {
        let line = tokio::time::timeout(STOP_DEADLINE, lines.next_line())
            .await
            .expect("the worker logs")
            .expect("read")
            .expect("the worker runs");
        if line.contains(" succeeded task=") {
            finished += 1;
        }
    }
    drop(lines);

    // It keeps working with nobody reading its log.
    let at_close = counts(&*q).await["succeeded"];
    let deadline = Instant::now() + STOP_DEADLINE;
    while counts(&*q).await["succeeded"] < at_close + 200 {
        assert!(
            Instant::now() < deadline,
            "the worker stopped working once its stderr was gone: {:?}",
            counts(&*q).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let exit = match tokio::time::timeout(STOP_DEADLINE, worker.wait()).await {
        Ok(exit) => exit.expect("wait"),
        Err(_) => {
            let _ = worker.kill().await;
            panic!(
                "the worker ignored SIGTERM; killed it. Tasks: {:?}",
                counts(&*q).await
            );
        }
    };
    assert!(exit.success(), "the worker exited with {exit}");

    // Every task finished or handed back: none left running under a lease, none lost.
    let after = counts(&*q).await;
    assert_eq!(after["running"], 0, "{after:?}");
    assert_eq!(
        after["succeeded"] + after["queued"],
        TASKS as u64,
        "{after:?}"
    );
    assert!(
        after["queued"] > 0,
        "the worker drained the queue before the stop: {after:?}"
    );
    // And the store is free: a write goes through at once (a held write lock would make it wait
    // out the busy timeout and fail).
    let t = q
        .submit(NewTask::new("sleep", json!({"ms": 1}), "test"))
        .await
        .expect("the queue takes writes after the stop");
    assert_eq!(t.status, Status::Queued);
}
