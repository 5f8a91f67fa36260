//! The outcome of a run: [`Report`] (serialisable; `schema/report.schema.json` describes its JSON)
//! and the aggregation of per-connection [`Chunk`]s into it.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Version of the JSON layout; bumped on incompatible changes.
pub const SCHEMA_VERSION: u32 = 1;

/// Significant digits of the run-wide latency histograms (values in microseconds).
pub(crate) const SIGFIG: u8 = 3;
/// Significant digits of the per-second histograms: 1% is plenty for a time-series chart and keeps
/// a long run's memory small.
const SECOND_SIGFIG: u8 = 2;

/// Everything measured in one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// What was asked for.
    pub config: ReportConfig,
    /// Unix time (seconds) when the first request was sent.
    pub started_at_unix_s: f64,
    /// Seconds from the first send to the last answer.
    pub elapsed_s: f64,
    /// Whether the run was cut short by the stop signal (Ctrl-C).
    pub stopped_early: bool,
    /// Requests answered (any status), failed, and their sum.
    pub requests: RequestCounts,
    /// Answered requests per second of `elapsed_s`.
    pub rps: f64,
    /// Latency of every answered request (open model: from its intended send time).
    pub latency: LatencySummary,
    /// Latency histogram in logarithmic buckets, for charts.
    pub latency_histogram: Vec<HistogramBucket>,
    /// One entry per second of the run, by completion time.
    pub timeline: Vec<SecondSample>,
    /// Count per HTTP status code (keys are the codes as strings).
    pub status_codes: BTreeMap<String, u64>,
    /// Failed requests by kind.
    pub errors: ErrorCounts,
    /// Distribution of answers over the instances named in `X-Served-By`.
    pub instances: Vec<InstanceShare>,
    /// Cache outcome from `X-Cache`.
    pub cache: CacheSummary,
    /// With [`Plan::count_field`](crate::Plan::count_field): answers per value of that JSON body
    /// field (percent of all answers), sorted by value. Absent from the JSON otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub field_counts: Vec<InstanceShare>,
}

/// The parameters of the run, as recorded in the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportConfig {
    /// URL templates, used round robin.
    pub urls: Vec<String>,
    /// HTTP method.
    pub method: String,
    /// `closed` or `open`.
    pub model: String,
    /// Connections.
    pub connections: u64,
    /// Target rate (open model only).
    pub rate: Option<f64>,
    /// Duration limit in seconds, if any.
    pub duration_s: Option<f64>,
    /// Request count limit, if any.
    pub request_limit: Option<u64>,
    /// Per-request timeout in seconds.
    pub timeout_s: f64,
    /// The JSON body field whose values are counted ([`Report::field_counts`]), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count_field: Option<String>,
}

/// Counts of requests.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RequestCounts {
    /// Answered plus failed.
    pub total: u64,
    /// Requests that got a complete HTTP answer, whatever its status.
    pub answered: u64,
    /// Requests that failed (see `errors`).
    pub failed: u64,
    /// Open model: answered requests sent after their intended time because the previous answer
    /// kept their connection busy; their latency counts from the intended time (coordinated
    /// omission corrected). A target that keeps up with the rate has none; always 0 in the closed
    /// model. (Absent from reports written before it existed: read as 0.)
    #[serde(default)]
    pub late: u64,
}

/// Percentiles and moments of a latency histogram, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Number of samples.
    pub count: u64,
    /// Smallest sample.
    pub min_ms: f64,
    /// Arithmetic mean.
    pub mean_ms: f64,
    /// Standard deviation.
    pub stdev_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
}

/// One bucket of the latency histogram.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistogramBucket {
    /// Inclusive upper bound of the bucket, in milliseconds (the lower bound is the previous
    /// bucket's upper bound, or 0).
    pub upper_ms: f64,
    /// Samples in the bucket.
    pub count: u64,
}

/// One second of the run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecondSample {
    /// Seconds since the start (0 = the first second).
    pub second: u64,
    /// Answers completed in this second.
    pub requests: u64,
    /// Failures in this second.
    pub errors: u64,
    /// Median latency of this second's answers (0 when none).
    pub p50_ms: f64,
    /// 99th percentile latency of this second's answers (0 when none).
    pub p99_ms: f64,
}

/// Failed requests by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCounts {
    /// TCP connect or HTTP handshake failed.
    pub connect: u64,
    /// No complete answer within `--timeout`.
    pub timeout: u64,
    /// The connection was closed or reset mid-request.
    pub reset: u64,
    /// Anything else (protocol errors, unusable URI).
    pub other: u64,
}

impl ErrorCounts {
    /// All failures.
    pub fn total(&self) -> u64 {
        self.connect + self.timeout + self.reset + self.other
    }

    fn add(&mut self, o: &ErrorCounts) {
        self.connect += o.connect;
        self.timeout += o.timeout;
        self.reset += o.reset;
        self.other += o.other;
    }
}

