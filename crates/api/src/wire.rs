//! Request and response bodies, one module per service.

/// Whole numbers in JSON bodies written with or without a fraction of zero (`12` or `12.0`: JSON
/// does not tell them apart, and the public document's integers accept both), for
/// `#[serde(deserialize_with)]`. A fraction, or a number out of the type's range, is refused.
pub mod whole {
    use serde::{Deserialize, Deserializer};

    fn number<'de, D: Deserializer<'de>>(n: serde_json::Number) -> Result<i128, D::Error> {
        if let Some(i) = n.as_i64() {
            return Ok(i128::from(i));
        }
        if let Some(u) = n.as_u64() {
            return Ok(i128::from(u));
        }
        match n.as_f64() {
            // Within 2^63 an f64 with no fraction is exactly an integer.
            Some(f) if f.fract() == 0.0 && f.abs() <= 9.2e18 => Ok(f as i128),
            _ => Err(serde::de::Error::custom(format!(
                "expected a whole number, got {n}"
            ))),
        }
    }

    fn fit<'de, D: Deserializer<'de>, T: TryFrom<i128>>(v: i128) -> Result<T, D::Error> {
        T::try_from(v).map_err(|_| serde::de::Error::custom(format!("{v} is out of range")))
    }

    /// An `i64`.
    pub fn i64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        let n = serde_json::Number::deserialize(d)?;
        fit::<D, i64>(number::<D>(n)?)
    }

    /// A `u32`.
    pub fn u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let n = serde_json::Number::deserialize(d)?;
        fit::<D, u32>(number::<D>(n)?)
    }

    /// An optional `i64` (`null` is `None`; with `#[serde(default)]` for an absent field).
    pub fn opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        match Option::<serde_json::Number>::deserialize(d)? {
            None => Ok(None),
            Some(n) => fit::<D, i64>(number::<D>(n)?).map(Some),
        }
    }

    /// An optional `u32` (`null` is `None`; with `#[serde(default)]` for an absent field).
    pub fn opt_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        match Option::<serde_json::Number>::deserialize(d)? {
            None => Ok(None),
            Some(n) => fit::<D, u32>(number::<D>(n)?).map(Some),
        }
    }
}

/// `auth`: credentials, login, token signing, public keys.
pub mod auth {
    use serde::{Deserialize, Serialize};

    /// `POST /login` (gateway and auth).
    #[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct LoginRequest {
        /// The account name.
        pub username: String,
        /// The clear-text password, checked against an argon2id hash.
        pub password: String,
    }

    /// `POST /register`. `role` is honoured by `auth` only when the gateway says the caller is an
    /// admin (the gateway strips it otherwise).
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct RegisterRequest {
        /// The account name: 3 to 64 characters.
        pub username: String,
        /// At least 8 characters.
        pub password: String,
        /// `user` (default) or `admin`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub role: Option<String>,
    }

    /// `PUT /accounts/{username}/roles`: the account's new roles (effective at its next login).
    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct RolesRequest {
        /// `user` and/or `admin`; at least one.
        pub roles: Vec<String>,
    }

    /// `POST /guest-token` (auth) and `POST /token` (gateway) body, optional: the name a guest
    /// token carries (the lab's scripts ask for a token "for" a user without a password).
    #[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct GuestRequest {
        /// The name in the token's `username` claim; `guest` when absent. The token is still a
        /// guest's: role `guest`, read-only, no account behind it.
        #[serde(default)]
        #[schema(pattern = r"^[A-Za-z0-9_.-]{3,64}$")]
        pub username: Option<String>,
    }

    /// A signed token, as `login` and `register` return it.
    #[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
    pub struct TokenResponse {
        /// The JWT (EdDSA by default).
        pub token: String,
        /// Always `Bearer`.
        pub token_type: String,
        /// Seconds until the token expires.
        pub expires_in: u64,
    }

    /// A user as `auth` knows it (no password hash, ever).
    #[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, PartialEq, Eq)]
    pub struct Account {
        /// Stable id (UUID).
        pub id: String,
        /// The account name.
        pub username: String,
        /// Roles carried in the token's `roles` claim.
        pub roles: Vec<String>,
    }

    /// The claims of every scalelab token.
    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
    pub struct Claims {
        /// The user id.
        pub sub: String,
        /// The account name.
        pub username: String,
        /// `user`, `admin`, `guest`.
        pub roles: Vec<String>,
        /// Issued at (seconds since the epoch).
        pub iat: u64,
        /// Expires at (seconds since the epoch).
        pub exp: u64,
        /// The issuer (`scalelab-auth` unless configured).
        pub iss: String,
    }
}

/// `cache`: the cache service shared by the gateways.
pub mod cache {
    use serde::{Deserialize, Serialize};
    use serde_json::Value;

    /// `GET /cache/{key}`: `value` is `null` when the key is absent; `found` tells a stored
    /// `null` from an absent key.
    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    pub struct CacheEntry {
        /// The stored value, or `null` when absent.
        pub value: Value,
        /// Whether the key was present.
        pub found: bool,
        /// A fill lease, when the query asked for one ([`LeaseQuery`]): the token a fill of this
        /// key must carry in [`CacheSet::lease`]. A write of the key (delete, set, flush) voids
        /// every outstanding lease of it, so a fill that read its source before the write is
        /// refused. Absent when not asked for, or when the service holds too many leases.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub lease: Option<u64>,
    }

