//! The end-to-end tests: the real `scalelab` binary (`CARGO_BIN_EXE_scalelab`, which cargo builds
//! for the tests of this crate only, hence their place here), started on free ports by the harness
//! in `crates/e2e` and driven over HTTP. One test binary, one module per concern:
//!
//! - `request_path`: every flow through the balancer (login, data, process, bad input, tokens),
//!   a killed gateway, a dead or slow db, `up` refusing a port in use.
//! - `distributed`: the same flows on `scalelab.distributed.toml`, PostgreSQL and Redis on
//!   127.0.0.1 (fresh databases and key prefix per test).
//! - `tasks`: the task queue with two real workers, one killed; the whole system restarted.
//! - `tasks_kill`: 1,000 tasks, a worker killed mid-drain, none lost, each recorded once.
//! - `users`: the users service and its shards (bulk registration, roles and bad input, a shard
//!   down, rebalancing 3 to 4 shards under load with a kill), on SQLite and PostgreSQL.
//! - `scenario`: `scalelab bench scenario all --quick` and its report.
//! - `shutdown`: SIGTERM to `up` under load: in-flight requests answered, every instance stops
//!   with status 0 and no SIGKILL, a running task handed back to the queue; a worker whose claim
//!   waits on the SQLite write lock; SIGHUP (terminal closed) stops everything cleanly; SIGKILL of
//!   `up` leaves no instance running (each stops when its supervisor is gone).
//! - `worker_stop`: a worker under load whose stderr reader is gone (its `up` died) keeps working
//!   and stops on SIGTERM by itself, every task finished or handed back, the SQLite file free.
//! - `elastic`: `scalelab scale` / `status` on a running `up`: gateways and services out and in
//!   under load with no failed request, workers scaled in while holding tasks (none lost or rerun).
//! - `config_check`: a bad topology refused before anything starts, and `config --check`.
//! - `lab_calls`: the lab's own calls as written (unknown keys, the loose `/longtask`, task status
//!   on the worker's port, a guest token naming a user).
//! - `casitas`: `up --preset casitas` (routes, roles, cached listings, reports on the real rows,
//!   report priorities, the balancer's deny list and per-IP limit), embedded and on PostgreSQL.
//! - `service_token`: the deployment's credential for internal roles (`SCALELAB_SERVICE_TOKEN`).
//! - `dashboard`: the live dashboard in headless Chromium (`browser.rs` drives it over the
//!   DevTools protocol): boxes, moving counters, a kill and its recovery, polling, 50 instances.
//! - `resilience`: the gateway's fuses with services made sick and healed through their knobs:
//!   the `service` breaker opens (`503 circuit_open`) and closes; a failing service is ejected
//!   from the gateway's pool and comes back.
//! - `near_cache`: the gateways' near caches: a write through one gateway is never read stale
//!   through another, a gateway cut off from its invalidations (SIGSTOP) serves no near hit, and
//!   a fill that read the db before a write elsewhere is refused (the cache service's leases).
//! - `support`: the helpers the modules share (send and read JSON, log in).
//!
//! Run one module with a filter: `cargo test -p cli --test it users::`.

mod browser;
mod casitas;
mod config_check;
mod dashboard;
mod distributed;
mod elastic;
mod lab_calls;
mod near_cache;
mod request_path;
mod resilience;
mod scenario;
mod service_token;
mod shutdown;
mod support;
mod tasks;
mod tasks_kill;
mod users;
mod worker_stop;
