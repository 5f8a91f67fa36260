//! The internal HTTP API (the gateway is the caller).
//!
//! | route | what |
//! |---|---|
//! | `POST /users` | create (`201`; `409 username_taken` / `id_taken`) |
//! | `GET /users?after=ID&limit=N[&consistency=primary]` | one page across every shard, ids ascending |
//! | `GET /users/{id}[?consistency=primary]` | one profile (replica unless `primary`; `X-Read-Copy` says which answered) |
//! | `GET /users/by-username/{username}` | one profile, through the username index |
//! | `PATCH /users/{id}` | change email, names, role (primary) |
//! | `DELETE /users/{id}` | remove the profile and its username |
//! | `GET /shards` | count and health of every shard and replica |
//! | `POST /rebalance {"to": N}`, `GET /rebalance` | move to N shards online (`rebalance.rs`); progress |
//! | `GET /ready` | `200` when every shard's primary answers |

use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use common::{ApiError, Json};
use serde::Deserialize;
use serde_json::{Value, json};

use api::wire::users::{
    CreateProfile, Profile, ProfilePage, ShardsReport, UpdateProfile, check_id, check_username,
};

use crate::sharded::Consistency;
use crate::store::Changes;
use crate::{AppState, Error};
use common::time::now_rfc3339;

pub(crate) fn routes(state: AppState) -> Router {
    Router::new()
        .route("/users", post(create).get(list))
        .route("/users/by-username/{username}", get(get_by_username))
        .route("/users/{id}", get(get_one).patch(update).delete(remove))
        .route("/shards", get(shards))
        .route("/rebalance", get(rebalance_status).post(rebalance_start))
        .route("/ready", get(ready))
        .with_state(state)
}

/// `?consistency=primary|replica`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReadQuery {
    consistency: Option<String>,
}

/// `GET /users` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    after: Option<String>,
    limit: Option<u32>,
    consistency: Option<String>,
}

