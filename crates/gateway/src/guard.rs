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
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use common::RequestId;

use crate::policy::{GUEST, LOGIN_BUCKET, Resolved, RoleScope, TokenRule};
use crate::rate_limit::{Decision, client_ip};
use crate::tokens::{Caller, HeaderSource, token_from};
use crate::{AppState, Error};

/// Runs before one route's handler (installed by `policy::build` as that route's layer).
pub(crate) async fn guard(
    State((state, route)): State<(AppState, Arc<Resolved>)>,
    RequestId(rid): RequestId,
    mut req: Request,
    next: Next,
) -> Response {
    // The path parameter naming the resource, for a route whose role is waived for its owner.
    let named = match route.policy.scope {
        RoleScope::Always => None,
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
            named
        }
    };
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let (caller, decision) = match admit(
        &state,
        &route,
        req.headers(),
        peer,
        &rid,
        named.as_deref(),
        None,
    )
    .await
    {
        Ok(admitted) => admitted,
        Err(e) => return e.into_response(),
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

/// The request headers [`admit`] reads (the token's, and the client address behind a trusted
/// proxy): all the front path (`front.rs`) copies from a request it answers itself.
pub(crate) const ADMIT_HEADERS: [&str; 3] = ["authorization", "x-token", "x-forwarded-for"];

/// Steps 1 to 4 for one request of `route`: the caller and the rate limit's decision (whose
/// headers go on the answer), or the refusal. `owner` is the path parameter a
/// [`RoleScope::UnlessSelf`] route waives its role for. Also what the front path
/// (`front.rs`) runs for the requests it answers itself, so both paths admit the same requests;
/// `known` is the caller the front path already knows these headers prove (see `front.rs`).
pub(crate) async fn admit(
    state: &AppState,
    route: &Resolved,
    headers: &(impl HeaderSource + ?Sized),
    peer: Option<SocketAddr>,
    rid: &str,
    owner: Option<&str>,
    known: Option<Caller>,
) -> Result<(Caller, Option<Decision>), Error> {
    let policy = route.policy;
    let strict = policy.token == TokenRule::Required && state.inner.config.auth.required;
    let caller = match (policy.token, known) {
        (TokenRule::None, _) => Caller::Anonymous,
        (_, Some(known)) => known,
        _ => match identify(state, headers, rid).await {
            Ok(caller) => caller,
            Err(e) if strict => return Err(e),
            Err(e) => {
                tracing::debug!(error = %e, route = policy.path, "ignoring a bad token on a route that does not need one");
                Caller::Anonymous
            }
        },
    };
    if strict && caller == Caller::Anonymous {
        return Err(Error::MissingToken);
    }
    if policy.token == TokenRule::Required && !policy.guests && caller.has_role(GUEST) {
        return Err(Error::Forbidden(format!(
            "guest tokens are read-only: {} {} writes; log in with an account",
            policy.method, policy.path
        )));
    }

    let decision = match &route.limit {
        None => None,
        Some((bucket, rule)) => {
            let client = match caller.user_id() {
                // Logins are limited per IP: the point is to slow down password guessing.
                Some(id) if bucket != LOGIN_BUCKET => format!("user:{id}"),
                _ => match client_ip(
                    peer,
                    headers,
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
                return Err(Error::RateLimited {
                    route: policy.path.to_string(),
                    decision,
                });
            }
            Some(decision)
        }
    };

    let own = owner.is_some() && caller.user_id() == owner;
    if !own && !route.admits(&caller) {
        route.require(&caller, &format!("{} {}", policy.method, policy.path))?;
    }
    Ok((caller, decision))
}

/// The caller of `req`: a user when a valid token is present, anonymous when none is.
async fn identify(
    state: &AppState,
    headers: &(impl HeaderSource + ?Sized),
    rid: &str,
) -> Result<Caller, Error> {
    match token_from(headers)? {
        None => Ok(Caller::Anonymous),
        Some(token) => state
            .inner
            .verifier
            .verify(token, rid)
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
