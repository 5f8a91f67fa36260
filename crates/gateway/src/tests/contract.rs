//! The contract: the OpenAPI document describes exactly the routes the gateway has (the route
//! table's, the Casitas preset's only when its services are configured), every route's errors are
//! in the one shape with the statuses the route table implies, and the documentation page is
//! served whole from the binary, linking nothing outside it.

use std::collections::BTreeSet;

use axum::http::{StatusCode, header};
use serde_json::Value;

use super::{Harness, send};
use crate::openapi::{self, METHODS};
use crate::policy::{self, TokenRule};

/// `(METHOD, path)` of every operation of `doc`.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            if METHODS.contains(&method.as_str()) {
                ops.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    ops
}

/// `h` with the Casitas preset's domain URLs set (to a dead address: only the routes matter).
async fn with_casitas(mut h: Harness) -> Harness {
    let dead = super::fakes::dead_url().await;
    h.config.units_url = dead.clone();
    h.config.finances_url = dead.clone();
    h.config.legal_url = dead;
    h
}

#[tokio::test]
async fn the_document_has_every_route_of_the_table_and_nothing_else() {
    for casitas in [false, true] {
        let mut h = Harness::start().await;
        if casitas {
            h = with_casitas(h).await;
        }
        let doc = openapi::document(&h.config);
        let table: BTreeSet<(String, String)> = policy::active(&h.config)
            .map(|p| (p.method.to_string(), p.path.to_string()))
            .collect();
        let documented = operations(&doc);
        let undocumented: Vec<_> = table.difference(&documented).collect();
        let unrouted: Vec<_> = documented.difference(&table).collect();
        assert!(
            undocumented.is_empty() && unrouted.is_empty(),
            "casitas: {casitas}; routes without docs: {undocumented:?}; docs without a route: {unrouted:?}"
        );
        let units = ("GET".to_string(), "/units/{id}".to_string());
        assert_eq!(documented.contains(&units), casitas);
    }
}

#[tokio::test]
async fn every_operation_states_its_security_and_errors_as_the_route_table_resolves_them() {
    let h = with_casitas(Harness::start().await).await;
    let doc = openapi::document(&h.config);
    assert_eq!(doc["openapi"], "3.1.0");
    let mut ids = BTreeSet::new();
    for p in policy::active(&h.config) {
        let op = &doc["paths"][p.path][p.method.to_lowercase()];
        let route = format!("{} {}", p.method, p.path);
        let id = op["operationId"].as_str().unwrap_or_default().to_string();
        assert!(
            !id.is_empty() && ids.insert(id.clone()),
            "{route}: operationId {id:?}"
        );
        let responses = op["responses"].as_object().expect("responses");
        assert!(
            responses.keys().any(|s| s.starts_with('2')),
            "{route} has no success"
        );
        for (status, r) in responses {
            if status.starts_with('4') || status.starts_with('5') {
                let content = &r["content"]["application/json"];
                assert_eq!(
                    content["schema"]["$ref"], "#/components/schemas/ErrorBody",
                    "{route} {status}"
                );
                let example = &content["example"];
                assert!(
                    example["error"].is_string() && example["message"].is_string(),
                    "{route} {status}: example {example}"
                );
            }
        }
        let security = op["security"].as_array().expect("security");
        match p.token {
            TokenRule::Required => {
                assert_eq!(security.len(), 3, "{route}: {security:?}");
                assert!(responses.contains_key("401"), "{route}");
            }
            TokenRule::Optional => assert!(security.contains(&serde_json::json!({})), "{route}"),
            TokenRule::None => assert!(security.is_empty(), "{route}"),
        }
        if p.role.is_some() || (p.token == TokenRule::Required && !p.guests) {
            assert!(responses.contains_key("403"), "{route}");
        }
        // The login bucket is on by default: both logins document their 429.
        if p.path.ends_with("/login") {
            assert!(responses.contains_key("429"), "{route}");
        }
    }
    // The three ways `tokens::token_from` reads a token.
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["x_token"]["name"], "X-Token");
    assert_eq!(schemes["bare_token"]["name"], "Authorization");
}

