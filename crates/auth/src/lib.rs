//! `auth` is scalelab's identity service: it stores accounts (argon2id password hashes in SQLite or
//! PostgreSQL), checks logins, signs JWTs with an Ed25519 key shared by every auth instance and
//! publishes that key as a JWK set, so that gateways verify tokens without calling back. It is an
//! internal API: the gateway is its only caller.
//!
//! Start reading at [`router`] (the routes) and [`AppState::new`] (what happens at start: open the
//! [`CredentialStore`], load or make the signing key, create the bootstrap admin). Then
//! `keys.rs` (key file, key id, [`jwks_document`]), `password.rs` (bounded argon2id) and
//! `store.rs`. Verification is deliberately not here: the gateway does it.

mod config;
mod error;
mod keys;
mod password;
mod routes;
mod state;
mod store;
mod validate;

use std::future::Future;

use axum::Router;
use axum::routing::{get, post};
use common::Instance;
use common::stack::{self, Limits};
use tokio::net::TcpListener;

pub use config::Config;
pub use error::Error;
pub use keys::{HS256_KID, jwk_thumbprint, jwks_document};
pub use state::AppState;
pub use store::{CredentialStore, SqlStore, StoredAccount};

/// The auth API wrapped in the standard stack (`/health`, `/metrics`, request ids, limits):
///
/// - `POST /login`, `POST /register`, `POST /guest-token`: tokens and accounts;
/// - `GET /.well-known/jwks.json`: the public signing keys;
/// - `GET`/`DELETE /accounts/{username}`, `PUT /accounts/{username}/roles`: account administration;
/// - `GET /ready`: whether the credential store answers.
pub fn router(state: AppState) -> Router {
    let instance = state.instance().clone();
    let routes = Router::new()
        .route("/login", post(routes::login))
        .route("/register", post(routes::register))
        .route("/guest-token", post(routes::guest_token))
        .route("/.well-known/jwks.json", get(routes::jwks))
        .route(
            "/accounts/{username}",
            get(routes::get_account).delete(routes::delete_account),
        )
        .route(
            "/accounts/{username}/roles",
            axum::routing::put(routes::set_roles),
        )
        .route("/ready", get(routes::ready))
        .with_state(state);
    stack::wrap(routes, &instance, Limits::default())
}

/// Builds the state from `config` and serves the auth API on `listener` until `shutdown`
/// resolves, then drains in-flight requests.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    instance: Instance,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let state = AppState::new(config, instance).await?;
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, id = %state.instance().id, "auth listening");
    }
    common::serve(listener, router(state), shutdown).await?;
    Ok(())
}
