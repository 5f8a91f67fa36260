//! The autoscaler's arithmetic: how many instances a role should have, decided the way Kubernetes'
//! Horizontal Pod Autoscaler (HPA) decides it, and explained in one line a student can follow.
//!
//! Each evaluation takes a [`Sample`] (the time, the ready instances, the metric summed over them)
//! and computes `raw = ceil(current × per_instance / target)`; a ratio within `tolerance` of 1 keeps
//! the current count. The recommendation is clamped to `[min, max]`, then stabilized (a scale-down
//! goes no lower than the highest recommendation of the last `down_stabilization_ms`, a scale-up no
//! higher than the lowest of the last `up_stabilization_ms`), then rate-limited (within one period
//! the count may move away from its value at the period's start by at most
//! `max(pods, ceil(percent% of that value))`). A missing metric never scales; a count outside
//! `[min, max]` is brought back within bounds whatever the metric says. The numbers of
//! [`Policy::hpa_defaults`] are the documented HPA defaults (tolerance 0.1, evaluation every 15 s,
//! stabilization 0 s up and 300 s down, up by max(100%, 4 pods) and down by 100% per 15 s);
//! [`Policy::demo`] runs the same rules on a clock fast enough to watch in class.
//!
//! The module does no I/O and never reads a clock: time comes in with each sample. The caller
//! builds one [`Autoscaler`] per role, calls [`Autoscaler::evaluate`] every `evaluate_every_ms`
//! (calling it more often is harmless: windows and limits are measured in time, not in calls),
//! starts or stops instances to reach [`Decision::desired`], reports each change it made with
//! [`Autoscaler::record_scale`], and publishes the [`Decision`] (it serializes to JSON) with its
//! `explanation`.

use serde::{Deserialize, Serialize};

/// Ratios within this distance of 1.0 do not scale (HPA's `--horizontal-pod-autoscaler-tolerance`).
const HPA_TOLERANCE: f64 = 0.1;
/// HPA's `--horizontal-pod-autoscaler-sync-period`.
const HPA_EVALUATE_EVERY_MS: u64 = 15_000;
/// HPA's default `behavior.scaleDown.stabilizationWindowSeconds` (scale-up has none by default).
const HPA_DOWN_STABILIZATION_MS: u64 = 300_000;
/// Kubernetes refuses stabilization windows longer than one hour; so does [`Policy::validate`].
const MAX_STABILIZATION_MS: u64 = 3_600_000;
/// Guards `ceil` against floating-point noise: `ceil(2.0000000000000004)` must stay 2, not 3.
const CEIL_EPSILON: f64 = 1e-9;

/// Which per-instance load figure a role is scaled on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Requests being served right now, per instance: for gateways and services, whose load is
    /// concurrent requests.
    InFlight,
    /// Tasks waiting in the queue, per worker (KEDA's `queueLength` trigger): for workers, whose
    /// backlog is what they have not yet picked up.
    QueueDepth,
}

impl Metric {
    /// How explanations name the metric: `in-flight` or `queue depth`.
    pub fn label(self) -> &'static str {
        match self {
            Metric::InFlight => "in-flight",
            Metric::QueueDepth => "queue depth",
        }
    }

    /// The name in the topology file: `in_flight` or `queue_depth`.
    fn config_name(self) -> &'static str {
        match self {
            Metric::InFlight => "in_flight",
            Metric::QueueDepth => "queue_depth",
        }
    }
}

/// How fast the count may change in one direction: within any `period_ms`, by at most the larger of
/// `percent`% of the count at the period's start (rounded up) and `pods` (HPA's scaling policies with
/// `selectPolicy: Max`). `percent = 0` and `pods = 0` disable scaling in that direction (HPA's
/// `selectPolicy: Disabled`). Written in full in the topology, e.g.
/// `up_limit = { percent = 100, pods = 4, period_ms = 15000 }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeLimit {
    /// Percent of the count at the period's start that may be added (or removed) per period.
    pub percent: u32,
    /// Number of instances that may be added (or removed) per period, whatever the count.
    pub pods: u32,
    /// The length of the period, in milliseconds.
    pub period_ms: u64,
}

impl ChangeLimit {
    /// The most instances one period may add or remove when it started with `start` instances:
    /// `max(pods, ceil(percent% × start))`.
    pub fn allowed_change(&self, start: u32) -> u32 {
        let by_percent = (u64::from(start) * u64::from(self.percent)).div_ceil(100);
        u32::try_from(by_percent).unwrap_or(u32::MAX).max(self.pods)
    }
}