#[tokio::test]
async fn a_submission_variant_per_task_type_this_gateway_accepts() {
    let plain = Harness::start().await;
    let casitas = with_casitas(Harness::start().await).await;
    let names = |h: &Harness| -> BTreeSet<String> {
        openapi::document(&h.config)["components"]["schemas"]["SubmitTask"]["oneOf"]
            .as_array()
            .expect("variants")
            .iter()
            .map(|v| {
                v["properties"]["type"]["const"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    };
    let all: BTreeSet<String> = queue::types::TYPES
        .iter()
        .map(|t| t.name.to_string())
        .collect();
    assert_eq!(names(&casitas), all);
    let without_reports: BTreeSet<String> = all
        .into_iter()
        .filter(|n| !n.ends_with("_report"))
        .collect();
    assert_eq!(names(&plain), without_reports);
}

#[tokio::test]
async fn the_gateway_serves_its_document() {
    let h = Harness::start().await;
    let app = h.app().await;
    let a = send(&app, common::testing::get("/openapi.json")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header(header::CONTENT_TYPE.as_str()), "application/json");
    assert_eq!(a.json, openapi::document(&h.config));
    // Links let a client chain calls: register then read the profile, submit then read the task.
    let links = &a.json["paths"]["/register"]["post"]["responses"]["201"]["links"];
    assert_eq!(links["GetUser"]["operationId"], "get_user");
    let links = &a.json["paths"]["/tasks"]["post"]["responses"]["202"]["links"];
    assert_eq!(links["GetTask"]["parameters"]["id"], "$response.body#/id");
}

/// Every `http://` or `https://` in `text`.
fn external_urls(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for scheme in ["http://", "https://"] {
        for (at, _) in text.match_indices(scheme) {
            found.push(text[at..].chars().take(60).collect());
        }
    }
    found
}

#[tokio::test]
async fn the_documentation_page_and_its_files_come_from_the_gateway() {
    let h = Harness::start().await;
    let app = h.app().await;
    let page = common::testing::call(&app, common::testing::get("/docs")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.header(header::CONTENT_TYPE.as_str())
            .starts_with("text/html"),
        "{:?}",
        page.headers
    );
    assert!(page.text.contains("swagger-ui"), "{}", page.text);
    assert_eq!(external_urls(&page.text), Vec::<String>::new());

    // Every file the page links is served here (relative links resolve under `/docs/`).
    assert!(
        page.text.contains("<base href=\"/docs/\">"),
        "{}",
        page.text
    );
    let mut linked = Vec::new();
    for attr in [" href=\"", " src=\""] {
        for (at, _) in page.text.match_indices(attr) {
            let rest = &page.text[at + attr.len()..];
            let url = &rest[..rest.find('"').unwrap_or(0)];
            if url != "/docs/" {
                // The `<base>` itself.
                linked.push(url.to_string());
            }
        }
    }
    assert!(linked.len() >= 5, "{linked:?}");
    for url in &linked {
        let url = match url.strip_prefix("./") {
            _ if url.starts_with('/') => url.clone(),
            Some(file) => format!("/docs/{file}"),
            None => format!("/docs/{url}"),
        };
        assert!(url.starts_with("/docs/"), "{url} is not the gateway's");
        let file = common::testing::call(&app, common::testing::get(&url)).await;
        assert_eq!(file.status, StatusCode::OK, "{url}");
        assert!(!file.text.is_empty(), "{url}");
    }
    // The page's settings point at this gateway's document and at no online validator.
    let init =
        common::testing::call(&app, common::testing::get("/docs/swagger-initializer.js")).await;
    assert_eq!(init.status, StatusCode::OK);
    assert!(init.text.contains("\"/openapi.json\""), "{}", init.text);
    assert!(
        init.text.contains("\"validatorUrl\": \"none\""),
        "{}",
        init.text
    );
    assert_eq!(external_urls(&init.text), Vec::<String>::new());

    let missing = send(&app, common::testing::get("/docs/nothing.js")).await;
    assert_eq!(
        (missing.status, missing.error()),
        (StatusCode::NOT_FOUND, "not_found")
    );
}

/// Every `$ref` string in `v`.
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn every_schema_the_document_names_is_in_it() {
    let h = with_casitas(Harness::start().await).await;
    let doc = openapi::document(&h.config);
    let mut found = Vec::new();
    refs(&doc, &mut found);
    assert!(!found.is_empty());
    for r in found {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("an unexpected reference {r}"));
        assert!(
            doc["components"]["schemas"].get(name).is_some(),
            "{r} is referenced but not defined"
        );
    }
    // The near cache's answer is documented with its layer.
    let layer = &doc["components"]["schemas"]["DataResponse"]["properties"]["cache_layer"];
    assert!(
        !layer.is_null(),
        "{}",
        doc["components"]["schemas"]["DataResponse"]
    );
}
