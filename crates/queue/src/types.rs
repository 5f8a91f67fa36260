//! The task types the workers run and the shape of their payloads.
//!
//! The registry lives here, not in the worker crate, so that a gateway can refuse an unknown type
//! or a bad payload at submission (`400`) without depending on the worker: a task that no worker
//! can run never enters the queue. The worker checks at start that it has a handler for every
//! type listed here.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::Error;

/// What a payload field must hold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum FieldKind {
    /// Any JSON number.
    Number,
    /// A whole number in `min..=max`.
    Integer {
        /// The smallest value accepted.
        min: i64,
        /// The largest value accepted.
        max: i64,
    },
    /// A string of at most `max_len` characters.
    String {
        /// The longest value accepted.
        max_len: usize,
    },
}

/// One payload field.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Field {
    /// Its name in the payload object.
    pub name: &'static str,
    /// What it must hold.
    #[serde(flatten)]
    pub kind: FieldKind,
    /// Whether a payload without it is refused.
    pub required: bool,
}

/// One task type.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TaskType {
    /// Its name (`"type"` in a submission).
    pub name: &'static str,
    /// What it does, for `GET /tasks/types` and the docs.
    pub description: &'static str,
    /// Its payload fields; any other field is refused, unless `open`.
    pub fields: &'static [Field],
    /// Any JSON object is its payload, kept whole (the lab's generic long task).
    pub open: bool,
}

const fn int(name: &'static str, min: i64, max: i64, required: bool) -> Field {
    Field {
        name,
        kind: FieldKind::Integer { min, max },
        required,
    }
}

/// The generic task `POST /longtask` runs when its body names no known type.
pub const LONGTASK: &str = "longtask";

/// The Casitas preset's finance report (needs a finances service).
pub const FINANCE_REPORT: &str = "finance_report";
/// The Casitas preset's legal report (needs a legal service).
pub const LEGAL_REPORT: &str = "legal_report";

/// Every task type a worker runs.
pub const TYPES: &[TaskType] = &[
    TaskType {
        name: "add",
        description: "adds two numbers: {\"a\": number, \"b\": number} -> a + b",
        open: false,
        fields: &[
            Field {
                name: "a",
                kind: FieldKind::Number,
                required: true,
            },
            Field {
                name: "b",
                kind: FieldKind::Number,
                required: true,
            },
        ],
    },
    TaskType {
        name: "report",
        description: "a long report: reads `records` db records one by one (each read pays the \
                      db's latency), reporting progress, and summarises them",
        fields: &[int("records", 1, 1000, false)],
        open: false,
    },
    TaskType {
        name: "sleep",
        description: "waits `ms` milliseconds (an I/O-bound task of chosen cost)",
        fields: &[int("ms", 0, 600_000, true)],
        open: false,
    },
    TaskType {
        name: "cpu",
        description: "hashes for `iterations` rounds (a CPU-bound task of chosen cost)",
        fields: &[int("iterations", 1, 1_000_000_000, true)],
        open: false,
    },
    TaskType {
        name: "fail",
        description: "always fails (with `message`), to show retries and dead tasks",
        fields: &[Field {
            name: "message",
            kind: FieldKind::String { max_len: 1000 },
            required: false,
        }],
        open: false,
    },
    TaskType {
        name: FINANCE_REPORT,
        description: "the Casitas preset's finance report: totals per unit and month over the \
                      finances service's transactions (`unit`, `month` YYYY-MM filter them); \
                      high priority when submitted by POST /finances/generate_report",
        fields: &[
            int("unit", 1, i64::MAX, false),
            Field {
                name: "month",
                kind: FieldKind::String { max_len: 7 },
                required: false,
            },
        ],
        open: false,
    },
    TaskType {
        name: LEGAL_REPORT,
        description: "the Casitas preset's legal report: the legal service's documents counted \
                      by status and kind (`status`, `unit` filter them); low priority when \
                      submitted by POST /legal/generate_report",
        fields: &[
            int("unit", 1, i64::MAX, false),
            Field {
                name: "status",
                kind: FieldKind::String { max_len: 16 },
                required: false,
            },
        ],
        open: false,
    },
    TaskType {
        name: LONGTASK,
        description: "the lab's generic long task: simulated work for the worker's `longtask_ms`, \
                      reporting progress; any JSON object is its payload, kept whole and echoed \
                      in its result",
        fields: &[],
        open: true,
    },
];

/// The type named `name`.
pub fn find(name: &str) -> Option<&'static TaskType> {
    TYPES.iter().find(|t| t.name == name)
}

/// Checks a submission: the type exists and the payload is an object with exactly the fields it
/// allows, of the right kinds. `null` stands for `{}`.
pub fn validate(name: &str, payload: &Value) -> Result<(), Error> {
    let Some(ty) = find(name) else {
        let known: Vec<&str> = TYPES.iter().map(|t| t.name).collect();
        return Err(Error::UnknownType(format!(
            "unknown task type {name:?}; known types: {}",
            known.join(", ")
        )));
    };
    let empty = Map::new();
    let obj = match payload {
        Value::Null => &empty,
        Value::Object(o) => o,
        _ => {
            return Err(Error::InvalidPayload(format!(
                "the payload of a {name} task is a JSON object"
            )));
        }
    };
    for key in obj.keys() {
        if !ty.open && !ty.fields.iter().any(|f| f.name == key) {
            return Err(Error::InvalidPayload(format!(
                "a {name} task has no field {key:?}"
            )));
        }
    }
    for field in ty.fields {
        let Some(value) = obj.get(field.name) else {
            if field.required {
                return Err(Error::InvalidPayload(format!(
                    "a {name} task needs the field {:?}",
                    field.name
                )));
            }
            continue;
        };
        let ok = match field.kind {
            FieldKind::Number => value.is_number(),
            FieldKind::Integer { min, max } => {
                value.as_i64().is_some_and(|v| (min..=max).contains(&v))
            }
            FieldKind::String { max_len } => {
                value.as_str().is_some_and(|s| s.chars().count() <= max_len)
            }
        };
        if !ok {
            let want = match field.kind {
                FieldKind::Number => "a number".to_string(),
                FieldKind::Integer { min, max } => format!("a whole number from {min} to {max}"),
                FieldKind::String { max_len } => {
                    format!("a string of at most {max_len} characters")
                }
            };
            return Err(Error::InvalidPayload(format!(
                "the field {:?} of a {name} task must be {want}",
                field.name
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn payloads_are_checked_by_type() {
        let ok = [
            ("add", json!({"a": 1, "b": 2.5})),
            ("report", json!({})),
            ("report", Value::Null),
            ("report", json!({"records": 5})),
            ("sleep", json!({"ms": 10})),
            ("cpu", json!({"iterations": 1000})),
            ("fail", json!({"message": "boom"})),
        ];
        for (name, payload) in ok {
            validate(name, &payload).unwrap_or_else(|e| panic!("{name} {payload}: {e}"));
        }
        let bad = [
            ("add", json!({"a": 1})),
            ("add", json!({"a": "1", "b": 2})),
            ("add", json!([1, 2])),
            ("sleep", json!({"ms": -1})),
            ("sleep", json!({"ms": 1.5})),
            ("sleep", json!({"ms": 10, "extra": true})),
            ("report", json!({"records": 0})),
            ("fail", json!({"message": 3})),
        ];
        for (name, payload) in bad {
            assert!(
                matches!(validate(name, &payload), Err(Error::InvalidPayload(_))),
                "{name} {payload} should be refused"
            );
        }
        assert!(matches!(
            validate("mine_bitcoin", &json!({})),
            Err(Error::UnknownType(_))
        ));
    }
}
