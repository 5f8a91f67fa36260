//! The text summary printed after a run (like wrk's and oha's), and the side-by-side comparison.

use std::fmt::Write as _;

use crate::report::{LatencySummary, Report};

/// Renders the summary table of one run.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let c = &r.config;
    let model = match c.rate {
        Some(rate) => format!(
            "open model, {rate} req/s over {} connections",
            c.connections
        ),
        None => format!("closed model, {} connections", c.connections),
    };
    // Writing to a String cannot fail.
    let _ = writeln!(out, "{} {} ({model})", c.method, c.urls.join(", "));
    let _ = writeln!(
        out,
        "  {} requests in {:.2}s: {} answered, {} failed{}",
        r.requests.total,
        r.elapsed_s,
        r.requests.answered,
        r.requests.failed,
        if r.stopped_early {
            " (stopped early)"
        } else {
            ""
        }
    );
    let _ = writeln!(out, "  Requests/sec: {:.1}", r.rps);
    if c.rate.is_some() {
        let _ = writeln!(
            out,
            "  {} sent late (the target fell behind the rate; measured from the intended send time)",
            r.requests.late
        );
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "Latency (ms){}",
        if c.rate.is_some() {
            ", from intended send time"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "  {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "p50", "p90", "p99", "p99.9", "max", "mean", "stdev"
    );
    let l = &r.latency;
    let _ = writeln!(
        out,
        "  {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
        l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms, l.mean_ms, l.stdev_ms
    );
    out.push('\n');
    let _ = writeln!(out, "Status codes");
    if r.status_codes.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for (code, n) in &r.status_codes {
        let _ = writeln!(
            out,
            "  {code}  {n:>10}  {:>6.2}%",
            pct(*n, r.requests.answered)
        );
    }
    let e = &r.errors;
    let _ = writeln!(
        out,
        "Errors: {} (connect {}, timeout {}, reset {}, other {})",
        e.total(),
        e.connect,
        e.timeout,
        e.reset,
        e.other
    );
    if !r.instances.is_empty() {
        out.push('\n');
        let _ = writeln!(out, "Instances (X-Served-By)");
        let width = r.instances.iter().map(|i| i.id.len()).max().unwrap_or(0);
        for i in &r.instances {
            let bar = "#".repeat((i.percent / 2.5).round() as usize);
            let _ = writeln!(
                out,
                "  {:<width$}  {:>10}  {:>6.2}%  {bar}",
                i.id, i.count, i.percent
            );
        }
    }
    if !r.field_counts.is_empty() {
        out.push('\n');
        let name = r.config.count_field.as_deref().unwrap_or("field");
        let _ = writeln!(out, "Body field `{name}`");
        let width = r.field_counts.iter().map(|i| i.id.len()).max().unwrap_or(0);
        for i in &r.field_counts {
            let bar = "#".repeat((i.percent / 2.5).round() as usize);
            let _ = writeln!(
                out,
                "  {:<width$}  {:>10}  {:>6.2}%  {bar}",
                i.id, i.count, i.percent
            );
        }
    }
    let cache = &r.cache;
    if cache.hits + cache.misses > 0 {
        out.push('\n');
        let _ = writeln!(
            out,
            "Cache (X-Cache): hit ratio {:.2}%",
            100.0 * cache.hit_ratio.unwrap_or(0.0)
        );
        let _ = writeln!(
            out,
            "  {:<5} {:>10} {:>9} {:>9} {:>9}",
            "", "count", "p50 ms", "p99 ms", "mean ms"
        );
        for (name, n, lat) in [
            ("HIT", cache.hits, &cache.hit_latency),
            ("MISS", cache.misses, &cache.miss_latency),
        ] {
            let d = lat.clone().unwrap_or_default();
            let _ = writeln!(
                out,
                "  {name:<5} {n:>10} {:>9.3} {:>9.3} {:>9.3}",
                d.p50_ms, d.p99_ms, d.mean_ms
            );
        }
        if let Some(s) = cache.speedup_p50 {
            let _ = writeln!(out, "  a hit is {s:.1}x faster than a miss (p50)");
        }
    }
    out
}

fn pct(n: u64, of: u64) -> f64 {
    if of == 0 {
        0.0
    } else {
        100.0 * n as f64 / of as f64
    }
}

/// One row of a comparison: a name and the two values (lower is better for latencies).
pub(crate) fn comparison_rows(a: &Report, b: &Report) -> Vec<(&'static str, f64, f64)> {
    let rows = |l: &LatencySummary| {
        [
            ("p50 ms", l.p50_ms),
            ("p90 ms", l.p90_ms),
            ("p99 ms", l.p99_ms),
            ("p99.9 ms", l.p999_ms),
            ("max ms", l.max_ms),
            ("mean ms", l.mean_ms),
        ]
    };
    let mut out = vec![
        ("req/s", a.rps, b.rps),
        (
            "answered",
            a.requests.answered as f64,
            b.requests.answered as f64,
        ),
        ("errors", a.errors.total() as f64, b.errors.total() as f64),
    ];
    for ((name, x), (_, y)) in rows(&a.latency).into_iter().zip(rows(&b.latency)) {
        out.push((name, x, y));
    }
    if let (Some(x), Some(y)) = (a.cache.hit_ratio, b.cache.hit_ratio) {
        out.push(("hit ratio %", 100.0 * x, 100.0 * y));
    }
    out
}

/// Renders two runs side by side with the change from A to B in percent.
pub fn render_comparison(a_name: &str, a: &Report, b_name: &str, b: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "A: {a_name}\nB: {b_name}\n");
    let _ = writeln!(out, "  {:<12} {:>12} {:>12} {:>9}", "", "A", "B", "B vs A");
    for (name, x, y) in comparison_rows(a, b) {
        let delta = if x != 0.0 {
            format!("{:+.1}%", 100.0 * (y - x) / x)
        } else {
            "-".to_owned()
        };
        let _ = writeln!(out, "  {name:<12} {x:>12.3} {y:>12.3} {delta:>9}");
    }
    out
}
