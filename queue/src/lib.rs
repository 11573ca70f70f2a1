//! The task queue: what can be done to it ([`QueueStore`]), written once in the [`Engine`],
//! which applies the rules of a task's life ([`lifecycle`]) over a database [`driver`]: the
//! embedded one ([`SqliteStore`]: SQLite in the coordination folder, no server to start) or the
//! one for many machines ([`PostgresStore`]). [`Store`] opens either from a [`QueueAddress`].
//!
//! The data path reads in one direction: [`QueueStore::add`] stores [`NewTask`]s as
//! [`Task`]s; [`QueueStore::claim`] hands the best pending task of some types to a worker
//! together with a [`Lease`]; the worker keeps the lease alive with [`QueueStore::renew`] and
//! ends it with [`QueueStore::finish`] (an [`Outcome`]) or [`QueueStore::release`]. A lease
//! that is not renewed expires and its task returns to pending, so a killed worker loses
//! nothing. Every lease operation is fenced by the lease's secret token and its attempt number:
//! only the holder of the current, unexpired lease may extend or finish a task.
//!
//! A driver only stores and fetches, each operation one statement or one transaction: what a
//! claim, a finish, a cancel or a retry does to a task, and how the tasks after it follow, is
//! decided in [`lifecycle`] and sequenced by the [`Engine`], written once for both databases.
//!
//! Workers also publish a [`WorkerRecord`] that `status` shows.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use task_model::{
    Attempt, AttemptStatus, BranchOutcome, BranchState, DEFAULT_MAX_ATTEMPTS, DEFAULT_PRIORITY,
    Input, InputAnswer, InputField, InputOption, PlanStep, Question, Review, ShownStatus, Task,
    TaskState, TaskStatus, Verdict, rfc3339_millis,
};

pub mod driver;
mod engine;
mod folder;
pub mod legacy;
pub mod lifecycle;
mod os;
mod postgres;
mod records;
pub mod secret;
mod sqlite;
mod store;

pub use engine::Engine;
pub use folder::QueueFolder;
pub use postgres::{
    POOL_SIZE as POSTGRES_POOL_SIZE, PostgresDriver, PostgresStore, PostgresUrl, WorkListener,
    migrate as migrate_postgres, migration_plan as postgres_migration_plan, redact_url,
};
pub use sqlite::{SqliteDriver, SqliteStore};
pub use store::{CONFIG_FILE, QueueAddress, Store, WorkSignal, normal_path};

/// How hard the store works to survive a power loss (a crashed process is always survived).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Every change that adds work or records an outcome is on disk before the operation
    /// returns (the write-ahead log is flushed): a power loss loses nothing reported done.
    #[default]
    Durable,
    /// Changes reach the disk when the operating system writes them back or SQLite checkpoints
    /// (`synchronous = NORMAL`, no flush of the log): a crashed process loses nothing, but a
    /// power loss or kernel crash can lose the last changes.
    Relaxed,
}

impl Durability {
    /// The name used in `host init --durability` and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Durable => "durable",
            Durability::Relaxed => "relaxed",
        }
    }
}

