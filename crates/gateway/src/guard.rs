//! The middleware in front of every route of the table: who is calling, then whether they may.
//! Each route gets its own instance, holding its resolved entry of the route table
//! (`policy.rs`), so nothing is looked up per request.
//!
//! 1. Identity, by the entry's token rule: `none` reads no token; `optional` uses a valid one and
//!    ignores a bad one; `required` refuses a missing or bad token with `401` (unless
//!    `auth.required = false`, where requests without a token run as anonymous).
//! 2. Guests: a guest token is refused (`403`) on a route that needs a token and writes.
//! 3. Rate limit: the entry's bucket and rule, per client (user id, else IP); a denied request gets
//!    `429`, an admitted one carries the `RateLimit-*` headers on its answer.
//! 4. Role: the entry's role (after the topology's overrides), unless the route waives it for the
//!    caller's own resource (`GET /users/{id}` of yourself).
//!
//! Authentication comes first so that the limit can be per user; a request with a bad token is
//! refused before it costs anything but a signature check. The limit comes before the role check so
//! that hammering a forbidden route is limited too.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, RawPathParams, Request, State};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use common::RequestId;

use crate::policy::{GUEST, LOGIN_BUCKET, Resolved, RoleScope, TokenRule};
use crate::rate_limit::client_ip;
use crate::tokens::{Caller, token_from};
use crate::{AppState, Error};

/// Runs before one route's handler (installed by `policy::build` as that route's layer).
pub(crate) async fn guard(
    State((state, route)): State<(AppState, Arc<Resolved>)>,
    RequestId(rid): RequestId,
    mut req: Request,
    next: Next,
) -> Response {
    let policy = route.policy;
    let strict = policy.token == TokenRule::Required && state.inner.config.auth.required;
    let caller = match policy.token {
        TokenRule::None => Caller::Anonymous,
        _ => match identify(&state, req.headers(), &rid).await {
            Ok(caller) => caller,
            Err(e) if strict => return e.into_response(),
            Err(e) => {
                tracing::debug!(error = %e, route = policy.path, "ignoring a bad token on a route that does not need one");
                Caller::Anonymous
            }
        },
    };
    if strict && caller == Caller::Anonymous {
        return Error::MissingToken.into_response();
    }
    if policy.token == TokenRule::Required && !policy.guests && caller.has_role(GUEST) {
        return Error::Forbidden(format!(
            "guest tokens are read-only: {} {} writes; log in with an account",
            policy.method, policy.path
        ))
        .into_response();
    }

    let decision = match &route.limit {
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
            let decision = state.inner.limiter.check(bucket, &client, rule).await;
            if !decision.allowed {
                metrics::counter!(
                    "scalelab_gateway_rate_limited_total",
                    "route" => policy.path,
                    "id" => state.inner.instance.id.to_string()
                )
                .increment(1);
                tracing::info!(route = policy.path, %client, "rate limited");
                return Error::RateLimited {
                    route: policy.path.to_string(),
                    decision,
                }
                .into_response();
            }
            Some(decision)
        }
    };

    let own = match policy.scope {
        RoleScope::Always => false,
        RoleScope::UnlessSelf(param) => {
            let (mut parts, body) = req.into_parts();
            let named = RawPathParams::from_request_parts(&mut parts, &())
                .await
                .ok()
                .and_then(|params| {
                    params
                        .iter()
                        .find(|(name, _)| *name == param)
                        .map(|(_, value)| value.to_string())
                });
            req = Request::from_parts(parts, body);
            named.is_some() && caller.user_id() == named.as_deref()
        }
    };
    if !own && let Err(e) = route.require(&caller, &format!("{} {}", policy.method, policy.path)) {
        return e.into_response();
    }

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