    /// `GET /cache/{key}?lease=...`: whether to hand out a fill lease.
    #[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
    pub struct LeaseQuery {
        /// `on_miss` (a cache-aside read) or `always` (a refresh that refills whatever is there).
        #[serde(default)]
        pub lease: Option<LeaseMode>,
    }

    /// When `GET /cache/{key}` hands out a lease.
    #[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
    #[serde(rename_all = "snake_case")]
    pub enum LeaseMode {
        /// Only when the key is absent (the caller is about to fill it).
        OnMiss,
        /// Whatever the answer (the caller refills the key from its source anyway).
        Always,
    }

    /// `POST`/`PUT /cache/{key}`.
    ///
    /// Without `lease` the set is a write: it voids the key's leases and, answered, every
    /// subscriber of the invalidation stream has dropped its copy of the key. With `lease` it is a
    /// fill: stored only if the lease is still valid (`stored: false` otherwise).
    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct CacheSet {
        /// Any JSON value, falsy ones included.
        pub value: Value,
        /// Time to live in seconds; the service's default when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub ttl: Option<u64>,
        /// The lease of a fill ([`CacheEntry::lease`]); absent for a write.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub lease: Option<u64>,
    }

    /// The answer to `POST`/`PUT /cache/{key}`.
    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
    pub struct CacheStored {
        /// `false` only for a fill whose lease was voided by a write (or expired).
        pub stored: bool,
        /// The key.
        pub key: String,
        /// The TTL applied, in seconds (the default when the client sent none).
        pub ttl: u64,
    }

    /// One line of `POST /invalidations`, the stream every near cache follows (JSON lines).
    ///
    /// `seq` numbers the events of one subscription from 1; an acknowledgement of `seq` says that
    /// every event up to it was applied.
    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
    #[serde(tag = "event", rename_all = "snake_case")]
    pub enum InvalidationEvent {
        /// The first line: who the subscriber is and the lease rules.
        Hello {
            /// The subscription's id, for its acknowledgements.
            subscriber: u64,
            /// How long an acknowledged event lets the subscriber serve its near cache, counted
            /// from when it sent the acknowledgement.
            lease_ms: u64,
            /// How often a heartbeat comes when nothing else does.
            heartbeat_ms: u64,
        },
        /// These keys were written: drop them.
        Invalidate {
            /// The event's number.
            seq: u64,
            /// The keys.
            keys: Vec<String>,
        },
        /// The cache was flushed: drop everything.
        Flush {
            /// The event's number.
            seq: u64,
        },
        /// Nothing changed; acknowledge to keep the lease.
        Heartbeat {
            /// The event's number.
            seq: u64,
        },
    }

    impl InvalidationEvent {
        /// The event's number (`0` for `Hello`).
        pub fn seq(&self) -> u64 {
            match self {
                InvalidationEvent::Hello { .. } => 0,
                InvalidationEvent::Invalidate { seq, .. }
                | InvalidationEvent::Flush { seq }
                | InvalidationEvent::Heartbeat { seq } => *seq,
            }
        }
    }

    /// `POST /invalidations/{subscriber}/ack`.
    #[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
    #[serde(deny_unknown_fields)]
    pub struct InvalidationAck {
        /// Every event up to this one was applied.
        pub seq: u64,
    }

    /// The answer to an acknowledgement: the lease is renewed (`410 subscription_gone` when the
    /// subscriber was cut off: it must drop its near cache and subscribe again).
    #[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
    pub struct LeaseRenewed {
        /// The lease, in milliseconds from when the acknowledgement was sent.
        pub lease_ms: u64,
    }

    /// `GET /cache/stats`.
    #[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema, PartialEq)]
    pub struct CacheStats {
        /// Entries held now.
        pub entries: u64,
        /// Lookups that found a value.
        pub hits: u64,
        /// Lookups that found nothing.
        pub misses: u64,
        /// `hits / (hits + misses)`, 0 when there were no lookups.
        pub hit_ratio: f64,
        /// Entries pushed out by the size bound.
        pub evictions: u64,
        /// Entries dropped because their TTL ran out.
        pub expired: u64,
    }
}

/// `db`: the slow data service.
pub mod db {
    use serde::{Deserialize, Serialize};
    use serde_json::Value;

    /// One record: `GET /db/{key}` answers it, `PUT /db/{key}` writes it.
    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    pub struct Record {
        /// The record's key.
        pub key: String,
        /// Any JSON value.
        pub value: Value,
        /// RFC 3339 time of the last write.
        pub updated_at: String,
    }

    /// `PUT /db/{key}` body.
    #[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct PutRecord {
        /// Any JSON value.
        pub value: Value,
    }
}

/// `service`: the business microservice.
pub mod service {
    use serde::{Deserialize, Serialize};

