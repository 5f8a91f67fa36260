//! One topology variant running for a scenario: started on free ports in a fresh data directory
//! through the same [`supervisor`] and child specs as `scalelab up`, used over HTTP, stopped.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use rand::Rng;
use rand::distributions::Alphanumeric;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::topology::{InstanceRef, Topology};
use crate::up;
use supervisor::{self, SupervisorOptions};

/// How many of the children's last log lines are kept, to explain a failed start.
const LOG_TAIL: usize = 60;
/// Longest wait for the whole topology to be healthy and ready.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// A running topology.
pub(super) struct Cluster {
    /// Every instance, roles in start order, with the ports chosen.
    instances: Vec<InstanceRef>,
    /// The data directory (SQLite files, keys, `instances.json`); removed on stop.
    dir: PathBuf,
    /// The bootstrap admin's password, generated for this run and given to auth through the
    /// environment (never written to a file).
    admin_password: String,
    /// Resolving it stops the supervisor, which stops the children.
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    /// The children's last lines (they do not go to the terminal).
    log: Arc<Mutex<VecDeque<String>>>,
    /// For the few control calls (login, flush, readiness); the load goes through `bench`.
    http: reqwest::Client,
    /// The supervisor's control API, when the topology may change while it runs.
    control: Option<String>,
}

impl Cluster {
    /// Starts `topo` (its ports and data directory are replaced by free ports and a fresh
    /// temporary directory) and waits until every instance is healthy and every gateway ready.
    pub(super) async fn start(name: &str, topo: Topology) -> anyhow::Result<Cluster> {
        Self::start_with(name, topo, false).await
    }

    /// Like [`Cluster::start`], with the supervisor's control API on, as under `scalelab up`: the
    /// pools follow the instances, and `[autoscale.<role>]` policies run.
    pub(super) async fn start_elastic(name: &str, topo: Topology) -> anyhow::Result<Cluster> {
        Self::start_with(name, topo, true).await
    }

