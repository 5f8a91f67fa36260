//! The contract: `GET /openapi.json` (the OpenAPI 3.1 document of this gateway's routes, built
//! by `openapi::document` from the handlers' annotations and the route table) and `GET /docs`
//! (Swagger UI over it, its files compiled into the binary: nothing is fetched from elsewhere at
//! build or view time).
//!
//! The document is built once, when the router is, from the same configuration: it describes the
//! routes this gateway has, the Casitas preset's only when their services are configured.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::Path;
use axum::extract::rejection::PathRejection;
use axum::http::{HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};

use api::ErrorBody;

use crate::config::Config;
use crate::policy::Endpoint;
use crate::{Error, openapi};

/// Where the page and its files are served.
pub(crate) const DOCS: &str = "/docs";

/// This module's routes, as the document describes them.
#[derive(utoipa::OpenApi)]
#[openapi(paths(openapi_json, docs, docs_file))]
pub(super) struct Doc;

pub(super) fn endpoints(config: &Config) -> Vec<Endpoint> {
    // Built now, once: a fault in the document shows when the gateway starts (and in its tests),
    // not at the first reader.
    let document = Bytes::from(openapi::document(config).to_string());
    let page = Arc::new(swagger_config());
    let index = Bytes::from(index_page(&page));
    vec![
        Endpoint::new(Method::GET, "/openapi.json", move || {
            let document = document.clone();
            async move { openapi_json(document) }
        }),
        Endpoint::new(Method::GET, DOCS, move || {
            let index = index.clone();
            async move { docs(index) }
        }),
        Endpoint::new(
            Method::GET,
            "/docs/{file}",
            move |file: Result<Path<String>, PathRejection>| {
                let page = page.clone();
                async move { docs_file(file, &page) }
            },
        ),
    ]
}

/// Swagger UI's settings: the document to show, and no validator badge (Swagger UI's default
/// sends the document to an online validator).
fn swagger_config() -> utoipa_swagger_ui::Config<'static> {
    utoipa_swagger_ui::Config::new(["/openapi.json"])
        .validator_url("none")
        .try_it_out_enabled(true)
        .persist_authorization(false)
}

/// Swagger UI's `index.html` with its relative links resolved under `/docs/` (a `<base>`), so that
/// the page works at `/docs` itself, where `./x.css` would resolve to `/x.css`.
fn index_page(config: &Arc<utoipa_swagger_ui::Config<'static>>) -> String {
    let html = match utoipa_swagger_ui::serve("index.html", config.clone()) {
        Ok(Some(file)) => String::from_utf8_lossy(&file.bytes).into_owned(),
        // The files are compiled in: their absence is a build fault, shown as a page saying so.
        _ => "<!doctype html><title>scalelab API</title><p>Swagger UI is missing from this build; \
              the document is at <a href=\"/openapi.json\">/openapi.json</a>."
            .to_string(),
    };
    html.replacen("<head>", "<head>\n    <base href=\"/docs/\">", 1)
}

/// `GET /openapi.json`.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "contract",
    operation_id = "openapi_json",
    responses(
        (status = 200, description = "This document: the OpenAPI 3.1 description of every route \
            this gateway has.", content_type = "application/json", body = serde_json::Value,
            example = json!({"openapi": "3.1.0", "info": {"title": "scalelab gateway", "version": "0.0.0"}, "paths": {}})),
    )
)]
fn openapi_json(document: Bytes) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        document,
    )
        .into_response()
}

/// `GET /docs`: Swagger UI over `/openapi.json`.
#[utoipa::path(
    get,
    path = "/docs",
    tag = "contract",
    operation_id = "docs",
    responses(
        (status = 200, description = "The documentation page (Swagger UI); its scripts and styles \
            are served by this gateway under `/docs/`.", content_type = "text/html", body = String),
    )
)]
fn docs(index: Bytes) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        )],
        index,
    )
        .into_response()
}

/// `GET /docs/{file}`: one of the page's files (`swagger-ui.css`, `swagger-ui-bundle.js`, ...).
#[utoipa::path(
    get,
    path = "/docs/{file}",
    tag = "contract",
    operation_id = "docs_file",
    params(("file" = String, Path, description = "A file of the page, as `/docs` links it.",
        example = "swagger-ui.css")),
    responses(
        (status = 200, description = "The file.", content(
            (String = "text/css"),
            (String = "text/javascript"),
            (String = "image/png"),
            (String = "text/html"),
            (serde_json::Value = "application/json"),
        )),
        (status = 404, description = "No such file (`not_found`).", body = ErrorBody),
    )
)]
fn docs_file(
    file: Result<Path<String>, PathRejection>,
    config: &Arc<utoipa_swagger_ui::Config<'static>>,
) -> Response {
    let Ok(Path(file)) = file else {
        return Error::NotFound("no such file of the documentation page".into()).into_response();
    };
    if file == "index.html" {
        return docs(Bytes::from(index_page(config)));
    }
    // The page's kinds of file, each with the type the document promises; nothing else of the
    // bundle (its README, its package.json) is served.
    let kind = match file.rsplit_once('.').map(|(_, ext)| ext) {
        Some("css") => "text/css",
        Some("js") => "text/javascript",
        Some("png") => "image/png",
        Some("html") => "text/html; charset=utf-8",
        Some("map") => "application/json",
        _ => "",
    };
    let found = match utoipa_swagger_ui::serve(&file, config.clone()) {
        Ok(found) => found.filter(|_| !kind.is_empty()),
        Err(e) => {
            return Error::Internal(format!("serving {file:?} of Swagger UI: {e}")).into_response();
        }
    };
    match found {
        Some(found) => (
            [(header::CONTENT_TYPE, HeaderValue::from_static(kind))],
            found.bytes.into_owned(),
        )
            .into_response(),
        None => {
            Error::NotFound(format!("the documentation page has no file {file:?}")).into_response()
        }
    }
}
