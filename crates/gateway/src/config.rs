//! The `[gateway]` section of the topology file.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Error;

/// The `[gateway]` section of the topology file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Base URLs of the `auth` instances (`http://127.0.0.1:5011`); filled from the topology's
    /// instances when empty. Logins, registrations, guest tokens and the JWKS go through a
    /// round-robin pool over them.
    pub auth_urls: Vec<String>,
    /// Base URLs of the `service` instances behind `GET /process`; filled from the topology
    /// when empty.
    pub service_urls: Vec<String>,
    /// Base URL of the `cache` service (used when `cache = "service"`); filled from the topology.
    pub cache_url: String,
    /// Base URL of the `db` service; filled from the topology.
    pub db_url: String,
    /// Base URL of the `users` service; filled from the topology. Empty: no profiles
    /// (`/register` only creates credentials, `/users/...` answers `503`).
    pub users_url: String,
    /// The role each guarded route needs, by `"METHOD /route"` as written in the router.
    /// `GET /users/{id}` applies when reading someone else's profile (your own needs no role).
    /// A route left out needs no role beyond a valid token; setting this replaces the whole map.
    pub required_roles: BTreeMap<String, String>,
    /// Where `GET /data` caches values: `service` (the cache service, shared by every gateway),
    /// `local` (in this process, per instance) or `redis` (needs `redis_url`).
    pub cache: CacheBackend,
    /// Time to live of a value cached by `GET /data`, in seconds.
    pub cache_ttl_secs: u64,
    /// Most entries of the `local` cache; the least recently used are evicted beyond it.
    pub local_cache_max_entries: u64,
    /// Redis URL (`redis://127.0.0.1:6379`), needed by `cache = "redis"` and by
    /// `rate_limit.backend = "redis"`.
    pub redis_url: Option<String>,
    /// Prefix of every Redis key this gateway writes (cache entries under `<prefix>cache:`, rate
    /// limit state under `<prefix>rl:`); gateways sharing a prefix share the cache and the limits.
    pub redis_prefix: String,
    /// Longest wait for `auth`, `cache` and `db`, in milliseconds (then `504`).
    pub upstream_timeout_ms: u64,
    /// Largest request body accepted, in bytes (`413 payload_too_large` beyond).
    pub max_body_bytes: usize,
    /// The pool of `service` instances behind `GET /process`: strategy, timeouts, health checks.
    pub services: balance::PoolConfig,
    /// Token checks.
    pub auth: AuthConfig,
    /// Rate limits.
    pub rate_limit: RateLimitConfig,
    /// The task store shared with the workers (`POST /tasks`, `/longtask`, `/add`); set by
    /// `scalelab` from the topology's `[queue]` section. `None`: the task routes answer `503`.
    #[serde(skip)]
    pub queue: Option<queue::Config>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            auth_urls: Vec::new(),
            service_urls: Vec::new(),
            cache_url: String::new(),
            db_url: String::new(),
            users_url: String::new(),
            required_roles: [
                "GET /users",
                "GET /users/{id}",
                "PATCH /users/{id}/role",
                "GET /cache/stats",
                "POST /cache/flush",
            ]
            .into_iter()
            .map(|route| (route.to_string(), "admin".to_string()))
            .collect(),
            cache: CacheBackend::Service,
            cache_ttl_secs: 30,
            local_cache_max_entries: 10_000,
            redis_url: None,
            redis_prefix: "scalelab:".into(),
            upstream_timeout_ms: 3000,
            max_body_bytes: 64 * 1024,
            services: balance::PoolConfig::default(),
            auth: AuthConfig::default(),
            rate_limit: RateLimitConfig::default(),
            queue: None,
        }
    }
}

/// Where the gateway's cache lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheBackend {
    /// The `cache` service at `cache_url`, shared by every gateway.
    #[default]
    Service,
    /// An in-process cache (moka), one per gateway instance.
    Local,
    /// Redis at `redis_url`, shared by every gateway using the same `redis_prefix`.
    Redis,
}

