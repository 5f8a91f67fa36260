//! What callers see of a task: [`Task`] and its [`Status`] and [`Priority`], a submission
//! ([`NewTask`]), a page request and its answer ([`ListQuery`], [`Page`]), and the counts
//! ([`Stats`]).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Error;

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting for a worker.
    Queued,
    /// A worker holds it under a lease.
    Running,
    /// Done; `result` holds the answer.
    Succeeded,
    /// The last attempt failed; it runs again after its backoff (`error` says why).
    Failed,
    /// Out of attempts; `error` holds the last error. An admin can re-queue it.
    Dead,
    /// Cancelled while queued; it never runs.
    Cancelled,
}

impl Status {
    /// Every status, in the order of a task's life.
    pub const ALL: [Status; 6] = [
        Status::Queued,
        Status::Running,
        Status::Succeeded,
        Status::Failed,
        Status::Dead,
        Status::Cancelled,
    ];

    /// The name used in JSON and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Dead => "dead",
            Status::Cancelled => "cancelled",
        }
    }

    /// Whether the task will never change again by itself (a dead task only by an admin).
    pub fn is_final(self) -> bool {
        matches!(self, Status::Succeeded | Status::Dead | Status::Cancelled)
    }

    /// The status stored as `s`; a name no version wrote is a corrupt row.
    pub(crate) fn parse(s: &str) -> Result<Status, Error> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| Error::Corrupt(format!("unknown status {s:?} in the store")))
    }
}

impl std::str::FromStr for Status {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                Error::InvalidQuery(format!(
                    "unknown status {s:?}; one of queued, running, succeeded, failed, dead, cancelled"
                ))
            })
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which tasks run first: every `high` task before any `normal` one, every `normal` before any
/// `low`; first in, first out within one priority.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Runs first.
    High,
    /// The default.
    #[default]
    Normal,
    /// Runs when nothing else waits.
    Low,
}

impl Priority {
    /// Every priority, most urgent first.
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    /// The name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }

    /// The stored rank: claims order by it, ascending.
    pub(crate) fn rank(self) -> i64 {
        match self {
            Priority::High => 0,
            Priority::Normal => 1,
            Priority::Low => 2,
        }
    }

    /// The priority stored as `rank`.
    pub(crate) fn from_rank(rank: i64) -> Result<Priority, Error> {
        Priority::ALL
            .into_iter()
            .find(|p| p.rank() == rank)
            .ok_or_else(|| Error::Corrupt(format!("unknown priority rank {rank} in the store")))
    }
}

impl std::str::FromStr for Priority {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                Error::InvalidPriority(format!("unknown priority {s:?}; one of high, normal, low"))
            })
    }
}

/// One task, as stored and as answered by `GET /tasks/{id}`. Times are milliseconds since the
/// Unix epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Unique, time-ordered (UUID v7).
    pub id: String,
    /// The handler that runs it (see [`types`]).
    #[serde(rename = "type")]
    pub kind: String,
    /// The handler's input.
    pub payload: Value,
    /// Where it is in its life.
    pub status: Status,
    /// Its priority.
    pub priority: Priority,
    /// Attempts started so far (a claim starts one).
    pub attempts: u32,
    /// Attempts it gets before it is `dead`.
    pub max_attempts: u32,
    /// The handler's answer once `succeeded`.
    pub result: Option<Value>,
    /// The last error (after a failed attempt, a lapsed lease, or when `dead`).
    pub error: Option<String>,
    /// The last progress report of the worker running it.
    pub progress: Option<Value>,
    /// Who submitted it (a user id); only they and admins see it.
    pub owner: String,
    /// The submitter's idempotency key, if any.
    pub idempotency_key: Option<String>,
    /// When it was submitted.
    pub created_at: i64,
    /// When its latest attempt started.
    pub started_at: Option<i64>,
    /// When it reached a final status.
    pub finished_at: Option<i64>,
    /// The worker (slot) holding or last holding it.
    pub worker_id: Option<String>,
    /// Not claimable before this time (the backoff of a failed attempt).
    pub not_before: i64,
    /// Until when the holder's lease runs, while `running`.
    pub lease_until: Option<i64>,
}

/// A submission.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    /// The task type (checked by the caller with [`types::validate`]).
    pub kind: String,
    /// The handler's input.
    pub payload: Value,
    /// Its priority.
    pub priority: Priority,
    /// The submitter.
    pub owner: String,
    /// A retried submission with the same owner and key returns the first task.
    pub idempotency_key: Option<String>,
    /// Attempts before `dead`; the queue's default when `None`.
    pub max_attempts: Option<u32>,
}

impl NewTask {
    /// A `normal` task of `kind` for `owner`, without idempotency key.
    pub fn new(kind: &str, payload: Value, owner: &str) -> Self {
        Self {
            kind: kind.to_string(),
            payload,
            priority: Priority::Normal,
            owner: owner.to_string(),
            idempotency_key: None,
            max_attempts: None,
        }
    }
}

/// A page request of [`Queue::list`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListQuery {
    /// Only this owner's tasks (`None`: everyone's, for admins).
    pub owner: Option<String>,
    /// Only tasks in this status.
    pub status: Option<Status>,
    /// Only tasks of this type.
    pub kind: Option<String>,
    /// At most this many (1 to 500).
    pub limit: u32,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// One page of tasks, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page {
    /// The tasks.
    pub tasks: Vec<Task>,
    /// Pass it as `cursor` for the next page; `None` on the last one.
    pub next_cursor: Option<String>,
}

/// The queue's counts (`GET /tasks/stats`, the workers' gauges).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Tasks by status (every status present, zero included).
    pub by_status: BTreeMap<String, u64>,
    /// Tasks waiting to run (`queued`, or `failed` and waiting for their retry) by priority.
    pub depth_by_priority: BTreeMap<String, u64>,
    /// The engine's name.
    pub backend: String,
    /// How long the oldest `queued` task has waited, in milliseconds; `None` when none waits.
    #[serde(default)]
    pub oldest_queued_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print() {
        for s in Status::ALL {
            assert_eq!(s.as_str().parse::<Status>().unwrap(), s);
        }
        assert!("done".parse::<Status>().is_err());
        assert_eq!("high".parse::<Priority>().unwrap(), Priority::High);
        assert!(matches!(
            "urgent".parse::<Priority>(),
            Err(Error::InvalidPriority(_))
        ));
    }
}
