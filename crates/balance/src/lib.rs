//! Backend pools, shared by the load balancer (`lb`, over the gateways) and the gateway (over the
//! `service` instances): which backend takes the next request, which backends are healthy, and how a
//! request reaches one over a pooled keep-alive connection; and the fuses that keep a sick peer from
//! taking its callers down with it.
//!
//! Start with [`Pool`]: it holds the [`Backend`]s, asks its [`Selection`] strategy for one,
//! sends the request through that backend's connection pool ([`conn`]) and retries on the next
//! healthy backend when the request never left, or when an idempotent request without a body failed
//! on a broken connection. [`health`] runs the active checks; passive checks happen in [`Pool::send`]
//! (a connect error or timeout marks the backend down at once). [`PoolTransport`] puts `api`'s typed
//! clients over a pool. [`membership`] changes a pool's backends while it runs (from the
//! supervisor's control API, or DNS names re-resolved); a draining backend gets no new request and
//! its connections close after their current response.
//!
//! The fuses (docs/resilience.md): [`outlier`] ejects a backend that fails in a row or is far
//! slower than its peers, for a growing time; [`budget`] bounds the retries a pool adds to its
//! load; [`breaker`] is a circuit breaker per peer, and [`Fused`] puts one in front of any
//! `api` transport; the `peak_ewma` [`Strategy`] weighs backends by their latency. Each keeps its
//! state in atomics (a lock only to change state) and takes the time as a parameter
//! ([`clock`]), so that its state machine is tested with time driven by hand.
//!
//! Invariants:
//! - a backend's `in_flight` counts requests from selection until their response body is finished
//!   or dropped (that is what least-connections compares);
//! - a request whose body may have been partly sent is never retried.

pub mod backend;
pub mod breaker;
pub mod budget;
pub mod clock;
pub mod conn;
pub mod health;
pub mod membership;
pub mod outlier;
pub mod pool;
pub mod profile;
pub mod selection;
pub mod transport;
pub mod window;

pub use backend::{Backend, BackendStats};
pub use breaker::{Breaker, BreakerConfig, BreakerStats, Fused};
pub use budget::{RetryBudget, RetryBudgetConfig};
pub use health::HealthConfig;
pub use outlier::OutlierConfig;
pub use pool::{Member, MembershipChange, Pool, PoolConfig, PoolError};
pub use profile::Profile;
pub use selection::{
    LeastConnections, PeakEwma, PowerOfTwoChoices, RoundRobin, Selection, Strategy,
};
pub use transport::PoolTransport;
