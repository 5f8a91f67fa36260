//! `GET /data` cache-aside, `PUT /data/{key}`, and the cache's administration.
//!
//! A read asks the cache (the near cache first, with `cache = "service"`), then (on a miss, a
//! cache outage or `refresh`) makes one shared db read per key however many misses wait for it
//! (`single_flight`), and refills the cache unless a write landed meanwhile: on this gateway
//! (`fence`) or on any (the cache service's fill lease, voided by the write). A write goes to the
//! db, then deletes the cached entry, which with the cache service also drops it from every
//! gateway's near cache before the write answers.

use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use common::{ApiError, Json, RequestId};

use api::ErrorBody;
use api::wire::db::PutRecord;
use api::wire::gateway::{CacheStatsAnswer, DataQuery, DataResponse, DataWritten, Flushed};

use super::{cache_error, x_cache, x_cache_layer};
use crate::cache::{CacheLayer, Cached, Lookup};
use crate::error::from_client;
use crate::policy::Endpoint;
use crate::single_flight::Aborted;
use crate::{AppState, Error};

/// The key `GET /data` reads when none is given (the lab's).
pub const DEFAULT_KEY: &str = "my_data";
/// Longest `/data` key, in characters (the db's own limit).
const MAX_KEY_CHARS: usize = 256;

// The document's patterns for `key` and `refresh` (in the annotations below) say what `valid_key`
// and `truthy` accept: 1 to 256 characters, none a control character, not `.` or `..`; a boolean
// word in any case.

/// This module's routes, as the document describes them.
#[derive(utoipa::OpenApi)]
#[openapi(paths(get_data, get_data_path, put_data, cache_stats, cache_flush))]
pub(super) struct Doc;

pub(super) fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint::new(Method::GET, "/data", get_data),
        Endpoint::new(Method::GET, "/data/{key}", get_data_path),
        Endpoint::new(Method::PUT, "/data/{key}", put_data),
        Endpoint::new(Method::GET, "/cache/stats", cache_stats),
        Endpoint::new(Method::POST, "/cache/flush", cache_flush),
    ]
}

fn valid_key(key: &str) -> Result<(), Error> {
    let bad = if key.is_ascii() {
        // The common case, in one pass over bytes (an ASCII control is a control character).
        key.len() > MAX_KEY_CHARS || key.bytes().any(|b| b.is_ascii_control())
    } else {
        key.chars().count() > MAX_KEY_CHARS || key.chars().any(char::is_control)
    };
    if key.is_empty() || bad {
        return Err(Error::InvalidKey(format!(
            "a key is 1 to {MAX_KEY_CHARS} characters without control characters"
        )));
    }
    // HTTP clients normalise `/data/..` away before sending, so these keys could never be read or
    // written by path: refuse them everywhere rather than store what cannot be read back.
    if key == "." || key == ".." {
        return Err(Error::InvalidKey(
            "the keys . and .. are not allowed (clients rewrite them out of paths)".into(),
        ));
    }
    Ok(())
}

pub(crate) fn truthy(s: Option<&str>) -> Result<bool, Error> {
    match s.map(str::to_ascii_lowercase).as_deref() {
        None | Some("false" | "0" | "no" | "") => Ok(false),
        Some("true" | "1" | "yes") => Ok(true),
        Some(_) => Err(Error::InvalidQuery("refresh must be true or false".into())),
    }
}

fn query(q: Result<Query<DataQuery>, QueryRejection>) -> Result<DataQuery, Error> {
    q.map(|Query(q)| q)
        .map_err(|e| Error::InvalidQuery(e.body_text()))
}

fn path_key(key: Result<Path<String>, PathRejection>) -> Result<String, Error> {
    key.map(|Path(k)| k)
        .map_err(|_| Error::InvalidKey("the key is not valid UTF-8".into()))
}