/// `[autoscale.<role>]` of the topology: the bounds, the metric and target, and how eagerly to follow
/// them. Every field has a default (those of [`Policy::default`], i.e. HPA's); unknown fields are
/// refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// The fewest instances the role may have (default 1). 0 is allowed only with
    /// `metric = "queue_depth"`: a worker at 0 loses nothing (tasks wait in the queue, and the queue
    /// depth still brings a worker back), whereas a role with no instance receives no requests, so
    /// its in-flight count could never call it back.
    pub min: u32,
    /// The most instances the role may have (default 10); at least `min` and at least 1.
    pub max: u32,
    /// The load figure to follow (default `in_flight`).
    pub metric: Metric,
    /// The desired value of the metric per instance (default 10): 10 in-flight requests per gateway,
    /// or 10 queued tasks per worker.
    pub target: f64,
    /// How far from 1 the ratio per-instance/target may be without scaling (default 0.1, i.e. ±10%).
    pub tolerance: f64,
    /// How often the caller evaluates, in milliseconds (default 15000, HPA's sync period).
    pub evaluate_every_ms: u64,
    /// A scale-up goes no higher than the lowest recommendation of this many past milliseconds
    /// (default 0: scale up at once). At most one hour.
    pub up_stabilization_ms: u64,
    /// A scale-down goes no lower than the highest recommendation of this many past milliseconds
    /// (default 300000: load must stay low for 5 minutes). At most one hour.
    pub down_stabilization_ms: u64,
    /// How fast the count may rise (default: max(100%, 4 instances) per 15 s).
    pub up_limit: ChangeLimit,
    /// How fast the count may fall (default: 100% per 15 s, i.e. down to the recommendation at once).
    pub down_limit: ChangeLimit,
}

impl Default for Policy {
    /// [`Policy::hpa_defaults`] for `in_flight` with target 10, between 1 and 10 instances.
    fn default() -> Self {
        Policy::hpa_defaults(Metric::InFlight, 10.0, 1, 10)
    }
}

impl Policy {
    /// Kubernetes' documented HPA defaults: tolerance 0.1, evaluation every 15 s, no scale-up
    /// stabilization, 300 s scale-down stabilization, up by max(100%, 4 pods) per 15 s, down by
    /// 100% per 15 s.
    pub fn hpa_defaults(metric: Metric, target: f64, min: u32, max: u32) -> Policy {
        Policy {
            min,
            max,
            metric,
            target,
            tolerance: HPA_TOLERANCE,
            evaluate_every_ms: HPA_EVALUATE_EVERY_MS,
            up_stabilization_ms: 0,
            down_stabilization_ms: HPA_DOWN_STABILIZATION_MS,
            up_limit: ChangeLimit {
                percent: 100,
                pods: 4,
                period_ms: HPA_EVALUATE_EVERY_MS,
            },
            down_limit: ChangeLimit {
                percent: 100,
                pods: 0,
                period_ms: HPA_EVALUATE_EVERY_MS,
            },
        }
    }

    /// HPA's rules on a clock fast enough to watch in class: tolerance 0.1, evaluation every 1 s,
    /// no scale-up stabilization, 10 s scale-down stabilization, up by max(100%, 4 instances) per
    /// 1 s, down by 100% per 1 s.
    pub fn demo(metric: Metric, target: f64, min: u32, max: u32) -> Policy {
        Policy {
            evaluate_every_ms: 1_000,
            up_stabilization_ms: 0,
            down_stabilization_ms: 10_000,
            up_limit: ChangeLimit {
                percent: 100,
                pods: 4,
                period_ms: 1_000,
            },
            down_limit: ChangeLimit {
                percent: 100,
                pods: 0,
                period_ms: 1_000,
            },
            ..Policy::hpa_defaults(metric, target, min, max)
        }
    }

    /// Which preset the timing fields match: `"hpa"` ([`Policy::hpa_defaults`]), `"demo"`
    /// ([`Policy::demo`]) or `"custom"`. Bounds, metric and target do not count.
    pub fn profile_name(&self) -> &'static str {
        if *self == Policy::hpa_defaults(self.metric, self.target, self.min, self.max) {
            "hpa"
        } else if *self == Policy::demo(self.metric, self.target, self.min, self.max) {
            "demo"
        } else {
            "custom"
        }
    }

    /// Every problem with this policy, one `"field: problem"` line each; empty when it is usable.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.min == 0 && self.metric == Metric::InFlight {
            problems.push(
                "min: must be at least 1 with metric in_flight (a role with no instance receives \
                 no requests, so nothing could scale it back up); only queue_depth allows 0"
                    .to_owned(),
            );
        }
        if self.max == 0 {
            problems.push("max: must be at least 1".to_owned());
        } else if self.max < self.min {
            problems.push(format!(
                "max: must be at least min ({}), got {}",
                self.min, self.max
            ));
        }
        if !(self.target.is_finite() && self.target > 0.0) {
            problems.push(format!(
                "target: must be a positive number ({} per instance), got {}",
                self.metric.config_name(),
                self.target
            ));
        }
        if !(self.tolerance >= 0.0 && self.tolerance < 1.0) {
            problems.push(format!(
                "tolerance: must be at least 0 and below 1, got {}",
                self.tolerance
            ));
        }
        if self.evaluate_every_ms == 0 {
            problems.push("evaluate_every_ms: must be at least 1".to_owned());
        }
        for (field, window) in [
            ("up_stabilization_ms", self.up_stabilization_ms),
            ("down_stabilization_ms", self.down_stabilization_ms),
        ] {
            if window > MAX_STABILIZATION_MS {
                problems.push(format!(
                    "{field}: must be at most {MAX_STABILIZATION_MS} (one hour, as in Kubernetes), \
                     got {window}"
                ));
            }
        }
        for (field, limit) in [("up_limit", self.up_limit), ("down_limit", self.down_limit)] {
            if limit.period_ms == 0 {
                problems.push(format!("{field}.period_ms: must be at least 1"));
            }
        }
        if self.down_limit.percent > 100 {
            problems.push(format!(
                "down_limit.percent: must be at most 100 (a scale-down cannot remove more than \
                 every instance), got {}",
                self.down_limit.percent
            ));
        }
        problems
    }
}

