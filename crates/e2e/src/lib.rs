//! The topology harness for end-to-end tests: starts the real `scalelab up` on free ports in a
//! temporary data directory, waits until every instance is healthy, and tears it all down.
//!
//! Start with [`Topology`] (the builder) and [`Running`] (what a test drives):
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! let system = e2e::Topology::new().counts("gateway", 2).start().await?;
//! let health = reqwest::get(format!("{}/health", system.lb_url())).await?;
//! assert_eq!(health.status(), 200);
//! let pid = system.kill("gateway-1", nix::sys::signal::Signal::SIGKILL)?;
//! system.wait_restarted("gateway-1", pid).await?;
//! assert!(system.stop().await?.success());
//! # Ok(())
//! # }
//! ```
//!
//! The harness drives the binary, never the crates: it needs `target/<profile>/scalelab` built first
//! (`cargo build -p cli`, which `.ci/run` does before `cargo test`), or the path in `SCALELAB_BIN`.
//! See [`binary`].
//!
//! Code map: `topology.rs` (the builder: ports, topology file, starting `up`), `running.rs`
//! ([`Running`], what a test asks of a started system), `wait.rs` (health checks and every wait,
//! each polling a condition against a deadline), `process.rs` (signals, stopping `up`, cleanup on
//! drop), `logs.rs` (`up`'s output), `http.rs` ([`client`], logging in), `binary.rs` ([`binary`]).
//!
//! Invariants: nothing here sleeps a fixed time (every wait polls a condition against a deadline);
//! every topology gets its own ports, data directory and admin password, so tests run in parallel.

mod binary;
mod http;
mod logs;
mod process;
mod running;
mod topology;
mod wait;

pub use binary::binary;
pub use http::client;
pub use running::{InstanceRecord, Running};
pub use topology::Topology;