/// Answers from one instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceShare {
    /// The `X-Served-By` value.
    pub id: String,
    /// Answers carrying it.
    pub count: u64,
    /// Share of all answers, in percent (answers without the header count in the denominator).
    pub percent: f64,
}

/// Cache outcome.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CacheSummary {
    /// Answers with `X-Cache: HIT`.
    pub hits: u64,
    /// Answers with `X-Cache: MISS`.
    pub misses: u64,
    /// hits / (hits + misses), or null without any.
    pub hit_ratio: Option<f64>,
    /// Latency of hits, null without any.
    pub hit_latency: Option<LatencySummary>,
    /// Latency of misses, null without any.
    pub miss_latency: Option<LatencySummary>,
    /// Miss p50 / hit p50: how many times faster a hit is; null unless both exist.
    pub speedup_p50: Option<f64>,
}

pub(crate) fn new_histogram(sigfig: u8) -> Histogram<u64> {
    // Auto-resizing: starts small and grows to the largest value seen, so an idle or fast
    // connection costs little memory. `new` only fails for sigfig > 5.
    Histogram::new(sigfig).expect("valid significant digits")
}

/// What one connection measured during one second (by completion time); sent to the aggregator
/// when the connection moves on to the next second and at its end.
#[derive(Debug)]
pub(crate) struct Chunk {
    pub(crate) second: u64,
    pub(crate) latency: Histogram<u64>,
    pub(crate) hit: Option<Histogram<u64>>,
    pub(crate) miss: Option<Histogram<u64>>,
    pub(crate) answered: u64,
    /// Answers of requests sent late (open model; see [`RequestCounts::late`]).
    pub(crate) late: u64,
    pub(crate) errors: ErrorCounts,
    /// Few distinct codes per run: a linear scan beats hashing.
    pub(crate) status: Vec<(u16, u64)>,
    /// Few instances per run; allocated only the first time a value is seen in this second.
    pub(crate) served_by: Vec<(Box<str>, u64)>,
    pub(crate) hits: u64,
    pub(crate) misses: u64,
    /// Values of the plan's counted body field, like `served_by`.
    pub(crate) fields: Vec<(Box<str>, u64)>,
}

