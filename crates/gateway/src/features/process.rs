//! `GET /process`: one service instance, chosen by the balanced pool, does the work.

use axum::extract::State;
use axum::http::Method;
use common::{Json, RequestId};

use api::ErrorBody;
use api::wire::gateway::ProcessAnswer;

use crate::policy::Endpoint;
use crate::{AppState, Error};

/// This module's routes, as the document describes them.
#[derive(utoipa::OpenApi)]
#[openapi(paths(process))]
pub(super) struct Doc;

pub(super) fn endpoints() -> Vec<Endpoint> {
    vec![Endpoint::new(Method::GET, "/process", process)]
}

/// `GET /process`: the service's answer plus `gateway_id`.
#[utoipa::path(
    get,
    path = "/process",
    tag = "services",
    operation_id = "process",
    summary = "One service instance's work, through the balanced pool",
    responses(
        (status = 200, description = "What the service instance answered, and the gateway that passed it on.",
            body = ProcessAnswer,
            example = json!({"message": "Business logic executed", "service_id": "service-2", "processing_ms": 12.5, "gateway_id": "gateway-1"})),
        (status = 502, description = "No service instance could be reached (`backend_unreachable`) or it failed (`service_error`).", body = ErrorBody),
        (status = 503, description = "No service instance is healthy (`no_healthy_backend`) or one is overloaded (`service_unavailable`).", body = ErrorBody),
    )
)]
async fn process(
    State(state): State<AppState>,
    RequestId(rid): RequestId,
) -> Result<Json<ProcessAnswer>, Error> {
    let service = state.inner.services.process(&rid).await?;
    Ok(Json(ProcessAnswer {
        service,
        gateway_id: state.inner.instance.id.to_string(),
    }))
}
