//! The route table: the router cannot be built with a route nobody decided about, every guarded
//! route of the table refuses the wrong caller (driven by the table itself, not a hand-picked list),
//! guests are read-only, and the topology's overrides are checked against the table.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::json;

use super::{Harness, send, state_with};
use crate::policy::{self, BuildError, Endpoint, ROUTES, TokenRule};
use crate::{Error, features, router};

/// A request for `method path` with the path's parameters filled in (`{id}` names somebody else).
fn request(method: &str, path: &str, token: Option<&str>) -> Request<Body> {
    let uri = path
        .replace("{key}", "my_data")
        .replace("{id}", "id-someone-else");
    let method: Method = method.parse().expect("method");
    let mut r = Request::builder().method(method.clone()).uri(uri);
    if let Some(token) = token {
        r = r.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let body = if method == Method::GET || method == Method::DELETE {
        Body::empty()
    } else {
        r = r.header(header::CONTENT_TYPE, "application/json");
        Body::from("{}")
    };
    r.body(body).expect("request")
}

/// The answer to `r` for route `p`: JSON, but for the documentation page, which is HTML.
async fn answer(app: &axum::Router, p: &policy::RoutePolicy, r: Request<Body>) -> super::Answer {
    if p.path == "/docs" {
        common::testing::call(app, r).await
    } else {
        send(app, r).await
    }
}

/// `h` with the Casitas preset's domain URLs set (to a dead address: the guard answers first).
async fn with_casitas(mut h: Harness) -> Harness {
    let dead = super::fakes::dead_url().await;
    h.config.units_url = dead.clone();
    h.config.finances_url = dead.clone();
    h.config.legal_url = dead;
    h
}

#[tokio::test]
async fn the_router_refuses_an_endpoint_without_an_entry_and_an_entry_without_an_endpoint() {
    let h = Harness::start().await;
    let state = h.state().await;
    assert!(policy::build(&state, features::endpoints(&h.config)).is_ok());

    let mut extra = features::endpoints(&h.config);
    extra.push(Endpoint::new(Method::GET, "/secret", || async { "open" }));
    assert_eq!(
        policy::build(&state, extra).err(),
        Some(BuildError::NoPolicy("GET /secret".into()))
    );

    // A method the table does not list on a path it does list is refused the same way.
    let mut extra = features::endpoints(&h.config);
    extra.push(Endpoint::new(Method::DELETE, "/data/{key}", || async {
        "gone"
    }));
    assert_eq!(
        policy::build(&state, extra).err(),
        Some(BuildError::NoPolicy("DELETE /data/{key}".into()))
    );

    let mut missing = features::endpoints(&h.config);
    missing.remove(0);
    assert!(matches!(
        policy::build(&state, missing).err(),
        Some(BuildError::NoHandler(_))
    ));
}

#[tokio::test]
async fn every_route_of_the_table_applies_its_token_role_and_guest_rules() {
    // The Casitas preset's tables too: their services are dead here, and the guard answers first.
    let h = with_casitas(Harness::start().await).await;
    let app = h.app().await;
    let (user, admin, guest) = (h.user(), h.admin(), h.auth.token("guest", &["guest"]));
    let routes: Vec<_> = policy::active(&h.config).collect();
    assert_eq!(
        routes.len(),
        ROUTES.len()
            + policy::UNITS_ROUTES.len()
            + policy::FINANCES_ROUTES.len()
            + policy::LEGAL_ROUTES.len()
    );
    let mut checked = 0;
    for p in routes.iter().copied() {
        let route = format!("{} {}", p.method, p.path);
        let a = answer(&app, p, request(p.method, p.path, None)).await;
        match p.token {
            TokenRule::Required => assert_eq!(
                (a.status, a.error()),
                (StatusCode::UNAUTHORIZED, "missing_token"),
                "{route} without a token"
            ),
            _ => assert_ne!(a.status, StatusCode::UNAUTHORIZED, "{route}: {}", a.json),
        }
        if let Some(role) = p.role {
            assert!(
                ["admin", "finance", "legal"].contains(&role),
                "the test's tokens know user, admin, finance and legal"
            );
            let a = send(&app, request(p.method, p.path, Some(&user))).await;
            assert_eq!(
                (a.status, a.error()),
                (StatusCode::FORBIDDEN, "forbidden"),
                "{route} with a user's token"
            );
            assert!(
                a.json["message"].as_str().unwrap_or("").contains(role),
                "{route}: {}",
                a.json
            );
        }
        if p.token == TokenRule::Required && !p.guests {
            let a = send(&app, request(p.method, p.path, Some(&guest))).await;
            assert_eq!(
                (a.status, a.error()),
                (StatusCode::FORBIDDEN, "forbidden"),
                "{route} with a guest token"
            );
            assert!(a.json["message"].as_str().unwrap_or("").contains("guest"));
        }
        // The right caller passes the guard (the handler may still refuse the empty body or
        // find nothing; that is not the policy's answer).
        let a = answer(&app, p, request(p.method, p.path, Some(&admin))).await;
        assert!(
            ![StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN].contains(&a.status),
            "{route} with an admin's token: {} {}",
            a.status,
            a.json
        );
        checked += 1;
    }
    assert_eq!(checked, routes.len());
    // Writes are the routes guests may not pass; reads all let them through.
    for p in routes.iter().filter(|p| p.token == TokenRule::Required) {
        assert_eq!(p.guests, p.method == "GET", "{} {}", p.method, p.path);
    }
}

/// A route's role is passed by that role and by admin, and by nobody else: finance staff read
/// transactions but not legal documents, and cannot add units.
#[tokio::test]
async fn a_role_passes_its_own_routes_and_admin_passes_all() {
    let h = with_casitas(Harness::start().await).await;
    let app = h.app().await;
    let finance = h.auth.token("fiona", &["finance"]);
    let legal = h.auth.token("lee", &["legal"]);
    let passes =
        |a: &super::Answer| ![StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN].contains(&a.status);
    let cases = [
        ("GET", "/finances/transactions", &finance, true),
        ("POST", "/finances/generate_report", &finance, true),
        ("GET", "/legal/documents", &finance, false),
        ("POST", "/units", &finance, false),
        ("GET", "/legal/documents", &legal, true),
        ("POST", "/legal/generate_report", &legal, true),
        ("GET", "/finances/transactions", &legal, false),
        ("GET", "/units", &legal, true),
    ];
    for (method, path, token, want) in cases {
        let a = send(&app, request(method, path, Some(token))).await;
        assert_eq!(passes(&a), want, "{method} {path}: {} {}", a.status, a.json);
        if !want {
            assert_eq!(a.error(), "forbidden");
        }
    }
    // Without the preset's services, its routes do not exist.
    let plain = Harness::start().await.app().await;
    let a = send(&plain, request("GET", "/units", Some(&finance))).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.json);
}