/// `GET /data[?key=K][&refresh=true]`: cache-aside read.
#[utoipa::path(
    get,
    path = "/data",
    tag = "data",
    operation_id = "get_data",
    summary = "Cache-aside read of ?key= (my_data by default)",
    description = "The cache first (this gateway's near cache, then the shared one); on a miss one \
        db read per key however many readers wait, which refills the cache. `X-Cache` says which, \
        and on a hit `X-Cache-Layer` which cache.",
    params(
        ("key" = Option<String>, Query, description = "The key; `my_data` when absent.",
            pattern = r"^(?!\.\.?$)[^\u0000-\u001f\u007f-\u009f]{1,256}$", example = "my_data"),
        ("refresh" = Option<String>, Query, description = "`true` skips the cache and refills it from the db.",
            pattern = "^([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|[Yy][Ee][Ss]|[Nn][Oo]|0|1)?$", example = "false"),
    ),
    responses(
        (status = 200, description = "The value, from the cache or the db.", body = DataResponse,
            headers(("X-Cache" = String, description = "`HIT` or `MISS`."),
                ("X-Cache-Layer" = String, description = "On a hit: `near` (this gateway's near cache) or `shared`.")),
            example = json!({"cached": true, "cache_layer": "near", "key": "my_data", "data": {"hello": "world"}, "gateway_id": "gateway-1"})),
        (status = 400, description = "A bad key (`invalid_key`) or query (`invalid_query`).", body = ErrorBody,
            example = json!({"error": "invalid_key", "message": "a key is 1 to 256 characters without control characters"})),
        (status = 404, description = "No record has this key (`not_found`).", body = ErrorBody,
            example = json!({"error": "not_found", "message": "no record for key \"missing\""})),
        (status = 502, description = "The db cannot be reached or failed (`db_unavailable`, `db_error`).", body = ErrorBody),
        (status = 503, description = "The db is unavailable (`db_unavailable`).", body = ErrorBody),
    )
)]
async fn get_data(
    State(state): State<AppState>,
    RequestId(rid): RequestId,
    q: Result<Query<DataQuery>, QueryRejection>,
) -> Response {
    let result = async {
        let q = query(q)?;
        let refresh = truthy(q.refresh.as_deref())?;
        let key = q.key.unwrap_or_else(|| DEFAULT_KEY.to_string());
        read_through(&state, key, refresh, &rid).await
    }
    .await;
    with_miss_header(result)
}

/// `GET /data/{key}`: the same read, with the key in the path.
#[utoipa::path(
    get,
    path = "/data/{key}",
    tag = "data",
    operation_id = "get_data_key",
    summary = "Cache-aside read of one key",
    params(
        ("key" = String, Path, description = "The key.",
            pattern = r"^(?!\.\.?$)[^\u0000-\u001f\u007f-\u009f]{1,256}$", example = "my_data"),
        ("refresh" = Option<String>, Query, description = "`true` skips the cache and refills it from the db.",
            pattern = "^([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|[Yy][Ee][Ss]|[Nn][Oo]|0|1)?$", example = "false"),
    ),
    responses(
        (status = 200, description = "The value, from the cache or the db.", body = DataResponse,
            headers(("X-Cache" = String, description = "`HIT` or `MISS`."),
                ("X-Cache-Layer" = String, description = "On a hit: `near` (this gateway's near cache) or `shared`.")),
            example = json!({"cached": false, "key": "my_data", "data": {"hello": "world"}, "gateway_id": "gateway-1"})),
        (status = 400, description = "A bad key (`invalid_key`) or query (`invalid_query`).", body = ErrorBody),
        (status = 404, description = "No record has this key (`not_found`).", body = ErrorBody),
        (status = 502, description = "The db cannot be reached or failed.", body = ErrorBody),
        (status = 503, description = "The db is unavailable.", body = ErrorBody),
    )
)]
async fn get_data_path(
    State(state): State<AppState>,
    RequestId(rid): RequestId,
    key: Result<Path<String>, PathRejection>,
    q: Result<Query<DataQuery>, QueryRejection>,
) -> Response {
    let result = async {
        let key = path_key(key)?;
        let q = query(q)?;
        read_through(&state, key, truthy(q.refresh.as_deref())?, &rid).await
    }
    .await;
    with_miss_header(result)
}

/// Every `/data` answer carries `X-Cache`; errors never came from the cache.
pub(crate) fn with_miss_header(result: Result<Response, Error>) -> Response {
    match result {
        Ok(r) => r,
        Err(e) => {
            let mut resp = e.into_response();
            let (name, value) = x_cache(false);
            resp.headers_mut().insert(name, value);
            resp
        }
    }
}

