//! Request and response bodies, one module per service.

/// `auth`: credentials, login, token signing, public keys.
pub mod auth {
    use serde::{Deserialize, Serialize};

    /// `POST /login` (gateway and auth).
    #[derive(Debug, Clone, Serialize, Deserialize)]
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

    /// A signed token, as `login` and `register` return it.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct TokenResponse {
        /// The JWT (EdDSA by default).
        pub token: String,
        /// Always `Bearer`.
        pub token_type: String,
        /// Seconds until the token expires.
        pub expires_in: u64,
    }

    /// A user as `auth` knows it (no password hash, ever).
    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
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
    }

    /// `POST`/`PUT /cache/{key}`.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct CacheSet {
        /// Any JSON value, falsy ones included.
        pub value: Value,
        /// Time to live in seconds; the service's default when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub ttl: Option<u64>,
    }

    /// `GET /cache/stats`.
    #[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
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
    #[derive(Debug, Clone, Serialize, Deserialize)]
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
    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    pub struct ProcessResponse {
        /// Always `Business logic executed`.
        pub message: String,
        /// The instance that did the work.
        pub service_id: String,
        /// Time spent in the handler, waiting and computing.
        pub processing_ms: f64,
    }
}

/// `gateway`: the public API.
pub mod gateway {
    use serde::{Deserialize, Serialize};
    use serde_json::Value;

    /// `GET /data`: the cache-aside answer.
    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    pub struct DataResponse {
        /// `true` when the answer came from the cache.
        pub cached: bool,
        /// The key read.
        pub key: String,
        /// The value.
        pub data: Value,
        /// The gateway that answered.
        pub gateway_id: String,
    }
}
