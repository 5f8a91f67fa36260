//! [`PoolTransport`]: `api`'s typed clients over a balanced [`Pool`], so that a caller with several
//! instances of a peer (the gateway's `auth` and `service` instances) uses the same clients as a
//! caller with one.

use std::sync::Arc;
use std::time::Duration;

use api::client::{BoxFuture, ClientError, Inbound, Outbound, Transport};
use axum::body::Body;
use http::{Request, header};
use http_body_util::{BodyExt, Limited};

use crate::Pool;

/// Largest answer read from a peer, in bytes.
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// A [`Transport`] that sends through a [`Pool`]: selection, passive and active health, retry of
/// requests that never left. The whole exchange, body included, is bounded by `timeout`.
#[derive(Debug, Clone)]
pub struct PoolTransport {
    service: &'static str,
    pool: Arc<Pool>,
    timeout: Duration,
}

impl PoolTransport {
    /// Calls to `service` through `pool`, each bounded by `timeout` (headers and body).
    pub fn new(service: &'static str, pool: Arc<Pool>, timeout: Duration) -> Self {
        Self {
            service,
            pool,
            timeout,
        }
    }

    /// The pool (for its health checks and stats).
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    async fn exchange(&self, req: Outbound<'_>) -> Result<Inbound, ClientError> {
        let mut builder = Request::builder()
            .method(req.method)
            .uri(req.path)
            .header(api::headers::REQUEST_ID, req.request_id)
            .header(header::ACCEPT, "application/json");
        if let Some(token) = req.service_token {
            builder = builder.header(api::headers::SERVICE_TOKEN, token);
        }
        let body = match req.body {
            Some(bytes) => {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
                Body::from(bytes)
            }
            None => Body::empty(),
        };
        let request = builder.body(body).map_err(|e| ClientError::Decode {
            service: self.service,
            detail: format!("building a request to {}: {e}", req.path),
        })?;
        let forwarded = self
            .pool
            .send(request)
            .await
            .map_err(|e| ClientError::Pool {
                service: self.service,
                status: e.status(),
                code: e.code(),
                message: e.public_message(),
                detail: e.to_string(),
            })?;
        let status = forwarded.response.status();
        let body = Limited::new(forwarded.response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| ClientError::Decode {
                service: self.service,
                detail: format!("reading the answer: {e}"),
            })?
            .to_bytes();
        Ok(Inbound { status, body })
    }
}

impl Transport for PoolTransport {
    fn service(&self) -> &'static str {
        self.service
    }

    fn send<'a>(&'a self, req: Outbound<'a>) -> BoxFuture<'a, Result<Inbound, ClientError>> {
        Box::pin(async move {
            match tokio::time::timeout(self.timeout, self.exchange(req)).await {
                Ok(answer) => answer,
                Err(_) => Err(ClientError::Timeout {
                    service: self.service,
                }),
            }
        })
    }
}
