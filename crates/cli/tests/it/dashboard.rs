//! End to end (issue 10): the live dashboard of a running `scalelab up`, in a real headless
//! Chromium. The page shows every instance as a box, its counters move under load started from
//! the page's own controls, a killed instance turns red and then healthy again, the polling
//! fallback works when SSE is not used, the page stays usable at 1280×800 and with 50 instances,
//! and nothing is written to the console. The screenshots go to `docs/img/` (the README shows
//! them) with `UPDATE_SCREENSHOTS=1`, to the target directory otherwise.

use std::path::PathBuf;
use std::time::Duration;

use e2e::{Running, Topology};

use crate::browser::{self, Browser};

/// Waits for the page: generous, since two topologies may start at once on a busy machine.
const WAIT: Duration = Duration::from_secs(60);

/// The browser, or `None` (and a note) where there is none outside CI.
fn chromium() -> Option<&'static str> {
    let found = browser::find();
    if found.is_none() {
        // CI installs Chromium (.ci/run): there a missing browser is a failure, not a skip.
        assert!(
            std::env::var_os("CI").is_none(),
            "CI needs chromium (apt-get install -y chromium)"
        );
        eprintln!("SKIP: no chromium on PATH: the dashboard's browser test did not run");
    }
    found
}

fn topology() -> Topology {
    Topology::new()
        .program(env!("CARGO_BIN_EXE_scalelab"))
        .counts("dashboard", 1)
        .toml_extra("[auth]\nargon2_memory_kib = 1024\nargon2_iterations = 1\n")
        .toml_extra("[db]\nlatency_ms = 5\njitter_ms = 0\nseed_records = 10\n")
        .toml_extra("[service]\nwork_ms = 2\n")
        .toml_extra("[dashboard]\nscrape_ms = 500\n")
}

/// Where the screenshots go: the README's `docs/img/` with `UPDATE_SCREENSHOTS=1` (so that a
/// plain test run leaves the checkout as it was), the test's scratch directory otherwise.
fn screenshot_path(name: &str) -> PathBuf {
    let dir = if std::env::var_os("UPDATE_SCREENSHOTS").is_some() {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/img")
    } else {
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("screenshots")
    };
    dir.join(name)
}

/// Boxes on the page, the queue's box aside.
const BOXES: &str = "document.querySelectorAll('#topology .box[data-role]').length";

/// The class of instance `id`'s box, and whether it has one.
fn box_is(id: &str, class: &str) -> String {
    format!(
        "(() => {{ const b = document.querySelector('#topology .box[data-id=\"{id}\"]'); \
         return !!b && b.matches('{class}'); }})()"
    )
}

async fn open(browser: &Browser, sys: &Running, query: &str) {
    open_with(browser, sys, query, 0).await
}

