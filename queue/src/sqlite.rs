//! The embedded store: SQLite (WAL) in the coordination folder, so a queue needs no server.
//!
//! - **Schema** in numbered migrations (`sqlite/migrations/NNNN_*.sql`), applied in order under
//!   the writers' lock and recorded in SQLite's `user_version`; a database newer than this
//!   binary is refused.
//! - **Writers** queue on an OS lock (flock) on the folder around each write transaction
//!   (`BEGIN IMMEDIATE`), which hands the database to the next waiter at once; SQLite's own busy
//!   handler, which sleeps 1, 2, 5 ... 100 ms, let one worker of four take nearly every task.
//!   Readers never wait (WAL).
//! - **Durability**: every commit is made with `synchronous = NORMAL` (the log written, not
//!   flushed); in a `durable` queue, an operation that adds work or records an outcome then
//!   flushes the log before it returns, after releasing the writers' lock, so that workers
//!   finishing at once share one flush: as durable as `FULL`, without holding the next writer
//!   up for the disk. Claims and lease renewals are not flushed: losing one to a power loss
//!   only means the task runs again, which at-least-once execution allows, and the next flush
//!   covers them (the log is written in order).
//! - **Claims** read one row per task type from a partial index on pending tasks, ordered by
//!   priority then id; finishing touches one row and the tasks after it. Neither looks at
//!   finished tasks, and `status` reads counts that triggers keep.
//!
//! What a claim, finish or cancel does to a task is decided by [`crate::lifecycle`]; this file
//! only stores and fetches.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use rusqlite::types::Value;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, Params, params};

use crate::folder::io_err;
use crate::lifecycle::{self, Policy, TaskTx};
use crate::records::{
    ExpiryScan, Unreadable, from_millis, millis, new_lease, parse_id, parse_task, pause_key,
    pause_scope, purgeable, task_body,
};
use crate::{
    Claim, Durability, Lease, NewTask, Outcome, PauseScope, QueueFolder, QueueStore, Renewal,
    StoreError, Summary, Task, TaskQuery, TaskStatus, WorkerRecord, validate_name,
};
use crate::{TaskChange, TaskEdit};

/// The migrations, in order; the schema version is how many have been applied.
const MIGRATIONS: [&str; 2] = [
    include_str!("sqlite/migrations/0001_initial.sql"),
    include_str!("sqlite/migrations/0002_review.sql"),
];

/// How long a statement waits for a lock that another program (not a `host`, which queues on
/// the folder's flock) holds on the database.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// The WAL is truncated back to this size after a checkpoint, so it stays bounded.
const WAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// How many finished tasks one purge transaction removes.
const PURGE_BATCH: usize = 10_000;

/// The SQL condition that a task `t` is paused, by itself, its type or the whole queue.
const PAUSED: &str = "EXISTS (SELECT 1 FROM pauses p WHERE p.kind = 'queue' \
    OR (p.kind = 'type' AND p.name = t.type) \
    OR (p.kind = 'task' AND p.name = CAST(t.id AS TEXT)))";

/// The embedded queue store.
pub struct SqliteStore {
    folder: QueueFolder,
    path: PathBuf,
    inner: Mutex<Inner>,
    policy: Policy,
    durability: Durability,
    unreadable: Unreadable,
    expiry_scan: ExpiryScan,
    /// The write-ahead log, opened for flushing durable commits. No lock is ever taken on it,
    /// so this descriptor cannot release SQLite's (POSIX locks go with any descriptor of a
    /// locked file).
    log: Mutex<Option<Arc<std::fs::File>>>,
    /// The database and SQLite's files beside it, with their identity when this process
    /// opened them: one deleted or replaced since means the processes of the queue no longer
    /// share one log and one index, and a write now could lose or corrupt what others wrote.
    opened: Vec<(PathBuf, u64)>,
}

/// The connection, and the folder held open for the writers' flock.
struct Inner {
    conn: Connection,
    writers: std::fs::File,
}

/// Whether opening a database may create the queue's schema in it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Schema {
    /// `host init`: an empty database becomes a new queue.
    Create,
    /// Everything else: an empty database is a lost queue, refused and left as it is.
    Existing,
}

/// How a write transaction is committed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Commit {
    /// As the queue's durability says.
    AsConfigured,
    /// Without waiting for the disk (claims, renewals, worker records).
    Lazy,
}

impl SqliteStore {
    /// Creates the queue folder and database (idempotent): the folder owner-only, the schema
    /// migrated to this version.
    pub fn init(root: &Path) -> Result<SqliteStore, StoreError> {
        SqliteStore::create(QueueFolder::create(root)?)
    }

    /// Like [`SqliteStore::init`], also in a folder that holds a queue of the earlier format:
    /// for `host import`, which brings that queue in.
    pub fn init_for_import(root: &Path) -> Result<SqliteStore, StoreError> {
        SqliteStore::create(QueueFolder::create_over_old_format(root)?)
    }

    fn create(folder: QueueFolder) -> Result<SqliteStore, StoreError> {
        folder.create_database_file()?;
        folder.doorbell();
        SqliteStore::connect(folder, Schema::Create)
    }

    /// Opens an existing queue, migrating its schema to this version if it is older.
    pub fn open(root: &Path) -> Result<SqliteStore, StoreError> {
        SqliteStore::connect(QueueFolder::open(root)?, Schema::Existing)
    }

