//! Rate limits: GCRA (the generic cell rate algorithm, a token bucket kept as one timestamp per
//! client), in this process or in Redis.
//!
//! GCRA keeps, per (route, client), a "theoretical arrival time" (TAT). With an emission interval
//! `T = 60 s / per_minute` and a burst `b`, a request at `now` is admitted when
//! `max(TAT, now) + T - b·T <= now`, and then `TAT = max(TAT, now) + T`. A quiet client may send `b`
//! requests at once, then one every `T`.
//!
//! - [`LocalLimiter`] keeps the TATs in a map in this process: every gateway limits on its own, so
//!   N gateways admit N times the limit.
//! - [`RedisLimiter`] runs the same arithmetic in one Lua script (atomic in Redis, clock from Redis'
//!   `TIME`), so all gateways sharing a prefix share one limit: the limit is global. When Redis
//!   cannot be reached it falls back to its own local limiter (and logs), so that an outage of
//!   Redis degrades the limit to per instance instead of turning it off or failing requests.
//!
//! The client is the user id when the request carries a valid token, else the client IP, taken
//! from the last `X-Forwarded-For` entry when the TCP peer is a trusted proxy ([`client_ip`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::http::{HeaderName, HeaderValue};

use crate::config::Rule;
use crate::redis_conn::RedisConn;
use crate::tokens::{HeaderSource, visible_text};

/// What the limiter said about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may go on.
    pub allowed: bool,
    /// The rule's burst (`RateLimit-Limit`).
    pub limit: u32,
    /// The rule's sustained rate per minute (`RateLimit-Policy`).
    pub per_minute: u32,
    /// Requests still admitted at once (`RateLimit-Remaining`).
    pub remaining: u32,
    /// Time until the client's allowance is full again (`RateLimit-Reset`).
    pub reset: Duration,
    /// Time until the next request would be admitted (`Retry-After`, zero when allowed).
    pub retry_after: Duration,
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000) as u64
}

impl Decision {
    /// `Retry-After` in whole seconds, rounded up (at least 1 when denied).
    pub fn retry_after_secs(&self) -> u64 {
        let s = ceil_secs(self.retry_after);
        if self.allowed { s } else { s.max(1) }
    }

    /// The `RateLimit-*` headers (IETF draft `ratelimit-headers`) of this decision.
    pub fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        vec![
            (
                HeaderName::from_static("ratelimit-limit"),
                HeaderValue::from(self.limit),
            ),
            (
                HeaderName::from_static("ratelimit-remaining"),
                HeaderValue::from(self.remaining),
            ),
            (
                HeaderName::from_static("ratelimit-reset"),
                HeaderValue::from(ceil_secs(self.reset)),
            ),
            (
                HeaderName::from_static("ratelimit-policy"),
                HeaderValue::from_str(&format!("{};w=60;burst={}", self.per_minute, self.limit))
                    .unwrap_or(HeaderValue::from_static("-")),
            ),
        ]
    }
}

/// The emission interval of a rule, in milliseconds (at least 1).
fn interval_ms(rule: &Rule) -> u64 {
    (60_000 / u64::from(rule.per_minute.max(1))).max(1)
}

/// One GCRA step on a TAT in milliseconds. Returns the decision and the new TAT (unchanged when
/// denied). Shared by the local limiter and, line for line, by the Lua script.
fn gcra(rule: &Rule, tat: u64, now: u64) -> (Decision, u64) {
    let t = interval_ms(rule);
    let burst = u64::from(rule.burst());
    let tat = tat.max(now);
    let new_tat = tat + t;
    let allow_at = new_tat.saturating_sub(t * burst);
    let base = Decision {
        allowed: false,
        limit: rule.burst(),
        per_minute: rule.per_minute,
        remaining: 0,
        reset: Duration::from_millis(tat - now),
        retry_after: Duration::ZERO,
    };
    if now < allow_at {
        let d = Decision {
            retry_after: Duration::from_millis(allow_at - now),
            ..base
        };
        return (d, tat);
    }
    let d = Decision {
        allowed: true,
        remaining: ((now - allow_at) / t).min(u64::from(u32::MAX)) as u32,
        reset: Duration::from_millis(new_tat - now),
        ..base
    };
    (d, new_tat)
}