/// Everything that can go wrong in a store operation. Each message names the file or task at
/// fault.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The folder is not a queue (yet).
    #[error("{0} is not a queue folder (run `host init` to create one)")]
    NotInitialized(PathBuf),
    /// The database holds no queue: `host init` creates its schema.
    #[error("{0} holds no queue (run `host init` to create one)")]
    EmptyDatabase(PathBuf),
    /// The queue folder is there but its database is missing or empty: the queue was lost.
    /// Nothing is made in its place but by `host init`, so the loss is never hidden.
    #[error(
        "{0} is missing or empty, although its folder holds a queue: the tasks are not there \
         (nothing was changed; restore the file from a backup, or run `host init` to start a new, \
         empty queue)"
    )]
    LostDatabase(PathBuf),
    /// The folder holds a queue of the folder-of-files format of earlier versions.
    #[error(
        "{0} holds a queue written by an earlier version of host (a folder of JSON files): run \
         `host import {0}` to bring its tasks into this version's store"
    )]
    OldFormat(PathBuf),
    /// The database was written by a newer version of host.
    #[error(
        "{path} has schema version {found}, newer than this host knows ({known}): use a newer host"
    )]
    NewerSchema {
        /// The database.
        path: PathBuf,
        /// Its schema version.
        found: i64,
        /// The newest this host knows.
        known: i64,
    },
    /// The queue's schema is older than this host's; on a database many machines share, only
    /// `host migrate` upgrades it.
    #[error(
        "{path} has schema version {found}, older than this host's ({known}): run `host migrate` \
         to upgrade it (stop the workers of the older version first)"
    )]
    OlderSchema {
        /// The database.
        path: PathBuf,
        /// Its schema version.
        found: i64,
        /// The version this host uses.
        known: i64,
    },
    /// The folder cannot hold a queue safely (others can read it, a network file system).
    #[error("{path}: {reason}")]
    Unsafe {
        /// The folder or file at fault.
        path: PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder at fault.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The operation was applied, but the disk refused to flush it (a durable queue).
    #[error(
        "{path}: the change was made but could not be flushed to the disk ({source}); a power \
         loss could still undo it"
    )]
    NotFlushed {
        /// The file that could not be flushed.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The database refused an operation; nothing of it was applied.
    #[error("{path}: {message}")]
    Database {
        /// The database.
        path: PathBuf,
        /// What went wrong, and that nothing changed.
        message: String,
    },
    /// A file or record is not what the store wrote; it is left untouched.
    #[error("corrupted {path}: {reason} (left untouched; `host doctor` checks the queue)")]
    Corrupt {
        /// The file (and record) at fault.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The database is damaged, or SQLite's files beside it were deleted or replaced while the
    /// queue was open: this process, and every one that opens the queue after it, stops
    /// writing to it until a person has looked (the folder's `damaged` file says why).
    #[error(
        "{path}: {reason}; host stopped writing to this queue so as not to make it worse (`host \
         export` saves what can still be read); stop its workers and run `host doctor`"
    )]
    Damaged {
        /// The file at fault.
        path: PathBuf,
        /// What was found.
        reason: String,
    },
    /// The queue was given as a libpq key=value connection string, which is not taken; the
    /// message never repeats the string, which may hold a password.
    #[error(
        "a PostgreSQL key=value connection string is not taken as a queue: give a URL, \
         postgres://USER@HOST:PORT/DBNAME, with the password in PGPASSWORD or ~/.pgpass (a \
         folder whose name looks like one: write it as ./NAME)"
    )]
    KeyValueAddress,
    /// A task's description and payload take more than [`MAX_TASK_BYTES`]; nothing was
    /// stored.
    #[error(
        "the task's description and payload take {size} bytes together, over the limit of \
         {limit} bytes (2 MiB): put large inputs in a file and give its path as the task's \
         target",
        limit = MAX_TASK_BYTES
    )]
    TooLarge {
        /// The bytes they take.
        size: usize,
    },
    /// No task has this id.
    #[error("no task with id {0}")]
    NotFound(String),
    /// A task to be added, or an answer to a task's question, is not acceptable; nothing
    /// changed.
    #[error("{0}")]
    InvalidTask(String),
    /// The task is not in a state the operation applies to.
    #[error("task {id} {}: {hint}", .status.phrase())]
    WrongState {
        /// The task.
        id: String,
        /// Where it is.
        status: TaskStatus,
        /// What can be done instead.
        hint: &'static str,
    },
    /// The lease is no longer the task's current one: it expired, or the task moved on.
    #[error("task {id}: lease of attempt {attempt} was lost ({why})")]
    LeaseLost {
        /// The task.
        id: String,
        /// The attempt whose lease was lost.
        attempt: u32,
        /// Expired, or reclaimed or finished since.
        why: &'static str,
    },
    /// Someone who does not hold the task's lease tried to extend or finish it.
    #[error(
        "task {id} is held by {holder} (attempt {attempt}); only the holder of its lease may \
         extend or finish it"
    )]
    NotHolder {
        /// The task.
        id: String,
        /// The worker that holds it.
        holder: String,
        /// The attempt it holds.
        attempt: u32,
    },
}

/// The most bytes a task's description and payload (as JSON) may take together, however the
/// task comes in: `host add` and its task files, the dashboard, MCP, `host edit`. 2 MiB, what
/// the dashboard has always taken (axum's default limit of a request): room for a long prompt
/// with its context, while listings and claims read tasks whole, so that a much larger one
/// would slow every reader. Larger inputs belong in a file that the task's target names.
pub const MAX_TASK_BYTES: usize = 2 * 1024 * 1024;

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
    /// The tasks this one comes after: it stays blocked until they have all completed, and is
    /// cancelled when one fails or is cancelled.
    pub after: Vec<Dependency>,
    /// The tasks this one comes after whatever their outcome: it stays blocked until they
    /// have all finished (completed, failed or cancelled), and is never cancelled by them.
    pub after_any: Vec<Dependency>,
    /// Not claimed before this time (`host add --at`, `--in`).
    pub not_before: Option<Timestamp>,
    /// The other entries of the same add that do the same work (`host add --fanout`), by
    /// index (0-based).
    pub siblings: Vec<usize>,
}

