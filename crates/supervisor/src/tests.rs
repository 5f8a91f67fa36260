//! The supervisor against a stand-in child: a few lines of Python serving `/health`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::child::{Backoff, describe};
use super::{ChildSpec, SupervisorOptions, run, table};

/// Serves `GET /health` on the port given as its argument, prints a line to stdout and one to
/// stderr, and on SIGTERM prints `got SIGTERM` and exits 0 (unless `IGNORE_TERM` is set). Serves
/// on descriptor 3 instead of binding when given `LISTEN_FDS=1`; waits for the file named in
/// `START_GATE` to exist before serving, if set.
const STAND_IN: &str = r#"
import http.server, os, signal, socket, sys, time
port = int(sys.argv[1])
def on_term(*_):
    print("got SIGTERM", flush=True)
    os._exit(0)
signal.signal(signal.SIGTERM, signal.SIG_IGN if os.environ.get("IGNORE_TERM") else on_term)
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *_):
        pass
gate = os.environ.get("START_GATE")
if gate:
    print("waiting at the gate", flush=True)
    while not os.path.exists(gate):
        time.sleep(0.02)
if os.environ.get("LISTEN_FDS") == "1":
    server = http.server.HTTPServer(("127.0.0.1", port), Health, bind_and_activate=False)
    server.socket.close()
    server.socket = socket.socket(fileno=3)
    print(f"serving the handed-over socket on {server.socket.getsockname()[1]}", flush=True)
else:
    server = http.server.HTTPServer(("127.0.0.1", port), Health)
print(f"listening on {port}", flush=True)
print("a line on stderr", file=sys.stderr, flush=True)
server.serve_forever()
"#;

const DEADLINE: Duration = Duration::from_secs(20);

/// A fresh directory under the system's temporary directory, removed on drop (`cli` has no
/// `tempfile` dependency).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("scalelab-supervisor-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

fn spec(role: &str, id: &str, port: u16, script: &str) -> ChildSpec {
    ChildSpec {
        role: role.to_owned(),
        id: id.to_owned(),
        port,
        url: format!("http://127.0.0.1:{port}"),
        health_path: "/health".to_owned(),
        program: PathBuf::from("python3"),
        args: vec![
            "-u".to_owned(),
            "-c".to_owned(),
            script.to_owned(),
            port.to_string(),
        ],
        env: Vec::new(),
        listen_host: None,
    }
}

/// Options for tests: short timeouts, no signal handlers, lines collected in memory.
fn options(instances_file: Option<PathBuf>) -> (SupervisorOptions, Lines) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let lines = Lines::default();
    let sink = lines.clone();
    tokio::spawn(async move {
        while let Some(line) = rx.recv().await {
            sink.0.lock().unwrap().push(line);
        }
    });
    let opts = SupervisorOptions {
        start_timeout: Duration::from_secs(15),
        grace: Duration::from_secs(5),
        backoff_base: Duration::from_millis(50),
        instances_file,
        handle_signals: false,
        hints: vec!["curl -s http://example/health".to_owned()],
        log: Some(tx),
        ..SupervisorOptions::default()
    };
    (opts, lines)
}

#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn all(&self) -> String {
        self.0.lock().unwrap().join("\n")
    }

    fn contains(&self, needle: &str) -> bool {
        self.0.lock().unwrap().iter().any(|l| l.contains(needle))
    }
}