    /// `GET /process`.
    #[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, PartialEq)]
    pub struct ProcessResponse {
        /// Always `Business logic executed`.
        pub message: String,
        /// The instance that did the work.
        pub service_id: String,
        /// Time spent in the handler, waiting and computing.
        pub processing_ms: f64,
    }
}

/// `gateway`: the public API. Every answer of the gateway that is not an error is one of these
/// (or a type of another service's module passed on as is: `auth::TokenResponse`,
/// `users::Profile`, the queue's tasks), so that the public contract is written down in one place.
pub mod gateway {
    use serde::{Deserialize, Serialize};
    use serde_json::Value;

    use super::auth::Account;
    use super::cache::CacheStats;
    use super::service::ProcessResponse;
    use super::users::Profile;

    /// `GET /data`: the cache-aside answer.
    #[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, PartialEq)]
    pub struct DataResponse {
        /// `true` when the answer came from the cache.
        pub cached: bool,
        /// Which cache answered, when one did: `near` (this gateway's own copy, kept coherent by
        /// the cache service's invalidations) or `shared` (the cache backend). Also in
        /// `X-Cache-Layer`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub cache_layer: Option<CacheLayer>,
        /// The key read.
        pub key: String,
        /// The value.
        pub data: Value,
        /// The gateway that answered.
        pub gateway_id: String,
    }

    /// Which cache answered a hit.
    #[derive(Debug, Clone, Copy, Serialize, Deserialize, utoipa::ToSchema, PartialEq, Eq)]
    #[serde(rename_all = "snake_case")]
    pub enum CacheLayer {
        /// The gateway's near cache, in its own memory.
        Near,
        /// The cache backend (`service`, `local` or `redis`).
        Shared,
    }

