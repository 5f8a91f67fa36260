//! A self-contained demonstration: starts a toy server on 127.0.0.1 (three fake instances, a
//! cache that hits three times in four, 5 ms misses, Zipf key popularity), loads it for three
//! seconds in the open model and writes the summary, `DIR/report.json` and `DIR/index.html`.
//!
//! `cargo run -p bench --example demo -- /tmp/bench-demo`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use bench::{Load, Plan, RunConfig};

async fn data(State(count): State<Arc<AtomicU64>>) -> ([(&'static str, String); 2], &'static str) {
    let n = count.fetch_add(1, Ordering::Relaxed) + 1;
    let miss = n % 4 == 0;
    // Latency that grows a little with load, so that the charts have something to show.
    let pause = if miss { 5_000 } else { 300 + (n % 7) * 100 };
    tokio::time::sleep(Duration::from_micros(pause)).await;
    (
        [
            ("x-served-by", format!("gateway-{}", n % 3 + 1)),
            ("x-cache", if miss { "MISS" } else { "HIT" }.to_owned()),
        ],
        "{}",
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "bench-demo".into());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/data", get(data))
        .with_state(Arc::new(AtomicU64::new(0)));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let plan = Plan::get(&format!("http://{addr}/data?key=key-{{zipf:1000}}"))?;
    let config = RunConfig {
        connections: 8,
        load: Load::Open { rate: 500.0 },
        duration: Some(Duration::from_secs(3)),
        progress: true,
        ..RunConfig::default()
    };
    let report = bench::execute(plan, config, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    print!("{}", bench::summary::render(&report));
    let page = bench::html::write_report(std::path::Path::new(&dir), &report)?;
    eprintln!("wrote {}", page.display());
    Ok(())
}
