//! End to end (issue 12): the instances of a running `up` change under load through its control
//! API (`scalelab scale`, `status`, `drain`): new gateways and services join their pools once
//! healthy, removed ones drain first, and no client request fails; workers scaled in while they
//! hold leased tasks lose none and run none twice.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use e2e::{Running, Topology};
use serde_json::{Value, json};

use crate::support::send;

fn topology() -> Topology {
    Topology::new()
        .program(env!("CARGO_BIN_EXE_scalelab"))
        .toml_extra("[auth]\nargon2_memory_kib = 1024\nargon2_iterations = 1\n")
        .toml_extra("[db]\nlatency_ms = 5\njitter_ms = 0\nseed_records = 10\n")
        .toml_extra("[service]\nwork_ms = 2\n")
        .toml_extra(
            "[lb.pool]\nrefresh_ms = 200\n[gateway.services]\nrefresh_ms = 200\n\
             [gateway.rate_limit]\nlogin_per_minute = 100\n",
        )
}

/// Runs `scalelab ARGS --data-dir DIR` (a client of the running `up`); its stdout.
fn scalelab(sys: &Running, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scalelab"))
        .args(args)
        .arg("--data-dir")
        .arg(sys.data_dir())
        .output()
        .expect("run scalelab");
    assert!(
        out.status.success(),
        "scalelab {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `scalelab status --json`: state by instance id.
fn states(sys: &Running) -> BTreeMap<String, String> {
    let v: Value =
        serde_json::from_str(&scalelab(sys, &["status", "--json", "--no-load"])).expect("JSON");
    v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["id"].as_str().unwrap().to_string(),
                i["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Waits until the active instances of `role` are exactly `want`.
async fn until_active(sys: &Running, role: &str, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = states(sys);
        let active: Vec<&str> = s
            .iter()
            .filter(|(id, state)| id.starts_with(&format!("{role}-")) && *state == "active")
            .map(|(id, _)| id.as_str())
            .collect();
        let all: Vec<&str> = s
            .keys()
            .filter(|id| id.starts_with(&format!("{role}-")))
            .map(String::as_str)
            .collect();
        if active == want && all == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{role}: want {want:?}, have {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the balancer has exactly `n` backends, all active and each with requests served.
async fn until_busy(sys: &Running, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, _, stats) = send(sys.client().get(format!("{}/_lb/stats", sys.lb_url()))).await;
        let backends = stats["backends"].as_array().cloned().unwrap_or_default();
        let busy = backends
            .iter()
            .filter(|b| b["state"] == "active" && b["requests"].as_u64() > Some(20))
            .count();
        if backends.len() == n && busy == n {
            return;
        }
        assert!(Instant::now() < deadline, "want {n} busy gateways: {stats}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Clients sending `GET /data` and `GET /process` through the balancer until stopped: every
/// answer's status and `X-Served-By`.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<(u16, String, String)>>>,
}

impl Load {
    fn start(sys: &Running, token: &str, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|n| {
                let (http, lb, token, stop) = (
                    sys.client().clone(),
                    sys.lb_url(),
                    token.to_string(),
                    stop.clone(),
                );
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut i = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        // Reads, and writes with a body (which a proxy can never replay).
                        let req = match (i + n) % 3 {
                            0 => http.get(format!("{lb}/data?key=key-3")),
                            1 => http.get(format!("{lb}/process")),
                            _ => http
                                .put(format!("{lb}/data/key-{n}"))
                                .json(&json!({"value": i})),
                        };
                        i += 1;
                        let (status, headers, body) = send(req.bearer_auth(&token)).await;
                        let by = headers
                            .get("x-served-by")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        let service = body["service_id"].as_str().unwrap_or("").to_string();
                        seen.push((
                            status,
                            by,
                            if status == 200 {
                                service
                            } else {
                                body.to_string()
                            },
                        ));
                    }
                    seen
                })
            })
            .collect();
        Load { stop, tasks }
    }

    async fn stop(self) -> Vec<(u16, String, String)> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await.expect("a load task"));
        }
        all
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_and_services_scale_out_and_in_under_load_without_a_failed_request() {
    let sys = topology().start().await.expect("scalelab up");
    let token = sys.admin_token().await.expect("admin token");
    let load = Load::start(&sys, &token, 8);
    // The table shows each instance's load, measured from its /metrics.
    let table = scalelab(&sys, &["status"]);
    assert!(table.starts_with("ROLE"), "{table}");
    assert!(
        table.contains("REQ/S") && table.contains("IN FLIGHT"),
        "{table}"
    );
    let line = table
        .lines()
        .find(|l| l.contains("gateway-1"))
        .expect("gateway-1 listed");
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cells[4], "active", "{line}");
    assert!(
        cells[5].parse::<f64>().is_ok_and(|rps| rps > 0.0),
        "gateway-1 serves the load: {line}"
    );

    let out = scalelab(&sys, &["scale", "gateway=4", "service=5"]);
    assert!(out.contains("gateway: 2 → 4"), "{out}");
    until_active(
        &sys,
        "gateway",
        &["gateway-1", "gateway-2", "gateway-3", "gateway-4"],
    )
    .await;
    until_active(
        &sys,
        "service",
        &[
            "service-1",
            "service-2",
            "service-3",
            "service-4",
            "service-5",
        ],
    )
    .await;
    // Let the new instances take traffic for a while (the balancer reads membership every 200 ms).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, _, stats) = send(sys.client().get(format!("{}/_lb/stats", sys.lb_url()))).await;
        let busy = stats["backends"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["state"] == "active" && b["requests"].as_u64() > Some(20))
            .count();
        if busy == 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new gateways never took traffic: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Scale in: the newest drain, then stop, while the load goes on.
    let out = scalelab(&sys, &["scale", "gateway=1", "service=2"]);
    assert!(
        out.contains("draining gateway-4, gateway-3, gateway-2"),
        "{out}"
    );
    until_active(&sys, "gateway", &["gateway-1"]).await;
    until_active(&sys, "service", &["service-1", "service-2"]).await;
    // And out again, still under load: the new instance gets the next number.
    scalelab(&sys, &["scale", "gateway=2"]);
    until_active(&sys, "gateway", &["gateway-1", "gateway-5"]).await;
    until_busy(&sys, 2).await;

    let seen = load.stop().await;
    let failed: Vec<&(u16, String, String)> = seen.iter().filter(|(s, _, _)| *s != 200).collect();
    assert!(seen.len() > 200, "the load ran: {} requests", seen.len());
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        seen.len(),
        &failed[..failed.len().min(5)]
    );
    let gateways: BTreeSet<&str> = seen.iter().map(|(_, by, _)| by.as_str()).collect();
    for g in [
        "gateway-1",
        "gateway-2",
        "gateway-3",
        "gateway-4",
        "gateway-5",
    ] {
        assert!(gateways.contains(g), "{g} never answered: {gateways:?}");
    }
    let services: BTreeSet<&str> = seen.iter().map(|(_, _, s)| s.as_str()).collect();
    for s in ["service-4", "service-5"] {
        assert!(services.contains(s), "{s} never answered: {services:?}");
    }
    // The balancer's view agrees: two active gateways, the drained ones gone.
    let (_, _, stats) = send(sys.client().get(format!("{}/_lb/stats", sys.lb_url()))).await;
    let states: Vec<&str> = stats["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["active", "active"], "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_scaled_in_while_holding_tasks_lose_none_and_run_none_twice() {
    let sys = topology()
        .counts("worker", 1)
        .toml_extra("[worker]\nconcurrency = 2\npoll_ms = 20\nshutdown_grace_ms = 5000\n")
        .start()
        .await
        .expect("scalelab up");
    let token = sys.admin_token().await.expect("admin token");
    scalelab(&sys, &["scale", "worker=3"]);
    until_active(&sys, "worker", &["worker-1", "worker-2", "worker-3"]).await;

    let mut ids = Vec::new();
    for _ in 0..30 {
        let (status, _, task) = send(
            sys.client()
                .post(format!("{}/tasks", sys.lb_url()))
                .bearer_auth(&token)
                .json(&json!({"type": "sleep", "payload": {"ms": 400}})),
        )
        .await;
        assert_eq!(status, 202, "{task}");
        ids.push(task["id"].as_str().unwrap().to_string());
    }
    // Wait until the new workers hold tasks, then take them away.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut holders = BTreeSet::new();
        for id in &ids {
            let (_, _, t) = send(
                sys.client()
                    .get(format!("{}/tasks/{id}", sys.lb_url()))
                    .bearer_auth(&token),
            )
            .await;
            if t["status"] == "running" {
                holders.insert(
                    t["worker_id"]
                        .as_str()
                        .unwrap_or("")
                        .split('/')
                        .next()
                        .unwrap_or("")
                        .to_string(),
                );
            }
        }
        if holders.contains("worker-2") && holders.contains("worker-3") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new workers never held a task: {holders:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    scalelab(&sys, &["scale", "worker=1"]);
    until_active(&sys, "worker", &["worker-1"]).await;

    let deadline = Instant::now() + Duration::from_secs(60);
    for id in &ids {
        loop {
            let (_, _, t) = send(
                sys.client()
                    .get(format!("{}/tasks/{id}", sys.lb_url()))
                    .bearer_auth(&token),
            )
            .await;
            if t["status"] == "succeeded" {
                assert_eq!(t["attempts"], 1, "run once: {t}");
                break;
            }
            assert!(
                ["queued", "running"].contains(&t["status"].as_str().unwrap_or("")),
                "{t}"
            );
            assert!(Instant::now() < deadline, "task never finished: {t}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `[autoscale.gateway]` on the demo profile: load makes the autoscaler add gateways (its
/// arithmetic in the events), and the end of the load brings them back to the minimum after the
/// scale-down window; no request fails meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_autoscaler_follows_the_load_out_and_back_in() {
    let sys = topology()
        .counts("gateway", 1)
        .toml_extra("[db]\nlatency_ms = 100\n")
        .toml_extra(
            "[autoscale.gateway]\nprofile = \"demo\"\nmetric = \"in_flight\"\ntarget = 2\nmin = 1\nmax = 3\n",
        )
        .start()
        .await
        .expect("scalelab up");
    let token = sys.admin_token().await.expect("admin token");
    // Reads that skip the cache: each keeps a gateway busy for the db's 100 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..12 {
        let (http, lb, token, stop) = (
            sys.client().clone(),
            sys.lb_url(),
            token.clone(),
            stop.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let (status, _, _) = send(
                    http.get(format!("{lb}/data?key=key-3&refresh=true"))
                        .bearer_auth(&token),
                )
                .await;
                statuses.push(status);
            }
            statuses
        }));
    }
    until_active(&sys, "gateway", &["gateway-1", "gateway-2", "gateway-3"]).await;
    stop.store(true, Ordering::Relaxed);
    let mut statuses = Vec::new();
    for c in clients {
        statuses.extend(c.await.unwrap());
    }
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    // Idle again: back to the minimum once the demo's 10 s scale-down window has passed.
    until_active(&sys, "gateway", &["gateway-1"]).await;

    let control: Value = serde_json::from_str(
        &std::fs::read_to_string(sys.data_dir().join("control.json")).unwrap(),
    )
    .unwrap();
    let url = control["url"].as_str().unwrap();
    let (_, _, events) = send(sys.client().get(format!("{url}/events"))).await;
    let lines: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "autoscale")
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("gateway: in-flight") && l.contains("desired ceil(1 ×")),
        "the scale out with its arithmetic: {lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("gateway: in-flight 0.0/instance")
                && l.ends_with("raised to min 1")),
        "the scale in: {lines:#?}"
    );
    let table = scalelab(&sys, &["status", "--no-load"]);
    assert!(
        table.contains("autoscale: gateway: in-flight 0.0/instance"),
        "status shows the latest decision: {table}"
    );
    let (_, _, auto) = send(sys.client().get(format!("{url}/autoscale"))).await;
    assert_eq!(auto["policies"][0]["profile"], "demo", "{auto}");
    assert_eq!(auto["decisions"][0]["desired"], 1, "{auto}");
}

/// Off loopback, the control API refuses changes without the admin credential (checked by auth),
/// and takes them with it; reads stay open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_api_off_loopback_needs_the_admin_credential_to_change_anything() {
    // With the deployment's service credential set too: the supervisor's login at auth sends it.
    let sys = topology()
        .env("SCALELAB_SERVICE_TOKEN", "e2e-control-service-token")
        .up_arg("--control-addr")
        .up_arg("0.0.0.0:0")
        .start()
        .await
        .expect("scalelab up");
    let run = |password: Option<&str>, args: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_scalelab"));
        cmd.args(args).arg("--data-dir").arg(sys.data_dir());
        cmd.env_remove("SCALELAB_ADMIN_PASSWORD");
        if let Some(p) = password {
            cmd.env("SCALELAB_ADMIN_PASSWORD", p);
        }
        cmd.output().expect("run scalelab")
    };
    let out = run(None, &["scale", "service=2"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("send the admin credential"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(Some("not-the-password"), &["scale", "service=2"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid admin credential"));
    // Reads need nothing.
    assert!(run(None, &["status", "--no-load"]).status.success());
    let out = run(Some(sys.admin_password()), &["scale", "service=2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("service: 3 → 2"));
}