    impl CacheLayer {
        /// `near` or `shared`, as in `X-Cache-Layer`.
        pub fn as_str(self) -> &'static str {
            match self {
                CacheLayer::Near => "near",
                CacheLayer::Shared => "shared",
            }
        }
    }

    /// `GET /data` and `GET /data/{key}` query.
    #[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
    pub struct DataQuery {
        /// The key (`my_data` when absent); `GET /data/{key}` takes it from the path.
        pub key: Option<String>,
        /// `true` skips the cache and refills it from the db.
        pub refresh: Option<String>,
    }

    /// `PUT /data/{key}`: the record as written, and whether the cached copy was deleted.
    #[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, PartialEq)]
    pub struct DataWritten {
        /// The key written.
        pub key: String,
        /// The value stored.
        pub value: Value,
        /// RFC 3339 time of the write.
        pub updated_at: String,
        /// `false` when the cache could not be told (the old value lives until its TTL).
        pub invalidated: bool,
        /// The gateway that answered.
        pub gateway_id: String,
    }

    /// `GET /process`: the service instance's answer and the gateway that passed it on.
    #[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, PartialEq)]
    pub struct ProcessAnswer {
        /// What the service answered.
        #[serde(flatten)]
        pub service: ProcessResponse,
        /// The gateway that answered.
        pub gateway_id: String,
    }

    /// `GET /cache/stats`: the cache backend's counters.
    #[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, PartialEq)]
    pub struct CacheStatsAnswer {
        /// The counters.
        #[serde(flatten)]
        pub stats: CacheStats,
        /// `service`, `local` or `redis`.
        pub backend: String,
        /// The gateway that answered.
        pub gateway_id: String,
    }

    /// `POST /cache/flush`.
    #[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, PartialEq, Eq)]
    pub struct Flushed {
        /// Always `true`.
        pub flushed: bool,
        /// The backend emptied.
        pub backend: String,
    }

    /// `GET /ready` when everything answers.
    #[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, PartialEq, Eq)]
    pub struct Ready {
        /// Always `ready`.
        pub status: String,
        /// The cache backend in use.
        pub cache: String,
        /// The gateway that answered.
        pub gateway_id: String,
    }

    /// `POST /register` body: credentials plus the optional profile fields.
    #[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
    pub struct RegisterUser {
        /// The account name: 3 to 64 letters, digits, `_`, `.` or `-`.
        #[schema(pattern = r"^[A-Za-z0-9_.-]{3,64}$")]
        pub username: String,
        /// The password: 8 to 1024 characters.
        #[schema(min_length = 8, max_length = 1024)]
        pub password: String,
        /// `user` (default); anything else needs an admin's token.
        #[serde(default)]
        pub role: Option<String>,
        /// Profile: email (`name@example.org`, at most 254 characters).
        #[serde(default)]
        #[schema(
            pattern = r"^[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000@]+@[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000@.-]([^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000@.]*[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000@.-])?(\.[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000@.-]([^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000@.]*[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000@.-])?)+$",
            max_length = 254
        )]
        pub email: Option<String>,
        /// Profile: first name, 1 to 100 characters, not only spaces, no control characters.
        #[serde(default)]
        #[schema(
            pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\u0000-\u001f\u007f-\u009f\u0020\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\u0000-\u001f\u007f-\u009f]*$",
            min_length = 1,
            max_length = 100
        )]
        pub first_name: Option<String>,
        /// Profile: last name, as the first name.
        #[serde(default)]
        #[schema(
            pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\u0000-\u001f\u007f-\u009f\u0020\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\u0000-\u001f\u007f-\u009f]*$",
            min_length = 1,
            max_length = 100
        )]
        pub last_name: Option<String>,
    }

    /// `POST /register` answer: the account and, when the topology has `users`, the profile.
    #[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
    pub struct Registered {
        /// The account in `auth`.
        #[serde(flatten)]
        pub account: Account,
        /// The profile in `users`.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        pub profile: Option<Profile>,
    }

    /// `DELETE /users/me`.
    #[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, PartialEq, Eq)]
    pub struct Deleted {
        /// Always `true`: nothing of the user is left.
        pub deleted: bool,
        /// Whether a profile was deleted now (`false`: it was already gone).
        pub profile: bool,
        /// Whether an account was deleted now (`false`: it was already gone).
        pub account: bool,
    }

    /// `GET /users` query.
    #[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct UsersQuery {
        /// The last id of the previous page.
        pub after: Option<String>,
        /// Page size (50 when absent).
        pub limit: Option<u32>,
    }

    /// `PATCH /users/{id}/role` answer.
    #[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
    pub struct RoleChanged {
        /// The profile with its new role.
        pub profile: Profile,
        /// The account's roles in `auth`.
        pub roles: Vec<String>,
        /// When tokens carry it: `at the user's next login`.
        pub effective: String,
    }

    /// `POST /tasks` body.
    #[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct SubmitTask {
        /// A task type (`GET /tasks/types`).
        #[serde(rename = "type")]
        pub kind: String,
        /// Its payload, checked against the type's fields.
        #[serde(default)]
        pub payload: Value,
        /// `high`, `normal` (default) or `low`.
        pub priority: Option<String>,
        /// Attempts before the task is dead.
        #[serde(default, deserialize_with = "super::whole::opt_u32")]
        pub max_attempts: Option<u32>,
    }

    /// `POST /longtask` answer (the lab's shape).
    #[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, PartialEq, Eq)]
    pub struct TaskQueued {
        /// Always `Task queued`.
        pub status: String,
        /// The task's id.
        pub task_id: String,
        /// Its type.
        #[serde(rename = "type")]
        pub kind: String,
        /// Its priority.
        pub priority: String,
        /// Where to poll its state.
        pub status_url: String,
        /// Where to follow it as server-sent events.
        pub events_url: String,
    }

    /// `POST /add` body (the Celery-style pair).
    #[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct AddRequest {
        /// First operand (a number; the task refuses anything else).
        #[schema(value_type = f64)]
        pub a: Value,
        /// Second operand (a number).
        #[schema(value_type = f64)]
        pub b: Value,
    }

    /// `POST /add` answer.
    #[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, PartialEq, Eq)]
    pub struct AddQueued {
        /// The id to pass to `GET /result/{id}`.
        pub result_id: String,
        /// The same id, as every task route names it.
        pub task_id: String,
    }

    /// `GET /result/{id}`.
    #[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, PartialEq)]
    pub struct TaskResult {
        /// The task's id.
        pub id: String,
        /// Its status.
        pub status: String,
        /// Whether the task is final.
        pub ready: bool,
        /// Whether it succeeded.
        pub successful: bool,
        /// Its result, its last error when it did not succeed, `null` while it runs.
        pub value: Value,
    }

    /// `GET /tasks` query.
    #[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct TasksQuery {
        /// Only tasks in this status.
        pub status: Option<String>,
        /// Only tasks of this type.
        #[serde(rename = "type")]
        pub kind: Option<String>,
        /// Page size, 1 to 500 (50 when absent).
        pub limit: Option<u32>,
        /// `next_cursor` of the previous page.
        pub cursor: Option<String>,
        /// Admins only: one owner's tasks.
        pub owner: Option<String>,
    }

    /// Any answer of another service's type, with the gateway that passed it on.
    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    pub struct Tagged<T> {
        /// The answer.
        #[serde(flatten)]
        pub inner: T,
        /// The gateway that answered.
        pub gateway_id: String,
    }

    /// `GET /tasks/types`.
    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    pub struct TaskTypes<T> {
        /// Each type and its payload fields.
        pub types: T,
    }

    /// One row of the route table (`GET /policy`, `scalelab config --routes`).
    #[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, PartialEq, Eq)]
    pub struct RoutePolicy {
        /// `GET`, `POST`, ...
        pub method: String,
        /// The path as the router writes it (`/data/{key}`).
        pub path: String,
        /// `none` (never read), `optional` (used when valid) or `required`.
        pub token: String,
        /// The role needed, after the topology's overrides; `None`: any valid token.
        pub role: Option<String>,
        /// When the role applies: `always`, or `unless the caller is {param}`.
        pub role_applies: String,
        /// Whether a guest token passes (guests are read-only).
        pub guests: bool,
        /// The rate limit bucket counted against, if any (`login` is shared by both logins).
        pub bucket: Option<String>,
        /// The limit of that bucket (`600/min, burst 60`), if any.
        pub limit: Option<String>,
        /// What the route does.
        pub summary: String,
    }
}

