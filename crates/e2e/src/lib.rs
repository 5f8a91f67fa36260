//! The topology harness for end-to-end tests: starts the real `scalelab up` on free ports in a
//! temporary data directory, waits until every instance is healthy, and tears it all down.
//!
//! Start with [`Topology`] (the builder) and [`Running`] (what a test drives):
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! let system = e2e::Topology::new().counts("gateway", 2).start().await?;
//! let health = reqwest::get(format!("{}/health", system.lb_url())).await?;
//! assert_eq!(health.status(), 200);
//! let pid = system.kill("gateway-1", nix::sys::signal::Signal::SIGKILL)?;
//! system.wait_restarted("gateway-1", pid).await?;
//! assert!(system.stop().await?.success());
//! # Ok(())
//! # }
//! ```
//!
//! The harness drives the binary, never the crates: it needs `target/<profile>/scalelab` built first
//! (`cargo build -p cli`, which `.ci/run` does before `cargo test`), or the path in `SCALELAB_BIN`.
//! See [`binary`].
//!
//! Invariants: nothing here sleeps a fixed time (every wait polls a condition against a deadline);
//! every topology gets its own ports, data directory and admin password, so tests run in parallel.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// The roles of the default topology and their instance counts (the issue's classic lab layout).
const DEFAULT_COUNTS: [(&str, usize); 6] = [
    ("auth", 2),
    ("db", 1),
    ("cache", 1),
    ("service", 3),
    ("gateway", 2),
    ("lb", 1),
];

/// The balancer's own liveness check (its `/health` is proxied to a gateway).
const LB_HEALTH_PATH: &str = "/_lb/health";
/// How long `start` waits for every instance to be healthy.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// How long the `wait_*` helpers wait by default.
const WAIT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `stop` (and `Drop`) wait for `up` to exit after SIGTERM (its own grace is 10 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Interval between two polls of a condition.
const POLL: Duration = Duration::from_millis(25);
/// How many times `start` picks new ports when one was taken between picking and binding.
const START_ATTEMPTS: usize = 3;
/// How many of `up`'s last lines are printed when a test fails.
const LINES_ON_FAILURE: usize = 300;

/// The path of the `scalelab` binary the harness runs.
///
/// `SCALELAB_BIN` if set; otherwise `scalelab` in the profile directory of the running test
/// (`target/debug/deps/e2e-1234` gives `target/debug/scalelab`). Cargo does not build another
/// package's binary for a test, so build it first: `cargo build -p cli && cargo test -p e2e`.
/// A binary older than the workspace's sources is used anyway, with a warning on stderr.
pub fn binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("SCALELAB_BIN") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("SCALELAB_BIN={} is not a file", path.display());
        }
        return Ok(path);
    }
    let exe = std::env::current_exe().context("finding the test executable")?;
    let profile_dir = exe
        .parent()
        .filter(|dir| dir.ends_with("deps"))
        .and_then(Path::parent)
        .or_else(|| exe.parent())
        .ok_or_else(|| anyhow!("cannot find the target directory from {}", exe.display()))?;
    let path = profile_dir.join("scalelab");
    if !path.is_file() {
        bail!(
            "{} does not exist: the end-to-end tests drive the real binary, so build it first \
             (`cargo build -p cli`, or `cargo build --release -p cli` for `--release` tests), \
             or point SCALELAB_BIN at one",
            path.display()
        );
    }
    warn_if_stale(&path);
    Ok(path)
}

/// Warns when a source file of the workspace is newer than the binary.
fn warn_if_stale(binary: &Path) {
    let Ok(built) = binary.metadata().and_then(|m| m.modified()) else {
        return;
    };
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if let Some(newer) = newest_source(&crates).filter(|(time, _)| *time > built) {
        eprintln!(
            "warning: {} is older than {}; run `cargo build -p cli` to test the current code",
            binary.display(),
            newer.1.display()
        );
    }
}

/// The most recently modified `.rs` or `.toml` file under `dir`.
fn newest_source(dir: &Path) -> Option<(SystemTime, PathBuf)> {
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                if path.file_name().is_some_and(|n| n != "target") {
                    pending.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs" || e == "toml") {
                let Ok(modified) = meta.modified() else {
                    continue;
                };
                if newest.as_ref().is_none_or(|(t, _)| modified > *t) {
                    newest = Some((modified, path));
                }
            }
        }
    }
    newest
}

