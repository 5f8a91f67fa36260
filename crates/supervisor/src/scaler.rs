//! The autoscaler at work: one loop per role with an `[autoscale.<role>]` policy, which every
//! `evaluate_every_ms` reads the role's load from its instances' `/metrics`, asks
//! [`crate::autoscale::Autoscaler`] for a decision, applies it through the fleet (scale out, or
//! drain the newest), and records the decision with its arithmetic (`GET /autoscale`, and an event
//! when it changes something).
//!
//! The load figures: `in_flight` is `scalelab_http_in_flight` (requests being served, probes not
//! counted) summed over the role's active instances; `queue_depth` is `scalelab_queue_depth`
//! (queued tasks, all priorities) as a worker reports it (every worker reads the same queue). An
//! instance that cannot be scraped is left out of the sum; none at all is a missing metric, which
//! never scales.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::autoscale::{Autoscaler, Metric, Policy, Sample};
use crate::fleet::{Fleet, State};

/// The value of every sample of `metric` in a Prometheus text page, summed; `None` when there is
/// none.
pub fn sum_metric(page: &str, metric: &str) -> Option<f64> {
    sum_metric_where(page, metric, |_| true)
}

/// Like [`sum_metric`], over the samples whose line `keep` accepts (e.g. by a label).
pub fn sum_metric_where(page: &str, metric: &str, keep: impl Fn(&str) -> bool) -> Option<f64> {
    let mut found = None;
    for line in page.lines() {
        let Some(rest) = line.strip_prefix(metric) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) || !keep(line) {
            continue;
        }
        if let Some(v) = rest
            .rsplit(' ')
            .next()
            .and_then(|v| v.trim().parse::<f64>().ok())
        {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// The Prometheus page of the instance at `url` (`GET /metrics`); `None` when it does not answer.
pub async fn metrics_page(http: &reqwest::Client, url: &str) -> Option<String> {
    http.get(format!("{url}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()
}

async fn scrape(http: &reqwest::Client, url: &str, metric: &str) -> Option<f64> {
    let page = metrics_page(http, url).await?;
    // An instance that has served nothing yet has no gauge: its load is 0.
    Some(sum_metric(&page, metric).unwrap_or(0.0))
}

/// The role's load now, and how many instances serve it (starting or active).
async fn sample(fleet: &Fleet, role: &str, metric: Metric, http: &reqwest::Client) -> Sample {
    let members = fleet.members(role);
    let serving = members
        .iter()
        .filter(|(_, _, s)| matches!(s, State::Starting | State::Active))
        .count() as u32;
    let active: Vec<&String> = members
        .iter()
        .filter(|(_, _, s)| *s == State::Active)
        .map(|(_, url, _)| url)
        .collect();
    let metric_total = match metric {
        Metric::InFlight => {
            let mut total = None;
            for url in &active {
                if let Some(v) = scrape(http, url, "scalelab_http_in_flight").await {
                    *total.get_or_insert(0.0) += v;
                }
            }
            total
        }
        Metric::QueueDepth => {
            let mut depth = None;
            for url in &active {
                depth = scrape(http, url, "scalelab_queue_depth").await;
                if depth.is_some() {
                    break;
                }
            }
            depth
        }
    };
    Sample {
        at_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        instances: serving,
        metric_total,
    }
}

/// Runs `role`'s autoscaler until the fleet closes (or the task is aborted).
pub(crate) async fn run(fleet: Fleet, role: String, policy: Policy) {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(1))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap_or_default();
    let every = Duration::from_millis(policy.evaluate_every_ms.max(100));
    let metric = policy.metric;
    fleet.event(
        "autoscale",
        None,
        format!(
            "autoscaling {role} on {} (target {}/instance, {}..={} instances, profile {}, every {:?})",
            metric.label(),
            policy.target,
            policy.min,
            policy.max,
            policy.profile_name(),
            every
        ),
    );
    let mut scaler = Autoscaler::new(role.clone(), policy);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if fleet.is_closed() {
            return;
        }
        let s = sample(&fleet, &role, metric, &http).await;
        let decision = scaler.evaluate(&s);
        fleet.record_decision(decision.clone());
        if !decision.changes() {
            continue;
        }
        let wanted = BTreeMap::from([(role.clone(), decision.desired as usize)]);
        match fleet.scale_quietly(&wanted) {
            Ok(_) => {
                scaler.record_scale(s.at_ms, decision.current, decision.desired);
                fleet.event("autoscale", None, decision.explanation.clone());
            }
            Err(why) => fleet.event(
                "autoscale",
                None,
                format!("{} — not applied: {why}", decision.explanation),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_samples_are_summed_by_name() {
        let page = "# TYPE scalelab_http_in_flight gauge\n\
                    scalelab_http_in_flight{role=\"gateway\",id=\"gateway-1\"} 3\n\
                    scalelab_http_in_flight_other 7\n\
                    scalelab_queue_depth{priority=\"high\",id=\"worker-1\"} 2\n\
                    scalelab_queue_depth{priority=\"low\",id=\"worker-1\"} 5\n";
        assert_eq!(sum_metric(page, "scalelab_http_in_flight"), Some(3.0));
        assert_eq!(sum_metric(page, "scalelab_queue_depth"), Some(7.0));
        assert_eq!(sum_metric(page, "scalelab_nothing"), None);
    }
}