/// What the caller observed at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// When, in milliseconds on the caller's clock (any origin, as long as it never jumps back).
    pub at_ms: u64,
    /// How many instances of the role are ready now.
    pub instances: u32,
    /// The metric summed over those instances (for `queue_depth`, the queue's length); `None` when
    /// it could not be read. A negative or non-finite value counts as missing.
    pub metric_total: Option<f64>,
}

/// One evaluation's outcome, with the numbers behind it; goes into the event stream as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// The role evaluated (`gateway`, `worker`, ...).
    pub role: String,
    /// The sample's time.
    pub at_ms: u64,
    /// The ready instances at that time.
    pub current: u32,
    /// How many instances the role should have, after every rule.
    pub desired: u32,
    /// `ceil(current × ratio)` before any rule (with 0 instances, `ceil(metric_total / target)`);
    /// `None` when the metric is missing.
    pub raw: Option<u32>,
    /// `per_instance / target`; `None` when the metric is missing or there is no instance.
    pub ratio: Option<f64>,
    /// `metric_total / current`; `None` when the metric is missing or there is no instance.
    pub per_instance: Option<f64>,
    /// The policy's target per instance.
    pub target: f64,
    /// The rules that decided `desired` instead of `raw`, in the order applied, as stable codes:
    /// `missing_metric`, `current_below_min`, `current_above_max` (the count itself was out of
    /// bounds), `within_tolerance`, `min`, `max` (the recommendation was clamped),
    /// `scale_up_stabilization`, `scale_down_stabilization`, `scale_up_limit`, `scale_down_limit`.
    pub reasons: Vec<String>,
    /// The same decision in one line of words, e.g. `gateway: in-flight 41.0/instance vs target 10
    /// → desired ceil(2 × 4.10) = 9, capped at max 6`.
    pub explanation: String,
}

impl Decision {
    /// Whether the caller has instances to start or stop.
    pub fn changes(&self) -> bool {
        self.desired != self.current
    }
}

/// A recommendation (after tolerance and bounds, before stabilization) and when it was made.
#[derive(Debug, Clone, Copy)]
struct Recommendation {
    at_ms: u64,
    instances: u32,
}

/// A change the caller made to the count, and when.
#[derive(Debug, Clone, Copy)]
struct ScaleEvent {
    at_ms: u64,
    /// Positive for instances added, negative for instances removed.
    change: i64,
}

/// The autoscaler of one role: its policy and the memory the HPA rules need.
#[derive(Debug, Clone)]
pub struct Autoscaler {
    role: String,
    policy: Policy,
    /// Past recommendations, oldest first, for the stabilization windows; dropped once older than
    /// both windows.
    recommendations: Vec<Recommendation>,
    /// Whether the first evaluation happened. Like the HPA controller, the first evaluation seeds
    /// the windows with the count it found, so that a freshly started autoscaler does not scale
    /// down before one scale-down window has passed.
    seeded: bool,
    /// Changes the caller reported, oldest first, for the change limits; dropped once older than
    /// both limits' periods.
    scale_events: Vec<ScaleEvent>,
}

impl Autoscaler {
    /// An autoscaler for `role` with no history yet.
    pub fn new(role: impl Into<String>, policy: Policy) -> Self {
        Autoscaler {
            role: role.into(),
            policy,
            recommendations: Vec::new(),
            seeded: false,
            scale_events: Vec::new(),
        }
    }

    /// The role this autoscaler decides for.
    pub fn role(&self) -> &str {
        &self.role
    }

