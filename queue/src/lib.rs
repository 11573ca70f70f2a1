//! The task queue: what can be done to it ([`QueueStore`]) and the embedded implementation
//! ([`FileStore`]), a folder of JSON files that needs no server.
//!
//! The data path reads in one direction: [`QueueStore::add`] stores [`NewTask`]s as
//! [`Task`]s; [`QueueStore::claim`] hands the best pending task of some types to a worker
//! together with a [`Lease`]; the worker keeps the lease alive with [`QueueStore::renew`] and
//! ends it with [`QueueStore::finish`] (an [`Outcome`]) or [`QueueStore::release`]. A lease
//! that is not renewed expires and its task returns to pending, so a killed worker loses nothing.
//! Every lease operation is fenced by the attempt number: a worker whose lease was lost cannot
//! overwrite a later attempt.
//!
//! Workers also publish a [`WorkerRecord`] that `status` shows.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use task_model::{
    Attempt, AttemptStatus, DEFAULT_MAX_ATTEMPTS, DEFAULT_PRIORITY, Task, TaskStatus,
};

mod atomic;
mod file_store;

pub use file_store::{Durability, FileStore};

/// Everything that can go wrong in a store operation. Each message names the file or task at
/// fault.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The folder is not a queue (yet).
    #[error("{0} is not a queue folder (run `host init` to create one)")]
    NotInitialized(PathBuf),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder at fault.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A file in the folder is not what the store wrote; it is left untouched.
    #[error("corrupted store file {path}: {reason} (left untouched; fix or remove it by hand)")]
    Corrupt {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// No task has this id.
    #[error("no task with id {0}")]
    NotFound(String),
    /// A task to be added is not acceptable; nothing was added.
    #[error("{0}")]
    InvalidTask(String),
    /// The task is not in a state the operation applies to.
    #[error("task {id} is {status}: {hint}")]
    WrongState {
        /// The task.
        id: String,
        /// Where it is.
        status: TaskStatus,
        /// What can be done instead.
        hint: &'static str,
    },
    /// The lease is no longer the task's current one (it expired and the task moved on).
    #[error("task {id}: lease of attempt {attempt} was lost (the task was reclaimed or finished)")]
    LeaseLost {
        /// The task.
        id: String,
        /// The attempt whose lease was lost.
        attempt: u32,
    },
}

/// A task to be added; the store fills in the id, status and times.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NewTask {
    /// The task type; must be a plain name (letters, digits, `-`, `_`, `.`).
    pub task_type: String,
    /// The file or folder the task is about.
    pub target: Option<PathBuf>,
    /// Free text.
    pub description: Option<String>,
    /// Lower is claimed first; [`DEFAULT_PRIORITY`] when absent.
    pub priority: Option<u32>,
    /// Handler input.
    pub payload: Value,
    /// Claims allowed in all; [`DEFAULT_MAX_ATTEMPTS`] when absent.
    pub max_attempts: Option<u32>,
    /// Time limit of one attempt.
    pub timeout_secs: Option<u64>,
    /// The tasks this one comes after: it stays blocked until they have all completed.
    pub after: Vec<Dependency>,
}

/// A task that a new task comes after.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dependency {
    /// A task already in the queue, by id.
    Task(String),
    /// Another task of the same add, by its index in the list (0-based).
    Batch(usize),
}

/// What `pause` and `resume` apply to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PauseScope {
    /// Every task.
    Queue,
    /// The tasks of one type.
    Type(String),
    /// One task.
    Task(String),
}

impl std::fmt::Display for PauseScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PauseScope::Queue => f.write_str("the whole queue"),
            PauseScope::Type(t) => write!(f, "type {t}"),
            PauseScope::Task(id) => write!(f, "task {id}"),
        }
    }
}

impl NewTask {
    /// The task as it is stored when added with this id at this time, coming after the tasks
    /// `after` (its dependencies, resolved to ids).
    pub fn into_task(self, id: String, after: Vec<String>, now: Timestamp) -> Task {
        Task {
            id,
            task_type: self.task_type,
            target: self.target,
            description: self.description,
            priority: self.priority.unwrap_or(DEFAULT_PRIORITY),
            payload: self.payload,
            after,
            status: TaskStatus::Pending,
            attempts: 0,
            max_attempts: self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS),
            timeout_secs: self.timeout_secs,
            worker: None,
            created_at: now,
            started_at: None,
            finished_at: None,
            duration_ms: None,
            success: None,
            result: None,
            error: None,
            lease_expires_at: None,
            retry_at: None,
            cancel_requested: false,
            cancelled_by: None,
            wait_ms: None,
            aged_priority: None,
            history: Vec::new(),
        }
    }
}

/// A worker's right to finish one attempt of a task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    /// The task.
    pub task_id: String,
    /// The attempt number this lease belongs to (the task's `attempts` at claim time).
    pub attempt: u32,
    /// The worker holding it.
    pub worker: String,
}

/// A claimed task and the lease that goes with it.
#[derive(Clone, Debug, PartialEq)]
pub struct Claim {
    /// The task as it is now stored (status `running`).
    pub task: Task,
    /// The lease to renew and finish with.
    pub lease: Lease,
}

/// How an attempt ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The handler succeeded with this result.
    Success(Value),
    /// The handler failed.
    Failure {
        /// One line.
        error: String,
        /// Detail the handler returned with the failure.
        result: Option<Value>,
        /// Whether another attempt may succeed: a retryable failure returns the task to pending
        /// after a backoff while attempts are left; any other failure is final.
        retryable: bool,
    },
}

/// What a worker learns when it renews a lease.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Renewal {
    /// `host cancel` asked for the task to stop; the handler should be told.
    pub cancel_requested: bool,
}

