//! The fuses' two sets of defaults: `standard` (the anchors' numbers: Envoy's outlier detection,
//! resilience4j's breaker) and `demo` (the same rules in seconds instead of minutes, for a lab
//! where a fuse should trip and heal while someone watches; what the scenario and tests use).
//! A section names its profile and may still change any setting one by one.

use serde::{Deserialize, Serialize};

/// Which defaults a fuse section starts from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// The anchors' numbers (minutes-long waits, windows of many calls).
    #[default]
    Standard,
    /// The same rules, short windows and waits (seconds).
    Demo,
}