/// A topology to start: instance counts per role, extra settings and environment.
///
/// `Topology::new()` is the default topology (lb 1, gateway 2, service 3, db 1, cache 1, auth 2)
/// with every port picked free.
#[derive(Debug, Clone)]
pub struct Topology {
    counts: BTreeMap<String, usize>,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    start_timeout: Duration,
    /// The program to run instead of [`binary`] (the harness's own tests use a stand-in).
    program: Option<PathBuf>,
    /// A directory to run in instead of a fresh temporary one (to restart on the same data).
    dir: Option<PathBuf>,
    /// The admin password instead of a random one (a restart keeps the first start's).
    admin_password: Option<String>,
}

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}

impl Topology {
    /// The default topology.
    pub fn new() -> Self {
        Self {
            counts: DEFAULT_COUNTS
                .iter()
                .map(|(role, n)| ((*role).to_owned(), *n))
                .collect(),
            extra: Vec::new(),
            env: Vec::new(),
            start_timeout: START_TIMEOUT,
            program: None,
            dir: None,
            admin_password: None,
        }
    }

    /// Merges TOML settings into the topology file, e.g. `"[gateway]\nrate_limit_login = 100"`.
    ///
    /// Tables merge key by key (a later value wins), so `[instances]` here can add roles too; the
    /// harness's `data_dir` and ports are set first and can be overridden. Invalid TOML fails `start`.
    pub fn toml_extra(mut self, toml: &str) -> Self {
        self.extra.push(toml.to_owned());
        self
    }

    /// Sets an environment variable for `up` (and so for every instance it starts).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Runs `n` instances of `role` (`0` leaves the role out of the file).
    pub fn counts(mut self, role: &str, n: usize) -> Self {
        self.counts.insert(role.to_owned(), n);
        self
    }

    /// How long `start` waits for every instance to be healthy (default 90 s).
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// Runs `program` instead of [`binary()`]; it is called as `PROGRAM up --config FILE --data-dir DIR`.
    pub fn program(mut self, program: impl Into<PathBuf>) -> Self {
        self.program = Some(program.into());
        self
    }

    /// Runs in `dir` (the data directory is `dir/data`) instead of a fresh temporary directory,
    /// and leaves it in place afterwards: a second start with the same `dir` (and
    /// [`Topology::admin_password`]) restarts the system on the data of the first.
    pub fn in_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// Uses this admin password instead of a random one (the admin account is created on the
    /// first start of a data directory only).
    pub fn admin_password(mut self, password: impl Into<String>) -> Self {
        self.admin_password = Some(password.into());
        self
    }

    /// Writes the topology file, runs `scalelab up` and waits until every instance answers
    /// `GET /health` with 200 and is listed with its pid in `instances.json`.
    ///
    /// The error carries `up`'s output. A port taken between picking and binding is retried with
    /// new ports.
    pub async fn start(self) -> anyhow::Result<Running> {
        let binary = match &self.program {
            Some(program) => program.clone(),
            None => binary()?,
        };
        let mut attempt = 1;
        loop {
            match self.start_once(&binary).await {
                Ok(running) => return Ok(running),
                Err(Failure { error, port_taken }) => {
                    if !port_taken || attempt == START_ATTEMPTS {
                        return Err(error);
                    }
                    attempt += 1;
                }
            }
        }
    }

    async fn start_once(&self, binary: &Path) -> Result<Running, Failure> {
        let (dir, base) = match &self.dir {
            Some(base) => {
                std::fs::create_dir_all(base).context("creating the directory")?;
                // The previous run's instance list names dead pids; `up` writes a new one.
                let _ = std::fs::remove_file(base.join("data").join("instances.json"));
                (None, base.clone())
            }
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("scalelab-e2e-")
                    .tempdir()
                    .context("creating the data directory")?;
                let base = dir.path().to_path_buf();
                (Some(dir), base)
            }
        };
        let data_dir = base.join("data");
        let config_path = base.join("topology.toml");
        let instances = self.pick_ports()?;
        std::fs::write(&config_path, self.config_file(&data_dir, &instances)?)
            .context("writing the topology file")?;
        let admin_password = self.admin_password.clone().unwrap_or_else(random_password);