/// The cache-aside reads' metrics, made once per gateway (a `metrics!` macro per request formats,
/// hashes and looks up its labels; a handle is an atomic): reads by outcome, and how long the
/// cache-aside path took (the dashboard's "hit vs miss latency": the lookup alone, against the
/// lookup plus the db read and the refill).
#[derive(Debug)]
pub(crate) struct CacheOutcomes {
    hit: (metrics::Counter, metrics::Histogram),
    miss: (metrics::Counter, metrics::Histogram),
    /// `scalelab_gateway_cache_hits_total{layer}`: the hits above by the cache that had them.
    near_hits: metrics::Counter,
    shared_hits: metrics::Counter,
}

impl CacheOutcomes {
    pub(crate) fn new(id: &str) -> Self {
        // Handles made before the recorder exists would record nowhere.
        common::metrics::handle();
        let pair = |outcome: &'static str| {
            (
                metrics::counter!("scalelab_gateway_cache_total", "outcome" => outcome, "id" => id.to_string()),
                metrics::histogram!("scalelab_gateway_data_seconds", "outcome" => outcome, "id" => id.to_string()),
            )
        };
        let layer = |layer: CacheLayer| metrics::counter!("scalelab_gateway_cache_hits_total", "layer" => layer.as_str(), "id" => id.to_string());
        Self {
            hit: pair("hit"),
            miss: pair("miss"),
            near_hits: layer(CacheLayer::Near),
            shared_hits: layer(CacheLayer::Shared),
        }
    }
}

/// Counts the read as a hit (in `layer`) or a miss (`None`), with the time since `started`.
fn count(state: &AppState, hit: Option<CacheLayer>, started: std::time::Instant) {
    let o = &state.inner.cache_outcomes;
    let (reads, seconds) = if hit.is_some() { &o.hit } else { &o.miss };
    reads.increment(1);
    seconds.record(started.elapsed().as_secs_f64());
    match hit {
        Some(CacheLayer::Near) => o.near_hits.increment(1),
        Some(CacheLayer::Shared) => o.shared_hits.increment(1),
        None => {}
    }
}

/// `GET /data`'s answer as the gateway writes it: [`DataResponse`]'s fields, in its order and
/// with its rules (the tests compare the two byte for byte), with the value as the cache's JSON
/// text ([`Cached`]): a hit is answered without cloning or encoding the value again.
#[derive(Debug, serde::Serialize)]
pub(crate) struct DataAnswer {
    pub(crate) cached: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cache_layer: Option<CacheLayer>,
    pub(crate) key: String,
    pub(crate) data: Cached,
    #[serde(serialize_with = "text")]
    pub(crate) gateway_id: std::sync::Arc<str>,
}

impl DataAnswer {
    /// Appends the answer's JSON, exactly as serde writes it (`tests::front` compares the two),
    /// with `gateway_id` given already encoded: the hit path's encoder, which writes the field
    /// names as constants and copies the value's text.
    pub(crate) fn write_json(&self, out: &mut Vec<u8>, gateway_id_json: &[u8]) {
        out.extend_from_slice(if self.cached {
            b"{\"cached\":true"
        } else {
            b"{\"cached\":false"
        });
        if let Some(layer) = self.cache_layer {
            out.extend_from_slice(b",\"cache_layer\":\"");
            out.extend_from_slice(layer.as_str().as_bytes());
            out.push(b'"');
        }
        out.extend_from_slice(b",\"key\":");
        if serde_json::to_writer(&mut *out, &self.key).is_err() {
            // Writing a string into a `Vec` cannot fail.
            out.extend_from_slice(b"\"\"");
        }
        out.extend_from_slice(b",\"data\":");
        out.extend_from_slice(self.data.json().as_bytes());
        out.extend_from_slice(b",\"gateway_id\":");
        out.extend_from_slice(gateway_id_json);
        out.push(b'}');
    }
}

fn text<S: serde::Serializer>(s: &std::sync::Arc<str>, out: S) -> Result<S::Ok, S::Error> {
    out.serialize_str(s)
}