/// A rate limiter: one check per request, for a named bucket (`route`) and a client.
#[async_trait]
pub trait Limiter: Send + Sync + std::fmt::Debug {
    /// Counts one request of `client` against `rule` in bucket `route`.
    async fn check(&self, route: &str, client: &str, rule: &Rule) -> Decision;
}

/// GCRA in this process: limits are per gateway instance.
#[derive(Debug)]
pub struct LocalLimiter {
    /// TAT per (bucket, client), in milliseconds since `epoch`.
    tats: Mutex<HashMap<(String, String), u64>>,
    /// The zero of the TATs (a monotonic clock, immune to wall-clock jumps).
    epoch: Instant,
}

/// Past this many tracked clients, entries whose TAT is over are dropped on the next check.
const LOCAL_SWEEP_AT: usize = 10_000;

impl Default for LocalLimiter {
    fn default() -> Self {
        Self {
            tats: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
        }
    }
}

impl LocalLimiter {
    fn check_now(&self, route: &str, client: &str, rule: &Rule) -> Decision {
        // Offset by one interval so that "TAT = 0" (new client) is never in the future.
        let now = self.epoch.elapsed().as_millis() as u64 + 60_000;
        let Ok(mut tats) = self.tats.lock() else {
            // A poisoned lock means a panic mid-update: admit rather than fail every request.
            return gcra(rule, 0, now).0;
        };
        if tats.len() >= LOCAL_SWEEP_AT {
            tats.retain(|_, tat| *tat > now);
        }
        let key = (route.to_string(), client.to_string());
        let tat = tats.get(&key).copied().unwrap_or(0);
        let (decision, new_tat) = gcra(rule, tat, now);
        if decision.allowed {
            tats.insert(key, new_tat);
        }
        decision
    }
}

#[async_trait]
impl Limiter for LocalLimiter {
    async fn check(&self, route: &str, client: &str, rule: &Rule) -> Decision {
        self.check_now(route, client, rule)
    }
}

/// The GCRA step of [`gcra`], atomic in Redis. The clock is Redis' own, so that gateways with
/// skewed clocks still share one limit. Returns `{allowed, remaining, retry_after_ms, reset_ms}`.
const GCRA_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - interval * burst
if now < allow_at then
  return {0, 0, allow_at - now, tat - now}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', string.format('%d', new_tat - now))
return {1, math.floor((now - allow_at) / interval), 0, new_tat - now}
"#;

/// GCRA in Redis: one limit shared by every gateway using the same key prefix.
#[derive(Debug)]
pub struct RedisLimiter {
    conn: RedisConn,
    prefix: String,
    script: redis::Script,
    /// Used while Redis cannot be reached.
    fallback: LocalLimiter,
    /// Whether the last check fell back, so that an outage is logged once when it starts and once
    /// when it ends, not once per request.
    degraded: std::sync::atomic::AtomicBool,
}

impl RedisLimiter {
    /// A limiter keeping its state under `<prefix>rl:`.
    pub(crate) fn new(conn: RedisConn, prefix: &str) -> Self {
        Self {
            conn,
            prefix: prefix.to_string(),
            script: redis::Script::new(GCRA_LUA),
            fallback: LocalLimiter::default(),
            degraded: std::sync::atomic::AtomicBool::new(false),
        }
    }

    async fn try_check(
        &self,
        route: &str,
        client: &str,
        rule: &Rule,
    ) -> redis::RedisResult<Decision> {
        let mut conn = self.conn.get().await?;
        let key = format!("{}rl:{}:{}", self.prefix, route, client);
        let (allowed, remaining, retry_ms, reset_ms): (i64, i64, i64, i64) = self
            .script
            .key(key)
            .arg(interval_ms(rule))
            .arg(rule.burst())
            .invoke_async(&mut conn)
            .await?;
        let ms = |v: i64| Duration::from_millis(v.max(0) as u64);
        Ok(Decision {
            allowed: allowed == 1,
            limit: rule.burst(),
            per_minute: rule.per_minute,
            remaining: remaining.clamp(0, i64::from(u32::MAX)) as u32,
            reset: ms(reset_ms),
            retry_after: ms(retry_ms),
        })
    }
}

