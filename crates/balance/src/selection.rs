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
    /// Two random candidates, the less loaded wins (Envoy's default least-request).
    PowerOfTwoChoices,
}

impl Strategy {
    /// A fresh instance of the strategy.
    pub fn build(self) -> Arc<dyn Selection> {
        match self {
            Strategy::RoundRobin => Arc::new(RoundRobin::default()),
            Strategy::LeastConnections => Arc::new(LeastConnections::default()),
            Strategy::PowerOfTwoChoices => Arc::new(PowerOfTwoChoices),
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

/// Power of two choices: two random candidates, the one with fewer requests in flight wins.
#[derive(Debug, Default)]
pub struct PowerOfTwoChoices;

impl Selection for PowerOfTwoChoices {
    fn name(&self) -> &'static str {
        "power_of_two_choices"
    }

    fn select(&self, backends: &[Arc<Backend>], candidates: &[usize]) -> usize {
        let mut rng = rand::thread_rng();
        let a = candidates[rng.gen_range(0..candidates.len())];
        let b = candidates[rng.gen_range(0..candidates.len())];
        if backends[b].in_flight() < backends[a].in_flight() {
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
    fn strategies_parse_from_their_config_names() {
        for (name, s) in [
            ("round_robin", Strategy::RoundRobin),
            ("least_connections", Strategy::LeastConnections),
            ("power_of_two_choices", Strategy::PowerOfTwoChoices),
        ] {
            let parsed: Strategy = serde_json::from_str(&format!("\"{name}\"")).unwrap();
            assert_eq!(parsed, s);
            assert_eq!(parsed.build().name(), name);
        }
    }
}
