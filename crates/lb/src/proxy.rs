//! Forwarding one request to a gateway: header rewriting and error answers.

use std::net::SocketAddr;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, Version, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Limited};

use common::ApiError;

use crate::AppState;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const HTTP: HeaderValue = HeaderValue::from_static("http");

/// Whether `name` describes one hop's connection, never to be forwarded: the one list, in
/// [`crate::h1::is_hop_by_hop`].
fn is_hop_by_hop(name: &HeaderName) -> bool {
    crate::h1::is_hop_by_hop(name.as_str().as_bytes())
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
///
/// One pass over the names first (comparisons, no hashing): most requests and responses carry
/// none of them, and then nothing else is done. Otherwise only the names present are removed.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let mut doomed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        // `keep-alive` and `close`, by far the most common, are options, not header names to drop.
        .filter(|t| !t.eq_ignore_ascii_case("keep-alive") && !t.eq_ignore_ascii_case("close"))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    doomed.extend(headers.keys().filter(|n| is_hop_by_hop(n)).cloned());
    for name in &doomed {
        headers.remove(name);
    }
}

thread_local! {
    /// The last client address this thread formatted, and its text: a connection sends many
    /// requests, and most balancers see few distinct clients at a time, so the address is
    /// formatted once, not per request.
    static LAST_PEER: std::cell::RefCell<Option<(std::net::IpAddr, HeaderValue)>> =
        const { std::cell::RefCell::new(None) };
}

/// The client address as a header value.
fn peer_value(ip: std::net::IpAddr) -> Option<HeaderValue> {
    LAST_PEER.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((seen, value)) = last.as_ref()
            && *seen == ip
        {
            return Some(value.clone());
        }
        let value = HeaderValue::from_str(&ip.to_string()).ok()?;
        *last = Some((ip, value.clone()));
        Some(value)
    })
}

/// Sets `X-Forwarded-For` (appending the peer), `X-Forwarded-Proto` and `X-Forwarded-Host`.
pub fn set_forwarded(headers: &mut HeaderMap, peer: Option<SocketAddr>) {
    if let Some(peer) = peer {
        match headers
            .get(&X_FORWARDED_FOR)
            .and_then(|v| v.to_str().ok())
            .filter(|prev| !prev.trim().is_empty())
        {
            Some(prev) => {
                let xff = format!("{prev}, {}", peer.ip());
                if let Ok(v) = HeaderValue::from_str(&xff) {
                    headers.insert(X_FORWARDED_FOR, v);
                }
            }
            None => {
                if let Some(v) = peer_value(peer.ip()) {
                    headers.insert(X_FORWARDED_FOR, v);
                }
            }
        }
    }
    headers.insert(X_FORWARDED_PROTO, HTTP);
    if let Some(host) = headers.get(header::HOST).cloned() {
        headers.insert(X_FORWARDED_HOST, host);
    }
}

/// The proxy handler: everything outside the admin prefix lands here.
pub async fn forward(State(state): State<AppState>, req: Request) -> Response {
    let started = Instant::now();
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let (mut parts, body) = req.into_parts();

    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > state.max_body_bytes) {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "request bodies are limited to {} bytes",
                state.max_body_bytes
            ),
        );
    }

    // The gateways speak HTTP/1.1 whatever the client spoke (h2c included): an HTTP/2 request
    // names its host in the URI's authority only, which becomes the Host header.
    if parts.version != Version::HTTP_11 && parts.version != Version::HTTP_10 {
        if !parts.headers.contains_key(header::HOST)
            && let Some(authority) = parts.uri.authority()
            && let Ok(host) = HeaderValue::from_str(authority.as_str())
        {
            parts.headers.insert(header::HOST, host);
        }
        parts.version = Version::HTTP_11;
    }
    strip_hop_by_hop(&mut parts.headers);
    set_forwarded(&mut parts.headers, peer);
    // Backends get the origin form (`/path?query`), whatever form the client used; the usual
    // origin form is kept as it is, not parsed again.
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        parts.uri = path
            .parse::<Uri>()
            .unwrap_or_else(|_| Uri::from_static("/"));
    }
    parts.extensions.clear();

    // A body without a declared length is still bounded while it streams.
    let body = if declared.is_some() {
        body
    } else {
        let limit = usize::try_from(state.max_body_bytes).unwrap_or(usize::MAX);
        Body::new(Limited::new(body, limit).map_err(axum::Error::new))
    };
    let req = Request::from_parts(parts, body);

    match state.pool.send(req).await {
        Ok(fwd) => {
            let mut resp = fwd.response;
            strip_hop_by_hop(resp.headers_mut());
            let (requests, duration) = handles(&fwd.backend, resp.status().as_u16());
            requests.increment(1);
            duration.record(started.elapsed().as_secs_f64());
            resp
        }
        Err(e) => {
            tracing::warn!(error = %e, "request could not be proxied");
            metrics::counter!("scalelab_lb_errors_total", "code" => e.code()).increment(1);
            error(e.status(), e.code(), e.public_message())
        }
    }
}

thread_local! {
    /// Metric handles by backend and status, per thread: registering a labelled metric hashes
    /// and compares its labels and allocates them, which cost more than the rest of a request's
    /// bookkeeping; a handle, once made, is just an atomic.
    static HANDLES: std::cell::RefCell<std::collections::HashMap<(usize, u16), Handles>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// One backend's handles for one status.
struct Handles {
    /// Keeps the backend's allocation, so that its address (the key) cannot be reused by another
    /// backend while this entry exists, even if the pool drops the backend.
    _backend: std::sync::Weak<balance::Backend>,
    requests: metrics::Counter,
    duration: metrics::Histogram,
}

/// The request counter (by backend and status) and duration histogram (by backend) of one answer.
pub(crate) fn handles(
    backend: &std::sync::Arc<balance::Backend>,
    status: u16,
) -> (metrics::Counter, metrics::Histogram) {
    let key = (std::sync::Arc::as_ptr(backend) as usize, status);
    HANDLES.with(|h| {
        let mut h = h.borrow_mut();
        let e = h.entry(key).or_insert_with(|| Handles {
            _backend: std::sync::Arc::downgrade(backend),
            requests: metrics::counter!("scalelab_lb_requests_total", "backend" => backend.url.clone(), "status" => status.to_string()),
            duration: metrics::histogram!("scalelab_lb_request_duration_seconds", "backend" => backend.url.clone()),
        });
        (e.requests.clone(), e.duration.clone())
    })
}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    ApiError::new(status, code, message).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key(header::AUTHORIZATION));
    }

    #[test]
    fn forwarded_headers_append_the_peer() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("example.test:8000"));
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        set_forwarded(&mut h, Some("127.0.0.1:4000".parse().unwrap()));
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "example.test:8000");
    }
}