        let mut command = Command::new(binary);
        command
            .arg("up")
            .arg("--config")
            .arg(&config_path)
            .arg("--data-dir")
            .arg(&data_dir)
            .env("SCALELAB_ADMIN_PASSWORD", &admin_password)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .with_context(|| format!("running {}", binary.display()))?;
        let logs = Logs::default();
        if let Some(stdout) = child.stdout.take() {
            logs.capture(stdout);
        }
        if let Some(stderr) = child.stderr.take() {
            logs.capture(stderr);
        }

        let running = Running {
            up: Mutex::new(Some(child)),
            dir,
            data_dir,
            config_path,
            instances,
            admin_password,
            logs,
            http: client(),
        };
        match running.until_started(self.start_timeout).await {
            Ok(()) => Ok(running),
            Err(error) => {
                // Stop what may have started, then report with everything `up` printed.
                let _ = running.shutdown().await;
                running.logs.settle().await;
                let logs = running.logs();
                let port_taken =
                    logs.contains("is already in use") || logs.contains("Address already in use");
                Err(Failure {
                    error: error
                        .context(format!("`scalelab up` did not start; its output:\n{logs}")),
                    port_taken,
                })
            }
        }
    }

    /// A free port for every instance, ids `<role>-<n>` in order.
    fn pick_ports(&self) -> anyhow::Result<Vec<Instance>> {
        // Every listener stays open until all ports are picked, so no port is picked twice.
        let mut listeners = Vec::new();
        let mut instances = Vec::new();
        for (role, count) in &self.counts {
            for n in 1..=*count {
                let listener =
                    std::net::TcpListener::bind("127.0.0.1:0").context("picking a free port")?;
                let port = listener.local_addr()?.port();
                listeners.push(listener);
                instances.push(Instance {
                    role: role.clone(),
                    id: format!("{role}-{n}"),
                    port,
                });
            }
        }
        Ok(instances)
    }

    /// The topology file: `data_dir`, `[instances]` with the picked ports, then the extra settings.
    fn config_file(&self, data_dir: &Path, instances: &[Instance]) -> anyhow::Result<String> {
        let mut roles = toml::Table::new();
        roles.insert("host".to_owned(), "127.0.0.1".into());
        for (role, count) in &self.counts {
            if *count == 0 {
                continue;
            }
            let ports: Vec<toml::Value> = instances
                .iter()
                .filter(|i| &i.role == role)
                .map(|i| toml::Value::Integer(i64::from(i.port)))
                .collect();
            roles.insert(role.clone(), toml::Value::Array(ports));
        }
        let mut file = toml::Table::new();
        file.insert(
            "data_dir".to_owned(),
            data_dir.to_string_lossy().into_owned().into(),
        );
        file.insert("instances".to_owned(), toml::Value::Table(roles));
        for extra in &self.extra {
            let extra: toml::Table = extra
                .parse()
                .with_context(|| format!("toml_extra is not valid TOML:\n{extra}"))?;
            merge(&mut file, extra);
        }
        toml::to_string(&file).context("writing the topology as TOML")
    }
}

/// Merges `extra` into `base`: tables recursively, anything else replaced.
fn merge(base: &mut toml::Table, extra: toml::Table) {
    for (key, value) in extra {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(base)), toml::Value::Table(extra)) => merge(base, extra),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// A start attempt's error, and whether a new set of ports may fix it.