impl Chunk {
    pub(crate) fn new(second: u64) -> Self {
        Chunk {
            second,
            latency: new_histogram(SIGFIG),
            hit: None,
            miss: None,
            answered: 0,
            late: 0,
            errors: ErrorCounts::default(),
            status: Vec::new(),
            served_by: Vec::new(),
            hits: 0,
            misses: 0,
            fields: Vec::new(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.answered == 0 && self.errors.total() == 0
    }

    pub(crate) fn record_status(&mut self, code: u16) {
        match self.status.iter_mut().find(|(c, _)| *c == code) {
            Some((_, n)) => *n += 1,
            None => self.status.push((code, 1)),
        }
    }

    pub(crate) fn record_served_by(&mut self, id: &[u8]) {
        match self.served_by.iter_mut().find(|(s, _)| s.as_bytes() == id) {
            Some((_, n)) => *n += 1,
            None => self.served_by.push((String::from_utf8_lossy(id).into(), 1)),
        }
    }

    pub(crate) fn record_field(&mut self, value: &str) {
        match self.fields.iter_mut().find(|(s, _)| &**s == value) {
            Some((_, n)) => *n += 1,
            None => self.fields.push((value.into(), 1)),
        }
    }
}

#[derive(Debug)]
struct SecondAgg {
    latency: Histogram<u64>,
    requests: u64,
    errors: u64,
}

/// The run-wide totals, built by merging chunks as they arrive.
#[derive(Debug)]
pub(crate) struct Aggregate {
    pub(crate) latency: Histogram<u64>,
    hit: Histogram<u64>,
    miss: Histogram<u64>,
    pub(crate) answered: u64,
    late: u64,
    pub(crate) errors: ErrorCounts,
    status: BTreeMap<u16, u64>,
    served_by: BTreeMap<String, u64>,
    fields: BTreeMap<String, u64>,
    hits: u64,
    misses: u64,
    seconds: Vec<SecondAgg>,
}

impl Aggregate {
    pub(crate) fn new() -> Self {
        Aggregate {
            latency: new_histogram(SIGFIG),
            hit: new_histogram(SIGFIG),
            miss: new_histogram(SIGFIG),
            answered: 0,
            late: 0,
            errors: ErrorCounts::default(),
            status: BTreeMap::new(),
            served_by: BTreeMap::new(),
            fields: BTreeMap::new(),
            hits: 0,
            misses: 0,
            seconds: Vec::new(),
        }
    }

    pub(crate) fn merge(&mut self, chunk: Chunk) {
        // Adding to an auto-resizing histogram cannot fail.
        let _ = self.latency.add(&chunk.latency);
        if let Some(h) = &chunk.hit {
            let _ = self.hit.add(h);
        }
        if let Some(h) = &chunk.miss {
            let _ = self.miss.add(h);
        }
        self.answered += chunk.answered;
        self.late += chunk.late;
        self.errors.add(&chunk.errors);
        for (code, n) in chunk.status {
            *self.status.entry(code).or_default() += n;
        }
        for (id, n) in chunk.served_by {
            match self.served_by.get_mut(&*id) {
                Some(c) => *c += n,
                None => {
                    self.served_by.insert(id.into(), n);
                }
            }
        }
        for (value, n) in chunk.fields {
            *self.fields.entry(value.into()).or_default() += n;
        }
        self.hits += chunk.hits;
        self.misses += chunk.misses;
        let s = chunk.second as usize;
        while self.seconds.len() <= s {
            self.seconds.push(SecondAgg {
                latency: new_histogram(SECOND_SIGFIG),
                requests: 0,
                errors: 0,
            });
        }
        let second = &mut self.seconds[s];
        let _ = second.latency.add(&chunk.latency);
        second.requests += chunk.answered;
        second.errors += chunk.errors.total();
    }

    /// Answers completed in second `s` so far.
    pub(crate) fn requests_in(&self, s: u64) -> u64 {
        self.seconds.get(s as usize).map_or(0, |x| x.requests)
    }

    pub(crate) fn into_report(
        self,
        config: ReportConfig,
        started_at_unix_s: f64,
        elapsed_s: f64,
        stopped_early: bool,
    ) -> Report {
        let total_with_header: u64 = self.served_by.values().sum();
        let denominator = self.answered.max(total_with_header).max(1) as f64;
        let shares = |counts: &BTreeMap<String, u64>, denominator: f64| -> Vec<InstanceShare> {
            counts
                .iter()
                .map(|(id, &count)| InstanceShare {
                    id: id.clone(),
                    count,
                    percent: 100.0 * count as f64 / denominator,
                })
                .collect()
        };
        let instances = shares(&self.served_by, denominator);
        let field_total: u64 = self.fields.values().sum();
        let field_counts = shares(&self.fields, self.answered.max(field_total).max(1) as f64);
        let summary = |h: &Histogram<u64>| (!h.is_empty()).then(|| summarize(h));
        let hit_latency = summary(&self.hit);
        let miss_latency = summary(&self.miss);
        let speedup_p50 = match (&hit_latency, &miss_latency) {
            (Some(h), Some(m)) if h.p50_ms > 0.0 => Some(m.p50_ms / h.p50_ms),
            _ => None,
        };
        let looked_up = self.hits + self.misses;
        Report {
            schema_version: SCHEMA_VERSION,
            config,
            started_at_unix_s,
            elapsed_s,
            stopped_early,
            requests: RequestCounts {
                total: self.answered + self.errors.total(),
                answered: self.answered,
                failed: self.errors.total(),
                late: self.late,
            },
            rps: if elapsed_s > 0.0 {
                self.answered as f64 / elapsed_s
            } else {
                0.0
            },
            latency: summarize(&self.latency),
            latency_histogram: buckets(&self.latency),
            timeline: self
                .seconds
                .iter()
                .enumerate()
                .map(|(i, s)| SecondSample {
                    second: i as u64,
                    requests: s.requests,
                    errors: s.errors,
                    p50_ms: ms(s.latency.value_at_quantile(0.5)),
                    p99_ms: ms(s.latency.value_at_quantile(0.99)),
                })
                .collect(),
            status_codes: self
                .status
                .iter()
                .map(|(c, n)| (c.to_string(), *n))
                .collect(),
            errors: self.errors,
            instances,
            cache: CacheSummary {
                hits: self.hits,
                misses: self.misses,
                hit_ratio: (looked_up > 0).then(|| self.hits as f64 / looked_up as f64),
                hit_latency,
                miss_latency,
                speedup_p50,
            },
            field_counts,
        }
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Percentiles of a histogram of microseconds, in milliseconds.
pub(crate) fn summarize(h: &Histogram<u64>) -> LatencySummary {
    if h.is_empty() {
        return LatencySummary::default();
    }
    LatencySummary {
        count: h.len(),
        min_ms: ms(h.min()),
        mean_ms: h.mean() / 1000.0,
        stdev_ms: h.stdev() / 1000.0,
        p50_ms: ms(h.value_at_quantile(0.5)),
        p90_ms: ms(h.value_at_quantile(0.9)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
    }
}

/// Logarithmic buckets (four per doubling) from the smallest to the largest sample.
fn buckets(h: &Histogram<u64>) -> Vec<HistogramBucket> {
    if h.is_empty() {
        return Vec::new();
    }
    let start = h.min().max(1);
    h.iter_log(start, 2f64.powf(0.25))
        .map(|v| HistogramBucket {
            upper_ms: ms(v.value_iterated_to()),
            count: v.count_since_last_iteration(),
        })
        .collect()
}