/// Changes to a task that has not started (`host edit`); `None` leaves a field as it is.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaskEdit {
    /// A new priority.
    pub priority: Option<u32>,
    /// A new description.
    pub description: Option<String>,
    /// A new payload.
    pub payload: Option<Value>,
    /// A new time limit of one attempt.
    pub timeout_secs: Option<u64>,
}

/// A rule applied to one task by [`QueueStore::update`], at the time given.
pub type TaskChange<'a> = dyn Fn(&mut Task, Timestamp) -> Result<(), StoreError> + Sync + 'a;

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
    /// `after` (its dependencies, resolved to ids); its `afterAny` is left to the caller to
    /// resolve.
    pub fn into_task(self, id: String, after: Vec<String>, now: Timestamp) -> Task {
        Task {
            id,
            task_type: self.task_type,
            target: self.target,
            description: self.description,
            priority: self.priority.unwrap_or(DEFAULT_PRIORITY),
            payload: self.payload,
            after,
            after_any: Vec::new(),
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
            // A claim waits for `retry_at` whatever set it: a backoff, or a delayed start.
            retry_at: self.not_before,
            snoozed_until: None,
            cancel_requested: false,
            cancelled_by: None,
            wait_ms: None,
            aged_priority: None,
            history: Vec::new(),
            reviews: Vec::new(),
            branch_state: None,
            siblings: Vec::new(),
            input: None,
        }
    }
}

/// The right to extend and finish one attempt of a task: who holds it, and the secret that
/// proves it. Only the store and the holder know the token; it is never part of the task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    /// The task.
    pub task_id: String,
    /// The attempt number this lease belongs to (the task's `attempts` at claim time).
    pub attempt: u32,
    /// The worker holding it.
    pub worker: String,
    /// The secret given out with the claim.
    pub token: String,
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
    /// The handler succeeded with this result, and its role asks a person to approve the
    /// change first: the task waits in [`TaskStatus::Review`].
    ForReview(Value),
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
    /// The attempt is put off, not counted: the task is pending again, not claimed before
    /// `until` (the handler's account is out of quota until then, or the work is not due).
    Snooze {
        /// Not claimed before this time.
        until: Timestamp,
        /// Why, one line; kept on the attempt.
        reason: String,
    },
}

/// What [`QueueStore::finish_and_claim`] did: each outcome's result, in order, and the tasks
/// claimed (or why the claim failed, the outcomes being recorded all the same).
pub type Recorded = (
    Vec<Result<Task, StoreError>>,
    Result<Vec<Claim>, StoreError>,
);

/// What a worker learns when it renews a lease.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Renewal {
    /// `host cancel` asked for the task to stop; the handler should be told.
    pub cancel_requested: bool,
    /// A person answered the question the task asked ([`QueueStore::ask`]): the worker takes
    /// the answer with [`QueueStore::end_input`].
    pub answered: bool,
}

/// How many tasks are in each state, per type, read from counts the store keeps rather than
/// from every task.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Tasks per state; a state with no task may be absent.
    pub counts: BTreeMap<TaskStatus, usize>,
    /// Pending tasks per type (those waiting out a retry backoff included).
    pub pending_by_type: BTreeMap<String, usize>,
    /// Tasks per state, per type.
    pub by_type: BTreeMap<String, BTreeMap<TaskStatus, usize>>,
}

impl Summary {
    /// Counts `n` tasks of `task_type` in state `status` (as a store reads them, by name; an
    /// unknown state is skipped).
    pub(crate) fn count(&mut self, status: &str, task_type: String, n: i64) {
        let Ok(status) = status.parse::<TaskStatus>() else {
            return;
        };
        let n = usize::try_from(n).unwrap_or(0);
        *self.counts.entry(status).or_default() += n;
        *self
            .by_type
            .entry(task_type.clone())
            .or_default()
            .entry(status)
            .or_default() += n;
        if status == TaskStatus::Pending {
            *self.pending_by_type.entry(task_type).or_default() += n;
        }
    }
}

