//! The route table: for every route of the gateway, whether it needs a token, which role, whether
//! a guest token passes, and which rate limit bucket it counts against. It is the only place that
//! decides access.
//!
//! - [`ROUTES`] is the table; the topology may change a route's role (`[gateway.required_roles]`,
//!   `"METHOD /path" = "role"`, `""` for none) and its limit (`[gateway.rate_limit.routes]`), and an
//!   override naming a route the table does not have is a start-up error ([`check_overrides`]).
//! - [`Policies`] is the table resolved against one gateway's configuration, built once at start.
//! - [`build`] puts the feature modules' [`Endpoint`]s into a router, each behind the guard with its
//!   own resolved entry. It **fails closed**: an endpoint without an entry (or an entry without an
//!   endpoint) is an error when the router is built, so a route cannot be added without deciding
//!   who may call it.
//!
//! A route's role is passed by that role and by `admin`. The Casitas preset's routes are three more
//! tables ([`UNITS_ROUTES`], [`FINANCES_ROUTES`], [`LEGAL_ROUTES`]), each active when the gateway has that domain's
//! service (`units_url`, `finances_url`, `legal_url`); an inactive table's routes do not exist.
//!
//! Guests (a token whose roles hold `guest`, handed out by `GET /token`) are read-only: a route
//! that needs a token and writes (every method but `GET`) refuses them unless its entry says
//! otherwise.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use axum::Router;
use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{MethodFilter, MethodRouter};

use api::wire::gateway as wire;

use crate::config::{Config, Rule};
use crate::tokens::Caller;
use crate::{AppState, Error};

/// The role that administers the system (sees every task, and passes every route's role).
pub(crate) const ADMIN: &str = "admin";
/// The Casitas preset's finance staff.
pub(crate) const FINANCE: &str = "finance";
/// The Casitas preset's legal staff.
pub(crate) const LEGAL: &str = "legal";
/// The role of a guest token.
pub(crate) const GUEST: &str = "guest";
/// The bucket both login routes share.
pub(crate) const LOGIN_BUCKET: &str = "login";

/// Whether a route reads the caller's token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRule {
    /// Never read: anyone may call (login, guest tokens, readiness).
    None,
    /// Read when present and used when valid; a bad one is ignored (registration, where an
    /// admin's token may create an admin).
    Optional,
    /// A valid token is needed (`401` otherwise), unless `auth.required = false`.
    Required,
}

/// When a route's role applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleScope {
    /// To every caller.
    Always,
    /// To every caller but the user the path parameter names (your own profile needs no role).
    UnlessSelf(&'static str),
}

/// Which rate limit a route counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    /// Its own bucket, named by its path: `rate_limit.routes[path]`, else `rate_limit.default`.
    Route,
    /// The logins' shared bucket (`rate_limit.login_per_minute`, per client IP).
    Login,
    /// Never limited (readiness probes).
    Unlimited,
}

/// One route's access rules, as declared in [`ROUTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoutePolicy {
    /// `GET`, `POST`, `PUT`, `PATCH` or `DELETE`.
    pub method: &'static str,
    /// The path as the router writes it.
    pub path: &'static str,
    /// Whether it needs a token.
    pub token: TokenRule,
    /// The role it needs beyond a valid token, unless the topology overrides it.
    pub role: Option<&'static str>,
    /// When that role applies.
    pub scope: RoleScope,
    /// Whether a guest token passes (only consulted when `token` is `Required`).
    pub guests: bool,
    /// Its rate limit bucket.
    pub bucket: Bucket,
    /// What it does, for `GET /policy`.
    pub summary: &'static str,
}

const fn entry(method: &'static str, path: &'static str, summary: &'static str) -> RoutePolicy {
    // Reads pass guests; writes do not, unless an entry says so.
    let reads = matches!(method.as_bytes(), b"GET");
    RoutePolicy {
        method,
        path,
        token: TokenRule::Required,
        role: None,
        scope: RoleScope::Always,
        guests: reads,
        bucket: Bucket::Route,
        summary,
    }
}

const fn get(path: &'static str, summary: &'static str) -> RoutePolicy {
    entry("GET", path, summary)
}
const fn post(path: &'static str, summary: &'static str) -> RoutePolicy {
    entry("POST", path, summary)
}
const fn put(path: &'static str, summary: &'static str) -> RoutePolicy {
    entry("PUT", path, summary)
}
const fn patch(path: &'static str, summary: &'static str) -> RoutePolicy {
    entry("PATCH", path, summary)
}
const fn delete(path: &'static str, summary: &'static str) -> RoutePolicy {
    entry("DELETE", path, summary)
}