/// `users`: profiles, sharded by user id. Validation lives here so that the gateway can refuse a
/// bad registration before it creates credentials, with the same rules `users` enforces.
pub mod users {
    use serde::{Deserialize, Serialize};

    /// Longest email accepted, in characters (RFC 5321's path limit).
    pub const MAX_EMAIL_CHARS: usize = 254;
    /// Longest first or last name accepted, in characters.
    pub const MAX_NAME_CHARS: usize = 100;
    /// The roles a profile may hold unless the topology names more (`[auth] roles`).
    pub const DEFAULT_ROLES: [&str; 2] = ["user", "admin"];

    /// A profile as `users` stores and returns it. Strings come back exactly as written (SQL and
    /// HTML included): they are bound as parameters, never spliced into a query or a page.
    #[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, PartialEq, Eq)]
    pub struct Profile {
        /// The user id: the `auth` account id, the token's `sub`, the shard key.
        pub id: String,
        /// Unique across all shards.
        pub username: String,
        /// `null` when not given at registration.
        pub email: Option<String>,
        /// `null` when not given.
        pub first_name: Option<String>,
        /// `null` when not given.
        pub last_name: Option<String>,
        /// `user` or `admin` (the role the token carries from the next login on).
        pub role: String,
        /// RFC 3339 UTC.
        pub created_at: String,
        /// RFC 3339 UTC of the last write.
        pub updated_at: String,
    }

    /// `POST /users` (internal): a new profile for an existing account.
    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
    #[serde(deny_unknown_fields)]
    pub struct CreateProfile {
        /// The `auth` account id.
        pub id: String,
        /// The account name (same rules as `auth`).
        pub username: String,
        /// Optional; when present a valid address.
        #[serde(default)]
        pub email: Option<String>,
        /// Optional; when present 1 to 100 characters.
        #[serde(default)]
        pub first_name: Option<String>,
        /// Optional; when present 1 to 100 characters.
        #[serde(default)]
        pub last_name: Option<String>,
        /// `user` when absent.
        #[serde(default)]
        pub role: Option<String>,
    }

