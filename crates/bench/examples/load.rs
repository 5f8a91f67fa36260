//! `scalelab bench` without the rest of scalelab: the same arguments, for measuring the generator
//! on its own (e.g. against nginx next to wrk and oha).
//!
//! `cargo run --release -p bench --example load -- http://127.0.0.1:8080/ -c 50 -d 10s`

use clap::Parser;

#[derive(Parser)]
#[command(name = "load", about = "scalelab's load generator on its own")]
struct Cli {
    #[command(flatten)]
    bench: bench::BenchArgs,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    // The generator wants every core: a multi-thread runtime, one worker per core.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(bench::dispatch(cli.bench, async {
        let _ = tokio::signal::ctrl_c().await;
    }))?;
    Ok(())
}
