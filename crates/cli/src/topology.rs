//! The topology file: which instances run where, and each role's settings.
//!
//! `scalelab.toml` at the repository root is the default and is built into the binary, so that
//! `scalelab up` needs no file. Each role's section is that crate's own `Config`; the URLs by which
//! roles find each other are derived from `[instances]` here ([`Topology::resolve`]) unless a section
//! sets them, so that a topology names every port once.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The default topology, as shipped: `scalelab.toml` at the repository root.
pub(crate) const DEFAULT_TOML: &str = include_str!("../../../scalelab.toml");

/// The roles in start order: dependencies before the roles that call them.
pub(crate) const ROLES: [&str; 12] = [
    "auth",
    "db",
    "units",
    "finances",
    "legal",
    "worker",
    "cache",
    "service",
    "users",
    "gateway",
    "lb",
    "dashboard",
];

/// The presets: topologies built from scalelab's parts, laid over the base topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Preset {
    /// The Casitas rental-management system: units, finances and legal services, roles
    /// `finance` and `legal`, reports on two priorities, the balancer's edge rules on.
    Casitas,
}

impl Preset {
    /// The preset's settings, laid over the base topology (`presets/<name>.toml`).
    pub(crate) fn overlay(self) -> &'static str {
        match self {
            Preset::Casitas => include_str!("../../../presets/casitas.toml"),
        }
    }
}

/// The top-level keys of a topology file: `data_dir`, `instances`, the roles' sections and the
/// shared `[queue]`.
const SECTIONS: [&str; 16] = [
    "data_dir",
    "instances",
    "lb",
    "gateway",
    "auth",
    "cache",
    "db",
    "service",
    "queue",
    "worker",
    "users",
    "units",
    "finances",
    "legal",
    "dashboard",
    "autoscale",
];

/// `[autoscale.<role>]`: an autoscaler for a scalable role under `scalelab up`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct AutoscaleSection {
    /// `hpa` (Kubernetes' defaults: evaluate every 15 s, scale down after 300 s of lower
    /// recommendations) or `demo` (the same rules in seconds, to watch in class).
    #[serde(default)]
    pub(crate) profile: AutoscaleProfile,
    /// `in_flight` (requests being served, per instance: gateways, services, auth) or
    /// `queue_depth` (queued tasks per worker).
    pub(crate) metric: supervisor::autoscale::Metric,
    /// The metric's target per instance.
    pub(crate) target: f64,
    /// Fewest instances.
    pub(crate) min: u32,
    /// Most instances.
    pub(crate) max: u32,
    /// Ratios within this distance of 1.0 do not scale (default: the profile's, 0.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) tolerance: Option<f64>,
    /// How often the autoscaler evaluates, in ms (default: the profile's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) evaluate_every_ms: Option<u64>,
    /// Scale-up stabilization window, in ms (default: the profile's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) up_stabilization_ms: Option<u64>,
    /// Scale-down stabilization window, in ms (default: the profile's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) down_stabilization_ms: Option<u64>,
}

/// Which timing an autoscaler runs on.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AutoscaleProfile {
    /// Kubernetes HPA's defaults.
    #[default]
    Hpa,
    /// Seconds instead of minutes.
    Demo,
}

impl AutoscaleSection {
    /// The profile's policy, with the windows this section sets (its profile then reads `custom`).
    pub(crate) fn policy(&self) -> supervisor::autoscale::Policy {
        use supervisor::autoscale::Policy;
        let mut p = match self.profile {
            AutoscaleProfile::Hpa => {
                Policy::hpa_defaults(self.metric, self.target, self.min, self.max)
            }
            AutoscaleProfile::Demo => Policy::demo(self.metric, self.target, self.min, self.max),
        };
        if let Some(v) = self.tolerance {
            p.tolerance = v;
        }
        if let Some(v) = self.evaluate_every_ms {
            p.evaluate_every_ms = v;
        }
        if let Some(v) = self.up_stabilization_ms {
            p.up_stabilization_ms = v;
        }
        if let Some(v) = self.down_stabilization_ms {
            p.down_stabilization_ms = v;
        }
        p
    }
}

