//! Token checks, done locally: no call to `auth` per request.
//!
//! `auth` signs tokens with Ed25519 (EdDSA) and publishes its public keys as a JWK set at
//! `GET /.well-known/jwks.json`. `Verifier` fetches that set in the background at start (with
//! retry), keeps the keys by `kid`, and fetches again when a token names a `kid` it does not know —
//! at most once per `jwks_min_refresh_ms`, and concurrent refetches are coalesced into one. A key
//! that is no longer published is forgotten at the next fetch, so its tokens stop working.
//!
//! A token that verified is remembered (`verified`, bounded, keyed by the whole token) so that the
//! next request with it skips the signature check, the cost of every request otherwise. The cache can
//! never accept a token that verification would refuse: an entry is served only before its token's
//! `exp` (verification's leeway is not extended to it) and only under the key set it was verified
//! against (any change of the published keys, a rotation or a withdrawal, makes every entry stale).
//!
//! Accepted algorithms: EdDSA (and ES256 if an EC P-256 key is published); HS256 only when
//! `auth.hs256_secret` is set. `alg: none` and every other algorithm are refused, as are tokens
//! whose `alg` does not match the key their `kid` names.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use api::wire::auth::Claims;

use crate::Error;
use crate::config::AuthConfig;
use api::client::AuthClient;

/// Who is calling: a user with verified claims, or an anonymous guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A valid token was presented.
    User(Arc<Claims>),
    /// No token (public routes, or `auth.required = false`).
    Anonymous,
}

impl Caller {
    /// Whether the caller holds `role`.
    pub fn has_role(&self, role: &str) -> bool {
        match self {
            Caller::User(c) => c.roles.iter().any(|r| r == role),
            Caller::Anonymous => false,
        }
    }

    /// The user id, when there is a user.
    pub fn user_id(&self) -> Option<&str> {
        match self {
            Caller::User(c) => Some(&c.sub),
            Caller::Anonymous => None,
        }
    }
}

/// Where admission reads a request's headers: a `HeaderMap` (the router's path) or the front
/// path's parsed head (`front.rs`), so that both read the same bytes by the same rules.
pub trait HeaderSource {
    /// The first value of `name` (lower-case).
    fn first(&self, name: &str) -> Option<&[u8]>;
    /// Calls `f` with every value of `name` (lower-case), in order.
    fn each<'a>(&'a self, name: &str, f: &mut dyn FnMut(&'a [u8]));
}

impl HeaderSource for HeaderMap {
    fn first(&self, name: &str) -> Option<&[u8]> {
        self.get(name).map(|v| v.as_bytes())
    }

