//! The embedded queue: a folder of JSON files guarded by one OS advisory lock.
//!
//! ```text
//! <queue>/
//!   queue.json                 format marker, written by `host init`
//!   lock                       empty; held (flock) by whoever changes the queue
//!   next-id                    the id the next added task gets
//!   tasks/<id>.json            one file per task: the source of truth
//!   pending/<type>/<priority>-<bucket>/<sub-bucket>/<id>
//!                              empty markers: the claim index, sorted by name; a bucket holds
//!                              4096 consecutive ids in sub-buckets of 64, so no folder that a
//!                              claim lists grows large
//!   delayed/<type>/<time>-<id> empty markers: failed tasks waiting out their retry backoff
//!   blocked/<type>/<id>        empty markers: tasks waiting for the tasks they come after
//!   dependents/<id>/<id>       empty markers: who comes after whom, read when a task finishes
//!   paused/queue, paused/type/<type>, paused/task/<id>
//!                              empty markers: what `host pause` stopped from being claimed
//!   running/<id>               empty markers: the tasks whose leases are checked
//!   completed/<id>, failed/<id>, cancelled/<id>
//!                              empty markers: finished tasks, so that counting needs no reads
//!   intents/<id>.json          an add in progress (redo record), replayed if its writer died
//!   intents/settle-<id>        empty: the tasks after <id> must follow its new state (redo
//!                              note), settled by the next locker if its writer died
//!   doorbell                   one byte, rewritten when work may have become claimable
//!   workers/<name>.json        what each worker is doing
//!   logs/<id>.log              lines a task's handler logged
//!   tmp/                       temporary files, renamed into place
//! ```
//!
//! Crash safety comes from ordering: every file is replaced atomically (temporary file, fsync,
//! rename), and each operation writes its markers in an order where any prefix of it leaves
//! either a stale marker (removed when next seen, after checking the task file) or a running
//! task whose lease will expire: a marker is created before the task file says the task is
//! where the marker points, and removed after it says otherwise. Claims and finishes move the
//! task's marker with one rename instead (a claim before its task write, a finish after it);
//! a process killed between the two leaves a running marker on a task that is not running,
//! which the lease scan moves to where the task file says. An add first writes an intent
//! holding all its tasks, so a killed `host add` adds all of them or none, and a change of
//! state that the tasks after it must follow first writes a settle note.
//!
//! Claiming lists the priority buckets of the claimer's types and the first non-empty bucket,
//! then reads the task files it touches; finishing touches one task file and one marker.
//! Neither reads finished tasks, and neither lists more than a bucket's worth of pending ones.
//! Counting tasks per state lists marker folders and reads no task file.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

mod dependencies;

use self::dependencies::Prerequisites;
use crate::atomic::{
    create_marker, install_file, io_err, list_names, move_marker, prepare_file, remove_file,
    sync_file_system, write_file,
};
use crate::{
    Attempt, AttemptStatus, Claim, Lease, NewTask, Outcome, PauseScope, QueueStore, Renewal,
    StoreError, Summary, Task, TaskStatus, WorkerRecord, validate_name,
};

const FORMAT_FILE: &str = "queue.json";
const FORMAT_VERSION: u64 = 2;
const DOORBELL: &str = "doorbell";

/// How old a file in `tmp/` must be to count as abandoned by a killed process.
const ABANDONED_AFTER: Duration = Duration::from_secs(600);
const SUBDIRS: [&str; 14] = [
    "tasks",
    "pending",
    "blocked",
    "dependents",
    "paused",
    "delayed",
    "running",
    "completed",
    "failed",
    "cancelled",
    "intents",
    "workers",
    "logs",
    "tmp",
];

/// The finished states, each with a marker folder of the same name.
const FINISHED: [TaskStatus; 3] = [
    TaskStatus::Completed,
    TaskStatus::Failed,
    TaskStatus::Cancelled,
];

/// How many consecutive ids share a pending bucket folder, and how many share one of its
/// sub-buckets: a claim lists at most one bucket's sub-buckets and one sub-bucket's markers.
const BUCKET: u64 = 4096;
const SUB_BUCKET: u64 = 64;

/// How long a lease lasts unless renewed, when the store is not told otherwise.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// The delay before the first retry of a failed task, when the store is not told otherwise;
/// each further retry waits twice as long (with jitter), up to [`MAX_BACKOFF`].
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(1);

/// The longest a failed task waits before its next attempt.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// How hard the store works to survive a power loss (a crashed process is always survived).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Every change is fsynced before the operation returns: a power loss loses nothing that
    /// an operation reported done.
    #[default]
    Durable,
    /// Nothing is fsynced; the OS writes changes back within about 30 seconds. A crashed
    /// process still loses nothing, but a power loss or kernel crash can lose or undo the
    /// changes of those last seconds (tasks added, claimed or finished) and, on some file
    /// systems, leave a task file empty, which the store then reports as corrupted.
    Relaxed,
}

/// `queue.json`: what a folder must say to be opened as a queue.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FormatMarker {
    format: u64,
    #[serde(default)]
    durability: Durability,
}

/// An add that has been decided but maybe not fully applied.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AddIntent {
    tasks: Vec<Task>,
    next_id: u64,
}

/// The embedded queue store: a folder any process on the machine can share.
pub struct FileStore {
    root: PathBuf,
    lease: Duration,
    backoff: Duration,
    limits: std::collections::BTreeMap<String, usize>,
    aging: Option<Duration>,
    durable: bool,
    last_expiry_scan: Mutex<Option<Instant>>,
    warned: Mutex<HashSet<PathBuf>>,
    warnings: Mutex<Vec<String>>,
    /// Set when the operation under way makes work claimable; the doorbell rings as it ends.
    work_appeared: AtomicBool,
}

/// Holds the queue's advisory lock until dropped. The OS releases it if the process dies, so a
/// crash never leaves a stale lock behind.
struct QueueLock<'a> {
    _file: File,
    store: &'a FileStore,
}

impl Drop for QueueLock<'_> {
    /// Rings the doorbell while the lock is still held: a worker it wakes then waits for the
    /// lock and finds the operation complete.
    fn drop(&mut self) {
        if self.store.work_appeared.swap(false, Ordering::Relaxed) {
            self.store.ring_doorbell();
        }
    }
}

impl FileStore {
    /// Creates the queue folder (readable by its owner only) or checks an existing one.
    /// Idempotent.
    pub fn init(root: &Path) -> Result<FileStore, StoreError> {
        create_private_dir(root)?;
        for sub in SUBDIRS {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        // Created once here, so that a command that changes nothing leaves the folder as it was.
        let lock = root.join("lock");
        File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock)
            .map_err(io_err(&lock))?;
        if root.join(FORMAT_FILE).exists() {
            return FileStore::open(root);
        }
        let store = FileStore::at(root, Durability::default());
        store.ring_doorbell();
        store.write_format_marker()?;
        Ok(store)
    }

    /// Changes the queue's durability setting, for every process that opens it from now on.
    pub fn set_durability(mut self, durability: Durability) -> Result<FileStore, StoreError> {
        self.durable = durability == Durability::Durable;
        self.write_format_marker()?;
        Ok(self)
    }

    /// Caps how many tasks of a type may run at once, across every worker of the queue: a
    /// claim skips a type that has reached its limit.
    pub fn with_limits(mut self, limits: std::collections::BTreeMap<String, usize>) -> FileStore {
        self.limits = limits;
        self
    }

    /// Priority aging: a pending task is claimed as if its priority number were one lower for
    /// every `step` it has waited since it was added (down to 0), so that low-priority work is
    /// never starved. Its stored priority does not change.
    pub fn with_aging(mut self, step: Option<Duration>) -> FileStore {
        self.aging = step;
        self
    }

    /// The queue's durability setting.
    pub fn durability(&self) -> Durability {
        if self.durable {
            Durability::Durable
        } else {
            Durability::Relaxed
        }
    }

    fn write_format_marker(&self) -> Result<(), StoreError> {
        let mut bytes = serde_json::to_vec_pretty(&FormatMarker {
            format: FORMAT_VERSION,
            durability: self.durability(),
        })
        .expect("format marker serializes");
        bytes.push(b'\n');
        // Always durable: the setting itself must survive.
        write_file(&self.tmp_dir(), &self.root.join(FORMAT_FILE), &bytes, true)?;
        sync_file_system(&self.root)
    }