struct Failure {
    error: anyhow::Error,
    port_taken: bool,
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Self {
            error,
            port_taken: false,
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(error: std::io::Error) -> Self {
        anyhow::Error::from(error).into()
    }
}

/// 32 random hex characters, prefixed so that it is recognisable in logs.
fn random_password() -> String {
    let state = std::collections::hash_map::RandomState::new();
    let mut hex = String::from("e2e-");
    for salt in 0..2u64 {
        let mut hasher = state.build_hasher();
        hasher.write_u64(salt);
        hasher.write_u128(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        hex.push_str(&format!("{:016x}", hasher.finish()));
    }
    hex
}

/// An HTTP client for tests: no proxy from the environment, a timeout so that nothing hangs.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default()
}

/// One instance the harness asked for.
#[derive(Debug, Clone)]
struct Instance {
    role: String,
    id: String,
    port: u16,
}

/// One entry of `<data_dir>/instances.json`, as `up` writes it.
#[derive(Debug, Clone, Deserialize)]
pub struct InstanceRecord {
    /// The role, e.g. `gateway`.
    pub role: String,
    /// The instance id, e.g. `gateway-1`.
    pub id: String,
    /// Its base URL, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    /// Its port.
    pub port: u16,
    /// The pid of the process serving it now (changes when `up` restarts it).
    pub pid: Option<u32>,
}

/// Everything `up` printed (stdout and stderr), line by line. `SCALELAB_E2E_ECHO=1` also copies
/// it to the test's stderr as it comes.
#[derive(Clone, Default)]
struct Logs {
    text: Arc<Mutex<String>>,
    /// Streams not yet at their end, so that a report can wait for the last lines.
    open: Arc<AtomicUsize>,
}

impl Logs {
    fn capture(&self, stream: impl AsyncRead + Unpin + Send + 'static) {
        let logs = self.clone();
        let echo = std::env::var_os("SCALELAB_E2E_ECHO").is_some();
        self.open.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if echo {
                    eprintln!("{line}");
                }
                let mut text = logs.text.lock().unwrap_or_else(|e| e.into_inner());
                text.push_str(&line);
                text.push('\n');
            }
            logs.open.fetch_sub(1, Ordering::SeqCst);
        });
    }

    fn text(&self) -> String {
        self.text.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits (bounded) until every stream has reached its end, i.e. `up` has exited and all its
    /// output is in.
    async fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.open.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(POLL).await;
        }
    }
}

/// A running topology. Dropping it stops `up` (SIGTERM, bounded wait) and removes the data directory.
pub struct Running {
    /// `scalelab up`; `None` once stopped. In a mutex so that `&self` waits can check that it is alive.
    up: Mutex<Option<Child>>,
    /// The temporary directory holding the topology file and the data directory.
    dir: Option<tempfile::TempDir>,
    data_dir: PathBuf,
    config_path: PathBuf,
    instances: Vec<Instance>,
    admin_password: String,
    logs: Logs,
    http: reqwest::Client,
}

impl Running {
    /// The base URL of the `n`th instance (from 1) of `role`, e.g. `url("gateway", 2)`.
    ///
    /// # Panics
    /// If the topology has no such instance (a mistake in the test).
    pub fn url(&self, role: &str, n: usize) -> String {
        let id = format!("{role}-{n}");
        format!("http://127.0.0.1:{}", self.instance(&id).port)
    }

    /// The base URL of the load balancer (`lb-1`).
    pub fn lb_url(&self) -> String {
        self.url("lb", 1)
    }

    /// The base URL of instance `id`, e.g. `gateway-1`.
    ///
    /// # Panics
    /// If the topology has no such instance.
    pub fn url_of(&self, id: &str) -> String {
        format!("http://127.0.0.1:{}", self.instance(id).port)
    }

    /// Every instance id, in the order the harness assigned them.
    pub fn ids(&self) -> Vec<String> {
        self.instances.iter().map(|i| i.id.clone()).collect()
    }

    /// The ids of `role`'s instances.
    pub fn ids_of(&self, role: &str) -> Vec<String> {
        self.instances
            .iter()
            .filter(|i| i.role == role)
            .map(|i| i.id.clone())
            .collect()
    }

    /// The admin password given to `up` through `SCALELAB_ADMIN_PASSWORD`.
    pub fn admin_password(&self) -> &str {
        &self.admin_password
    }

    /// The data directory (`--data-dir`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The topology file given to `up` (`--config`).
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// A client with no proxy and a 10 s timeout.
    pub fn client(&self) -> &reqwest::Client {
        &self.http
    }

    /// Logs in as `admin` through the balancer and returns the token.
    pub async fn admin_token(&self) -> anyhow::Result<String> {
        let response = self
            .http
            .post(format!("{}/login", self.lb_url()))
            .json(&serde_json::json!({"username": "admin", "password": self.admin_password}))
            .send()
            .await
            .context("POST /login")?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.context("the /login body")?;
        body["token"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("POST /login answered {status} {body}"))
    }

