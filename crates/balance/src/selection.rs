//! Which backend takes the next request.
//!
//! A strategy sees every backend and the indices of the candidates (healthy and not yet tried for
//! this request) and picks one candidate. Strategies keep only their own small state (a counter);
//! health and retries are the pool's business, so a new strategy is a few lines.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::backend::Backend;

/// A backend selection strategy.
pub trait Selection: Send + Sync + Debug {
    /// Its name in configs and stats (`round_robin`).
    fn name(&self) -> &'static str;

    /// Picks one of `candidates` (indices into `backends`, never empty).
    fn select(&self, backends: &[Arc<Backend>], candidates: &[usize]) -> usize;
}

/// The strategies a topology file can name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Each backend in turn (nginx's and HAProxy's default).
    #[default]
    RoundRobin,
    /// The backend with the fewest requests in flight; ties in turn.
    LeastConnections,
    /// Two distinct random candidates, the one with fewer requests in flight wins (Envoy's
    /// default least-request).
    PowerOfTwoChoices,
    /// Two distinct random candidates, the one with the lower Peak-EWMA cost wins: round-trip
    /// estimate × (in flight + 1) (linkerd's and tower's `p2c` over `PeakEwma`), so a slow
    /// backend gets little even when it has as few requests in flight as a fast one.
    PeakEwma,
}

impl Strategy {
    /// A fresh instance of the strategy.
    pub fn build(self) -> Arc<dyn Selection> {
        match self {
            Strategy::RoundRobin => Arc::new(RoundRobin::default()),
            Strategy::LeastConnections => Arc::new(LeastConnections::default()),
            Strategy::PowerOfTwoChoices => Arc::new(PowerOfTwoChoices),
            Strategy::PeakEwma => Arc::new(PeakEwma),
        }
    }
}

/// Each backend in turn; unhealthy ones are skipped without upsetting the turn of the others.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Selection for RoundRobin {
    fn name(&self) -> &'static str {
        "round_robin"
    }

    fn select(&self, _backends: &[Arc<Backend>], candidates: &[usize]) -> usize {
        // Turn over the candidates, not over all backends: when one backend is out, walking the
        // whole ring would hand its turns to its neighbour, which would then get twice the share.
        candidates[self.next.fetch_add(1, Ordering::Relaxed) % candidates.len()]
    }
}

/// The candidate with the fewest requests in flight; ties go round robin.
#[derive(Debug, Default)]
pub struct LeastConnections {
    next: AtomicUsize,
}

impl Selection for LeastConnections {
    fn name(&self) -> &'static str {
        "least_connections"
    }

    fn select(&self, backends: &[Arc<Backend>], candidates: &[usize]) -> usize {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let len = candidates.len();
        (0..len)
            .map(|i| candidates[(start + i) % len])
            .min_by_key(|&i| backends[i].in_flight())
            .unwrap_or(candidates[0])
    }
}

/// Two distinct candidates drawn at random (the first of the pair is the first drawn).
///
/// Drawn with replacement, half the draws over two backends would compare a backend with itself,
/// and a backend that is slow would get a quarter of the requests whatever its load: the second
/// draw is from the candidates left once the first is set aside.
pub fn two_distinct(candidates: &[usize]) -> (usize, usize) {
    let n = candidates.len();
    if n < 2 {
        return (candidates[0], candidates[0]);
    }
    let mut rng = rand::thread_rng();
    let a = rng.gen_range(0..n);
    let mut b = rng.gen_range(0..n - 1);
    if b >= a {
        b += 1;
    }
    (candidates[a], candidates[b])
}

/// Power of two choices: two distinct random candidates, the one with fewer requests in flight wins.
#[derive(Debug, Default)]
pub struct PowerOfTwoChoices;

impl Selection for PowerOfTwoChoices {
    fn name(&self) -> &'static str {
        "power_of_two_choices"
    }

    fn select(&self, backends: &[Arc<Backend>], candidates: &[usize]) -> usize {
        let (a, b) = two_distinct(candidates);
        if backends[b].in_flight() < backends[a].in_flight() {
            b
        } else {
            a
        }
    }
}

