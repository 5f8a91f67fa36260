//! End to end: `scalelab bench scenario all --quick` starts its topologies, measures, stops them,
//! and writes the HTML report with the scorecard and the JSON results.
//!
//! In the cli crate because only here does cargo hand tests the built binary
//! (`CARGO_BIN_EXE_scalelab`).

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `<svg>...</svg>` elements of a page.
fn svgs(html: &str) -> Vec<&str> {
    html.match_indices("<svg")
        .map(|(start, _)| {
            let end = html[start..].find("</svg>").expect("a closed <svg>") + start;
            &html[start..end]
        })
        .collect()
}

fn ids(spread: &Value) -> Vec<(String, u64)> {
    spread["shares"]
        .as_array()
        .expect("shares")
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap_or_default().to_owned(),
                s["count"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

#[test]
fn scenario_all_quick_writes_the_report_with_the_scorecard() {
    let dir = std::env::temp_dir().join(format!("scalelab-scenario-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let report = dir.join("report");
    let json = dir.join("results.json");
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_scalelab"))
        .args(["bench", "scenario", "all", "--quick", "--report"])
        .arg(&report)
        .arg("--json")
        .arg(&json)
        .output()
        .expect("scalelab runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "--quick took {:?}",
        started.elapsed()
    );

    // The terminal shows each scenario and the scorecard.
    for heading in [
        "== Load balancing ==",
        "== Caching ==",
        "== Scaling out ==",
        "== Asynchronous work ==",
        "== Tactic scorecard ==",
    ] {
        assert!(stdout.contains(heading), "{heading} missing:\n{stdout}");
    }

    // The page: every section, the scorecard, and charts that draw something.
    let html = std::fs::read_to_string(report.join("index.html")).expect("index.html");
    assert!(html.contains("<h2>Tactic scorecard</h2>"), "no scorecard");
    for tactic in [
        "load balancing",
        "caching",
        "scaling out",
        "asynchronous processing",
    ] {
        assert!(
            html.contains(&format!("<tr><td>{tactic}</td>")),
            "no scorecard row for {tactic}"
        );
    }
    assert!(html.contains("scalelab bench scenario scale --quick"));
    let charts = svgs(&html);
    // lb 2 + cache 2 + scale 2 + async 1 in the sections, 4 in the scorecard.
    assert_eq!(charts.len(), 11, "charts in the page");
    for svg in &charts {
        let drawn = svg.matches("<rect").count() + svg.matches("<polyline").count();
        assert!(drawn >= 2, "an empty chart: {}", &svg[..svg.len().min(300)]);
    }

    // The figures.
    let results: Value =
        serde_json::from_slice(&std::fs::read(&json).expect("results.json")).expect("JSON");
    let lb = &results["lb"];
    assert_eq!(
        lb["failover"]["client_errors"], 0,
        "a client saw errors while a gateway was killed: {lb}"
    );
    assert_eq!(lb["failover"]["restarted"], true, "{lb}");
    let gateways = ids(&lb["gateways"]);
    let services = ids(&lb["services"]);
    assert_eq!(gateways.len(), 2, "{gateways:?}");
    assert_eq!(services.len(), 3, "{services:?}");
    assert!(
        gateways.iter().chain(&services).all(|(_, n)| *n > 0),
        "every gateway and service answered: {gateways:?} {services:?}"
    );
    assert_eq!(lb["gateways"]["even"], true, "{lb}");

    let cache = &results["cache"];
    let passes = cache["passes"].as_array().expect("passes");
    assert_eq!(passes[0]["hit_ratio"], 0.0, "the cold pass misses: {cache}");
    assert_eq!(passes[1]["hit_ratio"], 1.0, "the warm pass hits: {cache}");
    assert!(
        cache["speedup_p50"].as_f64().unwrap_or(0.0) > 1.0,
        "{cache}"
    );

    let steps = results["scale"]["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 3);
    for (n, step) in steps.iter().enumerate() {
        assert_eq!(step["instances"], n as u64 + 1);
        assert_eq!(step["client_errors"], 0, "{step}");
        assert!(step["rps"].as_f64().unwrap_or(0.0) > 0.0, "{step}");
    }
    let queued = &results["async"];
    assert_eq!(queued["skipped"], false, "{queued}");
    assert_eq!(queued["sync"]["client_errors"], 0, "{queued}");
    assert_eq!(queued["submit"]["client_errors"], 0, "{queued}");
    assert_eq!(
        queued["tasks_succeeded"], queued["submit"]["requests"],
        "every submitted task ran: {queued}"
    );
    let p50 = |side: &str| queued[side]["p50_ms"].as_f64().unwrap_or(f64::NAN);
    assert!(
        p50("submit") < p50("sync"),
        "a submission answers sooner than the synchronous work: {queued}"
    );
    assert_eq!(results["scorecard"].as_array().map(Vec::len), Some(4));

    let _ = std::fs::remove_dir_all(&dir);
}