    /// `PATCH /users/{id}` (internal) and `PATCH /users/me` (gateway): the fields to change.
    #[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema, PartialEq, Eq)]
    #[serde(deny_unknown_fields)]
    pub struct UpdateProfile {
        /// New email.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(
            pattern = r"^[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000@]+@[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000@.-]([^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000@.]*[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000@.-])?(\.[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000@.-]([^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000@.]*[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000@.-])?)+$",
            max_length = 254
        )]
        pub email: Option<String>,
        /// New first name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(
            pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\u0000-\u001f\u007f-\u009f\u0020\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\u0000-\u001f\u007f-\u009f]*$",
            min_length = 1,
            max_length = 100
        )]
        pub first_name: Option<String>,
        /// New last name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(
            pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\u0000-\u001f\u007f-\u009f\u0020\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\u0000-\u001f\u007f-\u009f]*$",
            min_length = 1,
            max_length = 100
        )]
        pub last_name: Option<String>,
        /// New role; the gateway only lets an admin set it (`PATCH /users/{id}/role`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub role: Option<String>,
    }

    /// `PATCH /users/{id}/role` at the gateway.
    #[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, PartialEq, Eq)]
    #[serde(deny_unknown_fields)]
    pub struct RoleChange {
        /// `user` or `admin`.
        pub role: String,
    }

    /// `GET /users?after=ID&limit=N`: one page, in id order across every shard.
    #[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, PartialEq, Eq)]
    pub struct ProfilePage {
        /// At most `limit` profiles, ids ascending.
        pub users: Vec<Profile>,
        /// Pass as `after` for the next page; `null` on the last page.
        pub next_cursor: Option<String>,
    }

    /// One shard in `GET /shards`.
    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
    pub struct ShardStatus {
        /// The shard number (`0..shard_count`).
        pub shard: u32,
        /// `sqlite` or `postgres`.
        pub engine: String,
        /// Whether the primary answers.
        pub healthy: bool,
        /// Profiles on the shard (`null` when it does not answer).
        pub users: Option<u64>,
        /// Health of each read replica, in configured order.
        pub replicas: Vec<bool>,
    }

    /// `GET /shards`.
    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
    pub struct ShardsReport {
        /// How many shards the layout has (ids are placed by jump hash over this count).
        pub shard_count: u32,
        /// One entry per shard.
        pub shards: Vec<ShardStatus>,
    }

    /// Why a field was refused: a stable code and a sentence.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Invalid {
        /// `invalid_username`, `invalid_email`, `invalid_name`, `invalid_role`, `invalid_id`.
        pub code: &'static str,
        /// For people.
        pub message: String,
    }

    impl Invalid {
        fn new(code: &'static str, message: impl Into<String>) -> Self {
            Self {
                code,
                message: message.into(),
            }
        }
    }

    /// A username is 3 to 64 characters of `[A-Za-z0-9_.-]` (the rule of `auth`).
    pub fn check_username(name: &str) -> Result<(), Invalid> {
        let ok = (3..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        ok.then_some(()).ok_or_else(|| {
            Invalid::new(
                "invalid_username",
                "the username must be 3 to 64 characters of letters, digits, '_', '.' or '-'",
            )
        })
    }

    /// An id is 1 to 64 characters of `[A-Za-z0-9_-]` (UUIDs and test ids).
    pub fn check_id(id: &str) -> Result<(), Invalid> {
        let ok = (1..=64).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
        ok.then_some(()).ok_or_else(|| {
            Invalid::new(
                "invalid_id",
                "a user id is 1 to 64 characters of letters, digits, '_' or '-'",
            )
        })
    }

    /// An email: at most 254 characters, no spaces or control characters, one `@` with a
    /// non-empty local part before it and a dotted domain after it. Deliverability is not checked.
    pub fn check_email(email: &str) -> Result<(), Invalid> {
        let bad = || {
            Invalid::new(
                "invalid_email",
                format!(
                    "the email must look like name@example.org (at most {MAX_EMAIL_CHARS} characters)"
                ),
            )
        };
        if email.chars().count() > MAX_EMAIL_CHARS
            || email.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(bad());
        }
        let (local, domain) = email.split_once('@').ok_or_else(bad)?;
        let labels_ok = domain
            .split('.')
            .all(|l| !l.is_empty() && !l.starts_with('-') && !l.ends_with('-'));
        if local.is_empty() || domain.contains('@') || !domain.contains('.') || !labels_ok {
            return Err(bad());
        }
        Ok(())
    }

    /// A first or last name: 1 to 100 characters, no control characters. Anything else (quotes,
    /// `<script>`, SQL) is a name as far as storage goes.
    pub fn check_name(field: &str, value: &str) -> Result<(), Invalid> {
        let n = value.chars().count();
        if n == 0
            || n > MAX_NAME_CHARS
            || value.chars().any(char::is_control)
            || value.trim().is_empty()
        {
            return Err(Invalid::new(
                "invalid_name",
                format!(
                    "{field} must be 1 to {MAX_NAME_CHARS} characters, not only spaces, without control characters"
                ),
            ));
        }
        Ok(())
    }

    /// One of `roles` (the topology's `[auth] roles`: `user` and `admin` unless it names more).
    pub fn check_role<S: AsRef<str>>(role: &str, roles: &[S]) -> Result<(), Invalid> {
        if roles.iter().any(|r| r.as_ref() == role) {
            return Ok(());
        }
        let names: Vec<String> = roles.iter().map(|r| format!("{:?}", r.as_ref())).collect();
        Err(Invalid::new(
            "invalid_role",
            format!("the role must be one of {}", names.join(", ")),
        ))
    }

    /// Whether `name` can be a role at all: 1 to 32 characters of `[a-z0-9_]` starting with a
    /// letter, and not `guest` (the role of guest tokens, which no account holds).
    pub fn is_role_name(name: &str) -> bool {
        (1..=32).contains(&name.len())
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && name != "guest"
    }

    fn check_optional<S: AsRef<str>>(
        email: Option<&str>,
        first: Option<&str>,
        last: Option<&str>,
        role: Option<&str>,
        roles: &[S],
    ) -> Result<(), Invalid> {
        email.map(check_email).transpose()?;
        first.map(|v| check_name("first_name", v)).transpose()?;
        last.map(|v| check_name("last_name", v)).transpose()?;
        role.map(|r| check_role(r, roles)).transpose()?;
        Ok(())
    }

    impl CreateProfile {
        /// Every rule above, first failure wins.
        pub fn validate<S: AsRef<str>>(&self, roles: &[S]) -> Result<(), Invalid> {
            check_id(&self.id)?;
            check_username(&self.username)?;
            check_optional(
                self.email.as_deref(),
                self.first_name.as_deref(),
                self.last_name.as_deref(),
                self.role.as_deref(),
                roles,
            )
        }
    }

    impl UpdateProfile {
        /// Every rule above for the fields present; an update that changes nothing is refused.
        pub fn validate<S: AsRef<str>>(&self, roles: &[S]) -> Result<(), Invalid> {
            if self == &UpdateProfile::default() {
                return Err(Invalid::new(
                    "empty_update",
                    "give at least one of email, first_name, last_name",
                ));
            }
            check_optional(
                self.email.as_deref(),
                self.first_name.as_deref(),
                self.last_name.as_deref(),
                self.role.as_deref(),
                roles,
            )
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn emails() {
            for ok in ["a@b.co", "first.last+tag@example.org", "o'hara@x.io"] {
                assert!(check_email(ok).is_ok(), "{ok}");
            }
            let long = format!("{}@example.org", "a".repeat(250));
            for bad in [
                "",
                "plain",
                "@x.org",
                "a@",
                "a@b",
                "a b@c.org",
                "a@@b.org",
                "a@b..org",
                "a@-b.org",
                long.as_str(),
            ] {
                assert!(check_email(bad).is_err(), "{bad:?}");
            }
        }

        #[test]
        fn names_accept_sql_and_html_but_not_empty_or_long() {
            for ok in [
                "Ann",
                "Robert'); DROP TABLE users;--",
                "<script>alert(1)</script>",
                "Zoë",
            ] {
                assert!(check_name("first_name", ok).is_ok(), "{ok}");
            }
            let long = "x".repeat(MAX_NAME_CHARS + 1);
            for bad in ["", "   ", "a\u{0}b", long.as_str()] {
                assert!(check_name("first_name", bad).is_err(), "{bad:?}");
            }
            assert!(check_name("last_name", &"é".repeat(MAX_NAME_CHARS)).is_ok());
        }

        #[test]
        fn updates_need_a_field() {
            assert_eq!(
                UpdateProfile::default()
                    .validate(&DEFAULT_ROLES)
                    .unwrap_err()
                    .code,
                "empty_update"
            );
            let u = UpdateProfile {
                role: Some("root".into()),
                ..Default::default()
            };
            assert_eq!(u.validate(&DEFAULT_ROLES).unwrap_err().code, "invalid_role");
            assert_eq!(u.validate(&["user", "admin", "root"]), Ok(()));
        }
    }
}

