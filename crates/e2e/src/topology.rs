//! The builder ([`Topology`]): instance counts, free ports, the topology file, and starting `up`
//! until every instance is healthy (with new ports when one was taken meanwhile).

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use tokio::process::Command;

use crate::binary::binary;
use crate::http::client;
use crate::logs::Logs;
use crate::running::Running;

/// The roles of the default topology and their instance counts (the classic lab layout).
const DEFAULT_COUNTS: [(&str, usize); 6] = [
    ("auth", 2),
    ("db", 1),
    ("cache", 1),
    ("service", 3),
    ("gateway", 2),
    ("lb", 1),
];

/// How long `start` waits for every instance to be healthy.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// How many times `start` picks new ports when one was taken between picking and binding.
const START_ATTEMPTS: usize = 3;

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
    /// `up --preset NAME`.
    preset: Option<String>,
    /// More arguments for `up`.
    up_args: Vec<String>,
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
            preset: None,
            up_args: Vec::new(),
            admin_password: None,
        }
    }

    /// Passes `arg` to `up` (after the harness's own arguments).
    pub fn up_arg(mut self, arg: &str) -> Self {
        self.up_args.push(arg.to_owned());
        self
    }

    /// Runs `up --preset NAME` (the preset is laid over this topology; the roles it adds need
    /// [`Topology::counts`] here so that they get free ports).
    pub fn preset(mut self, name: &str) -> Self {
        self.preset = Some(name.to_owned());
        self
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
            .args(self.preset.iter().flat_map(|p| ["--preset", p.as_str()]))
            .args(&self.up_args)
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
                    supervisor::ports::bind_free("127.0.0.1").context("picking a free port")?;
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

/// One instance the harness asked for.
#[derive(Debug, Clone)]
pub(crate) struct Instance {
    pub(crate) role: String,
    pub(crate) id: String,
    pub(crate) port: u16,
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