#[tokio::test]
async fn a_guest_token_reads_but_never_writes() {
    let h = Harness::start().await;
    let app = h.app().await;
    let guest = h.auth.token("guest", &["guest"]);
    let a = send(&app, request("GET", "/data", Some(&guest))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);

    let put = Request::builder()
        .method(Method::PUT)
        .uri("/data/my_data")
        .header(header::AUTHORIZATION, format!("Bearer {guest}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(json!({"value": "overwritten"}).to_string()))
        .expect("request");
    let a = send(&app, put).await;
    assert_eq!((a.status, a.error()), (StatusCode::FORBIDDEN, "forbidden"));
    assert_eq!(
        h.db.records.lock().unwrap()["my_data"],
        json!({"hello": "world"}),
        "the record is untouched"
    );
}

#[tokio::test]
async fn overrides_change_roles_and_the_policy_route_shows_them() {
    let h = Harness::start().await;
    let mut config = h.config.clone();
    config
        .required_roles
        .insert("GET /tasks/stats".into(), String::new());
    config
        .required_roles
        .insert("GET /process".into(), "admin".into());
    let app = router(state_with(config, "gateway-2").await);

    let a = send(&app, request("GET", "/process", Some(&h.user()))).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    // No role any more: the user passes the guard (and finds no queue here).
    let a = send(&app, request("GET", "/tasks/stats", Some(&h.user()))).await;
    assert_eq!(
        (a.status, a.error()),
        (StatusCode::SERVICE_UNAVAILABLE, "queue_unavailable")
    );

    let a = send(&app, request("GET", "/policy", Some(&h.user()))).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let a = send(&app, request("GET", "/policy", Some(&h.admin()))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    let rows = a.json.as_array().expect("a list");
    assert_eq!(rows.len(), ROUTES.len());
    let row = |m: &str, p: &str| {
        rows.iter()
            .find(|r| r["method"] == m && r["path"] == p)
            .unwrap_or_else(|| panic!("{m} {p} in {rows:?}"))
            .clone()
    };
    assert_eq!(row("GET", "/process")["role"], "admin");
    assert_eq!(row("GET", "/tasks/stats")["role"], json!(null));
    assert_eq!(row("POST", "/login")["bucket"], "login");
    assert_eq!(row("PUT", "/data/{key}")["guests"], false);
}

#[tokio::test]
async fn an_override_naming_no_route_stops_the_gateway_at_start() {
    let h = Harness::start().await;
    let mut config = h.config.clone();
    config
        .required_roles
        .insert("GET /user".into(), "admin".into());
    let err = crate::AppState::new(
        config,
        common::Instance::new("gateway", "gateway-3".to_string()),
    )
    .await
    .expect_err("refused");
    assert!(
        matches!(&err, Error::Config(m) if m.contains("required_roles.\"GET /user\": no such route")),
        "{err}"
    );
}
