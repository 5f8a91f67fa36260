//! A headless Chromium (Debian's `chromium`) driven over the DevTools protocol: navigate, evaluate
//! JavaScript, take screenshots, and collect every console error and uncaught exception the page
//! produced. Five protocol methods are all the dashboard test needs, so this speaks them over a
//! WebSocket instead of pulling in a generated client of the whole protocol.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// A running headless browser with one page.
pub(crate) struct Browser {
    child: tokio::process::Child,
    _profile: tempfile::TempDir,
    send: mpsc::UnboundedSender<String>,
    pending: Pending,
    next: std::sync::atomic::AtomicU64,
    /// Console errors, uncaught exceptions and failed loads, as text.
    errors: Arc<Mutex<Vec<String>>>,
}

/// The browser to run: `chromium` (Debian) or another Chromium on PATH; `None` when there is none.
pub(crate) fn find() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            std::process::Command::new(b)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
}

impl Browser {
    /// Starts `program` headless with a fresh profile and a `width`×`height` window.
    pub(crate) async fn start(program: &str, width: u32, height: u32) -> anyhow::Result<Browser> {
        let profile = tempfile::tempdir()?;
        let mut child = tokio::process::Command::new(program)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--hide-scrollbars",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
            ])
            .arg(format!("--window-size={width},{height}"))
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        // Chromium prints its browser endpoint on stderr: "DevTools listening on ws://...".
        let stderr = child.stderr.take().expect("piped stderr");
        let mut lines = BufReader::new(stderr).lines();
        let browser_ws = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(at) = line.find("ws://") {
                    return Ok::<_, anyhow::Error>(line[at..].trim().to_string());
                }
            }
            anyhow::bail!("chromium ended without a DevTools endpoint")
        })
        .await??;
        // Keep draining stderr so that the browser never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let http_base = browser_ws
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let http = reqwest::Client::builder().no_proxy().build()?;
        let targets: Vec<Value> = http
            .get(format!("http://{http_base}/json/list"))
            .send()
            .await?
            .json()
            .await?;
        let page_ws = targets
            .iter()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .ok_or_else(|| anyhow::anyhow!("no page target in {targets:?}"))?
            .to_string();
        let (ws, _) = tokio_tungstenite::connect_async(page_ws.as_str()).await?;
        let (mut sink, mut stream) = ws.split();
        let (send, mut outgoing) = mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            while let Some(text) = outgoing.recv().await {
                if sink.send(Message::text(text)).await.is_err() {
                    break;
                }
            }
        });
        let pending: Pending = Arc::default();
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let (p, e) = (pending.clone(), errors.clone());
        tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Text(text) = msg else { continue };
                let Ok(v) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                if let Some(id) = v["id"].as_u64() {
                    if let Some(tx) = p.lock().unwrap().remove(&id) {
                        let _ = tx.send(v);
                    }
                    continue;
                }
                let error = match v["method"].as_str() {
                    Some("Runtime.consoleAPICalled") if v["params"]["type"] == "error" => {
                        Some(format!("console.error: {}", v["params"]["args"]))
                    }
                    Some("Runtime.exceptionThrown") => {
                        Some(format!("uncaught: {}", v["params"]["exceptionDetails"]))
                    }
                    Some("Log.entryAdded") if v["params"]["entry"]["level"] == "error" => {
                        Some(format!(
                            "log: {} {}",
                            v["params"]["entry"]["text"], v["params"]["entry"]["url"]
                        ))
                    }
                    _ => None,
                };
                if let Some(error) = error {
                    e.lock().unwrap().push(error);
                }
            }
        });
        let browser = Browser {
            child,
            _profile: profile,
            send,
            pending,
            next: std::sync::atomic::AtomicU64::new(1),
            errors,
        };
        browser.call("Runtime.enable", json!({})).await?;
        browser.call("Log.enable", json!({})).await?;
        browser.call("Page.enable", json!({})).await?;
        browser
            .call(
                "Emulation.setDeviceMetricsOverride",
                json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
            )
            .await?;
        Ok(browser)
    }

    /// Sends one protocol command and waits for its answer's `result`.
    pub(crate) async fn call(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        self.send
            .send(json!({"id": id, "method": method, "params": params}).to_string())
            .map_err(|_| anyhow::anyhow!("the browser connection is closed"))?;
        let answer = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .map_err(|_| anyhow::anyhow!("{method}: no answer in 30 s"))??;
        if let Some(err) = answer.get("error") {
            anyhow::bail!("{method}: {err}");
        }
        Ok(answer["result"].clone())
    }

    /// Makes every request whose URL matches one of `patterns` (`*` wildcards) fail, as a proxy or
    /// a filter that blocks them would.
    pub(crate) async fn block(&self, patterns: &[&str]) -> anyhow::Result<()> {
        self.call("Network.enable", json!({})).await?;
        self.call("Network.setBlockedURLs", json!({"urls": patterns}))
            .await?;
        Ok(())
    }

    /// Opens `url` in the page.
    pub(crate) async fn navigate(&self, url: &str) -> anyhow::Result<()> {
        self.call("Page.navigate", json!({"url": url})).await?;
        Ok(())
    }

    /// The value of a JavaScript expression (awaited if it is a promise).
    pub(crate) async fn eval(&self, expression: &str) -> anyhow::Result<Value> {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await?;
        if let Some(e) = r.get("exceptionDetails") {
            anyhow::bail!("{expression}: {e}");
        }
        Ok(r["result"]["value"].clone())
    }

    /// Evaluates `expression` until it is `true`; fails after `timeout` with `what`.
    pub(crate) async fn wait_for(
        &self,
        what: &str,
        expression: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.eval(expression).await.ok() == Some(Value::Bool(true)) {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "waited {timeout:?} for {what} ({expression})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves a PNG of the viewport to `path`.
    pub(crate) async fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        let r = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": false}),
            )
            .await?;
        let data = r["data"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no screenshot data"))?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(data)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, bytes)?;
        Ok(())
    }

    /// Every console error, uncaught exception and failed load so far.
    pub(crate) fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
