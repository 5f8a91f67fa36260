//! `instances.json`: which pid serves which instance, for tests and scripts that kill a child.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::Serialize;

use super::ChildSpec;

/// One entry of `instances.json`.
#[derive(Debug, Clone, Serialize)]
struct Record {
    role: String,
    id: String,
    url: String,
    port: u16,
    pid: Option<u32>,
    /// How many times it was spawned (its restarts are one fewer); not in the file.
    #[serde(skip)]
    spawns: u32,
}

struct State {
    records: Vec<Record>,
    /// False until every instance was healthy once: a reader that finds the file can rely on it.
    published: bool,
}

/// The current pid of every instance, mirrored to a file once published.
pub(super) struct Registry {
    path: Option<PathBuf>,
    state: Mutex<State>,
}

impl Registry {
    pub(super) fn new(specs: &[ChildSpec], path: Option<PathBuf>) -> Self {
        let records = specs
            .iter()
            .map(|s| Record {
                role: s.role.clone(),
                id: s.id.clone(),
                url: s.url.clone(),
                port: s.port,
                pid: None,
                spawns: 0,
            })
            .collect();
        Self {
            path,
            state: Mutex::new(State {
                records,
                published: false,
            }),
        }
    }

    /// Records a new pid for `id`, and rewrites the file if it was published.
    pub(super) fn set_pid(&self, id: &str, pid: u32) -> std::io::Result<()> {
        let mut state = self.lock();
        if let Some(record) = state.records.iter_mut().find(|r| r.id == id) {
            record.pid = Some(pid);
            record.spawns += 1;
        }
        if state.published {
            self.write(&state.records)?;
        }
        Ok(())
    }

    /// Writes the file for the first time; from now on every pid change rewrites it.
    pub(super) fn publish(&self) -> std::io::Result<()> {
        let mut state = self.lock();
        state.published = true;
        self.write(&state.records)
    }

    /// Adds an instance started while running (a scale out).
    pub(super) fn add(&self, spec: &ChildSpec) {
        let mut state = self.lock();
        state.records.push(Record {
            role: spec.role.clone(),
            id: spec.id.clone(),
            url: spec.url.clone(),
            port: spec.port,
            pid: None,
            spawns: 0,
        });
        if state.published {
            let _ = self.write(&state.records);
        }
    }

    /// Removes an instance that was drained and stopped.
    pub(super) fn remove(&self, id: &str) {
        let mut state = self.lock();
        state.records.retain(|r| r.id != id);
        if state.published {
            let _ = self.write(&state.records);
        }
    }

    /// The pid of every instance, by id.
    pub(super) fn pids(&self) -> HashMap<String, Option<u32>> {
        self.lock()
            .records
            .iter()
            .map(|r| (r.id.clone(), r.pid))
            .collect()
    }

    /// How many times every instance was restarted, by id.
    pub(super) fn restarts(&self) -> HashMap<String, u32> {
        self.lock()
            .records
            .iter()
            .map(|r| (r.id.clone(), r.spawns.saturating_sub(1)))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes through a temporary file and a rename, so that a reader never sees half a file.
    /// Called with the state locked, so that two writers never share the temporary file.
    fn write(&self, records: &[Record]) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let json = serde_json::to_vec_pretty(records).map_err(std::io::Error::other)?;
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, path)
    }
}