/// Power of two choices over Peak-EWMA cost (linkerd, tower's `p2c` + `PeakEwma`): two distinct
/// random candidates, the one with the lower round-trip estimate × (in flight + 1) wins. The
/// estimate follows a slow answer at once and forgets it over about 10 s (`backend::DECAY_NS`);
/// a new backend starts at `backend::DEFAULT_RTT`.
#[derive(Debug, Default)]
pub struct PeakEwma;

impl Selection for PeakEwma {
    fn name(&self) -> &'static str {
        "peak_ewma"
    }

    fn select(&self, backends: &[Arc<Backend>], candidates: &[usize]) -> usize {
        let (a, b) = two_distinct(candidates);
        if a == b {
            return a;
        }
        let now = crate::clock::now_ns();
        if backends[b].peak_ewma_cost(now) < backends[a].peak_ewma_cost(now) {
            b
        } else {
            a
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(n: usize) -> Vec<Arc<Backend>> {
        (0..n)
            .map(|i| Backend::new(&format!("http://127.0.0.1:{}", 10_000 + i), 1))
            .collect()
    }

    fn count(
        sel: &dyn Selection,
        b: &[Arc<Backend>],
        cands: &[usize],
        rounds: usize,
    ) -> Vec<usize> {
        let mut seen = vec![0; b.len()];
        for _ in 0..rounds {
            seen[sel.select(b, cands)] += 1;
        }
        seen
    }

    #[test]
    fn round_robin_is_even_and_skips_the_missing() {
        let b = backends(3);
        assert_eq!(
            count(&RoundRobin::default(), &b, &[0, 1, 2], 300),
            vec![100, 100, 100]
        );
        // Backend 1 is out: the other two still alternate exactly.
        let rr = RoundRobin::default();
        let picks: Vec<usize> = (0..6).map(|_| rr.select(&b, &[0, 2])).collect();
        let zeros = picks.iter().filter(|&&p| p == 0).count();
        assert_eq!(zeros, 3, "{picks:?}");
    }

    #[test]
    fn least_connections_prefers_the_idle_backend() {
        let b = backends(3);
        let _busy0 = b[0].start();
        let _busy0b = b[0].start();
        let _busy2 = b[2].start();
        let lc = LeastConnections::default();
        for _ in 0..10 {
            assert_eq!(lc.select(&b, &[0, 1, 2]), 1);
        }
        // Ties are shared in turn, not always the first.
        let idle = backends(2);
        assert_eq!(count(&lc, &idle, &[0, 1], 100), vec![50, 50]);
    }

    #[test]
    fn in_flight_ends_when_the_guard_drops() {
        let b = backends(1);
        let g = b[0].start();
        assert_eq!(b[0].in_flight(), 1);
        drop(g);
        assert_eq!(b[0].in_flight(), 0);
    }

    #[test]
    fn p2c_never_picks_outside_the_candidates() {
        let b = backends(4);
        let seen = count(&PowerOfTwoChoices, &b, &[1, 3], 200);
        assert_eq!(seen[0] + seen[2], 0);
        assert!(seen[1] > 0 && seen[3] > 0);
    }

    #[test]
    fn p2c_draws_two_distinct_backends() {
        // Over two backends every draw is the pair, in either order; never one twice.
        let mut orders = [0usize; 2];
        for _ in 0..400 {
            let (a, b) = two_distinct(&[3, 7]);
            assert_ne!(a, b);
            orders[usize::from(a == 7)] += 1;
        }
        assert!(orders[0] > 0 && orders[1] > 0, "{orders:?}");
        // Over five, every pair is distinct and within the candidates.
        for _ in 0..400 {
            let (a, b) = two_distinct(&[0, 2, 4, 6, 8]);
            assert_ne!(a, b);
            assert!(a % 2 == 0 && b % 2 == 0 && a <= 8 && b <= 8);
        }
        assert_eq!(two_distinct(&[5]), (5, 5));
    }

    #[test]
    fn p2c_over_two_backends_always_sends_to_the_less_loaded() {
        // With replacement, a quarter of the draws would be (busy, busy): the busy backend
        // would still get about a quarter of the requests.
        let b = backends(2);
        let _busy = b[0].start();
        assert_eq!(count(&PowerOfTwoChoices, &b, &[0, 1], 400), vec![0, 400]);
    }

    #[test]
    fn peak_ewma_prefers_the_fast_backend_and_forgets_slowness_in_time() {
        let b = backends(2);
        // For a minute, once a second, backend 0 answered in 50 ms and backend 1 in 1 ms. (The
        // strategy reads the real clock, which is before these times: it sees the estimates as
        // they were left.)
        let start = crate::clock::now_ns();
        let mut now = start;
        for _ in 0..60 {
            now += 1_000_000_000;
            b[0].record_answer(std::time::Duration::from_millis(50), false, now);
            b[1].record_answer(std::time::Duration::from_millis(1), false, now);
        }
        assert!(
            b[0].rtt_estimate_ns(now) > 49e6,
            "{}",
            b[0].rtt_estimate_ns(now)
        );
        assert!(
            b[1].rtt_estimate_ns(now) < 2e6,
            "{}",
            b[1].rtt_estimate_ns(now)
        );
        // The fast backend wins even with a few requests in flight (1 ms × 4 < 50 ms × 1).
        let _load: Vec<_> = (0..3).map(|_| b[1].start()).collect();
        assert_eq!(count(&PeakEwma, &b, &[0, 1], 200), vec![0, 200]);
        // Least-loaded P2C would have sent everything to the slow one.
        assert_eq!(count(&PowerOfTwoChoices, &b, &[0, 1], 200), vec![200, 0]);
        // The estimate decays towards zero when not fed: a minute later it is a small fraction.
        let later = now + 60_000_000_000;
        assert!(b[0].rtt_estimate_ns(later) < b[0].rtt_estimate_ns(now) / 100.0);
    }

    #[test]
    fn the_peak_ewma_step_takes_peaks_at_once_and_lower_values_gradually() {
        use crate::backend::{DECAY_NS, peak_ewma};
        // (estimate, ns since it was made, observed round trip, expected estimate)
        let tau = DECAY_NS as u64;
        let e1 = (-1.0f64).exp();
        let table: &[(f64, u64, f64, f64)] = &[
            // A peak replaces the estimate whatever the time.
            (10.0, 0, 50.0, 50.0),
            (10.0, tau, 50.0, 50.0),
            // No time passed: a lower value changes nothing.
            (50.0, 0, 10.0, 50.0),
            // One decay period: the old estimate keeps e^-1 of its weight.
            (50.0, tau, 10.0, 50.0 * e1 + 10.0 * (1.0 - e1)),
            // Decay alone (a zero observation) pulls towards zero.
            (50.0, tau, 0.0, 50.0 * e1),
        ];
        for &(prev, elapsed, rtt, want) in table {
            let got = peak_ewma(prev, elapsed, rtt);
            assert!(
                (got - want).abs() < 1e-9,
                "{prev} after {elapsed} ns with {rtt}: {got} != {want}"
            );
        }
    }

    #[test]
    fn strategies_parse_from_their_config_names() {
        for (name, s) in [
            ("round_robin", Strategy::RoundRobin),
            ("least_connections", Strategy::LeastConnections),
            ("power_of_two_choices", Strategy::PowerOfTwoChoices),
            ("peak_ewma", Strategy::PeakEwma),
        ] {
            let parsed: Strategy = serde_json::from_str(&format!("\"{name}\"")).unwrap();
            assert_eq!(parsed, s);
            assert_eq!(parsed.build().name(), name);
        }
    }
}