    fn each<'a>(&'a self, name: &str, f: &mut dyn FnMut(&'a [u8])) {
        for value in self.get_all(name) {
            f(value.as_bytes());
        }
    }
}

/// A header value as text if it is visible ASCII (tabs allowed): what `HeaderValue::to_str`
/// accepts.
pub(crate) fn visible_text(value: &[u8]) -> Option<&str> {
    // Branch-free over the whole value, so that it vectorizes (tokens are hundreds of bytes).
    let visible = value.iter().fold(true, |ok, &b| {
        ok & ((b.wrapping_sub(0x20) < 0x5f) | (b == b'\t'))
    });
    if visible {
        std::str::from_utf8(value).ok()
    } else {
        None
    }
}

/// The token of a request: `Authorization: Bearer <jwt>`, a bare `Authorization: <jwt>`, or
/// `X-Token: <jwt>` (in that order). `Ok(None)` when there is none.
pub fn token_from(headers: &(impl HeaderSource + ?Sized)) -> Result<Option<&str>, Error> {
    let (name, value) = match headers.first("authorization") {
        Some(v) => ("Authorization", v),
        None => match headers.first(api::headers::X_TOKEN) {
            Some(v) => ("X-Token", v),
            None => return Ok(None),
        },
    };
    let value = visible_text(value)
        .ok_or_else(|| Error::InvalidToken(format!("the {name} header is not ASCII")))?
        .trim();
    let token = match value.split_once(' ') {
        Some((scheme, rest)) if name == "Authorization" => {
            if !scheme.eq_ignore_ascii_case("bearer") {
                return Err(Error::InvalidToken(format!(
                    "the {scheme} authorization scheme is not supported; use Bearer"
                )));
            }
            rest.trim()
        }
        Some(_) => return Err(Error::InvalidToken("a token has no spaces".into())),
        None if value.eq_ignore_ascii_case("bearer") => "",
        None => value,
    };
    if token.is_empty() {
        return Err(Error::InvalidToken(format!(
            "the {name} header holds no token"
        )));
    }
    Ok(Some(token))
}

/// A scheduled fetch is skipped when another fetch started less than this long ago.
const SCHEDULED_SKIP: Duration = Duration::from_secs(10);

/// A public key and the one algorithm it verifies.
struct VerifyKey {
    key: DecodingKey,
    alg: Algorithm,
}

/// The key and algorithm one JWK publishes, if the gateway accepts it.
fn accepted_key(jwk: &Jwk) -> Option<VerifyKey> {
    let alg = match &jwk.algorithm {
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        // RSA is not signed by scalelab's auth, and a symmetric key in a public set would let
        // anyone who reads the set sign tokens: both are ignored.
        _ => return None,
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(VerifyKey { key, alg })
}

/// A token that verified, and under which key set.
#[derive(Clone)]
pub(crate) struct Verified {
    pub(crate) claims: Arc<Claims>,
    /// `Verifier::generation` when the verification started.
    generation: u64,
}

impl Verified {
    /// `claims`, verified under the key set of `generation` (`Verifier::generation`, read before
    /// the verification started).
    pub(crate) fn new(claims: Arc<Claims>, generation: u64) -> Self {
        Self { claims, generation }
    }

    /// Whether it may be used without verifying again at `now_ms` while the key set is of
    /// `generation`: the one rule of every remembered token (the cache, the per-thread memo, the
    /// front path's per-connection memo).
    fn usable(&self, generation: u64, now_ms: u64) -> bool {
        self.generation == generation && now_ms < self.claims.exp.saturating_mul(1000)
    }
}

/// The last token each thread took from the cache of verified tokens, in front of it: a
/// keep-alive client sends the same token request after request, and comparing it with the last
/// one costs less than hashing it for the cache. An entry is served under exactly the cache's
/// rules (same key set generation, before `exp`), so it accepts nothing the cache would not.
mod last {
    use std::cell::RefCell;
    use std::sync::Arc;

    use api::wire::auth::Claims;

    use super::Verified;

    struct Memo {
        /// `Verifier::id` of the verifier whose cache had it.
        verifier: u64,
        token: Box<str>,
        verified: Verified,
    }

    thread_local! {
        static LAST: RefCell<Option<Memo>> = const { RefCell::new(None) };
    }

    /// The claims of `token` if it is this thread's last one for `verifier`, still of
    /// `generation` and before its `exp` at `now_ms`.
    pub(super) fn get(
        verifier: u64,
        token: &str,
        generation: u64,
        now_ms: u64,
    ) -> Option<Arc<Claims>> {
        LAST.with(|last| {
            let last = last.borrow();
            let memo = last.as_ref()?;
            (memo.verifier == verifier
                && memo.verified.usable(generation, now_ms)
                && *memo.token == *token)
                .then(|| memo.verified.claims.clone())
        })
    }

    /// Remembers `token`, just taken from `verifier`'s cache.
    pub(super) fn set(verifier: u64, token: &str, verified: &Verified) {
        LAST.with(|last| {
            *last.borrow_mut() = Some(Memo {
                verifier,
                token: token.into(),
                verified: verified.clone(),
            });
        });
    }
}

/// Verifies tokens against auth's published keys.
pub(crate) struct Verifier {
    /// Tells this verifier's entries in the per-thread memo (`last`) from another's.
    id: u64,
    config: AuthConfig,
    /// Tokens that verified, by the whole token; `None` when `auth.verified_cache_entries = 0`.
    verified: Option<common::ttl_cache::TtlCache<Verified>>,
    /// Moves whenever the published key set changes; an entry of `verified` from another
    /// generation is never served.
    generation: AtomicU64,
    /// The published key set as last fetched, to tell a change from a refresh.
    published: RwLock<Option<Value>>,
    /// Signature checks done (what the cache saves; read by the tests).
    signature_checks: AtomicU64,
    /// Keys by `kid`, replaced whole at each successful fetch.
    keys: RwLock<HashMap<String, Arc<VerifyKey>>>,
    /// Set by the first successful fetch (what `/ready` checks).
    loaded: AtomicBool,
    /// When the last fetch started; the lock also coalesces concurrent fetches.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    /// The auth instances, through their pool.
    auth: AuthClient,
    /// The compatibility HS256 key, when configured.
    hs256: Option<DecodingKey>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<String> = self
            .keys
            .read()
            .map(|k| k.keys().cloned().collect())
            .unwrap_or_default();
        f.debug_struct("Verifier")
            .field("kids", &kids)
            .field("loaded", &self.is_loaded())
            .field("hs256", &self.hs256.is_some())
            .finish()
    }
}

impl Verifier {
    pub(crate) fn new(config: AuthConfig, auth: AuthClient) -> Self {
        let hs256 = config
            .hs256_secret
            .as_deref()
            .map(|s| DecodingKey::from_secret(s.as_bytes()));
        let verified = (config.verified_cache_entries > 0)
            .then(|| common::ttl_cache::TtlCache::new(config.verified_cache_entries));
        static IDS: AtomicU64 = AtomicU64::new(0);
        Self {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            config,
            verified,
            generation: AtomicU64::new(0),
            published: RwLock::new(None),
            signature_checks: AtomicU64::new(0),
            keys: RwLock::new(HashMap::new()),
            loaded: AtomicBool::new(false),
            last_fetch: tokio::sync::Mutex::new(None),
            auth,
            hs256,
        }
    }

