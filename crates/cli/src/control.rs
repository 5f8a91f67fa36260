//! `scalelab status`, `scale`, `drain` and `kill`: clients of a running `up`'s control API, found
//! through `<data_dir>/control.json` (or `--control URL`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::Args;
use serde_json::Value;

/// Where the running `up` is.
#[derive(Debug, Args)]
pub(crate) struct Target {
    /// The control API's URL (default: from `<data_dir>/control.json`, written by `scalelab up`).
    #[arg(long, value_name = "URL")]
    control: Option<String>,
    /// The data directory of the `up` to talk to (default: the topology's, `./data`).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

impl Target {
    fn url(&self) -> anyhow::Result<String> {
        if let Some(url) = &self.control {
            return Ok(url.trim_end_matches('/').to_string());
        }
        let dir = match &self.data_dir {
            Some(d) => d.clone(),
            None => crate::topology::Topology::builtin()?.data_dir,
        };
        let path = dir.join("control.json");
        let text = std::fs::read_to_string(&path).map_err(|_| {
            anyhow!(
                "no scalelab up is running for the data directory {} (no {}); start one with `scalelab up`, or give --control URL",
                dir.display(),
                path.display()
            )
        })?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        v["url"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("{} has no url", path.display()))
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let base = self.url()?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()?;
        let mut req = http.request(method, format!("{base}{path}"));
        // A control API off loopback wants the admin credential for changes; send it when known.
        if let Ok(password) = std::env::var("SCALELAB_ADMIN_PASSWORD")
            && !password.is_empty()
        {
            let user = std::env::var("SCALELAB_ADMIN_USER").unwrap_or_else(|_| "admin".into());
            req = req.basic_auth(user, Some(password));
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| {
            anyhow!(
                "no scalelab up answers at {base} (it may have stopped; a stale control.json?): {e}"
            )
        })?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!(
                "{}",
                body["message"]
                    .as_str()
                    .unwrap_or("the control API refused the request")
            );
        }
        Ok(body)
    }
}

/// Requests in flight and requests answered so far (probes and scrapes left out) from one
/// instance's `/metrics`; `None` when it does not answer.
async fn load_of(http: &reqwest::Client, url: &str) -> Option<(f64, f64)> {
    use supervisor::scaler::{metrics_page, sum_metric, sum_metric_where};
    let page = metrics_page(http, url).await?;
    let in_flight = sum_metric(&page, "scalelab_http_in_flight").unwrap_or(0.0);
    let requests = sum_metric_where(&page, "scalelab_http_requests_total", |line| {
        !["/health", "/metrics", "/ready"]
            .iter()
            .any(|p| line.contains(&format!("route=\"{p}\"")))
    })
    .unwrap_or(0.0);
    Some((in_flight, requests))
}

/// Adds `in_flight` and `rps` (answered requests per second over one second, probes left out) to
/// every instance that answers `/metrics`.
async fn add_load(instances: &mut [Value]) {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(800))
        .build()
        .unwrap_or_default();
    // The balancer proxies `/metrics` to a gateway; its own figures are in `/_lb/stats`.
    let urls: Vec<Option<String>> = instances
        .iter()
        .map(|i| (i["role"] != "lb").then(|| i["url"].as_str().unwrap_or("").to_string()))
        .collect();
    let scrape = || {
        futures::future::join_all(urls.iter().map(|u| async {
            match u {
                Some(u) => load_of(&http, u).await,
                None => None,
            }
        }))
    };
    let first = scrape().await;
    let started = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = scrape().await;
    let secs = started.elapsed().as_secs_f64();
    for ((i, a), b) in instances.iter_mut().zip(first).zip(second) {
        if let (Some((_, before)), Some((in_flight, after))) = (a, b) {
            i["in_flight"] = serde_json::json!(in_flight);
            i["rps"] = serde_json::json!(((after - before) / secs).max(0.0));
        }
    }
}

/// `scalelab status [--json]`: the control API's instances, with each one's load measured over a
/// second from its `/metrics`.
pub(crate) async fn status(target: Target, json: bool, no_load: bool) -> anyhow::Result<()> {
    let mut body = target
        .call(reqwest::Method::GET, "/instances", None)
        .await?;
    if !no_load && let Some(instances) = body["instances"].as_array_mut() {
        add_load(instances).await;
    }
    // The autoscalers' latest decisions, with their arithmetic.
    let autoscale = target
        .call(reqwest::Method::GET, "/autoscale", None)
        .await
        .unwrap_or(Value::Null);
    body["autoscale"] = autoscale["decisions"].clone();
    if json {
        return crate::stdout(&(serde_json::to_string_pretty(&body)? + "\n"));
    }
    let rows: Vec<[String; 8]> = body["instances"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|i| {
            [
                i["role"].as_str().unwrap_or("").to_string(),
                i["id"].as_str().unwrap_or("").to_string(),
                i["url"].as_str().unwrap_or("").to_string(),
                i["pid"]
                    .as_u64()
                    .map_or_else(|| "-".into(), |p| p.to_string()),
                i["state"].as_str().unwrap_or("").to_string(),
                i["rps"]
                    .as_f64()
                    .map_or_else(|| "-".into(), |r| format!("{r:.0}")),
                i["in_flight"]
                    .as_f64()
                    .map_or_else(|| "-".into(), |r| format!("{r:.0}")),
                format!("{:.0}s", i["uptime_secs"].as_f64().unwrap_or(0.0)),
            ]
        })
        .collect();
    let mut text = String::new();
    for line in supervisor::table(
        [
            "ROLE",
            "ID",
            "URL",
            "PID",
            "STATE",
            "REQ/S",
            "IN FLIGHT",
            "UP",
        ],
        &rows,
    ) {
        text.push_str(&line);
        text.push('\n');
    }
    for d in body["autoscale"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        text.push_str(&format!(
            "autoscale: {}\n",
            d["explanation"].as_str().unwrap_or_default()
        ));
    }
    crate::stdout(&text)
}

/// `scalelab scale ROLE=N ...`.
pub(crate) async fn scale(target: Target, counts: Vec<String>) -> anyhow::Result<()> {
    let mut wanted = BTreeMap::new();
    for c in &counts {
        let (role, n) = c
            .split_once('=')
            .ok_or_else(|| anyhow!("{c:?}: write ROLE=COUNT, like gateway=4"))?;
        let n: usize = n
            .parse()
            .map_err(|_| anyhow!("{c:?}: the count must be a whole number"))?;
        wanted.insert(role.to_string(), n);
    }
    let body = target
        .call(
            reqwest::Method::POST,
            "/scale",
            Some(serde_json::to_value(&wanted)?),
        )
        .await?;
    for change in body["changes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        println!("{}", change.as_str().unwrap_or_default());
    }
    Ok(())
}

/// `scalelab drain ID` / `scalelab kill ID`.
pub(crate) async fn instance(target: Target, id: String, action: &str) -> anyhow::Result<()> {
    let path = format!("/instances/{id}/{action}");
    let body = target.call(reqwest::Method::POST, &path, None).await?;
    match action {
        "kill" => println!(
            "{id} (pid {}) killed; the supervisor restarts it",
            body["pid"]
        ),
        _ => println!("{id} draining: it gets no new requests and stops once drained"),
    }
    Ok(())
}