/// `units`, `finances`, `legal`: the Casitas preset's rental domains (one crate, `rental`, one
/// database per domain). Money is whole cents (`i64`), months are `YYYY-MM`, times RFC 3339.
pub mod rental {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Serialize};

    /// The statuses a unit may have.
    pub const UNIT_STATUSES: [&str; 3] = ["available", "occupied", "maintenance"];
    /// The kinds of transaction: `rent` and `deposit` are income, the others expenses.
    pub const TRANSACTION_KINDS: [&str; 5] = ["rent", "deposit", "maintenance", "utilities", "tax"];
    /// The kinds of legal document.
    pub const DOCUMENT_KINDS: [&str; 4] = ["lease", "inspection", "permit", "insurance"];
    /// The statuses a legal document may have.
    pub const DOCUMENT_STATUSES: [&str; 3] = ["active", "pending", "expired"];

    /// Whether `s` is a month as the rental services write it: `YYYY-MM`, month `01` to `12`.
    pub fn is_month(s: &str) -> bool {
        let b = s.as_bytes();
        b.len() == 7
            && b[4] == b'-'
            && b[..4].iter().chain(&b[5..]).all(u8::is_ascii_digit)
            && matches!(s[5..].parse::<u8>(), Ok(1..=12))
    }

    /// One rental unit.
    #[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, PartialEq, Eq)]
    pub struct Unit {
        /// Assigned by the units service.
        pub id: i64,
        /// `Casita 12`.
        pub name: String,
        /// A street address.
        pub address: String,
        /// Number of bedrooms.
        pub bedrooms: u32,
        /// The monthly rent, in cents.
        pub monthly_rent_cents: i64,
        /// One of [`UNIT_STATUSES`].
        pub status: String,
        /// Time of the last write.
        pub updated_at: String,
    }

    /// `POST /units`.
    #[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct NewUnit {
        /// 1 to 100 characters.
        pub name: String,
        /// 1 to 200 characters.
        pub address: String,
        /// 0 to 20.
        #[serde(deserialize_with = "super::whole::u32")]
        pub bedrooms: u32,
        /// 0 or more.
        #[serde(deserialize_with = "super::whole::i64")]
        pub monthly_rent_cents: i64,
        /// `available` when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub status: Option<String>,
    }

    /// `PATCH /units/{id}`: the fields to change (at least one).
    #[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct UnitChange {
        /// New name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub name: Option<String>,
        /// New address.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub address: Option<String>,
        /// New number of bedrooms.
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "super::whole::opt_u32"
        )]
        pub bedrooms: Option<u32>,
        /// New monthly rent, in cents.
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "super::whole::opt_i64"
        )]
        pub monthly_rent_cents: Option<i64>,
        /// New status.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub status: Option<String>,
    }

    /// `GET /units?status=available`.
    #[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct UnitsQuery {
        /// Only units with this status.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub status: Option<String>,
    }

    /// A list of units, in id order.
    #[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, PartialEq, Eq)]
    pub struct Units {
        /// The units.
        pub units: Vec<Unit>,
    }

    /// One money movement of a unit in a month.
    #[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, PartialEq, Eq)]
    pub struct Transaction {
        /// Assigned by the finances service.
        pub id: i64,
        /// The unit it belongs to.
        pub unit_id: i64,
        /// `YYYY-MM`.
        pub month: String,
        /// One of [`TRANSACTION_KINDS`].
        pub kind: String,
        /// Cents; positive for income (`rent`, `deposit`), negative for expenses.
        pub amount_cents: i64,
        /// Free text.
        pub description: String,
        /// Time it was recorded.
        pub created_at: String,
    }

    /// `POST /transactions` (the gateway's `POST /finances/transactions`).
    #[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct NewTransaction {
        /// The unit (a positive id).
        #[serde(deserialize_with = "super::whole::i64")]
        pub unit_id: i64,
        /// `YYYY-MM`.
        pub month: String,
        /// One of [`TRANSACTION_KINDS`].
        pub kind: String,
        /// Cents, not zero; income positive, expenses negative (the sign must match the kind).
        #[serde(deserialize_with = "super::whole::i64")]
        pub amount_cents: i64,
        /// Up to 200 characters; empty when absent.
        #[serde(default)]
        pub description: String,
    }

    /// `GET /transactions?unit=3&month=2026-05`.
    #[derive(
        Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema, PartialEq, Eq, Hash,
    )]
    #[serde(deny_unknown_fields)]
    pub struct TransactionsQuery {
        /// Only this unit's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub unit: Option<i64>,
        /// Only this month's (`YYYY-MM`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub month: Option<String>,
    }

    /// A list of transactions, in id order.
    #[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, PartialEq, Eq)]
    pub struct Transactions {
        /// The transactions.
        pub transactions: Vec<Transaction>,
    }

    /// One legal document.
    #[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, PartialEq, Eq)]
    pub struct Document {
        /// Assigned by the legal service.
        pub id: i64,
        /// The unit it concerns.
        pub unit_id: i64,
        /// One of [`DOCUMENT_KINDS`].
        pub kind: String,
        /// One of [`DOCUMENT_STATUSES`].
        pub status: String,
        /// A title.
        pub title: String,
        /// Time of the last write.
        pub updated_at: String,
    }

    /// `GET /documents?status=active&unit=3`.
    #[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct DocumentsQuery {
        /// Only documents with this status.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub status: Option<String>,
        /// Only this unit's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub unit: Option<i64>,
    }

    /// A list of documents, in id order.
    #[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, PartialEq, Eq)]
    pub struct Documents {
        /// The documents.
        pub documents: Vec<Document>,
    }

    /// Totals of one unit in one month.
    #[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
    pub struct UnitMonth {
        /// The unit.
        pub unit_id: i64,
        /// `YYYY-MM`.
        pub month: String,
        /// How many transactions.
        pub transactions: u64,
        /// Sum of the positive amounts, in cents.
        pub income_cents: i64,
        /// Sum of the negative amounts, in cents (zero or negative).
        pub expense_cents: i64,
        /// `income_cents + expense_cents`.
        pub net_cents: i64,
    }

    /// The result of a `finance_report` task: totals per unit and month over the transactions the
    /// filter selects, read from the finances service when the task ran.
    #[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
    pub struct FinanceReport {
        /// The filter the report was asked for.
        pub filter: TransactionsQuery,
        /// How many transactions were read.
        pub transactions: u64,
        /// Sum of every positive amount.
        pub income_cents: i64,
        /// Sum of every negative amount.
        pub expense_cents: i64,
        /// `income_cents + expense_cents`.
        pub net_cents: i64,
        /// Per unit and month, in unit then month order.
        pub by_unit_month: Vec<UnitMonth>,
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn months() {
            for ok in ["2026-01", "2026-12", "1999-07"] {
                assert!(super::is_month(ok), "{ok}");
            }
            for bad in [
                "2026-00",
                "2026-13",
                "2026-1",
                "26-01",
                "2026/01",
                "abcd-01",
                "2026-01-01",
            ] {
                assert!(!super::is_month(bad), "{bad}");
            }
        }
    }

    /// The result of a `legal_report` task: documents counted by status and by kind.
    #[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
    pub struct LegalReport {
        /// How many documents were read.
        pub documents: u64,
        /// Count per status.
        pub by_status: BTreeMap<String, u64>,
        /// Count per kind.
        pub by_kind: BTreeMap<String, u64>,
        /// Units with at least one expired document, in id order.
        pub units_with_expired: Vec<i64>,
    }
}