    async fn start_with(name: &str, mut topo: Topology, elastic: bool) -> anyhow::Result<Cluster> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "scalelab-scenario-{}-{name}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        topo.data_dir = dir.clone();
        topo.use_free_ports()?;
        let listener = if elastic {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            let url = format!("http://{}", l.local_addr()?);
            topo.lb.membership_url = url.clone();
            topo.gateway.membership_url = url.clone();
            Some((l, url))
        } else {
            None
        };
        let effective = up::prepare(&mut topo)?;
        let program = std::env::current_exe().context("cannot find the scalelab binary")?;
        let admin_password: String = rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .take(24)
            .map(char::from)
            .collect();
        let mut specs = up::child_specs(&topo, &effective, &program);
        for spec in &mut specs {
            spec.env
                .push(("SCALELAB_ADMIN_PASSWORD".into(), admin_password.clone()));
        }

        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        let log = Arc::new(Mutex::new(VecDeque::with_capacity(LOG_TAIL)));
        let sink = Arc::clone(&log);
        tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                let mut tail = sink.lock().unwrap_or_else(|e| e.into_inner());
                if tail.len() == LOG_TAIL {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        });
        let instances_file = topo.data_dir.join("instances.json");
        let control_url = listener.as_ref().map(|(_, url)| url.clone());
        let control = listener.map(|(l, _)| {
            let mut elastic = up::elastic(&topo, &effective, &program);
            let inner = elastic.factory.clone();
            let password = admin_password.clone();
            elastic.factory = Arc::new(move |role: &str, id: &str, port: u16| {
                let mut spec = inner(role, id, port);
                spec.env
                    .push(("SCALELAB_ADMIN_PASSWORD".into(), password.clone()));
                spec
            });
            supervisor::Control {
                listener: Arc::new(l),
                elastic,
                service_token: None,
            }
        });
        let opts = SupervisorOptions {
            control,
            print_table: false,
            handle_signals: false,
            log: Some(tx),
            instances_file: Some(instances_file.clone()),
            grace: Duration::from_secs(5),
            ..SupervisorOptions::default()
        };
        let (shutdown, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(supervisor::run(specs, opts, async {
            let _ = stop_rx.await;
        }));
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()?;
        let mut cluster = Cluster {
            instances: topo.instances(),
            dir: topo.data_dir.clone(),
            admin_password,
            shutdown: Some(shutdown),
            task: Some(task),
            log,
            http,
            control: control_url,
        };
        match cluster.wait_ready(&instances_file).await {
            Ok(()) => Ok(cluster),
            Err(e) => {
                let tail = cluster.log_tail();
                cluster.stop().await.ok();
                Err(e.context(format!(
                    "the {name} topology did not start; its last lines:\n{tail}"
                )))
            }
        }
    }

    async fn wait_ready(&mut self, instances_file: &std::path::Path) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        // The supervisor publishes instances.json once every instance answered its health check.
        while !instances_file.exists() {
            if self.task.as_ref().is_some_and(JoinHandle::is_finished) {
                let result = self.task.take().context("no supervisor")?.await?;
                result?;
                bail!("the supervisor stopped before the topology was healthy");
            }
            if Instant::now() > deadline {
                bail!("not healthy within {START_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // A gateway is ready once it has auth's keys and its cache and db answer.
        for url in self.urls("gateway") {
            loop {
                let ready = self
                    .http
                    .get(format!("{url}/ready"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ready {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("{url}/ready did not answer 200 within {START_TIMEOUT:?}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// The base URLs of `role`'s instances, in id order.
    pub(super) fn urls(&self, role: &str) -> Vec<String> {
        self.instances
            .iter()
            .filter(|i| i.role == role)
            .map(|i| i.url.clone())
            .collect()
    }

    /// Where clients send requests: the balancer, or the first gateway when there is none.
    pub(super) fn entry(&self) -> String {
        self.urls("lb")
            .into_iter()
            .chain(self.urls("gateway"))
            .next()
            .unwrap_or_default()
    }

    /// The ids of `role`'s instances.
    pub(super) fn ids(&self, role: &str) -> Vec<String> {
        self.instances
            .iter()
            .filter(|i| i.role == role)
            .map(|i| i.id.clone())
            .collect()
    }

    /// Logs in as the bootstrap admin through the entry point; returns the bearer token.
    pub(super) async fn admin_token(&self) -> anyhow::Result<String> {
        let answer: serde_json::Value = self
            .http
            .post(format!("{}/login", self.entry()))
            .json(&serde_json::json!({"username": "admin", "password": self.admin_password}))
            .send()
            .await?
            .error_for_status()
            .context("admin login")?
            .json()
            .await?;
        answer["token"]
            .as_str()
            .map(str::to_owned)
            .context("the login answer has no token")
    }

    /// `POST /cache/flush` on every gateway (a shared cache is flushed once per gateway, which is
    /// harmless; local caches need it on each).
    pub(super) async fn flush_caches(&self, token: &str) -> anyhow::Result<()> {
        for url in self.urls("gateway") {
            self.http
                .post(format!("{url}/cache/flush"))
                .bearer_auth(token)
                .send()
                .await?
                .error_for_status()
                .with_context(|| format!("POST {url}/cache/flush"))?;
        }
        Ok(())
    }

    /// The current pid of instance `id`, from `instances.json`.
    pub(super) fn pid(&self, id: &str) -> anyhow::Result<u32> {
        let path = self.dir.join("instances.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let records: Vec<serde_json::Value> = serde_json::from_str(&text)?;
        records
            .iter()
            .find(|r| r["id"] == id)
            .and_then(|r| r["pid"].as_u64())
            .map(|p| p as u32)
            .with_context(|| format!("{id} has no pid in {}", path.display()))
    }

    /// SIGKILLs instance `id` (the supervisor will restart it), as a crash would.
    pub(super) fn kill(&self, id: &str) -> anyhow::Result<u32> {
        use nix::sys::signal::{Signal, kill};
        let pid = self.pid(id)?;
        kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL)
            .with_context(|| format!("cannot kill {id} (pid {pid})"))?;
        Ok(pid)
    }

    /// The children's last log lines.
    /// `GET path` of the control API, as JSON (`None` without one, or when it does not answer).
    pub(super) async fn control(&self, path: &str) -> Option<serde_json::Value> {
        let base = self.control.as_ref()?;
        let resp = self.http.get(format!("{base}{path}")).send().await.ok()?;
        resp.json().await.ok()
    }

    pub(super) fn log_tail(&self) -> String {
        let tail = self.log.lock().unwrap_or_else(|e| e.into_inner());
        tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Stops every instance (SIGTERM, then SIGKILL after the grace period) and removes the data
    /// directory.
    pub(super) async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let result = match self.task.take() {
            Some(task) => task.await.context("the supervisor task failed")?,
            None => Ok(()),
        };
        let _ = std::fs::remove_dir_all(&self.dir);
        result
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Without `stop` (a panic): ask the supervisor to stop its children; should the runtime end
        // first, the children are spawned with kill-on-drop. `stop` is the orderly way.
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
