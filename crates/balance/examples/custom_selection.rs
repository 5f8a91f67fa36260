//! A backend selection strategy of your own, plugged into a [`balance::Pool`].
//!
//! `Selection` is the extension point: one method that picks one of the healthy candidates. This
//! example writes smooth weighted round robin (nginx's `weight=`: a backend of weight 3 gets three
//! requests for every one of a backend of weight 1, interleaved rather than in bursts), starts
//! three tiny HTTP backends on `127.0.0.1:0`, sends 60 requests through a pool built with
//! [`Pool::with_selection`], and prints who answered how many. Everything else (connections kept
//! alive, health, retry on another backend, in-flight counts) is the pool's and comes for free.
//!
//! Run it with `cargo run -p balance --example custom_selection`; it exits by itself.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use balance::{Backend, Pool, PoolConfig, Selection};
use http::Request;
use http_body_util::BodyExt;
use tokio::net::TcpListener;

/// Smooth weighted round robin. Each pick adds every candidate's weight to its running score,
/// takes the highest score and subtracts the candidates' total from it: over `total` picks each
/// backend is chosen exactly `weight` times, spread out.
#[derive(Debug)]
struct Weighted {
    /// The weight of each backend, by its index in the pool (1 for any backend not listed).
    weights: Vec<i64>,
    /// The running scores; a mutex because a pool selects from many tasks at once.
    scores: Mutex<Vec<i64>>,
}

impl Weighted {
    fn new(weights: Vec<i64>) -> Self {
        let scores = Mutex::new(vec![0; weights.len()]);
        Self { weights, scores }
    }

    fn weight(&self, i: usize) -> i64 {
        self.weights.get(i).copied().unwrap_or(1).max(1)
    }
}

impl Selection for Weighted {
    fn name(&self) -> &'static str {
        "weighted"
    }

    /// `candidates` are the healthy backends not yet tried for this request (never empty), so a
    /// backend that is down simply stops getting its share.
    fn select(&self, backends: &[Arc<Backend>], candidates: &[usize]) -> usize {
        // A poisoned lock only means another pick panicked; the scores are still usable.
        let mut scores = self.scores.lock().unwrap_or_else(|e| e.into_inner());
        if scores.len() < backends.len() {
            scores.resize(backends.len(), 0);
        }
        let total: i64 = candidates.iter().map(|&i| self.weight(i)).sum();
        let mut best = candidates[0];
        for &i in candidates {
            scores[i] += self.weight(i);
            if scores[i] > scores[best] {
                best = i;
            }
        }
        scores[best] -= total;
        best
    }
}

/// An HTTP server on a free port that answers its name on `/`; its base URL.
async fn backend(name: &'static str) -> std::io::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let app = Router::new()
        .route("/", get(move || async move { name }))
        .route("/health", get(|| async { "ok" }));
    // The server runs until the example's runtime ends.
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let names = ["big", "medium", "small"];
    let mut urls = Vec::new();
    for name in names {
        urls.push(backend(name).await?);
    }
    let weights = vec![3, 2, 1];
    let pool = Pool::with_selection(
        "demo",
        &urls,
        PoolConfig::default(),
        Arc::new(Weighted::new(weights.clone())),
    );
    println!("pool {:?}, strategy {}", pool.name(), pool.strategy());

    let mut answers: BTreeMap<String, usize> = BTreeMap::new();
    let mut order = String::new();
    for _ in 0..60 {
        let request = Request::get("/").body(Body::empty())?;
        let forwarded = pool.send(request).await?;
        let body = forwarded.response.into_body().collect().await?.to_bytes();
        let who = String::from_utf8_lossy(&body).into_owned();
        if order.len() < 12 {
            order.push_str(&who[..1]);
        }
        *answers.entry(who).or_default() += 1;
    }

    println!("first picks: {order}  (b = big, m = medium, s = small)");
    for (name, weight) in names.iter().zip(&weights) {
        let n = answers.get(*name).copied().unwrap_or(0);
        println!(
            "{name:>6} (weight {weight}): {n:>2} requests {}",
            "#".repeat(n)
        );
    }
    let expected: Vec<usize> = weights.iter().map(|w| 60 * *w as usize / 6).collect();
    let got: Vec<usize> = names
        .iter()
        .map(|n| answers.get(*n).copied().unwrap_or(0))
        .collect();
    if got != expected {
        return Err(format!("expected {expected:?}, got {got:?}").into());
    }
    Ok(())
}