    /// Whether a JWK set has been fetched at least once.
    pub(crate) fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    fn key(&self, kid: &str) -> Option<Arc<VerifyKey>> {
        self.keys.read().ok()?.get(kid).cloned()
    }

    /// Fetches the JWK set and replaces the known keys with it.
    async fn fetch(&self, rid: &str) -> Result<usize, Error> {
        let doc: Value = self.auth.jwks(rid).await?;
        let entries =
            doc.get("keys")
                .and_then(Value::as_array)
                .ok_or_else(|| Error::UpstreamFailed {
                    service: "auth",
                    detail: "the JWKS has no \"keys\" array".into(),
                })?;
        let mut keys = HashMap::new();
        for entry in entries {
            // One key we cannot use must not hide the others.
            let Ok(jwk) = serde_json::from_value::<Jwk>(entry.clone()) else {
                tracing::debug!(%entry, "skipping an unreadable JWK");
                continue;
            };
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            if let Some(k) = accepted_key(&jwk) {
                keys.insert(kid, Arc::new(k));
            }
        }
        let n = keys.len();
        if let Ok(mut known) = self.keys.write() {
            *known = keys;
        }
        let changed = match self.published.write() {
            Ok(mut published) if published.as_ref() != Some(&doc["keys"]) => {
                *published = Some(doc["keys"].clone());
                true
            }
            Ok(_) => false,
            Err(_) => true,
        };
        if changed {
            // After the new keys are in place: a verification that started under the old set
            // carries the old generation and is never served from the cache.
            self.generation.fetch_add(1, Ordering::AcqRel);
            if let Some(cache) = &self.verified {
                cache.clear().await;
            }
        }
        if !self.loaded.swap(true, Ordering::AcqRel) {
            tracing::info!(keys = n, "JWKS loaded from auth");
        }
        Ok(n)
    }

