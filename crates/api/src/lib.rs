//! The wire between scalelab's services: the JSON error body every service answers with, the
//! request and response types of each service's API, the header names they share, and typed HTTP
//! clients so that one service calls another exactly as a separate process on another machine would.
//!
//! Start with [`error::ErrorBody`] (the one error shape), then [`wire`] (one module per service),
//! then [`client`] (what the gateway uses to reach `auth`, `cache` and `db`).

pub mod admin;
pub mod client;
pub mod error;
pub mod headers;
pub mod wire;

pub use error::ErrorBody;