/// Cache, then (on a miss, a cache outage or `refresh`) one shared db read that refills the cache.
async fn read_through(
    state: &AppState,
    key: String,
    refresh: bool,
    rid: &str,
) -> Result<Response, Error> {
    let read = read(state, key, refresh, rid, std::time::Instant::now()).await?;
    Ok(match read.cache_layer {
        Some(layer) => ([x_cache(true), x_cache_layer(layer)], Json(read)).into_response(),
        None => ([x_cache(false)], Json(read)).into_response(),
    })
}

/// `key`'s answer: from the cache (`cached`, and the layer that had it), else (on a miss, a cache
/// outage or `refresh`) from one shared db read that refills the cache. What both the router's
/// handlers and the front path (`front.rs`) answer with; `started` is when the request began (for
/// the latency histogram).
pub(crate) async fn read(
    state: &AppState,
    key: String,
    refresh: bool,
    rid: &str,
    started: std::time::Instant,
) -> Result<DataAnswer, Error> {
    valid_key(&key)?;
    let gateway_id = state.inner.instance.id.clone();
    let cache = &state.inner.cache;
    let lease = if refresh {
        // The fill below replaces whatever is cached; it still needs a lease, so that a write
        // landing during the db read wins.
        match cache.lease(&key, rid).await {
            Ok(lease) => lease,
            Err(e) => {
                tracing::warn!(error = %e, backend = cache.name(), %key, "cache lease failed; the refresh will not refill");
                cache_error("get");
                None
            }
        }
    } else {
        match cache.lookup(&key, rid).await {
            Ok(Lookup::Hit { value, layer }) => {
                count(state, Some(layer), started);
                return Ok(DataAnswer {
                    cached: true,
                    cache_layer: Some(layer),
                    key,
                    data: value,
                    gateway_id,
                });
            }
            Ok(Lookup::Miss { lease }) => lease,
            Err(e) => {
                // A cache outage costs latency, never an answer: read the db.
                tracing::warn!(error = %e, backend = cache.name(), %key, "cache read failed; reading the db");
                cache_error("get");
                None
            }
        }
    };
    let work_state = state.clone();
    let work_key = key.clone();
    let work_rid = rid.to_string();
    // Only the flight's leader runs this, with its own lease.
    let (read, _role) = state
        .inner
        .flights
        .run(key.clone(), move || {
            load(work_state, work_key, work_rid, lease)
        })
        .await
        .map_err(|Aborted| Error::Internal("the shared db read ended without a result".into()))?;
    count(state, None, started);
    match read {
        Ok(Some(data)) => Ok(DataAnswer {
            cached: false,
            cache_layer: None,
            key,
            data: Cached::from_value(&data),
            gateway_id,
        }),
        Ok(None) => Err(Error::NotFound(format!("no record for key {key:?}"))),
        Err(e) => Err(Error::Shared(e)),
    }
}

/// The one db read of a flight, and the cache refill under `lease` (the cache's fill lease, taken
/// before the read).
async fn load(
    state: AppState,
    key: String,
    rid: String,
    lease: Option<u64>,
) -> crate::state::DbRead {
    metrics::counter!("scalelab_gateway_db_reads_total").increment(1);
    // Noted before the read: a write that lands after it makes the fill below store nothing.
    let seen = state.inner.fence.generation(&key);
    let record = state
        .inner
        .db
        .get(&key, &rid)
        .await
        .map_err(|e| std::sync::Arc::new(from_client(e)))?;
    let Some(record) = record else {
        return Ok(None);
    };
    let ttl = Duration::from_secs(state.inner.config.cache_ttl_secs);
    let fill = state
        .inner
        .cache
        .fill(&key, &record.value, ttl, lease, &rid);
    let stored = state.inner.fence.fill_if_unchanged(&key, seen, fill).await;
    if let Some(Err(e)) = stored {
        tracing::warn!(error = %e, backend = state.inner.cache.name(), %key, "cache write failed; the next read goes to the db again");
        cache_error("set");
    }
    Ok(Some(record.value))
}

