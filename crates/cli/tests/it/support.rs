//! What several modules share: sending a request through the balancer and reading the answer as
//! JSON, and logging in.

use e2e::Running;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

/// Reads an answer: its status, its headers and its body as JSON (`{"raw": text}` when the body is
/// not JSON, so that an assertion on it shows what came back).
pub(crate) async fn read(resp: reqwest::Response) -> (StatusCode, HeaderMap, Value) {
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text }));
    (status, headers, body)
}

/// Sends `req` and [`read`]s the answer, with the status as a number.
pub(crate) async fn send(req: reqwest::RequestBuilder) -> (u16, HeaderMap, Value) {
    let (status, headers, body) = read(req.send().await.expect("request")).await;
    (status.as_u16(), headers, body)
}

/// `POST /login` through the balancer.
pub(crate) async fn login(sys: &Running, user: &str, password: &str) -> (u16, HeaderMap, Value) {
    send(
        sys.client()
            .post(format!("{}/login", sys.lb_url()))
            .json(&json!({"username": user, "password": password})),
    )
    .await
}