    fn connect(folder: QueueFolder, schema: Schema) -> Result<SqliteStore, StoreError> {
        let path = folder.database();
        // SQLite says only "unable to open database file" for a link, a folder or a file this
        // user may not read: say which.
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(StoreError::Unsafe {
                    path,
                    reason: "is a symlink; the queue opens nothing through one (put the \
                             database itself in the queue folder)"
                        .into(),
                });
            }
            Ok(meta) if !meta.is_file() => {
                return Err(StoreError::Unsafe {
                    path,
                    reason: "is not a file".into(),
                });
            }
            _ => {}
        }
        if let Err(err) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
        {
            return Err(io_err(&path)(err));
        }
        if let Some(lost) = lost_log(&path) {
            return Err(folder.damage().unwrap_or_else(|| {
                folder.record_damage(&path, &lost);
                StoreError::Damaged { path, reason: lost }
            }));
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NOFOLLOW
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&path, flags).map_err(db_err(&path))?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(db_err(&path))?;
        // Every task type has its own claim statement (see `best_candidate`).
        conn.set_prepared_statement_cache_capacity(64);
        // Every commit leaves the log unflushed; a durable one is flushed after the writers'
        // lock is released (see `write`). Per connection: the log is cut back to its limit
        // after each checkpoint.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .and_then(|()| conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT))
            .map_err(db_err(&path))?;
        let mut inner = Inner {
            conn,
            writers: folder.writers_lock()?,
        };
        migrate(&mut inner, &path, &folder, schema)?;
        let db = Db {
            conn: &inner.conn,
            path: &path,
        };
        let durability = match db
            .row(
                "SELECT value FROM settings WHERE key = 'durability'",
                [],
                |row| row.get::<_, String>(0),
            )?
            .as_deref()
        {
            Some("relaxed") => Durability::Relaxed,
            _ => Durability::Durable,
        };
        // After the first read: SQLite has opened its log and index by now.
        let opened = [String::new(), "-wal".into(), "-shm".into()]
            .into_iter()
            .map(|suffix| {
                folder
                    .root()
                    .join(format!("{}{suffix}", crate::folder::DATABASE))
            })
            .filter_map(|file| {
                let id = crate::os::file_id(&std::fs::symlink_metadata(&file).ok()?);
                Some((file, id))
            })
            .collect();
        Ok(SqliteStore {
            folder,
            path,
            inner: Mutex::new(inner),
            policy: Policy::default(),
            durability,
            unreadable: Unreadable::default(),
            expiry_scan: ExpiryScan::default(),
            log: Mutex::new(None),
            opened,
        })
    }

    /// Applies the queue-wide rules: lease length, backoff, per-type limits, aging.
    pub fn with_policy(mut self, policy: Policy) -> SqliteStore {
        self.policy = policy;
        self
    }

    /// Sets how long a lease lasts unless renewed.
    pub fn with_lease(mut self, lease: Duration) -> SqliteStore {
        self.policy.lease = lease;
        self
    }

    /// The rules this store applies.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The coordination folder.
    pub fn folder(&self) -> &QueueFolder {
        &self.folder
    }

    /// The queue's durability setting.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Changes the queue's durability setting, for every process that opens it from now on.
    pub fn set_durability(mut self, durability: Durability) -> Result<SqliteStore, StoreError> {
        self.write(Commit::AsConfigured, |tx| {
            tx.db.change(
                "UPDATE settings SET value = ?1 WHERE key = 'durability'",
                [durability.as_str()],
            )
        })?;
        self.durability = durability;
        Ok(self)
    }

    /// Runs `work` in a write transaction, queued behind other writers on the folder's flock.
    /// On error nothing of it is applied. Rings the doorbell after the commit when `work` made
    /// some task claimable.
    fn write<T>(
        &self,
        commit: Commit,
        work: impl FnOnce(&mut Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let inner = self.inner.lock().expect("connection lock");
        let _writing = WRITING
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        lock_writers(&inner.writers, self.folder.root())?;
        // Undoes an unfinished transaction and hands the lock on however this ends, a panic
        // in `work` included: other processes must never wait on a writer that is gone.
        let guard = WriteGuard(&inner);
        self.refuse_if_damaged()?;
        let mut tx = Tx {
            db: Db {
                conn: &inner.conn,
                path: &self.path,
            },
            work_appeared: false,
        };
        let result = tx.db.run("BEGIN IMMEDIATE").and_then(|()| {
            let out = work(&mut tx)?;
            tx.db.run("COMMIT")?;
            Ok(out)
        });
        let rang = tx.work_appeared;
        drop(guard);
        drop(inner);
        let out = result.map_err(|err| self.noted(err))?;
        if commit == Commit::AsConfigured && self.durability == Durability::Durable {
            self.sync_log()?;
        }
        if rang {
            self.folder.ring_doorbell();
        }
        Ok(out)
    }

    /// Makes every committed change durable: flushes the write-ahead log, which holds them in
    /// order (what `synchronous = FULL` does inside each commit). Done after the writers' lock
    /// is released, so the next writer need not wait for the disk, and workers committing at
    /// the same moment share one flush (group commit across processes). Until it returns, the
    /// caller has not reported the change done; if power fails before, the change may be lost,
    /// never half applied.
    fn sync_log(&self) -> Result<(), StoreError> {
        let path = self
            .folder
            .root()
            .join(format!("{}-wal", crate::folder::DATABASE));
        let log = {
            let mut log = self.log.lock().expect("log lock");
            if log.is_none() {
                // SQLite keeps the log, same file, as long as a connection (this one) is open.
                let file = crate::os::for_flushing()
                    .open(&path)
                    .map_err(io_err(&path))?;
                *log = Some(Arc::new(file));
            }
            Arc::clone(log.as_ref().expect("log opened"))
        };
        log.sync_data()
            .map_err(|source| StoreError::NotFlushed { path, source })
    }

    /// Runs `read` on a consistent snapshot; never waits for writers.
    fn read<T>(&self, read: impl FnOnce(Db<'_>) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut inner = self.inner.lock().expect("connection lock");
        let result = inner
            .conn
            .transaction()
            .map_err(db_err(&self.path))
            .and_then(|snapshot| {
                let out = read(Db {
                    conn: &snapshot,
                    path: &self.path,
                })?;
                snapshot.commit().map_err(db_err(&self.path))?;
                Ok(out)
            });
        result.map_err(|err| self.noted(err))
    }

    /// Refuses to write when the queue was found damaged (by this process or another), or when
    /// the database, its log or its index is no longer the file this process opened. Checked
    /// under the writers' lock: two `stat`s and a lookup per write.
    fn refuse_if_damaged(&self) -> Result<(), StoreError> {
        if let Some(found) = self.folder.damage() {
            return Err(found);
        }
        for (file, id) in &self.opened {
            let now = std::fs::symlink_metadata(file)
                .ok()
                .map(|meta| crate::os::file_id(&meta));
            if now != Some(*id) {
                let what = if now.is_none() { "deleted" } else { "replaced" };
                return Err(self.noted(StoreError::Damaged {
                    path: file.clone(),
                    reason: format!(
                        "{what} while process {} had the queue open (SQLite's files must never \
                         be removed while the queue is in use; what they held may be lost)",
                        std::process::id()
                    ),
                }));
            }
        }
        Ok(())
    }

    /// Passes `err` on; damage is first recorded in the folder, so that every process stops
    /// writing and `host doctor` can say what was found.
    fn noted(&self, err: StoreError) -> StoreError {
        if let StoreError::Damaged { path, reason } = &err {
            self.folder.record_damage(path, reason);
        }
        err
    }

    /// Returns the leases that ran out by `now`, as `found_by` noticed. Inside a write.
    fn expire_due(
        &self,
        tx: &mut Tx<'_>,
        now: Timestamp,
        found_by: &str,
    ) -> Result<usize, StoreError> {
        let ids: Vec<i64> = tx.db.rows(
            "SELECT id FROM tasks WHERE status = 'running' AND lease_expires_at < ?1",
            [millis(now)],
            |row| row.get(0),
        )?;
        let mut expired = 0;
        for id in ids {
            let mut task = match tx.task(&id.to_string()) {
                Ok(Some(task)) => task,
                Ok(None) => continue,
                Err(err @ StoreError::Corrupt { .. }) => {
                    self.unreadable.note(id, &err);
                    continue;
                }
                Err(err) => return Err(err),
            };
            lifecycle::expire(&mut task, now, &self.policy, found_by);
            tx.put(&task)?;
            if task.status.is_finished() {
                tx.work_appeared |= lifecycle::settle_dependents(tx, &task, now)?;
            }
            tx.work_appeared |= self.policy.limits.contains_key(&task.task_type);
            expired += 1;
        }
        Ok(expired)
    }

    /// Returns expired leases (see [`SqliteStore::expire_due`]) when a scan is due.
    fn expire_if_due(
        &self,
        tx: &mut Tx<'_>,
        now: Timestamp,
        found_by: &str,
    ) -> Result<(), StoreError> {
        if !self.expiry_scan.due(self.policy.lease) {
            return Ok(());
        }
        self.expire_due(tx, now, found_by).map(drop)
    }

    /// The best claimable task among `types` that is not in `skip`: lowest (aged) priority,
    /// then lowest id, read whole. One indexed lookup per type (per priority level, with
    /// aging).
    fn best_candidate(
        &self,
        db: Db<'_>,
        types: &[String],
        now: Timestamp,
        skip: &[i64],
    ) -> Result<Option<(i64, String)>, StoreError> {
        let mut best: Option<((u32, i64), String)> = None;
        for task_type in types {
            // The type is written into the statement rather than bound: SQLite (built with
            // STAT4) re-prepares a statement with a bound value that its plan's index order
            // depends on after every reset, which cost a fifth of each claim. Types are plain
            // names (validated), and each gets its own cached statement.
            let skipped = if skip.is_empty() {
                String::new()
            } else {
                let ids: Vec<String> = skip.iter().map(i64::to_string).collect();
                format!(" AND id NOT IN ({})", ids.join(", "))
            };
            let pending = format!(
                "status = 'pending' AND type = {} \
                 AND (retry_at IS NULL OR retry_at <= ?1) AND NOT {PAUSED}{skipped}",
                sql_text(task_type),
            );
            let sql = match self.policy.aging {
                None => format!(
                    "SELECT priority, id, created_at, body FROM tasks t WHERE {pending} \
                     ORDER BY priority, id LIMIT 1"
                ),
                // The oldest task of each priority is the one that has aged most.
                Some(_) => format!(
                    "SELECT priority, MIN(id), created_at, body FROM tasks t WHERE {pending} \
                     GROUP BY priority"
                ),
            };
            let candidates = db.rows(&sql, [millis(now)], |row| {
                Ok((
                    row.get::<_, u32>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, String>(3)?,
                ))
            })?;
            for (priority, id, created, body) in candidates {
                let priority = match self.policy.aging {
                    Some(step) => {
                        lifecycle::aged_priority(priority, from_millis(created), now, step)
                    }
                    None => priority,
                };
                if best.as_ref().is_none_or(|(key, _)| (priority, id) < *key) {
                    best = Some(((priority, id), body));
                }
            }
        }
        Ok(best.map(|((_, id), body)| (id, body)))
    }

    /// A claim, inside a write: see [`QueueStore::claim`].
    fn claim_in(
        &self,
        tx: &mut Tx<'_>,
        worker: &str,
        types: &[String],
        now: Timestamp,
    ) -> Result<Option<Claim>, StoreError> {
        self.expire_if_due(tx, now, worker)?;
        let mut eligible = Vec::new();
        for task_type in types {
            if let Some(limit) = self.policy.limits.get(task_type) {
                let running = tx.db.row(
                    "SELECT n FROM counts WHERE status = 'running' AND type = ?1",
                    [task_type],
                    |row| row.get::<_, i64>(0),
                )?;
                if usize::try_from(running.unwrap_or(0)).unwrap_or(0) >= *limit {
                    continue;
                }
            }
            eligible.push(task_type.clone());
        }
        let mut skip = self.unreadable.ids();
        loop {
            let Some((id, body)) = self.best_candidate(tx.db, &eligible, now, &skip)? else {
                return Ok(None);
            };
            let mut task = match parse_task(tx.db.path, id, &body) {
                Ok(task) => task,
                Err(err) => {
                    self.unreadable.note(id, &err);
                    skip.push(id);
                    continue;
                }
            };
            lifecycle::claim(&mut task, worker, now, &self.policy);
            let lease = new_lease(&task, worker)?;
            tx.save(&task, Some(&lease.token))?;
            return Ok(Some(Claim { task, lease }));
        }
    }

    /// A finish, inside a write: see [`QueueStore::finish`].
    fn finish_in(
        &self,
        tx: &mut Tx<'_>,
        lease: &Lease,
        outcome: Outcome,
        now: Timestamp,
    ) -> Result<Task, StoreError> {
        let mut task = tx.leased(lease, now)?;
        lifecycle::finish(&mut task, outcome, now, &self.policy);
        tx.put(&task)?;
        // A slot of a limited type is free: a worker waiting for one may claim now.
        tx.work_appeared |= self.policy.limits.contains_key(&task.task_type);
        // A task pending again (a retry after a backoff) leaves the tasks after it as they are.
        if task.status != TaskStatus::Pending {
            tx.work_appeared |= lifecycle::settle_dependents(tx, &task, now)?;
        }
        Ok(task)
    }

    /// Integrity checks of the database for `host doctor`: each problem found, in one line.
    pub fn check(&self) -> Result<Vec<String>, StoreError> {
        self.read(|db| {
            let mut problems: Vec<String> = db
                .rows("PRAGMA integrity_check", [], |row| row.get::<_, String>(0))?
                .into_iter()
                .filter(|line| line != "ok")
                .map(|line| format!("{}: {line}", db.path.display()))
                .collect();
            let counts = db.rows(
                "SELECT status, type, COALESCE(c.n, 0), COALESCE(t.n, 0) FROM \
                    (SELECT status, type, COUNT(*) AS n FROM tasks GROUP BY status, type) t \
                    FULL JOIN counts c USING (status, type) \
                 WHERE COALESCE(c.n, 0) != COALESCE(t.n, 0)",
                [],
                |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, i64>(2)?,
                        row.get::<_, i64>(3)?,
                    ))
                },
            )?;
            problems.extend(counts.into_iter().map(|(status, task_type, kept, real)| {
                format!("the count of {status} {task_type} tasks says {kept}, there are {real}")
            }));
            let tasks = db.rows("SELECT id, body FROM tasks", [], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
            })?;
            problems.extend(
                tasks
                    .iter()
                    .filter_map(|(id, body)| parse_task(db.path, *id, body).err())
                    .map(|err| err.to_string()),
            );
            Ok(problems)
        })
    }

    /// Brings in tasks (with their ids, history and state) and pauses from a queue of the
    /// earlier folder-of-files store, all or nothing. Refused when any of their ids is taken.
    /// Ids given out afterwards continue after `next_id - 1`. A running task's old worker
    /// cannot renew it: its lease ends now at the latest, so the next claim returns it to the
    /// queue. Returns how many tasks.
    pub fn import(
        &self,
        tasks: Vec<Task>,
        paused: Vec<PauseScope>,
        next_id: u64,
    ) -> Result<usize, StoreError> {
        let count = tasks.len();
        let now = Timestamp::now();
        self.write(Commit::AsConfigured, |tx| {
            for mut task in tasks {
                if tx.task(&task.id)?.is_some() {
                    return Err(StoreError::InvalidTask(format!(
                        "task {} already exists in this queue; import into a new queue",
                        task.id
                    )));
                }
                if task.status == TaskStatus::Running {
                    task.lease_expires_at =
                        Some(task.lease_expires_at.map_or(now, |at| at.min(now)));
                }
                tx.insert(&task)?;
            }
            for scope in &paused {
                tx.pause(scope)?;
            }
            // sqlite_sequence has no key: update its row, or add one when there is none.
            let last = i64::try_from(next_id.saturating_sub(1)).unwrap_or(i64::MAX);
            tx.db.change(
                "UPDATE sqlite_sequence SET seq = MAX(seq, ?1) WHERE name = 'tasks'",
                [last],
            )?;
            tx.db.change(
                "INSERT INTO sqlite_sequence (name, seq) SELECT 'tasks', ?1 \
                 WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'tasks')",
                [last],
            )?;
            tx.work_appeared = true;
            Ok(())
        })?;
        Ok(count)
    }
}