    /// Opens an existing queue folder.
    pub fn open(root: &Path) -> Result<FileStore, StoreError> {
        let marker = root.join(FORMAT_FILE);
        let text = match fs::read(&marker) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotInitialized(root.to_path_buf()));
            }
            Err(err) => return Err(io_err(&marker)(err)),
        };
        let format: FormatMarker =
            serde_json::from_slice(&text).map_err(|err| StoreError::Corrupt {
                path: marker.clone(),
                reason: err.to_string(),
            })?;
        if format.format != FORMAT_VERSION {
            return Err(StoreError::Corrupt {
                path: marker,
                reason: format!(
                    "queue format {} is not the supported format {FORMAT_VERSION}",
                    format.format
                ),
            });
        }
        Ok(FileStore::at(root, format.durability))
    }

    fn at(root: &Path, durability: Durability) -> FileStore {
        FileStore {
            root: root.to_path_buf(),
            lease: DEFAULT_LEASE,
            backoff: DEFAULT_BACKOFF,
            limits: Default::default(),
            aging: None,
            durable: durability == Durability::Durable,
            last_expiry_scan: Mutex::new(None),
            warned: Mutex::new(HashSet::new()),
            warnings: Mutex::new(Vec::new()),
            work_appeared: AtomicBool::new(false),
        }
    }

    /// The doorbell: a one-byte file rewritten whenever work may have become claimable (tasks
    /// added, released, retried, unblocked or resumed, or a task of a limited type ending).
    /// Idle workers watch it rather than the claim index, so that claims, which only take work
    /// away, wake nobody. Created if missing.
    pub fn doorbell(&self) -> PathBuf {
        let path = self.root.join(DOORBELL);
        if !path.exists() {
            self.ring_doorbell();
        }
        path
    }

    /// Rewrites the doorbell in place (no new inode, no rename). A failure only delays pickup
    /// until the workers' next poll, so it is not an error of the operation.
    fn ring_doorbell(&self) {
        use std::os::unix::fs::FileExt as _;
        let path = self.root.join(DOORBELL);
        if let Ok(file) = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
        {
            let _ = file.write_all_at(b"1", 0);
        }
    }

    /// Removes the temporary files that processes killed halfway through a write left in
    /// `tmp/`: those older than ten minutes, since a live write renames its file into
    /// place within moments. Returns how many it removed.
    pub fn sweep_temporary_files(&self) -> Result<usize, StoreError> {
        let dir = self.tmp_dir();
        let mut removed = 0;
        for name in list_names(&dir)? {
            let path = dir.join(name);
            let abandoned = fs::metadata(&path)
                .and_then(|meta| meta.modified())
                .is_ok_and(|at| at.elapsed().is_ok_and(|age| age > ABANDONED_AFTER));
            if abandoned {
                remove_file(&path)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Notes that `marker` makes its task claimable if it is a claim-index marker.
    fn note_marker(&self, marker: &Path) {
        if marker.starts_with(self.root.join("pending")) {
            self.work_appeared.store(true, Ordering::Relaxed);
        }
    }

    /// Sets how long a lease lasts unless renewed.
    pub fn with_lease(mut self, lease: Duration) -> FileStore {
        self.lease = lease;
        self
    }

    /// Sets the delay before the first retry of a failed task (doubled for each further one).
    pub fn with_backoff(mut self, backoff: Duration) -> FileStore {
        self.backoff = backoff;
        self
    }

    /// The queue folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn task_path(&self, id: &str) -> PathBuf {
        self.root.join("tasks").join(format!("{id}.json"))
    }

    fn pending_dir(&self, task_type: &str) -> PathBuf {
        self.root.join("pending").join(task_type)
    }

    fn pending_marker(&self, task: &Task) -> PathBuf {
        let id: u64 = task.id.parse().unwrap_or(0);
        self.pending_dir(&task.task_type)
            .join(format!("{:010}-{:010}", task.priority, id / BUCKET))
            .join(format!("{:02}", (id % BUCKET) / SUB_BUCKET))
            .join(format!("{id:020}"))
    }

    fn blocked_marker(&self, task: &Task) -> PathBuf {
        self.root
            .join("blocked")
            .join(&task.task_type)
            .join(&task.id)
    }

    fn pause_marker(&self, scope: &PauseScope) -> PathBuf {
        let paused = self.root.join("paused");
        match scope {
            PauseScope::Queue => paused.join("queue"),
            PauseScope::Type(task_type) => paused.join("type").join(task_type),
            PauseScope::Task(id) => paused.join("task").join(id),
        }
    }

    fn finished_marker(&self, status: TaskStatus, id: &str) -> PathBuf {
        self.root.join(status.as_str()).join(id)
    }

    /// The marker that says where the task is: the claim index while it is pending (the
    /// delayed one while it waits for a retry), `blocked/`, `running/`, or the folder of its
    /// finished state.
    fn state_marker(&self, task: &Task) -> PathBuf {
        match task.status {
            TaskStatus::Pending if task.retry_at.is_some() => self.delayed_marker(task),
            TaskStatus::Pending => self.pending_marker(task),
            TaskStatus::Blocked => self.blocked_marker(task),
            TaskStatus::Running => self.running_marker(&task.id),
            finished => self.finished_marker(finished, &task.id),
        }
    }

    /// Every marker the task can have, as its fields stand now.
    fn markers(&self, task: &Task) -> Vec<PathBuf> {
        let mut markers = vec![
            self.pending_marker(task),
            self.delayed_marker(task),
            self.blocked_marker(task),
            self.running_marker(&task.id),
        ];
        markers.extend(FINISHED.map(|status| self.finished_marker(status, &task.id)));
        markers
    }

    /// Creates the marker of the task's state: before the task file says so, by the store's
    /// crash rule.
    fn index_task(&self, task: &Task) -> Result<(), StoreError> {
        let marker = self.state_marker(task);
        self.note_marker(&marker);
        create_marker(&marker)
    }

    /// Moves the running marker of a task that has just left the running state (its file
    /// written already) to the marker of its state now. If the process dies before, the expiry
    /// scan does it, since it finds a running marker whose task is not running.
    fn settle_running_marker(&self, task: &Task) -> Result<(), StoreError> {
        let marker = self.state_marker(task);
        self.note_marker(&marker);
        if self.limits.contains_key(&task.task_type) {
            // A slot of a limited type is free: a worker waiting for one may claim now.
            self.work_appeared.store(true, Ordering::Relaxed);
        }
        move_marker(&self.running_marker(&task.id), &marker)
    }

    /// Whether a claim holds task `id`'s running marker: it has moved the marker and not yet
    /// written the task file (see [`QueueStore::claim`]).
    fn claim_in_flight(&self, id: &str) -> bool {
        File::open(self.running_marker(id))
            .is_ok_and(|marker| matches!(marker.try_lock(), Err(fs::TryLockError::WouldBlock)))
    }

    /// The task behind a running marker that no longer belongs to it: its file does not say
    /// running and no claim is in flight. The file is read after that check, since a claim may
    /// have ended in between. `None` when the marker belongs (or the task file is missing).
    fn stale_running_task(&self, id: &str) -> Result<Option<Task>, StoreError> {
        if self.claim_in_flight(id) {
            return Ok(None);
        }
        Ok(self
            .read_task(id)?
            .filter(|task| task.status != TaskStatus::Running))
    }

    /// Waits until no claim of task `id` is in flight, so that its task file is final. The
    /// caller holds the queue lock, so no new claim can start.
    fn await_claim(&self, id: &str) -> Result<(), StoreError> {
        let path = self.running_marker(id);
        match File::open(&path) {
            Ok(marker) => marker.lock().map_err(io_err(&path)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(io_err(&path)(err)),
        }
    }

    /// Removes `markers` (from [`Self::markers`], taken before the task changed) except the
    /// marker of its state now: after the task file says so. Also heals markers that a process
    /// killed halfway through an operation left behind.
    fn drop_other_markers(&self, markers: Vec<PathBuf>, task: &Task) -> Result<(), StoreError> {
        let keep = self.state_marker(task);
        for marker in markers.into_iter().filter(|m| *m != keep) {
            remove_file(&marker)?;
        }
        Ok(())
    }

    /// The best pending marker of `types` not in `skip`: lowest priority number, then lowest
    /// id. Lists only the first non-empty bucket and sub-bucket of each type; empty folders are
    /// removed on the way.
    fn best_pending(
        &self,
        types: &[String],
        skip: &HashSet<PathBuf>,
    ) -> Result<Option<(PathBuf, String)>, StoreError> {
        let mut best: Option<PathBuf> = None;
        for task_type in types {
            let Some(marker) = first_marker(&self.pending_dir(task_type), 2, skip, true)? else {
                continue;
            };
            if best
                .as_ref()
                .is_none_or(|b| index_key(&marker) < index_key(b))
            {
                best = Some(marker);
            }
        }
        Ok(best.map(|marker| {
            let name = marker.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let id = name.trim_start_matches('0').to_string();
            (marker, id)
        }))
    }

    fn delayed_dir(&self, task_type: &str) -> PathBuf {
        self.root.join("delayed").join(task_type)
    }

    /// The marker of a task waiting for its `retry_at`; its name sorts by that time.
    fn delayed_marker(&self, task: &Task) -> PathBuf {
        let due = task.retry_at.map_or(0, |t| t.as_millisecond().max(0));
        self.delayed_dir(&task.task_type)
            .join(format!("{due:020}-{:0>20}", task.id))
    }

    /// The limited types among `types` that have as many tasks running as their limit allows.
    /// Reads the running tasks, which are few. The caller holds the lock.
    fn types_at_limit(&self, types: &[String]) -> Result<HashSet<String>, StoreError> {
        let limited: Vec<&String> = types
            .iter()
            .filter(|t| self.limits.contains_key(*t))
            .collect();
        if limited.is_empty() {
            return Ok(HashSet::new());
        }
        let mut running: std::collections::HashMap<String, usize> = Default::default();
        // Counted by marker, whatever the task file says yet: a claim in flight has not
        // written it, and a finish writes it before moving the marker.
        for id in list_names(&self.root.join("running"))? {
            if let Ok(Some(task)) = self.read_task(&id) {
                *running.entry(task.task_type).or_default() += 1;
            }
        }
        Ok(limited
            .into_iter()
            .filter(|t| running.get(*t).copied().unwrap_or(0) >= self.limits[*t])
            .cloned()
            .collect())
    }

    /// Like [`Self::best_pending`], ordering by aged priority: looks at the oldest task of each
    /// priority of each type (the one that has aged most) and reads those few task files.
    fn best_pending_aged(
        &self,
        types: &[String],
        skip: &HashSet<PathBuf>,
        step: Duration,
    ) -> Result<Option<(PathBuf, String)>, StoreError> {
        let now = Timestamp::now();
        let mut best: Option<((u32, u64), PathBuf, String)> = None;
        for task_type in types {
            let type_dir = self.pending_dir(task_type);
            let mut slots = list_names(&type_dir)?;
            slots.sort_unstable();
            let mut seen_priority = None;
            for slot in slots {
                let priority = slot.split('-').next().unwrap_or_default().to_string();
                if seen_priority.as_ref() == Some(&priority) {
                    continue; // this priority's oldest task is already a candidate
                }
                let Some(marker) = first_marker(&type_dir.join(&slot), 1, skip, true)? else {
                    let _ = fs::remove_dir(type_dir.join(&slot));
                    continue;
                };
                seen_priority = Some(priority);
                let name = marker.file_name().and_then(|n| n.to_str()).unwrap_or("");
                let id = name.trim_start_matches('0').to_string();
                let Ok(Some(task)) = self.read_task(&id) else {
                    // Stale or unreadable: let the claim loop deal with it first.
                    return Ok(Some((marker, id)));
                };
                let key = (
                    aged_priority(task.priority, task.created_at, now, step),
                    id.parse().unwrap_or(u64::MAX),
                );
                if best.as_ref().is_none_or(|(k, _, _)| key < *k) {
                    best = Some((key, marker, id));
                }
            }
        }
        Ok(best.map(|(_, marker, id)| (marker, id)))
    }

    fn running_marker(&self, id: &str) -> PathBuf {
        self.root.join("running").join(id)
    }

    /// Takes the queue lock, waiting as long as needed, then finishes any add a dead process
    /// left half done.
    fn lock(&self) -> Result<QueueLock<'_>, StoreError> {
        let path = self.root.join("lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        file.lock().map_err(io_err(&path))?;
        let guard = QueueLock {
            _file: file,
            store: self,
        };
        self.replay_intents()?;
        Ok(guard)
    }

    /// The adds whose intent is written but not yet (fully) applied, oldest first.
    fn pending_intents(&self) -> Result<Vec<(PathBuf, AddIntent)>, StoreError> {
        self.read_intents(&list_names(&self.root.join("intents"))?)
    }

    /// The add intents among `names` (the listing of `intents/`), oldest first.
    fn read_intents(&self, names: &[String]) -> Result<Vec<(PathBuf, AddIntent)>, StoreError> {
        let dir = self.root.join("intents");
        let mut names: Vec<&String> = names.iter().filter(|n| n.ends_with(".json")).collect();
        names.sort();
        let mut intents = Vec::with_capacity(names.len());
        for name in names {
            let path = dir.join(name);
            let bytes = match fs::read(&path) {
                Ok(bytes) => bytes,
                // Applied and removed since the listing.
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => return Err(io_err(&path)(err)),
            };
            let intent = serde_json::from_slice(&bytes).map_err(|err| StoreError::Corrupt {
                path: path.clone(),
                reason: err.to_string(),
            })?;
            intents.push((path, intent));
        }
        Ok(intents)
    }

    /// Finishes what dead processes left half done: adds, then the settling of dependents.
    fn replay_intents(&self) -> Result<(), StoreError> {
        let names = list_names(&self.root.join("intents"))?;
        if names.is_empty() {
            return Ok(());
        }
        for (path, intent) in self.read_intents(&names)? {
            self.apply_intent(&intent)?;
            remove_file(&path)?;
        }
        self.replay_settling(&names)
    }

    /// Writes the tasks of an add and their index, then makes them durable. Nothing here needs
    /// its own fsync: until the closing commit the intent holds the tasks, and a replay after a
    /// power loss writes them again.
    fn apply_intent(&self, intent: &AddIntent) -> Result<(), StoreError> {
        for task in &intent.tasks {
            self.index_dependencies(task)?;
            self.index_task(task)?;
            write_file(
                &self.tmp_dir(),
                &self.task_path(&task.id),
                &task_bytes(task),
                false,
            )?;
        }
        let next = self.root.join("next-id");
        write_file(
            &self.tmp_dir(),
            &next,
            intent.next_id.to_string().as_bytes(),
            false,
        )?;
        self.commit()
    }

    /// Makes the operation's changes survive a power loss, when the queue is durable. Claims and
    /// lease renewals skip it: losing one only means the task runs again, which at-least-once
    /// execution allows; every operation that records an outcome or adds work ends with it.
    fn commit(&self) -> Result<(), StoreError> {
        if self.durable {
            sync_file_system(&self.root)?;
        }
        Ok(())
    }

    /// Releases the lock, then commits. The caller still returns only once its changes are
    /// durable, but other processes need not wait for the flush: their operations proceed, and
    /// workers finishing at the same moment share one journal commit (group commit across
    /// processes).
    fn commit_unlocked(&self, lock: QueueLock<'_>) -> Result<(), StoreError> {
        drop(lock);
        self.commit()
    }

    fn next_id(&self) -> Result<u64, StoreError> {
        let path = self.root.join("next-id");
        match fs::read_to_string(&path) {
            Ok(text) => text.trim().parse().map_err(|_| StoreError::Corrupt {
                path: path.clone(),
                reason: format!("expected a number, found {:?}", text.trim()),
            }),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(1),
            Err(err) => Err(io_err(&path)(err)),
        }
    }

    fn write_task(&self, task: &Task) -> Result<(), StoreError> {
        write_file(
            &self.tmp_dir(),
            &self.task_path(&task.id),
            &task_bytes(task),
            self.durable,
        )
    }

    /// Reads a task file; `None` when it does not exist.
    fn read_task(&self, id: &str) -> Result<Option<Task>, StoreError> {
        match self.read_task_bytes(id)? {
            Some(bytes) => self.parse_task(id, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// A task file's bytes as they are; `None` when it does not exist.
    fn read_task_bytes(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.task_path(id);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(io_err(&path)(err)),
        }
    }

    fn parse_task(&self, id: &str, bytes: &[u8]) -> Result<Task, StoreError> {
        let corrupt = |reason| StoreError::Corrupt {
            path: self.task_path(id),
            reason,
        };
        let task: Task = serde_json::from_slice(bytes).map_err(|err| corrupt(err.to_string()))?;
        if task.id != id {
            return Err(corrupt(format!("holds task id {:?}", task.id)));
        }
        Ok(task)
    }

    /// Reads a task that a lease or a marker says exists.
    fn leased_task(&self, lease: &Lease) -> Result<Task, StoreError> {
        let task = self
            .read_task(&lease.task_id)?
            .ok_or_else(|| StoreError::NotFound(lease.task_id.clone()))?;
        check_lease(task, lease)
    }

    /// Reads a leased task and writes, without the lock, what finishing it with `outcome` makes
    /// of it to a fsynced temporary file. Returns the task file's bytes as read, so that the
    /// caller can check under the lock that nothing (a renewal, a cancel request) changed it.
    fn prepare_finish(
        &self,
        lease: &Lease,
        outcome: Outcome,
    ) -> Result<(Vec<u8>, Task, tempfile::NamedTempFile), StoreError> {
        let before = self
            .read_task_bytes(&lease.task_id)?
            .ok_or_else(|| StoreError::NotFound(lease.task_id.clone()))?;
        let task = check_lease(self.parse_task(&lease.task_id, &before)?, lease)?;
        let task = self.finished_task(task, outcome);
        let tmp = prepare_file(&self.tmp_dir(), &task_bytes(&task), true)?;
        Ok((before, task, tmp))
    }

    /// The part of [`QueueStore::finish`] under the lock, given what
    /// [`Self::prepare_finish`] made.
    fn finish_prepared(
        &self,
        lease: &Lease,
        outcome: Outcome,
        prepared: Option<(Vec<u8>, Task, tempfile::NamedTempFile)>,
    ) -> Result<Task, StoreError> {
        let lock = self.lock()?;
        let (task, tmp) = match prepared {
            Some((before, task, tmp))
                if self.read_task_bytes(&lease.task_id)?.as_ref() == Some(&before) =>
            {
                (task, Some(tmp))
            }
            _ => (self.finished_task(self.leased_task(lease)?, outcome), None),
        };
        // A task pending again (a retry after a backoff) leaves the tasks after it as they are.
        let settling = task.status != TaskStatus::Pending && self.begin_settling(&task.id)?;
        match tmp {
            Some(tmp) => install_file(tmp, &self.task_path(&task.id))?,
            None => self.write_task(&task)?,
        }
        self.settle_running_marker(&task)?;
        if settling {
            self.settle_dependents(&task)?;
        }
        self.commit_unlocked(lock)?;
        Ok(task)
    }

    /// What ending its attempt with `outcome` makes of a running task: finished, or pending
    /// again after a backoff when the failure is retryable and attempts are left.
    fn finished_task(&self, mut task: Task, outcome: Outcome) -> Task {
        let now = Timestamp::now();
        match outcome {
            Outcome::Success(result) => {
                end_attempt(&mut task, AttemptStatus::Completed, None, now);
                finish_task(&mut task, TaskStatus::Completed, now);
                task.result = Some(result);
                task.error = None;
            }
            Outcome::Failure {
                error,
                result,
                retryable,
            } => {
                task.result = result;
                task.error = Some(format!("attempt {}: {error}", task.attempts));
                if task.cancel_requested {
                    end_attempt(&mut task, AttemptStatus::Cancelled, Some(error), now);
                    finish_task(&mut task, TaskStatus::Cancelled, now);
                } else if retryable && task.attempts < task.max_attempts {
                    end_attempt(&mut task, AttemptStatus::Failed, Some(error), now);
                    let delay = SignedDuration::try_from(self.backoff_for(task.attempts))
                        .unwrap_or(SignedDuration::MAX);
                    task.status = TaskStatus::Pending;
                    task.duration_ms = task.elapsed_ms(now);
                    task.lease_expires_at = None;
                    task.retry_at = Some(now.saturating_add(delay).unwrap_or(now));
                } else {
                    end_attempt(&mut task, AttemptStatus::Failed, Some(error), now);
                    finish_task(&mut task, TaskStatus::Failed, now);
                }
            }
        }
        task
    }

    fn warn_once(&self, err: &StoreError) {
        let path = match err {
            StoreError::Corrupt { path, .. } => path.clone(),
            _ => PathBuf::new(),
        };
        if self.warned.lock().expect("warned lock").insert(path) {
            self.warnings
                .lock()
                .expect("warnings lock")
                .push(format!("{err}; skipped"));
        }
    }

    fn lease_until(&self, now: Timestamp) -> Timestamp {
        let lease = SignedDuration::try_from(self.lease).unwrap_or(SignedDuration::MAX);
        now.saturating_add(lease).unwrap_or(now)
    }

    /// Runs [`Self::scan_expired_leases`] at most a few times per lease period per process,
    /// since it reads every running task.
    fn expire_leases_if_due(&self) -> Result<(), StoreError> {
        let interval = (self.lease / 10).clamp(Duration::from_millis(10), Duration::from_secs(1));
        {
            let mut last = self.last_expiry_scan.lock().expect("expiry lock");
            if last.is_some_and(|at| at.elapsed() < interval) {
                return Ok(());
            }
            *last = Some(Instant::now());
        }
        self.scan_expired_leases().map(drop)
    }

    /// Returns the tasks whose lease ran out to pending, or fails them when no attempt is left.
    /// Returns how many it found. The caller holds the lock.
    fn scan_expired_leases(&self) -> Result<usize, StoreError> {
        let now = Timestamp::now();
        let mut expired = 0;
        for id in list_names(&self.root.join("running"))? {
            let marker = self.running_marker(&id);
            let mut task = match self.read_task(&id) {
                Ok(Some(task)) => task,
                Ok(None) => {
                    remove_file(&marker)?;
                    continue;
                }
                Err(err @ StoreError::Corrupt { .. }) => {
                    self.warn_once(&err);
                    continue;
                }
                Err(err) => return Err(err),
            };
            if task.status != TaskStatus::Running {
                // A claim or finish died between its marker move and its task write.
                if let Some(task) = self.stale_running_task(&id)? {
                    self.settle_running_marker(&task)?;
                }
                continue;
            }
            if task.lease_expires_at.is_some_and(|until| until > now) {
                continue;
            }
            let holder = task.worker.clone().unwrap_or_else(|| "?".into());
            let reason = format!("lease expired (worker {holder} stopped renewing it)");
            let error = format!("attempt {}: {reason}", task.attempts);
            end_attempt(&mut task, AttemptStatus::Expired, Some(reason), now);
            if task.attempts < task.max_attempts && !task.cancel_requested {
                let markers = self.markers(&task);
                task.status = TaskStatus::Pending;
                task.error = Some(error);
                self.index_task(&task)?;
                self.write_task(&task)?;
                self.drop_other_markers(markers, &task)?;
            } else {
                let status = if task.cancel_requested {
                    TaskStatus::Cancelled
                } else {
                    TaskStatus::Failed
                };
                finish_task(&mut task, status, now);
                task.error = Some(format!(
                    "{error}; no attempt left ({} of {})",
                    task.attempts, task.max_attempts
                ));
                let settling = self.begin_settling(&task.id)?;
                self.index_task(&task)?;
                self.write_task(&task)?;
                if settling {
                    self.settle_dependents(&task)?;
                }
            }
            expired += 1;
            remove_file(&marker)?;
        }
        if expired > 0 {
            self.commit()?;
        }
        Ok(expired)
    }

    /// Moves the delayed tasks of `types` whose backoff is over into the claim index.
    /// The caller holds the lock.
    fn promote_due_retries(&self, types: &[String]) -> Result<(), StoreError> {
        let now_ms = Timestamp::now().as_millisecond();
        for task_type in types {
            let dir = self.delayed_dir(task_type);
            let mut names = list_names(&dir)?;
            names.sort();
            for name in names {
                let Some((due, id)) = name.split_once('-') else {
                    continue;
                };
                if due.parse::<i64>().is_ok_and(|due| due > now_ms) {
                    break; // sorted by due time: the rest are later
                }
                let marker = dir.join(&name);
                let id = id.trim_start_matches('0');
                match self.read_task(id) {
                    Ok(Some(mut task)) if task.status == TaskStatus::Pending => {
                        task.retry_at = None;
                        self.index_task(&task)?;
                        self.write_task(&task)?;
                    }
                    Ok(_) => {}
                    Err(err @ StoreError::Corrupt { .. }) => {
                        self.warn_once(&err);
                        continue;
                    }
                    Err(err) => return Err(err),
                }
                remove_file(&marker)?;
            }
        }
        Ok(())
    }

    /// Counts tasks per state from the marker folders alone.
    fn index_summary(&self) -> Result<Summary, StoreError> {
        let mut summary = Summary::default();
        let mut pending = |task_type: String, count: usize| {
            if count > 0 {
                *summary.pending_by_type.entry(task_type).or_default() += count;
            }
        };
        for task_type in list_names(&self.root.join("pending"))? {
            let type_dir = self.pending_dir(&task_type);
            pending(task_type.clone(), count_markers(&type_dir, 2)?);
        }
        for task_type in list_names(&self.root.join("delayed"))? {
            let count = list_names(&self.delayed_dir(&task_type))?.len();
            pending(task_type, count);
        }
        // Tasks of an add that its process did not finish applying, not yet indexed.
        for (_, intent) in self.pending_intents()? {
            for task in intent.tasks {
                if !self.pending_marker(&task).exists() {
                    pending(task.task_type, 1);
                }
            }
        }
        let pending_total = summary.pending_by_type.values().sum();
        summary.counts.insert(TaskStatus::Pending, pending_total);
        let blocked = count_markers(&self.root.join("blocked"), 1)?;
        summary.counts.insert(TaskStatus::Blocked, blocked);
        let running = list_names(&self.root.join("running"))?.len();
        summary.counts.insert(TaskStatus::Running, running);
        for status in FINISHED {
            let count = list_names(&self.root.join(status.as_str()))?.len();
            summary.counts.insert(status, count);
        }
        Ok(summary)
    }

    /// True when every running marker belongs to a running task. There are only as many as
    /// tasks run at once, so this is cheap; together with the task count it catches what a
    /// crash in the middle of a claim, finish or expiry leaves behind.
    /// The counts from the index, when they add up to the number of tasks and every running
    /// marker belongs to a running task.
    fn consistent_index_summary(&self) -> Result<Option<Summary>, StoreError> {
        let summary = self.index_summary()?;
        let consistent = summary.counts.values().sum::<usize>() == self.task_count()?
            && self.running_index_is_current()?;
        Ok(consistent.then_some(summary))
    }

    fn running_index_is_current(&self) -> Result<bool, StoreError> {
        for id in list_names(&self.root.join("running"))? {
            match self.read_task(&id) {
                Ok(Some(task)) if task.status == TaskStatus::Running => {}
                Ok(Some(_)) => {
                    if self.stale_running_task(&id)?.is_some() {
                        return Ok(false);
                    }
                }
                Ok(None) => return Ok(false),
                Err(err @ StoreError::Corrupt { .. }) => self.warn_once(&err),
                Err(err) => return Err(err),
            }
        }
        Ok(true)
    }

    /// How many tasks exist: ids are given out consecutively and never reused or removed.
    fn task_count(&self) -> Result<usize, StoreError> {
        let committed = self.next_id()?.saturating_sub(1);
        let unapplied = self
            .pending_intents()?
            .iter()
            .map(|(_, intent)| intent.next_id.saturating_sub(1))
            .max()
            .unwrap_or(0);
        Ok(usize::try_from(committed.max(unapplied)).unwrap_or(usize::MAX))
    }

    /// Makes every marker agree with its task file: each task gets exactly the marker of its
    /// state, and markers of other states are removed. Returns the counts it found. Reads every
    /// task, so it runs only when the index is found inconsistent. The caller holds the lock.
    fn reindex(&self) -> Result<Summary, StoreError> {
        for id in list_names(&self.root.join("running"))? {
            self.await_claim(&id)?;
        }
        let mut summary = Summary::default();
        for task in self.tasks()? {
            self.index_task(&task)?;
            self.drop_other_markers(self.markers(&task), &task)?;
            if task.status == TaskStatus::Pending {
                *summary
                    .pending_by_type
                    .entry(task.task_type.clone())
                    .or_default() += 1;
            }
            *summary.counts.entry(task.status).or_default() += 1;
        }
        self.commit()?;
        Ok(summary)
    }

    /// Expires every lease that has run out, now, and says how many did. Workers do this on
    /// their own as they claim; this is for tools and tests that want it at a given moment.
    pub fn expire_leases(&self) -> Result<usize, StoreError> {
        let _lock = self.lock()?;
        self.scan_expired_leases()
    }

    /// The delay before the retry that follows failed attempt `attempt` (1-based): the base
    /// backoff doubled per earlier attempt, capped, then scaled by a random 50-100 % so that
    /// tasks failing together do not retry together.
    fn backoff_for(&self, attempt: u32) -> Duration {
        let doubled = self
            .backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        doubled
            .min(MAX_BACKOFF)
            .mul_f64(0.5 + fastrand::f64() / 2.0)
    }
}

/// The first file (by name, depth-first) below `dir` that is `depth` folders down and not in
/// `skip`. With `prune`, folders found empty are removed: only under the queue lock, so that
/// nothing is being added to them.
fn first_marker(
    dir: &Path,
    depth: usize,
    skip: &HashSet<PathBuf>,
    prune: bool,
) -> Result<Option<PathBuf>, StoreError> {
    let mut names = list_names(dir)?;
    names.sort_unstable();
    for name in names {
        let path = dir.join(name);
        if depth == 0 {
            if !skip.contains(&path) {
                return Ok(Some(path));
            }
            continue;
        }
        if let Some(found) = first_marker(&path, depth - 1, skip, prune)? {
            return Ok(Some(found));
        }
        if prune {
            // Fails harmlessly when the folder still holds skipped markers.
            let _ = fs::remove_dir(&path);
        }
    }
    Ok(None)
}

/// What orders pending markers of different types: the three path components below the type
/// folder (priority and bucket, sub-bucket, id), all zero-padded.
fn index_key(marker: &Path) -> Vec<&std::ffi::OsStr> {
    let parts: Vec<_> = marker.iter().collect();
    parts[parts.len().saturating_sub(3)..].to_vec()
}

/// How many files lie `depth` folders below `dir`.
fn count_markers(dir: &Path, depth: usize) -> Result<usize, StoreError> {
    if depth == 0 {
        return Ok(list_names(dir)?.len());
    }
    list_names(dir)?
        .into_iter()
        .map(|name| count_markers(&dir.join(name), depth - 1))
        .sum()
}

/// The priority a task added at `created` is claimed at by `now`: one step lower per `step`
/// waited, down to 0.
fn aged_priority(priority: u32, created: Timestamp, now: Timestamp, step: Duration) -> u32 {
    let waited = now.duration_since(created).as_secs_f64().max(0.0);
    let steps = (waited / step.as_secs_f64()).floor();
    priority.saturating_sub(steps.min(f64::from(u32::MAX)) as u32)
}

/// A task file's contents.
fn task_bytes(task: &Task) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(task).expect("task serializes");
    bytes.push(b'\n');
    bytes
}

/// Ends the task's current attempt in its history.
fn end_attempt(task: &mut Task, status: AttemptStatus, error: Option<String>, now: Timestamp) {
    if let Some(entry) = task
        .history
        .iter_mut()
        .rev()
        .find(|a| a.attempt == task.attempts && a.status == AttemptStatus::Running)
    {
        entry.status = status;
        entry.finished_at = Some(now);
        entry.error = error;
    }
}

/// Moves a task to a finished state at `now`.
/// `task` if `lease` still holds it: running, same attempt, same worker.
fn check_lease(task: Task, lease: &Lease) -> Result<Task, StoreError> {
    let current = task.status == TaskStatus::Running
        && task.attempts == lease.attempt
        && task.worker.as_deref() == Some(lease.worker.as_str());
    if current {
        Ok(task)
    } else {
        Err(StoreError::LeaseLost {
            id: lease.task_id.clone(),
            attempt: lease.attempt,
        })
    }
}

fn finish_task(task: &mut Task, status: TaskStatus, now: Timestamp) {
    task.status = status;
    task.success = Some(status == TaskStatus::Completed);
    task.finished_at = Some(now);
    task.duration_ms = task.elapsed_ms(now);
    task.lease_expires_at = None;
    task.retry_at = None;
}

impl QueueStore for FileStore {
    fn add(&self, tasks: Vec<NewTask>) -> Result<Vec<Task>, StoreError> {
        for (index, task) in tasks.iter().enumerate() {
            validate_name("task type", &task.task_type)
                .map_err(|err| StoreError::InvalidTask(format!("task {}: {err}", index + 1)))?;
            if task.max_attempts == Some(0) {
                return Err(StoreError::InvalidTask(format!(
                    "task {}: maxAttempts must be at least 1",
                    index + 1
                )));
            }
        }
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let _lock = self.lock()?;
        let first = self.next_id()?;
        if self.task_path(&first.to_string()).exists() {
            return Err(StoreError::Corrupt {
                path: self.root.join("next-id"),
                reason: format!("task {first} already exists; next-id is behind the tasks"),
            });
        }
        let now = Timestamp::now();
        let count = tasks.len() as u64;
        let after = self.resolve_after(&tasks, first)?;
        let mut tasks: Vec<Task> = tasks
            .into_iter()
            .zip(after)
            .zip(first..)
            .map(|((new, after), id)| new.into_task(id.to_string(), after, now))
            .collect();
        self.settle_new_tasks(&mut tasks, now)?;
        let intent = AddIntent {
            tasks,
            next_id: first + count,
        };
        let path = self.root.join("intents").join(format!("{first:020}.json"));
        let bytes = serde_json::to_vec(&intent).expect("intent serializes");
        write_file(&self.tmp_dir(), &path, &bytes, self.durable)?;
        self.commit()?; // the add is decided: a replay finishes it whatever happens next
        self.apply_intent(&intent)?;
        // Left unsynced: every later commit persists the removal, and a replay before one
        // only rewrites tasks that nothing durable has changed since.
        remove_file(&path)?;
        Ok(intent.tasks)
    }

    fn claim(&self, worker: &str, types: &[String]) -> Result<Option<Claim>, StoreError> {
        let lock = self.lock()?;
        self.expire_leases_if_due()?;
        if self.pause_marker(&PauseScope::Queue).exists() {
            return Ok(None);
        }
        let at_limit = self.types_at_limit(types)?;
        let types: Vec<String> = types
            .iter()
            .filter(|t| !self.pause_marker(&PauseScope::Type(t.to_string())).exists())
            .filter(|t| !at_limit.contains(*t))
            .cloned()
            .collect();
        self.promote_due_retries(&types)?;
        let mut skip = HashSet::new();
        while let Some((marker, id)) = match self.aging {
            Some(step) => self.best_pending_aged(&types, &skip, step)?,
            None => self.best_pending(&types, &skip)?,
        } {
            if self.pause_marker(&PauseScope::Task(id.clone())).exists() {
                skip.insert(marker);
                continue;
            }
            let mut task = match self.read_task(&id) {
                Ok(Some(task)) => task,
                Ok(None) => {
                    remove_file(&marker)?;
                    continue;
                }
                Err(err @ StoreError::Corrupt { .. }) => {
                    self.warn_once(&err);
                    skip.insert(marker);
                    continue;
                }
                Err(err) => return Err(err),
            };
            if task.status != TaskStatus::Pending || marker != self.pending_marker(&task) {
                remove_file(&marker)?;
                continue;
            }
            let now = Timestamp::now();
            task.status = TaskStatus::Running;
            task.attempts += 1;
            task.worker = Some(worker.to_string());
            task.started_at = Some(now);
            task.finished_at = None;
            task.duration_ms = None;
            task.success = None;
            task.result = None;
            task.lease_expires_at = Some(self.lease_until(now));
            let waited = now.duration_since(task.created_at).as_millis().max(0);
            task.wait_ms = Some(u64::try_from(waited).unwrap_or(u64::MAX));
            task.aged_priority = self
                .aging
                .map(|step| aged_priority(task.priority, task.created_at, now, step))
                .filter(|aged| *aged < task.priority);
            task.history.push(Attempt {
                attempt: task.attempts,
                worker: worker.to_string(),
                started_at: now,
                finished_at: None,
                status: AttemptStatus::Running,
                error: None,
            });
            // Marker first: if we die before the task write, the expiry scan finds a pending
            // task behind a running marker and moves the marker back; after it, the lease
            // expires.
            let running = self.running_marker(&task.id);
            move_marker(&marker, &running)?;
            if self.durable {
                // The claim is decided by the marker's move. Its task write, with its flush,
                // happens after the lock is released, so that other claims need not wait out
                // the flush; meanwhile an flock on the running marker tells whoever finds a
                // running marker on a pending task that the claim is in flight, not dead.
                let in_flight = File::open(&running).map_err(io_err(&running))?;
                in_flight.lock().map_err(io_err(&running))?;
                drop(lock);
                self.write_task(&task)?;
                drop(in_flight);
            } else {
                self.write_task(&task)?;
            }
            let lease = Lease {
                task_id: task.id.clone(),
                attempt: task.attempts,
                worker: worker.to_string(),
            };
            return Ok(Some(Claim { task, lease }));
        }
        Ok(None)
    }

    fn renew(&self, lease: &Lease) -> Result<Renewal, StoreError> {
        let _lock = self.lock()?;
        let mut task = self.leased_task(lease)?;
        task.lease_expires_at = Some(self.lease_until(Timestamp::now()));
        self.write_task(&task)?;
        Ok(Renewal {
            cancel_requested: task.cancel_requested,
        })
    }

    fn finish(&self, lease: &Lease, outcome: Outcome) -> Result<Task, StoreError> {
        // In a durable queue the new task file is written and fsynced before the lock is
        // taken, so that other workers need not wait out that flush. It is used only if the
        // task file has not changed meanwhile; otherwise the work is redone under the lock.
        let prepared = if self.durable {
            Some(self.prepare_finish(lease, outcome.clone())?)
        } else {
            None
        };
        self.finish_prepared(lease, outcome, prepared)
    }

    fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let lock = self.lock()?;
        let mut task = self.leased_task(lease)?;
        end_attempt(&mut task, AttemptStatus::Released, None, Timestamp::now());
        task.status = TaskStatus::Pending;
        task.attempts = task.attempts.saturating_sub(1);
        task.worker = None;
        task.started_at = None;
        task.lease_expires_at = None;
        self.index_task(&task)?;
        self.write_task(&task)?;
        remove_file(&self.running_marker(&task.id))?;
        self.commit_unlocked(lock)
    }

    fn cancel(&self, id: &str) -> Result<Task, StoreError> {
        let lock = self.lock()?;
        self.await_claim(id)?;
        let mut task = self.get(id)?;
        match task.status {
            TaskStatus::Pending | TaskStatus::Blocked => {
                let markers = self.markers(&task);
                finish_task(&mut task, TaskStatus::Cancelled, Timestamp::now());
                task.success = None;
                task.error = Some("cancelled before it started".into());
                let settling = self.begin_settling(&task.id)?;
                self.index_task(&task)?;
                self.write_task(&task)?;
                self.drop_other_markers(markers, &task)?;
                if settling {
                    self.settle_dependents(&task)?;
                }
            }
            TaskStatus::Running => {
                task.cancel_requested = true;
                self.write_task(&task)?;
            }
            status => {
                return Err(StoreError::WrongState {
                    id: task.id,
                    status,
                    hint: "only a pending, blocked or running task can be cancelled",
                });
            }
        }
        self.commit_unlocked(lock)?;
        Ok(task)
    }

    fn retry(&self, id: &str) -> Result<Task, StoreError> {
        let lock = self.lock()?;
        let mut task = self.get(id)?;
        if !matches!(task.status, TaskStatus::Failed | TaskStatus::Cancelled) {
            return Err(StoreError::WrongState {
                id: task.id,
                status: task.status,
                hint: "only a failed or cancelled task can be retried",
            });
        }
        let markers = self.markers(&task);
        task.status = match self.prerequisites(&task)? {
            Prerequisites::Done => TaskStatus::Pending,
            Prerequisites::Waiting => TaskStatus::Blocked,
            Prerequisites::Broken(dep, status) => {
                return Err(StoreError::InvalidTask(format!(
                    "task {id} comes after task {dep}, which is {status}: retry task {dep} instead"
                )));
            }
        };
        task.cancelled_by = None;
        task.max_attempts = task.max_attempts.max(task.attempts + 1);
        task.cancel_requested = false;
        task.retry_at = None;
        task.finished_at = None;
        task.duration_ms = None;
        task.success = None;
        task.result = None;
        let settling = self.begin_settling(&task.id)?;
        self.index_task(&task)?;
        self.write_task(&task)?;
        self.drop_other_markers(markers, &task)?;
        if settling {
            self.settle_dependents(&task)?;
        }
        self.commit_unlocked(lock)?;
        Ok(task)
    }

    fn pause(&self, scope: &PauseScope) -> Result<(), StoreError> {
        match scope {
            PauseScope::Type(task_type) => validate_name("task type", task_type)?,
            PauseScope::Task(id) => drop(self.get(id)?),
            PauseScope::Queue => {}
        }
        create_marker(&self.pause_marker(scope))?;
        self.commit()
    }

    fn resume(&self, scope: &PauseScope) -> Result<(), StoreError> {
        if let PauseScope::Type(task_type) = scope {
            validate_name("task type", task_type)?;
        }
        remove_file(&self.pause_marker(scope))?;
        self.commit()?;
        self.ring_doorbell();
        Ok(())
    }

    fn paused(&self) -> Result<Vec<PauseScope>, StoreError> {
        let mut scopes = Vec::new();
        if self.pause_marker(&PauseScope::Queue).exists() {
            scopes.push(PauseScope::Queue);
        }
        let paused = self.root.join("paused");
        for name in list_names(&paused.join("type"))? {
            scopes.push(PauseScope::Type(name));
        }
        for name in list_names(&paused.join("task"))? {
            scopes.push(PauseScope::Task(name));
        }
        scopes.sort();
        Ok(scopes)
    }

    fn get(&self, id: &str) -> Result<Task, StoreError> {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(StoreError::NotFound(id.to_string()));
        }
        if let Some(task) = self.read_task(id)? {
            return Ok(task);
        }
        // Committed by an add that a killed process did not finish applying.
        self.pending_intents()?
            .into_iter()
            .flat_map(|(_, intent)| intent.tasks)
            .find(|task| task.id == id)
            .ok_or_else(|| StoreError::NotFound(id.to_string()))
    }

    fn tasks(&self) -> Result<Vec<Task>, StoreError> {
        // Intents first: an add is committed once its intent is written, so its tasks are shown
        // whole even if the process that wrote it died before writing their files. While an
        // intent exists nobody has claimed its tasks, so its copy is current.
        let intents = self.pending_intents()?;
        let mut by_id: std::collections::BTreeMap<u64, Task> = intents
            .into_iter()
            .flat_map(|(_, intent)| intent.tasks)
            .filter_map(|task| Some((task.id.parse().ok()?, task)))
            .collect();
        let ids: Vec<u64> = list_names(&self.root.join("tasks"))?
            .iter()
            .filter_map(|name| name.strip_suffix(".json")?.parse().ok())
            .collect();
        for id in ids {
            if by_id.contains_key(&id) {
                continue;
            }
            // A task removed between the listing and the read is simply not shown.
            if let Some(task) = self.read_task(&id.to_string())? {
                by_id.insert(id, task);
            }
        }
        Ok(by_id.into_values().collect())
    }

    fn recent_finished(&self, n: usize) -> Result<Vec<Task>, StoreError> {
        let mut ids: Vec<u64> = Vec::new();
        for status in FINISHED {
            let names = list_names(&self.root.join(status.as_str()))?;
            ids.extend(names.iter().filter_map(|name| name.parse::<u64>().ok()));
        }
        ids.sort_unstable_by(|a, b| b.cmp(a));
        let mut tasks = Vec::new();
        for id in ids.into_iter().take(n) {
            if let Some(task) = self.read_task(&id.to_string())? {
                tasks.push(task);
            }
        }
        Ok(tasks)
    }

    fn summary(&self) -> Result<Summary, StoreError> {
        if let Some(summary) = self.consistent_index_summary()? {
            return Ok(summary);
        }
        // Either an operation was halfway through when we looked, or a process died (or the
        // machine lost power) halfway through one. Under the lock only the second remains, and
        // then the index is rebuilt from the task files, which are the truth.
        let _lock = self.lock()?;
        match self.consistent_index_summary()? {
            Some(summary) => Ok(summary),
            None => self.reindex(),
        }
    }

    fn has_work(&self, types: &[String]) -> Result<bool, StoreError> {
        if !list_names(&self.root.join("intents"))?.is_empty() {
            return Ok(true);
        }
        for task_type in types {
            let type_dir = self.pending_dir(task_type);
            if first_marker(&type_dir, 2, &HashSet::new(), false)?.is_some() {
                return Ok(true);
            }
            let blocked = self.root.join("blocked").join(task_type);
            if !list_names(&self.delayed_dir(task_type))?.is_empty()
                || !list_names(&blocked)?.is_empty()
            {
                return Ok(true);
            }
        }
        // By marker, as the limits count: a claim in flight has not written its task file yet.
        for id in list_names(&self.root.join("running"))? {
            if let Some(task) = self.read_task(&id)?
                && types.contains(&task.task_type)
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn put_worker(&self, record: &WorkerRecord) -> Result<(), StoreError> {
        validate_name("worker name", &record.name)?;
        let path = self
            .root
            .join("workers")
            .join(format!("{}.json", record.name));
        let bytes = serde_json::to_vec_pretty(record).expect("worker record serializes");
        // A worker record is rewritten every heartbeat and means nothing after a power loss.
        write_file(&self.tmp_dir(), &path, &bytes, false)
    }

    fn remove_worker(&self, name: &str) -> Result<(), StoreError> {
        validate_name("worker name", name)?;
        remove_file(&self.root.join("workers").join(format!("{name}.json")))
    }

    fn workers(&self) -> Result<Vec<WorkerRecord>, StoreError> {
        let dir = self.root.join("workers");
        let mut names = list_names(&dir)?;
        names.retain(|n| n.ends_with(".json"));
        names.sort();
        let mut workers = Vec::new();
        for name in names {
            let path = dir.join(name);
            let bytes = match fs::read(&path) {
                Ok(bytes) => bytes,
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => return Err(io_err(&path)(err)),
            };
            let record = serde_json::from_slice(&bytes).map_err(|err| StoreError::Corrupt {
                path: path.clone(),
                reason: err.to_string(),
            })?;
            workers.push(record);
        }
        Ok(workers)
    }
    fn append_log(&self, id: &str, line: &str) -> Result<(), StoreError> {
        use std::io::Write;
        let dir = self.root.join("logs");
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let path = dir.join(format!("{id}.log"));
        let mut file = File::options()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        // One write per line, so lines from concurrent writers never interleave.
        file.write_all(format!("{line}\n").as_bytes())
            .map_err(io_err(&path))
    }

    fn read_log(&self, id: &str, from: u64) -> Result<(String, u64), StoreError> {
        use std::io::{Read, Seek};
        self.get(id)?;
        let path = self.root.join("logs").join(format!("{id}.log"));
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok((String::new(), 0)),
            Err(err) => return Err(io_err(&path)(err)),
        };
        file.seek(io::SeekFrom::Start(from))
            .map_err(io_err(&path))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io_err(&path))?;
        // Only whole lines: a line being written is read next time.
        let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        bytes.truncate(whole);
        let next = from + whole as u64;
        Ok((String::from_utf8_lossy(&bytes).into_owned(), next))
    }

    fn lease_duration(&self) -> Duration {
        self.lease
    }

    fn take_warnings(&self) -> Vec<String> {
        std::mem::take(&mut *self.warnings.lock().expect("warnings lock"))
    }
}

#[cfg(unix)]
fn create_private_dir(root: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .map_err(io_err(root))
}

#[cfg(not(unix))]
fn create_private_dir(root: &Path) -> Result<(), StoreError> {
    fs::create_dir_all(root).map_err(io_err(root))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn new(task_type: &str, priority: u32) -> NewTask {
        NewTask {
            task_type: task_type.into(),
            priority: Some(priority),
            ..NewTask::default()
        }
    }

    fn store(lease: Duration) -> (tempfile::TempDir, FileStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::init(&dir.path().join("q"))
            .unwrap()
            .with_lease(lease);
        (dir, store)
    }

    fn types(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn claim_order_holds_across_buckets() {
        let (_dir, store) = store(DEFAULT_LEASE);
        let many = (BUCKET + SUB_BUCKET) as usize;
        store.add(vec![new("a", 9); many]).unwrap();
        let urgent = store.add(vec![new("a", 1)]).unwrap().remove(0);
        let a = types(&["a"]);
        let first = store.claim("w", &a).unwrap().unwrap();
        assert_eq!(
            first.task.id, urgent.id,
            "priority beats age, whatever the bucket"
        );
        let mut ids = Vec::new();
        for _ in 0..(SUB_BUCKET + 2) {
            let claim = store.claim("w", &a).unwrap().unwrap();
            ids.push(claim.task.id.parse::<u64>().unwrap());
        }
        let want: Vec<u64> = (1..=SUB_BUCKET + 2).collect();
        assert_eq!(ids, want, "oldest first across sub-buckets");
        store.release(&first.lease).unwrap();
        assert_eq!(store.claim("w", &a).unwrap().unwrap().task.id, urgent.id);
        assert_eq!(
            store.summary().unwrap().counts[&TaskStatus::Pending],
            many - 66
        );
    }

    #[test]
    fn summary_rebuilds_an_index_that_disagrees_with_the_tasks() {
        let (_dir, store) = store(DEFAULT_LEASE);
        let tasks = store.add(vec![new("a", 1), new("a", 2)]).unwrap();
        // As a power loss might leave it: one pending marker lost, a stale running marker.
        fs::remove_file(store.pending_marker(&tasks[0])).unwrap();
        create_marker(&store.running_marker(&tasks[1].id)).unwrap();
        let summary = store.summary().unwrap();
        assert_eq!(summary.counts[&TaskStatus::Pending], 2);
        assert_eq!(summary.counts.get(&TaskStatus::Running), None);
        assert!(!store.running_marker(&tasks[1].id).exists());
        let claim = store.claim("w", &types(&["a"])).unwrap().unwrap();
        assert_eq!(claim.task.id, tasks[0].id, "the lost marker is back");
    }

    #[test]
    fn a_claim_or_finish_killed_between_marker_move_and_task_write_is_healed() {
        let (_dir, store) = store(DEFAULT_LEASE);
        let tasks = store.add(vec![new("a", 1), new("a", 2)]).unwrap();
        // Finish of task 1 killed after its task write: a completed task behind a running marker.
        let claim = store.claim("w", &types(&["a"])).unwrap().unwrap();
        assert_eq!(claim.task.id, tasks[0].id);
        let mut done = claim.task.clone();
        done.status = TaskStatus::Completed;
        store.write_task(&done).unwrap();
        // Claim of task 2 killed after its marker moved: a pending task behind one.
        fs::rename(
            store.pending_marker(&tasks[1]),
            store.running_marker(&tasks[1].id),
        )
        .unwrap();

        assert_eq!(store.expire_leases().unwrap(), 0, "no lease ran out");
        assert!(!store.running_marker(&tasks[0].id).exists());
        assert!(!store.running_marker(&tasks[1].id).exists());
        assert!(
            store
                .finished_marker(TaskStatus::Completed, &tasks[0].id)
                .exists()
        );
        let again = store.claim("w", &types(&["a"])).unwrap().unwrap();
        assert_eq!(
            again.task.id, tasks[1].id,
            "the interrupted claim's task is claimable"
        );
        let summary = store.summary().unwrap();
        assert_eq!(summary.counts[&TaskStatus::Running], 1);
        assert_eq!(summary.counts[&TaskStatus::Completed], 1);
    }

    #[test]
    fn dependents_follow_a_prerequisite_whose_finisher_died_before_settling_them() {
        let (_dir, store) = store(DEFAULT_LEASE);
        let after = |i| NewTask {
            after: vec![crate::Dependency::Batch(i)],
            ..new("a", 5)
        };
        // Two chains: 1 <- 2 <- 3 and 4 <- 5 <- 6.
        let tasks = store
            .add(vec![
                new("a", 1),
                after(0),
                after(1),
                new("a", 2),
                after(3),
                after(4),
            ])
            .unwrap();
        let status = |id: &str| store.get(id).unwrap().status;
        let a = types(&["a"]);

        // Task 1 completes, but its finisher dies after writing it: the note is all that is left.
        let first = store.claim("w", &a).unwrap().unwrap();
        assert_eq!(first.task.id, tasks[0].id);
        let mut done = first.task.clone();
        assert!(store.begin_settling(&done.id).unwrap());
        done.status = TaskStatus::Completed;
        store.write_task(&done).unwrap();
        store.settle_running_marker(&done).unwrap();

        // Task 4 fails for good, and the canceller dies after cancelling task 5 but not task 6.
        let fourth = store.claim("w", &a).unwrap().unwrap();
        assert_eq!(
            fourth.task.id, tasks[3].id,
            "the note was settled under that lock"
        );
        assert_eq!(status(&tasks[1].id), TaskStatus::Pending);
        assert_eq!(status(&tasks[2].id), TaskStatus::Blocked);
        let mut failed = fourth.task.clone();
        assert!(store.begin_settling(&failed.id).unwrap());
        failed.status = TaskStatus::Failed;
        store.write_task(&failed).unwrap();
        store.settle_running_marker(&failed).unwrap();
        let mut fifth = store.get(&tasks[4].id).unwrap();
        let markers = store.markers(&fifth);
        dependencies::cancel_for(&mut fifth, &failed.id, failed.status, Timestamp::now());
        store.index_task(&fifth).unwrap();
        store.write_task(&fifth).unwrap();
        store.drop_other_markers(markers, &fifth).unwrap();

        drop(store.lock().unwrap()); // as any operation does first
        assert_eq!(status(&tasks[4].id), TaskStatus::Cancelled);
        assert_eq!(
            status(&tasks[5].id),
            TaskStatus::Cancelled,
            "the rest of the chain follows"
        );
        assert!(list_names(&store.root.join("intents")).unwrap().is_empty());
    }

    #[test]
    fn a_cancel_request_made_while_a_finish_is_prepared_is_not_lost() {
        let (_dir, store) = store(DEFAULT_LEASE);
        let task = store.add(vec![new("a", 1)]).unwrap().remove(0);
        let claim = store.claim("w", &types(&["a"])).unwrap().unwrap();
        let failure = Outcome::Failure {
            error: "it broke".into(),
            result: None,
            retryable: false,
        };
        let prepared = store.prepare_finish(&claim.lease, failure.clone()).unwrap();
        assert_eq!(prepared.1.status, TaskStatus::Failed);
        store.cancel(&task.id).unwrap();
        let done = store
            .finish_prepared(&claim.lease, failure, Some(prepared))
            .unwrap();
        assert_eq!(done.status, TaskStatus::Cancelled);
        assert_eq!(store.get(&task.id).unwrap().status, TaskStatus::Cancelled);
        assert!(
            list_names(&store.tmp_dir()).unwrap().is_empty(),
            "the prepared file is gone"
        );
    }

    #[test]
    fn only_old_temporary_files_are_swept() {
        let (_dir, store) = store(DEFAULT_LEASE);
        let old = store.tmp_dir().join(".tmp-old");
        let fresh = store.tmp_dir().join(".tmp-fresh");
        fs::write(&old, "{").unwrap();
        fs::write(&fresh, "{").unwrap();
        let long_ago = std::time::SystemTime::now() - ABANDONED_AFTER * 2;
        File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        assert_eq!(store.sweep_temporary_files().unwrap(), 1);
        assert!(!old.exists());
        assert!(fresh.exists(), "a write in progress is left alone");
    }

    /// Stages a claim of `task` by `worker` that has moved the marker and holds its flock but
    /// has not written the task file yet; returns the flock and the task as the claim will
    /// write it.
    fn claim_in_flight(store: &FileStore, task: &Task) -> (File, Task) {
        let running = store.running_marker(&task.id);
        fs::rename(store.pending_marker(task), &running).unwrap();
        let marker = File::open(&running).unwrap();
        marker.lock().unwrap();
        let mut claimed = task.clone();
        claimed.status = TaskStatus::Running;
        claimed.attempts = 1;
        claimed.worker = Some("w".into());
        claimed.lease_expires_at = Some(store.lease_until(Timestamp::now()));
        (marker, claimed)
    }

    #[test]
    fn a_claim_in_flight_is_not_taken_for_a_dead_one() {
        let (_dir, store) = store(DEFAULT_LEASE);
        let task = store.add(vec![new("a", 1)]).unwrap().remove(0);
        let (marker, claimed) = claim_in_flight(&store, &task);
        assert_eq!(store.expire_leases().unwrap(), 0);
        assert!(
            store.running_marker(&task.id).exists(),
            "left to its claimer"
        );
        assert_eq!(store.summary().unwrap().counts[&TaskStatus::Running], 1);
        store.write_task(&claimed).unwrap();
        drop(marker);
        assert_eq!(store.get(&task.id).unwrap().status, TaskStatus::Running);

        // The same state with the claimer dead (no flock): healed back to pending.
        let other = store.add(vec![new("a", 1)]).unwrap().remove(0);
        drop(claim_in_flight(&store, &other));
        store.expire_leases().unwrap();
        assert!(!store.running_marker(&other.id).exists());
        assert_eq!(
            store.claim("w2", &types(&["a"])).unwrap().unwrap().task.id,
            other.id
        );
    }

    #[test]
    fn a_cancel_waits_for_a_claim_in_flight() {
        let (_dir, store) = store(DEFAULT_LEASE);
        let task = store.add(vec![new("a", 1)]).unwrap().remove(0);
        let (marker, claimed) = claim_in_flight(&store, &task);
        let cancelled = std::thread::scope(|scope| {
            let cancel = scope.spawn(|| store.cancel(&task.id).unwrap());
            std::thread::sleep(Duration::from_millis(200));
            store.write_task(&claimed).unwrap();
            drop(marker);
            cancel.join().unwrap()
        });
        assert_eq!(cancelled.status, TaskStatus::Running);
        assert!(
            cancelled.cancel_requested,
            "asked to stop, not cancelled unstarted"
        );
        let now = store.get(&task.id).unwrap();
        assert_eq!(now.status, TaskStatus::Running);
        assert!(store.running_marker(&task.id).exists());
    }

    #[test]
    fn claims_by_priority_then_age_and_only_its_types() {
        let (_dir, store) = store(DEFAULT_LEASE);
        store
            .add(vec![
                new("a", 9),
                new("a", 1),
                new("b", 0),
                new("a", 5),
                new("a", 1),
            ])
            .unwrap();
        let order: Vec<String> = std::iter::from_fn(|| {
            store
                .claim("w", &types(&["a"]))
                .unwrap()
                .map(|claim| claim.task.id)
        })
        .collect();
        assert_eq!(order, ["2", "5", "4", "1"]);
        assert_eq!(store.get("3").unwrap().status, TaskStatus::Pending);
    }

    #[test]
    fn expired_lease_returns_task_and_fences_the_old_worker() {
        let (_dir, store) = store(Duration::from_millis(1));
        store.add(vec![new("a", 5)]).unwrap();
        let first = store.claim("w1", &types(&["a"])).unwrap().unwrap();
        std::thread::sleep(Duration::from_millis(150));
        let second = store.claim("w2", &types(&["a"])).unwrap().unwrap();
        assert_eq!(second.task.id, first.task.id);
        assert_eq!(second.lease.attempt, 2);
        assert!(matches!(
            store.finish(&first.lease, Outcome::Success(Value::Null)),
            Err(StoreError::LeaseLost { .. })
        ));
        let done = store
            .finish(&second.lease, Outcome::Success(Value::Null))
            .unwrap();
        assert_eq!(done.status, TaskStatus::Completed);
        assert_eq!(done.worker.as_deref(), Some("w2"));
    }

    #[test]
    fn lease_expiry_fails_the_task_when_attempts_are_used_up() {
        let (_dir, store) = store(Duration::from_millis(1));
        store
            .add(vec![NewTask {
                max_attempts: Some(1),
                ..new("a", 5)
            }])
            .unwrap();
        store.claim("w1", &types(&["a"])).unwrap().unwrap();
        std::thread::sleep(Duration::from_millis(150));
        assert!(store.claim("w2", &types(&["a"])).unwrap().is_none());
        let task = store.get("1").unwrap();
        assert_eq!(task.status, TaskStatus::Failed);
        assert!(task.error.unwrap().contains("lease expired"));
    }

    #[test]
    fn release_returns_the_task_without_counting_the_attempt() {
        let (_dir, store) = store(DEFAULT_LEASE);
        store.add(vec![new("a", 5)]).unwrap();
        let claim = store.claim("w1", &types(&["a"])).unwrap().unwrap();
        store.release(&claim.lease).unwrap();
        let task = store.get("1").unwrap();
        assert_eq!((task.status, task.attempts), (TaskStatus::Pending, 0));
        assert!(store.has_work(&types(&["a"])).unwrap());
        assert!(store.claim("w2", &types(&["a"])).unwrap().is_some());
    }

    #[test]
    fn a_half_applied_add_is_finished_by_the_next_locker() {
        let (_dir, store) = store(DEFAULT_LEASE);
        // What a `host add` killed right after writing its intent leaves behind.
        let now = Timestamp::now();
        let intent = AddIntent {
            tasks: vec![
                new("a", 5).into_task("1".into(), vec![], now),
                new("a", 5).into_task("2".into(), vec![], now),
            ],
            next_id: 3,
        };
        let path = store.root.join("intents").join("00000000000000000001.json");
        fs::write(&path, serde_json::to_vec(&intent).unwrap()).unwrap();
        let added = store.add(vec![new("a", 5)]).unwrap();
        assert_eq!(added[0].id, "3");
        assert_eq!(store.tasks().unwrap().len(), 3);
        assert!(!path.exists());
    }

    #[test]
    fn invalid_type_adds_nothing() {
        let (_dir, store) = store(DEFAULT_LEASE);
        let err = store.add(vec![new("a", 5), new("../x", 5)]).unwrap_err();
        assert!(err.to_string().contains("task 2"), "{err}");
        assert!(store.tasks().unwrap().is_empty());
    }
}