/// Every problem found in a topology, each as `path.in.the.file: what is wrong`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Invalid(pub(crate) Vec<String>);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(
            f,
            "{n} problem{} in the topology:",
            if n == 1 { "" } else { "s" }
        )?;
        for problem in &self.0 {
            write!(f, "\n  {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Invalid {}

/// The whole topology file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Topology {
    /// Where SQLite files and keys live (relative to the working directory); `--data-dir` overrides.
    pub(crate) data_dir: PathBuf,
    /// Which instances run, by role: their ports on `host`.
    pub(crate) instances: Instances,
    /// The load balancer.
    pub(crate) lb: lb::Config,
    /// The gateways.
    pub(crate) gateway: gateway::Config,
    /// The auth instances.
    pub(crate) auth: auth::Config,
    /// The cache service.
    pub(crate) cache: cache::Config,
    /// The data service.
    pub(crate) db: db::Config,
    /// The business services.
    pub(crate) service: service::Config,
    /// The task queue store, shared by the gateways (which submit) and the workers (which run).
    pub(crate) queue: queue::Config,
    /// The workers.
    pub(crate) worker: worker::Config,
    /// The users service (sharded profiles).
    pub(crate) users: users::Config,
    /// The Casitas preset's units service.
    pub(crate) units: rental::Config,
    /// The Casitas preset's finances service.
    pub(crate) finances: rental::Config,
    /// The Casitas preset's legal service.
    pub(crate) legal: rental::Config,
    /// The live dashboard.
    pub(crate) dashboard: dashboard::Config,
    /// Autoscalers by role (`[autoscale.gateway]`, ...); none by default.
    pub(crate) autoscale: BTreeMap<String, AutoscaleSection>,
}

impl Default for Topology {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            instances: Instances::default(),
            lb: lb::Config::default(),
            gateway: gateway::Config::default(),
            auth: auth::Config::default(),
            cache: cache::Config::default(),
            db: db::Config::default(),
            service: service::Config::default(),
            queue: queue::Config::default(),
            worker: worker::Config::default(),
            users: users::Config::default(),
            units: rental::Config::default(),
            finances: rental::Config::default(),
            legal: rental::Config::default(),
            dashboard: dashboard::Config::default(),
            autoscale: BTreeMap::new(),
        }
    }
}

/// `[instances]`: the host every instance binds, and each role's ports. Instance ids are
/// `<role>-<n>` in the order of the ports (`gateway-1` is the first gateway port).
// No `deny_unknown_fields` here: serde cannot combine it with `flatten`; `Topology::parse` refuses
// unknown roles instead.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub(crate) struct Instances {
    /// The address every instance binds and every URL names.
    pub(crate) host: String,
    /// Ports by role name.
    #[serde(flatten)]
    pub(crate) ports: BTreeMap<String, Vec<u16>>,
}

impl Default for Instances {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            ports: BTreeMap::new(),
        }
    }
}

/// One instance of the topology.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct InstanceRef {
    pub(crate) role: &'static str,
    pub(crate) id: String,
    pub(crate) port: u16,
    pub(crate) url: String,
}

impl Topology {
    /// The built-in default topology.
    pub(crate) fn builtin() -> anyhow::Result<Self> {
        Self::parse(DEFAULT_TOML).context("the built-in scalelab.toml does not parse")
    }

    /// Parses a topology document. On failure the error is an [`Invalid`] with every problem
    /// at once: each section that does not parse (the first error in it: serde stops there),
    /// then what [`Topology::problems`] finds in the sections that did.
    pub(crate) fn parse(text: &str) -> anyhow::Result<Self> {
        let (topology, mut problems, broken) = Self::parse_sections(text);
        if problems.is_empty() {
            return Ok(topology);
        }
        problems.extend(topology.problems().into_iter().filter(|p| {
            let section = p.split(['.', ':']).next().unwrap_or_default();
            !broken.iter().any(|b| b == section)
        }));
        Err(Invalid(problems).into())
    }