/// Says what was lost when SQLite's index (`-shm`) records committed changes in a log (`-wal`)
/// that is gone or cut short: the queue stopped uncleanly and the log was deleted or cut since.
/// Opening now would silently drop those changes and give their ids out again. Read from the
/// index's header (SQLite's `WalIndexHdr`: `isInit` at byte 12, the page size at 14 and the last
/// valid frame `mxFrame` at 16, in the machine's byte order; the log's salts at 32), compared
/// with the log's own header (its salts at byte 16). An index that a process is just creating
/// is zeroed, and one older than the log (other salts) is rebuilt by SQLite: neither is a loss.
fn lost_log(database: &Path) -> Option<String> {
    let name = database.file_name()?.to_string_lossy().into_owned();
    let first_bytes = |suffix: &str, buf: &mut [u8]| -> Option<u64> {
        let path = database.with_file_name(format!("{name}{suffix}"));
        let mut file = crate::os::reading_no_follow().open(path).ok()?;
        std::io::Read::read_exact(&mut file, buf).ok()?;
        Some(file.metadata().ok()?.len())
    };
    let mut index = [0u8; 48];
    first_bytes("-shm", &mut index)?;
    let frames = u64::from(u32::from_ne_bytes(index[16..20].try_into().ok()?));
    if index[12] == 0 || frames == 0 {
        return None;
    }
    let page = match u16::from_ne_bytes(index[14..16].try_into().ok()?) {
        1 => 65_536,
        size => u64::from(size),
    };
    let mut log = [0u8; 32];
    let has = match first_bytes("-wal", &mut log) {
        Some(_) if log[16..24] != index[32..40] => return None,
        Some(len) => len,
        None => 0,
    };
    // A log: a 32-byte header, then frames of a 24-byte header and a page each.
    let needed = 32 + frames * (24 + page);
    (has < needed).then(|| {
        format!(
            "{name}-wal holds {has} bytes where {name}-shm records {frames} committed page(s) in \
             it ({needed} bytes): the log of committed changes was deleted or cut after the \
             queue stopped uncleanly, and what it held is lost"
        )
    })
}