/// How tokens are checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Whether protected routes need a valid token. `false` is for classroom demos: requests
    /// without a token run as an anonymous `guest` (a valid token is still honoured).
    pub required: bool,
    /// Whether `GET /token` hands out short-lived `guest` tokens (`404 not_found` when off).
    pub anonymous_tokens: bool,
    /// Compatibility only: also accept HS256 tokens signed with this shared secret. Never a
    /// default; asymmetric tokens checked against auth's JWKS are the normal path.
    pub hs256_secret: Option<String>,
    /// The `iss` claim every token must carry.
    pub issuer: String,
    /// Clock skew tolerated on `exp`, in seconds.
    pub leeway_secs: u64,
    /// Shortest time between two JWKS fetches caused by unknown key ids, in milliseconds, so that
    /// tokens with made-up `kid`s cannot make the gateway hammer `auth`.
    pub jwks_min_refresh_ms: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            required: true,
            anonymous_tokens: false,
            hs256_secret: None,
            issuer: "scalelab-auth".into(),
            leeway_secs: 5,
            jwks_min_refresh_ms: 1000,
        }
    }
}

/// Rate limits, per route and per client (the user id when the request carries a valid token,
/// else the client IP).
///
/// With `backend = "local"` every gateway counts on its own: N gateways admit N times a limit.
/// With `backend = "redis"` all gateways sharing `redis_prefix` share one count: the limit is
/// global.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// `local` (in-process GCRA, per instance) or `redis` (one atomic GCRA script, global).
    pub backend: LimiterBackend,
    /// Logins (`POST /login`, `POST /auth/login`, one shared budget) admitted per minute per
    /// client IP; `0` turns the login limit off. A `routes` entry for `/login` takes precedence.
    pub login_per_minute: u32,
    /// The limit of every other business route that has no `routes` entry; none when absent.
    pub default: Option<Rule>,
    /// Limits by route path as written in the router (`/process`, `/data`, `/data/{key}`).
    pub routes: BTreeMap<String, Rule>,
    /// Peers whose `X-Forwarded-For` is believed (the load balancer); for any other peer the
    /// client IP is the TCP peer address.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            backend: LimiterBackend::Local,
            login_per_minute: 5,
            default: None,
            routes: BTreeMap::new(),
            trusted_proxies: ["127.0.0.1/32", "::1/128"]
                .iter()
                .filter_map(|s| s.parse().ok())
                .collect(),
        }
    }
}

/// Where rate limit state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimiterBackend {
    /// In this process: each gateway instance limits on its own.
    #[default]
    Local,
    /// In Redis: one limit shared by every gateway.
    Redis,
}

/// One limit: a sustained rate and a burst (GCRA).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Requests admitted per minute, sustained.
    pub per_minute: u32,
    /// Requests admitted at once after a quiet period; `per_minute` when absent.
    #[serde(default)]
    pub burst: Option<u32>,
}

impl Rule {
    /// The burst actually used (at least 1).
    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.per_minute).max(1)
    }
}

