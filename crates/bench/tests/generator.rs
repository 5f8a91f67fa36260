//! The generator against an in-process axum server with injected latency, stalls and the
//! `X-Served-By` / `X-Cache` headers. Runs stop by themselves (duration, count or a stop future
//! fired by the server); the only sleeps are the server's injected latencies.
//!
//! Every assertion is on counts, order and states, never on a rate or a latency figure: the
//! figures (requests per second, percentiles against wrk's and oha's) are measured by
//! `bench/generator-vs-wrk.sh` and recorded in `docs/PERFORMANCE.md`. The only latency bounds
//! here are lower bounds the server's own sleep guarantees (a latency shorter than the server's
//! delay can only be a measuring bug), and the open model is checked through its schedule: how
//! many requests were due, and how many went out late.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use bench::{BenchArgs, Load, Plan, Report, RunConfig, execute};
use clap::{Parser, Subcommand};
use tokio::sync::Notify;

#[derive(Default)]
struct Server {
    /// Requests seen by the counting routes.
    count: AtomicU64,
    /// Fired once `count` reaches `notify_at` (for the early-stop test).
    reached: Notify,
    notify_at: AtomicU64,
    /// Keys received by `/keys`.
    keys: std::sync::Mutex<Vec<String>>,
}

impl Server {
    fn tick(&self) -> u64 {
        let n = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.notify_at.load(Ordering::SeqCst) {
            self.reached.notify_one();
        }
        n
    }
}

type S = State<Arc<Server>>;

async fn slow(State(s): S) -> &'static str {
    s.tick();
    tokio::time::sleep(Duration::from_millis(20)).await;
    "slow"
}

async fn fast() -> &'static str {
    "fast"
}