    /// The policy it follows.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// One evaluation. Returns the decision; the caller applies it.
    pub fn evaluate(&mut self, sample: &Sample) -> Decision {
        let now = sample.at_ms;
        let current = sample.instances;
        let (min, max) = (self.policy.min, self.policy.max);
        self.forget_before(now);
        if !self.seeded {
            self.seeded = true;
            // `max.max(min)`: a policy with max < min (which `validate` refuses) must not panic.
            self.recommendations.push(Recommendation {
                at_ms: now,
                instances: current.clamp(min, max.max(min)),
            });
        }

        let total = sample
            .metric_total
            .filter(|total| total.is_finite() && *total >= 0.0);
        let target = self.policy.target;
        let per_instance = total
            .filter(|_| current > 0)
            .map(|t| t / f64::from(current));
        let ratio = per_instance.map(|p| p / target);
        // current × (total / current) / target, computed with one division.
        let raw = total.map(|t| ceil_to_u32(t / target));
        let mut decision = Decision {
            role: self.role.clone(),
            at_ms: now,
            current,
            desired: current,
            raw,
            ratio,
            per_instance,
            target,
            reasons: Vec::new(),
            explanation: String::new(),
        };
        let label = self.policy.metric.label();

        // The bounds come first and bypass the windows and limits, as in the HPA controller.
        if current < min || current > max {
            let (bound, reason, word) = if current < min {
                (min, "current_below_min", "below min")
            } else {
                (max, "current_above_max", "above max")
            };
            decision.desired = bound;
            decision.reasons.push(reason.to_owned());
            decision.explanation = format!(
                "{}: {current} running, {word} {bound} → scale {} to {bound} (bounds apply even \
                 without a metric)",
                self.role,
                if bound > current { "up" } else { "down" },
            );
            return decision;
        }

        let (Some(total), Some(raw)) = (total, raw) else {
            decision.reasons.push("missing_metric".to_owned());
            let what = match sample.metric_total {
                Some(bad) => format!("invalid ({bad})"),
                None => "missing".to_owned(),
            };
            decision.explanation = format!(
                "{}: {label} {what} → stay at {current} (missing metrics never scale)",
                self.role
            );
            return decision;
        };

        let head = match (per_instance, ratio) {
            (Some(per_instance), Some(ratio)) => {
                let head = format!(
                    "{}: {label} {per_instance:.1}/instance vs target {}",
                    self.role,
                    number(target)
                );
                if (ratio - 1.0).abs() <= self.policy.tolerance {
                    self.remember(now, current);
                    decision.reasons.push("within_tolerance".to_owned());
                    decision.explanation = format!(
                        "{head} → ratio {ratio:.2} within tolerance {}% → stay at {current}",
                        number(self.policy.tolerance * 100.0)
                    );
                    return decision;
                }
                format!("{head} → desired ceil({current} × {ratio:.2}) = {raw}")
            }
            // No instance: the ratio is undefined and any load at all needs one (ceil of a
            // positive number is at least 1), so there is no tolerance band.
            _ => format!(
                "{}: {label} {total:.1} with 0 instances vs target {}/instance → desired \
                 ceil({total:.1} / {}) = {raw}",
                self.role,
                number(target),
                number(target)
            ),
        };
        let mut steps = Vec::new();

        // min ≤ current ≤ max here (checked above), so this clamp cannot panic.
        let recommended = raw.clamp(min, max);
        if recommended < raw {
            decision.reasons.push("max".to_owned());
            steps.push(format!("capped at max {max}"));
        } else if recommended > raw {
            decision.reasons.push("min".to_owned());
            steps.push(format!("raised to min {min}"));
        }

        let stabilized = self.stabilize(now, current, recommended);
        self.remember(now, recommended);
        if stabilized != recommended {
            if recommended < current {
                decision.reasons.push("scale_down_stabilization".to_owned());
                steps.push(format!(
                    "held at {stabilized} by the scale-down stabilization window (highest \
                     recommendation in the last {})",
                    seconds(self.policy.down_stabilization_ms)
                ));
            } else {
                decision.reasons.push("scale_up_stabilization".to_owned());
                steps.push(format!(
                    "held at {stabilized} by the scale-up stabilization window (lowest \
                     recommendation in the last {})",
                    seconds(self.policy.up_stabilization_ms)
                ));
            }
        }

        let mut desired = stabilized;
        if stabilized > current {
            let limit = self.policy.up_limit;
            let start = self.period_start(now, current, limit.period_ms);
            let allowed = limit.allowed_change(start);
            let highest = start.saturating_add(allowed).max(current);
            if stabilized > highest {
                desired = highest;
                decision.reasons.push("scale_up_limit".to_owned());
                steps.push(format!(
                    "limited to {highest} by the scale-up limit ({start} + max({}% of {start}, \
                     {} pods) per {})",
                    limit.percent,
                    limit.pods,
                    seconds(limit.period_ms)
                ));
            }
        } else if stabilized < current {
            let limit = self.policy.down_limit;
            let start = self.period_start(now, current, limit.period_ms);
            let allowed = limit.allowed_change(start);
            let lowest = start.saturating_sub(allowed).min(current);
            if stabilized < lowest {
                desired = lowest;
                decision.reasons.push("scale_down_limit".to_owned());
                steps.push(format!(
                    "limited to {lowest} by the scale-down limit ({start} - max({}% of {start}, \
                     {} pods) per {})",
                    limit.percent,
                    limit.pods,
                    seconds(limit.period_ms)
                ));
            }
        }

        decision.desired = desired;
        decision.explanation = std::iter::once(head)
            .chain(steps)
            .collect::<Vec<_>>()
            .join(", ");
        decision
    }

    /// The caller tells when it actually changed the count (used by change limits).
    pub fn record_scale(&mut self, at_ms: u64, from: u32, to: u32) {
        let change = i64::from(to) - i64::from(from);
        if change != 0 {
            self.scale_events.push(ScaleEvent { at_ms, change });
        }
    }

    /// `current` brought within the stabilization windows (HPA's
    /// `stabilizeRecommendationWithBehaviors`): no lower than the highest recommendation of the
    /// down window, no higher than the lowest of the up window, both counting `recommended`.
    fn stabilize(&self, now: u64, current: u32, recommended: u32) -> u32 {
        let within = |window: u64| {
            self.recommendations
                .iter()
                .filter(move |r| age(now, r.at_ms) < window)
                .map(|r| r.instances)
        };
        let lowest_up = within(self.policy.up_stabilization_ms)
            .chain([recommended])
            .min()
            .unwrap_or(recommended);
        let highest_down = within(self.policy.down_stabilization_ms)
            .chain([recommended])
            .max()
            .unwrap_or(recommended);
        // lowest_up ≤ recommended ≤ highest_down, so the result lies between current and
        // recommended.
        current.clamp(lowest_up, highest_down)
    }

    /// The count at the start of the period that ends now: `current` minus what was added plus
    /// what was removed within the period.
    fn period_start(&self, now: u64, current: u32, period_ms: u64) -> u32 {
        let changed: i64 = self
            .scale_events
            .iter()
            .filter(|e| age(now, e.at_ms) < period_ms)
            .map(|e| e.change)
            .sum();
        u32::try_from((i64::from(current) - changed).max(0)).unwrap_or(u32::MAX)
    }

