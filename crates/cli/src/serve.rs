//! `scalelab serve ROLE`: one instance of one role.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use tokio::net::TcpListener;

use crate::topology::Topology;

/// The roles an instance can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Role {
    /// The load balancer (L7 reverse proxy over the gateways).
    Lb,
    /// The public API: tokens, rate limits, cache-aside, routing.
    Gateway,
    /// Credentials, login, token signing, public keys.
    Auth,
    /// The cache service shared by the gateways.
    Cache,
    /// The data service (records in SQLite or PostgreSQL, with a latency knob).
    Db,
    /// The business microservice (`GET /process`).
    Service,
    /// Runs queued tasks (`/health` and `/metrics` on its port).
    Worker,
    /// User profiles, sharded over N databases.
    Users,
    /// The Casitas preset's rental units.
    Units,
    /// The Casitas preset's finances (transactions).
    Finances,
    /// The Casitas preset's legal documents.
    Legal,
    /// The live dashboard: every instance's health and metrics on one page.
    Dashboard,
}

impl Role {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Role::Lb => "lb",
            Role::Gateway => "gateway",
            Role::Auth => "auth",
            Role::Cache => "cache",
            Role::Db => "db",
            Role::Service => "service",
            Role::Worker => "worker",
            Role::Users => "users",
            Role::Units => "units",
            Role::Finances => "finances",
            Role::Legal => "legal",
            Role::Dashboard => "dashboard",
        }
    }
}

/// Arguments of `scalelab serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The role to run.
    #[arg(value_enum)]
    role: Role,
    /// Instance id, unique in the topology (shown in `X-Served-By` and logs). Default: `<role>-1`.
    #[arg(long)]
    id: Option<String>,
    /// Port to listen on (0 picks a free one). Default: the role's first port in the topology.
    #[arg(long)]
    port: Option<u16>,
    /// Address to bind. Default: `[instances] host` of the topology.
    #[arg(long)]
    host: Option<String>,
    /// Topology file (default: the built-in scalelab.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory (SQLite files, keys). Default: `data_dir` of the topology.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

/// The deployment's credential for internal roles (`X-Service-Token`).
pub(crate) const SERVICE_TOKEN_ENV: &str = "SCALELAB_SERVICE_TOKEN";

/// `handed`: the listening socket a supervisor bound for this instance (`scalelab up`, or systemd's
/// socket activation: descriptor 3 with `LISTEN_FDS=1`); served instead of binding `--host`/`--port`.
pub(crate) async fn run(
    args: ServeArgs,
    handed: Option<std::net::TcpListener>,
) -> anyhow::Result<()> {
    let mut topo = Topology::load(args.config.as_deref())?;
    if let Some(d) = args.data_dir {
        topo.data_dir = d;
    }
    topo.secrets_from_env();
    topo.resolve(
        std::env::var("SCALELAB_ADMIN_PASSWORD")
            .ok()
            .filter(|p| !p.is_empty()),
    );
    let role = args.role.name();
    let id = args.id.unwrap_or_else(|| format!("{role}-1"));
    let port = match args.port {
        Some(p) => p,
        None => *topo
            .ports(role)
            .first()
            .with_context(|| format!("give --port: the topology has no {role} instance"))?,
    };
    let asked_host = args.host.clone();
    let host = args.host.unwrap_or_else(|| topo.instances.host.clone());
    let listener = match handed {
        Some(l) => {
            l.set_nonblocking(true)?;
            let l = TcpListener::from_std(l).context("the handed-over listening socket")?;
            // The socket wins; an address also given on the command line that differs is said.
            let at = l.local_addr()?;
            let port_differs = args.port.is_some_and(|p| p != at.port());
            let host_differs = asked_host
                .as_deref()
                .and_then(|h| h.parse::<std::net::IpAddr>().ok())
                .is_some_and(|ip| ip != at.ip());
            if port_differs || host_differs {
                tracing::warn!(
                    handed = %at,
                    asked = %format!("{host}:{port}"),
                    "serving the handed-over socket (LISTEN_FDS), not --host/--port"
                );
            }
            l
        }
        None => TcpListener::bind((host.as_str(), port))
            .await
            .with_context(|| format!("cannot listen on {host}:{port} for {role} {id}"))?,
    };
    let addr = listener.local_addr()?;
    tracing::info!(%addr, role, id, "starting");
    let token = std::env::var(SERVICE_TOKEN_ENV)
        .ok()
        .filter(|t| !t.is_empty());
    let internal = !matches!(args.role, Role::Lb | Role::Gateway | Role::Dashboard);
    // An internal role reachable from other machines takes changes only from the deployment's
    // roles; on loopback (`scalelab up`) everything on the machine is trusted already.
    if internal && !addr.ip().is_loopback() && token.is_none() {
        anyhow::bail!(
            "{role} {id} listens on {addr}, beyond loopback: set {SERVICE_TOKEN_ENV} (the same \
             value for every role of the deployment), so that only its roles may change its data"
        );
    }
    let mut instance = common::Instance::new(role, id);
    if let (true, Some(t)) = (internal, token.as_deref()) {
        instance = instance.requiring_service_token(t);
    }
    topo.gateway.service_token = token.clone();
    topo.dashboard.service_token = token;
    let shutdown = crate::shutdown_signal();
    match args.role {
        Role::Lb => lb::serve(listener, topo.lb, instance, shutdown).await?,
        Role::Gateway => gateway::serve(listener, topo.gateway, instance, shutdown).await?,
        Role::Auth => auth::serve(listener, topo.auth, instance, shutdown).await?,
        Role::Cache => cache::serve(listener, topo.cache, instance, shutdown).await?,
        Role::Db => db::serve(listener, topo.db, instance, shutdown).await?,
        Role::Service => service::serve(listener, topo.service, instance, shutdown).await?,
        Role::Worker => worker::serve(listener, topo.worker, instance, shutdown).await?,
        Role::Users => users::serve(listener, topo.users, instance, shutdown).await?,
        Role::Units => {
            rental::serve(
                listener,
                rental::Domain::Units,
                topo.units,
                instance,
                shutdown,
            )
            .await?
        }
        Role::Finances => {
            let config = topo.finances;
            rental::serve(
                listener,
                rental::Domain::Finances,
                config,
                instance,
                shutdown,
            )
            .await?
        }
        Role::Dashboard => dashboard::serve(listener, topo.dashboard, instance, shutdown).await?,
        Role::Legal => {
            rental::serve(
                listener,
                rental::Domain::Legal,
                topo.legal,
                instance,
                shutdown,
            )
            .await?
        }
    }
    tracing::info!("stopped");
    Ok(())
}
