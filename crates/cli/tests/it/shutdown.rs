//! End to end: SIGTERM to `scalelab up` while clients load every role through the balancer.
//! What a deploy needs: the requests in flight are answered, every instance stops on its own
//! with status 0 (no SIGKILL, and `up` exits 0 saying so), and a task that was running is handed
//! back to the queue (`queued`, no lease), as the restarted system shows at once. And a worker
//! stopped while its claim waits on the SQLite queue's write lock still stops cleanly.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use e2e::{Running, Topology};
use serde_json::{Value, json};

use crate::support::send;

/// The default topology, one worker of one slot with a lease much longer than the test (so
/// that only a release, never a lapse, can make its task `queued` again) and a short grace.
fn topology(workers: usize) -> Topology {
    Topology::new()
        .program(env!("CARGO_BIN_EXE_scalelab"))
        .counts("worker", workers)
        .toml_extra("[auth]\nargon2_memory_kib = 1024\nargon2_iterations = 1\n")
        .toml_extra(
            "[worker]\nconcurrency = 1\nlease_ms = 300000\nheartbeat_ms = 1000\npoll_ms = 50\n\
             shutdown_grace_ms = 1000\n",
        )
}

/// `GET path` (or `POST` with `body`) through the balancer as `token`.
async fn call(sys: &Running, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let url = format!("{}{path}", sys.lb_url());
    let req = match body {
        Some(b) => sys.client().post(url).json(&b),
        None => sys.client().get(url),
    };
    let (status, _, body) = send(req.bearer_auth(token)).await;
    (status, body)
}

/// What the load saw.
#[derive(Default)]
struct Seen {
    /// Answers with 200.
    ok: AtomicU64,
    /// Answers that came after SIGTERM was sent: the stop did not cut them off.
    ok_after_sigterm: AtomicU64,
    /// Loops that ended on a refused connection (the balancer's listener had closed).
    refused: AtomicU64,
}

