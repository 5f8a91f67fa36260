//! Edge protection, as the lab's nginx variants do it: client allow/deny lists (`allow`/`deny`)
//! and a per-client-IP rate limit (`limit_req`), applied before any request is proxied.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use common::ApiError;

use crate::{AppState, Config};

/// A per-client-IP rate limit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EdgeRateLimit {
    /// Sustained requests per second allowed from one client IP.
    pub requests_per_second: u32,
    /// Requests one client may send at once above the sustained rate.
    #[serde(default = "default_burst")]
    pub burst: u32,
}

fn default_burst() -> u32 {
    20
}

/// The access lists and the limiter.
#[derive(Debug)]
pub struct Edge {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    limiter: Option<Arc<DefaultKeyedRateLimiter<IpAddr>>>,
    limit: Option<EdgeRateLimit>,
}

/// A running sweeper of idle limiter state; dropping it stops it.
#[derive(Debug)]
pub struct Sweeper(Option<tokio::task::JoinHandle<()>>);

impl Drop for Sweeper {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

impl Edge {
    /// Builds the checks of `config`.
    pub fn new(config: &Config) -> Self {
        let limiter = config.rate_limit.as_ref().map(|l| {
            let rate = NonZeroU32::new(l.requests_per_second.max(1)).unwrap_or(NonZeroU32::MIN);
            let burst = NonZeroU32::new(l.burst.max(1)).unwrap_or(NonZeroU32::MIN);
            Arc::new(RateLimiter::keyed(
                Quota::per_second(rate).allow_burst(burst),
            ))
        });
        Self {
            allow: config.allow.clone(),
            deny: config.deny.clone(),
            limiter,
            limit: config.rate_limit.clone(),
        }
    }

    /// Whether `ip` may come in at all.
    pub fn admits(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip))
    }

    /// Whether a request from `ip` now is over the rate limit (a request within it is counted).
    pub fn over_limit(&self, ip: IpAddr) -> bool {
        self.limiter
            .as_ref()
            .is_some_and(|l| l.check_key(&canonical(ip)).is_err())
    }

    /// Forgets clients idle long enough to be back at full burst, so that memory stays bounded.
    pub fn spawn_sweeper(&self) -> Sweeper {
        Sweeper(self.limiter.clone().map(|l| {
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(30));
                loop {
                    tick.tick().await;
                    l.retain_recent();
                    l.shrink_to_fit();
                }
            })
        }))
    }
}

/// IPv4 clients that reach a dual-stack socket appear as `::ffff:a.b.c.d`; compare them as IPv4.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The edge middleware: `403 forbidden` for a refused network, `429 rate_limited` over the limit.
pub async fn check(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(ip) = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
    else {
        // Without a peer address (in-process tests without ConnectInfo) there is nothing to check.
        return next.run(req).await;
    };
    let edge = &state.edge;
    if !edge.admits(ip) {
        metrics::counter!("scalelab_lb_refused_total", "reason" => "acl").increment(1);
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "your network is not allowed to use this service",
        )
        .into_response();
    }
    if let (Some(limiter), Some(limit)) = (&edge.limiter, &edge.limit)
        && let Err(not_until) = limiter.check_key(&canonical(ip))
    {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        metrics::counter!("scalelab_lb_refused_total", "reason" => "rate_limit").increment(1);
        return ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "more than {} requests per second from your address; retry in {secs} s",
                limit.requests_per_second
            ),
        )
        .with_header(header::RETRY_AFTER, HeaderValue::from(secs.max(1)))
        .with_header(
            header::HeaderName::from_static("ratelimit-limit"),
            HeaderValue::from(limit.requests_per_second),
        )
        .with_header(
            header::HeaderName::from_static("ratelimit-remaining"),
            HeaderValue::from(0u32),
        )
        .with_header(
            header::HeaderName::from_static("ratelimit-reset"),
            HeaderValue::from(secs.max(1)),
        )
        .into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(allow: &[&str], deny: &[&str]) -> Edge {
        Edge::new(&Config {
            allow: allow.iter().map(|s| s.parse().unwrap()).collect(),
            deny: deny.iter().map(|s| s.parse().unwrap()).collect(),
            ..Config::default()
        })
    }

    #[test]
    fn deny_wins_over_allow_and_empty_allow_admits_all() {
        let e = edge(&["10.0.0.0/8"], &["10.1.0.0/16"]);
        assert!(e.admits("10.2.3.4".parse().unwrap()));
        assert!(!e.admits("10.1.3.4".parse().unwrap()));
        assert!(!e.admits("192.168.1.1".parse().unwrap()));
        let open = edge(&[], &["192.168.0.0/16"]);
        assert!(open.admits("8.8.8.8".parse().unwrap()));
        assert!(!open.admits("192.168.9.9".parse().unwrap()));
    }

    #[test]
    fn v4_mapped_v6_clients_match_v4_rules() {
        let e = edge(&["127.0.0.0/8"], &[]);
        assert!(e.admits("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!e.admits("::1".parse().unwrap()));
    }
}
