//! The `dashboard` role: one page that shows a running scalelab whole, live. It discovers the
//! instances (the supervisor's control API under `scalelab up`, or a fixed list of URLs per role,
//! optionally resolved in DNS, on an orchestrator), scrapes each one's health and `/metrics` every
//! second (`hub.rs`, `model.rs`, `prom.rs`), keeps a few minutes of history in memory, and serves
//! the page (`page/`, embedded in the binary: no CDN, no build step) with a server-sent-events
//! stream of frames and JSON routes for a page that cannot use SSE (`routes.rs`). An admin signed
//! in on the page can scale, drain, kill, flush the cache and start a short load: the dashboard
//! checks the credential and passes the call to the supervisor's control API (`controls.rs`).
//! The stream's JSON shape is documented in `docs/dashboard.md`.

mod controls;
mod discover;
mod hub;
mod model;
mod prom;
mod routes;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

/// The `[dashboard]` section of the topology file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The supervisor's control API (`scalelab up` sets it): the instances, their states and
    /// events come from it, and the page's controls go to it. Empty: `targets` is the list and
    /// the page has no controls.
    pub control_url: String,
    /// Role → base URLs to watch when there is no control API (the topology's `[instances]`
    /// fill it; on an orchestrator, the services' DNS names).
    pub targets: BTreeMap<String, Vec<String>>,
    /// Look each target's host up in DNS every round: every address is an instance (a headless
    /// Kubernetes service lists every pod this way).
    pub resolve: bool,
    /// How often every instance is read, in milliseconds.
    pub scrape_ms: u64,
    /// How much history the page gets when it opens, in seconds.
    pub history_secs: u64,
    /// The deployment's service credential, sent to auth when checking the admin credential
    /// (set from `SCALELAB_SERVICE_TOKEN`, never written in the file).
    #[serde(skip)]
    pub service_token: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            control_url: String::new(),
            targets: BTreeMap::new(),
            resolve: false,
            scrape_ms: 1000,
            history_secs: 300,
            service_token: None,
        }
    }
}

impl Config {
    /// Every setting the role cannot honour, as `field: problem` lines.
    pub fn validate(&self) -> Vec<String> {
        let mut p = common::validate::Problems::new();
        p.check(
            (100..=60_000).contains(&self.scrape_ms),
            "scrape_ms",
            "must be between 100 and 60000",
        );
        p.check(
            (10..=3600).contains(&self.history_secs),
            "history_secs",
            "must be between 10 and 3600",
        );
        p.into_vec()
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    hub: Arc<hub::Hub>,
    /// Where controls go; `None` without a supervisor.
    control_url: Option<String>,
    admin: api::admin::AdminCheck,
    http: reqwest::Client,
    instance: common::Instance,
    scrape_ms: u64,
    /// Turns true when shutdown begins: open streams end, so that draining does not wait on them.
    closing: tokio::sync::watch::Receiver<bool>,
}

/// The dashboard's errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting it cannot honour.
    #[error("invalid [dashboard] settings: {0}")]
    Config(String),
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The page, the stream and the controls inside the standard stack of `common`.
pub fn router(state: AppState) -> axum::Router {
    let instance = state.instance.clone();
    common::stack::wrap(
        routes::routes(state),
        &instance,
        common::stack::Limits::default(),
    )
}

/// Serves the dashboard on `listener` and runs its scrape loop until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    instance: common::Instance,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    if let Some(problems) = common::validate::joined(&config.validate()) {
        return Err(Error::Config(problems));
    }
    let every = Duration::from_millis(config.scrape_ms);
    let capacity = (config.history_secs * 1000 / config.scrape_ms) as usize;
    let hub = hub::Hub::new(capacity);
    let control_url = (!config.control_url.is_empty()).then(|| config.control_url.clone());
    let source = match &control_url {
        Some(url) => discover::Source::Control(url.clone()),
        None => discover::Source::Fixed {
            targets: config.targets.clone(),
            resolve: config.resolve,
        },
    };
    let (close_tx, closing) = tokio::sync::watch::channel(false);
    let state = AppState {
        hub: hub.clone(),
        control_url: control_url.clone(),
        admin: api::admin::AdminCheck::new(config.service_token.clone()),
        http: reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default(),
        instance,
        scrape_ms: config.scrape_ms,
        closing: closing.clone(),
    };
    let mut stop = closing;
    let scraper = tokio::spawn(hub::run(hub, source, control_url, every, async move {
        let _ = stop.wait_for(|closed| *closed).await;
    }));
    let shutdown = async move {
        shutdown.await;
        let _ = close_tx.send(true);
    };
    let result = common::serve(listener, router(state), shutdown).await;
    let _ = scraper.await;
    result.map_err(Error::Io)
}