#[async_trait]
impl Limiter for RedisLimiter {
    async fn check(&self, route: &str, client: &str, rule: &Rule) -> Decision {
        use std::sync::atomic::Ordering;
        match self.try_check(route, client, rule).await {
            Ok(d) => {
                if self.degraded.swap(false, Ordering::AcqRel) {
                    tracing::info!("redis rate limiter reachable again; limits are global again");
                }
                d
            }
            Err(e) => {
                if !self.degraded.swap(true, Ordering::AcqRel) {
                    tracing::warn!(error = %e, "redis rate limiter unreachable; limiting in this instance only until it is back");
                }
                metrics::counter!("scalelab_gateway_rate_limit_fallback_total").increment(1);
                self.fallback.check_now(route, client, rule)
            }
        }
    }
}

/// The client's IP: the last `X-Forwarded-For` entry when `peer` is a trusted proxy (the balancer
/// appends the address it saw), else `peer` itself. `None` when there is no peer (a request built in
/// a test without `ConnectInfo`).
pub fn client_ip(
    peer: Option<SocketAddr>,
    headers: &(impl HeaderSource + ?Sized),
    trusted: &[ipnet::IpNet],
) -> Option<IpAddr> {
    let peer = peer?.ip();
    let peer = match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(peer),
        v4 => v4,
    };
    if !trusted.iter().any(|net| net.contains(&peer)) {
        return Some(peer);
    }
    let mut forwarded = None;
    headers.each("x-forwarded-for", &mut |value| {
        if let Some(text) = visible_text(value) {
            for entry in text.split(',').map(str::trim) {
                if !entry.is_empty() {
                    forwarded = Some(entry);
                }
            }
        }
    });
    match forwarded {
        Some(s) => s.parse().ok().or(Some(peer)),
        None => Some(peer),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;

    fn rule(per_minute: u32, burst: Option<u32>) -> Rule {
        Rule { per_minute, burst }
    }

    #[test]
    fn gcra_admits_the_burst_then_one_per_interval() {
        let r = rule(60, Some(3));
        let mut tat = 0;
        let now = 100_000;
        let mut remaining = Vec::new();
        for _ in 0..3 {
            let (d, t) = gcra(&r, tat, now);
            assert!(d.allowed);
            remaining.push(d.remaining);
            tat = t;
        }
        assert_eq!(remaining, [2, 1, 0]);
        let (d, _) = gcra(&r, tat, now);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Duration::from_secs(1));
        assert_eq!(d.retry_after_secs(), 1);
        // One interval later exactly one more is admitted.
        let (d, t) = gcra(&r, tat, now + 1000);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        assert!(!gcra(&r, t, now + 1000).0.allowed);
        // After a long quiet time the whole burst is back.
        assert_eq!(gcra(&r, t, now + 60_000).0.remaining, 2);
    }

    #[test]
    fn login_default_denies_the_sixth() {
        let l = LocalLimiter::default();
        let r = rule(5, None);
        let allowed: Vec<bool> = (0..6)
            .map(|_| l.check_now("login", "1.2.3.4", &r).allowed)
            .collect();
        assert_eq!(allowed, [true, true, true, true, true, false]);
        // Another client has its own budget.
        assert!(l.check_now("login", "5.6.7.8", &r).allowed);
        let denied = l.check_now("login", "1.2.3.4", &r);
        assert_eq!(denied.retry_after_secs(), 12);
        assert_eq!(denied.limit, 5);
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_peers() {
        let trusted: Vec<ipnet::IpNet> = vec!["127.0.0.1/32".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "9.9.9.9, 10.0.0.1".parse().unwrap());
        h.append("x-forwarded-for", "203.0.113.7".parse().unwrap());
        let lb: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let other: SocketAddr = "198.51.100.2:4000".parse().unwrap();
        assert_eq!(
            client_ip(Some(lb), &h, &trusted),
            "203.0.113.7".parse().ok()
        );
        assert_eq!(
            client_ip(Some(other), &h, &trusted),
            "198.51.100.2".parse().ok()
        );
        assert_eq!(
            client_ip(Some(lb), &HeaderMap::new(), &trusted),
            "127.0.0.1".parse().ok()
        );
        let mut junk = HeaderMap::new();
        junk.insert("x-forwarded-for", "not-an-ip".parse().unwrap());
        assert_eq!(
            client_ip(Some(lb), &junk, &trusted),
            "127.0.0.1".parse().ok()
        );
        assert_eq!(client_ip(None, &h, &trusted), None);
    }
}
