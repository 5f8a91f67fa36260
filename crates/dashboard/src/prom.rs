//! Reading the Prometheus text exposition format (what every role's `/metrics` writes): samples
//! with their labels, and the arithmetic the dashboard needs on them (sums, histogram quantiles).

/// One sample line: `name{label="value",...} 12.5`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    pub(crate) name: String,
    pub(crate) labels: Vec<(String, String)>,
    pub(crate) value: f64,
}

impl Sample {
    /// The value of label `key`, if the sample has it.
    pub(crate) fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Every sample of a page, in page order. Comments, blank lines and lines that do not parse are
/// skipped: a page is read as far as it makes sense, never refused as a whole.
pub(crate) fn parse(page: &str) -> Vec<Sample> {
    page.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(inner)?;
        labels = parsed;
        rest = after;
    }
    // The value, then an optional timestamp.
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Labels up to the closing `}`; returns them and what follows.
fn parse_labels(mut s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches([' ', ',']);
        if let Some(after) = s.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim().to_string();
        s = s[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        labels.push((key, value));
        s = &s[end + 1..];
    }
}

/// A cumulative histogram: `(upper bound, count at or below it)` in bound order, `+Inf` last.
pub(crate) type Buckets = Vec<(f64, f64)>;

/// Adds the `_bucket` samples of histogram `name` that `keep` accepts, bound by bound (several
/// series, e.g. one per route, become one histogram).
pub(crate) fn buckets(samples: &[Sample], name: &str, keep: impl Fn(&Sample) -> bool) -> Buckets {
    let bucket = format!("{name}_bucket");
    let mut out: Buckets = Vec::new();
    for s in samples.iter().filter(|s| s.name == bucket && keep(s)) {
        let Some(le) = s.label("le").and_then(|le| match le {
            "+Inf" => Some(f64::INFINITY),
            v => v.parse::<f64>().ok(),
        }) else {
            continue;
        };
        match out.iter_mut().find(|(b, _)| *b == le) {
            Some((_, n)) => *n += s.value,
            None => out.push((le, s.value)),
        }
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// `now - before`, bound by bound (what was observed between two scrapes). A bound missing before
/// counts from zero; a counter that went down (the instance restarted) counts from zero too.
pub(crate) fn delta(now: &Buckets, before: &Buckets) -> Buckets {
    now.iter()
        .map(|(le, n)| {
            let b = before
                .iter()
                .find(|(l, _)| l == le)
                .map_or(0.0, |(_, b)| *b);
            (*le, if *n >= b { n - b } else { *n })
        })
        .collect()
}

/// The `q` quantile (0..1) of a cumulative histogram, interpolated linearly inside the bucket it
/// falls in, as Prometheus's `histogram_quantile` does; `None` without observations. A quantile in
/// the `+Inf` bucket is the highest finite bound.
pub(crate) fn quantile(buckets: &Buckets, q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, n) in buckets {
        if n >= rank {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let in_bucket = n - prev.1;
            let share = if in_bucket > 0.0 {
                (rank - prev.1) / in_bucket
            } else {
                1.0
            };
            return Some(prev.0 + (le - prev.0) * share);
        }
        prev = (le, n);
    }
    Some(prev.0)
}

/// The sum of every sample named `name` that `keep` accepts.
pub(crate) fn sum(samples: &[Sample], name: &str, keep: impl Fn(&Sample) -> bool) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && keep(s))
        .map(|s| s.value)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# HELP scalelab_http_requests_total Requests.
# TYPE scalelab_http_requests_total counter
scalelab_http_requests_total{role="gateway",id="gateway-1",route="/data/{key}",method="GET",status="200"} 40
scalelab_http_requests_total{role="gateway",id="gateway-1",route="/health",method="GET",status="200"} 3
scalelab_http_in_flight{role="gateway",id="gateway-1"} 2
weird{msg="a \"quoted\", comma"} 1 1700000000000
scalelab_d_bucket{route="/a",le="0.1"} 1
scalelab_d_bucket{route="/a",le="0.2"} 3
scalelab_d_bucket{route="/a",le="+Inf"} 4
scalelab_d_bucket{route="/b",le="0.1"} 1
scalelab_d_bucket{route="/b",le="0.2"} 1
scalelab_d_bucket{route="/b",le="+Inf"} 1
not a sample line
"#;

    #[test]
    fn samples_keep_their_labels_and_values() {
        let s = parse(PAGE);
        assert_eq!(s.len(), 10, "the line that does not parse is skipped");
        assert_eq!(s[0].label("route"), Some("/data/{key}"));
        assert_eq!(s[0].value, 40.0);
        assert_eq!(s[3].label("msg"), Some("a \"quoted\", comma"));
        assert_eq!(s[3].value, 1.0, "a timestamp after the value is ignored");
        let not_health = sum(&s, "scalelab_http_requests_total", |s| {
            s.label("route") != Some("/health")
        });
        assert_eq!(not_health, 40.0);
    }

    #[test]
    fn histograms_add_up_across_series_and_give_quantiles() {
        let s = parse(PAGE);
        let b = buckets(&s, "scalelab_d", |_| true);
        assert_eq!(b, vec![(0.1, 2.0), (0.2, 4.0), (f64::INFINITY, 5.0)]);
        // Rank 2.5 of 5 falls in (0.1, 0.2], a quarter of the way through its 2 observations.
        assert!((quantile(&b, 0.5).unwrap() - 0.125).abs() < 1e-9);
        // Rank 4.95 is in +Inf: the highest finite bound.
        assert_eq!(quantile(&b, 0.99), Some(0.2));
        assert_eq!(quantile(&vec![(0.1, 0.0), (f64::INFINITY, 0.0)], 0.5), None);
    }

    #[test]
    fn a_delta_counts_what_happened_between_scrapes_and_survives_a_restart() {
        let before = vec![(0.1, 5.0), (f64::INFINITY, 10.0)];
        let now = vec![(0.1, 6.0), (f64::INFINITY, 14.0)];
        assert_eq!(delta(&now, &before), vec![(0.1, 1.0), (f64::INFINITY, 4.0)]);
        // The instance restarted: its counters start again from zero.
        let restarted = vec![(0.1, 1.0), (f64::INFINITY, 2.0)];
        assert_eq!(delta(&restarted, &before), restarted);
    }
}