/// Polls `condition` until it holds, failing the test with `what` after [`DEADLINE`].
async fn eventually<T>(what: &str, lines: &Lines, mut condition: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = condition() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; output so far:\n{}",
            lines.all()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `(id, pid)` of every instance in the instances file, once it exists and parses.
fn read_pids(path: &Path) -> Option<Vec<(String, u32)>> {
    let text = std::fs::read_to_string(path).ok()?;
    let records: Vec<serde_json::Value> = serde_json::from_str(&text).ok()?;
    records
        .iter()
        .map(|r| Some((r["id"].as_str()?.to_owned(), r["pid"].as_u64()? as u32)))
        .collect()
}

fn alive(pid: u32) -> bool {
    kill(Pid::from_raw(pid as i32), None).is_ok()
}

async fn healthy(port: u16) -> bool {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://127.0.0.1:{port}/health"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
}

struct Started {
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

fn start(specs: Vec<ChildSpec>, opts: SupervisorOptions) -> Started {
    let (shutdown, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(run(specs, opts, async {
        let _ = rx.await;
    }));
    Started { shutdown, task }
}

impl Started {
    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(());
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("run returns after shutdown")
            .expect("run does not panic")
    }
}

#[tokio::test]
async fn a_port_in_use_is_refused_with_its_role_and_id() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let specs = vec![
        spec("auth", "auth-1", free_port(), STAND_IN),
        spec("gateway", "gateway-1", port, STAND_IN),
    ];
    let (opts, lines) = options(None);

    let err = run(specs, opts, std::future::pending()).await.unwrap_err();

    assert_eq!(
        err.to_string(),
        format!("port {port} (gateway gateway-1) is already in use")
    );
    assert!(
        !lines.contains("auth-1"),
        "nothing may start: {}",
        lines.all()
    );
}

#[tokio::test]
async fn a_port_given_twice_is_refused() {
    let port = free_port();
    let specs = vec![
        spec("gateway", "gateway-1", port, STAND_IN),
        spec("gateway", "gateway-2", port, STAND_IN),
    ];
    let (opts, _lines) = options(None);

    let err = run(specs, opts, std::future::pending()).await.unwrap_err();

    assert_eq!(
        err.to_string(),
        format!("port {port} is given to both gateway-1 (gateway) and gateway-2 (gateway)")
    );
}

#[tokio::test]
async fn starts_every_child_prints_the_table_and_writes_instances_json() {
    let dir = TempDir::new();
    let file = dir.0.join("data").join("instances.json");
    let (db, gw1, gw2) = (free_port(), free_port(), free_port());
    let specs = vec![
        spec("db", "db-1", db, STAND_IN),
        spec("gateway", "gateway-1", gw1, STAND_IN),
        spec("gateway", "gateway-2", gw2, STAND_IN),
    ];
    let (opts, lines) = options(Some(file.clone()));

    let started = start(specs, opts);
    let pids = eventually("instances.json", &lines, || read_pids(&file)).await;

    let ids: Vec<&str> = pids.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["db-1", "gateway-1", "gateway-2"]);
    for port in [db, gw1, gw2] {
        assert!(healthy(port).await, "port {port} answers /health");
    }
    for (_, pid) in &pids {
        assert!(alive(*pid), "pid {pid} is a live child");
    }
    let record: serde_json::Value =
        serde_json::from_str::<Vec<serde_json::Value>>(&std::fs::read_to_string(&file).unwrap())
            .unwrap()[1]
            .clone();
    assert_eq!(record["role"], "gateway");
    assert_eq!(record["url"], format!("http://127.0.0.1:{gw1}"));
    assert_eq!(record["port"], gw1);

    // The table, the hints and the prefixed child output (ids padded to one width).
    eventually("the table", &lines, || {
        lines
            .contains("curl -s http://example/health")
            .then_some(())
    })
    .await;
    let output = lines.all();
    assert!(output.contains("ROLE     ID         URL"), "{output}");
    assert!(
        output.contains(&format!(
            "gateway  gateway-1  http://127.0.0.1:{gw1}  {}",
            pids[1].1
        )),
        "{output}"
    );
    eventually("prefixed output", &lines, || {
        (lines.contains(&format!("db-1      | listening on {db}"))
            && lines.contains("gateway-2 | a line on stderr"))
        .then_some(())
    })
    .await;

    started.stop().await.expect("shutdown returns Ok");
    for (_, pid) in &pids {
        assert!(!alive(*pid), "pid {pid} was stopped");
    }
}

#[tokio::test]
async fn a_killed_child_is_restarted_and_healthy_again_with_a_new_pid() {
    let dir = TempDir::new();
    let file = dir.0.join("instances.json");
    let port = free_port();
    let (opts, lines) = options(Some(file.clone()));

    let started = start(vec![spec("gateway", "gateway-1", port, STAND_IN)], opts);
    let pids = eventually("instances.json", &lines, || read_pids(&file)).await;
    let old = pids[0].1;

    kill(Pid::from_raw(old as i32), Signal::SIGKILL).unwrap();

    let new = eventually("a new pid in instances.json", &lines, || {
        read_pids(&file).map(|p| p[0].1).filter(|&pid| pid != old)
    })
    .await;
    eventually("the restart to be healthy", &lines, || {
        lines.contains("gateway-1 is healthy again").then_some(())
    })
    .await;
    assert!(healthy(port).await);
    assert!(alive(new));
    let output = lines.all();
    assert!(
        output.contains("[up] gateway-1 exited (signal 9); restarting in 50ms (restart #1)"),
        "{output}"
    );

    started.stop().await.expect("shutdown returns Ok");
    assert!(!alive(new));
}

