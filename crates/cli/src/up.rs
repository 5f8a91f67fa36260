//! `scalelab up`: the whole topology on this machine.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use crate::topology::{Preset, Topology};
use supervisor::{self, ChildSpec, SupervisorOptions};

/// Arguments of `scalelab up`.
#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    /// Topology file (default: the built-in scalelab.toml; see `scalelab config`).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// A preset laid over the topology (`casitas`: the rental-management system; see
    /// `scalelab config --preset casitas`).
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    /// Data directory for SQLite files and keys (default: `data_dir` of the topology, `./data`).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Give every instance a free ephemeral port instead of its configured one (for tests, or a
    /// second copy beside the first); the ports chosen are in `<data_dir>/instances.json`.
    #[arg(long)]
    free_ports: bool,
    /// Where the control API listens (`scalelab status`, `scale`, `drain`, `kill`). Default: a free
    /// port on loopback. On any other address every call that changes something needs the admin
    /// credential (HTTP Basic `admin:<password>`).
    #[arg(long, value_name = "ADDR")]
    control_addr: Option<std::net::SocketAddr>,
}

pub(crate) async fn run(args: UpArgs) -> anyhow::Result<()> {
    let mut topo = Topology::load_with(args.config.as_deref(), args.preset)?;
    if let Some(d) = args.data_dir {
        topo.data_dir = d;
    }
    if args.free_ports {
        topo.use_free_ports()?;
    }
    // Every role's section is checked here, all at once, before the data directory is made or
    // any child starts: a bad value is reported with its path, not by one child among thirteen.
    // With the secrets the children will read from the environment (never written to a file).
    let mut checked = topo.clone();
    checked.secrets_from_env();
    checked.check().with_context(|| match &args.config {
        Some(p) => format!("in the topology file {}", p.display()),
        None => "in the built-in topology".into(),
    })?;
    // The control API's address goes into the topology the children read: the balancer's and
    // the gateways' pools follow the instances through it.
    let control = match args.control_addr {
        Some(addr) => std::net::TcpListener::bind(addr)
            .with_context(|| format!("cannot open the control API on {addr}"))?,
        None => std::net::TcpListener::bind((topo.instances.host.as_str(), 0))
            .context("cannot open the control API's port")?,
    };
    let mut bound = control.local_addr()?;
    if bound.ip().is_unspecified() {
        // Listening everywhere: the children reach it on loopback.
        bound.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let control_url = format!("http://{bound}");
    if !bound.ip().is_loopback() || args.control_addr.is_some_and(|a| !a.ip().is_loopback()) {
        eprintln!(
            "[up] the control API listens on {}: every call that changes the system needs the admin credential",
            control.local_addr()?
        );
    }
    if topo.lb.membership_url.is_empty() {
        topo.lb.membership_url = control_url.clone();
    }
    if topo.gateway.membership_url.is_empty() {
        topo.gateway.membership_url = control_url.clone();
    }
    if topo.dashboard.control_url.is_empty() {
        topo.dashboard.control_url = control_url.clone();
    }
    let effective = prepare(&mut topo)?;
    let program = std::env::current_exe().context("cannot find the scalelab binary")?;
    let specs = child_specs(&topo, &effective, &program);
    anyhow::ensure!(!specs.is_empty(), "the topology has no instances");

    let control_file = ControlFile::write(&topo.data_dir, &control_url)?;
    let mut hints = hints(&topo);
    hints.push(format!(
        "  scalelab status; scalelab scale gateway=4     # control API: {control_url}"
    ));
    let opts = SupervisorOptions {
        hints,
        instances_file: Some(topo.data_dir.join("instances.json")),
        control: Some(supervisor::Control {
            listener: std::sync::Arc::new(control),
            elastic: elastic(&topo, &effective, &program),
            service_token: std::env::var(crate::serve::SERVICE_TOKEN_ENV)
                .ok()
                .filter(|t| !t.is_empty()),
        }),
        ..SupervisorOptions::default()
    };
    let result = supervisor::run(specs, opts, std::future::pending()).await;
    drop(control_file);
    result
}

/// The roles `scalelab scale` may change: those reached through a pool that follows the
/// supervisor (gateways, services, auth) or that pull their work (workers).
pub(crate) const SCALABLE: [&str; 4] = ["gateway", "service", "auth", "worker"];

/// What the supervisor needs to start, drain and stop instances while it runs.
pub(crate) fn elastic(topo: &Topology, effective: &Path, program: &Path) -> supervisor::Elastic {
    let (topo, effective, program) = (topo.clone(), effective.to_owned(), program.to_owned());
    // Every pool re-reads its membership each `refresh_ms`: twice the slowest, plus a margin, and
    // every pool has seen a drain before the instance is told to stop.
    let refresh = topo
        .lb
        .pool
        .refresh_ms
        .max(topo.gateway.services.refresh_ms);
    let autoscale = topo
        .autoscale
        .iter()
        .map(|(role, a)| (role.clone(), a.policy()))
        .collect();
    supervisor::Elastic {
        factory: std::sync::Arc::new(move |role: &str, id: &str, port: u16| {
            spec(&topo, &effective, &program, role, id, port)
        }),
        scalable: SCALABLE.iter().map(|r| r.to_string()).collect(),
        max_per_role: 16,
        autoscale,
        drain_delay: std::time::Duration::from_millis(refresh.saturating_mul(2) + 250),
    }
}

/// `<data_dir>/control.json`: how `scalelab status`, `scale`, `drain` and `kill` find this `up`.
/// Removed when `up` ends.
pub(crate) struct ControlFile(PathBuf);

impl ControlFile {
    fn write(data_dir: &Path, url: &str) -> anyhow::Result<Self> {
        let path = data_dir.join("control.json");
        let body = serde_json::json!({"url": url, "pid": std::process::id()});
        std::fs::write(&path, serde_json::to_vec_pretty(&body)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for ControlFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Creates the data directory, makes it absolute, fills in the derived URLs and writes the
/// effective topology the children read; returns that file's path.
pub(crate) fn prepare(topo: &mut Topology) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(&topo.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            topo.data_dir.display()
        )
    })?;
    // Children may run with another working directory one day; give them absolute paths.
    topo.data_dir = std::fs::canonicalize(&topo.data_dir)?;
    // The admin password reaches auth through the inherited environment, never through a file.
    topo.resolve(None);
    let effective = topo.data_dir.join("topology.effective.toml");
    std::fs::write(&effective, topo.to_toml()?)
        .with_context(|| format!("cannot write {}", effective.display()))?;
    Ok(effective)
}

/// One `scalelab serve ROLE ...` child per instance of `topo` (prepared by [`prepare`]), in start
/// order; `program` is the scalelab binary.
pub(crate) fn child_specs(topo: &Topology, effective: &Path, program: &Path) -> Vec<ChildSpec> {
    topo.instances()
        .into_iter()
        .map(|i| spec(topo, effective, program, i.role, &i.id, i.port))
        .collect()
}

/// `scalelab serve ROLE --id ID --port PORT ...` on the effective topology.
fn spec(
    topo: &Topology,
    effective: &Path,
    program: &Path,
    role: &str,
    id: &str,
    port: u16,
) -> ChildSpec {
    ChildSpec {
        args: vec![
            "serve".into(),
            role.into(),
            "--id".into(),
            id.into(),
            "--port".into(),
            port.to_string(),
            "--host".into(),
            topo.instances.host.clone(),
            "--config".into(),
            effective.display().to_string(),
            "--data-dir".into(),
            topo.data_dir.display().to_string(),
        ],
        health_path: if role == "lb" {
            format!("{}/health", lb::ADMIN_PREFIX)
        } else {
            "/health".into()
        },
        role: role.into(),
        id: id.into(),
        port,
        url: format!("http://{}:{port}", topo.instances.host),
        program: program.to_owned(),
        env: Vec::new(),
        listen_host: Some(topo.instances.host.clone()),
    }
}

fn hints(topo: &Topology) -> Vec<String> {
    let base = topo
        .instances()
        .into_iter()
        .find(|i| i.role == "lb")
        .or_else(|| topo.instances().into_iter().find(|i| i.role == "gateway"))
        .map(|i| i.url)
        .unwrap_or_default();
    let mut lines = vec!["Try:".to_string()];
    if topo.gateway.auth.anonymous_tokens {
        lines.push(format!(
            "  TOKEN=$(curl -s {base}/token | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"token\"])')"
        ));
    }
    lines.extend([
        format!(
            "  curl -s -X POST {base}/login -H 'content-type: application/json' -d '{{\"username\":\"admin\",\"password\":\"'$SCALELAB_ADMIN_PASSWORD'\"}}'"
        ),
        format!("  curl -si {base}/data -H \"Authorization: Bearer $TOKEN\"      # X-Cache: MISS, then HIT"),
        format!("  curl -s {base}/process -H \"Authorization: Bearer $TOKEN\"    # service_id changes"),
        format!("  curl -s {base}/_lb/stats"),
        format!("  scalelab bench {base}/data -c 32 -d 10s --token $TOKEN"),
    ]);
    if let Some(d) = topo.instances().into_iter().find(|i| i.role == "dashboard") {
        lines.push(format!(
            "  open {}/                      # the live dashboard",
            d.url
        ));
    }
    lines
}