/// Brings the schema up to this version's, one migration at a time, under the writers' lock
/// so that processes opening a new queue together do not race. Refuses a newer schema.
fn migrate(
    inner: &mut Inner,
    path: &Path,
    folder: &QueueFolder,
    schema: Schema,
) -> Result<(), StoreError> {
    let known = MIGRATIONS.len() as i64;
    let version = |conn: &Connection| -> Result<i64, StoreError> {
        conn.pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(db_err(path))
    };
    let current = version(&inner.conn)?;
    if current == 0 && schema == Schema::Existing {
        // A database emptied or truncated since `host init` made it: making a new queue here
        // would restart the ids and hide the loss.
        return Err(folder.lost_or_empty_database());
    }
    if current > known {
        return Err(StoreError::NewerSchema {
            path: path.to_path_buf(),
            found: current,
            known,
        });
    }
    if current == known {
        return Ok(());
    }
    lock_writers(&inner.writers, folder.root())?;
    let _guard = WriteGuard(inner);
    let db = Db {
        conn: &inner.conn,
        path,
    };
    // WAL is a property of the file, set once; it cannot change inside a transaction.
    let mode: String = inner
        .conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(db_err(path))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Database {
            path: path.to_path_buf(),
            message: format!("cannot use write-ahead logging (journal mode stays {mode})"),
        });
    }
    db.run("BEGIN IMMEDIATE")?;
    // Another process may have migrated meanwhile.
    let from = version(&inner.conn)?;
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(from as usize) {
        inner
            .conn
            .execute_batch(sql)
            .map_err(|err| StoreError::Database {
                path: path.to_path_buf(),
                message: format!("schema migration {} failed: {err}", index + 1),
            })?;
    }
    inner
        .conn
        .pragma_update(None, "user_version", known)
        .map_err(write_err(path))?;
    db.run("COMMIT")
}

/// How long a writer waits for the writers' lock before it says who holds it.
const LOCK_NOTICE_AFTER: Duration = Duration::from_secs(2);

/// How long a writer waits for the writers' lock at most, unless `HOST_LOCK_WAIT` says
/// otherwise. A write holds it for milliseconds; this long means its holder is stopped or hung.
const LOCK_LIMIT: Duration = Duration::from_secs(30);

/// The environment variable that sets how long a writer waits for the writers' lock.
const LOCK_WAIT_VAR: &str = "HOST_LOCK_WAIT";

/// [`LOCK_LIMIT`], or what [`LOCK_WAIT_VAR`] says (a duration such as `10s`).
fn lock_limit() -> Duration {
    static LIMIT: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::env::var(LOCK_WAIT_VAR)
            .ok()
            .and_then(|text| humantime::parse_duration(&text).ok())
            .unwrap_or(LOCK_LIMIT)
    })
}

/// Held (shared) by this process's writes while they hold the writers' lock; taken whole by
/// [`SqliteStore::hold_writes`], so that a process stopping itself holds no lock while stopped.
static WRITING: std::sync::RwLock<()> = std::sync::RwLock::new(());

