//! End to end: a topology with bad values in two roles' sections is refused by the real binary
//! before anything starts, with every problem and its path in the file; `config --check` says the
//! same without starting anything, and passes a good file.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_scalelab");

/// Ports free right now, held until the file is written so that no two are the same.
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("an address").port())
        .collect()
}

/// A whole topology (every role, one instance each) with `extra` appended.
fn topology(ports: &[u16], extra: &str) -> String {
    let roles = [
        "auth", "db", "worker", "cache", "service", "users", "gateway", "lb",
    ];
    let mut text = String::from("[instances]\nhost = \"127.0.0.1\"\n");
    for (role, port) in roles.iter().zip(ports) {
        text.push_str(&format!("{role} = [{port}]\n"));
    }
    text.push_str(extra);
    text
}

/// Runs the binary with `args`; kills it and fails the test if it is still running after 60 s
/// (a topology that was not refused would run until stopped).
fn run(args: &[&str], cwd: &Path) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the scalelab binary starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "scalelab {args:?} did not exit: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

const BAD: &str = "\n[service]\nmax_concurrency = 0\n\n[cache]\nmax_entries = 0\n";

#[test]
fn up_refuses_a_bad_topology_before_starting_anything() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let ports = free_ports(8);
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, topology(&ports, BAD)).expect("write the topology");
    let data = dir.path().join("data");

    let out = run(
        &[
            "up",
            "--config",
            file.to_str().expect("utf-8 path"),
            "--data-dir",
            data.to_str().expect("utf-8 path"),
        ],
        dir.path(),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "up accepted it: {stdout}{stderr}");
    for problem in [
        "service.max_concurrency: must be between 1 and",
        "cache.max_entries: must be at least 1",
    ] {
        assert!(stderr.contains(problem), "{problem:?} not in: {stderr}");
    }
    assert!(stderr.contains("bad.toml"), "the file is named: {stderr}");

    // Nothing started: no child logged a line, nothing was prepared for children, every port is
    // still free.
    assert!(
        !stdout.contains("[up]") && !stderr.contains("[up]") && !stderr.contains("[cache-1]"),
        "the supervisor ran: {stdout}{stderr}"
    );
    assert!(!data.exists(), "the data directory was created");
    for port in ports {
        TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("port {port} is taken ({e}): an instance started"));
    }
}

#[test]
fn config_check_reports_every_problem_and_passes_a_good_file() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let ports = free_ports(8);
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        topology(
            &ports,
            &format!("{BAD}\n[lb.pool]\nstrategy = \"fastest\"\n"),
        ),
    )
    .expect("write");
    let out = run(
        &["config", "--check", bad.to_str().expect("utf-8")],
        dir.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    for problem in [
        "lb.pool.strategy: unknown variant `fastest`",
        "service.max_concurrency: must be between 1 and",
        "cache.max_entries: must be at least 1",
    ] {
        assert!(stderr.contains(problem), "{problem:?} not in: {stderr}");
    }
    assert!(stderr.contains("3 problems"), "{stderr}");

    let good = dir.path().join("good.toml");
    std::fs::write(&good, topology(&ports, "")).expect("write");
    let out = run(
        &["config", "--check", good.to_str().expect("utf-8")],
        dir.path(),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ok (8 instances)"), "{stdout}");
}

#[test]
fn config_routes_prints_the_route_table_with_the_files_overrides() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let out = run(&["config", "--routes", "--json"], dir.path());
    assert!(out.status.success(), "{out:?}");
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let row = |rows: &serde_json::Value, route: &str| {
        rows.as_array()
            .expect("a list")
            .iter()
            .find(|r| {
                format!(
                    "{} {}",
                    r["method"].as_str().unwrap(),
                    r["path"].as_str().unwrap()
                ) == route
            })
            .unwrap_or_else(|| panic!("{route} in {rows}"))
            .clone()
    };
    assert_eq!(row(&rows, "PUT /data/{key}")["guests"], false);
    assert_eq!(row(&rows, "GET /users")["role"], "admin");
    assert_eq!(row(&rows, "POST /login")["bucket"], "login");

    let ports = free_ports(8);
    let file = dir.path().join("roles.toml");
    std::fs::write(
        &file,
        topology(
            &ports,
            "[gateway.required_roles]\n\"GET /process\" = \"operator\"\n",
        ),
    )
    .expect("write");
    let out = run(
        &[
            "config",
            "--routes",
            "--json",
            "--config",
            file.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{out:?}");
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(row(&rows, "GET /process")["role"], "operator");

    // The same override naming no route stops the check (and `up`) with its path.
    std::fs::write(
        &file,
        topology(
            &ports,
            "[gateway.required_roles]\n\"GET /proces\" = \"operator\"\n",
        ),
    )
    .expect("write");
    let out = run(&["config", "--check", file.to_str().unwrap()], dir.path());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("gateway.required_roles.\"GET /proces\": no such route"),
        "{err}"
    );
}

#[test]
fn printing_into_a_reader_that_stops_early_is_not_an_error() {
    // `scalelab config | head -1`: the reader goes away; the command exits 0, without a panic.
    for args in [&["config"][..], &["config", "--routes"][..]] {
        let mut child = Command::new(BIN)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        // The reading end closes before the command has written anything (it is still starting).
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("exit");
        assert!(out.status.success(), "{args:?}: {out:?}");
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("panicked"),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `config --preset casitas` prints the topology `up --preset casitas` runs: a file that
/// `config --check` accepts, with the preset's roles and settings; `--routes` shows its routes.
#[test]
fn the_casitas_preset_prints_a_topology_that_checks() {
    let dir = tempfile::tempdir().expect("a directory");
    let out = run(&["config", "--preset", "casitas"], dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let file: toml::Table = toml::from_str(&text).expect("TOML");
    assert_eq!(file["instances"]["units"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        file["instances"]["gateway"].as_array().map(Vec::len),
        Some(2)
    );
    assert!(
        file["auth"]["roles"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r.as_str() == Some("finance"))
    );
    let path = dir.path().join("casitas.toml");
    std::fs::write(&path, &text).unwrap();
    let out = run(&["config", "--check", path.to_str().unwrap()], dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["config", "--routes", "--preset", "casitas"], dir.path());
    let routes = String::from_utf8_lossy(&out.stdout);
    assert!(
        routes
            .lines()
            .any(|l| l.starts_with("POST /finances/generate_report") && l.contains("finance")),
        "{routes}"
    );
    let out = run(&["config", "--routes"], dir.path());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("/units"));
}