/// How many tasks are in each state, read from the store's index rather than from every task.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Tasks per state; a state with no task may be absent.
    pub counts: BTreeMap<TaskStatus, usize>,
    /// Pending tasks per type (those waiting out a retry backoff included).
    pub pending_by_type: BTreeMap<String, usize>,
}

/// Whether a worker is doing something.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    /// Waiting for a task.
    Idle,
    /// Running at least one task.
    Busy,
    /// Shutting down: claims nothing more.
    Stopping,
}

/// A task a worker is running, with the handler's last progress report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActiveTask {
    /// The task id.
    pub id: String,
    /// The task type.
    #[serde(rename = "type")]
    pub task_type: String,
    /// 0 to 100.
    pub progress: u8,
    /// The handler's last progress message.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// What a worker publishes about itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerRecord {
    /// Unique name (`--name`, else role-host-pid).
    pub name: String,
    /// The role it runs.
    pub role: String,
    /// The task types it claims.
    pub types: Vec<String>,
    /// Its process id.
    pub pid: u32,
    /// The machine it runs on.
    pub hostname: String,
    /// Idle, busy or stopping.
    pub state: WorkerState,
    /// What it is running now.
    #[serde(default)]
    pub tasks: Vec<ActiveTask>,
    /// When it started.
    pub started_at: Timestamp,
    /// When it last wrote this record; a record older than a few heartbeats means the worker
    /// died.
    pub heartbeat_at: Timestamp,
}

impl WorkerRecord {
    /// True when the worker has not written its record for longer than `stale_after`.
    pub fn is_dead(&self, now: Timestamp, stale_after: Duration) -> bool {
        let age = now.duration_since(self.heartbeat_at);
        age.as_secs_f64() > stale_after.as_secs_f64()
    }
}

/// The store a worker and the orchestrator share. One trait, so that another backend (a
/// server) can be added without touching workers or commands.
pub trait QueueStore: Send + Sync {
    /// Adds tasks, all or nothing, returning them as stored (ids in order).
    fn add(&self, tasks: Vec<NewTask>) -> Result<Vec<Task>, StoreError>;

    /// Claims the pending task of one of `types` with the lowest priority number, oldest first,
    /// for `worker`. `None` when there is none.
    fn claim(&self, worker: &str, types: &[String]) -> Result<Option<Claim>, StoreError>;

    /// Extends the lease; fails with [`StoreError::LeaseLost`] if it is no longer current.
    fn renew(&self, lease: &Lease) -> Result<Renewal, StoreError>;

    /// Records how the attempt ended. A retryable failure with attempts left returns the task
    /// to pending after a backoff; other failures leave it `failed` (`cancelled` if a cancel
    /// was requested).
    fn finish(&self, lease: &Lease, outcome: Outcome) -> Result<Task, StoreError>;

    /// Cancels a task: a pending one never starts; a running one is flagged so that its worker
    /// tells the handler, and ends `cancelled` unless the handler completes anyway.
    fn cancel(&self, id: &str) -> Result<Task, StoreError>;

    /// Puts a failed or cancelled task back to pending, allowing it at least one more attempt.
    /// Its history is kept, and the tasks its failure cancelled are blocked on it again.
    fn retry(&self, id: &str) -> Result<Task, StoreError>;

    /// Stops claims in `scope` until [`QueueStore::resume`]; running tasks finish.
    fn pause(&self, scope: &PauseScope) -> Result<(), StoreError>;

    /// Lifts a pause.
    fn resume(&self, scope: &PauseScope) -> Result<(), StoreError>;

    /// What is paused.
    fn paused(&self) -> Result<Vec<PauseScope>, StoreError>;

    /// Returns the task to pending without counting the attempt (the worker is shutting down).
    fn release(&self, lease: &Lease) -> Result<(), StoreError>;

    /// One task.
    fn get(&self, id: &str) -> Result<Task, StoreError>;

    /// Every task, oldest first.
    fn tasks(&self) -> Result<Vec<Task>, StoreError>;

    /// Up to `n` finished tasks, the most recently added first (a view for dashboards that
    /// does not read every task).
    fn recent_finished(&self, n: usize) -> Result<Vec<Task>, StoreError>;

    /// Tasks per state and pending tasks per type, without reading every task.
    fn summary(&self) -> Result<Summary, StoreError>;

    /// True while a task of one of `types` is pending or running.
    fn has_work(&self, types: &[String]) -> Result<bool, StoreError>;

    /// Publishes a worker's record, replacing its previous one.
    fn put_worker(&self, record: &WorkerRecord) -> Result<(), StoreError>;

    /// Removes a worker's record (it stopped cleanly).
    fn remove_worker(&self, name: &str) -> Result<(), StoreError>;

    /// Every published worker record.
    fn workers(&self) -> Result<Vec<WorkerRecord>, StoreError>;

    /// Appends one line to a task's log.
    fn append_log(&self, id: &str, line: &str) -> Result<(), StoreError>;

    /// The whole lines of a task's log from byte offset `from`, and the offset after them (for
    /// the next read). An empty log is an empty string.
    fn read_log(&self, id: &str, from: u64) -> Result<(String, u64), StoreError>;

    /// How long a lease lasts unless renewed; workers renew well within it.
    fn lease_duration(&self) -> Duration;

    /// Problems met along the way that did not stop an operation (a corrupted task file that a
    /// claim skipped), each reported once, for the caller to show.
    fn take_warnings(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Checks that a task type or worker name can be used as a file name in the store.
pub fn validate_name(what: &str, name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidTask(format!(
            "invalid {what} {name:?}: use 1-100 letters, digits, '-', '_' or '.', not starting with '.'"
        )))
    }
}
