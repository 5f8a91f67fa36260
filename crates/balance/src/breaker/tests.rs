use super::*;

fn config() -> BreakerConfig {
    BreakerConfig {
        profile: Profile::Demo,
        enabled: true,
        window_ms: 1000,
        min_calls: 4,
        failure_rate_percent: 50,
        open_ms: 500,
        half_open_calls: 2,
    }
}

/// One step of a script: at `t` ms, a call that succeeds (`Good`), fails (`Fail`), or is made
/// and abandoned without an answer (`Gone`); whether it was let through, and the state after it.
#[derive(Debug, Clone, Copy)]
enum Call {
    Good,
    Fail,
    Gone,
}

fn run(script: &[(u64, Call, bool, State)]) {
    let b = Breaker::new("peer", "test", config());
    for (step, &(t, call, admitted, state)) in script.iter().enumerate() {
        let got = b.admit(t);
        assert_eq!(got.is_ok(), admitted, "step {step} at {t} ms: admitted?");
        if let Ok(permit) = got {
            match call {
                Call::Good => permit.record(true, t),
                Call::Fail => permit.record(false, t),
                Call::Gone => drop(permit),
            }
        }
        assert_eq!(b.state(), state, "step {step} at {t} ms: state");
    }
}

use Call::*;
use State::*;

#[test]
fn opens_at_the_failure_rate_once_enough_calls_were_seen() {
    run(&[
        // Three failures are not enough calls to judge (min_calls = 4).
        (0, Fail, true, Closed),
        (1, Fail, true, Closed),
        (2, Fail, true, Closed),
        // The fourth call is a success: 3 of 4 failed, but a success never opens it.
        (3, Good, true, Closed),
        // The next failure: 4 of 5 failed, >= 50%: open.
        (4, Fail, true, Open),
        // Open: refused at once until open_ms (500) is over.
        (5, Good, false, Open),
        (503, Good, false, Open),
    ]);
}

#[test]
fn a_failure_rate_under_the_threshold_keeps_it_closed() {
    run(&[
        (0, Good, true, Closed),
        (1, Fail, true, Closed),
        (2, Good, true, Closed),
        (3, Good, true, Closed),
        (4, Fail, true, Closed),
        (5, Good, true, Closed),
        // 2 of 6 failed.
        (6, Good, true, Closed),
    ]);
}

#[test]
fn old_failures_leave_the_window() {
    run(&[
        (0, Fail, true, Closed),
        (1, Fail, true, Closed),
        (2, Fail, true, Closed),
        // A second later the three failures have left the window: 1 of 1 is below min_calls.
        (1100, Fail, true, Closed),
        (1101, Good, true, Closed),
        (1102, Good, true, Closed),
        (1103, Good, true, Closed),
    ]);
}

#[test]
fn half_open_trials_close_it_when_they_succeed() {
    run(&[
        (0, Fail, true, Closed),
        (1, Fail, true, Closed),
        (2, Fail, true, Closed),
        (3, Fail, true, Open),
        // The wait is over: the first call is a trial, the second too, the third is refused.
        (503, Good, true, HalfOpen),
        (504, Good, true, Closed),
        // Closed with a fresh window: one failure does not reopen it.
        (505, Fail, true, Closed),
        (506, Good, true, Closed),
    ]);
}

#[test]
fn a_failed_trial_reopens_it_for_another_wait() {
    run(&[
        (0, Fail, true, Closed),
        (1, Fail, true, Closed),
        (2, Fail, true, Closed),
        (3, Fail, true, Open),
        // One failed trial of two is 50%: open again, until 504 + 500.
        (504, Fail, true, Open),
        (505, Good, false, Open),
        (1003, Good, false, Open),
        (1004, Good, true, HalfOpen),
        (1005, Good, true, Closed),
    ]);
}

#[test]
fn trials_are_limited_and_an_abandoned_one_gives_its_place_back() {
    let b = Breaker::new("peer", "test", config());
    for t in 0..4 {
        b.admit(t).expect("closed").record(false, t);
    }
    assert_eq!(b.state(), Open);
    let first = b.admit(600).expect("trial 1");
    let second = b.admit(600).expect("trial 2");
    assert!(first.is_trial() && second.is_trial());
    // Both trials are out: the next call is refused.
    let refused = b.admit(601).expect_err("no third trial");
    assert!(refused.retry_after_ms >= 1);
    // The first trial's caller gave up: its place is free again.
    drop(first);
    let third = b.admit(602).expect("the place given back");
    second.record(true, 603);
    assert_eq!(b.state(), HalfOpen);
    third.record(true, 604);
    assert_eq!(b.state(), Closed);
    let stats = b.stats(604);
    assert_eq!((stats.opened, stats.rejected), (1, 1));
}

#[test]
fn the_answer_of_a_call_from_an_older_state_changes_nothing() {
    let b = Breaker::new("peer", "test", config());
    for t in 0..4 {
        b.admit(t).expect("closed").record(false, t);
    }
    let trial = b.admit(600).expect("trial");
    let other = b.admit(600).expect("trial");
    other.record(false, 601);
    assert_eq!(b.state(), Open, "a failed trial reopened it");
    // The first trial answers late, after the state changed: it must not close the breaker.
    trial.record(true, 602);
    assert_eq!(b.state(), Open);
}

#[test]
fn open_refusals_say_when_to_come_back() {
    let b = Breaker::new("peer", "test", config());
    for t in 0..4 {
        b.admit(t).expect("closed").record(false, t);
    }
    assert_eq!(b.admit(103).expect_err("open").retry_after_ms, 400);
    assert_eq!(b.admit(502).expect_err("open").retry_after_ms, 1);
}

#[test]
fn a_disabled_breaker_lets_everything_through() {
    let b = Breaker::new(
        "peer",
        "test",
        BreakerConfig {
            enabled: false,
            ..config()
        },
    );
    for t in 0..100 {
        b.admit(t).expect("disabled").record(false, t);
    }
    assert_eq!(b.state(), Closed);
}

#[test]
fn the_profile_gives_defaults_and_settings_override_them() {
    let standard: BreakerConfig = toml::from_str("").expect("parses");
    assert_eq!(standard, BreakerConfig::of(Profile::Standard));
    assert_eq!(
        (
            standard.failure_rate_percent,
            standard.open_ms,
            standard.half_open_calls
        ),
        (50, 60_000, 10)
    );
    let demo: BreakerConfig = toml::from_str("profile = \"demo\"\nopen_ms = 1500").expect("parses");
    assert_eq!(demo.profile, Profile::Demo);
    assert_eq!(demo.open_ms, 1500);
    assert_eq!(demo.window_ms, BreakerConfig::of(Profile::Demo).window_ms);
    assert!(toml::from_str::<BreakerConfig>("nope = 1").is_err());
    let bad = BreakerConfig {
        failure_rate_percent: 0,
        open_ms: 0,
        ..config()
    };
    assert_eq!(
        bad.validate(),
        vec![
            "open_ms: must be at least 1",
            "failure_rate_percent: must be between 1 and 100"
        ]
    );
}

#[test]
fn abandoned_trials_leave_room_for_others() {
    run(&[
        (0, Fail, true, Closed),
        (1, Fail, true, Closed),
        (2, Fail, true, Closed),
        (3, Fail, true, Open),
        // Both trials are given up by their callers: it stays half-open, with room for two more.
        (503, Gone, true, HalfOpen),
        (504, Gone, true, HalfOpen),
        (505, Good, true, HalfOpen),
        (506, Good, true, Closed),
    ]);
}