    /// Reads each top-level section on its own into its type, so that an error in one does not
    /// hide the errors in the others. Returns the topology (a section that failed keeps its
    /// default), the problems with their paths, and the names of the sections that failed.
    fn parse_sections(text: &str) -> (Self, Vec<String>, Vec<String>) {
        let mut t = Topology::default();
        let table: toml::Table = match toml::from_str(text) {
            Ok(table) => table,
            // Not even TOML: nothing can be read section by section.
            Err(e) => return (t, vec![e.to_string().trim_end().to_string()], vec![]),
        };
        let mut problems = Vec::new();
        let mut broken = Vec::new();
        for (key, value) in table {
            let read = match key.as_str() {
                "data_dir" => read_section(value, &mut t.data_dir),
                "instances" => read_section(value, &mut t.instances),
                "lb" => read_section(value, &mut t.lb),
                "gateway" => read_section(value, &mut t.gateway),
                "auth" => read_section(value, &mut t.auth),
                "cache" => read_section(value, &mut t.cache),
                "db" => read_section(value, &mut t.db),
                "service" => read_section(value, &mut t.service),
                "queue" => read_section(value, &mut t.queue),
                "worker" => read_section(value, &mut t.worker),
                "users" => read_section(value, &mut t.users),
                "units" => read_section(value, &mut t.units),
                "finances" => read_section(value, &mut t.finances),
                "legal" => read_section(value, &mut t.legal),
                "dashboard" => read_section(value, &mut t.dashboard),
                "autoscale" => read_section(value, &mut t.autoscale),
                _ => Err(format!(
                    ": unknown section; sections are {}",
                    SECTIONS.join(", ")
                )),
            };
            if let Err(e) = read {
                problems.push(format!("{key}{e}"));
                broken.push(key);
            }
        }
        for role in t.instances.ports.keys() {
            if !ROLES.contains(&role.as_str()) {
                problems.push(format!(
                    "instances.{role}: unknown role; roles are {}",
                    ROLES.join(", ")
                ));
            }
        }
        (t, problems, broken)
    }

    /// What each role would refuse at start, found now: the `validate` of every section whose
    /// role has instances (and of `[queue]` when gateways or workers run), on the topology with
    /// its derived URLs filled in, plus ports given to two instances. Each line starts with its
    /// path in the file. Empty when every instance can start.
    pub(crate) fn problems(&self) -> Vec<String> {
        let mut t = self.clone();
        // The URLs roles find each other by are derived from [instances]: check what will run.
        t.resolve(None);
        let mut problems = Vec::new();
        let mut owners: HashMap<u16, String> = HashMap::new();
        for i in t.instances() {
            if i.port == 0 {
                continue;
            }
            if let Some(other) = owners.insert(i.port, i.id.clone()) {
                problems.push(format!(
                    "instances.{}: port {} is also given to {other}",
                    i.role, i.port
                ));
            }
        }
        let runs = |role: &str| !t.ports(role).is_empty();
        let mut section = |name: &str, found: Vec<String>| {
            problems.extend(found.into_iter().map(|p| format!("{name}.{p}")));
        };
        if runs("lb") {
            section("lb", t.lb.validate());
        }
        if runs("gateway") {
            section("gateway", t.gateway.validate());
        }
        if runs("auth") {
            section("auth", t.auth.validate());
        }
        if runs("cache") {
            section("cache", t.cache.validate());
        }
        if runs("db") {
            section("db", t.db.validate());
        }
        if runs("service") {
            section("service", t.service.validate());
        }
        if runs("gateway") || runs("worker") {
            section("queue", t.queue.validate());
        }
        if runs("worker") {
            section("worker", t.worker.validate());
        }
        if runs("users") {
            section("users", t.users.validate());
        }
        let mut autoscale = Vec::new();
        for (role, a) in &t.autoscale {
            if !crate::up::SCALABLE.contains(&role.as_str()) {
                autoscale.push(format!(
                    "{role}: {role} cannot be scaled; the roles that can are {}",
                    crate::up::SCALABLE.join(", ")
                ));
            } else if !runs(role) {
                autoscale.push(format!("{role}: the topology runs no {role}"));
            }
            autoscale.extend(
                a.policy()
                    .validate()
                    .into_iter()
                    .map(|p| format!("{role}.{p}")),
            );
        }
        section("autoscale", autoscale);
        if runs("dashboard") {
            section("dashboard", t.dashboard.validate());
        }
        for (name, config) in [
            ("units", &t.units),
            ("finances", &t.finances),
            ("legal", &t.legal),
        ] {
            if runs(name) {
                section(name, config.validate());
            }
        }
        problems
    }

