//! `scalelab shards plan --to N`: what changing the users service's shard count would move.

use std::path::PathBuf;

use clap::{Args, Subcommand};

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
    }
}
