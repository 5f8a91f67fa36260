//! The middleware in front of every business route: who is calling, then whether they may.
//!
//! 1. Identity: the token (if any) is checked; protected routes refuse a missing or bad token with
//!    `401` (unless `auth.required = false`), public routes run with whatever identity there is.
//! 2. Rate limit: the route's rule (if any) is checked for the client (user id, else IP); a denied
//!    request gets `429`, an admitted one carries the `RateLimit-*` headers on its answer.
//!
//! Authentication comes first so that the limit can be per user; a request with a bad token is
//! refused before it costs anything but a signature check.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Request, State};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use common::RequestId;

use crate::rate_limit::client_ip;
use crate::state::LOGIN_BUCKET;
use crate::tokens::{Caller, token_from};
use crate::{AppState, Error, routes};

/// Runs before every business route (installed with `route_layer`, so that unknown routes and
/// wrong methods get their `404`/`405` without a token).
pub(crate) async fn guard(
    State(state): State<AppState>,
    RequestId(rid): RequestId,
    mut req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let strict = state.inner.config.auth.required && !routes::is_public(&route);

    let caller = match identify(&state, req.headers(), &rid).await {
        Ok(caller) => caller,
        Err(e) if strict => return e.into_response(),
        Err(e) => {
            tracing::debug!(error = %e, %route, "ignoring a bad token on a route that does not need one");
            Caller::Anonymous
        }
    };
    if strict && caller == Caller::Anonymous {
        return Error::MissingToken.into_response();
    }

    let decision = match state.rule_for(&route) {
        None => None,
        Some((bucket, rule)) => {
            let peer = req
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0);
            let client = match caller.user_id() {
                // Logins are limited per IP: the point is to slow down password guessing.
                Some(id) if bucket != LOGIN_BUCKET => format!("user:{id}"),
                _ => match client_ip(
                    peer,
                    req.headers(),
                    &state.inner.config.rate_limit.trusted_proxies,
                ) {
                    Some(ip) => format!("ip:{ip}"),
                    None => "ip:unknown".to_string(),
                },
            };
            let decision = state.inner.limiter.check(&bucket, &client, &rule).await;
            if !decision.allowed {
                metrics::counter!(
                    "scalelab_gateway_rate_limited_total",
                    "route" => route.clone(),
                    "id" => state.inner.instance.id.to_string()
                )
                .increment(1);
                tracing::info!(%route, %client, "rate limited");
                return Error::RateLimited { route, decision }.into_response();
            }
            Some(decision)
        }
    };

    req.extensions_mut().insert(caller);
    let mut resp = next.run(req).await;
    if let Some(d) = decision {
        for (name, value) in d.headers() {
            resp.headers_mut().insert(name, value);
        }
    }
    resp
}

/// The caller of `req`: a user when a valid token is present, anonymous when none is.
async fn identify(state: &AppState, headers: &HeaderMap, rid: &str) -> Result<Caller, Error> {
    match token_from(headers)? {
        None => Ok(Caller::Anonymous),
        Some(token) => state
            .inner
            .verifier
            .verify(&token, rid)
            .await
            .map(Caller::User),
    }
}

/// Handlers take the caller the guard found.
impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| Error::Internal("a handler ran without the guard".into()))
    }
}