    /// Fetches again because a token names `kid`, unless another caller just did (coalescing) or
    /// the last fetch is more recent than `jwks_min_refresh_ms`.
    async fn refetch_for(&self, kid: &str, rid: &str) {
        let mut last = self.last_fetch.lock().await;
        if self.key(kid).is_some() {
            return;
        }
        let min = Duration::from_millis(self.config.jwks_min_refresh_ms);
        if last.is_some_and(|t| t.elapsed() < min) {
            return;
        }
        *last = Some(Instant::now());
        metrics::counter!("scalelab_gateway_jwks_fetches_total", "reason" => "unknown_kid")
            .increment(1);
        if let Err(e) = self.fetch(rid).await {
            tracing::warn!(error = %e, %kid, "refetching the JWKS failed");
        }
    }

    /// A fetch at start or on schedule (takes the same lock as refetches).
    async fn scheduled_fetch(&self) -> Result<usize, Error> {
        let mut last = self.last_fetch.lock().await;
        // A refetch for an unknown kid may just have loaded the set (at start, a first request
        // can beat the loader): that is as fresh as this fetch would be.
        if self.is_loaded() && last.is_some_and(|t| t.elapsed() < SCHEDULED_SKIP) {
            return Ok(self.keys.read().map(|k| k.len()).unwrap_or(0));
        }
        *last = Some(Instant::now());
        metrics::counter!("scalelab_gateway_jwks_fetches_total", "reason" => "scheduled")
            .increment(1);
        self.fetch("jwks-refresh").await
    }

    /// Whether verified tokens are remembered (`auth.verified_cache_entries > 0`).
    pub(crate) fn remembers(&self) -> bool {
        self.verified.is_some()
    }

    /// The key set's generation now: read it before a verification, and remember what verified
    /// under it (`Verified::new`), so that a key set changed meanwhile makes the entry stale.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether `verified` may still be used without verifying again: the rules of the cache of
    /// verified tokens (that cache on, same key set, before `exp`).
    pub(crate) fn still_valid(&self, verified: &Verified) -> bool {
        self.remembers() && verified.usable(self.generation(), common::now_ms())
    }

    /// How many signatures were checked (the cache's hits are not).
    #[cfg(test)]
    pub(crate) fn signature_checks(&self) -> u64 {
        self.signature_checks.load(Ordering::Relaxed)
    }

    /// The claims of a valid `token`: from the cache of verified tokens when it holds the token
    /// under the current key set and before its `exp`, else by checking its signature.
    pub(crate) async fn verify(&self, token: &str, rid: &str) -> Result<Arc<Claims>, Error> {
        let Some(cache) = &self.verified else {
            return self.check_signature(token, rid).await.map(Arc::new);
        };
        let generation = self.generation.load(Ordering::Acquire);
        let now_ms = common::now_ms();
        if let Some(claims) = last::get(self.id, token, generation, now_ms) {
            return Ok(claims);
        }
        if let Some(hit) = cache.get(token).await
            && hit.usable(generation, now_ms)
        {
            last::set(self.id, token, &hit);
            return Ok(hit.claims);
        }
        let claims = Arc::new(self.check_signature(token, rid).await?);
        // Kept until `exp` at most (never within the leeway past it).
        let left_ms = claims
            .exp
            .saturating_mul(1000)
            .saturating_sub(common::now_ms());
        if left_ms > 0 {
            let entry = Verified {
                claims: claims.clone(),
                generation,
            };
            cache
                .insert(token.to_string(), entry, Duration::from_millis(left_ms))
                .await;
        }
        Ok(claims)
    }