/// Which tasks a listing shows, in which order, how many: every condition given must hold. The
/// store answers from its indexes (by state, by finishing time, by id), so the cost follows the
/// rows shown rather than the history.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskQuery {
    /// Tasks in one of these states; empty means any.
    pub statuses: Vec<TaskStatus>,
    /// Tasks of this type.
    pub task_type: Option<String>,
    /// Tasks last run by this worker.
    pub worker: Option<String>,
    /// Tasks that finished at or after this time.
    pub finished_since: Option<Timestamp>,
    /// Only tasks whose branch's merge conflicted (see [`Task::in_conflict`]).
    pub in_conflict: bool,
    /// Tasks whose JSON contains this text, ignoring ASCII case.
    pub text: Option<String>,
    /// Newest (highest id) first, instead of oldest first.
    pub newest_first: bool,
    /// In the order the tasks finished (then by id), instead of by id; `after_id` pages by id,
    /// so it is not for paging.
    pub by_finish: bool,
    /// Only tasks past this id in the listing's order (the last id of the previous page).
    pub after_id: Option<u64>,
    /// At most this many.
    pub limit: Option<usize>,
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
    /// The plan the handler follows, as it last reported it (an ACP agent's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plan: Vec<PlanStep>,
}

/// A role's account out of quota (a subscription CLI's usage window), as a worker of the role
/// reported it: the role's workers claim nothing until `until`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageLimit {
    /// The role whose account is out.
    pub role: String,
    /// The task types that role claims: its `fallback` roles claim them meanwhile.
    pub types: Vec<String>,
    /// When the limit resets.
    #[serde(with = "task_model::rfc3339_millis")]
    pub until: Timestamp,
    /// What the CLI said, one line.
    pub reason: String,
    /// The task that met it.
    pub task: String,
    /// The worker that met it.
    pub worker: String,
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
    #[serde(with = "task_model::rfc3339_millis")]
    pub started_at: Timestamp,
    /// When it last wrote this record; a record older than a few heartbeats means the worker
    /// died.
    #[serde(with = "task_model::rfc3339_millis")]
    pub heartbeat_at: Timestamp,
    /// Set for a self-serve holder (an assistant that claimed with `host claim` or MCP): it
    /// writes its record only when it acts on a task, so it counts as alive until the lease
    /// of its last action ends, not by the age of its record.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "task_model::rfc3339_millis::option"
    )]
    pub alive_until: Option<Timestamp>,
    /// The plugin library it loaded, as the file was then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub library: Option<LibraryFile>,
}

/// A library file as it was when a worker loaded it, so that `host plugins` can tell the
/// workers whose library was replaced or changed since.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LibraryFile {
    /// Its resolved path.
    pub path: std::path::PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last modified, in milliseconds since the epoch.
    pub modified_ms: u64,
    /// Its inode: a new file renamed over the old one has another (0 on Windows, where none is
    /// compared).
    pub inode: u64,
}

impl LibraryFile {
    /// The file at `path` as it is now; `None` when it cannot be read.
    pub fn of(path: &std::path::Path) -> Option<LibraryFile> {
        let meta = std::fs::metadata(path).ok()?;
        let modified = meta
            .modified()
            .ok()?
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?;
        Some(LibraryFile {
            path: path.to_path_buf(),
            size: meta.len(),
            modified_ms: modified.as_millis() as u64,
            inode: os::file_id(&meta),
        })
    }
}

impl WorkerRecord {
    /// True when a worker has not written its record for longer than `stale_after`, or a
    /// self-serve holder's lease has run out.
    pub fn is_dead(&self, now: Timestamp, stale_after: Duration) -> bool {
        match self.alive_until {
            Some(until) => now > until,
            None => {
                let age = now.duration_since(self.heartbeat_at);
                age.as_secs_f64() > stale_after.as_secs_f64()
            }
        }
    }
}

/// The queue a worker and the orchestrator share, as [`Engine`] implements it over each
/// database; its rules come from [`lifecycle`].
pub trait QueueStore: Send + Sync {
    /// Adds tasks, all or nothing, returning them as stored (ids in order).
    fn add(&self, tasks: Vec<NewTask>) -> Result<Vec<Task>, StoreError>;

