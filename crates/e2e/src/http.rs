//! HTTP from the tests' side: the client every test uses, and logging in as the admin.

use std::time::Duration;

use anyhow::{Context, anyhow};

use crate::running::Running;

/// An HTTP client for tests: no proxy from the environment, a timeout so that nothing hangs.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default()
}

impl Running {
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
}