/// `PUT /data/{key}` `{"value": any}`: write to the db, then delete the cached entry.
#[utoipa::path(
    put,
    path = "/data/{key}",
    tag = "data",
    operation_id = "put_data",
    summary = "Write a record, then delete its cached copy",
    params(
        ("key" = String, Path, description = "The key.",
            pattern = r"^(?!\.\.?$)[^\u0000-\u001f\u007f-\u009f]{1,256}$", example = "my_data"),
    ),
    request_body(content = PutRecord, example = json!({"value": {"hello": "world"}})),
    responses(
        (status = 200, description = "The record as written, and whether the cached copy was deleted.",
            body = DataWritten,
            headers(("X-Cache" = String, description = "Always `MISS`.")),
            example = json!({"key": "my_data", "value": {"hello": "world"}, "updated_at": "2026-05-01T10:00:00Z", "invalidated": true, "gateway_id": "gateway-1"})),
        (status = 400, description = "A bad key (`invalid_key`), or a body that is not `{\"value\": any}` (`malformed_json`, `invalid_body`).", body = ErrorBody),
        (status = 413, description = "The body or the value is larger than allowed (`payload_too_large`, `value_too_large`).", body = ErrorBody),
        (status = 502, description = "The db cannot be reached or failed.", body = ErrorBody),
        (status = 503, description = "The db is unavailable.", body = ErrorBody),
    )
)]
async fn put_data(
    State(state): State<AppState>,
    RequestId(rid): RequestId,
    key: Result<Path<String>, PathRejection>,
    body: Result<Json<PutRecord>, ApiError>,
) -> Response {
    let result = async {
        let key = path_key(key)?;
        valid_key(&key)?;
        let Json(body) = body?;
        let record = state.inner.db.put(&key, &body.value, &rid).await?;
        // Delete on write: the next read misses and loads the new value. A failed delete leaves
        // the old value until its TTL runs out; it is logged, the write itself succeeded.
        let delete = state.inner.cache.delete(&key, &rid);
        let invalidated = match state.inner.fence.invalidate(&key, delete).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, %key, "cache delete after a write failed; the old value stays until its TTL");
                cache_error("delete");
                false
            }
        };
        let body = DataWritten {
            key: record.key,
            value: record.value,
            updated_at: record.updated_at,
            invalidated,
            gateway_id: state.inner.instance.id.to_string(),
        };
        Ok::<_, Error>(([x_cache(false)], Json(body)).into_response())
    }
    .await;
    with_miss_header(result)
}

/// `GET /cache/stats` (admin).
#[utoipa::path(
    get,
    path = "/cache/stats",
    tag = "data",
    operation_id = "cache_stats",
    summary = "The cache backend's counters",
    responses(
        (status = 200, description = "The counters, the backend and the gateway that answered.",
            body = CacheStatsAnswer,
            example = json!({"entries": 12, "hits": 340, "misses": 25, "hit_ratio": 0.93, "evictions": 0, "expired": 3, "backend": "service", "gateway_id": "gateway-1"})),
        (status = 502, description = "The cache service cannot be reached or failed (`cache_unavailable`, `cache_error`).", body = ErrorBody),
        (status = 503, description = "The cache is unavailable.", body = ErrorBody),
    )
)]
async fn cache_stats(
    State(state): State<AppState>,
    RequestId(rid): RequestId,
) -> Result<Json<CacheStatsAnswer>, Error> {
    let stats = state.inner.cache.stats(&rid).await?;
    Ok(Json(CacheStatsAnswer {
        stats,
        backend: state.inner.cache.name().into(),
        gateway_id: state.inner.instance.id.to_string(),
    }))
}

/// `POST /cache/flush` (admin).
#[utoipa::path(
    post,
    path = "/cache/flush",
    tag = "data",
    operation_id = "cache_flush",
    summary = "Empty the cache",
    responses(
        (status = 200, description = "The cache is empty.", body = Flushed,
            example = json!({"flushed": true, "backend": "service"})),
        (status = 502, description = "The cache service cannot be reached or failed.", body = ErrorBody),
        (status = 503, description = "The cache is unavailable.", body = ErrorBody),
    )
)]
async fn cache_flush(
    State(state): State<AppState>,
    RequestId(rid): RequestId,
) -> Result<Json<Flushed>, Error> {
    state.inner.cache.flush(&rid).await?;
    tracing::info!(backend = state.inner.cache.name(), "cache flushed");
    Ok(Json(Flushed {
        flushed: true,
        backend: state.inner.cache.name().into(),
    }))
}
