//! The HTTP API of each domain: the paths and bodies `api::client::RentalClient` sends. A process
//! answers only its own domain's routes (and `GET /ready`); any other path is the standard stack's
//! JSON `404`.
//!
//! Every request is checked first (`validation.rs`), so that a refused one costs nothing; only
//! then does it wait the simulated latency and touch the store.

use std::time::Duration;

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::routing::get;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use api::wire::rental::{
    Documents, DocumentsQuery, NewTransaction, NewUnit, Transaction, Transactions,
    TransactionsQuery, Unit, UnitChange, Units, UnitsQuery,
};

use crate::{AppState, Domain, Error, validation};

pub(crate) fn routes(state: AppState) -> Router {
    let router = Router::new().route("/ready", get(ready));
    let router = match state.domain {
        Domain::Units => router
            .route("/units", get(list_units).post(create_unit))
            .route("/units/{id}", get(get_unit).patch(update_unit)),
        Domain::Finances => router.route(
            "/transactions",
            get(list_transactions).post(create_transaction),
        ),
        Domain::Legal => router.route("/documents", get(list_documents)),
    };
    router.with_state(state)
}

/// A route's filter from the query string; an unknown parameter or a value of the wrong type
/// (`?unit=abc`) is `400 invalid_query` in the JSON shape instead of axum's plain text.
struct Filter<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Filter<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(q)) => Ok(Filter(q)),
            Err(rejection) => Err(Error::InvalidQuery(rejection.body_text())),
        }
    }
}

/// A unit id from the path: a positive integer (`400 invalid_id` otherwise).
struct UnitId(i64);

impl<S: Send + Sync> FromRequestParts<S> for UnitId {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let raw = Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(raw)| raw)
            .unwrap_or_default();
        match raw.parse::<i64>() {
            Ok(id) if id > 0 => Ok(UnitId(id)),
            _ => Err(Error::InvalidId(format!(
                "a unit id is a positive integer; got {raw:?}"
            ))),
        }
    }
}

impl AppState {
    /// Waits the simulated latency, runs one query and counts it by domain, operation and outcome.
    async fn query<T>(
        &self,
        op: &'static str,
        run: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        if self.config.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.config.latency_ms)).await;
        }
        let result = run.await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(Error::NotFound(_)) => "not_found",
            Err(Error::Unavailable(_)) => "unavailable",
            Err(_) => "error",
        };
        metrics::counter!(
            "scalelab_rental_queries_total",
            "domain" => self.domain.name(),
            "op" => op,
            "outcome" => outcome,
            "id" => self.instance.id.to_string()
        )
        .increment(1);
        result
    }
}

fn no_unit(id: i64) -> Error {
    Error::NotFound(format!("no unit has the id {id}"))
}

/// `GET /ready`: `200` when the database answers a trivial query, `503 store_unavailable` when not.
async fn ready(State(state): State<AppState>) -> Result<Json<Value>, Error> {
    state.store.ping().await.map_err(|e| match e {
        // Any failure of the probe means "do not send me traffic", whatever its kind.
        Error::Database(e) => Error::Unavailable(e.to_string()),
        other => other,
    })?;
    Ok(Json(json!({"status": "ready"})))
}

/// `GET /units[?status=]`: the units in id order.
async fn list_units(
    State(state): State<AppState>,
    Filter(q): Filter<UnitsQuery>,
) -> Result<Json<Units>, Error> {
    if let Some(status) = &q.status {
        validation::unit_status(status)?;
    }
    let units = state
        .query("list_units", state.store.units(q.status.as_deref()))
        .await?;
    Ok(Json(Units { units }))
}

/// `GET /units/{id}`: the unit, or `404 not_found`.
async fn get_unit(State(state): State<AppState>, UnitId(id): UnitId) -> Result<Json<Unit>, Error> {
    let unit = state.query("get_unit", state.store.unit(id)).await?;
    unit.map(Json).ok_or_else(|| no_unit(id))
}

/// `POST /units`: `201` and the unit as stored.
async fn create_unit(
    State(state): State<AppState>,
    common::Json(body): common::Json<NewUnit>,
) -> Result<(StatusCode, Json<Unit>), Error> {
    validation::new_unit(&body)?;
    let unit = state
        .query("create_unit", state.store.insert_unit(&body))
        .await?;
    Ok((StatusCode::CREATED, Json(unit)))
}

/// `PATCH /units/{id}`: changes the given fields; the unit after, or `404 not_found`.
async fn update_unit(
    State(state): State<AppState>,
    UnitId(id): UnitId,
    common::Json(body): common::Json<UnitChange>,
) -> Result<Json<Unit>, Error> {
    validation::unit_change(&body)?;
    let unit = state
        .query("update_unit", state.store.update_unit(id, &body))
        .await?;
    unit.map(Json).ok_or_else(|| no_unit(id))
}

/// `GET /transactions[?unit=&month=]`: the transactions in id order.
async fn list_transactions(
    State(state): State<AppState>,
    Filter(q): Filter<TransactionsQuery>,
) -> Result<Json<Transactions>, Error> {
    q.unit.map(validation::unit_id).transpose()?;
    q.month.as_deref().map(validation::month).transpose()?;
    let transactions = state
        .query(
            "list_transactions",
            state.store.transactions(q.unit, q.month.as_deref()),
        )
        .await?;
    Ok(Json(Transactions { transactions }))
}

/// `POST /transactions`: `201` and the transaction as recorded.
///
/// The unit is not looked up: it lives in the units service's database, which this service
/// neither shares nor calls (the domains are separate services on separate databases). A
/// transaction of a unit that does not exist is recorded like any other; checking it is the
/// caller's business, before it posts.
async fn create_transaction(
    State(state): State<AppState>,
    common::Json(body): common::Json<NewTransaction>,
) -> Result<(StatusCode, Json<Transaction>), Error> {
    validation::new_transaction(&body)?;
    let transaction = state
        .query("create_transaction", state.store.insert_transaction(&body))
        .await?;
    Ok((StatusCode::CREATED, Json(transaction)))
}

/// `GET /documents[?status=&unit=]`: the documents in id order.
async fn list_documents(
    State(state): State<AppState>,
    Filter(q): Filter<DocumentsQuery>,
) -> Result<Json<Documents>, Error> {
    q.status
        .as_deref()
        .map(validation::document_status)
        .transpose()?;
    q.unit.map(validation::unit_id).transpose()?;
    let documents = state
        .query(
            "list_documents",
            state.store.documents(q.status.as_deref(), q.unit),
        )
        .await?;
    Ok(Json(Documents { documents }))
}