    fn remember(&mut self, at_ms: u64, instances: u32) {
        self.recommendations
            .push(Recommendation { at_ms, instances });
    }

    /// Drops history no rule can look at any more, so that memory stays bounded.
    fn forget_before(&mut self, now: u64) {
        let window = self
            .policy
            .up_stabilization_ms
            .max(self.policy.down_stabilization_ms);
        self.recommendations.retain(|r| age(now, r.at_ms) < window);
        let period = self
            .policy
            .up_limit
            .period_ms
            .max(self.policy.down_limit.period_ms);
        self.scale_events.retain(|e| age(now, e.at_ms) < period);
    }
}

/// How long ago `then` was; 0 for a time in the future. A window of `w` ms holds what is younger
/// than `w` (HPA's strict `After(now - w)`).
fn age(now: u64, then: u64) -> u64 {
    now.saturating_sub(then)
}

/// `ceil(x)` as a count, ignoring floating-point noise just above an integer; saturates.
fn ceil_to_u32(x: f64) -> u32 {
    // `as` saturates at the bounds and maps NaN to 0, which is what a count wants.
    (x - CEIL_EPSILON).ceil().max(0.0) as u32
}

/// `10` rather than `10.0`, `0.1` as `0.1`, at most two decimals.
fn number(x: f64) -> String {
    let text = format!("{x:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Milliseconds as seconds: `300 s`, `1.5 s`.
fn seconds(ms: u64) -> String {
    format!("{} s", number(ms as f64 / 1000.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000;

    fn sample(at_ms: u64, instances: u32, metric_total: Option<f64>) -> Sample {
        Sample {
            at_ms,
            instances,
            metric_total,
        }
    }

    /// A sample whose metric is `per_instance` on each of `instances`.
    fn load(at_ms: u64, instances: u32, per_instance: f64) -> Sample {
        sample(at_ms, instances, Some(per_instance * f64::from(instances)))
    }

    /// HPA's numbers without the scale-down window, to see the bare formula.
    fn formula_only(target: f64, min: u32, max: u32) -> Policy {
        Policy {
            down_stabilization_ms: 0,
            ..Policy::hpa_defaults(Metric::InFlight, target, min, max)
        }
    }

    /// The Kubernetes documentation's examples and the tolerance band, one evaluation each.
    #[test]
    fn formula_follows_the_hpa_documentation() {
        // (what, current, per instance, target, min, max, desired)
        let cases = [
            ("docs: 200m vs 100m doubles", 1, 0.2, 0.1, 1, 10, 2),
            ("docs: 50m vs 100m halves", 4, 0.05, 0.1, 1, 10, 2),
            ("ratio 1.05 is within tolerance", 2, 10.5, 10.0, 1, 10, 2),
            ("ratio 0.95 is within tolerance", 2, 9.5, 10.0, 1, 10, 2),
            ("ratio 1.2 rounds up", 2, 12.0, 10.0, 1, 10, 3),
            ("10 × 1.11 = 11.1 → 12", 10, 11.1, 10.0, 1, 20, 12),
            ("10 × 0.5 = 5 exactly", 10, 5.0, 10.0, 1, 20, 5),
            (
                "3 × 200m / 300m = 2, despite float noise",
                3,
                0.2,
                0.3,
                1,
                10,
                2,
            ),
            ("5 × 1000m / 500m = 10", 5, 1.0, 0.5, 1, 20, 10),
            ("no load at all goes to min", 5, 0.0, 10.0, 2, 10, 2),
        ];
        for (what, current, per, target, min, max, desired) in cases {
            let mut scaler = Autoscaler::new("gateway", formula_only(target, min, max));
            let decision = scaler.evaluate(&load(0, current, per));
            assert_eq!(
                decision.desired, desired,
                "{what}: {}",
                decision.explanation
            );
            assert_eq!(decision.changes(), desired != current, "{what}");
        }
    }

    #[test]
    fn recommendation_is_clamped_to_min_and_max() {
        // (current, per instance, min, max, desired, reasons joined by commas)
        let cases = [
            (2, 41.0, 1, 6, 6, "max"),
            (3, 1.0, 2, 10, 2, "min"),
            (3, 20.0, 1, 6, 6, ""),
            (4, 5.0, 2, 10, 2, ""),
        ];
        for (current, per, min, max, desired, reasons) in cases {
            let mut scaler = Autoscaler::new("gateway", formula_only(10.0, min, max));
            let decision = scaler.evaluate(&load(0, current, per));
            assert_eq!(decision.desired, desired, "{}", decision.explanation);
            assert_eq!(
                decision.reasons.join(","),
                reasons,
                "{}",
                decision.explanation
            );
        }
    }

    #[test]
    fn count_out_of_bounds_is_corrected_even_without_a_metric() {
        // (current, metric, desired, reason)
        let cases = [
            (1, None, 2, "current_below_min"),
            (9, None, 6, "current_above_max"),
            (9, Some(0.0), 6, "current_above_max"),
            (1, Some(1000.0), 2, "current_below_min"),
        ];
        for (current, metric, desired, reason) in cases {
            let policy = Policy::hpa_defaults(Metric::InFlight, 10.0, 2, 6);
            let mut scaler = Autoscaler::new("gateway", policy);
            let decision = scaler.evaluate(&sample(0, current, metric));
            assert_eq!(decision.desired, desired, "{}", decision.explanation);
            assert_eq!(decision.reasons, [reason]);
        }
    }

    #[test]
    fn missing_metric_never_scales() {
        for metric in [None, Some(f64::NAN), Some(-3.0), Some(f64::INFINITY)] {
            let mut scaler = Autoscaler::new("worker", formula_only(5.0, 1, 10));
            let decision = scaler.evaluate(&sample(0, 3, metric));
            assert_eq!(decision.desired, 3, "{}", decision.explanation);
            assert!(!decision.changes());
            assert_eq!(decision.raw, None);
            assert_eq!(decision.reasons, ["missing_metric"]);
        }
    }

    /// Load falls from 5 busy instances to almost nothing: HPA keeps 5 for the 300 s window, then
    /// follows the highest recommendation still in the window as it slides.
    #[test]
    fn scale_down_is_held_by_the_window_then_released() {
        let policy = Policy::hpa_defaults(Metric::InFlight, 10.0, 1, 10);
        let mut scaler = Autoscaler::new("gateway", policy);
        // (time, per instance on the 5 running, desired)
        let timeline = [
            (0, 10.0, 5),     // on target: the recommendation is 5
            (15 * S, 6.0, 5), // recommends 3, held at 5
            (60 * S, 2.0, 5), // recommends 1, held at 5
            (299 * S, 2.0, 5),
            (300 * S, 2.0, 3), // the 5 of t=0 left the window; the 3 of t=15 s is the highest
            (314 * S, 2.0, 3),
            (315 * S, 2.0, 1), // the 3 left too: down to the recommendation
        ];
        for (at, per, desired) in timeline {
            let decision = scaler.evaluate(&load(at, 5, per));
            assert_eq!(
                decision.desired, desired,
                "at {at} ms: {}",
                decision.explanation
            );
        }
    }

    /// A freshly started autoscaler counts the instances it found as a recommendation, as the HPA
    /// controller does: no scale-down in the first window even if load starts low.
    #[test]
    fn first_window_is_seeded_with_the_starting_count() {
        let policy = Policy::hpa_defaults(Metric::InFlight, 10.0, 1, 10);
        let mut scaler = Autoscaler::new("gateway", policy);
        for (at, desired) in [(0, 4), (150 * S, 4), (299 * S, 4), (300 * S, 1)] {
            let decision = scaler.evaluate(&load(at, 4, 1.0));
            assert_eq!(
                decision.desired, desired,
                "at {at} ms: {}",
                decision.explanation
            );
        }
    }

    #[test]
    fn scale_up_window_uses_the_lowest_recommendation() {
        let policy = Policy {
            up_stabilization_ms: 60 * S,
            ..formula_only(10.0, 1, 20)
        };
        let mut scaler = Autoscaler::new("gateway", policy);
        // (time, per instance on 2, desired): the seed 2 at t=0 holds everything for 60 s.
        let timeline = [
            (0, 30.0, 2),
            (30 * S, 20.0, 2),
            (60 * S, 30.0, 4), // seed and t=0's 6 gone; lowest in window: 4 (t=30 s)
            (90 * S, 30.0, 6),
        ];
        for (at, per, desired) in timeline {
            let decision = scaler.evaluate(&load(at, 2, per));
            assert_eq!(
                decision.desired, desired,
                "at {at} ms: {}",
                decision.explanation
            );
        }
    }

    /// HPA's default scale-up limit, max(100%, 4 pods) per 15 s, followed step by step by a caller
    /// that applies every decision; evaluating every second changes nothing.
    #[test]
    fn scale_up_is_limited_per_period() {
        let policy = Policy::hpa_defaults(Metric::InFlight, 10.0, 1, 50);
        let mut scaler = Autoscaler::new("gateway", policy);
        let total = 400.0; // wants 40 instances
        let mut current = 2;
        let mut counts = Vec::new();
        for second in 0..=45 {
            let decision = scaler.evaluate(&sample(second * S, current, Some(total)));
            if decision.changes() {
                scaler.record_scale(second * S, current, decision.desired);
                current = decision.desired;
                counts.push((second, current));
            }
        }
        // 2 → 2 + max(2, 4) = 6; 15 s later 6 + max(6, 4) = 12; then 24; then the 40 wanted.
        assert_eq!(counts, [(0, 6), (15, 12), (30, 24), (45, 40)]);
    }

    #[test]
    fn change_limit_picks_the_larger_of_percent_and_pods() {
        // (percent, pods, start, allowed change)
        let cases = [
            (100, 4, 2, 4),
            (100, 4, 10, 10),
            (50, 0, 3, 2), // ceil(1.5)
            (100, 0, 7, 7),
            (0, 0, 7, 0), // disabled
            (10, 1, 3, 1),
        ];
        for (percent, pods, start, allowed) in cases {
            let limit = ChangeLimit {
                percent,
                pods,
                period_ms: 15 * S,
            };
            assert_eq!(
                limit.allowed_change(start),
                allowed,
                "{limit:?} from {start}"
            );
        }
    }

    #[test]
    fn scale_down_is_limited_per_period() {
        let policy = Policy {
            down_limit: ChangeLimit {
                percent: 50,
                pods: 0,
                period_ms: 60 * S,
            },
            ..formula_only(10.0, 1, 10)
        };
        let mut scaler = Autoscaler::new("gateway", policy);
        let mut current = 8;
        let mut counts = Vec::new();
        for at in (0..=120 * S).step_by(15_000) {
            let decision = scaler.evaluate(&load(at, current, 0.5));
            if decision.changes() {
                scaler.record_scale(at, current, decision.desired);
                current = decision.desired;
                counts.push((at / S, current));
            }
        }
        // Half of 8 in the first minute, half of 4 in the next, then the min of 1.
        assert_eq!(counts, [(0, 4), (60, 2), (120, 1)]);
    }

    #[test]
    fn workers_may_scale_from_and_to_zero() {
        let policy = Policy {
            down_stabilization_ms: 0,
            ..Policy::hpa_defaults(Metric::QueueDepth, 5.0, 0, 10)
        };
        assert!(policy.validate().is_empty(), "{:?}", policy.validate());
        // (current, queue depth, desired)
        let cases = [
            (0, Some(12.0), 3),
            (0, Some(1.0), 1),
            (0, Some(0.0), 0),
            (0, None, 0),
            (0, Some(100.0), 4), // 20 wanted, but at most 4 pods from 0 per 15 s
            (3, Some(0.0), 0),
        ];
        for (current, depth, desired) in cases {
            let mut scaler = Autoscaler::new("worker", policy.clone());
            let decision = scaler.evaluate(&sample(0, current, depth));
            assert_eq!(decision.desired, desired, "{}", decision.explanation);
            if current == 0 {
                assert_eq!(decision.ratio, None);
                assert_eq!(decision.per_instance, None);
            }
        }
    }

    #[test]
    fn demo_profile_numbers() {
        let demo = Policy::demo(Metric::InFlight, 10.0, 1, 6);
        assert_eq!(
            (demo.min, demo.max, demo.metric, demo.target, demo.tolerance),
            (1, 6, Metric::InFlight, 10.0, 0.1)
        );
        assert_eq!(demo.evaluate_every_ms, 1_000);
        assert_eq!(demo.up_stabilization_ms, 0);
        assert_eq!(demo.down_stabilization_ms, 10_000);
        assert_eq!(
            demo.up_limit,
            ChangeLimit {
                percent: 100,
                pods: 4,
                period_ms: 1_000
            }
        );
        assert_eq!(
            demo.down_limit,
            ChangeLimit {
                percent: 100,
                pods: 0,
                period_ms: 1_000
            }
        );
        assert!(demo.validate().is_empty());

        // Watched in class: up at once, down 10 s after the load went away.
        let mut scaler = Autoscaler::new("gateway", demo);
        let mut current = 1;
        let mut counts = Vec::new();
        for second in 0..30 {
            let per = if second < 5 { 25.0 } else { 1.0 };
            let decision = scaler.evaluate(&load(second * S, current, per));
            if decision.changes() {
                scaler.record_scale(second * S, current, decision.desired);
                current = decision.desired;
                counts.push((second, current));
            }
        }
        // 1 → 3 (ceil 2.5); 3 → 6 (ceil 7.5, capped); load gone at 5 s; the 6 recommended at
        // 4 s leaves the 10 s window at 14 s.
        assert_eq!(counts, [(0, 3), (1, 6), (14, 1)]);
    }

    #[test]
    fn profile_names() {
        let hpa = Policy::hpa_defaults(Metric::QueueDepth, 20.0, 0, 8);
        let demo = Policy::demo(Metric::InFlight, 10.0, 2, 6);
        let custom = Policy {
            tolerance: 0.2,
            ..hpa.clone()
        };
        assert_eq!(hpa.profile_name(), "hpa");
        assert_eq!(Policy::default().profile_name(), "hpa");
        assert_eq!(demo.profile_name(), "demo");
        assert_eq!(custom.profile_name(), "custom");
    }

    #[test]
    fn validate_names_each_problem() {
        let base = Policy::hpa_defaults(Metric::InFlight, 10.0, 1, 6);
        // (policy, expected lines)
        let cases: Vec<(Policy, Vec<&str>)> = vec![
            (base.clone(), vec![]),
            (
                Policy {
                    min: 0,
                    ..base.clone()
                },
                vec![
                    "min: must be at least 1 with metric in_flight (a role with no instance \
                     receives no requests, so nothing could scale it back up); only queue_depth \
                     allows 0",
                ],
            ),
            (
                Policy {
                    min: 4,
                    max: 3,
                    ..base.clone()
                },
                vec!["max: must be at least min (4), got 3"],
            ),
            (
                Policy {
                    min: 0,
                    max: 0,
                    metric: Metric::QueueDepth,
                    ..base.clone()
                },
                vec!["max: must be at least 1"],
            ),
            (
                Policy {
                    target: 0.0,
                    tolerance: 1.0,
                    ..base.clone()
                },
                vec![
                    "target: must be a positive number (in_flight per instance), got 0",
                    "tolerance: must be at least 0 and below 1, got 1",
                ],
            ),
            (
                Policy {
                    evaluate_every_ms: 0,
                    down_stabilization_ms: 3_600_001,
                    ..base.clone()
                },
                vec![
                    "evaluate_every_ms: must be at least 1",
                    "down_stabilization_ms: must be at most 3600000 (one hour, as in \
                     Kubernetes), got 3600001",
                ],
            ),
            (
                Policy {
                    up_limit: ChangeLimit {
                        percent: 100,
                        pods: 4,
                        period_ms: 0,
                    },
                    down_limit: ChangeLimit {
                        percent: 150,
                        pods: 0,
                        period_ms: 15_000,
                    },
                    ..base.clone()
                },
                vec![
                    "up_limit.period_ms: must be at least 1",
                    "down_limit.percent: must be at most 100 (a scale-down cannot remove more \
                     than every instance), got 150",
                ],
            ),
        ];
        for (policy, expected) in cases {
            assert_eq!(policy.validate(), expected, "{policy:?}");
        }
    }

    #[test]
    fn explanations_read_as_sentences() {
        let hpa = |min, max| Policy::hpa_defaults(Metric::InFlight, 10.0, min, max);
        // (policy, earlier loads per instance, sample, explanation)
        let cases: Vec<(Policy, Vec<Sample>, Sample, &str)> = vec![
            (
                hpa(1, 6),
                vec![],
                load(0, 2, 41.0),
                "gateway: in-flight 41.0/instance vs target 10 → desired ceil(2 × 4.10) = 9, \
                 capped at max 6",
            ),
            (
                hpa(1, 6),
                vec![],
                load(0, 2, 10.5),
                "gateway: in-flight 10.5/instance vs target 10 → ratio 1.05 within tolerance 10% \
                 → stay at 2",
            ),
            (
                hpa(1, 6),
                vec![],
                load(15 * S, 3, 2.0),
                "gateway: in-flight 2.0/instance vs target 10 → desired ceil(3 × 0.20) = 1, held \
                 at 3 by the scale-down stabilization window (highest recommendation in the last \
                 300 s)",
            ),
            (
                hpa(1, 30),
                vec![],
                load(0, 2, 100.0),
                "gateway: in-flight 100.0/instance vs target 10 → desired ceil(2 × 10.00) = 20, \
                 limited to 6 by the scale-up limit (2 + max(100% of 2, 4 pods) per 15 s)",
            ),
            (
                hpa(2, 6),
                vec![],
                sample(0, 1, None),
                "gateway: 1 running, below min 2 → scale up to 2 (bounds apply even without a \
                 metric)",
            ),
            (
                Policy::demo(Metric::InFlight, 10.0, 1, 6),
                vec![load(0, 4, 10.0)],
                load(5 * S, 4, 1.0),
                "gateway: in-flight 1.0/instance vs target 10 → desired ceil(4 × 0.10) = 1, held \
                 at 4 by the scale-down stabilization window (highest recommendation in the last \
                 10 s)",
            ),
        ];
        for (policy, earlier, now, expected) in cases {
            let mut scaler = Autoscaler::new("gateway", policy);
            for s in &earlier {
                scaler.evaluate(s);
            }
            assert_eq!(scaler.evaluate(&now).explanation, expected);
        }

        let worker = |min| Policy::hpa_defaults(Metric::QueueDepth, 5.0, min, 10);
        let cases = [
            (
                worker(1),
                sample(0, 3, None),
                "worker: queue depth missing → stay at 3 (missing metrics never scale)",
            ),
            (
                worker(0),
                sample(0, 0, Some(12.0)),
                "worker: queue depth 12.0 with 0 instances vs target 5/instance → desired \
                 ceil(12.0 / 5) = 3",
            ),
        ];
        for (policy, now, expected) in cases {
            let mut scaler = Autoscaler::new("worker", policy);
            assert_eq!(scaler.evaluate(&now).explanation, expected);
        }
    }

    #[test]
    fn policy_reads_from_config_with_defaults() {
        let policy: Policy =
            serde_json::from_str(r#"{"min": 0, "max": 8, "metric": "queue_depth", "target": 20}"#)
                .expect("valid policy");
        assert_eq!(policy, Policy::hpa_defaults(Metric::QueueDepth, 20.0, 0, 8));
        assert_eq!(policy.profile_name(), "hpa");

        let policy: Policy =
            serde_json::from_str(r#"{"up_limit": {"percent": 50, "pods": 1, "period_ms": 60000}}"#)
                .expect("valid policy");
        assert_eq!(policy.up_limit.allowed_change(10), 5);
        assert_eq!(policy.profile_name(), "custom");

        for bad in [
            r#"{"mni": 1}"#,
            r#"{"metric": "cpu"}"#,
            r#"{"up_limit": {"percent": 50}}"#,
        ] {
            assert!(
                serde_json::from_str::<Policy>(bad).is_err(),
                "{bad} was accepted"
            );
        }
    }

    #[test]
    fn decision_serializes_for_the_event_stream() {
        let policy = Policy::hpa_defaults(Metric::InFlight, 10.0, 1, 6);
        let mut scaler = Autoscaler::new("gateway", policy);
        let decision = scaler.evaluate(&load(0, 2, 41.0));
        let json = serde_json::to_value(&decision).expect("serializable");
        assert_eq!(json["role"], "gateway");
        assert_eq!(json["current"], 2);
        assert_eq!(json["desired"], 6);
        assert_eq!(json["raw"], 9);
        assert_eq!(json["reasons"], serde_json::json!(["max"]));
        assert_eq!(json["explanation"], decision.explanation.as_str());

        let missing = scaler.evaluate(&sample(15 * S, 2, None));
        let json = serde_json::to_value(&missing).expect("serializable");
        assert!(json["raw"].is_null() && json["ratio"].is_null());
    }
}
