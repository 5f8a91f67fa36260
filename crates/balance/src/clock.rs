//! The fuses' clock: milliseconds and nanoseconds on one monotonic time line for the whole process.
//!
//! Every state machine of the fuses ([`crate::breaker`], [`crate::outlier`], [`crate::budget`],
//! the Peak-EWMA estimate of a [`crate::Backend`]) takes the time as a parameter, so that tests
//! drive it by hand; these functions are what the running code passes.

use std::sync::OnceLock;
use std::time::Instant;

/// The instant time is counted from (the first reading in the process).
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since the process's first reading.
pub fn now_ns() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Milliseconds since the process's first reading.
pub fn now_ms() -> u64 {
    now_ns() / 1_000_000
}
