//! [`Running`]: a started topology and what a test asks of it (URLs, ids, pids, files, logs).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, anyhow};
use serde::Deserialize;
use tokio::process::Child;

use crate::logs::Logs;
use crate::topology::Instance;

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

/// A running topology. Dropping it stops `up` (SIGTERM, bounded wait) and removes the data directory.
pub struct Running {
    /// `scalelab up`; `None` once stopped. In a mutex so that `&self` waits can check that it is alive.
    pub(crate) up: Mutex<Option<Child>>,
    /// The temporary directory holding the topology file and the data directory.
    pub(crate) dir: Option<tempfile::TempDir>,
    pub(crate) data_dir: PathBuf,
    pub(crate) config_path: PathBuf,
    pub(crate) instances: Vec<Instance>,
    pub(crate) admin_password: String,
    pub(crate) logs: Logs,
    pub(crate) http: reqwest::Client,
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

    /// Everything `up` has printed so far (its own lines and every instance's, prefixed with the id).
    pub fn logs(&self) -> String {
        self.logs.text()
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

    pub(crate) fn instance(&self, id: &str) -> &Instance {
        self.instances
            .iter()
            .find(|i| i.id == id)
            .unwrap_or_else(|| panic!("this topology has no instance {id}"))
    }
}
