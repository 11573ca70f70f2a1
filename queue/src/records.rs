//! What both stores share about keeping tasks in rows: ids, times, the task's JSON, pause keys,
//! lease secrets, and the per-process bookkeeping of records that could not be read and of
//! when leases were last scanned.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jiff::Timestamp;

use crate::{Lease, PauseScope, StoreError, Task};

/// A time as stored: milliseconds since 1970-01-01 UTC.
pub(crate) fn millis(at: Timestamp) -> i64 {
    at.as_millisecond()
}

pub(crate) fn from_millis(ms: i64) -> Timestamp {
    Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// A task id as the database keeps it; anything but a positive number names no task.
pub(crate) fn parse_id(id: &str) -> Result<i64, StoreError> {
    Some(id)
        .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|id| id.parse::<i64>().ok())
        .filter(|id| *id > 0)
        .ok_or_else(|| StoreError::NotFound(id.to_string()))
}

/// A task's record, checked to be the task of row `id`; `store` names the database.
pub(crate) fn parse_task(store: &Path, id: i64, body: &str) -> Result<Task, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        path: PathBuf::from(format!("{}, task {id}", store.display())),
        reason,
    };
    let task: Task = serde_json::from_str(body).map_err(|err| corrupt(err.to_string()))?;
    if task.id != id.to_string() {
        return Err(corrupt(format!("its record holds task id {:?}", task.id)));
    }
    Ok(task)
}

/// A task's record as stored.
pub(crate) fn task_body(task: &Task) -> String {
    serde_json::to_string(task).expect("task serializes")
}

/// How a pause is keyed: kind 'queue' (name ''), 'type' or 'task'.
pub(crate) fn pause_key(scope: &PauseScope) -> (&'static str, &str) {
    match scope {
        PauseScope::Queue => ("queue", ""),
        PauseScope::Type(task_type) => ("type", task_type),
        PauseScope::Task(id) => ("task", id),
    }
}

pub(crate) fn pause_scope(kind: &str, name: String) -> PauseScope {
    match kind {
        "queue" => PauseScope::Queue,
        "type" => PauseScope::Type(name),
        _ => PauseScope::Task(name),
    }
}

/// The lease of `worker` on `task`, just claimed (its attempt counted), with a new secret.
pub(crate) fn new_lease(task: &Task, worker: &str) -> Result<Lease, StoreError> {
    Ok(Lease {
        task_id: task.id.clone(),
        attempt: task.attempts,
        worker: worker.to_string(),
        token: new_token()?,
    })
}

/// A new lease secret: 16 random bytes from the OS, as hex.
fn new_token() -> Result<String, StoreError> {
    crate::secret::random_hex(16).map_err(|err| StoreError::Io {
        path: PathBuf::from("(the OS random source)"),
        source: std::io::Error::other(err.to_string()),
    })
}

/// The statuses `purge` removes: the finished ones among `statuses`, all finished when empty.
pub(crate) fn purgeable(statuses: &[crate::TaskStatus]) -> Vec<&'static str> {
    if statuses.is_empty() {
        vec!["completed", "failed", "cancelled"]
    } else {
        statuses
            .iter()
            .filter(|s| s.is_finished())
            .map(|s| s.as_str())
            .collect()
    }
}

/// Tasks whose record could not be read, skipped by claims and `has_work` in this process
/// and reported once each, as warnings to take.
#[derive(Default)]
pub(crate) struct Unreadable {
    ids: Mutex<HashSet<i64>>,
    warnings: Mutex<Vec<String>>,
}

impl Unreadable {
    /// Notes task `id` as unreadable; the first time, with a warning.
    pub(crate) fn note(&self, id: i64, err: &StoreError) {
        if self.ids.lock().expect("unreadable lock").insert(id) {
            self.warnings
                .lock()
                .expect("warnings lock")
                .push(format!("{err}; skipped"));
        }
    }

    /// Task `id` as `parsed`, or `None` when its record could not be read, which is noted:
    /// listings go on with the rest.
    pub(crate) fn readable(&self, id: i64, parsed: Result<Task, StoreError>) -> Option<Task> {
        parsed.map_err(|err| self.note(id, &err)).ok()
    }

    /// The ids noted, in order.
    pub(crate) fn ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .ids
            .lock()
            .expect("unreadable lock")
            .iter()
            .copied()
            .collect();
        ids.sort_unstable();
        ids
    }

    pub(crate) fn take_warnings(&self) -> Vec<String> {
        std::mem::take(&mut *self.warnings.lock().expect("warnings lock"))
    }
}

/// When a store last looked for expired leases: claims look at most every tenth of a lease
/// (between 10 ms and a second), so a lease is late by no more than that.
#[derive(Default)]
pub(crate) struct ExpiryScan(Mutex<Option<Instant>>);

impl ExpiryScan {
    /// Whether a scan is due now for leases of length `lease`; if so, counts it as done.
    pub(crate) fn due(&self, lease: Duration) -> bool {
        let every = (lease / 10).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let mut last = self.0.lock().expect("expiry lock");
        if last.is_some_and(|at| at.elapsed() < every) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }
}
