//! The arithmetic of the findings: how even a distribution is, how many times faster or larger
//! one figure is than another, and how the scorecard words it. Pure functions, tested here.

use serde::Serialize;

/// A distribution is "even" when every share is within this fraction of the fair share
/// (1/n): 5% means 47.5%..52.5% for two instances.
pub(super) const EVEN_TOLERANCE: f64 = 0.05;

/// One instance's part of a [`Spread`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(super) struct Share {
    /// The instance id.
    pub(super) id: String,
    /// Answers it gave.
    pub(super) count: u64,
    /// Percent of the answers counted in the spread.
    pub(super) percent: f64,
}

/// How answers spread over instances.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(super) struct Spread {
    /// The expected instances in the order given, then any other seen.
    pub(super) shares: Vec<Share>,
    /// The largest relative deviation of a share from the fair share (0.02 = 2%).
    pub(super) max_deviation: f64,
    /// `max_deviation <= EVEN_TOLERANCE` and every expected instance answered.
    pub(super) even: bool,
}

/// The spread of `counts` over the `expected` instances (an expected instance absent from
/// `counts` has a share of 0).
pub(super) fn spread(expected: &[String], counts: &[(String, u64)]) -> Spread {
    let count_of = |id: &str| {
        counts
            .iter()
            .filter(|(i, _)| i == id)
            .map(|(_, n)| *n)
            .sum::<u64>()
    };
    let mut ids: Vec<String> = expected.to_vec();
    for (id, _) in counts {
        if !ids.contains(id) {
            ids.push(id.clone());
        }
    }
    let total: u64 = ids.iter().map(|id| count_of(id)).sum();
    let fair = 1.0 / ids.len().max(1) as f64;
    let mut max_deviation: f64 = 0.0;
    let shares = ids
        .iter()
        .map(|id| {
            let n = count_of(id);
            let share = if total == 0 {
                0.0
            } else {
                n as f64 / total as f64
            };
            max_deviation = max_deviation.max((share / fair - 1.0).abs());
            Share {
                id: id.clone(),
                count: n,
                percent: 100.0 * share,
            }
        })
        .collect();
    Spread {
        shares,
        max_deviation,
        even: total > 0 && max_deviation <= EVEN_TOLERANCE,
    }
}

/// `a / b`, or `None` when `b` is not positive.
pub(super) fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite()).then(|| a / b)
}

/// A factor as people say it: `35x`, `2.8x`, `1.05x`.
pub(super) fn times(x: f64) -> String {
    if x >= 10.0 {
        format!("{x:.0}x")
    } else if x >= 1.995 {
        format!("{x:.1}x")
    } else {
        format!("{x:.2}x")
    }
}

/// Percent with one decimal: `97.3%`.
pub(super) fn pct(fraction: f64) -> String {
    format!("{:.1}%", 100.0 * fraction)
}

/// Scaling efficiency: the throughput with `n` instances over `n` times the throughput with one
/// (1.0 = perfectly linear).
pub(super) fn efficiency(rps_one: f64, rps_n: f64, n: usize) -> Option<f64> {
    ratio(rps_n, rps_one * n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn counts(v: &[(&str, u64)]) -> Vec<(String, u64)> {
        v.iter().map(|(s, n)| (s.to_string(), *n)).collect()
    }

    #[test]
    fn an_even_split_is_even() {
        let s = spread(
            &ids(&["gateway-1", "gateway-2"]),
            &counts(&[("gateway-1", 501), ("gateway-2", 499)]),
        );
        assert!(s.even);
        assert!((s.max_deviation - 0.002).abs() < 1e-9, "{s:?}");
        assert_eq!(s.shares[0].id, "gateway-1");
        assert!((s.shares[0].percent - 50.1).abs() < 1e-9);
    }

    #[test]
    fn a_skewed_split_is_not_even() {
        // 40/60 is 20% off the fair 50%.
        let s = spread(&ids(&["a", "b"]), &counts(&[("a", 400), ("b", 600)]));
        assert!(!s.even);
        assert!((s.max_deviation - 0.2).abs() < 1e-9);
    }

    #[test]
    fn a_missing_instance_counts_as_zero_and_breaks_evenness() {
        let s = spread(
            &ids(&["service-1", "service-2", "service-3"]),
            &counts(&[("service-1", 50), ("service-2", 50)]),
        );
        assert_eq!(s.shares.len(), 3);
        assert_eq!(
            s.shares[2],
            Share {
                id: "service-3".into(),
                count: 0,
                percent: 0.0
            }
        );
        assert!(!s.even);
        assert!((s.max_deviation - 1.0).abs() < 1e-9);
    }

    #[test]
    fn an_unexpected_instance_is_listed_too() {
        let s = spread(&ids(&["a"]), &counts(&[("a", 10), ("b", 10)]));
        assert_eq!(s.shares.len(), 2);
        assert!(s.even);
    }

    #[test]
    fn nothing_counted_is_not_even() {
        assert!(!spread(&ids(&["a", "b"]), &[]).even);
    }

    #[test]
    fn factors_read_naturally() {
        assert_eq!(times(35.4), "35x");
        assert_eq!(times(2.84), "2.8x");
        assert_eq!(times(1.049), "1.05x");
        assert_eq!(pct(0.9731), "97.3%");
        assert_eq!(ratio(10.0, 0.0), None);
        assert_eq!(ratio(10.0, 4.0), Some(2.5));
        assert_eq!(efficiency(100.0, 270.0, 3), Some(0.9));
    }
}