/// The supervisor's control API (`scalelab up`): instances, their states, membership.
pub mod control {
    use serde::{Deserialize, Serialize};

    /// `POST /load` of the control API (and `POST /api/load` of the dashboard): a short run of
    /// the built-in generator against a route through the balancer.
    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
    #[serde(deny_unknown_fields)]
    pub struct LoadRequest {
        /// A path through the balancer, like `/data`.
        pub route: String,
        /// How long, 1 to 120 s (10 by default).
        #[serde(default = "ten")]
        pub seconds: u64,
        /// Connections, 1 to 256 (16 by default).
        #[serde(default = "sixteen")]
        pub connections: usize,
    }

    fn ten() -> u64 {
        10
    }

    fn sixteen() -> usize {
        16
    }

    impl LoadRequest {
        /// The error code and sentence of a request that cannot run, if it cannot.
        pub fn problem(&self) -> Option<(&'static str, &'static str)> {
            if !self.route.starts_with('/') || self.route.starts_with("//") {
                return Some((
                    "invalid_route",
                    "the route is a path through the balancer, like /data",
                ));
            }
            if !(1..=120).contains(&self.seconds) || !(1..=256).contains(&self.connections) {
                return Some((
                    "invalid_load",
                    "seconds is 1 to 120 and connections 1 to 256",
                ));
            }
            None
        }
    }

    /// An instance as its pools should see it (`GET /members/{role}`).
    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
    pub struct Member {
        /// `gateway-3`.
        pub id: String,
        /// Base URL.
        pub url: String,
        /// `starting` (not in pools yet), `active`, `draining` (no new requests), `stopping`.
        pub state: String,
    }

    /// Every instance of one role (`GET /members/{role}`).
    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
    pub struct Members {
        /// The role.
        pub role: String,
        /// Its instances, in id order.
        pub members: Vec<Member>,
    }
}
