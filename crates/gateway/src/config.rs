//! The `[gateway]` section of the topology file.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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
    /// Base URL of the Casitas preset's `units` service; filled from the topology. Set: the
    /// `/units` routes exist (`policy::UNITS_ROUTES`). Empty: they do not (`404`).
    pub units_url: String,
    /// Base URL of the Casitas preset's `finances` service; filled from the topology. Set: the
    /// `/finances/...` routes exist and `finance_report` tasks may be submitted.
    pub finances_url: String,
    /// Base URL of the Casitas preset's `legal` service; filled from the topology. Set: the
    /// `/legal/...` routes exist and `legal_report` tasks may be submitted.
    pub legal_url: String,
    /// The supervisor's control API (`http://127.0.0.1:PORT`), set by `scalelab up`: the service
    /// and auth pools then follow its lists of instances as they are scaled, drained and stopped.
    /// Empty: the pools are `service_urls` and `auth_urls` (and DNS names with `services.resolve`).
    pub membership_url: String,
    /// The deployment's service credential (`SCALELAB_SERVICE_TOKEN`), sent to the internal roles
    /// (auth, cache, db, users, the rental domains), which require it when bound beyond loopback;
    /// set by `scalelab` from the environment, never by this section.
    #[serde(skip)]
    pub service_token: Option<String>,
    /// The roles an account may hold (what `POST /register` and `PATCH /users/{id}/role` accept);
    /// set by `scalelab` from `[auth] roles`, not by this section.
    #[serde(skip)]
    pub roles: Vec<String>,
    /// Overrides of the route table's roles (`policy::ROUTES`), by `"METHOD /route"` as written
    /// in the router: the role the route needs, or `""` for none beyond its token rule. A key that
    /// names no route is a start-up error. Routes left out keep the table's role
    /// (`scalelab config --routes` prints the table).
    pub required_roles: BTreeMap<String, String>,
    /// Where `GET /data` caches values: `service` (the cache service, shared by every gateway),
    /// `local` (in this process, per instance) or `redis` (needs `redis_url`).
    pub cache: CacheBackend,
    /// Time to live of a value cached by `GET /data`, in seconds.
    pub cache_ttl_secs: u64,
    /// Most entries of the `local` cache; the least recently used are evicted beyond it.
    pub local_cache_max_entries: u64,
    /// Most entries of the near cache in front of `cache = "service"`: this gateway's own copy of
    /// what it last read from the cache service, served only while its subscription to the
    /// service's invalidations is live (so never a value a finished write replaced). `0` turns it
    /// off; the other backends have none (`local` is near already; `redis` not implemented).
    pub near_cache_entries: u64,
    /// Longest life of a near cache entry, in milliseconds; at most `cache_ttl_secs`.
    pub near_cache_ttl_ms: u64,
    /// Redis URL (`redis://127.0.0.1:6379`), needed by `cache = "redis"` and by
    /// `rate_limit.backend = "redis"`.
    pub redis_url: Option<String>,
    /// Prefix of every Redis key this gateway writes (cache entries under `<prefix>cache:`, rate
    /// limit state under `<prefix>rl:`); gateways sharing a prefix share the cache and the limits.
    pub redis_prefix: String,
    /// Longest wait for one Redis command, in milliseconds (redis-rs' own default). A cache read
    /// that takes longer is read from the db instead, a limiter check falls back to this
    /// instance's limits, and the connection is replaced: one a partition left waiting on TCP's
    /// retransmission backoff may stay silent for seconds after the network is back.
    pub redis_timeout_ms: u64,
    /// Longest wait for `auth`, `cache` and `db`, in milliseconds (then `504`).
    pub upstream_timeout_ms: u64,
    /// Largest request body accepted, in bytes (`413 payload_too_large` beyond).
    pub max_body_bytes: usize,
    /// Answer `GET /data` over HTTP/1.1 with the gateway's own engine (`front.rs`: the same
    /// admission, read, headers and metrics without the middleware stack and the router); every
    /// other request goes to the router either way. `false` serves everything with the router.
    pub front_path: bool,
    /// A client connection idle this long between requests (or before its first) is closed, in
    /// milliseconds (nginx's `keepalive_timeout`, 75 s). The front path's connections, and the
    /// router's after a hand-over, keep to it and to `client_header_timeout_ms`.
    pub keepalive_timeout_ms: u64,
    /// A request head must arrive within this long of its first bytes, else the connection is
    /// closed, in milliseconds (nginx's `client_header_timeout`, 60 s).
    pub client_header_timeout_ms: u64,
    /// A client that takes no bytes of its answer for this long is closed, in milliseconds
    /// (nginx's `send_timeout`, 60 s). The front path's connections, also those it hands to the
    /// router; not with `front_path = false`.
    pub send_timeout_ms: u64,
    /// The pool of `service` instances behind `GET /process`: strategy, timeouts, health checks,
    /// outlier ejection and retry budget (the `auth` pool takes its outlier and budget settings).
    pub services: balance::PoolConfig,
    /// The circuit breakers, one per peer (`service`, `auth`, `db`, `users` and the Casitas
    /// domains): while one is open, calls to that peer fail at once with `503 circuit_open`.
    pub breaker: balance::BreakerConfig,
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
            units_url: String::new(),
            finances_url: String::new(),
            legal_url: String::new(),
            membership_url: String::new(),
            service_token: None,
            roles: api::wire::users::DEFAULT_ROLES.map(String::from).to_vec(),
            required_roles: BTreeMap::new(),
            cache: CacheBackend::Service,
            cache_ttl_secs: 30,
            local_cache_max_entries: 10_000,
            near_cache_entries: 1000,
            near_cache_ttl_ms: 5000,
            redis_url: None,
            redis_prefix: "scalelab:".into(),
            redis_timeout_ms: 500,
            upstream_timeout_ms: 3000,
            max_body_bytes: 64 * 1024,
            front_path: true,
            keepalive_timeout_ms: 75_000,
            client_header_timeout_ms: 60_000,
            send_timeout_ms: 60_000,
            services: balance::PoolConfig::default(),
            breaker: balance::BreakerConfig::default(),
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
    /// Most tokens remembered as verified (a hit skips the signature check; an entry never
    /// outlives its token's `exp` nor a change of auth's keys); `0` checks every signature.
    pub verified_cache_entries: u64,
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
            verified_cache_entries: 10_000,
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
    /// Limits by route path as written in the router (`/process`, `/data`, `/data/{key}`); a
    /// path the route table does not have is a start-up error.
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
    /// Every setting the gateway cannot honour, as problems relative to the `[gateway]` section
    /// (`cache_url: required by cache = "service"`), so that a typo fails at start, all at once,
    /// and not on the first request. Unreachable upstreams are not a problem here: `/ready` reports
    /// them. `AppState::new` refuses a configuration with any problem; `scalelab up` and `scalelab
    /// config --check` report them before starting anything.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut problem = |p: String| problems.push(p);
        let needs_redis =
            self.cache == CacheBackend::Redis || self.rate_limit.backend == LimiterBackend::Redis;
        if needs_redis && self.redis_url.as_deref().is_none_or(str::is_empty) {
            problem(
                "redis_url: required by cache = \"redis\" and rate_limit.backend = \"redis\""
                    .into(),
            );
        }
        if self.cache == CacheBackend::Service && self.cache_url.is_empty() {
            problem("cache_url: required by cache = \"service\"".into());
        }
        if self.db_url.is_empty() {
            problem("db_url: required".into());
        }
        if self.cache_ttl_secs == 0 {
            problem("cache_ttl_secs: must be at least 1".into());
        }
        if self.near_cache_entries > 0
            && self.cache_ttl_secs > 0
            && (self.near_cache_ttl_ms == 0
                || self.near_cache_ttl_ms > self.cache_ttl_secs.saturating_mul(1000))
        {
            problem(format!(
                "near_cache_ttl_ms: must be between 1 and cache_ttl_secs in milliseconds ({})",
                self.cache_ttl_secs.saturating_mul(1000)
            ));
        }
        if self.cache == CacheBackend::Local && self.local_cache_max_entries == 0 {
            problem("local_cache_max_entries: must be at least 1".into());
        }
        if self.upstream_timeout_ms == 0 {
            problem("upstream_timeout_ms: must be at least 1".into());
        }
        if self.redis_timeout_ms == 0 {
            problem("redis_timeout_ms: must be at least 1".into());
        }
        if self.max_body_bytes == 0 {
            problem("max_body_bytes: must be at least 1".into());
        }
        if self.keepalive_timeout_ms == 0 {
            problem("keepalive_timeout_ms: must be at least 1".into());
        }
        if self.send_timeout_ms == 0 {
            problem("send_timeout_ms: must be at least 1".into());
        }
        if self.client_header_timeout_ms == 0 {
            problem("client_header_timeout_ms: must be at least 1".into());
        }
        if self.auth.hs256_secret.as_deref() == Some("") {
            problem("auth.hs256_secret: empty".into());
        }
        for (field, url) in [
            ("users_url", &self.users_url),
            ("units_url", &self.units_url),
            ("finances_url", &self.finances_url),
            ("legal_url", &self.legal_url),
            ("membership_url", &self.membership_url),
        ] {
            if !url.is_empty() && !url.starts_with("http://") {
                problem(format!("{field}: {url:?} is not an http:// URL"));
            }
        }
        for (field, urls) in [
            ("auth_urls", &self.auth_urls),
            ("service_urls", &self.service_urls),
        ] {
            for url in urls.iter().filter(|u| !u.starts_with("http://")) {
                problem(format!("{field}: {url:?} is not an http:// URL"));
            }
        }
        for (route, rule) in &self.rate_limit.routes {
            if rule.per_minute == 0 {
                problem(format!(
                    "rate_limit.routes.\"{route}\".per_minute: must be at least 1"
                ));
            }
        }
        if self.rate_limit.default.is_some_and(|r| r.per_minute == 0) {
            problem("rate_limit.default.per_minute: must be at least 1".into());
        }
        problems.extend(
            self.services
                .validate()
                .into_iter()
                .map(|p| format!("services.{p}")),
        );
        problems.extend(
            self.breaker
                .validate()
                .into_iter()
                .map(|p| format!("breaker.{p}")),
        );
        problems.extend(crate::policy::check_overrides(self));
        problems
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
near_cache_entries = 1000
near_cache_ttl_ms = 5000
redis_url = "redis://127.0.0.1:6379"
redis_prefix = "scalelab:"
redis_timeout_ms = 500
upstream_timeout_ms = 3000
max_body_bytes = 65536
front_path = true

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
        assert_eq!(c.validate(), Vec::<String>::new());
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
        assert_eq!(c.validate(), Vec::<String>::new());

        assert!(
            toml::from_str::<Config>("nope = 1").is_err(),
            "unknown fields are refused"
        );
        assert!(toml::from_str::<Config>("[auth]\nnope = 1").is_err());
        let redis_without_url: Config =
            toml::from_str("db_url = \"http://db\"\ncache = \"redis\"").expect("parses");
        assert_eq!(redis_without_url.validate().len(), 1);
        let zero: Config = toml::from_str(
            "db_url = \"http://db\"\ncache = \"local\"\n[rate_limit.routes]\n\"/data\" = { per_minute = 0 }",
        )
        .expect("parses");
        assert_eq!(zero.validate().len(), 1);
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_path() {
        let c: Config = toml::from_str(
            r#"
cache_ttl_secs = 0
[required_roles]
"GET /nope" = "admin"
"POST /login" = "admin"
"GET /tasks/stats" = ""
[rate_limit.routes]
"/nowhere" = { per_minute = 5 }
"/ready" = { per_minute = 5 }
"#,
        )
        .expect("parses");
        let problems = c.validate();
        let starts = [
            "cache_url:",
            "db_url:",
            "cache_ttl_secs:",
            "required_roles.\"GET /nope\": no such route",
            "required_roles.\"POST /login\": this route reads no token",
            "rate_limit.routes.\"/nowhere\": no such route",
            "rate_limit.routes.\"/ready\": this route is never rate limited",
        ];
        for start in starts {
            assert!(
                problems.iter().any(|p| p.starts_with(start)),
                "{start} missing from {problems:#?}"
            );
        }
        assert_eq!(problems.len(), starts.len(), "{problems:#?}");
    }
}