fn consistency(s: Option<&str>) -> Result<Consistency, Error> {
    match s {
        None | Some("replica") => Ok(Consistency::Replica),
        Some("primary") => Ok(Consistency::Primary),
        Some(_) => Err(Error::Invalid {
            code: "invalid_query",
            message: "consistency must be primary or replica".into(),
        }),
    }
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, Error> {
    q.map(|Query(q)| q).map_err(|e| Error::Invalid {
        code: "invalid_query",
        message: e.body_text(),
    })
}

fn path_id(p: Result<Path<String>, PathRejection>) -> Result<String, Error> {
    let id = p
        .map(|Path(id)| id)
        .map_err(|_| Error::NotFound("no user has this id".into()))?;
    check_id(&id)?;
    Ok(id)
}

/// `POST /users`.
async fn create(
    State(state): State<AppState>,
    body: Result<Json<CreateProfile>, ApiError>,
) -> Result<(StatusCode, Json<Profile>), axum::response::Response> {
    use axum::response::IntoResponse;
    let Json(req) = body.map_err(IntoResponse::into_response)?;
    let result = async {
        req.validate(&state.config.roles)?;
        let now = now_rfc3339();
        let profile = Profile {
            id: req.id,
            username: req.username,
            email: req.email,
            first_name: req.first_name,
            last_name: req.last_name,
            role: req.role.unwrap_or_else(|| "user".into()),
            created_at: now.clone(),
            updated_at: now,
        };
        state.shards.create(&profile).await
    }
    .await;
    let outcome = match &result {
        Ok(_) => "created",
        Err(Error::UsernameTaken | Error::IdTaken) => "taken",
        Err(Error::Invalid { .. }) => "invalid",
        Err(_) => "error",
    };
    metrics::counter!("scalelab_users_created_total", "outcome" => outcome).increment(1);
    match result {
        Ok(p) => {
            tracing::info!(id = %p.id, shard = state.shards.index_of(&p.id), "profile created");
            Ok((StatusCode::CREATED, Json(p)))
        }
        Err(e) => Err(e.into_response()),
    }
}

/// `GET /users/{id}`.
async fn get_one(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<ReadQuery>, QueryRejection>,
) -> Result<([(&'static str, &'static str); 1], Json<Profile>), Error> {
    let id = path_id(id)?;
    let q = query(q)?;
    let c = consistency(q.consistency.as_deref())?;
    let (profile, copy) = state.shards.get_from(&id, c).await?;
    Ok(([(READ_COPY, copy)], Json(profile)))
}

/// Which copy of the shard answered a read: `primary` or `replica`.
const READ_COPY: &str = "x-read-copy";

/// `GET /users/by-username/{username}`.
async fn get_by_username(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
    q: Result<Query<ReadQuery>, QueryRejection>,
) -> Result<Json<Profile>, Error> {
    let name = name
        .map(|Path(n)| n)
        .map_err(|_| Error::NotFound("no user has this name".into()))?;
    check_username(&name).map_err(|_| Error::NotFound(format!("no user is named {name:?}")))?;
    let c = consistency(query(q)?.consistency.as_deref())?;
    state.shards.get_by_username(&name, c).await.map(Json)
}

/// `PATCH /users/{id}`.
async fn update(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<UpdateProfile>, ApiError>,
) -> Result<Json<Profile>, axum::response::Response> {
    use axum::response::IntoResponse;
    let Json(req) = body.map_err(IntoResponse::into_response)?;
    let result = async {
        let id = path_id(id)?;
        req.validate(&state.config.roles)?;
        let changes = Changes {
            email: req.email,
            first_name: req.first_name,
            last_name: req.last_name,
            role: req.role,
            updated_at: now_rfc3339(),
        };
        state.shards.update(&id, &changes).await
    }
    .await;
    result.map(Json).map_err(IntoResponse::into_response)
}

/// `DELETE /users/{id}`: `200 {"deleted": true, ...}`.
async fn remove(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, Error> {
    let id = path_id(id)?;
    let p = state.shards.delete(&id).await?;
    tracing::info!(id = %p.id, "profile deleted");
    Ok(Json(
        json!({"deleted": true, "id": p.id, "username": p.username}),
    ))
}

/// `GET /users?after=&limit=`.
async fn list(
    State(state): State<AppState>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<ProfilePage>, Error> {
    let q = query(q)?;
    let max = state.config.max_page_size;
    let limit = q.limit.unwrap_or(max.min(50));
    if limit == 0 || limit > max {
        return Err(Error::Invalid {
            code: "invalid_query",
            message: format!("limit must be 1 to {max}"),
        });
    }
    let c = consistency(q.consistency.as_deref())?;
    let (users, next_cursor) = state.shards.list(q.after.as_deref(), limit, c).await?;
    Ok(Json(ProfilePage { users, next_cursor }))
}

/// `GET /shards`.
async fn shards(State(state): State<AppState>) -> Json<ShardsReport> {
    Json(ShardsReport {
        shard_count: state.shards.count(),
        shards: state.shards.status().await,
    })
}

/// `POST /rebalance` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RebalanceRequest {
    to: u32,
}

/// `POST /rebalance {"to": N}`: starts (or joins) the move; `202` with the progress.
async fn rebalance_start(
    State(state): State<AppState>,
    body: Result<Json<RebalanceRequest>, ApiError>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    match crate::rebalance::start(&state.shards, &state.config, req.to).await {
        Ok(status) => (StatusCode::ACCEPTED, Json(status)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /rebalance`: the layout and the progress of a move.
async fn rebalance_status(State(state): State<AppState>) -> Json<crate::rebalance::Status> {
    Json(crate::rebalance::status(&state.shards))
}

/// `GET /ready`: `200` when every primary answers, `503 not_ready` naming the others.
async fn ready(State(state): State<AppState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let down: Vec<String> = state
        .shards
        .status()
        .await
        .into_iter()
        .filter(|s| !s.healthy)
        .map(|s| s.shard.to_string())
        .collect();
    if down.is_empty() {
        Json(json!({"status": "ready"})).into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("shards down: {}", down.join(", ")),
        )
        .into_response()
    }
}
