//! What every handler shares, and how it is built at start.

use std::sync::Arc;
use std::time::Duration;

use api::client::{
    AuthClient, DbClient, Direct, JsonClient, RentalClient, ServiceClient, UsersClient,
};
use balance::{Breaker, Fused, Pool, PoolConfig, PoolTransport, Strategy};
use serde_json::Value;

use crate::Error;
use crate::cache::{Cache, LocalCache, NearSettings, RedisCache, ServiceCache};
use crate::config::{CacheBackend, Config, LimiterBackend};
use crate::policy::Policies;
use crate::rate_limit::{Limiter, LocalLimiter, RedisLimiter};
use crate::redis_conn::RedisConn;
use crate::single_flight::SingleFlight;
use crate::tokens::{self, Verifier};

/// The result of one shared `db` read: the value, `None` for an absent key, or the error every
/// waiting caller answers with.
pub(crate) type DbRead = Result<Option<Value>, Arc<Error>>;

/// The Casitas preset's domain services (`features/rental.rs`).
#[derive(Debug, Default)]
pub(crate) struct Rental {
    /// `units_url`'s service.
    pub(crate) units: Option<RentalClient>,
    /// `finances_url`'s service.
    pub(crate) finances: Option<RentalClient>,
    /// `legal_url`'s service.
    pub(crate) legal: Option<RentalClient>,
}

/// Everything the handlers share; cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    pub(crate) inner: Arc<Inner>,
}

/// Aborts a background task when the state that started it is dropped.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Debug)]
pub(crate) struct Inner {
    /// The settings (TTL, limits, auth options).
    pub(crate) config: Config,
    /// Who this gateway is: `gateway_id` in answers, `X-Served-By`, metric labels.
    pub(crate) instance: common::Instance,
    /// The route table resolved against `config`: what the guard and the handlers consult.
    pub(crate) policies: Policies,
    /// Checks tokens against auth's JWKS.
    pub(crate) verifier: Arc<Verifier>,
    /// The auth instances (login, register, guest tokens, JWKS), through a round-robin pool.
    pub(crate) auth: AuthClient,
    /// The pool under `auth`: its backends' health (read by the tests).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) auth_pool: Arc<Pool>,
    /// The service instances behind `/process`, through the configured pool.
    pub(crate) services: ServiceClient,
    /// One circuit breaker per peer, in front of its client (also kept here for the tests).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) breakers: Vec<Arc<Breaker>>,
    /// The db service (the source of truth behind the cache).
    pub(crate) db: DbClient,
    /// The users service (profiles); `None` when the topology has none.
    pub(crate) users: Option<UsersClient>,
    /// The Casitas preset's domain services; each `None` unless configured.
    pub(crate) rental: Rental,
    /// The configured cache backend.
    pub(crate) cache: Arc<dyn Cache>,
    /// The configured rate limiter.
    pub(crate) limiter: Arc<dyn Limiter>,
    /// Concurrent misses for one key share one db read.
    pub(crate) flights: SingleFlight<String, DbRead>,
    /// Keeps a fill that raced a `PUT /data` from storing the value the write replaced.
    pub(crate) fence: crate::fence::WriteFence,
    /// The task queue store (`tasks.rs`), shared with the workers; `None` when not configured.
    pub(crate) tasks: Option<Arc<dyn queue::Queue>>,
    /// `/data` reads by cache outcome, and their latency.
    pub(crate) cache_outcomes: crate::features::data::CacheOutcomes,
    /// The JWKS loader and the pools' health checks, stopped with the state.
    _tasks: Vec<AbortOnDrop>,
    _health: Vec<balance::health::HealthTask>,
    /// The pools' membership sources (the supervisor's lists, or DNS), stopped with the state.
    _membership: Vec<balance::membership::MembershipTask>,
}

impl AppState {
    /// Validates `config` and builds the gateway. Nothing here needs `auth`, `cache`, `db` or Redis
    /// to be up: the JWKS is fetched in the background with retry, connections are opened on
    /// first use, and `GET /ready` tells when everything answers. Starts the active health checks
    /// of the `auth` and `service` pools (they stop when the last clone of the state is dropped),
    /// so that a backend marked down by a failed request comes back even without [`crate::serve`].
    pub async fn new(config: Config, instance: common::Instance) -> Result<AppState, Error> {
        let problems = config.validate();
        if !problems.is_empty() {
            return Err(Error::Config(problems.join("; ")));
        }
        // The recorder before the breakers, so that their first state is recorded.
        common::metrics::handle();
        let policies = Policies::resolve(&config);
        let upstream_timeout = Duration::from_millis(config.upstream_timeout_ms);

        let auth_pool_config = PoolConfig {
            strategy: Strategy::RoundRobin,
            connect_timeout_ms: config.upstream_timeout_ms.min(1000),
            response_timeout_ms: config.upstream_timeout_ms,
            // Found the same way as the services (DNS names re-resolved on an orchestrator).
            resolve: config.services.resolve,
            refresh_ms: config.services.refresh_ms,
            // The same fuses as the services' pool.
            outlier: config.services.outlier.clone(),
            retry_budget: config.services.retry_budget.clone(),
            ..PoolConfig::default()
        };
        // Sent to every internal role (they require it when bound beyond loopback).
        let token: Option<Arc<str>> = config.service_token.as_deref().map(Arc::from);
        // One breaker per peer, each in front of that peer's transport: a sick db opens the db's
        // breaker only, and `/process` keeps working.
        let mut breakers: Vec<Arc<Breaker>> = Vec::new();
        let mut breaker = |peer: &str| {
            let b = Arc::new(Breaker::new(peer, &instance.id, config.breaker.clone()));
            breakers.push(b.clone());
            b
        };
        let auth_pool = Pool::new("auth", &config.auth_urls, auth_pool_config);
        let auth = AuthClient(
            JsonClient::over(Fused::new(
                PoolTransport::new("auth", auth_pool.clone(), upstream_timeout),
                breaker("auth"),
            ))
            .with_service_token(token.clone()),
        );
        let service_pool = Pool::new("service", &config.service_urls, config.services.clone());
        let services = ServiceClient(JsonClient::over(Fused::new(
            PoolTransport::new(
                "service",
                service_pool.clone(),
                // The pool bounds the wait for headers; this also bounds reading the body.
                Duration::from_millis(config.services.response_timeout_ms.saturating_add(1000)),
            ),
            breaker("service"),
        )));
        // A peer at one URL: reqwest behind its breaker.
        let mut direct = |service: &'static str, url: &str| {
            JsonClient::over(Fused::new(
                Direct::new(service, url, upstream_timeout),
                breaker(service),
            ))
            .with_service_token(token.clone())
        };

