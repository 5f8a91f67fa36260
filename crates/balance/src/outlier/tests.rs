use std::time::Duration;

use super::*;

fn config() -> OutlierConfig {
    OutlierConfig {
        profile: Profile::Demo,
        enabled: true,
        consecutive_failures: 3,
        interval_ms: 100,
        base_ejection_ms: 1000,
        max_ejection_ms: 2500,
        max_ejection_percent: 10,
        slow_ratio: 5.0,
        slow_min_ms: 10,
        min_requests: 3,
    }
}

fn backends(n: usize) -> Vec<Arc<Backend>> {
    (0..n)
        .map(|i| Backend::new(&format!("http://127.0.0.1:{}", 20_000 + i), 1))
        .collect()
}

/// One answer from `backends[i]` at `t` ms: a failure (5xx) or not, after `ms` milliseconds.
/// Returns whether it was ejected by it.
fn answer(o: &Outliers, b: &[Arc<Backend>], i: usize, failed: bool, ms: u64, t: u64) -> bool {
    let streak = b[i].record_answer(Duration::from_millis(ms), failed, t * 1_000_000);
    failed && o.on_failure(b, i, streak, t)
}

fn states(b: &[Arc<Backend>]) -> Vec<&'static str> {
    b.iter().map(|b| b.state()).collect()
}

#[test]
fn failures_in_a_row_eject_and_a_good_answer_resets_the_count() {
    let o = Outliers::new("test", config());
    let b = backends(3);
    // (backend, failed, ejected by this answer)
    let script: &[(usize, bool, bool)] = &[
        (0, true, false),
        (0, true, false),
        // A good answer: the streak starts again.
        (0, false, false),
        (0, true, false),
        (0, true, false),
        // Failures of another backend do not count for this one.
        (1, true, false),
        (0, true, true),
    ];
    for (step, &(i, failed, ejected)) in script.iter().enumerate() {
        assert_eq!(answer(&o, &b, i, failed, 1, 0), ejected, "step {step}");
    }
    assert_eq!(states(&b), ["ejected", "active", "active"]);
    assert!(!b[0].is_selectable());
    assert_eq!(b[0].stats().ejections, 1);
}

#[test]
fn each_ejection_lasts_longer_up_to_the_cap_and_the_sweep_brings_it_back() {
    let o = Outliers::new("test", config());
    let b = backends(2);
    // (time the failures start, expected ejection length)
    let table: &[(u64, u64)] = &[(0, 1000), (10_000, 2000), (20_000, 2500), (30_000, 2500)];
    for &(t, length) in table {
        for _ in 0..3 {
            answer(&o, &b, 0, true, 1, t);
        }
        assert_eq!(b[0].state(), "ejected", "at {t}");
        // Still out just before the end; back at the first sweep after it.
        assert_eq!(o.sweep(&b, t + length - 1), Sweep::default(), "at {t}");
        assert_eq!(b[0].state(), "ejected");
        let back = o.sweep(&b, t + length);
        assert_eq!(back.returned, vec![b[0].url.clone()], "at {t}");
        assert_eq!(b[0].state(), "active");
    }
}

#[test]
fn intervals_served_without_failure_shorten_the_next_ejection() {
    let o = Outliers::new("test", config());
    let b = backends(2);
    for _ in 0..3 {
        answer(&o, &b, 0, true, 1, 0);
    }
    o.sweep(&b, 1000);
    // Ejected a second time: 2 × base.
    for _ in 0..3 {
        answer(&o, &b, 0, true, 1, 1000);
    }
    o.sweep(&b, 3000);
    assert_eq!(b[0].state(), "active");
    // Two intervals with good answers and no failure bring the multiplier back to 0 ...
    for t in [3050, 3150] {
        answer(&o, &b, 0, false, 1, t);
        o.sweep(&b, t + 50);
    }
    // ... so the next ejection is the base length again.
    for _ in 0..3 {
        answer(&o, &b, 0, true, 1, 4000);
    }
    assert_eq!(o.sweep(&b, 4999), Sweep::default());
    assert_eq!(o.sweep(&b, 5000).returned.len(), 1);
}