impl SqliteStore {
    /// Waits for this process's writes under way to finish and keeps new ones from starting
    /// until the guard is dropped: what a process takes before it stops itself (Ctrl+Z), so that
    /// it never holds the queue's writers' lock while stopped, which would freeze every other
    /// process of the queue.
    pub fn hold_writes() -> std::sync::RwLockWriteGuard<'static, ()> {
        WRITING
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Takes the writers' lock on the queue folder `root`: at once when it is free, else by a thread
/// that waits for it (the OS wakes the next waiter as soon as it is released), while this one
/// says after [`LOCK_NOTICE_AFTER`] who holds it and gives up after [`lock_limit`].
fn lock_writers(writers: &std::fs::File, root: &Path) -> Result<(), StoreError> {
    match writers.try_lock() {
        Ok(()) => return Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => {}
        Err(std::fs::TryLockError::Error(err)) => return Err(io_err(root)(err)),
    }
    // The same open file, so the lock the thread takes is this one's.
    let waiter = writers.try_clone().map_err(io_err(root))?;
    let (sender, taken) = std::sync::mpsc::channel();
    // Whoever takes the sender out decides: the waiting thread hands the lock over with it; a
    // caller that gave up takes it first, and the thread then releases what it got.
    let hand_over = Arc::new(Mutex::new(Some(sender)));
    let handed = Arc::clone(&hand_over);
    std::thread::spawn(move || {
        let got = waiter.lock();
        match handed.lock().expect("hand-over lock").take() {
            Some(sender) => {
                let _ = sender.send(got);
            }
            None => {
                let _ = waiter.unlock();
            }
        }
    });
    let started = std::time::Instant::now();
    let mut told = false;
    loop {
        let limit = lock_limit();
        let wait = if told {
            limit
        } else {
            LOCK_NOTICE_AFTER.min(limit)
        };
        match taken.recv_timeout(wait.saturating_sub(started.elapsed())) {
            Ok(got) => return got.map_err(io_err(root)),
            Err(_) if !told && started.elapsed() < limit => {
                told = true;
                // The one thing the store says on its own: a command that hangs silently on a
                // stopped worker is worse.
                eprintln!(
                    "waiting for the queue's writers' lock on {}, held by {}",
                    root.display(),
                    crate::os::lock_holder(root).unwrap_or_else(|| "another process".into())
                );
            }
            Err(_) => {
                if hand_over.lock().expect("hand-over lock").take().is_none() {
                    // Handed over just now: released, as this write is given up.
                    if let Ok(Ok(())) = taken.recv() {
                        let _ = writers.unlock();
                    }
                }
                return Err(StoreError::Database {
                    path: root.to_path_buf(),
                    message: format!(
                        "the queue's writers' lock has been held by {} for {}s; nothing was \
                         changed (resume or stop that process, then try again)",
                        crate::os::lock_holder(root).unwrap_or_else(|| "another process".into()),
                        limit.as_secs()
                    ),
                });
            }
        }
    }
}

/// The writers' lock, held: on drop, a transaction still open is rolled back and the lock
/// released.
struct WriteGuard<'c>(&'c Inner);

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        if !self.0.conn.is_autocommit() {
            // The work failed, or its commit did: nothing of it stays.
            let _ = self.0.conn.execute_batch("ROLLBACK");
        }
        let _ = self.0.writers.unlock();
    }
}

/// A connection and the database it names in errors, with the few ways the store uses it.
/// Statements are cached: parsing them anew (BEGIN and COMMIT included) showed in profiles.
#[derive(Clone, Copy)]
struct Db<'c> {
    conn: &'c Connection,
    path: &'c Path,
}

impl Db<'_> {
    /// Every row of a query.
    fn rows<T>(
        &self,
        sql: &str,
        params: impl Params,
        row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, StoreError> {
        let mut statement = self.conn.prepare_cached(sql).map_err(db_err(self.path))?;
        let rows = statement
            .query_map(params, row)
            .map_err(db_err(self.path))?;
        rows.collect::<Result<_, _>>().map_err(db_err(self.path))
    }

    /// The first row of a query, if there is one.
    fn row<T>(
        &self,
        sql: &str,
        params: impl Params,
        row: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Option<T>, StoreError> {
        self.conn
            .prepare_cached(sql)
            .and_then(|mut statement| statement.query_row(params, row).optional())
            .map_err(db_err(self.path))
    }

    /// Runs a statement that changes the database (inside a write, whose failure rolls it
    /// back).
    fn change(&self, sql: &str, params: impl Params) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(sql)
            .and_then(|mut statement| statement.execute(params))
            .map(drop)
            .map_err(write_err(self.path))
    }

    /// Runs a statement without parameters.
    fn run(&self, sql: &str) -> Result<(), StoreError> {
        self.change(sql, [])
    }
}

/// A write transaction, as the rules see it.
struct Tx<'c> {
    db: Db<'c>,
    /// Set when some task became claimable; the doorbell rings after the commit.
    work_appeared: bool,
}

impl Tx<'_> {
    /// The task with this id and its lease's secret.
    fn task_and_token(&self, id: &str) -> Result<Option<(Task, Option<String>)>, StoreError> {
        let Ok(id) = parse_id(id) else {
            return Ok(None);
        };
        let row = self.db.row(
            "SELECT body, lease_token FROM tasks WHERE id = ?1",
            [id],
            |row| Ok((row.get::<_, String>(0)?, row.get(1)?)),
        )?;
        row.map(|(body, token)| Ok((parse_task(self.db.path, id, &body)?, token)))
            .transpose()
    }

    /// The task a lease names, checked to be the lease's (see [`lifecycle::check_lease`]).
    fn leased(&self, lease: &Lease, now: Timestamp) -> Result<Task, StoreError> {
        let (task, token) = self
            .task_and_token(&lease.task_id)?
            .ok_or_else(|| StoreError::NotFound(lease.task_id.clone()))?;
        lifecycle::check_lease(&task, lease, token.as_deref(), now)?;
        Ok(task)
    }

    /// The id the next added task gets: ids are never given out twice, even when purged.
    fn next_id(&self) -> Result<u64, StoreError> {
        let last = self.db.row(
            "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'tasks'), 0), \
                        COALESCE((SELECT MAX(id) FROM tasks), 0))",
            [],
            |row| row.get::<_, i64>(0),
        )?;
        Ok(u64::try_from(last.unwrap_or(0)).unwrap_or(0) + 1)
    }

    /// Stores a new task and the edges to the tasks it comes after.
    fn insert(&mut self, task: &Task) -> Result<(), StoreError> {
        self.db.change(
            "INSERT INTO tasks (id, type, status, priority, created_at, finished_at, retry_at, \
                lease_expires_at, worker, body, lease_token, conflict) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            rusqlite::params_from_iter(columns(task, None)?),
        )?;
        self.work_appeared |= task.status == TaskStatus::Pending;
        for after in &task.after {
            self.db.change(
                "INSERT OR IGNORE INTO task_after (task_id, after_id) VALUES (?1, ?2)",
                params![parse_id(&task.id)?, parse_id(after).unwrap_or(0)],
            )?;
        }
        Ok(())
    }

    /// Writes back a task that exists. A running task's lease keeps its secret, or gets
    /// `token` (a claim); the secret goes when the attempt ends. (Not an upsert shared with
    /// `insert`: an INSERT into an AUTOINCREMENT table also writes its sequence, a page more
    /// in every claim and finish.)
    fn save(&mut self, task: &Task, token: Option<&str>) -> Result<(), StoreError> {
        self.db.change(
            "UPDATE tasks SET type = ?2, status = ?3, priority = ?4, created_at = ?5, \
                finished_at = ?6, retry_at = ?7, lease_expires_at = ?8, worker = ?9, \
                body = ?10, conflict = ?12, \
                lease_token = CASE WHEN ?3 = 'running' THEN COALESCE(?11, lease_token) END \
             WHERE id = ?1",
            rusqlite::params_from_iter(columns(task, token)?),
        )?;
        self.work_appeared |= task.status == TaskStatus::Pending;
        Ok(())
    }

    fn pause(&self, scope: &PauseScope) -> Result<(), StoreError> {
        let (kind, name) = pause_key(scope);
        self.db.change(
            "INSERT OR IGNORE INTO pauses (kind, name) VALUES (?1, ?2)",
            params![kind, name],
        )
    }
}

