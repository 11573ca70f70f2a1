//! What a database does for the queue: the [`Driver`] trait, whose every operation is one
//! statement, or one transaction, of SQL. The engine ([`crate::Engine`]) calls them in the
//! order the rules of a task's life ([`crate::lifecycle`]) say, and decides everything
//! itself; a driver (`sqlite.rs`, `postgres.rs`) holds only its SQL, its connections and its
//! migrations. As river's `riverdriver`: one interface of database primitives, one
//! implementation per database.
//!
//! A task is stored as a row: its whole record (`body`, the task's JSON) beside the columns
//! that claims, listings and retention select and sort on ([`TaskRow`]), written together.

use std::path::Path;

use jiff::Timestamp;

use crate::lifecycle::PauseSet;
use crate::records::{millis, parse_id, task_body};
use crate::{Durability, StoreError, Task, TaskQuery};

/// How a write transaction is committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Commit {
    /// As the queue's durability says: on disk before the call returns when durable.
    AsConfigured,
    /// Without waiting for the disk: claims, renewals and worker records, whose loss in a
    /// power cut only means a task runs again (at-least-once).
    Lazy,
}

/// A database that holds a queue: transactions, and what lives beside them (task logs, the
/// queue's durability).
pub trait Driver: Send + Sync + 'static {
    /// A transaction on this database.
    type Tx<'t>: DriverTx
    where
        Self: 't;

    /// What errors name: the database file, or the URL without its password.
    fn name(&self) -> &Path;

    /// The queue's durability setting, as read when the driver connected.
    fn durability(&self) -> Durability;

    /// Commits from now on as `durability` says (the setting was just changed).
    fn use_durability(&mut self, durability: Durability);

    /// Runs `work` in one write transaction and commits it as `commit` says; on error nothing
    /// of it is applied. A driver may run `work` again when the transaction failed before its
    /// commit for a reason that passes (a lost connection, a deadlock), so `work` decides
    /// afresh each time.
    fn write<T: Send>(
        &self,
        commit: Commit,
        work: &mut (dyn FnMut(&mut Self::Tx<'_>) -> Result<T, StoreError> + Send),
    ) -> Result<T, StoreError>;

    /// Runs `read` on one consistent snapshot.
    fn read<T: Send>(
        &self,
        read: &mut (dyn FnMut(&mut Self::Tx<'_>) -> Result<T, StoreError> + Send),
    ) -> Result<T, StoreError>;

    /// Like [`Driver::write`], tried once: a lease renewal must learn at once that it failed.
    fn write_once<T: Send>(
        &self,
        commit: Commit,
        work: &mut (dyn FnMut(&mut Self::Tx<'_>) -> Result<T, StoreError> + Send),
    ) -> Result<T, StoreError> {
        self.write(commit, work)
    }

    /// Makes what the last lazy commits wrote durable, when the queue is durable: what
    /// [`Commit::AsConfigured`] does after its commit. A database whose every commit waits for
    /// its disk has nothing to do.
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Appends one line to task `id`'s log.
    fn append_log(&self, id: i64, line: &str) -> Result<(), StoreError>;

    /// The whole lines of task `id`'s log from byte `from`, and the offset after them.
    fn read_log(&self, id: i64, from: u64) -> Result<(String, u64), StoreError>;

    /// Removes the logs of tasks deleted by a committed transaction (a driver that keeps logs
    /// in the database deletes them with the tasks).
    fn forget_logs(&self, ids: &[i64]) -> Result<(), StoreError>;

    /// A check of the stored pages cheap enough to run now and then; see
    /// [`crate::QueueStore::quick_check`].
    fn quick_check(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Records damage found by the engine (an unreadable page) so that every process stops
    /// writing; passes the error on.
    fn noted(&self, err: StoreError) -> StoreError {
        err
    }

    /// Integrity checks of the database itself for `host doctor` (beyond the records, which
    /// the engine reads): each problem in one line.
    fn check_database(&self) -> Result<Vec<String>, StoreError>;
}

/// A stored task as a transaction reads it.
#[derive(Clone, Debug)]
pub struct StoredTask {
    /// Its id.
    pub id: i64,
    /// Its record (the task's JSON).
    pub body: String,
    /// The secret of its running attempt's lease.
    pub token: Option<String>,
    /// Whether some task comes after it (which saves a query when it finishes).
    pub has_dependents: bool,
}

/// A pending task a claim may take: its id, priority and age (for aging), and its record.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// Its id.
    pub id: i64,
    /// Its stored priority.
    pub priority: u32,
    /// When it was added, in milliseconds.
    pub created_at: i64,
    /// Its record.
    pub body: String,
}

/// What a claim chooses from, read together ([`DriverTx::claim_view`]).
#[derive(Clone, Debug, Default)]
pub struct ClaimView {
    /// The leased tasks whose outcomes the same transaction records, as
    /// [`DriverTx::tasks`] reads them.
    pub leased: Vec<StoredTask>,
    /// The claimable tasks, as [`DriverTx::candidates`] finds them.
    pub candidates: Vec<Candidate>,
    /// Every pause, as [`DriverTx::pauses`] reads them.
    pub pauses: Vec<(String, String)>,
}

/// A task's row: the columns the queries use, taken from the task, and its whole record.
#[derive(Clone, Debug)]
pub struct TaskRow {
    /// The id.
    pub id: i64,
    /// The type.
    pub task_type: String,
    /// The status, by name.
    pub status: &'static str,
    /// The priority.
    pub priority: i64,
    /// When it was added, in milliseconds.
    pub created_at: i64,
    /// When it finished.
    pub finished_at: Option<i64>,
    /// Not claimed before this time.
    pub retry_at: Option<i64>,
    /// A running task's lease ends at this time.
    pub lease_expires_at: Option<i64>,
    /// The worker that holds or last held it.
    pub worker: Option<String>,
    /// The whole task as JSON.
    pub body: String,
    /// Whether its branch's merge conflicted.
    pub conflict: bool,
    /// A new lease secret (a claim); `None` keeps a running task's secret. The secret goes
    /// when the task stops running.
    pub token: Option<String>,
    /// The tasks it comes after, of either kind (`after` and `afterAny`: the kind is in the
    /// body), written on insert only.
    pub after: Vec<i64>,
}

impl TaskRow {
    /// The row of `task`, with a new lease secret when it was just claimed.
    pub fn of(task: &Task, token: Option<&str>) -> Result<TaskRow, StoreError> {
        Ok(TaskRow {
            id: parse_id(&task.id)?,
            task_type: task.task_type.clone(),
            status: task.status.as_str(),
            priority: task.priority.into(),
            created_at: millis(task.created_at),
            finished_at: task.finished_at.map(millis),
            retry_at: task.retry_at.map(millis),
            lease_expires_at: task.lease_expires_at.map(millis),
            worker: task.worker.clone(),
            body: task_body(task),
            conflict: task.in_conflict(),
            token: token.map(str::to_string),
            after: task
                .prerequisites()
                .iter()
                .filter_map(|id| parse_id(id).ok())
                .collect(),
        })
    }

    /// Whether a claim may take it (pending; its backoff aside).
    pub fn is_pending(&self) -> bool {
        self.status == "pending"
    }
}

/// The database operations inside one transaction, each one statement (a batch of rows in
/// one statement where the database can).
pub trait DriverTx {
    /// These tasks with their lease secrets, in id order; on a database with row locks,
    /// locked until the commit. Missing ids are left out.
    fn tasks(&mut self, ids: &[i64]) -> Result<Vec<StoredTask>, StoreError>;

    /// The tasks that come after these, of either kind (`after`, `afterAny`), as
    /// (prerequisite, dependent) pairs in dependent order.
    fn dependents(&mut self, ids: &[i64]) -> Result<Vec<(i64, i64)>, StoreError>;

    /// Reserves `count` consecutive new ids and returns the first: ids are never given out
    /// twice, even when their tasks were purged. Adds take turns on this until they commit.
    fn reserve_ids(&mut self, count: usize) -> Result<i64, StoreError>;

    /// Makes ids up to `last` taken, so that new ids continue after it (an import).
    fn advance_ids(&mut self, last: i64) -> Result<(), StoreError>;

    /// Stores new tasks and the edges to the tasks they come after.
    fn insert(&mut self, rows: &[TaskRow]) -> Result<(), StoreError>;

    /// Writes back tasks that exist.
    fn update(&mut self, rows: &[TaskRow]) -> Result<(), StoreError>;

    /// Up to `per_type` claimable tasks of each of `types` not in `skip` (pending, backoff
    /// over by `now`; paused ones included: the engine passes them over), best first by
    /// priority then id, locked on a database with row locks (tasks other claimers hold are
    /// passed over). With `by_age`, the oldest `per_type` of each priority instead, for aging
    /// to choose among.
    fn candidates(
        &mut self,
        types: &[String],
        now: Timestamp,
        per_type: usize,
        skip: &[i64],
        by_age: bool,
    ) -> Result<Vec<Candidate>, StoreError>;

    /// The tasks `leased` (as [`DriverTx::tasks`]), the candidates (as
    /// [`DriverTx::candidates`]) and the pauses, read in one statement where the database
    /// allows: what a worker that records outcomes and claims again in one transaction reads.
    fn claim_view(
        &mut self,
        leased: &[i64],
        types: &[String],
        now: Timestamp,
        per_type: usize,
        skip: &[i64],
        by_age: bool,
    ) -> Result<ClaimView, StoreError> {
        Ok(ClaimView {
            leased: if leased.is_empty() {
                Vec::new()
            } else {
                self.tasks(leased)?
            },
            candidates: self.candidates(types, now, per_type, skip, by_age)?,
            pauses: self.pauses()?,
        })
    }

    /// How many tasks of `task_type` are running; on a database shared by many machines,
    /// claimers of the type take turns from here until they commit, so that a limit holds.
    fn running(&mut self, task_type: &str) -> Result<usize, StoreError>;

    /// Running tasks whose lease ended before `now` (locked; those another transaction holds
    /// are passed over).
    fn expired(&mut self, now: Timestamp) -> Result<Vec<(i64, String)>, StoreError>;

    /// Sets (`on`) or lifts a pause of kind `queue`, `type` or `task`.
    fn set_pause(&mut self, kind: &str, name: &str, on: bool) -> Result<(), StoreError>;

    /// Every pause, as (kind, name).
    fn pauses(&mut self) -> Result<Vec<(String, String)>, StoreError>;

    /// The (id, record) of the tasks `query` selects, in its order.
    fn select(&mut self, query: &TaskQuery) -> Result<Vec<(i64, String)>, StoreError>;

    /// The kept counts of tasks, as (status, type, n).
    fn counts(&mut self) -> Result<Vec<(String, String, i64)>, StoreError>;

    /// The kept counts that differ from the tasks, as (status, type, kept, real): for
    /// `host doctor`.
    fn wrong_counts(&mut self) -> Result<Vec<(String, String, i64, i64)>, StoreError>;

    /// One task, not in `skip`, that a worker of `types` waits for: running or claimable of
    /// these types, or running or claimable upstream of a blocked task of these types.
    /// A task is paused as `paused` says (see [`PauseSet::holds`]).
    fn first_work(
        &mut self,
        types: &[String],
        skip: &[i64],
        paused: &PauseSet,
    ) -> Result<Option<(i64, String)>, StoreError>;

    /// Deletes up to `limit` finished tasks of `statuses` that finished before `before`, or
    /// the finished ones among `ids`, with what refers to them; returns their ids.
    fn delete_finished(&mut self, which: Finished<'_>) -> Result<Vec<i64>, StoreError>;

    /// Writes a worker's record (JSON), replacing its previous one.
    fn put_worker(&mut self, name: &str, record: &str) -> Result<(), StoreError>;

    /// Removes a worker's record.
    fn remove_worker(&mut self, name: &str) -> Result<(), StoreError>;

    /// Every worker record, as (name, JSON), by name.
    fn workers(&mut self) -> Result<Vec<(String, String)>, StoreError>;

    /// A queue-wide setting.
    fn setting(&mut self, key: &str) -> Result<Option<String>, StoreError>;

    /// Sets (or with `None`, removes) a queue-wide setting.
    fn set_setting(&mut self, key: &str, value: Option<&str>) -> Result<(), StoreError>;

    /// Sets `key` to `value` unless it is set, and returns the value it keeps: of
    /// transactions doing this at once, every one returns the first's.
    fn keep_setting(&mut self, key: &str, value: &str) -> Result<String, StoreError>;

    /// Tells idle workers, once this transaction commits, that work may have become
    /// claimable.
    fn announce(&mut self);
}

/// Which finished tasks [`DriverTx::delete_finished`] deletes.
#[derive(Clone, Copy, Debug)]
pub enum Finished<'a> {
    /// Up to `limit` of these states that finished before this time (milliseconds).
    Before {
        /// The time.
        before: i64,
        /// The finished states, by name.
        statuses: &'a [&'static str],
        /// At most this many.
        limit: usize,
    },
    /// These, if they are finished.
    Ids(&'a [i64]),
}