#[test]
fn at_most_the_percentage_is_ejected_but_always_one_and_never_the_last() {
    // (backends, max_ejection_percent, failing backends, how many end up ejected)
    let table: &[(usize, u32, usize, usize)] = &[
        // 10% of 10 is 1.
        (10, 10, 3, 1),
        // 10% of 3 is 0, but one may always be ejected.
        (3, 10, 3, 1),
        // 50% of 10 is 5.
        (10, 50, 7, 5),
        // 100% of 2, both failing: never the last one.
        (2, 100, 2, 1),
        // A pool of one never ejects its only backend.
        (1, 100, 1, 0),
    ];
    for &(n, percent, failing, want) in table {
        let o = Outliers::new(
            "test",
            OutlierConfig {
                max_ejection_percent: percent,
                ..config()
            },
        );
        let b = backends(n);
        for i in 0..failing {
            for _ in 0..3 {
                answer(&o, &b, i, true, 1, 0);
            }
        }
        let ejected = b.iter().filter(|b| b.is_ejected()).count();
        assert_eq!(ejected, want, "{n} backends, {percent}%, {failing} failing");
        assert!(b.iter().any(|b| b.is_selectable()), "someone still serves");
    }
}

#[test]
fn a_backend_that_is_down_is_not_counted_as_serving() {
    let o = Outliers::new(
        "test",
        OutlierConfig {
            max_ejection_percent: 100,
            ..config()
        },
    );
    let b = backends(2);
    b[1].mark_down();
    for _ in 0..5 {
        answer(&o, &b, 0, true, 1, 0);
    }
    assert_eq!(states(&b), ["active", "down"]);
}

#[test]
fn a_backend_far_slower_than_its_peers_is_ejected_at_the_sweep() {
    // (mean ms of each backend's answers this interval, answers each, ejected)
    let table: &[(&[u64], u64, &[usize])] = &[
        // 60 ms beside 1 ms peers: more than 5 × and over 10 ms.
        (&[1, 60, 1], 5, &[1]),
        // 8 ms beside 1 ms: more than 5 × but under slow_min_ms.
        (&[1, 8, 1], 5, &[]),
        // 40 ms beside 10 ms peers: only 4 ×.
        (&[10, 40, 10], 5, &[]),
        // Too few answers to judge.
        (&[1, 60, 1], 2, &[]),
        // Two backends: the slow one goes, the fast one stays.
        (&[50, 1], 5, &[0]),
    ];
    for &(means, answers, want) in table {
        let o = Outliers::new("test", config());
        let b = backends(means.len());
        for (i, &ms) in means.iter().enumerate() {
            for _ in 0..answers {
                answer(&o, &b, i, false, ms, 0);
            }
        }
        let swept = o.sweep(&b, 100);
        let ejected: Vec<usize> = (0..b.len()).filter(|&i| b[i].is_ejected()).collect();
        assert_eq!(ejected, want, "means {means:?}, {answers} answers");
        assert_eq!(swept.ejected.len(), want.len());
    }
}

#[test]
fn disabled_detection_ejects_nothing() {
    let o = Outliers::new(
        "test",
        OutlierConfig {
            enabled: false,
            ..config()
        },
    );
    let b = backends(3);
    for _ in 0..50 {
        answer(&o, &b, 0, true, 500, 0);
    }
    o.sweep(&b, 100);
    assert!(b.iter().all(|b| b.is_selectable()));
}

#[test]
fn the_profile_gives_defaults_and_settings_override_them() {
    let standard: OutlierConfig = toml::from_str("").expect("parses");
    assert_eq!(
        (
            standard.consecutive_failures,
            standard.interval_ms,
            standard.base_ejection_ms,
            standard.max_ejection_percent
        ),
        (5, 10_000, 30_000, 10)
    );
    let demo: OutlierConfig =
        toml::from_str("profile = \"demo\"\nconsecutive_failures = 7").expect("parses");
    assert_eq!(demo.consecutive_failures, 7);
    assert_eq!(
        demo.interval_ms,
        OutlierConfig::of(Profile::Demo).interval_ms
    );
    assert!(toml::from_str::<OutlierConfig>("nope = 1").is_err());
    let bad = OutlierConfig {
        slow_ratio: 0.5,
        max_ejection_percent: 101,
        ..config()
    };
    assert_eq!(bad.validate().len(), 2);
}
