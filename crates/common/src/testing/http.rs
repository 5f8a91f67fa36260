//! Calling a router in a test without a socket: build a request ([`get`], [`post_json`], ...), send
//! it with tower's `oneshot` ([`call`]) and read the status, headers and JSON body of the answer.

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

/// One answer of a router, body read to the end.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: StatusCode,
    /// The response headers.
    pub headers: HeaderMap,
    /// The body parsed as JSON; `Null` when the body is empty or is not JSON (see [`call`]).
    pub json: Value,
    /// The body as text, for answers that are not JSON (`/metrics`) and for failure messages.
    pub text: String,
}

impl Response {
    /// The value of header `name`.
    ///
    /// # Panics
    /// If the answer has no such header or its value is not text.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }

    /// Asserts the JSON error shape (`{"error": code, "message": sentence}`) and returns the code.
    pub fn error(&self) -> &str {
        assert!(
            self.json["message"].is_string(),
            "no message ({}): {}",
            self.status,
            self.text
        );
        self.json["error"]
            .as_str()
            .unwrap_or_else(|| panic!("not an error ({}): {}", self.status, self.text))
    }
}

/// Sends `request` to `router` with tower's `oneshot` (no socket) and reads the whole answer.
///
/// # Panics
/// If the answer says it is JSON (`Content-Type: application/json`) and its body does not parse:
/// every scalelab answer but `/metrics` is JSON, and a test should hear when one is not.
pub async fn call(router: &Router, request: Request<Body>) -> Response {
    let response = router
        .clone()
        .oneshot(request)
        .await
        .expect("a router is infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("the body reads to its end")
        .to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let says_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&bytes) {
            Ok(json) => json,
            Err(e) if says_json => panic!("a JSON answer that is not JSON ({status}, {e}): {text}"),
            Err(_) => Value::Null,
        }
    };
    Response {
        status,
        headers,
        json,
        text,
    }
}

/// A request with `body` as its JSON text (sent as is, so that a test can send malformed JSON) or
/// no body.
pub fn request(method: Method, uri: &str, body: Option<&str>) -> Request<Body> {
    let builder = Request::builder().method(method).uri(uri);
    match body {
        Some(body) => builder
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_owned())),
        None => builder.body(Body::empty()),
    }
    .expect("a valid request")
}

/// `GET uri`.
pub fn get(uri: &str) -> Request<Body> {
    request(Method::GET, uri, None)
}

/// `DELETE uri`.
pub fn delete(uri: &str) -> Request<Body> {
    request(Method::DELETE, uri, None)
}

/// `POST uri` with `body` as JSON.
pub fn post_json(uri: &str, body: &Value) -> Request<Body> {
    request(Method::POST, uri, Some(&body.to_string()))
}

/// `PUT uri` with `body` as JSON.
pub fn put_json(uri: &str, body: &Value) -> Request<Body> {
    request(Method::PUT, uri, Some(&body.to_string()))
}

/// `request` with `Authorization: Bearer <token>`.
pub fn with_bearer(mut request: Request<Body>, token: &str) -> Request<Body> {
    let value = format!("Bearer {token}")
        .parse()
        .expect("a token is a valid header value");
    request.headers_mut().insert(header::AUTHORIZATION, value);
    request
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::{get as get_route, post as post_route};
    use serde_json::json;

    fn app() -> Router {
        Router::new()
            .route("/text", get_route(|| async { "plain" }))
            .route(
                "/echo",
                post_route(|headers: HeaderMap, body: String| async move {
                    let auth = headers
                        .get(header::AUTHORIZATION)
                        .map(|v| v.to_str().unwrap_or("").to_owned());
                    axum::Json(json!({"body": body, "authorization": auth}))
                }),
            )
            .route(
                "/broken",
                get_route(|| async { ([(header::CONTENT_TYPE, "application/json")], "{oops") }),
            )
    }

    #[tokio::test]
    async fn call_reads_status_headers_and_json() {
        let request = with_bearer(post_json("/echo", &json!({"a": 1})), "t0k");
        let answer = call(&app(), request).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.header("content-type"), "application/json");
        assert_eq!(answer.json["authorization"], "Bearer t0k");
        assert_eq!(answer.json["body"], r#"{"a":1}"#);
    }

    #[tokio::test]
    async fn text_answers_have_no_json_and_empty_ones_are_null() {
        let text = call(&app(), get("/text")).await;
        assert_eq!(
            (text.json.clone(), text.text.as_str()),
            (Value::Null, "plain")
        );
        let missing = call(&app(), delete("/nowhere")).await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        assert_eq!(missing.json, Value::Null);
    }

    #[tokio::test]
    #[should_panic(expected = "a JSON answer that is not JSON")]
    async fn a_json_answer_that_does_not_parse_fails_the_test() {
        call(&app(), get("/broken")).await;
    }
}
