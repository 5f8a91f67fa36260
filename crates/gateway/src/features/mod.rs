//! The gateway's handlers, one module per feature. Each module lists its [`Endpoint`]s; the route
//! table (`policy.rs`) decides who may call them, and `policy::build` puts them together.
//!
//! - `accounts`: login, registration (across `auth` and `users`, with undo), guest tokens;
//! - `data`: `GET`/`PUT /data` cache-aside, the cache's stats and flush;
//! - `process`: `GET /process` through the balanced pool of services;
//! - `users`: your profile, the admin routes, `GET /users/{id}` cache-aside;
//! - `tasks`: submission, status, listing, cancellation, events, the lab's task calls;
//! - `ops`: readiness and the route table itself;
//! - `rental`: the Casitas preset's units, finances and legal routes, cached, and its reports;
//! - `docs`: the contract, `GET /openapi.json`, and its page, `GET /docs`.

mod accounts;
pub(crate) mod data;
mod docs;
mod ops;
mod process;
mod rental;
mod tasks;
mod users;

use axum::http::{HeaderName, HeaderValue};

use crate::policy::Endpoint;

pub use data::DEFAULT_KEY;

/// Every endpoint of a gateway configured by `config` (the Casitas preset's only with its services).
pub(crate) fn endpoints(config: &crate::config::Config) -> Vec<Endpoint> {
    [
        accounts::endpoints(),
        data::endpoints(),
        process::endpoints(),
        users::endpoints(),
        tasks::endpoints(),
        ops::endpoints(),
        rental::endpoints(config),
        docs::endpoints(config),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The OpenAPI descriptions of the endpoints `config` makes exist, one per feature (each module's
/// `Doc` lists its annotated handlers); `openapi::document` completes and merges them.
pub(crate) fn docs(config: &crate::config::Config) -> Vec<utoipa::openapi::OpenApi> {
    use utoipa::OpenApi;
    let mut docs = vec![
        accounts::Doc::openapi(),
        data::Doc::openapi(),
        process::Doc::openapi(),
        users::Doc::openapi(),
        tasks::Doc::openapi(),
        ops::Doc::openapi(),
        docs::Doc::openapi(),
    ];
    docs.extend(rental::docs(config));
    docs
}

/// A body read whole, whatever its content type (the routes whose body is optional). axum's own
/// `Bytes` rejection is plain text; this one is the error shape: `413 payload_too_large` beyond
/// the body limit, `400 unreadable_body` when the body cannot be read.
pub(crate) struct RawBody(pub(crate) axum::body::Bytes);

impl<S: Send + Sync> axum::extract::FromRequest<S> for RawBody {
    type Rejection = crate::Error;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        use axum::http::StatusCode;
        axum::body::Bytes::from_request(req, state)
            .await
            .map(RawBody)
            .map_err(|e| {
                crate::Error::Body(if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    common::ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "payload_too_large",
                        "the body is larger than this endpoint accepts",
                    )
                } else {
                    common::ApiError::bad_request("unreadable_body", "the body could not be read")
                })
            })
    }
}

/// An optional JSON object body: empty or `null` is `T::default()`; anything but an object (an
/// array, which serde would otherwise read as the struct's fields in order) is `400 invalid_body`
/// with `what` saying what the body should be.
pub(crate) fn optional_object<T: serde::de::DeserializeOwned + Default>(
    body: &[u8],
    what: &str,
) -> Result<T, crate::Error> {
    let invalid = |detail: String| crate::Error::Invalid {
        code: "invalid_body".into(),
        message: format!("{what}: {detail}"),
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    match serde_json::from_slice::<serde_json::Value>(body).map_err(|e| invalid(e.to_string()))? {
        serde_json::Value::Null => Ok(T::default()),
        object @ serde_json::Value::Object(_) => {
            serde_json::from_value(object).map_err(|e| invalid(e.to_string()))
        }
        _ => Err(invalid("not a JSON object".into())),
    }
}

/// `X-Cache: HIT` or `MISS`, on every answer that may come from the cache.
fn x_cache(hit: bool) -> (HeaderName, HeaderValue) {
    (
        HeaderName::from_static(api::headers::CACHE),
        HeaderValue::from_static(if hit { "HIT" } else { "MISS" }),
    )
}

/// `X-Cache-Layer: near` or `shared`, beside `X-Cache: HIT`: which cache had the value.
fn x_cache_layer(layer: crate::cache::CacheLayer) -> (HeaderName, HeaderValue) {
    (
        HeaderName::from_static(api::headers::CACHE_LAYER),
        HeaderValue::from_static(layer.as_str()),
    )
}

/// Counts a cache failure the request survived (`op`: `get`, `set`, `delete`).
fn cache_error(op: &'static str) {
    metrics::counter!("scalelab_gateway_cache_errors_total", "op" => op).increment(1);
}