    /// [`Topology::problems`] as an error: what `scalelab up` and `scalelab config --check` run
    /// before anything starts.
    pub(crate) fn check(&self) -> Result<(), Invalid> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Invalid(problems))
        }
    }

    /// Reads `path`, or the built-in default when `None`.
    pub(crate) fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        Self::load_with(path, None)
    }

    /// Reads `path` (or the built-in default) with `preset` laid over it ([`with_preset`]).
    pub(crate) fn load_with(path: Option<&Path>, preset: Option<Preset>) -> anyhow::Result<Self> {
        let text = Self::text(path, preset)?;
        let whence = || match path {
            Some(p) => format!("in the topology file {}", p.display()),
            None => "in the built-in topology".into(),
        };
        Self::parse(&text).with_context(whence)
    }

    /// The topology document `load_with` reads: the file (or the default), with the preset over it.
    pub(crate) fn text(path: Option<&Path>, preset: Option<Preset>) -> anyhow::Result<String> {
        let base = match path {
            None => DEFAULT_TOML.to_string(),
            Some(p) => std::fs::read_to_string(p)
                .with_context(|| format!("cannot read the topology file {}", p.display()))?,
        };
        match preset {
            None => Ok(base),
            Some(preset) => with_preset(&base, preset.overlay()),
        }
    }

    /// URLs that carry a password come from the environment when set there (a container's
    /// Secret), so that the topology file (a ConfigMap) holds none: `SCALELAB_REDIS_URL` (the
    /// gateways' Redis) and `SCALELAB_AMQP_URL` (the queue's RabbitMQ). PostgreSQL reads
    /// `PGPASSWORD` itself for a URL without a password. Applied by `serve`, `up` and
    /// `config --check` (never by the commands that print a topology).
    pub(crate) fn secrets_from_env(&mut self) {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        if let Some(url) = var("SCALELAB_REDIS_URL") {
            self.gateway.redis_url = Some(url);
        }
        if let Some(url) = var("SCALELAB_AMQP_URL") {
            self.queue.amqp_url = Some(url);
        }
    }

    /// The ports of `role` (none if the role is absent).
    pub(crate) fn ports(&self, role: &str) -> &[u16] {
        self.instances
            .ports
            .get(role)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    fn urls(&self, role: &str) -> Vec<String> {
        self.ports(role)
            .iter()
            .map(|p| format!("http://{}:{p}", self.instances.host))
            .collect()
    }

    /// Every instance, roles in start order.
    pub(crate) fn instances(&self) -> Vec<InstanceRef> {
        ROLES
            .iter()
            .flat_map(|&role| {
                self.ports(role)
                    .iter()
                    .enumerate()
                    .map(move |(i, &port)| InstanceRef {
                        role,
                        id: format!("{role}-{}", i + 1),
                        port,
                        url: format!("http://{}:{port}", self.instances.host),
                    })
            })
            .collect()
    }

    /// Fills what roles need to find each other from `[instances]` (unless a section set it),
    /// and hands the data directory and environment-given secrets to the roles that use them.
    pub(crate) fn resolve(&mut self, admin_password: Option<String>) {
        if self.lb.backends.is_empty() {
            self.lb.backends = self.urls("gateway");
        }
        let (auth, service) = (self.urls("auth"), self.urls("service"));
        let cache = self.urls("cache").into_iter().next().unwrap_or_default();
        let db = self.urls("db").into_iter().next().unwrap_or_default();
        let users = self.urls("users").into_iter().next().unwrap_or_default();
        let first = |role: &str| self.urls(role).into_iter().next().unwrap_or_default();
        let (units, finances, legal) = (first("units"), first("finances"), first("legal"));
        if self.worker.finances_url.is_empty() {
            self.worker.finances_url = finances.clone();
        }
        if self.worker.legal_url.is_empty() {
            self.worker.legal_url = legal.clone();
        }
        let g = &mut self.gateway;
        if g.units_url.is_empty() {
            g.units_url = units;
        }
        if g.finances_url.is_empty() {
            g.finances_url = finances;
        }
        if g.legal_url.is_empty() {
            g.legal_url = legal;
        }
        // Which roles accounts may hold is auth's list; the gateways and users check against it.
        g.roles = self.auth.roles.clone();
        self.users.roles = self.auth.roles.clone();
        if g.auth_urls.is_empty() {
            g.auth_urls = auth;
        }
        if g.service_urls.is_empty() {
            g.service_urls = service;
        }
        if g.cache_url.is_empty() {
            g.cache_url = cache;
        }
        if g.db_url.is_empty() {
            g.db_url = db;
        }
        if g.users_url.is_empty() {
            g.users_url = users;
        }
        self.auth.data_dir = self.data_dir.clone();
        self.db.data_dir = self.data_dir.clone();
        // Gateways and workers must name the same task store: both take it from [queue].
        self.queue.data_dir = self.data_dir.clone();
        self.gateway.queue = Some(self.queue.clone());
        self.worker.queue = self.queue.clone();
        if self.worker.db_url.is_empty() {
            self.worker.db_url = self.urls("db").into_iter().next().unwrap_or_default();
        }
        self.users.data_dir = self.data_dir.clone();
        for domain in [&mut self.units, &mut self.finances, &mut self.legal] {
            domain.data_dir = self.data_dir.clone();
        }
        if admin_password.is_some() {
            self.auth.admin_password = admin_password;
        }
        // Without a supervisor to ask, the dashboard watches every instance of the file.
        if self.dashboard.control_url.is_empty() && self.dashboard.targets.is_empty() {
            for role in ROLES.iter().filter(|r| **r != "dashboard") {
                let urls = self.urls(role);
                if !urls.is_empty() {
                    self.dashboard.targets.insert(role.to_string(), urls);
                }
            }
        }
    }

    /// Gives every instance a free ephemeral port instead of its configured one (for tests and for
    /// running a second copy beside the first).
    pub(crate) fn use_free_ports(&mut self) -> anyhow::Result<()> {
        // Hold every listener until all ports are chosen, so that no two instances get the same one.
        let mut held = Vec::new();
        for ports in self.instances.ports.values_mut() {
            for p in ports.iter_mut() {
                let l = supervisor::ports::bind_free(&self.instances.host)
                    .context("cannot find a free port")?;
                *p = l.local_addr()?.port();
                held.push(l);
            }
        }
        Ok(())
    }

    /// The effective topology as TOML (what the children of `up` read).
    pub(crate) fn to_toml(&self) -> anyhow::Result<String> {
        Ok(toml::to_string_pretty(self)?)
    }
}