    /// Claims the pending task of one of `types` with the lowest priority number (aged, when
    /// aging is on), oldest first, for `worker`. `None` when there is none.
    fn claim(&self, worker: &str, types: &[String]) -> Result<Option<Claim>, StoreError>;

    /// Claims up to `count` tasks of `types` for `worker` in one transaction, best first as
    /// [`QueueStore::claim`] orders them and within the per-type limits: what a worker with
    /// `count` free slots does.
    fn claim_up_to(
        &self,
        worker: &str,
        types: &[String],
        count: usize,
    ) -> Result<Vec<Claim>, StoreError>;

    /// Records several outcomes in one transaction (and, when durable, one flush): one result
    /// per outcome, in order, as [`QueueStore::finish`] would give it; a refused one changes
    /// nothing and does not hold the others back.
    #[allow(clippy::type_complexity)]
    fn finish_many(
        &self,
        outcomes: &[(Lease, Outcome)],
    ) -> Result<Vec<Result<Task, StoreError>>, StoreError>;

    /// Extends the lease to a full lease from now. Fails with [`StoreError::NotHolder`] for a
    /// lease that is not the task's, and [`StoreError::LeaseLost`] for one that expired or was
    /// superseded: an expired lease stays lost.
    fn renew(&self, lease: &Lease) -> Result<Renewal, StoreError>;

    /// Records how the attempt ended, as the holder of `lease`. A retryable failure with
    /// attempts left returns the task to pending after a backoff; other failures leave it
    /// `failed` (`cancelled` if a cancel was requested).
    fn finish(&self, lease: &Lease, outcome: Outcome) -> Result<Task, StoreError>;

    /// Records outcomes, as [`QueueStore::finish_many`] does, and claims up to `count` tasks
    /// for `worker`, as [`QueueStore::claim_up_to`] does, in one transaction: what a worker does
    /// between tasks. A refused outcome does not hold the claims back (its slot is free all the
    /// same); a claim that fails leaves the outcomes recorded, and its error is returned beside
    /// them.
    fn finish_and_claim(
        &self,
        outcomes: &[(Lease, Outcome)],
        worker: &str,
        types: &[String],
        count: usize,
    ) -> Result<Recorded, StoreError>;

    /// Returns the task to pending without counting the attempt (the worker is shutting down).
    fn release(&self, lease: &Lease) -> Result<(), StoreError>;

    /// Puts a question of the running attempt to a person, fenced by its lease, waited for
    /// until `expires_at`: the task stays running, listed as `input`, until
    /// [`QueueStore::end_input`].
    fn ask(
        &self,
        lease: &Lease,
        question: Question,
        expires_at: Option<Timestamp>,
    ) -> Result<Task, StoreError>;

    /// Records a person's answer to the question task `id` waits for; refused when it waits
    /// for none, when `question` (when the answered question was asked, if the answerer knows)
    /// is not the one it asks now, or when the answer is not one it offered.
    fn answer(
        &self,
        id: &str,
        answer: InputAnswer,
        question: Option<Timestamp>,
    ) -> Result<Task, StoreError>;

    /// Takes the answer to the running attempt's question, fenced by its lease, ending the
    /// question; without an answer the question ends only when its handler `gives_up`.
    fn end_input(&self, lease: &Lease, gives_up: bool) -> Result<Option<InputAnswer>, StoreError>;

    /// Cancels a task: a pending one never starts; a running one is flagged so that its worker
    /// tells the handler, and ends `cancelled` unless the handler completes anyway.
    fn cancel(&self, id: &str) -> Result<Task, StoreError>;

    /// Puts a failed or cancelled task back to pending, allowing it at least one more attempt.
    /// Its history is kept, and the tasks its failure cancelled are blocked on it again.
    fn retry(&self, id: &str) -> Result<Task, StoreError>;

