//! End to end: `scalelab bench scenario all --quick` starts its topologies, measures, stops them,
//! and writes the HTML report with the scorecard and the JSON results.
//!
//! In the cli crate because only here does cargo hand tests the built binary
//! (`CARGO_BIN_EXE_scalelab`).

use std::process::Command;

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

/// What the report writes for `s` in HTML (as `bench::experiment` escapes it).
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[test]
fn scenario_all_quick_writes_the_report_with_the_scorecard() {
    let dir = std::env::temp_dir().join(format!("scalelab-scenario-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let report = dir.join("report");
    let json = dir.join("results.json");
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

    // The terminal shows each scenario, in order, then the scorecard.
    let headings = [
        "== Load balancing ==",
        "== Caching ==",
        "== Scaling out ==",
        "== Asynchronous work ==",
        "== Elasticity ==",
        "== Resilience: fuses and latency-aware selection ==",
        "== Tactic scorecard ==",
    ];
    let at: Vec<usize> = headings
        .iter()
        .map(|h| {
            stdout
                .find(h)
                .unwrap_or_else(|| panic!("{h} missing:\n{stdout}"))
        })
        .collect();
    assert!(at.is_sorted(), "sections out of order:\n{stdout}");

    // The page: every section, the scorecard, and charts that draw something.
    let html = std::fs::read_to_string(report.join("index.html")).expect("index.html");
    for title in [
        "Load balancing",
        "Caching",
        "Scaling out",
        "Asynchronous work",
        "Elasticity",
        "Resilience: fuses and latency-aware selection",
        "Tactic scorecard",
    ] {
        assert!(html.contains(&format!("<h2>{title}</h2>")), "no {title}");
    }
    let charts = svgs(&html);
    // lb 2 + cache 2 + scale 2 + async 1 + elastic 2 + resilience 2 in the sections, 6 in the
    // scorecard.
    assert_eq!(charts.len(), 17, "charts in the page");
    for svg in &charts {
        let drawn = svg.matches("<rect").count() + svg.matches("<polyline").count();
        assert!(drawn >= 2, "an empty chart: {}", &svg[..svg.len().min(300)]);
    }

    let results: Value =
        serde_json::from_slice(&std::fs::read(&json).expect("results.json")).expect("JSON");
    assert_eq!(results["quick"], true);

    // The scorecard: one row per tactic, in the order of the sections, each the same in the
    // JSON, on the terminal and on the page, with the command that reproduces it.
    let rows = results["scorecard"].as_array().expect("scorecard");
    let tactics: Vec<&str> = rows.iter().map(|r| r["tactic"].as_str().unwrap()).collect();
    assert_eq!(
        tactics,
        [
            "load balancing",
            "caching",
            "scaling out",
            "asynchronous processing",
            "elasticity",
            "resilience (fuses)"
        ]
    );
    for (row, name) in rows
        .iter()
        .zip(["lb", "cache", "scale", "async", "elastic", "resilience"])
    {
        let (tactic, gain, command) = (
            row["tactic"].as_str().unwrap(),
            row["gain"].as_str().unwrap(),
            row["command"].as_str().unwrap(),
        );
        assert_eq!(command, format!("scalelab bench scenario {name} --quick"));
        assert!(!gain.is_empty(), "{row}");
        assert!(
            stdout.contains(&format!("  {tactic:<23} {gain}\n")),
            "{tactic}'s scorecard line missing:\n{stdout}"
        );
        assert!(
            stdout.contains(&format!("reproduce: {command}\n")),
            "{command} missing:\n{stdout}"
        );
        assert!(
            html.contains(&format!("<tr><td>{tactic}</td><td>{}</td>", escape(gain))),
            "no scorecard row for {tactic}"
        );
        assert!(
            html.contains(&format!("<code>{command}</code>")),
            "no {command} on the page"
        );
    }

    // lb: both gateways and all three services answered, every answer counted once, and no
    // client saw an error while a gateway was killed and restarted.
    let lb = &results["lb"];
    assert_eq!(
        lb["failover"]["client_errors"], 0,
        "a client saw errors while a gateway was killed: {lb}"
    );
    assert_eq!(lb["failover"]["killed"], "gateway-1", "{lb}");
    assert_eq!(lb["failover"]["restarted"], true, "{lb}");
    let gateways = ids(&lb["gateways"]);
    let services = ids(&lb["services"]);
    assert_eq!(
        gateways
            .iter()
            .map(|(id, _)| id.as_str())
            .collect::<Vec<_>>(),
        ["gateway-1", "gateway-2"]
    );
    assert_eq!(services.len(), 3, "{services:?}");
    assert!(
        gateways.iter().chain(&services).all(|(_, n)| *n > 0),
        "every gateway and service answered: {gateways:?} {services:?}"
    );
    assert_eq!(
        gateways.iter().map(|(_, n)| n).sum::<u64>(),
        lb["requests"].as_u64().unwrap(),
        "every answer names one gateway: {lb}"
    );
    assert_eq!(lb["gateways"]["even"], true, "{lb}");

    // cache: the cold pass misses every key once, the warm pass hits every one.
    let cache = &results["cache"];
    let keys = cache["keys"].as_u64().expect("keys");
    let passes = cache["passes"].as_array().expect("passes");
    assert_eq!(passes.len(), 4, "{cache}");
    let (cold, warm) = (&passes[0], &passes[1]);
    assert_eq!(
        (&cold["requests"], &cold["hits"], &cold["misses"]),
        (&keys.into(), &0.into(), &keys.into()),
        "the cold pass misses: {cache}"
    );
    assert_eq!(
        (&warm["requests"], &warm["hits"], &warm["misses"]),
        (&keys.into(), &keys.into(), &0.into()),
        "the warm pass hits: {cache}"
    );
    for pass in passes {
        assert_eq!(pass["client_errors"], 0, "{pass}");
    }

    // scale: one, two, three services, each of them answering, no errors.
    let steps = results["scale"]["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 3);
    for (n, step) in steps.iter().enumerate() {
        assert_eq!(step["instances"], n as u64 + 1);
        assert_eq!(step["client_errors"], 0, "{step}");
        assert!(step["requests"].as_u64().unwrap_or(0) > 0, "{step}");
        let services = ids(&step["services"]);
        assert_eq!(services.len(), n + 1, "{step}");
        assert!(services.iter().all(|(_, c)| *c > 0), "{step}");
    }

    // async: as many tasks as the synchronous run completed (at least 50) were accepted, and
    // every one of them ran.
    let queued = &results["async"];
    assert_eq!(queued["sync"]["client_errors"], 0, "{queued}");
    assert_eq!(queued["submit"]["client_errors"], 0, "{queued}");
    let completed = queued["sync"]["requests"].as_u64().unwrap();
    assert_eq!(
        queued["submit"]["requests"],
        completed.max(50),
        "the queued run does the same work: {queued}"
    );
    assert_eq!(
        queued["tasks_succeeded"], queued["submit"]["requests"],
        "every submitted task ran: {queued}"
    );

    // elastic: with autoscaling on, the ramp added services and gateways, and no request failed;
    // off, one of each served the whole ramp.
    let elastic = &results["elastic"];
    let most = |run: &Value, role: &str| {
        run["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[role].as_u64().unwrap())
            .max()
            .unwrap()
    };
    assert!(most(&elastic["on"], "services") > 1, "{elastic}");
    assert!(most(&elastic["on"], "gateways") > 1, "{elastic}");
    assert!(most(&elastic["on"], "workers") > 1, "{elastic}");
    for run in [&elastic["on"], &elastic["off"]] {
        assert!(run["tasks_accepted"].as_u64() > Some(50), "{run}");
        assert_eq!(
            run["tasks_succeeded"], run["tasks_accepted"],
            "no task lost: {run}"
        );
    }
    assert_eq!(most(&elastic["off"], "services"), 1, "{elastic}");
    for run in [&elastic["on"], &elastic["off"]] {
        for p in run["points"].as_array().unwrap() {
            assert_eq!(p["errors"], 0, "{p}");
        }
    }
    assert!(
        elastic["on"]["decisions"][0]
            .as_str()
            .unwrap_or("")
            .contains("desired ceil(1 ×"),
        "{elastic}"
    );

    // resilience: every strategy ran; round robin sends the slow backend half, Peak-EWMA less;
    // without a budget every failed request was retried, and the fuses' runs answered.
    let resilience = &results["resilience"];
    let selection = resilience["selection"].as_array().expect("selection runs");
    let share = |name: &str| {
        selection
            .iter()
            .find(|s| s["strategy"] == name)
            .and_then(|s| s["slow_share"].as_f64())
            .unwrap_or_else(|| panic!("no {name} run: {resilience}"))
    };
    assert!((share("round_robin") - 50.0).abs() < 1.0, "{resilience}");
    assert!(share("peak_ewma") < share("round_robin"), "{resilience}");
    let budget = resilience["budget"].as_array().expect("budget runs");
    assert_eq!(budget[0]["budget"], false);
    assert_eq!(budget[0]["retries_refused"], 0, "{resilience}");
    assert!(
        budget[0]["amplification"].as_f64().unwrap() > 1.3,
        "{resilience}"
    );
    let fuses = resilience["fuses"].as_array().expect("fuse runs");
    assert_eq!(fuses.len(), 4, "{resilience}");
    assert!(
        fuses.iter().all(|f| f["requests"].as_u64() > Some(0)),
        "{resilience}"
    );

    let _ = std::fs::remove_dir_all(&dir);
}