/// The first request is held `ms` milliseconds; the others are answered at once.
async fn hold(
    State(s): S,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> &'static str {
    if s.tick() == 1 {
        let ms = q.get("ms").and_then(|v| v.parse().ok()).unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    "hold"
}

/// Instance `inst-{n % 3}`; every fourth request (n % 4 == 0) is a 5 ms miss, the rest are hits.
async fn tagged(State(s): S) -> ([(&'static str, String); 2], &'static str) {
    let n = s.tick();
    let miss = n % 4 == 0;
    if miss {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cache = if miss { "MISS" } else { "HIT" };
    (
        [
            ("x-served-by", format!("inst-{}", n % 3)),
            ("x-cache", cache.to_owned()),
        ],
        "tagged",
    )
}

async fn keys(
    State(s): S,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> &'static str {
    s.tick();
    s.keys
        .lock()
        .unwrap()
        .push(q.get("key").cloned().unwrap_or_default());
    "key"
}

/// A JSON body naming one of two services, like the gateway's `/process`.
async fn process(State(s): S) -> axum::Json<serde_json::Value> {
    let n = s.tick();
    axum::Json(serde_json::json!({"service_id": format!("svc-{}", n % 2), "n": n}))
}

async fn login(body: String) -> (StatusCode, String) {
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    if v["username"] == "alice" && v["password"] == "secret" {
        (
            StatusCode::OK,
            r#"{"token":"tok-1","token_type":"Bearer","expires_in":60}"#.into(),
        )
    } else {
        (
            StatusCode::UNAUTHORIZED,
            r#"{"error":"unauthorized"}"#.into(),
        )
    }
}

async fn secure(headers: HeaderMap) -> StatusCode {
    match headers.get("authorization").and_then(|v| v.to_str().ok()) {
        Some("Bearer tok-1") => StatusCode::OK,
        _ => StatusCode::UNAUTHORIZED,
    }
}

async fn server() -> (SocketAddr, Arc<Server>) {
    let state = Arc::new(Server::default());
    let app = Router::new()
        .route("/slow", get(slow))
        .route("/fast", get(fast))
        .route("/hold", get(hold))
        .route("/tagged", get(tagged))
        .route("/keys", get(keys))
        .route("/process", get(process))
        .route("/login", post(login))
        .route("/secure", get(secure))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, state)
}

fn config(connections: usize, load: Load) -> RunConfig {
    RunConfig {
        connections,
        load,
        timeout: Duration::from_secs(5),
        ..RunConfig::default()
    }
}

async fn run_for(url: &str, cfg: RunConfig) -> Report {
    execute(Plan::get(url).unwrap(), cfg, std::future::pending())
        .await
        .unwrap()
}

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Top,
}

#[derive(Subcommand)]
enum Top {
    Bench(BenchArgs),
}

fn args(argv: &[&str]) -> BenchArgs {
    let mut full = vec!["scalelab", "bench"];
    full.extend_from_slice(argv);
    let Top::Bench(args) = Cli::try_parse_from(full).unwrap().command;
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_budget_is_sent_exactly_and_every_answer_is_measured() {
    let (addr, state) = server().await;
    let cfg = RunConfig {
        requests: Some(100),
        ..config(4, Load::Closed)
    };
    let r = run_for(&format!("http://{addr}/slow"), cfg).await;
    assert_eq!(r.errors.total(), 0);
    assert_eq!((r.requests.total, r.requests.answered), (100, 100));
    assert_eq!(
        state.count.load(Ordering::SeqCst),
        100,
        "requests the server saw"
    );
    assert_eq!(r.status_codes.get("200"), Some(&100));
    assert_eq!(
        (r.config.request_limit, r.config.duration_s),
        (Some(100), None)
    );
    // Every answer is in the histogram, its buckets and the timeline.
    assert_eq!(r.latency.count, 100);
    assert_eq!(
        r.latency_histogram.iter().map(|b| b.count).sum::<u64>(),
        100
    );
    assert_eq!(r.timeline.iter().map(|s| s.requests).sum::<u64>(), 100);
    // Latency runs from the send to the answer's last byte, and the server sleeps 20 ms before
    // answering: no sample can be shorter (20 ms is a bucket boundary at 3 significant digits).
    assert!(r.latency.min_ms >= 20.0, "min {} ms", r.latency.min_ms);
    let l = &r.latency;
    assert!(l.min_ms <= l.p50_ms && l.p50_ms <= l.p90_ms, "{l:?}");
    assert!(l.p90_ms <= l.p99_ms && l.p99_ms <= l.max_ms, "{l:?}");
    // The closed model never sends late: it has no schedule.
    assert_eq!(r.requests.late, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_model_sends_every_request_its_schedule_has_due() {
    // 200 req/s over 4 connections for 500 ms: one request due every 5 ms, 100 in all. The
    // deadline applies to the intended send times, so the count does not depend on how fast
    // the machine is.
    let (addr, state) = server().await;
    let cfg = RunConfig {
        duration: Some(Duration::from_millis(500)),
        ..config(4, Load::Open { rate: 200.0 })
    };
    let r = run_for(&format!("http://{addr}/process"), cfg).await;
    assert_eq!(r.errors.total(), 0);
    assert_eq!((r.requests.total, r.requests.answered), (100, 100));
    assert_eq!(state.count.load(Ordering::SeqCst), 100);
    assert_eq!(r.config.model, "open");
    assert_eq!(r.timeline.iter().map(|s| s.requests).sum::<u64>(), 100);

    // A target slower than the rate: 100 req/s on one connection (one due every 10 ms) against
    // answers that take at least 20 ms. The schedule still has 50 requests due in 500 ms and all
    // of them go out; every one after the first was due while the previous answer was still
    // awaited, so 49 are late (measured from when they were due), whatever the machine's speed.
    let (addr, state) = server().await;
    let cfg = RunConfig {
        duration: Some(Duration::from_millis(500)),
        ..config(1, Load::Open { rate: 100.0 })
    };
    let r = run_for(&format!("http://{addr}/slow"), cfg).await;
    assert_eq!(r.errors.total(), 0);
    assert_eq!(r.requests.answered, 50);
    assert_eq!(state.count.load(Ordering::SeqCst), 50);
    assert_eq!(r.requests.late, 49);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_is_charged_to_the_requests_due_during_it_in_the_open_model_only() {
    // One connection at 2 req/s (due at 0, 500 and 1000 ms); the server holds the first request
    // 1100 ms. The requests due at 500 and 1000 ms were due while it waited: late, their latency
    // counted from when they were due (coordinated omission corrected); the first is on time by
    // definition. A slower machine only makes the late ones later: the count cannot change.
    let (addr, _) = server().await;
    let open = run_for(
        &format!("http://{addr}/hold?ms=1100"),
        RunConfig {
            requests: Some(3),
            ..config(1, Load::Open { rate: 2.0 })
        },
    )
    .await;
    assert_eq!((open.requests.answered, open.errors.total()), (3, 0));
    assert_eq!(open.requests.late, 2);
    let summary = bench::summary::render(&open);
    assert!(summary.contains("2 sent late"), "{summary}");

    // Closed model: the requests that would have been sent during the stall simply were not
    // (coordinated omission): nothing is late, nothing corrected.
    let (addr, _) = server().await;
    let closed = run_for(
        &format!("http://{addr}/hold?ms=100"),
        RunConfig {
            requests: Some(4),
            ..config(1, Load::Closed)
        },
    )
    .await;
    assert_eq!((closed.requests.answered, closed.requests.late), (4, 0));
    assert!(!bench::summary::render(&closed).contains("sent late"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_by_and_cache_headers_are_counted() {
    let (addr, _) = server().await;
    let cfg = RunConfig {
        requests: Some(120),
        ..config(4, Load::Closed)
    };
    let r = run_for(&format!("http://{addr}/tagged"), cfg).await;
    assert_eq!(r.requests.total, 120);
    assert_eq!(r.requests.answered, 120);
    let instances: Vec<(&str, u64)> = r
        .instances
        .iter()
        .map(|i| (i.id.as_str(), i.count))
        .collect();
    assert_eq!(instances, [("inst-0", 40), ("inst-1", 40), ("inst-2", 40)]);
    for i in &r.instances {
        assert!((i.percent - 100.0 / 3.0).abs() < 0.01);
    }
    assert_eq!(r.cache.hits, 90);
    assert_eq!(r.cache.misses, 30);
    assert_eq!(r.cache.hit_ratio, Some(0.75));
    let hit = r.cache.hit_latency.clone().unwrap();
    let miss = r.cache.miss_latency.clone().unwrap();
    assert_eq!((hit.count, miss.count), (90, 30));
    // Misses sleep 5 ms on the server: the miss histogram holds the misses' latencies. (Whether
    // a hit is faster is a figure, not asserted here.)
    assert!(miss.min_ms >= 5.0, "miss {miss:?}");
    assert_eq!(r.cache.speedup_p50, Some(miss.p50_ms / hit.p50_ms));
    let text = bench::summary::render(&r);
    assert!(text.contains("inst-1") && text.contains("33.33%"), "{text}");
    assert!(text.contains("hit ratio 75.00%"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_output_validates_against_the_schema() {
    let (addr, _) = server().await;
    let dir = tempfile::tempdir().unwrap();
    let schema: serde_json::Value = serde_json::from_str(bench::REPORT_SCHEMA).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    // One run with cache data, one without (the nullable fields).
    for (path, name) in [("tagged", "a.json"), ("fast", "b.json")] {
        let file = dir.path().join(name);
        let a = args(&[
            &format!("http://{addr}/{path}"),
            "-c",
            "2",
            "-n",
            "50",
            "--json",
            file.to_str().unwrap(),
        ]);
        let report = bench::run(a, std::future::pending()).await.unwrap();
        assert_eq!(report.requests.answered, 50);
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&written)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{name}: {errors:?}");
        assert_eq!(bench::read_json(&file).unwrap().requests.answered, 50);
    }
    // The schema is strict: a missing field is caught.
    let mut broken: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("a.json")).unwrap()).unwrap();
    broken.as_object_mut().unwrap().remove("latency");
    assert!(!validator.is_valid(&broken));
    // `compare` reads both and writes its page.
    let out = dir.path().join("cmp");
    bench::compare(&bench::CompareArgs {
        a: dir.path().join("a.json"),
        b: dir.path().join("b.json"),
        report: Some(out.clone()),
    })
    .unwrap();
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert_eq!(svgs(&html).len(), 3);
}

/// The `<svg>...</svg>` elements of a page.
fn svgs(html: &str) -> Vec<&str> {
    html.match_indices("<svg")
        .map(|(start, _)| {
            let end = html[start..].find("</svg>").unwrap() + start;
            &html[start..end]
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn html_report_has_every_chart() {
    let (addr, _) = server().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = RunConfig {
        requests: Some(200),
        ..config(4, Load::Closed)
    };
    let r = run_for(&format!("http://{addr}/tagged"), cfg).await;
    let page = bench::html::write_report(dir.path(), &r).unwrap();
    let html = std::fs::read_to_string(page).unwrap();
    let charts = svgs(&html);
    assert_eq!(
        charts.len(),
        5,
        "latency over time, rps, histogram, instances, hit/miss"
    );
    for svg in &charts {
        let drawn = svg.matches("<rect").count() + svg.matches("<polyline").count();
        assert!(drawn >= 2, "an empty chart: {}", &svg[..svg.len().min(300)]);
    }
    for title in [
        "Latency per second",
        "Latency histogram",
        "Requests per instance",
        "Cache hit vs miss",
    ] {
        assert!(html.contains(title), "missing {title}");
    }
    assert!(html.contains("inst-2"));
    assert!(dir.path().join("report.json").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stop_future_ends_the_run_and_still_reports() {
    let (addr, state) = server().await;
    state.notify_at.store(40, Ordering::SeqCst);
    // A budget the run would take over an hour to send: only the stop can end it.
    let budget = 1_000_000;
    let cfg = RunConfig {
        requests: Some(budget),
        ..config(4, Load::Closed)
    };
    let stopped = {
        let state = state.clone();
        async move { state.reached.notified().await }
    };
    let run = execute(
        Plan::get(&format!("http://{addr}/slow")).unwrap(),
        cfg,
        stopped,
    );
    // A deadline so that a stop that is not honoured fails the test instead of hanging it.
    let r = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the stop was not honoured")
        .unwrap();
    assert!(r.stopped_early);
    // When the 40th request arrived, each of the 4 connections had its earlier answers back:
    // at least 36 answers are in the report, and the stop came long before the budget.
    assert!(
        (36..budget).contains(&r.requests.answered),
        "{}",
        r.requests.answered
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_errors_are_counted() {
    // A port that was just free: nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cfg = RunConfig {
        requests: Some(5),
        ..config(1, Load::Closed)
    };
    let r = run_for(&format!("http://127.0.0.1:{port}/"), cfg).await;
    assert_eq!(r.errors.connect, 5);
    assert_eq!(r.requests.answered, 0);
    assert_eq!(r.latency.count, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seq_placeholder_and_round_robin_urls() {
    let (addr, state) = server().await;
    let plan = Plan::new(
        http::Method::GET,
        &[
            format!("http://{addr}/keys?key=a-{{seq}}"),
            format!("http://{addr}/keys?key=b-{{seq}}"),
        ],
    )
    .unwrap();
    let cfg = RunConfig {
        requests: Some(40),
        ..config(3, Load::Closed)
    };
    let r = execute(plan, cfg, std::future::pending()).await.unwrap();
    assert_eq!(r.requests.answered, 40);
    let mut keys = state.keys.lock().unwrap().clone();
    // Each connection alternates a, b, a, ...: with 3 connections, |a - b| <= 3.
    let a = keys.iter().filter(|k| k.starts_with("a-")).count();
    assert!((18..=22).contains(&a), "{a} of 40 on the first URL");
    let mut numbers: Vec<u64> = keys.iter_mut().map(|k| k[2..].parse().unwrap()).collect();
    numbers.sort();
    assert_eq!(numbers, (1..=40).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_then_bearer_token() {
    let (addr, _) = server().await;
    let ok = bench::run(
        args(&[
            &format!("http://{addr}/secure"),
            "-c",
            "2",
            "-n",
            "10",
            "--login",
            "alice:secret",
        ]),
        std::future::pending(),
    )
    .await
    .unwrap();
    assert_eq!(ok.status_codes.get("200"), Some(&10));
    let refused = bench::run(
        args(&[
            &format!("http://{addr}/secure"),
            "-n",
            "1",
            "--login",
            "alice:wrong",
        ]),
        std::future::pending(),
    )
    .await;
    assert!(
        matches!(refused, Err(bench::Error::Login(_))),
        "{refused:?}"
    );
    let without = bench::run(
        args(&[
            &format!("http://{addr}/secure"),
            "-c",
            "1",
            "-n",
            "3",
            "-H",
            "X-Test: 1",
        ]),
        std::future::pending(),
    )
    .await
    .unwrap();
    assert_eq!(without.status_codes.get("401"), Some(&3));
}

/// Renders the HTML report in headless Chromium (Debian's `chromium` package) when it is
/// installed and checks that the screenshot has content; says so and passes when it is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn html_report_renders_in_headless_chromium() {
    let Some(browser) = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            std::process::Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
    else {
        // CI installs Chromium (.ci/run), so there a missing browser is a failure, not a skip.
        assert!(
            std::env::var_os("CI").is_none(),
            "CI needs chromium (apt-get install -y chromium)"
        );
        eprintln!("SKIP: no chromium on PATH: screenshot check not run");
        return;
    };
    let (addr, _) = server().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = RunConfig {
        requests: Some(100),
        ..config(2, Load::Closed)
    };
    let r = run_for(&format!("http://{addr}/tagged"), cfg).await;
    let page = bench::html::write_report(dir.path(), &r).unwrap();
    let shot = dir.path().join("shot.png");
    let dom = tokio::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg("--window-size=900,2900")
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", page.display()))
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), dom)
        .await
        .expect("chromium hung")
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    // A blank 900x2900 page compresses to a few kilobytes; five charts make far more.
    assert!(png.len() > 40_000, "screenshot of {} bytes", png.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_field_is_counted_when_asked_for_and_the_json_stays_valid() {
    let (addr, _) = server().await;
    let cfg = RunConfig {
        requests: Some(100),
        ..config(4, Load::Closed)
    };
    // Answers without the field (plain text) are not counted.
    let plan = Plan::new(
        http::Method::GET,
        &[
            format!("http://{addr}/process"),
            format!("http://{addr}/fast"),
        ],
    )
    .unwrap()
    .count_field("service_id");
    let r = execute(plan, cfg.clone(), std::future::pending())
        .await
        .unwrap();
    let counts: Vec<(&str, u64)> = r
        .field_counts
        .iter()
        .map(|s| (s.id.as_str(), s.count))
        .collect();
    // Each connection takes the two URLs in turn on its own, so the split between them (and so
    // between the two service ids) can be off by a request or two per connection.
    assert_eq!(counts.len(), 2, "{counts:?}");
    assert_eq!((counts[0].0, counts[1].0), ("svc-0", "svc-1"));
    let counted: u64 = counts.iter().map(|c| c.1).sum();
    assert!((44..=56).contains(&counted), "{counts:?}");
    assert!(
        counts.iter().all(|c| (18..=32).contains(&c.1)),
        "{counts:?}"
    );
    let want = counts[0].1 as f64 * 100.0 / r.requests.answered as f64;
    assert!(
        (r.field_counts[0].percent - want).abs() < 1e-9,
        "percent of all answers"
    );
    assert_eq!(r.config.count_field.as_deref(), Some("service_id"));
    let text = bench::summary::render(&r);
    assert!(text.contains("Body field `service_id`"), "{text}");

    let schema: serde_json::Value = serde_json::from_str(bench::REPORT_SCHEMA).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let json = serde_json::to_value(&r).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&json)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:?}");

    // Off by default: nothing counted, and the field is absent from the JSON.
    let plain = run_for(&format!("http://{addr}/process"), cfg).await;
    assert!(plain.field_counts.is_empty());
    let json = serde_json::to_value(&plain).unwrap();
    assert!(json.get("field_counts").is_none() && json["config"].get("count_field").is_none());
}
