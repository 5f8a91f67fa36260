//! The cache's HTTP API: one handler per route, each a thin layer over the store
//! ([`common::ttl_cache::TtlCache`]).
//!
//! `/cache/flush` and `/cache/stats` are fixed routes, so `flush` and `stats` cannot be used as
//! keys (a fixed route wins over `/cache/{key}`, and answers `405` to the other methods).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{Value, json};

use api::wire::cache::{CacheEntry, CacheSet, CacheStats};

use crate::{AppState, Error};

/// Longest key accepted, in bytes: long enough for any sensible key, short enough that keys stay
/// a small share of memory.
const MAX_KEY_BYTES: usize = 512;

pub(crate) fn routes(state: AppState) -> Router {
    Router::new()
        .route("/ready", get(ready))
        .route("/cache/stats", get(stats))
        .route("/cache/flush", post(flush))
        .route(
            "/cache/{key}",
            get(get_entry)
                .put(set_entry)
                .post(set_entry)
                .delete(delete_entry),
        )
        .with_state(state)
}

/// A key from the path, checked: 1 to [`MAX_KEY_BYTES`] bytes of UTF-8 (after percent-decoding).
struct Key(String);

impl<S: Send + Sync> FromRequestParts<S> for Key {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        // axum's own rejection is plain text; the only way it fails here is a segment that does
        // not decode to UTF-8, which is a bad key as far as the client is concerned.
        let Path(key) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| Error::InvalidKey("the key must be valid UTF-8".into()))?;
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Err(Error::InvalidKey(format!(
                "a key must be 1 to {MAX_KEY_BYTES} bytes long; this one has {}",
                key.len()
            )));
        }
        Ok(Key(key))
    }
}

/// `GET /ready`: the store lives in this process, so the cache is ready as soon as it serves.
async fn ready() -> Json<Value> {
    Json(json!({"status": "ready"}))
}

/// `GET /cache/{key}`: always `200`; `found` tells a stored `null` (or `0`, `""`, `false`) from an
/// absent key.
async fn get_entry(State(state): State<AppState>, Key(key): Key) -> Json<CacheEntry> {
    let found = state.store.get(&key).await;
    let outcome = if found.is_some() { "hit" } else { "miss" };
    metrics::counter!(
        "scalelab_cache_lookups_total",
        "outcome" => outcome,
        "id" => state.instance.id.to_string()
    )
    .increment(1);
    Json(match found {
        Some(value) => CacheEntry {
            value: Value::clone(&value),
            found: true,
        },
        None => CacheEntry {
            value: Value::Null,
            found: false,
        },
    })
}

/// The answer to a successful write.
#[derive(Serialize)]
struct Stored {
    stored: bool,
    key: String,
    /// The TTL applied, in seconds (the default when the client sent none).
    ttl: u64,
}

/// `PUT`/`POST /cache/{key}`: stores the value with the requested TTL or the default one.
async fn set_entry(
    State(state): State<AppState>,
    Key(key): Key,
    common::Json(body): common::Json<CacheSet>,
) -> Result<Json<Stored>, Error> {
    let max = state.config.max_ttl_secs;
    let ttl = body.ttl.unwrap_or(state.config.default_ttl_secs);
    if ttl == 0 || ttl > max {
        return Err(Error::InvalidTtl(format!(
            "ttl must be between 1 and {max} seconds; got {ttl}"
        )));
    }
    state
        .store
        .insert(key.clone(), Arc::new(body.value), Duration::from_secs(ttl))
        .await;
    Ok(Json(Stored {
        stored: true,
        key,
        ttl,
    }))
}

/// `DELETE /cache/{key}`: `200` whether or not the key was there; `deleted` says which.
async fn delete_entry(State(state): State<AppState>, Key(key): Key) -> Json<Value> {
    let deleted = state.store.remove(&key).await;
    Json(json!({"deleted": deleted}))
}

/// `POST /cache/flush`: empties the cache; `flushed` is the number of entries removed.
async fn flush(State(state): State<AppState>) -> Json<Value> {
    let flushed = state.store.clear().await;
    tracing::info!(flushed, "cache flushed");
    Json(json!({"flushed": flushed}))
}

/// `GET /cache/stats`.
async fn stats(State(state): State<AppState>) -> Json<CacheStats> {
    Json(state.store.stats().await)
}