        let redis = match config.redis_url.as_deref() {
            Some(url) if !url.is_empty() => Some(RedisConn::new(
                url,
                Duration::from_millis(config.redis_timeout_ms),
            )?),
            _ => None,
        };
        let need_redis = || {
            redis
                .clone()
                .ok_or_else(|| Error::Config("redis_url is required".into()))
        };
        let cache: Arc<dyn Cache> = match config.cache {
            CacheBackend::Service => Arc::new(ServiceCache::with_near_cache(
                &config.cache_url,
                upstream_timeout,
                token.clone(),
                NearSettings {
                    entries: config.near_cache_entries,
                    ttl: Duration::from_millis(config.near_cache_ttl_ms),
                    id: instance.id.clone(),
                },
            )),
            CacheBackend::Local => Arc::new(LocalCache::new(config.local_cache_max_entries)),
            CacheBackend::Redis => Arc::new(RedisCache::new(need_redis()?, &config.redis_prefix)),
        };
        let limiter: Arc<dyn Limiter> = match config.rate_limit.backend {
            LimiterBackend::Local => Arc::new(LocalLimiter::default()),
            LimiterBackend::Redis => {
                Arc::new(RedisLimiter::new(need_redis()?, &config.redis_prefix))
            }
        };
        let db = DbClient(direct("db", &config.db_url));
        let users =
            (!config.users_url.is_empty()).then(|| UsersClient(direct("users", &config.users_url)));
        let mut domain = |service: &'static str, url: &str| {
            (!url.is_empty()).then(|| RentalClient(direct(service, url)))
        };
        let rental = Rental {
            units: domain("units", &config.units_url),
            finances: domain("finances", &config.finances_url),
            legal: domain("legal", &config.legal_url),
        };

        // The one store the gateway opens itself: tasks are written where the workers read them.
        let tasks = match &config.queue {
            Some(q) => Some(
                queue::open(q)
                    .await
                    .map_err(|e| Error::Config(format!("the task queue: {e}")))?,
            ),
            None => None,
        };

        if config.auth_urls.is_empty() {
            tracing::warn!(
                "no auth_urls: logins fail and, unless HS256 is configured, no token can be checked"
            );
        }
        if config.service_urls.is_empty() {
            tracing::warn!("no service_urls: GET /process answers 503");
        }
        if config.auth.anonymous_tokens {
            tracing::warn!(
                "GET /token hands out guest tokens to anyone (auth.anonymous_tokens = true)"
            );
        }
        if !config.auth.required {
            tracing::warn!(
                "token checks are off (auth.required = false): requests without a token run as an anonymous guest"
            );
        }
        if config.auth.hs256_secret.is_some() {
            tracing::warn!("HS256 tokens with a shared secret are accepted (compatibility mode)");
        }
        if config.near_cache_entries > 0 && config.cache != CacheBackend::Service {
            tracing::info!(
                cache = ?config.cache,
                "near_cache_entries applies to cache = \"service\" only; no near cache"
            );
        }
        if config.rate_limit.backend == LimiterBackend::Local {
            tracing::info!("rate limits are per gateway instance (rate_limit.backend = \"local\")");
        }

        let verifier = Arc::new(Verifier::new(config.auth.clone(), auth.clone()));
        let loader = tokens::spawn_loader(Arc::downgrade(&verifier));
        let health = vec![
            auth_pool.spawn_health_checks(),
            service_pool.spawn_health_checks(),
        ];
        let members = |role: &str| {
            (!config.membership_url.is_empty()).then(|| {
                format!(
                    "{}/members/{role}",
                    config.membership_url.trim_end_matches('/')
                )
            })
        };
        let membership: Vec<balance::membership::MembershipTask> = [
            auth_pool.spawn_membership(&config.auth_urls, members("auth")),
            service_pool.spawn_membership(&config.service_urls, members("service")),
        ]
        .into_iter()
        .flatten()
        .collect();

        let cache_outcomes = crate::features::data::CacheOutcomes::new(&instance.id);
        Ok(AppState {
            inner: Arc::new(Inner {
                cache_outcomes,
                config,
                instance,
                policies,
                verifier,
                auth,
                auth_pool,
                services,
                breakers,
                db,
                users,
                rental,
                cache,
                limiter,
                flights: SingleFlight::default(),
                fence: Default::default(),
                tasks,
                _tasks: vec![AbortOnDrop(loader)],
                _health: health,
                _membership: membership,
            }),
        })
    }

    /// Who this gateway is.
    pub fn instance(&self) -> &common::Instance {
        &self.inner.instance
    }

    /// Its settings.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The cache backend in use.
    pub fn cache(&self) -> Arc<dyn Cache> {
        self.inner.cache.clone()
    }

    /// The route table as this gateway applies it.
    pub(crate) fn policies(&self) -> &Policies {
        &self.inner.policies
    }
}
