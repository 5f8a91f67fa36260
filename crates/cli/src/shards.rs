//! `scalelab shards plan --to N`: what changing the users service's shard count would move;
//! `scalelab shards rebalance --to N`: move them, online, through the running users service.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::topology::Topology;

/// Arguments of `scalelab shards`.
#[derive(Debug, Args)]
pub(crate) struct ShardsArgs {
    #[command(subcommand)]
    command: ShardsCommand,
}

#[derive(Debug, Subcommand)]
enum ShardsCommand {
    /// Count the users that would move from which shard to which if the layout had N shards,
    /// with jump consistent hash (what scalelab uses) beside `hash % N`. Read-only.
    Plan {
        /// The new shard count.
        #[arg(long, value_name = "N")]
        to: u32,
        /// Topology file (default: the built-in scalelab.toml).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Data directory (where the embedded shards' SQLite files are).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Move users to N shards while the service keeps answering: the running users service
    /// copies, verifies, switches and deletes (see crates/users/src/rebalance.rs). Resumable: if
    /// this command or the service is killed, run it again (the service also resumes by itself).
    Rebalance {
        /// The new shard count.
        #[arg(long, value_name = "N")]
        to: u32,
        /// Topology file (default: the built-in scalelab.toml); names the users instance.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The users service to drive (default: the topology's first users instance).
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
    },
}

pub(crate) async fn run(args: ShardsArgs) -> anyhow::Result<()> {
    match args.command {
        ShardsCommand::Plan {
            to,
            config,
            data_dir,
        } => {
            let mut topo = Topology::load(config.as_deref())?;
            if let Some(d) = data_dir {
                topo.data_dir = d;
            }
            topo.resolve(None);
            let plan = users::plan_move(&topo.users, to).await?;
            print!("{}", plan.render());
            Ok(())
        }
        ShardsCommand::Rebalance {
            to,
            config,
            url,
            timeout_secs,
        } => {
            let topo = Topology::load(config.as_deref())?;
            let url = match url {
                Some(u) => u,
                None => topo
                    .instances()
                    .into_iter()
                    .find(|i| i.role == "users")
                    .map(|i| i.url)
                    .context("the topology has no users instance; give --url")?,
            };
            rebalance(&url, to, Duration::from_secs(timeout_secs)).await?;
            // Keep the file in step with the recorded layout, so that the topology says what
            // every instance already uses (an explicit `[[users.shards]]` list was edited by the
            // user before the move; only the embedded count is ours to write).
            if let Some(path) = config.filter(|_| topo.users.shards.is_empty()) {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                std::fs::write(&path, set_shard_count(&text, to))
                    .with_context(|| format!("cannot write {}", path.display()))?;
                println!("updated {}: [users] shard_count = {to}", path.display());
            } else {
                println!(
                    "Set [users] shard_count = {to} (or list {to} [[users.shards]]) in your topology \
                     file to match."
                );
            }
            Ok(())
        }
    }
}

/// `text` (a topology file) with `shard_count = n` in its `[users]` table, every other line as it
/// was (comments included): the line is replaced if present, added after `[users]` if not, and a
/// `[users]` table is appended if the file has none.
fn set_shard_count(text: &str, n: u32) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut in_users = false;
    let mut done = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            if in_users && !done {
                out.push(format!("shard_count = {n}"));
                done = true;
            }
            in_users = trimmed.trim_end() == "[users]";
        } else if in_users && !done {
            let key = trimmed.split('=').next().unwrap_or("").trim();
            if key == "shard_count" {
                out.push(format!("shard_count = {n}"));
                done = true;
                continue;
            }
        }
        out.push(line.to_string());
    }
    if !done {
        if !in_users {
            out.push(String::new());
            out.push("[users]".into());
        }
        out.push(format!("shard_count = {n}"));
    }
    let mut joined = out.join("\n");
    joined.push('\n');
    joined
}

/// Starts the move and follows it to the end, starting it again whenever the service answers
/// without it (a restart before the move was recorded).
async fn rebalance(url: &str, to: u32, timeout: Duration) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut started = false;
    let mut last_moved = None;
    loop {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the move to {to} shards did not finish in {} s; run the command again to resume",
            timeout.as_secs()
        );
        let status: Option<Value> = match http.get(format!("{url}/rebalance")).send().await {
            Ok(r) if r.status().is_success() => r.json().await.ok(),
            _ => None,
        };
        match status {
            None => {
                // The service is restarting (or down): it resumes a recorded move by itself.
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
            Some(s) if s["count"] == to && s["target"].is_null() && s["moving"] == false => {
                println!(
                    "done: users are on {to} shards ({} users and username entries moved in the last pass).",
                    s["moved"]
                );
                println!(
                    "The layout is recorded on shard 0, where every users instance reads it at start."
                );
                return Ok(());
            }
            Some(s) if s["target"].is_null() || !started => {
                let mut req = http
                    .post(format!("{url}/rebalance"))
                    .json(&json!({ "to": to }));
                // The users service takes changes only with the deployment's credential, when set.
                if let Ok(token) = std::env::var(crate::serve::SERVICE_TOKEN_ENV) {
                    req = req.header("x-service-token", token);
                }
                let r = req.send().await;
                match r {
                    Ok(r) if r.status().is_success() => {
                        if !started {
                            println!("moving from {} to {to} shards", s["count"]);
                        }
                        started = true;
                    }
                    Ok(r) => {
                        let status = r.status();
                        let body = r.text().await.unwrap_or_default();
                        anyhow::bail!("the users service refused the move ({status}): {body}");
                    }
                    Err(_) => {}
                }
            }
            Some(s) => {
                if last_moved.as_ref() != Some(&s["moved"]) {
                    println!("moved so far: {}", s["moved"]);
                    last_moved = Some(s["moved"].clone());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::set_shard_count;

    #[test]
    fn the_users_shard_count_is_replaced_in_place() {
        let file = "# top\n[users]\n# how many\nshard_count = 3\nmax_page_size = 100\n[gateway]\nshard_count = 9\n";
        assert_eq!(
            set_shard_count(file, 4),
            "# top\n[users]\n# how many\nshard_count = 4\nmax_page_size = 100\n[gateway]\nshard_count = 9\n"
        );
    }

    #[test]
    fn a_missing_line_or_table_is_added() {
        assert_eq!(
            set_shard_count("[users]\nmax_page_size = 5\n[db]\nx = 1\n", 4),
            "[users]\nmax_page_size = 5\nshard_count = 4\n[db]\nx = 1\n"
        );
        assert_eq!(
            set_shard_count("[db]\nx = 1\n", 4),
            "[db]\nx = 1\n\n[users]\nshard_count = 4\n"
        );
        assert_eq!(
            set_shard_count("[users]\n", 2),
            "[users]\nshard_count = 2\n"
        );
    }
}
