//! Waiting on a started system: health checks and every `wait_*`, each polling a condition
//! against a deadline (never a fixed sleep) and failing early when `up` has exited.

use std::time::Duration;

use anyhow::bail;
use tokio::time::Instant;

use crate::running::Running;

/// The balancer's own liveness check (its `/health` is proxied to a gateway).
const LB_HEALTH_PATH: &str = "/_lb/health";
/// How long the `wait_*` helpers wait by default.
const WAIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Interval between two polls of a condition.
pub(crate) const POLL: Duration = Duration::from_millis(25);

impl Running {
    /// Waits until `up`'s output contains `needle`.
    pub async fn wait_log(&self, needle: &str) -> anyhow::Result<()> {
        self.until(
            &format!("the log line {needle:?}"),
            WAIT_TIMEOUT,
            || async { Ok(self.logs().contains(needle).then_some(())) },
        )
        .await
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

    /// Waits until every instance is in `instances.json` with a pid and answers `GET /health`.
    pub(crate) async fn until_started(&self, timeout: Duration) -> anyhow::Result<()> {
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

    /// The URL of instance `id`'s own liveness check.
    pub fn health_url(&self, id: &str) -> String {
        let path = if self.instance(id).role == "lb" {
            LB_HEALTH_PATH
        } else {
            "/health"
        };
        format!("{}{path}", self.url_of(id))
    }
}