impl RoutePolicy {
    const fn no_token(mut self) -> Self {
        self.token = TokenRule::None;
        self
    }
    const fn optional_token(mut self) -> Self {
        self.token = TokenRule::Optional;
        self
    }
    const fn role(mut self, role: &'static str) -> Self {
        self.role = Some(role);
        self
    }
    const fn unless_self(mut self, param: &'static str) -> Self {
        self.scope = RoleScope::UnlessSelf(param);
        self
    }
    const fn bucket(mut self, bucket: Bucket) -> Self {
        self.bucket = bucket;
        self
    }

    /// `"METHOD /path"`, the key of the topology's overrides.
    pub fn key(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// Every route of the gateway. `/health` and `/metrics` are the standard stack's (no token, no
/// limit) and are not listed.
pub const ROUTES: &[RoutePolicy] = &[
    // Accounts.
    post("/login", "a token for a username and password")
        .no_token()
        .bucket(Bucket::Login),
    post("/auth/login", "the same as POST /login")
        .no_token()
        .bucket(Bucket::Login),
    post(
        "/register",
        "an account in auth and its profile in users (an admin's token may set a role)",
    )
    .optional_token(),
    post("/auth/register", "the same as POST /register").optional_token(),
    get(
        "/token",
        "a short-lived guest token, when auth.anonymous_tokens is on",
    )
    .no_token(),
    post(
        "/token",
        "a guest token naming a user ({\"username\"}, the lab's call), when anonymous tokens are on",
    )
    .no_token(),
    // Data, cache-aside.
    get("/data", "cache-aside read of ?key= (my_data by default)"),
    get("/data/{key}", "cache-aside read of one key"),
    put("/data/{key}", "write a record, then delete its cached copy"),
    get("/cache/stats", "the cache backend's counters").role(ADMIN),
    post("/cache/flush", "empty the cache").role(ADMIN),
    // Business services.
    get(
        "/process",
        "one service instance's work, through the balanced pool",
    ),
    // Profiles.
    get("/users/me", "your profile"),
    patch(
        "/users/me",
        "change your profile (a role change needs PATCH /users/{id}/role's role)",
    ),
    delete("/users/me", "delete your profile and your account"),
    get("/getUserData", "your profile (the lab's name)"),
    get("/users", "every profile, one page in id order").role(ADMIN),
    get("/users/{id}", "a profile, cached; your own needs no role")
        .role(ADMIN)
        .unless_self("id"),
    patch(
        "/users/{id}/role",
        "change a user's role (also who may register someone with a role)",
    )
    .role(ADMIN),
    // Tasks.
    post("/tasks", "submit a task (202)"),
    get("/tasks", "your tasks (admins: everyone's), newest first"),
    get("/tasks/stats", "tasks by status, queue depth by priority").role(ADMIN),
    get("/tasks/types", "the task types and their payload fields"),
    get("/tasks/{id}", "a task you own (admins: any)"),
    delete("/tasks/{id}", "cancel a queued task you own"),
    get("/task/{id}", "the same as GET /tasks/{id} (the lab's name)"),
    post("/tasks/{id}/requeue", "put a dead task back in the queue").role(ADMIN),
    get(
        "/tasks/{id}/events",
        "a task's changes as server-sent events",
    ),
    post("/longtask", "submit a task the lab's way (202)"),
    post("/add", "submit an add task, Celery style (201)"),
    get("/result/{id}", "an add task's result, Celery style"),
    // Operations.
    get(
        "/ready",
        "200 when auth's keys are loaded and cache, db and users answer",
    )
    .no_token()
    .bucket(Bucket::Unlimited),
    get("/policy", "this table, as this gateway applies it").role(ADMIN),
    // The contract.
    get(
        "/openapi.json",
        "this gateway's OpenAPI 3.1 document (exactly the routes it has)",
    )
    .no_token(),
    get(
        "/docs",
        "the API's documentation page (Swagger UI, served from the binary)",
    )
    .no_token(),
    get("/docs/{file}", "a file of the documentation page").no_token(),
];

/// The Casitas preset's units routes (active with `units_url`).
pub const UNITS_ROUTES: &[RoutePolicy] = &[
    get(
        "/units/available",
        "the units you can rent today, cached (no token needed)",
    )
    .no_token(),
    get("/units", "every unit (?status=), cached"),
    get("/units/{id}", "one unit, cached"),
    post("/units", "add a unit; invalidates the cached listings").role(ADMIN),
    patch(
        "/units/{id}",
        "change a unit; invalidates the cached listings",
    )
    .role(ADMIN),
];

/// The Casitas preset's finances routes (active with `finances_url`).
pub const FINANCES_ROUTES: &[RoutePolicy] = &[
    get(
        "/finances/transactions",
        "transactions (?unit=&month=YYYY-MM), cached per query",
    )
    .role(FINANCE),
    post(
        "/finances/transactions",
        "record a transaction; invalidates the cached queries",
    )
    .role(FINANCE),
    post(
        "/finances/generate_report",
        "queue a finance report (high priority; 202 + task id)",
    )
    .role(FINANCE),
];

/// The Casitas preset's legal routes (active with `legal_url`).
pub const LEGAL_ROUTES: &[RoutePolicy] = &[
    get("/legal/documents", "legal documents (?status=&unit=)").role(LEGAL),
    post(
        "/legal/generate_report",
        "queue a legal report (low priority; 202 + task id)",
    )
    .role(LEGAL),
];

/// Every table, with whether `config` makes it active.
fn tables(config: &Config) -> [(&'static [RoutePolicy], bool); 4] {
    [
        (ROUTES, true),
        (UNITS_ROUTES, !config.units_url.is_empty()),
        (FINANCES_ROUTES, !config.finances_url.is_empty()),
        (LEGAL_ROUTES, !config.legal_url.is_empty()),
    ]
}

/// The routes `config` makes exist, in table order.
pub fn active(config: &Config) -> impl Iterator<Item = &'static RoutePolicy> {
    tables(config)
        .into_iter()
        .filter(|(_, on)| *on)
        .flat_map(|(t, _)| t.iter())
}

/// One route's rules as this gateway applies them: the table's entry with the topology's overrides.
#[derive(Debug)]
pub(crate) struct Resolved {
    /// The table's entry.
    pub(crate) policy: &'static RoutePolicy,
    /// The role needed, after overrides.
    pub(crate) role: Option<String>,
    /// The bucket and rule counted against, if limited.
    pub(crate) limit: Option<(String, Rule)>,
}

impl Resolved {
    /// Refuses `caller` unless they hold this route's role or are an admin (`what` names the
    /// action in the 403).
    pub(crate) fn require(&self, caller: &Caller, what: &str) -> Result<(), Error> {
        match &self.role {
            Some(role) if !self.admits(caller) => {
                Err(Error::Forbidden(format!("{what} needs the {role} role")))
            }
            _ => Ok(()),
        }
    }

    /// Whether `caller` holds this route's role (or is an admin), without naming the action.
    pub(crate) fn admits(&self, caller: &Caller) -> bool {
        match &self.role {
            Some(role) => caller.has_role(role) || caller.has_role(ADMIN),
            None => true,
        }
    }
}

/// The whole table resolved against one configuration, by `"METHOD /path"`.
#[derive(Debug)]
pub(crate) struct Policies {
    by_key: HashMap<String, Arc<Resolved>>,
    /// The active entries, in table order.
    order: Vec<&'static RoutePolicy>,
}

impl Policies {
    /// Resolves [`ROUTES`] against `config` (whose overrides [`check_overrides`] has accepted).
    pub(crate) fn resolve(config: &Config) -> Policies {
        let order: Vec<&'static RoutePolicy> = active(config).collect();
        let by_key = order
            .iter()
            .map(|&p| {
                let key = p.key();
                let role = match config.required_roles.get(&key) {
                    Some(r) if r.is_empty() => None,
                    Some(r) => Some(r.clone()),
                    None => p.role.map(str::to_string),
                };
                let resolved = Resolved {
                    policy: p,
                    role,
                    limit: limit_of(p, config),
                };
                (key, Arc::new(resolved))
            })
            .collect();
        Policies { by_key, order }
    }

    /// The resolved entry of `key` (`"PATCH /users/{id}/role"`).
    pub(crate) fn get(&self, key: &str) -> Result<&Arc<Resolved>, Error> {
        self.by_key
            .get(key)
            .ok_or_else(|| Error::Internal(format!("no policy entry for {key}")))
    }

    /// The table as `GET /policy` shows it, in the table's order.
    pub(crate) fn rows(&self) -> Vec<wire::RoutePolicy> {
        self.order
            .iter()
            .filter_map(|p| self.by_key.get(&p.key()))
            .map(|r| row(r))
            .collect()
    }
}

/// The rate limit of `p` under `config` (what the guard checks).
fn limit_of(p: &RoutePolicy, config: &Config) -> Option<(String, Rule)> {
    let limits = &config.rate_limit;
    if p.bucket == Bucket::Unlimited {
        return None;
    }
    if let Some(rule) = limits.routes.get(p.path) {
        return Some((p.path.to_string(), *rule));
    }
    if p.bucket == Bucket::Login {
        return (limits.login_per_minute > 0).then(|| {
            let rule = Rule {
                per_minute: limits.login_per_minute,
                burst: None,
            };
            (LOGIN_BUCKET.to_string(), rule)
        });
    }
    limits.default.map(|rule| (p.path.to_string(), rule))
}

fn row(r: &Resolved) -> wire::RoutePolicy {
    let p = r.policy;
    wire::RoutePolicy {
        method: p.method.into(),
        path: p.path.into(),
        token: match p.token {
            TokenRule::None => "none",
            TokenRule::Optional => "optional",
            TokenRule::Required => "required",
        }
        .into(),
        role: r.role.clone(),
        role_applies: match p.scope {
            RoleScope::Always => "always".into(),
            RoleScope::UnlessSelf(param) => format!("unless the caller is {{{param}}}"),
        },
        guests: p.token != TokenRule::Required || p.guests,
        bucket: r.limit.as_ref().map(|(b, _)| b.clone()),
        limit: r
            .limit
            .as_ref()
            .map(|(_, rule)| format!("{}/min, burst {}", rule.per_minute, rule.burst())),
        summary: p.summary.into(),
    }
}

/// The route table as a configuration would apply it (for `scalelab config --routes`).
pub fn route_table(config: &Config) -> Vec<wire::RoutePolicy> {
    Policies::resolve(config).rows()
}

/// Every override in `config` that names no route of the table, or cannot apply to the route it
/// names, as problems relative to the `[gateway]` section.
pub(crate) fn check_overrides(config: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    for key in config.required_roles.keys() {
        match active(config).find(|p| p.key() == *key) {
            None => problems.push(format!(
                "required_roles.\"{key}\": no such route (keys are \"METHOD /path\"; `scalelab config --routes` lists them)"
            )),
            Some(p) if p.token == TokenRule::None => problems.push(format!(
                "required_roles.\"{key}\": this route reads no token, so it cannot need a role"
            )),
            Some(_) => {}
        }
    }
    for path in config.rate_limit.routes.keys() {
        match active(config).find(|p| p.path == path) {
            None => problems.push(format!(
                "rate_limit.routes.\"{path}\": no such route (keys are paths as the router writes them, like \"/data/{{key}}\")"
            )),
            Some(p) if p.bucket == Bucket::Unlimited => problems.push(format!(
                "rate_limit.routes.\"{path}\": this route is never rate limited"
            )),
            Some(_) => {}
        }
    }
    problems
}

/// A handler for one method and path, as a feature module declares it.
pub(crate) struct Endpoint {
    method: Method,
    path: &'static str,
    handler: MethodRouter<AppState>,
}

impl Endpoint {
    /// `handler` for `method path`.
    pub(crate) fn new<H, T>(method: Method, path: &'static str, handler: H) -> Endpoint
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone()).unwrap_or(MethodFilter::GET);
        Endpoint {
            method,
            path,
            handler: axum::routing::on(filter, handler),
        }
    }

    fn key(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// Why a router could not be built from the endpoints and the table.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BuildError {
    /// An endpoint has no entry in [`ROUTES`]: nobody decided who may call it.
    NoPolicy(String),
    /// An entry of [`ROUTES`] has no endpoint (a stale entry).
    NoHandler(String),
    /// Two endpoints for one method and path.
    Duplicate(String),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::NoPolicy(k) => write!(f, "{k} has no entry in the route table"),
            BuildError::NoHandler(k) => write!(f, "the route table's {k} has no handler"),
            BuildError::Duplicate(k) => write!(f, "{k} is routed twice"),
        }
    }
}

/// Routes every endpoint behind the guard with its own resolved entry; refuses an endpoint without
/// an entry and an entry without an endpoint.
pub(crate) fn build(
    state: &AppState,
    endpoints: Vec<Endpoint>,
) -> Result<Router<AppState>, BuildError> {
    let policies = state.policies();
    let mut seen = std::collections::HashSet::new();
    let mut router = Router::new();
    for e in endpoints {
        let key = e.key();
        let Some(resolved) = policies.by_key.get(&key) else {
            return Err(BuildError::NoPolicy(key));
        };
        if !seen.insert(key.clone()) {
            return Err(BuildError::Duplicate(key));
        }
        let guard = axum::middleware::from_fn_with_state(
            (state.clone(), resolved.clone()),
            crate::guard::guard,
        );
        // A route layer: an unknown route or a wrong method gets its 404/405 without a token.
        router = router.route(e.path, e.handler.route_layer(guard));
    }
    if let Some(stale) = policies
        .order
        .iter()
        .map(|p| p.key())
        .find(|k| !seen.contains(k))
    {
        return Err(BuildError::NoHandler(stale));
    }
    Ok(router)
}