/// [`open`], with `added` instances started since `up` (by a scale from the page).
async fn open_with(browser: &Browser, sys: &Running, query: &str, added: usize) {
    browser
        .navigate(&format!("{}/{query}", sys.url("dashboard", 1)))
        .await
        .unwrap();
    let watched = sys.ids().len() - 1 + added; // every instance but the dashboard itself
    browser
        .wait_for(
            &format!("{watched} instance boxes"),
            &format!("{BOXES} === {watched}"),
            WAIT,
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_shows_traffic_a_kill_and_recovery_live() {
    let Some(program) = chromium() else { return };
    let sys = topology()
        .counts("worker", 1)
        .start()
        .await
        .expect("start the topology");
    let browser = Browser::start(program, 1280, 800).await.unwrap();
    open(&browser, &sys, "").await;
    browser
        .wait_for(
            "the SSE stream",
            "document.getElementById('transport').textContent === 'live (SSE)'",
            WAIT,
        )
        .await
        .unwrap();
    for id in [
        "lb-1",
        "gateway-2",
        "service-3",
        "cache-1",
        "db-1",
        "auth-2",
        "worker-1",
    ] {
        browser
            .wait_for(&format!("{id}'s green box"), &box_is(id, ".up"), WAIT)
            .await
            .unwrap();
    }

    // An admin signs in on the page and starts a load on /data from its controls.
    let password = serde_json::to_string(sys.admin_password()).unwrap();
    browser
        .eval(&format!(
            "document.getElementById('password').value = {password}; \
             document.getElementById('signin').requestSubmit(); true"
        ))
        .await
        .unwrap();
    browser
        .wait_for(
            "the controls after signing in",
            "!document.getElementById('controls').hidden",
            WAIT,
        )
        .await
        .unwrap();
    browser
        .eval(
            "document.getElementById('load-route').value = '/data'; \
             document.getElementById('load-seconds').value = '30'; \
             document.getElementById('load-connections').value = '4'; \
             document.getElementById('load').click(); true",
        )
        .await
        .unwrap();
    // The counters move: requests through the balancer, shared between both gateways, cache hits.
    browser
        .wait_for(
            "req/s through the balancer",
            "Number(document.getElementById('summary').dataset.rps) > 0",
            WAIT,
        )
        .await
        .unwrap();
    browser
        .wait_for(
            "traffic on both gateways' edges",
            "[...document.querySelectorAll('#edges path')]\
               .filter(p => p.dataset.to.startsWith('gateway-') && Number(p.dataset.share) > 0).length === 2",
            WAIT,
        )
        .await
        .unwrap();
    browser
        .wait_for(
            "cache hits",
            "/%$/.test(document.getElementById('hit-ratio').textContent) && \
             !document.getElementById('cache-rates').textContent.startsWith('0.0 /')",
            WAIT,
        )
        .await
        .unwrap();
    browser
        .wait_for(
            "the load's start in the event log",
            "[...document.querySelectorAll('#events li')].some(li => li.dataset.kind === 'load')",
            WAIT,
        )
        .await
        .unwrap();
    browser
        .wait_for(
            "a few points on the charts",
            "document.getElementById('chart-legend').textContent.includes('gateway')",
            WAIT,
        )
        .await
        .unwrap();
    browser
        .wait_for(
            "the worker's busy slots out of its slots, and the oldest task's age",
            r"(() => { const t = document.getElementById('queue').textContent; return /busy slots\d+ \/ \d+/.test(t) && /oldest waiting[\d.]+ s/.test(t); })()",
            WAIT,
        )
        .await
        .unwrap();
    browser
        .screenshot(&screenshot_path("dashboard.png"))
        .await
        .unwrap();

    // Killed from the page: its box turns red (down, or restarted before a scrape saw it down),
    // then green again once the supervisor's restart answers its health check.
    let pid = sys.pid("service-2").unwrap();
    browser
        .eval(
            "document.querySelector('tr[data-id=\"service-2\"] button[data-action=\"kill\"]').click(); true",
        )
        .await
        .unwrap();
    browser
        .wait_for(
            "service-2's box to turn red",
            &box_is("service-2", ".down, .restarting"),
            WAIT,
        )
        .await
        .unwrap();
    browser
        .screenshot(&screenshot_path("dashboard-kill.png"))
        .await
        .unwrap();
    sys.wait_restarted("service-2", pid).await.unwrap();
    browser
        .wait_for(
            "service-2's box to be green again",
            &box_is("service-2", ".up"),
            WAIT,
        )
        .await
        .unwrap();
    browser
        .wait_for(
            "the kill in the event log",
            "[...document.querySelectorAll('#events li')].some(li => li.dataset.kind === 'killed')",
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(
        browser
            .eval(
                "document.querySelector('tr[data-id=\"service-2\"] td:nth-child(11)').textContent"
            )
            .await
            .unwrap(),
        "1",
        "one restart in service-2's row"
    );

    // Flush and scale from the page: the cache empties (an event says how much), a fourth service
    // gets its box.
    browser
        .eval("document.getElementById('flush').click(); true")
        .await
        .unwrap();
    browser
        .wait_for(
            "the flush in the event log",
            "[...document.querySelectorAll('#events li')].some(li => li.dataset.kind === 'flush')",
            WAIT,
        )
        .await
        .unwrap();
    browser
        .eval(
            "document.getElementById('scale-role').value = 'service'; \
             document.getElementById('scale-count').value = '4'; \
             document.getElementById('scale').click(); true",
        )
        .await
        .unwrap();
    browser
        .wait_for("service-4's green box", &box_is("service-4", ".up"), WAIT)
        .await
        .unwrap();

    // With the stream blocked (a proxy that does not pass SSE), the page falls back to polling by
    // itself, and still moves.
    browser.block(&["*/api/stream*"]).await.unwrap();
    open_with(&browser, &sys, "", 1).await;
    browser
        .wait_for(
            "polling",
            "document.getElementById('transport').textContent === 'live (polling)'",
            WAIT,
        )
        .await
        .unwrap();
    browser
        .wait_for(
            "req/s while polling",
            "Number(document.getElementById('summary').dataset.rps) > 0",
            WAIT,
        )
        .await
        .unwrap();
    // Projector mode: larger text, still no sideways scrolling at 1280 px.
    browser
        .eval("document.getElementById('projector').click(); true")
        .await
        .unwrap();
    assert_eq!(
        browser
            .eval("document.documentElement.scrollWidth <= 1280 && document.body.classList.contains('projector')")
            .await
            .unwrap(),
        true,
        "the page fits 1280 px wide in projector mode"
    );
    // The one error expected: the blocked stream's failed load.
    let errors: Vec<_> = browser
        .errors()
        .into_iter()
        .filter(|e| !e.contains("/api/stream"))
        .collect();
    assert!(errors.is_empty(), "console errors: {errors:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_holds_up_with_fifty_instances() {
    let Some(program) = chromium() else { return };
    // 50 watched instances: 1 lb, 2 gateways, 44 services, db, cache, auth.
    let sys = topology()
        .counts("auth", 1)
        .counts("service", 44)
        .start_timeout(Duration::from_secs(180))
        .start()
        .await
        .expect("start the topology");
    assert_eq!(sys.ids().len(), 51);
    let browser = Browser::start(program, 1280, 800).await.unwrap();
    open(&browser, &sys, "").await;
    // Traffic through /process spreads over the services; every box says what it serves.
    let token = sys.admin_token().await.unwrap();
    let url = format!("{}/process", sys.lb_url());
    let load = tokio::spawn({
        let client = sys.client().clone();
        async move {
            for _ in 0..400 {
                let _ = client.get(&url).bearer_auth(&token).send().await;
            }
        }
    });
    browser
        .wait_for(
            "services answering",
            "[...document.querySelectorAll('#topology .box[data-role=\"service\"] .rps')]\
               .filter(e => !e.textContent.startsWith('0.0')).length > 5",
            WAIT,
        )
        .await
        .unwrap();
    load.abort();
    // A busy machine slows some checks down; none of them is shown as down for it.
    browser
        .wait_for(
            "50 green boxes",
            "document.querySelectorAll('#topology .box[data-role].up').length === 50",
            WAIT,
        )
        .await
        .unwrap();
    let layout = browser
        .eval(
            "(() => { const t = document.getElementById('topology').getBoundingClientRect(); \
             const boxes = [...document.querySelectorAll('#topology .box')]; \
             return { wide: document.documentElement.scrollWidth, \
                      inside: boxes.every(b => { const r = b.getBoundingClientRect(); \
                          return r.left >= t.left - 1 && r.right <= t.right + 1 && r.width > 20; }), \
                      height: t.height, tables: document.querySelectorAll('#tables tr[data-id]').length }; })()",
        )
        .await
        .unwrap();
    assert!(layout["wide"].as_f64().unwrap() <= 1280.0, "{layout}");
    assert_eq!(
        layout["inside"], true,
        "every box inside the topology: {layout}"
    );
    assert!(
        layout["height"].as_f64().unwrap() < 800.0,
        "the topology fits a screen's height: {layout}"
    );
    assert_eq!(layout["tables"], 50, "a table row per instance");
    browser
        .screenshot(&screenshot_path("dashboard-50.png"))
        .await
        .unwrap();
    let errors = browser.errors();
    assert!(errors.is_empty(), "console errors: {errors:#?}");
}