impl TaskTx for Tx<'_> {
    fn task(&mut self, id: &str) -> Result<Option<Task>, StoreError> {
        Ok(self.task_and_token(id)?.map(|(task, _)| task))
    }

    fn put(&mut self, task: &Task) -> Result<(), StoreError> {
        self.save(task, None)
    }

    fn dependents(&mut self, id: &str) -> Result<Vec<String>, StoreError> {
        // In task id order, as the primary key is; an ORDER BY would make SQLite re-prepare
        // the statement each time (see `best_candidate`).
        let ids = self.db.rows(
            "SELECT task_id FROM task_after WHERE after_id = ?1",
            [parse_id(id)?],
            |row| row.get::<_, i64>(0),
        )?;
        Ok(ids.iter().map(i64::to_string).collect())
    }
}

/// A task's row, numbered as `insert` and `save` bind it: ?1 id, ?2 type, ?3 status,
/// ?4 priority, ?5 to ?8 times, ?9 worker, ?10 the whole task as JSON, ?11 the lease's secret,
/// ?12 the conflict flag.
fn columns(task: &Task, token: Option<&str>) -> Result<[Value; 12], StoreError> {
    let time = |at: Option<Timestamp>| at.map_or(Value::Null, |at| Value::Integer(millis(at)));
    let text = |text: Option<&str>| text.map_or(Value::Null, |t| Value::Text(t.to_string()));
    Ok([
        Value::Integer(parse_id(&task.id)?),
        Value::Text(task.task_type.clone()),
        Value::Text(task.status.as_str().to_string()),
        Value::Integer(task.priority.into()),
        time(Some(task.created_at)),
        time(task.finished_at),
        time(task.retry_at),
        time(task.lease_expires_at),
        text(task.worker.as_deref()),
        Value::Text(task_body(task)),
        text(token),
        Value::Integer(task.in_conflict().into()),
    ])
}

/// Names the database in a read error; a damaged file is reported as such, never reset. A
/// page found damaged inside a database that opened stops every writer (see
/// [`SqliteStore::write`]); a file that is no database at all opens for nobody anyway.
fn db_err(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |err| match err.sqlite_error_code() {
        Some(ErrorCode::DatabaseCorrupt) => StoreError::Damaged {
            path: path.to_path_buf(),
            reason: format!("SQLite found the database damaged ({err})"),
        },
        Some(ErrorCode::NotADatabase) => StoreError::Corrupt {
            path: path.to_path_buf(),
            reason: err.to_string(),
        },
        _ => StoreError::Database {
            path: path.to_path_buf(),
            message: err.to_string(),
        },
    }
}

/// Like [`db_err`], for errors inside a write, which SQLite rolls back: the message says that
/// nothing changed.
fn write_err(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |err| match err.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => StoreError::Database {
            path: path.to_path_buf(),
            message: "the disk is full; the change was rolled back and nothing was changed".into(),
        },
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => db_err(path)(err),
        _ => StoreError::Database {
            path: path.to_path_buf(),
            message: format!("{err}; the change was rolled back and nothing was changed"),
        },
    }
}