    /// Applies `change` (one of [`lifecycle`]'s rules, such as [`lifecycle::approve`]) to one
    /// task in one transaction, writes it back, and lets the tasks after it follow its new
    /// state. An error from `change` changes nothing.
    fn update(&self, id: &str, change: &TaskChange<'_>) -> Result<Task, StoreError>;

    /// Stops claims in `scope` until [`QueueStore::resume`]; running tasks finish.
    fn pause(&self, scope: &PauseScope) -> Result<(), StoreError>;

    /// Lifts a pause.
    fn resume(&self, scope: &PauseScope) -> Result<(), StoreError>;

    /// What is paused.
    fn paused(&self) -> Result<Vec<PauseScope>, StoreError>;

    /// One task.
    fn get(&self, id: &str) -> Result<Task, StoreError>;

    /// The tasks `query` selects, in its order.
    fn list(&self, query: &TaskQuery) -> Result<Vec<Task>, StoreError>;

    /// Tasks per state and per type, from the counts the store keeps.
    fn summary(&self) -> Result<Summary, StoreError>;

    /// A task that a worker of `types` has to wait for, while there is one: a task of its types
    /// that is pending (and not paused; a retry waiting out its backoff, a snooze or a delayed
    /// start counts) or running, or one pending or running that a blocked task of its types
    /// waits behind. A task waiting for review waits for a person, not for a worker.
    fn work_ahead(&self, types: &[String]) -> Result<Option<Task>, StoreError>;

    /// Whether a worker of `types` has something to wait for ([`QueueStore::work_ahead`]).
    fn has_work(&self, types: &[String]) -> Result<bool, StoreError> {
        Ok(self.work_ahead(types)?.is_some())
    }

    /// Returns the leases that ran out to pending (after a backoff), or fails their tasks when
    /// no attempt is left; says how many. Claims do this as they go; this is for tools and
    /// tests that want it at a given moment.
    fn expire_leases(&self) -> Result<usize, StoreError>;

    /// Removes finished tasks (of `statuses`, or all finished states when empty) that finished
    /// before `before`, with their logs; says how many.
    fn purge(&self, before: Timestamp, statuses: &[TaskStatus]) -> Result<usize, StoreError>;

    /// Changes a pending or blocked task's priority, description, payload or time limit;
    /// refuses a task that has started or finished.
    fn edit(&self, id: &str, edit: &TaskEdit) -> Result<Task, StoreError>;

    /// Removes these finished tasks with their logs, all or none: an unknown id, or a task
    /// not finished (cancel it first), refuses the lot.
    fn remove(&self, ids: &[String]) -> Result<(), StoreError> {
        let mut numbers = Vec::with_capacity(ids.len());
        for id in ids {
            let task = self.get(id)?;
            if !task.status.is_finished() {
                return Err(StoreError::InvalidTask(format!(
                    "task {id} is {}: only a finished task can be removed (cancel it first); \
                     nothing was removed",
                    task.status
                )));
            }
            numbers.push(records::parse_id(id)?);
        }
        self.forget_finished(&numbers)
    }

    /// Deletes the tasks of these ids that are finished, with their logs. The engine's half of
    /// [`QueueStore::remove`], which checks them first.
    #[doc(hidden)]
    fn forget_finished(&self, ids: &[i64]) -> Result<(), StoreError>;

    /// Publishes a worker's record, replacing its previous one.
    fn put_worker(&self, record: &WorkerRecord) -> Result<(), StoreError>;

    /// Removes a worker's record (it stopped cleanly).
    fn remove_worker(&self, name: &str) -> Result<(), StoreError>;

    /// Every published worker record.
    fn workers(&self) -> Result<Vec<WorkerRecord>, StoreError>;

    /// The usage limits roles met, one per role, those that have reset included.
    fn usage_limits(&self) -> Result<Vec<UsageLimit>, StoreError>;

    /// Records that a role's account is out until `limit.until`, replacing what was known of
    /// that role.
    fn set_usage_limit(&self, limit: &UsageLimit) -> Result<(), StoreError>;

    /// Appends one line to a task's log.
    fn append_log(&self, id: &str, line: &str) -> Result<(), StoreError>;

    /// The whole lines of a task's log from byte offset `from`, and the offset after them (for
    /// the next read). An empty log is an empty string.
    fn read_log(&self, id: &str, from: u64) -> Result<(String, u64), StoreError>;

    /// How long a lease lasts unless renewed; workers renew well within it.
    fn lease_duration(&self) -> Duration;

    /// Problems met along the way that did not stop an operation (a corrupted task that a
    /// claim skipped), each reported once, for the caller to show.
    fn take_warnings(&self) -> Vec<String> {
        Vec::new()
    }

    /// A check of the stored data cheap enough for a worker to run at start and now and then,
    /// so that damage is found before writes land in it ([`StoreError::Damaged`]; every writer
    /// then stops). Stores whose server checks its own pages have nothing to do.
    fn quick_check(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Checks that a task type or worker name is a plain name: it appears in file names and
/// messages.
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