/// `base` with `overlay` laid over it: tables merge key by key and the overlay's values win, except
/// in `[instances]`, where a role the base already places keeps its ports (the preset adds its
/// roles; it does not move yours).
pub(crate) fn with_preset(base: &str, overlay: &str) -> anyhow::Result<String> {
    let mut base: toml::Table = toml::from_str(base).context("the base topology is not TOML")?;
    let overlay: toml::Table = toml::from_str(overlay).context("the preset is not TOML")?;
    for (key, value) in overlay {
        if key == "instances" {
            let toml::Value::Table(roles) = value else {
                anyhow::bail!("the preset's [instances] is not a table");
            };
            let into = base
                .entry("instances")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(into) = into {
                for (role, ports) in roles {
                    into.entry(role).or_insert(ports);
                }
            }
            continue;
        }
        merge(
            base.entry(key).or_insert(toml::Value::Boolean(false)),
            value,
        );
    }
    Ok(toml::to_string_pretty(&base)?)
}

/// Lays `over` onto `into`: tables key by key, anything else replaced.
fn merge(into: &mut toml::Value, over: toml::Value) {
    match (into, over) {
        (toml::Value::Table(into), toml::Value::Table(over)) => {
            for (k, v) in over {
                match into.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        into.insert(k, v);
                    }
                }
            }
        }
        (slot, over) => *slot = over,
    }
}