    /// Everything `up` has printed so far (its own lines and every instance's, prefixed with the id).
    pub fn logs(&self) -> String {
        self.logs.text()
    }

    /// Waits until `up`'s output contains `needle`.
    pub async fn wait_log(&self, needle: &str) -> anyhow::Result<()> {
        self.until(
            &format!("the log line {needle:?}"),
            WAIT_TIMEOUT,
            || async { Ok(self.logs().contains(needle).then_some(())) },
        )
        .await
    }

    /// `instances.json` as `up` last wrote it.
    pub fn instances(&self) -> anyhow::Result<Vec<InstanceRecord>> {
        let path = self.data_dir.join("instances.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// The current pid of instance `id`, from `instances.json`.
    pub fn pid(&self, id: &str) -> anyhow::Result<u32> {
        self.instances()?
            .into_iter()
            .find(|r| r.id == id)
            .and_then(|r| r.pid)
            .ok_or_else(|| anyhow!("instances.json has no pid for {id}"))
    }

    /// Sends `signal` to instance `id` and returns the pid it went to (for [`Self::wait_restarted`]).
    pub fn kill(&self, id: &str, signal: Signal) -> anyhow::Result<u32> {
        let pid = self.pid(id)?;
        kill(Pid::from_raw(pid as i32), signal).with_context(|| format!("kill -{signal} {id}"))?;
        Ok(pid)
    }

    /// Waits until instance `id` answers its health check (`GET /health`; the balancer's own is
    /// `GET /_lb/health`, as its `/health` is proxied) with 200.
    pub async fn wait_healthy(&self, id: &str) -> anyhow::Result<()> {
        let url = self.health_url(id);
        self.until(&format!("{id} to be healthy"), WAIT_TIMEOUT, || async {
            Ok(self.healthy(&url).await.then_some(()))
        })
        .await
    }

    /// Waits until `up` has replaced `old_pid` for `id` and the new process is healthy; returns the
    /// new pid.
    pub async fn wait_restarted(&self, id: &str, old_pid: u32) -> anyhow::Result<u32> {
        let url = self.health_url(id);
        self.until(&format!("{id} to be restarted"), WAIT_TIMEOUT, || async {
            let pid = self.pid(id).ok().filter(|&p| p != old_pid);
            Ok(match pid {
                Some(pid) if self.healthy(&url).await => Some(pid),
                _ => None,
            })
        })
        .await
    }

    /// Sends SIGTERM to `up` and waits (bounded) for it to exit; returns its exit status.
    pub async fn stop(self) -> anyhow::Result<ExitStatus> {
        self.shutdown().await
    }

    async fn shutdown(&self) -> anyhow::Result<ExitStatus> {
        let Some(mut up) = self.take_up() else {
            bail!("`up` was already stopped");
        };
        if let Some(pid) = up.id() {
            // An error means it has exited already; `wait` then returns at once.
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        match tokio::time::timeout(STOP_TIMEOUT, up.wait()).await {
            Ok(status) => status.context("waiting for `up`"),
            Err(_) => {
                let _ = up.kill().await;
                self.kill_instances();
                bail!("`up` did not exit within {STOP_TIMEOUT:?} of SIGTERM; killed it")
            }
        }
    }

    /// Waits until every instance is in `instances.json` with a pid and answers `GET /health`.
    async fn until_started(&self, timeout: Duration) -> anyhow::Result<()> {
        let expected: Vec<(String, String)> = self
            .instances
            .iter()
            .map(|i| (i.id.clone(), self.health_url(&i.id)))
            .collect();
        let this = self;
        this.until("every instance to be healthy", timeout, || async {
            let Ok(records) = this.instances() else {
                return Ok(None);
            };
            for (id, url) in &expected {
                if !records.iter().any(|r| &r.id == id && r.pid.is_some()) {
                    return Ok(None);
                }
                if !this.healthy(url).await {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        })
        .await
    }

    async fn healthy(&self, url: &str) -> bool {
        self.http
            .get(url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status() == reqwest::StatusCode::OK)
    }

    /// Polls `check` until it gives a value, failing after `timeout` or as soon as `up` has exited.
    async fn until<T, F, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: F,
    ) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = check().await? {
                return Ok(value);
            }
            if let Some(status) = self.up_exited() {
                bail!("`up` exited ({status}) while waiting for {what}");
            }
            if Instant::now() >= deadline {
                bail!("timed out after {timeout:?} waiting for {what}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// `up`'s exit status if it has exited (or was stopped).
    fn up_exited(&self) -> Option<String> {
        let mut up = self.up.lock().unwrap_or_else(|e| e.into_inner());
        match up.as_mut() {
            None => Some("stopped by the harness".to_owned()),
            Some(child) => match child.try_wait() {
                Ok(Some(status)) => Some(status.to_string()),
                Ok(None) => None,
                Err(e) => Some(format!("cannot wait for it: {e}")),
            },
        }
    }

    fn take_up(&self) -> Option<Child> {
        self.up.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// The URL of instance `id`'s own liveness check.
    pub fn health_url(&self, id: &str) -> String {
        let path = if self.instance(id).role == "lb" {
            LB_HEALTH_PATH
        } else {
            "/health"
        };
        format!("{}{path}", self.url_of(id))
    }

    fn instance(&self, id: &str) -> &Instance {
        self.instances
            .iter()
            .find(|i| i.id == id)
            .unwrap_or_else(|| panic!("this topology has no instance {id}"))
    }

    /// Last resort when `up` itself had to be killed: its children are in their own process groups
    /// and would outlive it.
    fn kill_instances(&self) {
        if let Ok(records) = self.instances() {
            for pid in records.iter().filter_map(|r| r.pid) {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = self.logs();
            let lines: Vec<&str> = logs.lines().collect();
            let skip = lines.len().saturating_sub(LINES_ON_FAILURE);
            eprintln!(
                "---- scalelab up (data dir {}), last {} lines ----\n{}",
                self.data_dir.display(),
                lines.len() - skip,
                lines[skip..].join("\n")
            );
        }
        if let Some(mut up) = self.take_up() {
            // Drop cannot await: signal, then poll the exit with a deadline.
            if let Some(pid) = up.id() {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            }
            let deadline = std::time::Instant::now() + STOP_TIMEOUT;
            let exited = loop {
                match up.try_wait() {
                    Ok(Some(_)) | Err(_) => break true,
                    Ok(None) if std::time::Instant::now() >= deadline => break false,
                    Ok(None) => std::thread::sleep(POLL),
                }
            };
            if !exited {
                let _ = up.start_kill();
                self.kill_instances();
            }
        }
        if std::env::var_os("SCALELAB_E2E_KEEP").is_some()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("keeping {}", dir.keep().display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_settings_merge_into_tables_and_override_values() {
        let mut base: toml::Table = "data_dir = \"a\"\n[instances]\nhost = \"127.0.0.1\"\nlb = [1]"
            .parse()
            .unwrap();
        let extra: toml::Table =
            "data_dir = \"b\"\n[instances]\nworker = [2]\n[lb]\nstrategy = \"p2c\""
                .parse()
                .unwrap();

        merge(&mut base, extra);

        let expected: toml::Table = "data_dir = \"b\"\n[instances]\nhost = \"127.0.0.1\"\nlb = [1]\nworker = [2]\n[lb]\nstrategy = \"p2c\""
            .parse()
            .unwrap();
        assert_eq!(base, expected);
    }

    #[test]
    fn the_default_topology_has_the_classic_counts_and_distinct_ports() {
        let topology = Topology::new().counts("worker", 2).counts("auth", 0);
        let instances = topology.pick_ports().unwrap();
        let ids: Vec<&str> = instances.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "cache-1",
                "db-1",
                "gateway-1",
                "gateway-2",
                "lb-1",
                "service-1",
                "service-2",
                "service-3",
                "worker-1",
                "worker-2"
            ]
        );
        let mut ports: Vec<u16> = instances.iter().map(|i| i.port).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), instances.len());

        let file: toml::Table = topology
            .config_file(Path::new("/tmp/x/data"), &instances)
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(file["data_dir"].as_str(), Some("/tmp/x/data"));
        assert_eq!(file["instances"]["service"].as_array().unwrap().len(), 3);
        assert!(file["instances"].get("auth").is_none());
    }

    #[test]
    fn passwords_are_random() {
        assert_ne!(random_password(), random_password());
        assert_eq!(random_password().len(), "e2e-".len() + 32);
    }
}