/// `text` as an SQL string literal.
fn sql_text(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A JSON array of `items`, for `json_each`.
/// Deletes what refers to removed tasks: their dependency rows and their pauses.
fn forget_rows(tx: &Tx<'_>, ids: &[i64]) -> Result<(), StoreError> {
    let json = json_list(ids);
    tx.db.change(
        "DELETE FROM task_after WHERE task_id IN (SELECT value FROM json_each(?1))",
        [&json],
    )?;
    tx.db.change(
        "DELETE FROM pauses WHERE kind = 'task' \
            AND name IN (SELECT CAST(value AS TEXT) FROM json_each(?1))",
        [&json],
    )?;
    Ok(())
}

fn json_list<T: serde::Serialize>(items: &[T]) -> String {
    serde_json::to_string(items).expect("a list serializes")
}

impl QueueStore for SqliteStore {
    fn add(&self, tasks: Vec<NewTask>) -> Result<Vec<Task>, StoreError> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let now = Timestamp::now();
        self.write(Commit::AsConfigured, |tx| {
            let first = tx.next_id()?;
            let tasks = lifecycle::new_tasks(tx, tasks, first, now)?;
            for task in &tasks {
                tx.insert(task)?;
            }
            Ok(tasks)
        })
    }

    fn claim(&self, worker: &str, types: &[String]) -> Result<Option<Claim>, StoreError> {
        validate_name("worker name", worker)?;
        let now = Timestamp::now();
        self.write(Commit::Lazy, |tx| self.claim_in(tx, worker, types, now))
    }

    fn renew(&self, lease: &Lease) -> Result<Renewal, StoreError> {
        let now = Timestamp::now();
        self.write(Commit::Lazy, |tx| {
            let mut task = tx.leased(lease, now)?;
            lifecycle::renew(&mut task, now, &self.policy);
            tx.put(&task)?;
            Ok(Renewal {
                cancel_requested: task.cancel_requested,
            })
        })
    }

    fn finish(&self, lease: &Lease, outcome: Outcome) -> Result<Task, StoreError> {
        let now = Timestamp::now();
        self.write(Commit::AsConfigured, |tx| {
            self.finish_in(tx, lease, outcome, now)
        })
    }

    fn finish_and_claim(
        &self,
        lease: &Lease,
        outcome: Outcome,
        worker: &str,
        types: &[String],
    ) -> Result<(Task, Option<Claim>), StoreError> {
        validate_name("worker name", worker)?;
        let now = Timestamp::now();
        self.write(Commit::AsConfigured, |tx| {
            let done = self.finish_in(tx, lease, outcome, now)?;
            // The claim must not take the recorded outcome down with it if it fails.
            tx.db.run("SAVEPOINT next_claim")?;
            let next = self.claim_in(tx, worker, types, now);
            if next.is_err() {
                tx.db.run("ROLLBACK TO next_claim")?;
            }
            tx.db.run("RELEASE next_claim")?;
            Ok((done, next.unwrap_or(None)))
        })
    }

    fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let now = Timestamp::now();
        self.write(Commit::AsConfigured, |tx| {
            let mut task = tx.leased(lease, now)?;
            lifecycle::release(&mut task, now);
            tx.put(&task)?;
            if task.status == TaskStatus::Cancelled {
                lifecycle::settle_dependents(tx, &task, now)?;
            }
            Ok(())
        })
    }

    fn edit(&self, id: &str, edit: &TaskEdit) -> Result<Task, StoreError> {
        self.write(Commit::AsConfigured, |tx| lifecycle::edit(tx, id, edit))
    }

    fn cancel(&self, id: &str) -> Result<Task, StoreError> {
        let now = Timestamp::now();
        self.write(Commit::AsConfigured, |tx| {
            let mut task = tx
                .task(id)?
                .ok_or_else(|| StoreError::NotFound(id.into()))?;
            lifecycle::cancel(&mut task, now)?;
            tx.put(&task)?;
            if task.status == TaskStatus::Cancelled {
                lifecycle::settle_dependents(tx, &task, now)?;
            }
            Ok(task)
        })
    }

    fn retry(&self, id: &str) -> Result<Task, StoreError> {
        let now = Timestamp::now();
        self.write(Commit::AsConfigured, |tx| {
            let mut task = tx
                .task(id)?
                .ok_or_else(|| StoreError::NotFound(id.into()))?;
            lifecycle::retry(tx, &mut task)?;
            tx.put(&task)?;
            lifecycle::settle_dependents(tx, &task, now)?;
            Ok(task)
        })
    }

    fn update(&self, id: &str, change: &TaskChange<'_>) -> Result<Task, StoreError> {
        let now = Timestamp::now();
        self.write(Commit::AsConfigured, |tx| {
            let mut task = tx
                .task(id)?
                .ok_or_else(|| StoreError::NotFound(id.into()))?;
            change(&mut task, now)?;
            tx.put(&task)?;
            lifecycle::settle_dependents(tx, &task, now)?;
            Ok(task)
        })
    }

    fn pause(&self, scope: &PauseScope) -> Result<(), StoreError> {
        if let PauseScope::Type(task_type) = scope {
            validate_name("task type", task_type)?;
        }
        self.write(Commit::AsConfigured, |tx| {
            if let PauseScope::Task(id) = scope
                && tx.task(id)?.is_none()
            {
                return Err(StoreError::NotFound(id.clone()));
            }
            tx.pause(scope)
        })
    }

    fn resume(&self, scope: &PauseScope) -> Result<(), StoreError> {
        self.write(Commit::AsConfigured, |tx| {
            let (kind, name) = pause_key(scope);
            tx.db.change(
                "DELETE FROM pauses WHERE kind = ?1 AND name = ?2",
                params![kind, name],
            )?;
            tx.work_appeared = true;
            Ok(())
        })
    }

    fn paused(&self) -> Result<Vec<PauseScope>, StoreError> {
        let mut scopes = self.read(|db| {
            db.rows("SELECT kind, name FROM pauses", [], |row| {
                let name = row.get::<_, String>(1)?;
                Ok(pause_scope(&row.get::<_, String>(0)?, name))
            })
        })?;
        scopes.sort();
        Ok(scopes)
    }

    fn get(&self, id: &str) -> Result<Task, StoreError> {
        let numeric = parse_id(id)?;
        let body = self.read(|db| {
            db.row("SELECT body FROM tasks WHERE id = ?1", [numeric], |row| {
                row.get::<_, String>(0)
            })
        })?;
        match body {
            Some(body) => parse_task(&self.path, numeric, &body),
            None => Err(StoreError::NotFound(id.to_string())),
        }
    }

    fn list(&self, query: &TaskQuery) -> Result<Vec<Task>, StoreError> {
        let mut conditions: Vec<String> = Vec::new();
        if query.in_conflict {
            conditions.push("conflict = 1".into());
        }
        let mut values: Vec<Value> = Vec::new();
        let mut bind = |condition: &str, value: Value| {
            values.push(value);
            conditions.push(condition.replace('?', &format!("?{}", values.len())));
        };
        if !query.statuses.is_empty() {
            let names: Vec<&str> = query.statuses.iter().map(|s| s.as_str()).collect();
            bind(
                "status IN (SELECT value FROM json_each(?))",
                json_list(&names).into(),
            );
        }
        if let Some(task_type) = query.task_type.as_ref().filter(|t| !t.is_empty()) {
            bind("type = ?", task_type.clone().into());
        }
        if let Some(worker) = query.worker.as_ref().filter(|w| !w.is_empty()) {
            bind("worker = ?", worker.clone().into());
        }
        if let Some(since) = query.finished_since {
            bind("finished_at >= ?", millis(since).into());
        }
        if let Some(text) = query.text.as_ref().filter(|t| !t.is_empty()) {
            let escaped = text
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            bind("body LIKE ? ESCAPE '\\'", format!("%{escaped}%").into());
        }
        if let Some(after) = query.after_id {
            let after = i64::try_from(after).unwrap_or(i64::MAX);
            bind(
                if query.newest_first {
                    "id < ?"
                } else {
                    "id > ?"
                },
                after.into(),
            );
        }
        let mut sql = "SELECT id, body FROM tasks".to_string();
        if !conditions.is_empty() {
            sql.push_str(&format!(" WHERE {}", conditions.join(" AND ")));
        }
        sql.push_str(match (query.by_finish, query.newest_first) {
            (true, true) => " ORDER BY finished_at DESC, id DESC",
            (true, false) => " ORDER BY finished_at, id",
            (false, true) => " ORDER BY id DESC",
            (false, false) => " ORDER BY id",
        });
        if let Some(limit) = query.limit {
            sql.push_str(&format!(" LIMIT {}", limit.min(i64::MAX as usize)));
        }
        let rows = self.read(|db| {
            db.rows(&sql, rusqlite::params_from_iter(values.iter()), |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
            })
        })?;
        Ok(rows
            .iter()
            .filter_map(|(id, body)| {
                self.unreadable
                    .readable(*id, parse_task(&self.path, *id, body))
            })
            .collect())
    }

    fn summary(&self) -> Result<Summary, StoreError> {
        let rows = self.read(|db| {
            db.rows(
                "SELECT status, type, n FROM counts WHERE n > 0",
                [],
                |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, i64>(2)?,
                    ))
                },
            )
        })?;
        let mut summary = Summary::default();
        for (status, task_type, n) in rows {
            summary.count(&status, task_type, n);
        }
        Ok(summary)
    }

    fn has_work(&self, types: &[String]) -> Result<bool, StoreError> {
        // One task that is work (running, claimable, or upstream of a blocked task of these
        // types), so that its record can be read: an unreadable one is never finished, so it
        // is no work to wait for.
        let sql = format!(
            "SELECT * FROM (SELECT t.id, t.body FROM tasks t WHERE t.status = 'running' \
                    AND t.type IN (SELECT value FROM json_each(?1)) \
                    AND t.id NOT IN (SELECT value FROM json_each(?2)) LIMIT 1) \
             UNION ALL SELECT * FROM (SELECT t.id, t.body FROM tasks t WHERE t.status = 'pending' \
                    AND t.type IN (SELECT value FROM json_each(?1)) \
                    AND t.id NOT IN (SELECT value FROM json_each(?2)) AND NOT {PAUSED} LIMIT 1) \
             UNION ALL SELECT * FROM ( \
                WITH RECURSIVE upstream(id) AS ( \
                    SELECT a.after_id FROM task_after a JOIN tasks b ON b.id = a.task_id \
                        WHERE b.status = 'blocked' AND b.type IN (SELECT value FROM json_each(?1)) \
                    UNION \
                    SELECT a.after_id FROM task_after a JOIN upstream u ON a.task_id = u.id) \
                SELECT t.id, t.body FROM upstream u JOIN tasks t ON t.id = u.id \
                    WHERE (t.status = 'running' OR (t.status = 'pending' AND NOT {PAUSED})) \
                    AND t.id NOT IN (SELECT value FROM json_each(?2)) LIMIT 1) \
             LIMIT 1"
        );
        let types = json_list(types);
        loop {
            let unreadable = json_list(&self.unreadable.ids());
            let found = self.read(|db| {
                db.row(&sql, params![types, unreadable], |row| {
                    Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
                })
            })?;
            let Some((id, body)) = found else {
                return Ok(false);
            };
            match parse_task(&self.path, id, &body) {
                Ok(_) => return Ok(true),
                Err(err) => self.unreadable.note(id, &err),
            }
        }
    }

    fn expire_leases(&self) -> Result<usize, StoreError> {
        let now = Timestamp::now();
        self.write(Commit::AsConfigured, |tx| {
            self.expire_due(tx, now, "host expire")
        })
    }

    fn purge(&self, before: Timestamp, statuses: &[TaskStatus]) -> Result<usize, StoreError> {
        let finished = json_list(&purgeable(statuses));
        let mut purged = 0;
        // In batches, each its own transaction, so that no writer (a lease renewal) waits long.
        loop {
            let ids: Vec<i64> = self.write(Commit::AsConfigured, |tx| {
                let ids: Vec<i64> = tx.db.rows(
                    "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks WHERE finished_at < ?1 \
                        AND status IN (SELECT value FROM json_each(?2)) LIMIT ?3) RETURNING id",
                    params![millis(before), finished, PURGE_BATCH as i64],
                    |row| row.get(0),
                )?;
                forget_rows(tx, &ids)?;
                Ok(ids)
            })?;
            for id in &ids {
                self.folder.remove_log(&id.to_string())?;
            }
            purged += ids.len();
            if ids.len() < PURGE_BATCH {
                break;
            }
        }
        if purged > 0 {
            // Gives back what the log grew to, without waiting for readers.
            let inner = self.inner.lock().expect("connection lock");
            let _ = inner.conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)");
        }
        Ok(purged)
    }

    fn forget_finished(&self, ids: &[i64]) -> Result<(), StoreError> {
        let json = json_list(ids);
        let removed: Vec<i64> = self.write(Commit::AsConfigured, |tx| {
            let removed: Vec<i64> = tx.db.rows(
                "DELETE FROM tasks WHERE id IN (SELECT value FROM json_each(?1)) \
                    AND status IN ('completed', 'failed', 'cancelled') RETURNING id",
                [&json],
                |row| row.get(0),
            )?;
            forget_rows(tx, &removed)?;
            Ok(removed)
        })?;
        for id in &removed {
            self.folder.remove_log(&id.to_string())?;
        }
        Ok(())
    }

    fn put_worker(&self, record: &WorkerRecord) -> Result<(), StoreError> {
        validate_name("worker name", &record.name)?;
        let json = serde_json::to_string(record).expect("worker record serializes");
        self.write(Commit::Lazy, |tx| {
            tx.db.change(
                "INSERT OR REPLACE INTO workers (name, record) VALUES (?1, ?2)",
                params![record.name, json],
            )
        })
    }

    fn remove_worker(&self, name: &str) -> Result<(), StoreError> {
        self.write(Commit::Lazy, |tx| {
            tx.db.change("DELETE FROM workers WHERE name = ?1", [name])
        })
    }

    fn workers(&self) -> Result<Vec<WorkerRecord>, StoreError> {
        let rows = self.read(|db| {
            db.rows(
                "SELECT name, record FROM workers ORDER BY name",
                [],
                |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)),
            )
        })?;
        rows.into_iter()
            .map(|(name, record)| {
                serde_json::from_str(&record).map_err(|err| StoreError::Corrupt {
                    path: PathBuf::from(format!("{}, worker {name}", self.path.display())),
                    reason: err.to_string(),
                })
            })
            .collect()
    }

    fn append_log(&self, id: &str, line: &str) -> Result<(), StoreError> {
        parse_id(id)?;
        self.folder.append_log(id, line)
    }

    fn read_log(&self, id: &str, from: u64) -> Result<(String, u64), StoreError> {
        self.get(id)?;
        self.folder.read_log(id, from)
    }

    fn lease_duration(&self) -> Duration {
        self.policy.lease
    }

    /// SQLite's `quick_check` (every page, not the indexes' contents).
    fn quick_check(&self) -> Result<(), StoreError> {
        let found =
            self.read(|db| db.rows("PRAGMA quick_check", [], |row| row.get::<_, String>(0)))?;
        match found.iter().find(|line| *line != "ok") {
            None => Ok(()),
            Some(first) => Err(self.noted(StoreError::Damaged {
                path: self.path.clone(),
                reason: format!("SQLite's quick check found the database damaged ({first})"),
            })),
        }
    }

    fn take_warnings(&self) -> Vec<String> {
        self.unreadable.take_warnings()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_schema_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        drop(SqliteStore::init(&dir.path().join("q")).unwrap());
        let db = dir.path().join("q").join("queue.db");
        Connection::open(&db)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let err = SqliteStore::open(&dir.path().join("q")).err().unwrap();
        assert!(
            matches!(err, StoreError::NewerSchema { found: 99, .. }),
            "{err}"
        );
    }

    /// A queue of schema version 1 (before review) keeps its tasks, counts and id counter when
    /// opened by this version, and takes the new state.
    #[test]
    fn a_version_1_queue_is_migrated_whole() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("q");
        drop(SqliteStore::init(&root).unwrap());
        let conn = Connection::open(root.join("queue.db")).unwrap();
        let tables: Vec<String> = conn
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
            )
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for table in tables {
            conn.execute_batch(&format!("DROP TABLE {table}")).unwrap();
        }
        conn.execute_batch("DELETE FROM sqlite_sequence").unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        let now = Timestamp::now();
        for id in 1..=3 {
            let task = NewTask {
                task_type: "alpha".into(),
                ..NewTask::default()
            }
            .into_task(id.to_string(), Vec::new(), now);
            conn.execute(
                "INSERT INTO tasks (id, type, status, priority, created_at, body) \
                 VALUES (?1, 'alpha', 'pending', 5, 0, ?2)",
                params![id, task_body(&task)],
            )
            .unwrap();
        }
        // Id 3 was purged: it is never given out again.
        conn.execute_batch("DELETE FROM tasks WHERE id = 3; PRAGMA user_version = 1")
            .unwrap();
        drop(conn);

        let store = SqliteStore::open(&root).unwrap();
        assert_eq!(store.get("2").unwrap().task_type, "alpha");
        assert_eq!(
            store.summary().unwrap().counts.get(&TaskStatus::Pending),
            Some(&2)
        );
        let added = store
            .add(vec![NewTask {
                task_type: "alpha".into(),
                ..NewTask::default()
            }])
            .unwrap();
        assert_eq!(added[0].id, "4");
        let claim = store.claim("w", &["alpha".into()]).unwrap().unwrap();
        let waiting = store
            .finish(&claim.lease, Outcome::ForReview(serde_json::Value::Null))
            .unwrap();
        assert_eq!(waiting.status, TaskStatus::Review);
        assert_eq!(
            store.summary().unwrap().counts.get(&TaskStatus::Review),
            Some(&1)
        );
    }
}