/// Reads one section into `into`; on failure, the path inside the section and the message
/// (`.pool.strategy: unknown variant ...`, or `: ...` for the section itself).
fn read_section<T: DeserializeOwned>(value: toml::Value, into: &mut T) -> Result<(), String> {
    match serde_path_to_error::deserialize(value) {
        Ok(v) => {
            *into = v;
            Ok(())
        }
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            let message = inner.trim_end();
            if path == "." {
                Err(format!(": {message}"))
            } else if path.starts_with('[') {
                Err(format!("{path}: {message}"))
            } else {
                Err(format!(".{path}: {message}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_topology_is_the_lab_layout() {
        let t = Topology::builtin().unwrap();
        let ids: Vec<(String, u16)> = t.instances().into_iter().map(|i| (i.id, i.port)).collect();
        let want: Vec<(String, u16)> = [
            ("auth-1", 5011),
            ("auth-2", 5012),
            ("db-1", 5002),
            ("worker-1", 5005),
            ("worker-2", 5008),
            ("cache-1", 5004),
            ("service-1", 5001),
            ("service-2", 5006),
            ("service-3", 5007),
            ("users-1", 5020),
            ("gateway-1", 5000),
            ("gateway-2", 5003),
            ("lb-1", 8000),
            ("dashboard-1", 8050),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), *b))
        .collect();
        assert_eq!(ids, want);
    }

    #[test]
    fn resolve_wires_roles_together_from_the_ports() {
        let mut t = Topology::builtin().unwrap();
        t.resolve(Some("s3cret-password".into()));
        assert_eq!(
            t.lb.backends,
            vec!["http://127.0.0.1:5000", "http://127.0.0.1:5003"]
        );
        assert_eq!(t.gateway.service_urls.len(), 3);
        assert_eq!(t.gateway.auth_urls.len(), 2);
        assert_eq!(t.gateway.cache_url, "http://127.0.0.1:5004");
        assert_eq!(t.gateway.db_url, "http://127.0.0.1:5002");
        assert_eq!(t.worker.db_url, "http://127.0.0.1:5002");
        assert_eq!(t.gateway.queue.as_ref(), Some(&t.worker.queue));
        assert_eq!(t.worker.queue.data_dir, t.data_dir);
        assert_eq!(t.gateway.users_url, "http://127.0.0.1:5020");
        assert_eq!(t.auth.admin_password.as_deref(), Some("s3cret-password"));
        // Without a supervisor, the dashboard watches every instance of the file but itself.
        assert_eq!(t.dashboard.targets["service"].len(), 3);
        assert_eq!(t.dashboard.targets["lb"], ["http://127.0.0.1:8000"]);
        assert!(!t.dashboard.targets.contains_key("dashboard"));
    }

    #[test]
    fn the_effective_topology_round_trips() {
        let mut t = Topology::builtin().unwrap();
        t.use_free_ports().unwrap();
        t.resolve(None);
        let again = Topology::parse(&t.to_toml().unwrap()).unwrap();
        assert_eq!(again.instances, t.instances);
        assert_eq!(again.lb.backends, t.lb.backends);
        let ports: std::collections::HashSet<u16> = t.instances().iter().map(|i| i.port).collect();
        assert_eq!(
            ports.len(),
            t.instances().len(),
            "free ports must be distinct"
        );
    }

    #[test]
    fn the_casitas_preset_adds_its_roles_and_settings_over_any_base() {
        let mut t = Topology::load_with(None, Some(Preset::Casitas)).unwrap();
        assert_eq!(t.problems(), Vec::<String>::new());
        assert_eq!(t.ports("units"), [5031]);
        assert_eq!(
            t.ports("gateway"),
            [5000, 5003],
            "the base's instances stay"
        );
        assert_eq!(t.auth.roles, ["user", "admin", "finance", "legal"]);
        assert!(t.lb.rate_limit.is_some() && !t.lb.deny.is_empty());
        t.resolve(None);
        assert_eq!(t.gateway.units_url, "http://127.0.0.1:5031");
        assert_eq!(t.gateway.legal_url, "http://127.0.0.1:5033");
        assert_eq!(t.worker.finances_url, "http://127.0.0.1:5032");
        assert_eq!(t.gateway.roles, t.auth.roles);
        assert_eq!(t.users.roles, t.auth.roles);
        // The routes of the preset exist only with it.
        let paths = |t: &Topology| {
            gateway::route_table(&t.gateway)
                .into_iter()
                .map(|r| r.path)
                .collect::<Vec<_>>()
        };
        assert!(paths(&t).iter().any(|p| p == "/finances/generate_report"));
        let mut plain = Topology::builtin().unwrap();
        plain.resolve(None);
        assert!(!paths(&plain).iter().any(|p| p.starts_with("/units")));

        // Over the distributed file: its PostgreSQL databases stay, the preset's ports are added.
        let distributed = include_str!("../../../scalelab.distributed.toml");
        let t =
            Topology::parse(&with_preset(distributed, Preset::Casitas.overlay()).unwrap()).unwrap();
        assert_eq!(t.problems(), Vec::<String>::new());
        assert!(t.gateway.cache == gateway::CacheBackend::Redis);
        assert_eq!(
            t.finances.database_url.as_deref(),
            Some("postgres://root@127.0.0.1:5432/scalelab_finances")
        );

        // A base that places a preset role keeps its ports; other overlay values win.
        let base = "[instances]\nunits = [6001]\n[gateway]\ncache_ttl_secs = 5\n";
        let t = Topology::parse(&with_preset(base, Preset::Casitas.overlay()).unwrap()).unwrap();
        assert_eq!(t.ports("units"), [6001]);
        assert_eq!(t.ports("legal"), [5033]);
        assert_eq!(t.gateway.cache_ttl_secs, 60);
    }

    #[test]
    fn autoscale_sections_take_a_profile_and_its_windows_and_are_checked() {
        let t = Topology::parse(
            "[instances]\ngateway = [1]\nworker = [2]\n\
             [autoscale.gateway]\nprofile = \"demo\"\nmetric = \"in_flight\"\ntarget = 2\nmin = 1\nmax = 4\n\
             [autoscale.worker]\nmetric = \"queue_depth\"\ntarget = 5\nmin = 1\nmax = 3\ndown_stabilization_ms = 60000\n",
        )
        .unwrap();
        let g = t.autoscale["gateway"].policy();
        assert_eq!(
            (g.profile_name(), g.down_stabilization_ms),
            ("demo", 10_000)
        );
        let w = t.autoscale["worker"].policy();
        assert_eq!(
            (w.profile_name(), w.down_stabilization_ms),
            ("custom", 60_000)
        );
        assert_eq!(w.evaluate_every_ms, 15_000, "the rest is HPA's");

        let bad = Topology::parse(
            "[instances]\ngateway = [1]\n\
             [autoscale.lb]\nmetric = \"in_flight\"\ntarget = 2\nmin = 1\nmax = 2\n\
             [autoscale.service]\nmetric = \"in_flight\"\ntarget = 2\nmin = 1\nmax = 2\n\
             [autoscale.gateway]\nmetric = \"in_flight\"\ntarget = 0\nmin = 3\nmax = 2\n",
        )
        .unwrap();
        let problems = bad.problems();
        for want in [
            "autoscale.gateway.max:",
            "autoscale.gateway.target:",
            "autoscale.lb: lb cannot be scaled",
            "autoscale.service: the topology runs no service",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(want)),
                "{want} in {problems:#?}"
            );
        }
    }

    #[test]
    fn unknown_roles_and_fields_are_refused() {
        assert!(Topology::parse("[instances]\nwebserver = [1]\n").is_err());
        assert!(Topology::parse("[lb]\nstrategy = \"x\"\n").is_err());
        let err = Topology::parse("[lb]\nbackendz = []\n").unwrap_err();
        assert!(format!("{err:#}").contains("backendz"), "{err:#}");
    }

    #[test]
    fn the_shipped_topology_has_no_problems() {
        assert_eq!(
            Topology::builtin().unwrap().problems(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn bad_values_in_two_sections_are_both_reported_with_their_paths() {
        let t = Topology::parse(
            r#"
[instances]
lb = [18000]
gateway = [15000]
cache = [15004]
db = [15002]
auth = [15011]

[lb.rate_limit]
requests_per_second = 0

[cache]
max_entries = 0
"#,
        )
        .expect("the file parses: its problems are values");
        assert_eq!(
            t.check(),
            Err(Invalid(vec![
                "lb.rate_limit.requests_per_second: must be at least 1".into(),
                "cache.max_entries: must be at least 1".into(),
            ]))
        );
    }

    #[test]
    fn sections_that_do_not_parse_are_reported_beside_the_bad_values_of_the_others() {
        let err = Topology::parse(
            r#"
[instances]
cache = [15004]
service = [15001]
webserver = [1]

[lb.pool]
strategy = "fastest"

[gateway]
cache_ttl = 5

[cache]
max_entries = 0

[caches]
"#,
        )
        .unwrap_err();
        let Some(Invalid(problems)) = err.downcast_ref::<Invalid>() else {
            panic!("not an Invalid: {err:#}");
        };
        let want = [
            "caches: unknown section",
            "gateway.cache_ttl: unknown field `cache_ttl`",
            "lb.pool.strategy: unknown variant `fastest`",
            "instances.webserver: unknown role",
            "cache.max_entries: must be at least 1",
        ];
        assert_eq!(problems.len(), want.len(), "{problems:#?}");
        for (got, want) in problems.iter().zip(want) {
            assert!(
                got.starts_with(want),
                "{got:?} does not start with {want:?}"
            );
        }
        let shown = err.to_string();
        assert!(
            shown.starts_with("5 problems in the topology:\n  caches: "),
            "{shown}"
        );
    }

    #[test]
    fn a_port_given_twice_is_reported() {
        let t = Topology::parse("[instances]\ncache = [5004]\ndb = [5004]\n").unwrap();
        assert_eq!(
            t.problems(),
            vec!["instances.cache: port 5004 is also given to db-1"]
        );
    }

    #[test]
    fn not_toml_at_all_is_one_problem() {
        let err = Topology::parse("[lb\n").unwrap_err();
        let Some(Invalid(problems)) = err.downcast_ref::<Invalid>() else {
            panic!("not an Invalid: {err:#}");
        };
        assert_eq!(problems.len(), 1, "{problems:?}");
    }

    /// Every setting the code knows appears in the shipped file, where it is documented.
    #[test]
    fn every_field_is_in_the_shipped_file() {
        let default = toml::Value::try_from(Topology::default()).unwrap();
        let shipped: toml::Value = toml::from_str(DEFAULT_TOML).unwrap();
        let mut missing = Vec::new();
        walk(&default, &shipped, DEFAULT_TOML, "", &mut missing);
        assert!(missing.is_empty(), "not in scalelab.toml: {missing:?}");
    }

    fn walk(
        code: &toml::Value,
        file: &toml::Value,
        text: &str,
        path: &str,
        missing: &mut Vec<String>,
    ) {
        let toml::Value::Table(t) = code else { return };
        for (k, v) in t {
            let p = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            if p == "data_dir" || p.starts_with("instances") {
                continue;
            }
            // A key counts as documented when it is set or shown commented out in the file.
            let present = file.get(k).is_some()
                || text.lines().any(|l| {
                    let l = l.trim_start_matches(['#', ' ']);
                    l.starts_with(&format!("{k} =")) || l.starts_with(&format!("[{p}]"))
                });
            if !present {
                missing.push(p.clone());
            }
            let sub = file
                .get(k)
                .cloned()
                .unwrap_or(toml::Value::Table(Default::default()));
            walk(v, &sub, text, &p, missing);
        }
    }
}
