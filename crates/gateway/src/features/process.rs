//! `GET /process`: one service instance, chosen by the balanced pool, does the work.

use axum::extract::State;
use axum::http::Method;
use common::{Json, RequestId};

use api::wire::gateway::ProcessAnswer;

use crate::policy::Endpoint;
use crate::{AppState, Error};

pub(super) fn endpoints() -> Vec<Endpoint> {
    vec![Endpoint::new(Method::GET, "/process", process)]
}

/// `GET /process`: the service's answer plus `gateway_id`.
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