#[tokio::test]
async fn a_handed_over_listener_holds_its_port_from_the_check_and_is_bound_again_on_restart() {
    let dir = TempDir::new();
    let file = dir.0.join("instances.json");
    let gate = dir.0.join("gate");
    let (auth_port, gateway_port) = (free_port(), free_port());
    let mut auth = spec("auth", "auth-1", auth_port, STAND_IN);
    auth.env = vec![("START_GATE".into(), gate.display().to_string())];
    let mut gateway = spec("gateway", "gateway-1", gateway_port, STAND_IN);
    gateway.listen_host = Some("127.0.0.1".into());
    let (opts, lines) = options(Some(file.clone()));

    let started = start(vec![auth, gateway], opts);
    eventually("auth-1 to wait at its gate", &lines, || {
        lines.contains("waiting at the gate").then_some(())
    })
    .await;
    // gateway-1 is not started yet (its group waits for auth-1), and its port is held for it.
    let err = std::net::TcpListener::bind(("127.0.0.1", gateway_port)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    assert!(!lines.contains("gateway-1"), "{}", lines.all());

    std::fs::write(&gate, b"").unwrap();
    eventually("gateway-1 to serve the socket it was given", &lines, || {
        lines
            .contains(&format!("serving the handed-over socket on {gateway_port}"))
            .then_some(())
    })
    .await;
    let pids = eventually("instances.json", &lines, || read_pids(&file)).await;
    assert!(healthy(gateway_port).await);

    // The supervisor keeps no copy: the port closes with the child, and the restart binds it anew.
    let old = pids.iter().find(|(id, _)| id == "gateway-1").unwrap().1;
    kill(Pid::from_raw(old as i32), Signal::SIGKILL).unwrap();
    eventually("the restart to be healthy", &lines, || {
        lines.contains("gateway-1 is healthy again").then_some(())
    })
    .await;
    assert!(healthy(gateway_port).await);

    started.stop().await.expect("shutdown returns Ok");
    std::net::TcpListener::bind(("127.0.0.1", gateway_port))
        .expect("the port is free once its child is gone");
}

#[tokio::test]
async fn shutdown_sends_sigterm_in_reverse_order_and_returns_ok() {
    let (db, lb) = (free_port(), free_port());
    let specs = vec![
        spec("db", "db-1", db, STAND_IN),
        spec("lb", "lb-1", lb, STAND_IN),
    ];
    let (opts, lines) = options(None);

    let started = start(specs, opts);
    eventually("start-up", &lines, || {
        lines.contains("instances healthy").then_some(())
    })
    .await;
    started.stop().await.expect("shutdown returns Ok");

    let output = lines.all();
    let position = |needle: &str| {
        output
            .find(needle)
            .unwrap_or_else(|| panic!("{needle:?} missing from:\n{output}"))
    };
    assert!(position("lb-1 | got SIGTERM") < position("db-1 | got SIGTERM"));
    assert!(position("[up] lb-1 stopped (status 0)") < position("[up] db-1 stopped (status 0)"));
    assert!(
        output.contains("[up] all instances stopped cleanly"),
        "{output}"
    );
    assert!(!output.contains("restarting"), "{output}");
}

#[tokio::test]
async fn a_child_ignoring_sigterm_is_killed_after_the_grace_period_and_the_stop_fails_naming_it() {
    let (service, lb) = (free_port(), free_port());
    let mut stubborn = spec("service", "service-1", service, STAND_IN);
    stubborn
        .env
        .push(("IGNORE_TERM".to_owned(), "1".to_owned()));
    let (mut opts, lines) = options(None);
    opts.grace = Duration::from_millis(300);

    // The stubborn child is stopped last (roles stop in reverse order), so that the other one
    // has the whole grace period to stop cleanly.
    let started = start(vec![stubborn, spec("lb", "lb-1", lb, STAND_IN)], opts);
    eventually("start-up", &lines, || {
        lines.contains("instances healthy").then_some(())
    })
    .await;
    let err = started
        .stop()
        .await
        .expect_err("a stop that needed SIGKILL is not a clean stop");

    // The error (what `up` prints before exiting non-zero) names the child that needed SIGKILL,
    // and only that one: lb-1 stopped cleanly on SIGTERM.
    assert_eq!(
        err.to_string(),
        "not every instance stopped cleanly: service-1 needed SIGKILL"
    );
    let output = lines.all();
    assert!(
        output.contains("[up] service-1 did not stop within the grace period; sending SIGKILL"),
        "{output}"
    );
    assert!(
        output.contains("[up] service-1 stopped (signal 9)"),
        "{output}"
    );
    assert!(output.contains("[up] lb-1 stopped (status 0)"), "{output}");
    assert!(
        output.contains("[up] all instances stopped, not cleanly: service-1 needed SIGKILL"),
        "{output}"
    );
}

#[tokio::test]
async fn a_child_exiting_non_zero_on_sigterm_fails_the_stop_naming_it() {
    let port = free_port();
    // Exits 3 on SIGTERM instead of 0.
    let failing = STAND_IN.replace("os._exit(0)", "os._exit(3)");
    let (opts, lines) = options(None);

    let started = start(vec![spec("worker", "worker-1", port, &failing)], opts);
    eventually("start-up", &lines, || {
        lines.contains("instances healthy").then_some(())
    })
    .await;
    let err = started
        .stop()
        .await
        .expect_err("status 3 is not a clean stop");

    assert_eq!(
        err.to_string(),
        "not every instance stopped cleanly: worker-1 exited with status 3 on SIGTERM"
    );
    assert!(
        !lines.contains("sending SIGKILL"),
        "it stopped on SIGTERM: {}",
        lines.all()
    );
}

#[tokio::test]
async fn a_child_exiting_during_start_up_fails_the_start_and_stops_the_others() {
    let (db, gw) = (free_port(), free_port());
    let specs = vec![
        spec("db", "db-1", db, STAND_IN),
        spec(
            "gateway",
            "gateway-1",
            gw,
            "import sys; print('bad config', file=sys.stderr); sys.exit(3)",
        ),
    ];
    let (opts, lines) = options(None);

    let err = tokio::time::timeout(DEADLINE, run(specs, opts, std::future::pending()))
        .await
        .expect("run gives up")
        .unwrap_err()
        .to_string();

    assert!(
        err.starts_with("gateway-1 exited during start-up (status 3)"),
        "{err}"
    );
    assert!(err.contains("bad config"), "{err}");
    assert!(lines.contains("[up] db-1 stopped"), "{}", lines.all());
    assert!(!healthy(db).await);
}

#[tokio::test]
async fn a_child_that_never_gets_healthy_fails_the_start() {
    let port = free_port();
    let specs = vec![spec(
        "cache",
        "cache-1",
        port,
        "import time; time.sleep(60)",
    )];
    let (mut opts, lines) = options(None);
    opts.start_timeout = Duration::from_millis(500);

    let err = tokio::time::timeout(DEADLINE, run(specs, opts, std::future::pending()))
        .await
        .expect("run gives up")
        .unwrap_err();

    assert_eq!(
        err.to_string(),
        format!("cache-1 did not answer GET http://127.0.0.1:{port}/health with 200 within 500ms")
    );
    assert!(lines.contains("[up] cache-1 stopped"), "{}", lines.all());
}

#[tokio::test]
async fn a_missing_program_is_reported_with_the_instance() {
    let mut missing = spec("auth", "auth-1", free_port(), STAND_IN);
    missing.program = PathBuf::from("/nonexistent/scalelab");
    let (opts, _lines) = options(None);

    let err = run(vec![missing], opts, std::future::pending())
        .await
        .unwrap_err()
        .to_string();

    assert!(
        err.starts_with("cannot start auth-1: /nonexistent/scalelab failed to run"),
        "{err}"
    );
}

#[test]
fn backoff_doubles_up_to_the_maximum_and_resets() {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
    let delays: Vec<u128> = (0..5).map(|_| backoff.next_delay().as_millis()).collect();
    assert_eq!(delays, [100, 200, 400, 500, 500]);
    backoff.reset();
    assert_eq!(backoff.next_delay(), Duration::from_millis(100));
}

#[test]
fn exits_are_described_by_status_or_signal() {
    use std::os::unix::process::ExitStatusExt;
    let exit = |raw| describe(Ok(std::process::ExitStatus::from_raw(raw)));
    assert_eq!(exit(1 << 8), "status 1");
    assert_eq!(exit(9), "signal 9");
    assert_eq!(exit(0), "status 0");
}

#[test]
fn the_table_aligns_columns() {
    let rows = [
        [
            "lb".to_owned(),
            "lb-1".to_owned(),
            "http://127.0.0.1:8000".to_owned(),
        ],
        [
            "gateway".to_owned(),
            "gateway-1".to_owned(),
            "http://127.0.0.1:5000".to_owned(),
        ],
    ];
    assert_eq!(
        table(["ROLE", "ID", "URL"], &rows),
        [
            "ROLE     ID         URL",
            "lb       lb-1       http://127.0.0.1:8000",
            "gateway  gateway-1  http://127.0.0.1:5000",
        ]
    );
}

/// The control API: status, membership, scale out and in (the newest drains, then stops), kill,
/// refusals, events and metrics, against real child processes.
#[tokio::test]
async fn the_control_api_scales_drains_and_reports() {
    let (mut opts, lines) = options(None);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let factory: crate::SpecFactory =
        Arc::new(|role: &str, id: &str, port: u16| spec(role, id, port, STAND_IN));
    opts.control = Some(crate::Control {
        listener: Arc::new(listener),
        elastic: crate::Elastic {
            factory,
            scalable: vec!["web".into()],
            max_per_role: 4,
            drain_delay: Duration::from_millis(100),
            autoscale: Vec::new(),
        },
        service_token: None,
    });
    let specs = vec![
        spec("db", "db-1", free_port(), STAND_IN),
        spec("web", "web-1", free_port(), STAND_IN),
    ];
    let started = start(specs, opts);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let get = |path: &str| {
        let (http, url) = (http.clone(), format!("{base}{path}"));
        async move {
            let r = http.get(url).send().await.ok()?;
            r.json::<serde_json::Value>().await.ok()
        }
    };
    let members = |v: serde_json::Value| -> Vec<(String, String)> {
        v["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["id"].as_str().unwrap().to_owned(),
                    m["state"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    // Members turn active once healthy.
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = get("/members/web").await
            && members(v) == [("web-1".to_owned(), "active".to_owned())]
        {
            break;
        }
        assert!(Instant::now() < deadline, "{}", lines.all());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let post = |path: &str, body: serde_json::Value| {
        let (http, url) = (http.clone(), format!("{base}{path}"));
        async move {
            let r = http.post(url).json(&body).send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    // The live stream sees the scale as it happens.
    let mut live = http
        .get(format!("{base}/events/stream"))
        .send()
        .await
        .unwrap();
    let (status, body) = post("/scale", serde_json::json!({"web": 3})).await;
    assert_eq!(status, 200, "{body}");
    let mut seen = String::new();
    while !seen.contains("event: started") {
        let chunk = tokio::time::timeout(DEADLINE, live.chunk())
            .await
            .expect("an event in time")
            .unwrap()
            .expect("the stream stays open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("\"id\":\"web-2\""), "{seen}");
    assert_eq!(body["changes"][0], "web: 1 → 3, starting web-2, web-3");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let m = members(get("/members/web").await.unwrap());
        if m.iter().filter(|(_, s)| s == "active").count() == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "{m:?}\n{}", lines.all());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Refusals: an unscalable role, too many, zero, an unknown instance.
    for (body, want) in [
        (serde_json::json!({"db": 2}), "db cannot be scaled"),
        (
            serde_json::json!({"web": 5}),
            "a role runs 1 to 4 instances",
        ),
        (
            serde_json::json!({"web": 0}),
            "a role runs 1 to 4 instances",
        ),
    ] {
        let (status, answer) = post("/scale", body).await;
        assert_eq!(status, 400);
        assert!(
            answer["message"].as_str().unwrap().contains(want),
            "{answer}"
        );
    }
    let (status, _) = post("/instances/web-9/drain", serde_json::json!({})).await;
    assert_eq!(status, 404);

    // Scale in: the newest drains first and is gone once stopped.
    let (status, body) = post("/scale", serde_json::json!({"web": 2})).await;
    assert_eq!(
        (status, body["changes"][0].as_str()),
        (200, Some("web: 3 → 2, draining web-3"))
    );
    let deadline = Instant::now() + DEADLINE;
    loop {
        let m = members(get("/members/web").await.unwrap());
        if m == [
            ("web-1".to_owned(), "active".to_owned()),
            ("web-2".to_owned(), "active".to_owned()),
        ] {
            break;
        }
        assert!(Instant::now() < deadline, "{m:?}\n{}", lines.all());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Kill: the process dies and the supervisor restarts it.
    let (status, body) = post("/instances/web-2/kill", serde_json::json!({})).await;
    assert_eq!(status, 200, "{body}");
    let old = body["pid"].as_u64().unwrap() as u32;
    eventually("web-2 restarted", &lines, || {
        lines.contains("web-2 is healthy again").then_some(())
    })
    .await;
    assert!(!alive(old));

    let events = get("/events").await.unwrap();
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for k in [
        "started", "active", "draining", "stopped", "killed", "refused", "scale",
    ] {
        assert!(kinds.contains(&k), "{k} in {kinds:?}");
    }
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("scalelab_instances{role=\"web\",state=\"active\"} 2"),
        "{metrics}"
    );
    started.stop().await.expect("a clean stop");
}
