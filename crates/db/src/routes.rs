//! The db's HTTP API. Every read and write first waits the simulated latency, then may fail on
//! purpose, and only then touches the store, so that an injected failure never leaves a write
//! half done.

use std::time::Duration;

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::routing::get;
use axum::{Json, Router};
use rand::Rng;
use serde_json::{Value, json};

use api::wire::db::{PutRecord, Record};

use crate::store::MY_DATA;
use crate::{AppState, Error};

/// Longest key accepted, in characters (as the gateway's public contract states it).
const MAX_KEY_CHARS: usize = 256;

pub(crate) fn routes(state: AppState) -> Router {
    Router::new()
        .route("/ready", get(ready))
        .route("/db", get(lab_answer))
        .route("/db/{key}", get(get_record).put(put_record))
        .with_state(state)
}

/// A key from the path, checked: 1 to [`MAX_KEY_CHARS`] characters (after percent-decoding).
struct Key(String);

impl<S: Send + Sync> FromRequestParts<S> for Key {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        // axum's own rejection is plain text; the only way it fails here is a segment that does
        // not decode to UTF-8, which is a bad key as far as the client is concerned.
        let Path(key) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| Error::InvalidKey("the key must be valid UTF-8".into()))?;
        let chars = key.chars().count();
        if chars == 0 || chars > MAX_KEY_CHARS {
            return Err(Error::InvalidKey(format!(
                "a key must be 1 to {MAX_KEY_CHARS} characters long; this one has {chars}"
            )));
        }
        Ok(Key(key))
    }
}

impl AppState {
    /// Waits the configured latency plus jitter, then fails on purpose at the configured rate.
    async fn simulate(&self) -> Result<(), Error> {
        // The thread-local generator is not `Send`: draw everything before the first `.await`.
        let (delay_ms, fail) = {
            let mut rng = rand::thread_rng();
            let jitter = rng.gen_range(0..=self.config.jitter_ms);
            let fail = rng.r#gen::<f64>() < self.config.failure_rate;
            (self.config.latency_ms.saturating_add(jitter), fail)
        };
        if delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        }
        if fail {
            Err(Error::InjectedFailure)
        } else {
            Ok(())
        }
    }

    /// Runs one query through [`AppState::simulate`] and counts it by operation and outcome.
    async fn query<T, F>(&self, op: &'static str, run: F) -> Result<T, Error>
    where
        F: Future<Output = Result<T, Error>>,
    {
        let result = match self.simulate().await {
            Ok(()) => run.await,
            Err(e) => Err(e),
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(Error::NotFound(_)) => "not_found",
            Err(Error::InjectedFailure) => "injected_failure",
            Err(_) => "error",
        };
        metrics::counter!(
            "scalelab_db_queries_total",
            "op" => op,
            "outcome" => outcome,
            "id" => self.instance.id.to_string()
        )
        .increment(1);
        result
    }

    async fn get(&self, key: &str) -> Result<Record, Error> {
        if let Some(record) = self.store.get(key).await? {
            return Ok(record);
        }
        match self.config.unknown_keys {
            crate::UnknownKeys::NotFound => Err(Error::NotFound(key.to_string())),
            crate::UnknownKeys::Generate => {
                // Insert if still absent, then read what is stored: two instances generating the
                // same key at once store one record, and a write that landed meanwhile wins.
                let value = crate::generated_value(key);
                self.store
                    .insert_missing(&[(key.to_string(), value)])
                    .await?;
                self.store
                    .get(key)
                    .await?
                    .ok_or_else(|| Error::NotFound(key.to_string()))
            }
        }
    }
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

/// `GET /db`: the lab's answer, the `my_data` record fetched fresh from the database.
async fn lab_answer(State(state): State<AppState>) -> Result<Json<Value>, Error> {
    let record = state.query("get", state.get(MY_DATA)).await?;
    Ok(Json(json!({
        "message": "Fetched fresh data from DB",
        "data": record.value,
        "db_id": &*state.instance.id,
    })))
}

/// `GET /db/{key}`: the record, or `404 not_found`.
async fn get_record(State(state): State<AppState>, Key(key): Key) -> Result<Json<Record>, Error> {
    state.query("get", state.get(&key)).await.map(Json)
}

/// `PUT /db/{key}`: writes the value (insert or replace) and answers the record as stored.
async fn put_record(
    State(state): State<AppState>,
    Key(key): Key,
    common::Json(body): common::Json<PutRecord>,
) -> Result<Json<Record>, Error> {
    let size = body.value.to_string().len();
    let max = state.config.max_value_bytes;
    if size > max {
        return Err(Error::ValueTooLarge { size, max });
    }
    state
        .query("put", state.store.put(&key, &body.value))
        .await
        .map(Json)
}
