//! The cache's HTTP API: one handler per route, each a thin layer over the store
//! ([`common::ttl_cache::TtlCache`]), the fill leases (`lease.rs`) and the invalidation stream
//! (`invalidation.rs`).
//!
//! `/cache/flush` and `/cache/stats` are fixed routes, so `flush` and `stats` cannot be used as
//! keys (a fixed route wins over `/cache/{key}`, and answers `405` to the other methods). The
//! invalidation stream lives under `/invalidations`, outside the keys' space.
//!
//! A write (`DELETE`, `PUT` without a lease, `POST /cache/flush`, and a fill that replaced a
//! different value) voids the key's leases and changes the store under the key's stripe lock,
//! then publishes the key to every near cache and answers only once each one applied it or can
//! no longer serve.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use tokio::time::Instant;

use api::wire::cache::{
    CacheEntry, CacheSet, CacheStats, CacheStored, InvalidationAck, InvalidationEvent, LeaseMode,
    LeaseQuery, LeaseRenewed,
};

use crate::invalidation::{Departure, Refused};
use crate::{AppState, Error};

/// Longest key accepted, in bytes: long enough for any sensible key, short enough that keys stay
/// a small share of memory.
const MAX_KEY_BYTES: usize = 512;

pub(crate) fn routes(state: AppState) -> Router {
    Router::new()
        .route("/ready", get(ready))
        .route("/cache/stats", get(stats))
        .route("/cache/flush", post(flush))
        .route("/invalidations", post(subscribe))
        .route("/invalidations/{id}/ack", post(ack))
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

/// `GET /cache/{key}[?lease=on_miss|always]`: always `200`; `found` tells a stored `null` (or
/// `0`, `""`, `false`) from an absent key; `lease` is the token a fill must carry, when asked for.
async fn get_entry(
    State(state): State<AppState>,
    Key(key): Key,
    query: Result<Query<LeaseQuery>, QueryRejection>,
) -> Result<Json<CacheEntry>, Error> {
    let Query(query) = query.map_err(|e| Error::InvalidQuery(e.body_text()))?;
    let found = state.store.get(&key).await;
    let outcome = if found.is_some() { "hit" } else { "miss" };
    metrics::counter!(
        "scalelab_cache_lookups_total",
        "outcome" => outcome,
        "id" => state.instance.id.to_string()
    )
    .increment(1);
    // A lease handed out after this miss is still good: any write that lands from now on voids
    // it, and one that landed before is what the caller's source read will see.
    let lease = match (query.lease, &found) {
        (Some(LeaseMode::Always), _) | (Some(LeaseMode::OnMiss), None) => {
            state.leases.issue(&key, Instant::now())
        }
        _ => None,
    };
    Ok(Json(match found {
        Some(value) => CacheEntry {
            value: Value::clone(&value),
            found: true,
            lease,
        },
        None => CacheEntry {
            value: Value::Null,
            found: false,
            lease,
        },
    }))
}

/// `PUT`/`POST /cache/{key}`: stores the value with the requested TTL or the default one. With a
/// `lease` it is a fill, refused (`stored: false`) when a write voided the lease; without, a
/// write, answered once every near cache dropped the key.
async fn set_entry(
    State(state): State<AppState>,
    Key(key): Key,
    common::Json(body): common::Json<CacheSet>,
) -> Result<Json<CacheStored>, Error> {
    let max = state.config.max_ttl_secs;
    let ttl = body.ttl.unwrap_or(state.config.default_ttl_secs);
    if ttl == 0 || ttl > max {
        return Err(Error::InvalidTtl(format!(
            "ttl must be between 1 and {max} seconds; got {ttl}"
        )));
    }
    let value = Arc::new(body.value);
    let written = {
        let _held = state.stripe(&key).lock().await;
        match body.lease {
            Some(token) => {
                let valid = state.leases.redeem(&key, token, Instant::now());
                let outcome = if valid { "stored" } else { "refused" };
                metrics::counter!(
                    "scalelab_cache_fills_total",
                    "outcome" => outcome,
                    "id" => state.instance.id.to_string()
                )
                .increment(1);
                if !valid {
                    return Ok(Json(CacheStored {
                        stored: false,
                        key,
                        ttl,
                    }));
                }
                // A fill normally finds nothing, or the value another fill stored. Replacing a
                // different value is a change, and is published like a write.
                let replaced = state
                    .store
                    .peek(&key)
                    .await
                    .is_some_and(|old| *old != *value);
                if replaced {
                    state.leases.void(&key);
                }
                state
                    .store
                    .insert(key.clone(), value, Duration::from_secs(ttl))
                    .await;
                replaced
            }
            None => {
                state.leases.void(&key);
                state
                    .store
                    .insert(key.clone(), value, Duration::from_secs(ttl))
                    .await;
                true
            }
        }
    };
    if written {
        publish_key(&state, &key).await;
    }
    Ok(Json(CacheStored {
        stored: true,
        key,
        ttl,
    }))
}

/// Tells every near cache that `key` changed, and returns once each applied it or can no longer
/// serve.
async fn publish_key(state: &AppState, key: &str) {
    let report = state
        .subscribers
        .publish(&|seq| InvalidationEvent::Invalidate {
            seq,
            keys: vec![key.to_owned()],
        })
        .await;
    if report.cut > 0 || report.waited {
        tracing::warn!(
            %key,
            cut = report.cut,
            acked = report.acked,
            "a near cache did not acknowledge an invalidation in time; the write waited out its lease"
        );
    }
}

/// `DELETE /cache/{key}`: `200` whether or not the key was there; `deleted` says which. The key's
/// leases are voided and every near cache drops it, whether or not it was here (a near copy may
/// outlive the shared entry's eviction).
async fn delete_entry(State(state): State<AppState>, Key(key): Key) -> Json<Value> {
    let deleted = {
        let _held = state.stripe(&key).lock().await;
        state.leases.void(&key);
        state.store.remove(&key).await
    };
    publish_key(&state, &key).await;
    Json(json!({"deleted": deleted}))
}

/// `POST /invalidations`: subscribes to the invalidation stream (JSON lines of
/// [`InvalidationEvent`], `Hello` first, for as long as the connection lasts).
async fn subscribe(State(state): State<AppState>) -> Result<Response, Error> {
    let (id, rx) = state
        .subscribers
        .subscribe()
        .map_err(|refused| match refused {
            Refused::Closed | Refused::Gone => Error::ShuttingDown,
        })?;
    tracing::info!(subscriber = id, "a near cache subscribed");
    // Dropped with the stream (the connection closed, or shutdown): the subscriber departs.
    let departure = Departure {
        subscribers: state.subscribers.clone(),
        id,
    };
    let lines = futures::stream::unfold((rx, departure), |(mut rx, departure)| async move {
        let event = rx.recv().await?;
        let mut line = serde_json::to_vec(&event).unwrap_or_default();
        line.push(b'\n');
        Some((Ok::<_, Infallible>(line), (rx, departure)))
    });
    Ok((
        [(CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}

/// `POST /invalidations/{id}/ack` `{"seq": n}`: the subscriber applied every event up to `n`;
/// its lease is renewed. `410 subscription_gone` once it was cut off.
async fn ack(
    State(state): State<AppState>,
    id: Result<Path<u64>, axum::extract::rejection::PathRejection>,
    common::Json(body): common::Json<InvalidationAck>,
) -> Result<Json<LeaseRenewed>, Error> {
    let Path(id) = id.map_err(|_| Error::SubscriptionGone)?;
    let lease = state
        .subscribers
        .ack(id, body.seq, Instant::now())
        .map_err(|_| Error::SubscriptionGone)?;
    Ok(Json(LeaseRenewed {
        lease_ms: lease.as_millis() as u64,
    }))
}

/// `POST /cache/flush`: empties the cache; `flushed` is the number of entries removed. Every
/// lease is voided and every near cache is emptied before it answers.
async fn flush(State(state): State<AppState>) -> Json<Value> {
    state.leases.void_all();
    let flushed = state.store.clear().await;
    state
        .subscribers
        .publish(&|seq| InvalidationEvent::Flush { seq })
        .await;
    tracing::info!(flushed, "cache flushed");
    Json(json!({"flushed": flushed}))
}

/// `GET /cache/stats`.
async fn stats(State(state): State<AppState>) -> Json<CacheStats> {
    Json(state.store.stats().await)
}