/// One client loop: `GET /data/key-N` and `GET /process` (gateway, cache, db, service) on a new
/// connection each time, so that an error can only be the connection's own, never a keep-alive
/// connection closed under a request. Ends at the first refused connection after `stopping`;
/// returns the first thing a client must not see.
async fn client_loop(
    url: String,
    token: String,
    stopping: Arc<AtomicBool>,
    seen: Arc<Seen>,
    n: usize,
) -> Result<(), String> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let mut i = 0u64;
    loop {
        i += 1;
        let path = if i.is_multiple_of(2) {
            format!("/data/key-{}", (i + n as u64) % 50 + 1)
        } else {
            "/process".to_owned()
        };
        let after_sigterm = stopping.load(Ordering::SeqCst);
        match http
            .get(format!("{url}{path}"))
            .bearer_auth(&token)
            .send()
            .await
        {
            Ok(r) if r.status() == 200 => {
                seen.ok.fetch_add(1, Ordering::SeqCst);
                if stopping.load(Ordering::SeqCst) {
                    seen.ok_after_sigterm.fetch_add(1, Ordering::SeqCst);
                }
            }
            Ok(r) => {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                return Err(format!("GET {path}: {status} {body}"));
            }
            Err(e) if e.is_connect() && after_sigterm => {
                seen.refused.fetch_add(1, Ordering::SeqCst);
                return Ok(());
            }
            Err(e) => {
                return Err(format!(
                    "GET {path} (sent {}): {e:?}",
                    if after_sigterm {
                        "after SIGTERM"
                    } else {
                        "before SIGTERM"
                    }
                ));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_stops_every_role_cleanly_and_hands_back_the_running_task() {
    let dir = tempfile::tempdir().expect("tempdir");
    let password = "e2e-shutdown-admin-password";
    let sys = topology(1)
        .in_dir(dir.path())
        .admin_password(password)
        .start()
        .await
        .expect("scalelab up");
    let token = sys.admin_token().await.expect("admin token");

    // A long task, running on the worker when the stop comes.
    let (s, task) = call(
        &sys,
        "/tasks",
        &token,
        Some(json!({"type": "sleep", "payload": {"ms": 600_000}})),
    )
    .await;
    assert_eq!(s, 202, "{task}");
    let id = task["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (s, t) = call(&sys, &format!("/tasks/{id}"), &token, None).await;
        assert_eq!(s, 200, "{t}");
        if t["status"] == "running" {
            break;
        }
        assert!(Instant::now() < deadline, "never claimed: {t}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Load through the balancer until its listener closes.
    let stopping = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Seen::default());
    let loops: Vec<_> = (0..4)
        .map(|n| {
            tokio::spawn(client_loop(
                sys.lb_url(),
                token.clone(),
                stopping.clone(),
                seen.clone(),
                n,
            ))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.ok.load(Ordering::SeqCst) < 40 {
        assert!(Instant::now() < deadline, "the load never got going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let ids = sys.ids();
    stopping.store(true, Ordering::SeqCst);
    let (status, logs) = sys.stop_with_logs().await.expect("up stops");
    for l in loops {
        l.await
            .expect("client loop")
            .expect("a client saw an error");
    }
    let after = seen.ok_after_sigterm.load(Ordering::SeqCst);
    eprintln!(
        "{} answers, {after} of them after SIGTERM; {} loops ended on a refused connection",
        seen.ok.load(Ordering::SeqCst),
        seen.refused.load(Ordering::SeqCst)
    );
    assert_eq!(
        seen.refused.load(Ordering::SeqCst),
        4,
        "every loop ran to the end"
    );

    // Every instance stopped on SIGTERM by itself, and `up` says so with its exit status.
    assert!(!logs.contains("SIGKILL"), "{logs}");
    for id in &ids {
        assert!(
            logs.contains(&format!("[up] {id} stopped (status 0)")),
            "{id} did not stop with status 0:\n{logs}"
        );
    }
    assert!(
        logs.contains("[up] all instances stopped cleanly"),
        "{logs}"
    );
    assert!(status.success(), "up exited with {status}:\n{logs}");

    // Started again on the same data, without a worker to claim it: the task is back in the
    // queue, with no holder and no lease (its 5-minute lease cannot have lapsed yet).
    let sys = topology(0)
        .in_dir(dir.path())
        .admin_password(password)
        .start()
        .await
        .expect("second start on the same data");
    let token = sys.admin_token().await.expect("the same admin");
    let (s, t) = call(&sys, &format!("/tasks/{id}"), &token, None).await;
    assert_eq!(s, 200, "{t}");
    assert_eq!(t["status"], "queued", "{t}");
    assert_eq!(t["lease_until"], Value::Null, "{t}");
    assert_eq!(t["worker_id"], Value::Null, "{t}");
    assert_eq!(t["attempts"], 0, "a released attempt does not count: {t}");
    assert!(sys.stop().await.expect("stop").success());
}

/// Holds SQLite's write lock on `path` (`BEGIN IMMEDIATE`) until its stdin closes.
const HOLD_WRITE_LOCK: &str = r#"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.read()
db.execute("ROLLBACK")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_claim_waits_on_the_sqlite_write_lock_stops_cleanly() {
    use tokio::io::AsyncBufReadExt;

    // Polling every millisecond, the slot spends all but a few ms of each busy timeout (5 s) in
    // a claim waiting on the lock, so that is where the stop finds it.
    let sys = topology(1)
        .toml_extra("[worker]\npoll_ms = 1\n")
        .start()
        .await
        .expect("scalelab up");
    let queue = sys.data_dir().join("queue.sqlite");
    let mut holder = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(HOLD_WRITE_LOCK)
        .arg(&queue)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3");
    let mut out = tokio::io::BufReader::new(holder.stdout.take().unwrap()).lines();
    assert_eq!(
        out.next_line().await.unwrap().as_deref(),
        Some("locked"),
        "the write lock on {}",
        queue.display()
    );
    // One claim has waited the whole busy timeout and failed; the next one waits again.
    sys.wait_log("claiming failed; retrying")
        .await
        .expect("a claim waited on the lock");

    let ids = sys.ids();
    let (status, logs) = sys.stop_with_logs().await.expect("up stops");
    drop(holder.stdin.take());
    let _ = holder.wait().await;
    assert!(!logs.contains("SIGKILL"), "{logs}");
    for id in &ids {
        assert!(
            logs.contains(&format!("[up] {id} stopped (status 0)")),
            "{id} did not stop with status 0:\n{logs}"
        );
    }
    assert!(status.success(), "up exited with {status}:\n{logs}");
}

/// Whether `pid` is still a live process (a zombie waiting for a reaper counts as gone).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Waits until no instance process is alive and no instance port accepts a connection (20 s).
async fn wait_all_gone(pids: &[(String, u32)], ports: &[(String, u16)]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let living: Vec<&String> = pids
            .iter()
            .filter(|(_, pid)| alive(*pid))
            .map(|(id, _)| id)
            .collect();
        let mut open = Vec::new();
        for (id, port) in ports {
            if std::net::TcpStream::connect(("127.0.0.1", *port)).is_ok() {
                open.push(id);
            }
        }
        if living.is_empty() && open.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still running: {living:?}; ports still open: {open:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Instance ids with their pids, and with their ports.
type Processes = (Vec<(String, u32)>, Vec<(String, u16)>);

/// Every instance's pid and port, from `instances.json`.
fn processes(sys: &Running) -> Processes {
    let records = sys.instances().expect("instances.json");
    let pids = records
        .iter()
        .map(|r| (r.id.clone(), sys.pid(&r.id).expect("a pid")))
        .collect();
    let ports = records.iter().map(|r| (r.id.clone(), r.port)).collect();
    (pids, ports)
}

#[tokio::test]
async fn closing_the_terminal_stops_up_and_every_instance_cleanly() {
    let sys = topology(1).start().await.expect("scalelab up");
    let (pids, ports) = processes(&sys);
    assert!(pids.len() >= 10, "{pids:?}");
    let status = sys
        .stop_with(nix::sys::signal::Signal::SIGHUP)
        .await
        .expect("up exits on SIGHUP");
    assert!(status.success(), "a clean stop on SIGHUP: {status}");
    wait_all_gone(&pids, &ports).await;
}

#[tokio::test]
async fn every_instance_stops_by_itself_when_up_is_killed() {
    let sys = topology(1).start().await.expect("scalelab up");
    let (pids, ports) = processes(&sys);
    let status = sys
        .stop_with(nix::sys::signal::Signal::SIGKILL)
        .await
        .expect("up is gone");
    assert!(!status.success());
    // No supervisor to stop them: each instance notices its parent is gone and stops, freeing its
    // port, so that the next `up` can start.
    wait_all_gone(&pids, &ports).await;
}
