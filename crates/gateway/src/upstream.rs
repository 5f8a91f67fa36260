//! Calls through a [`balance::Pool`]: JSON in, JSON out, with the request id passed on.
//!
//! `auth` and `service` are reached through pools (selection, passive and active health, retry of
//! requests that never left); the whole exchange, body included, is bounded by a timeout.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use serde::Serialize;
use serde::de::DeserializeOwned;

use api::ErrorBody;
use balance::Pool;

use crate::Error;
use crate::error::from_status;

/// Largest upstream answer read, in bytes.
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// A pool and how long one exchange through it may take.
#[derive(Debug, Clone)]
pub(crate) struct Upstream {
    /// The role behind the pool (`auth`, `service`), for errors and logs.
    pub(crate) service: &'static str,
    pub(crate) pool: Arc<Pool>,
    pub(crate) timeout: Duration,
}

impl Upstream {
    /// Sends `method path` with an optional JSON body; answers the status and the raw body of any
    /// answer the upstream gave (errors included).
    pub(crate) async fn exchange<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        rid: &str,
    ) -> Result<(StatusCode, Bytes), Error> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(api::headers::REQUEST_ID, rid)
            .header(header::ACCEPT, "application/json");
        let body = match body {
            Some(b) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                let bytes = serde_json::to_vec(b)
                    .map_err(|e| Error::Internal(format!("encoding a request body: {e}")))?;
                Body::from(bytes)
            }
            None => Body::empty(),
        };
        let req = req
            .body(body)
            .map_err(|e| Error::Internal(format!("building a request to {path}: {e}")))?;
        let exchange = async {
            let forwarded = self.pool.send(req).await?;
            let status = forwarded.response.status();
            let bytes = Limited::new(forwarded.response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| Error::UpstreamFailed {
                    service: self.service,
                    detail: format!("reading the answer: {e}"),
                })?
                .to_bytes();
            Ok::<_, Error>((status, bytes))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(Error::UpstreamTimeout {
                service: self.service,
            }),
        }
    }

    /// Like [`Upstream::exchange`], but a 2xx answer is decoded as `T` and any other answer becomes
    /// the matching [`Error`] (4xx passed on as is).
    pub(crate) async fn call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        rid: &str,
    ) -> Result<(StatusCode, T), Error> {
        let (status, bytes) = self.exchange(method, path, body, rid).await?;
        if !status.is_success() {
            return Err(self.error(status, &bytes));
        }
        let value = serde_json::from_slice(&bytes).map_err(|e| Error::UpstreamFailed {
            service: self.service,
            detail: format!("unreadable answer to {path}: {e}"),
        })?;
        Ok((status, value))
    }

    /// The error for a non-2xx answer.
    pub(crate) fn error(&self, status: StatusCode, bytes: &[u8]) -> Error {
        let body = serde_json::from_slice::<ErrorBody>(bytes).unwrap_or_else(|_| {
            ErrorBody::new(
                "upstream_error",
                format!("{} answered {}", self.service, status),
            )
        });
        from_status(self.service, status, body)
    }
}