impl Config {
    /// Refuses settings the gateway cannot honour, so that a typo fails at start and not on the
    /// first request. Unreachable upstreams are not an error here: `/ready` reports them.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        let needs_redis =
            self.cache == CacheBackend::Redis || self.rate_limit.backend == LimiterBackend::Redis;
        if needs_redis && self.redis_url.as_deref().is_none_or(str::is_empty) {
            return Err(Error::Config(
                "redis_url is required by cache = \"redis\" and rate_limit.backend = \"redis\""
                    .into(),
            ));
        }
        if self.cache == CacheBackend::Service && self.cache_url.is_empty() {
            return Err(Error::Config(
                "cache_url is required by cache = \"service\"".into(),
            ));
        }
        if self.db_url.is_empty() {
            return Err(Error::Config("db_url is required".into()));
        }
        if self.cache_ttl_secs == 0 {
            return Err(Error::Config("cache_ttl_secs must be at least 1".into()));
        }
        if self.cache == CacheBackend::Local && self.local_cache_max_entries == 0 {
            return Err(Error::Config(
                "local_cache_max_entries must be at least 1".into(),
            ));
        }
        if self.upstream_timeout_ms == 0 {
            return Err(Error::Config(
                "upstream_timeout_ms must be at least 1".into(),
            ));
        }
        if self.max_body_bytes == 0 {
            return Err(Error::Config("max_body_bytes must be at least 1".into()));
        }
        if self.auth.hs256_secret.as_deref() == Some("") {
            return Err(Error::Config("auth.hs256_secret is empty".into()));
        }
        if !self.users_url.is_empty() && !self.users_url.starts_with("http://") {
            return Err(Error::Config(format!(
                "{:?}: users_url must be an http:// URL",
                self.users_url
            )));
        }
        for url in self.auth_urls.iter().chain(&self.service_urls) {
            if !url.starts_with("http://") {
                return Err(Error::Config(format!(
                    "{url:?}: auth_urls and service_urls must be http:// URLs"
                )));
            }
        }
        let rules = self
            .rate_limit
            .routes
            .iter()
            .map(|(route, rule)| (route.as_str(), rule))
            .chain(self.rate_limit.default.as_ref().map(|r| ("default", r)));
        for (route, rule) in rules {
            if rule.per_minute == 0 {
                return Err(Error::Config(format!(
                    "rate_limit for {route}: per_minute must be at least 1"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The section as the cli writes it (what the crate's report documents).
    const FULL: &str = r#"
auth_urls = ["http://127.0.0.1:5011", "http://127.0.0.1:5012"]
service_urls = ["http://127.0.0.1:5001", "http://127.0.0.1:5006", "http://127.0.0.1:5007"]
cache_url = "http://127.0.0.1:5004"
db_url = "http://127.0.0.1:5002"
cache = "service"
cache_ttl_secs = 30
local_cache_max_entries = 10000
redis_url = "redis://127.0.0.1:6379"
redis_prefix = "scalelab:"
upstream_timeout_ms = 3000
max_body_bytes = 65536

[services]
strategy = "round_robin"
connect_timeout_ms = 1000
response_timeout_ms = 30000

[services.health]
interval_ms = 1000

[auth]
required = true
anonymous_tokens = false
issuer = "scalelab-auth"
leeway_secs = 5
jwks_min_refresh_ms = 1000

[rate_limit]
backend = "local"
login_per_minute = 5
default = { per_minute = 600 }
trusted_proxies = ["127.0.0.1/32", "::1/128"]

[rate_limit.routes]
"/process" = { per_minute = 600, burst = 60 }
"#;

    #[test]
    fn the_documented_section_parses_and_validates() {
        let c: Config = toml::from_str(FULL).expect("parses");
        c.validate().expect("valid");
        assert_eq!(c.auth_urls.len(), 2);
        assert_eq!(
            c.rate_limit.routes["/process"],
            Rule {
                per_minute: 600,
                burst: Some(60)
            }
        );
        assert_eq!(c.rate_limit.default.map(|r| r.burst()), Some(600));
        assert_eq!(c.services.health.interval_ms, 1000);
    }

    #[test]
    fn defaults_and_refusals() {
        let c: Config =
            toml::from_str("db_url = \"http://db\"\ncache = \"local\"").expect("parses");
        assert_eq!(c.cache_ttl_secs, 30);
        assert_eq!(c.rate_limit.login_per_minute, 5);
        assert_eq!(c.rate_limit.trusted_proxies.len(), 2);
        assert!(c.auth.required && !c.auth.anonymous_tokens);
        c.validate().expect("valid");

        assert!(
            toml::from_str::<Config>("nope = 1").is_err(),
            "unknown fields are refused"
        );
        assert!(toml::from_str::<Config>("[auth]\nnope = 1").is_err());
        let redis_without_url: Config =
            toml::from_str("db_url = \"http://db\"\ncache = \"redis\"").expect("parses");
        assert!(matches!(
            redis_without_url.validate(),
            Err(Error::Config(_))
        ));
        let zero: Config = toml::from_str(
            "db_url = \"http://db\"\ncache = \"local\"\n[rate_limit.routes]\n\"/data\" = { per_minute = 0 }",
        )
        .expect("parses");
        assert!(matches!(zero.validate(), Err(Error::Config(_))));
    }
}