    /// The claims of a valid `token`, by checking its signature and claims.
    async fn check_signature(&self, token: &str, rid: &str) -> Result<Claims, Error> {
        self.signature_checks.fetch_add(1, Ordering::Relaxed);
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| Error::InvalidToken("the token is malformed".into()))?;
        let key: Arc<VerifyKey> = match header.alg {
            Algorithm::HS256 => match &self.hs256 {
                Some(k) => Arc::new(VerifyKey {
                    key: k.clone(),
                    alg: Algorithm::HS256,
                }),
                None => return Err(Error::InvalidToken("HS256 tokens are not accepted".into())),
            },
            Algorithm::EdDSA | Algorithm::ES256 => {
                let kid = header
                    .kid
                    .as_deref()
                    .ok_or_else(|| Error::InvalidToken("the token names no key id (kid)".into()))?;
                match self.key(kid) {
                    Some(k) => k,
                    None => {
                        self.refetch_for(kid, rid).await;
                        self.key(kid).ok_or_else(|| {
                            Error::InvalidToken("the token's key id is unknown".into())
                        })?
                    }
                }
            }
            other => {
                return Err(Error::InvalidToken(format!(
                    "the {other:?} algorithm is not accepted"
                )));
            }
        };
        if key.alg != header.alg {
            return Err(Error::InvalidToken(
                "the token's algorithm does not match its key".into(),
            ));
        }
        let mut validation = Validation::new(key.alg);
        validation.leeway = self.config.leeway_secs;
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        jsonwebtoken::decode::<Claims>(token, &key.key, &validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => Error::TokenExpired,
                ErrorKind::InvalidSignature => {
                    Error::InvalidToken("the signature does not verify".into())
                }
                ErrorKind::InvalidIssuer => {
                    Error::InvalidToken("the token was issued by someone else".into())
                }
                ErrorKind::InvalidAlgorithm => {
                    Error::InvalidToken("the token's algorithm is not accepted".into())
                }
                ErrorKind::MissingRequiredClaim(c) => {
                    Error::InvalidToken(format!("the token has no {c} claim"))
                }
                _ => Error::InvalidToken("the token is malformed".into()),
            })
    }
}

/// Loads the JWK set in the background: retries with backoff until the first success, then
/// refreshes every five minutes (auth's `Cache-Control: max-age=300`). Ends when the verifier is
/// dropped.
pub(crate) fn spawn_loader(verifier: Weak<Verifier>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            let Some(v) = verifier.upgrade() else { return };
            let result = v.scheduled_fetch().await;
            drop(v);
            let wait = match result {
                Ok(_) => {
                    backoff = Duration::from_millis(100);
                    Duration::from_secs(300)
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "fetching the JWKS from auth failed");
                    let wait = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    wait
                }
            };
            tokio::time::sleep(wait).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn tokens_are_found_in_every_accepted_place() {
        type Case<'a> = (&'a [(&'a str, &'a str)], Result<Option<&'a str>, &'a str>);
        let cases: &[Case<'_>] = &[
            (&[("authorization", "Bearer a.b.c")], Ok(Some("a.b.c"))),
            (&[("authorization", "bearer   a.b.c ")], Ok(Some("a.b.c"))),
            (&[("authorization", "a.b.c")], Ok(Some("a.b.c"))),
            (&[("x-token", "a.b.c")], Ok(Some("a.b.c"))),
            (
                &[("authorization", "Bearer a.b.c"), ("x-token", "x.y.z")],
                Ok(Some("a.b.c")),
            ),
            (&[], Ok(None)),
            (&[("authorization", "Basic dXNlcjpwYXNz")], Err("invalid")),
            (&[("authorization", "Bearer")], Err("invalid")),
            (&[("authorization", "Bearer ")], Err("invalid")),
            (&[("x-token", "a b")], Err("invalid")),
        ];
        for (h, want) in cases {
            let map = headers(h);
            let got = token_from(&map);
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(got, *want, "{h:?}"),
                (Err(Error::InvalidToken(_)), Err(_)) => {}
                (got, want) => panic!("{h:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn visible_text_accepts_what_a_header_value_reads_as_text() {
        for b in 0u8..=255 {
            let bytes = [b'a', b, b'z'];
            if let Ok(value) = axum::http::HeaderValue::from_bytes(&bytes) {
                assert_eq!(
                    visible_text(&bytes).is_some(),
                    value.to_str().is_ok(),
                    "{b:#x}"
                );
            }
        }
    }
}
