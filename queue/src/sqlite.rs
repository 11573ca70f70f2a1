//! The embedded driver: SQLite (WAL) in the coordination folder, so a queue needs no server.
//!
//! - **Schema** in numbered migrations (`sqlite/migrations/NNNN_*.sql`), applied in order under
//!   the writers' lock and recorded in SQLite's `user_version`, after the database was copied
//!   to `queue.db.schema-N` (N the old version); a database newer than this binary is refused.
//! - **Writers** queue on the folder's writers' lock ([`writers`]) around each write
//!   transaction (`BEGIN IMMEDIATE`). Readers never wait (WAL).
//! - **Durability**: every commit is made with `synchronous = NORMAL` (the log written, not
//!   flushed); in a `durable` queue, an operation that adds work or records an outcome then
//!   flushes the log before it returns, after releasing the writers' lock, so that workers
//!   finishing at once share one flush: as durable as `FULL`, without holding the next writer
//!   up for the disk. Claims and renewals are not flushed: losing one to a power loss only
//!   means the task runs again, and the next flush covers them (the log is written in order).
//! - **Damage**: a write is refused once the queue was found damaged, or once the database,
//!   its log or its index is no longer the file this process opened.
//! - **Claims** read from a partial index on pending tasks, ordered by priority then id;
//!   `status` reads counts that triggers keep.

mod files;
mod writers;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use rusqlite::types::Value;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, Params, params};

use crate::driver::{Candidate, Commit, Driver, DriverTx, Finished, StoredTask, TaskRow};
use crate::engine::Engine;
use crate::folder::io_err;
use crate::lifecycle::PauseSet;
use crate::records::millis;
use crate::{Durability, QueueFolder, StoreError, TaskQuery};

/// The migrations, in order; the schema version is how many have been applied.
const MIGRATIONS: [&str; 2] = [
    include_str!("sqlite/migrations/0001_initial.sql"),
    include_str!("sqlite/migrations/0002_review.sql"),
];

/// How long a statement waits for a lock that another program (not a `host`, which queues on
/// the folder's flock) holds on the database.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The WAL is truncated back to this size after a checkpoint, so it stays bounded.
const WAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// The embedded queue: the engine over SQLite in a coordination folder.
pub type SqliteStore = Engine<SqliteDriver>;

/// SQLite in a coordination folder.
pub struct SqliteDriver {
    folder: QueueFolder,
    path: PathBuf,
    /// The database's name in [`OPEN_HERE`]: its path with links resolved.
    registered: PathBuf,
    inner: Mutex<Inner>,
    durability: Durability,
    /// The write-ahead log, opened for flushing durable commits. No lock is ever taken on it,
    /// so this descriptor cannot release SQLite's (POSIX locks go with any descriptor of a
    /// locked file).
    log: Mutex<Option<Arc<std::fs::File>>>,
    /// The database and SQLite's files beside it, with their identity when this process
    /// opened them: one deleted or replaced since means the processes of the queue no longer
    /// share one log and one index, and a write now could lose or corrupt what others wrote.
    opened: Vec<(PathBuf, u64)>,
}

/// How many drivers of this process have each database open (see [`SqliteDriver::connect`]).
static OPEN_HERE: Mutex<std::collections::BTreeMap<PathBuf, usize>> =
    Mutex::new(std::collections::BTreeMap::new());

impl Drop for SqliteDriver {
    /// Closes the connection while the registry is held, so that no other connection of this
    /// process opens the files outside SQLite before this one's locks are gone.
    fn drop(&mut self) {
        let mut open_here = OPEN_HERE
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let inner = self
            .inner
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Ok(nothing) = Connection::open_in_memory() {
            drop(std::mem::replace(&mut inner.conn, nothing));
        }
        if let Some(count) = open_here.get_mut(&self.registered) {
            *count -= 1;
            if *count == 0 {
                open_here.remove(&self.registered);
            }
        }
    }
}

/// The connection, and the folder held open for the writers' flock.
struct Inner {
    conn: Connection,
    writers: writers::WritersLock,
}

/// Whether opening a database may create the queue's schema in it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Schema {
    /// `host init`: an empty database becomes a new queue.
    Create,
    /// Everything else: an empty database is a lost queue, refused and left as it is.
    Existing,
}

impl Engine<SqliteDriver> {
    /// Creates the queue folder and database (idempotent): the folder owner-only, the schema
    /// migrated to this version.
    pub fn init(root: &Path) -> Result<SqliteStore, StoreError> {
        SqliteDriver::create(QueueFolder::create(root)?).map(Engine::new)
    }

    /// Like [`SqliteStore::init`], also in a folder that holds a queue of the earlier format:
    /// for `host import`, which brings that queue in.
    pub fn init_for_import(root: &Path) -> Result<SqliteStore, StoreError> {
        SqliteDriver::create(QueueFolder::create_over_old_format(root)?).map(Engine::new)
    }

    /// Opens an existing queue, migrating its schema to this version if it is older (after
    /// copying the database aside).
    pub fn open(root: &Path) -> Result<SqliteStore, StoreError> {
        SqliteDriver::connect(QueueFolder::open(root)?, Schema::Existing).map(Engine::new)
    }

    /// The schema version of the queue database in folder `root`, read without changing it,
    /// and this host's.
    pub fn schema_version(root: &Path) -> Result<(i64, i64), StoreError> {
        let path = QueueFolder::open(root)?.database();
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NOFOLLOW;
        let conn = Connection::open_with_flags(&path, flags).map_err(db_err(&path))?;
        let found = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(db_err(&path))?;
        Ok((found, MIGRATIONS.len() as i64))
    }

    /// The coordination folder.
    pub fn folder(&self) -> &QueueFolder {
        &self.driver().folder
    }

    /// Waits for this process's writes under way and keeps new ones from starting until the
    /// guard is dropped (see [`writers::hold_writes`]).
    pub fn hold_writes() -> std::sync::RwLockWriteGuard<'static, ()> {
        writers::hold_writes()
    }
}

impl SqliteDriver {
    /// The connection, for this thread alone. A write that panicked left it whole (its guard
    /// rolled the transaction back and released the writers' lock), so a lock it poisoned is
    /// taken all the same: one panic must not make every later write panic.
    fn connection(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn create(folder: QueueFolder) -> Result<SqliteDriver, StoreError> {
        folder.create_database_file()?;
        folder.doorbell();
        SqliteDriver::connect(folder, Schema::Create)
    }

    fn connect(folder: QueueFolder, schema: Schema) -> Result<SqliteDriver, StoreError> {
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
        // Closing any descriptor of a file drops every POSIX lock this process holds on it,
        // SQLite's included: the files are opened outside SQLite only while no connection of
        // this process has the queue open (the registry is held until this one is open).
        let mut open_here = OPEN_HERE
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // By the file's own name: the same queue reached through a linked folder is the same.
        let registered = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        if !open_here.contains_key(&registered) {
            if let Err(err) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
            {
                return Err(io_err(&path)(err));
            }
            if let Some(lost) = files::lost_log(&path) {
                return Err(folder.damage().unwrap_or_else(|| {
                    folder.record_damage(&path, &lost);
                    StoreError::Damaged { path, reason: lost }
                }));
            }
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NOFOLLOW
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&path, flags).map_err(db_err(&path))?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(db_err(&path))?;
        // Every task type has its own claim statement (see `candidates`).
        conn.set_prepared_statement_cache_capacity(64);
        // Every commit leaves the log unflushed; a durable one is flushed after the writers'
        // lock is released (see `write`). Per connection: the log is cut back to its limit
        // after each checkpoint.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .and_then(|()| conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT))
            .map_err(db_err(&path))?;
        let mut inner = Inner {
            conn,
            writers: writers::WritersLock::new(folder.writers_lock()?),
        };
        migrate(&mut inner, &path, &folder, schema)?;
        let durability = match (Tx::reading(&inner.conn, &path)).setting("durability")? {
            Some(value) if value == "relaxed" => Durability::Relaxed,
            _ => Durability::Durable,
        };
        // After the first read: SQLite has opened its log and index by now.
        let opened = ["", "-wal", "-shm"]
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
        *open_here.entry(registered.clone()).or_default() += 1;
        drop(open_here);
        Ok(SqliteDriver {
            folder,
            path,
            registered,
            inner: Mutex::new(inner),
            durability,
            log: Mutex::new(None),
            opened,
        })
    }

    /// Makes every committed change durable: flushes the write-ahead log, which holds them in
    /// order (what `synchronous = FULL` does inside each commit). Done after the writers' lock
    /// is released, so the next writer need not wait for the disk, and workers committing at
    /// the same moment share one flush (group commit across processes).
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

    /// Refuses to write when the queue was found damaged (by this process or another), or when
    /// the database, its log or its index is no longer the file this process opened. Checked
    /// under the writers' lock: a few `stat`s per write.
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
}

impl Driver for SqliteDriver {
    type Tx<'t> = Tx<'t>;

    fn name(&self) -> &Path {
        &self.path
    }

    fn durability(&self) -> Durability {
        self.durability
    }

    fn use_durability(&mut self, durability: Durability) {
        self.durability = durability;
    }

    /// Queued behind other writers on the folder's flock; rings the doorbell after the commit
    /// when work was announced.
    fn write<T: Send>(
        &self,
        commit: Commit,
        work: &mut (dyn FnMut(&mut Tx<'_>) -> Result<T, StoreError> + Send),
    ) -> Result<T, StoreError> {
        let inner = self.connection();
        let _writing = writers::WRITING
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        inner.writers.lock(self.folder.root())?;
        // Undoes an unfinished transaction and hands the lock on however this ends, a panic
        // in `work` included: other processes must never wait on a writer that is gone.
        let guard = WriteGuard(&inner);
        self.refuse_if_damaged()?;
        let mut tx = Tx::reading(&inner.conn, &self.path);
        let result = tx.run("BEGIN IMMEDIATE").and_then(|()| {
            let out = work(&mut tx)?;
            tx.run("COMMIT")?;
            Ok(out)
        });
        let announced = tx.announced;
        drop(guard);
        drop(inner);
        let out = result.map_err(|err| self.noted(err))?;
        if commit == Commit::AsConfigured {
            self.flush()?;
        }
        if announced {
            self.folder.ring_doorbell();
        }
        Ok(out)
    }

    /// Never waits for writers.
    fn read<T: Send>(
        &self,
        read: &mut (dyn FnMut(&mut Tx<'_>) -> Result<T, StoreError> + Send),
    ) -> Result<T, StoreError> {
        let mut inner = self.connection();
        let result = inner
            .conn
            .transaction()
            .map_err(db_err(&self.path))
            .and_then(|snapshot| {
                let out = read(&mut Tx::reading(&snapshot, &self.path))?;
                snapshot.commit().map_err(db_err(&self.path))?;
                Ok(out)
            });
        result.map_err(|err| self.noted(err))
    }

    fn flush(&self) -> Result<(), StoreError> {
        if self.durability == Durability::Durable {
            self.sync_log()?;
        }
        Ok(())
    }

    fn append_log(&self, id: i64, line: &str) -> Result<(), StoreError> {
        self.folder.append_log(&id.to_string(), line)
    }

    fn read_log(&self, id: i64, from: u64) -> Result<(String, u64), StoreError> {
        self.folder.read_log(&id.to_string(), from)
    }

    fn forget_logs(&self, ids: &[i64]) -> Result<(), StoreError> {
        for id in ids {
            self.folder.remove_log(&id.to_string())?;
        }
        if !ids.is_empty() {
            // Gives back what the log grew to, without waiting for readers.
            let inner = self.connection();
            let _ = inner.conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)");
        }
        Ok(())
    }

    /// SQLite's `quick_check` (every page, not the indexes' contents).
    fn quick_check(&self) -> Result<(), StoreError> {
        let found = self.read(&mut |tx| tx.rows("PRAGMA quick_check", [], |row| row.get(0)))?;
        match found.iter().find(|line: &&String| *line != "ok") {
            None => Ok(()),
            Some(first) => Err(self.noted(StoreError::Damaged {
                path: self.path.clone(),
                reason: format!("SQLite's quick check found the database damaged ({first})"),
            })),
        }
    }

    /// Damage is first recorded in the folder, so that every process stops writing and
    /// `host doctor` can say what was found.
    fn noted(&self, err: StoreError) -> StoreError {
        if let StoreError::Damaged { path, reason } = &err {
            self.folder.record_damage(path, reason);
        }
        err
    }

    fn check_database(&self) -> Result<Vec<String>, StoreError> {
        let lines = self.read(&mut |tx| tx.rows("PRAGMA integrity_check", [], |row| row.get(0)))?;
        Ok(lines
            .into_iter()
            .filter(|line: &String| line != "ok")
            .map(|line| format!("{}: {line}", self.path.display()))
            .collect())
    }
}

/// Brings the schema up to this version's, one migration at a time, under the writers' lock
/// so that processes opening a new queue together do not race; an existing queue is first
/// copied to `queue.db.schema-N`. Refuses a newer schema.
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
    inner.writers.lock(folder.root())?;
    let _guard = WriteGuard(inner);
    let tx = Tx::reading(&inner.conn, path);
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
    // Another process may have migrated meanwhile.
    let from = version(&inner.conn)?;
    if from > 0 && from < known {
        copy_aside(&inner.conn, path, from)?;
    }
    tx.run("BEGIN IMMEDIATE")?;
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
    tx.run("COMMIT")
}

/// Copies the database, before migrating it from schema `version`, to `queue.db.schema-N`
/// beside it (`-2`, `-3` ... after the name when one is there already), so that an older host
/// can still be given the queue as it was.
fn copy_aside(conn: &Connection, path: &Path, version: i64) -> Result<PathBuf, StoreError> {
    let base = format!("{}.schema-{version}", path.display());
    let copy = (1..)
        .map(|n| match n {
            1 => PathBuf::from(&base),
            n => PathBuf::from(format!("{base}-{n}")),
        })
        .find(|candidate| std::fs::symlink_metadata(candidate).is_err())
        .expect("a free name");
    conn.execute("VACUUM INTO ?1", [copy.to_string_lossy()])
        .map_err(|err| StoreError::Database {
            path: copy.clone(),
            message: format!(
                "could not copy the queue aside before upgrading its schema ({err}); nothing \
                 was changed"
            ),
        })?;
    Ok(copy)
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
        self.0.writers.unlock();
    }
}

/// A transaction on the connection. Statements are cached: parsing them anew (BEGIN and
/// COMMIT included) showed in profiles.
pub struct Tx<'c> {
    conn: &'c Connection,
    path: &'c Path,
    /// Set when some task became claimable; the doorbell rings after the commit.
    announced: bool,
}

impl<'c> Tx<'c> {
    fn reading(conn: &'c Connection, path: &'c Path) -> Tx<'c> {
        Tx {
            conn,
            path,
            announced: false,
        }
    }

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

    fn run(&self, sql: &str) -> Result<(), StoreError> {
        self.change(sql, [])
    }

    /// (id, body) rows of a query.
    fn records(&self, sql: &str, params: impl Params) -> Result<Vec<(i64, String)>, StoreError> {
        self.rows(sql, params, |row| Ok((row.get(0)?, row.get(1)?)))
    }

    /// Deletes what refers to removed tasks: their dependency rows and their pauses.
    fn forget_rows(&self, ids: &[i64]) -> Result<(), StoreError> {
        let json = json_list(ids);
        self.change(
            "DELETE FROM task_after WHERE task_id IN (SELECT value FROM json_each(?1))",
            [&json],
        )?;
        self.change(
            "DELETE FROM pauses WHERE kind = 'task' \
                AND name IN (SELECT CAST(value AS TEXT) FROM json_each(?1))",
            [&json],
        )
    }
}

/// A task's columns, as `insert` and `update` bind them: ?1 id, ?2 type, ?3 status,
/// ?4 priority, ?5 to ?8 times, ?9 worker, ?10 the whole task as JSON, ?11 the lease's secret,
/// ?12 the conflict flag.
fn columns(row: &TaskRow) -> [Value; 12] {
    let time = |at: Option<i64>| at.map_or(Value::Null, Value::Integer);
    let text = |text: Option<&str>| text.map_or(Value::Null, |t| Value::Text(t.to_string()));
    [
        Value::Integer(row.id),
        Value::Text(row.task_type.clone()),
        Value::Text(row.status.to_string()),
        Value::Integer(row.priority),
        Value::Integer(row.created_at),
        time(row.finished_at),
        time(row.retry_at),
        time(row.lease_expires_at),
        text(row.worker.as_deref()),
        Value::Text(row.body.clone()),
        text(row.token.as_deref()),
        Value::Integer(row.conflict.into()),
    ]
}

impl DriverTx for Tx<'_> {
    fn tasks(&mut self, ids: &[i64]) -> Result<Vec<StoredTask>, StoreError> {
        let stored = |row: &rusqlite::Row<'_>| {
            Ok(StoredTask {
                id: row.get(0)?,
                body: row.get(1)?,
                token: row.get(2)?,
                has_dependents: row.get(3)?,
            })
        };
        let columns = "SELECT id, body, lease_token, \
            EXISTS (SELECT 1 FROM task_after a WHERE a.after_id = t.id) FROM tasks t";
        match ids {
            [id] => self.rows(&format!("{columns} WHERE id = ?1"), [id], stored),
            _ => self.rows(
                &format!("{columns} WHERE id IN (SELECT value FROM json_each(?1)) ORDER BY id"),
                [json_list(ids)],
                stored,
            ),
        }
    }

    fn dependents(&mut self, ids: &[i64]) -> Result<Vec<(i64, i64)>, StoreError> {
        let pair = |row: &rusqlite::Row<'_>| Ok((row.get(0)?, row.get(1)?));
        // In task id order, as the primary key is; an ORDER BY would make SQLite re-prepare
        // the statement each time (see `candidates`).
        match ids {
            [id] => self.rows(
                "SELECT after_id, task_id FROM task_after WHERE after_id = ?1",
                [id],
                pair,
            ),
            _ => self.rows(
                "SELECT after_id, task_id FROM task_after \
                 WHERE after_id IN (SELECT value FROM json_each(?1)) ORDER BY task_id",
                [json_list(ids)],
                pair,
            ),
        }
    }

    fn reserve_ids(&mut self, _count: usize) -> Result<i64, StoreError> {
        // AUTOINCREMENT: the inserts move the counter; the writers' lock keeps adds apart.
        let last = self.row(
            "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'tasks'), 0), \
                        COALESCE((SELECT MAX(id) FROM tasks), 0))",
            [],
            |row| row.get::<_, i64>(0),
        )?;
        Ok(last.unwrap_or(0) + 1)
    }

    fn advance_ids(&mut self, last: i64) -> Result<(), StoreError> {
        // sqlite_sequence has no key: update its row, or add one when there is none.
        self.change(
            "UPDATE sqlite_sequence SET seq = MAX(seq, ?1) WHERE name = 'tasks'",
            [last],
        )?;
        self.change(
            "INSERT INTO sqlite_sequence (name, seq) SELECT 'tasks', ?1 \
             WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'tasks')",
            [last],
        )
    }

    fn insert(&mut self, rows: &[TaskRow]) -> Result<(), StoreError> {
        for row in rows {
            self.change(
                "INSERT INTO tasks (id, type, status, priority, created_at, finished_at, \
                    retry_at, lease_expires_at, worker, body, lease_token, conflict) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                rusqlite::params_from_iter(columns(row)),
            )?;
            for after in &row.after {
                self.change(
                    "INSERT OR IGNORE INTO task_after (task_id, after_id) VALUES (?1, ?2)",
                    params![row.id, after],
                )?;
            }
        }
        Ok(())
    }

    /// (Not an upsert shared with `insert`: an INSERT into an AUTOINCREMENT table also writes
    /// its sequence, a page more in every claim and finish.)
    fn update(&mut self, rows: &[TaskRow]) -> Result<(), StoreError> {
        for row in rows {
            self.change(
                "UPDATE tasks SET type = ?2, status = ?3, priority = ?4, created_at = ?5, \
                    finished_at = ?6, retry_at = ?7, lease_expires_at = ?8, worker = ?9, \
                    body = ?10, conflict = ?12, \
                    lease_token = CASE WHEN ?3 = 'running' THEN COALESCE(?11, lease_token) END \
                 WHERE id = ?1",
                rusqlite::params_from_iter(columns(row)),
            )?;
        }
        Ok(())
    }

    fn candidates(
        &mut self,
        types: &[String],
        now: Timestamp,
        per_type: usize,
        skip: &[i64],
        by_age: bool,
    ) -> Result<Vec<Candidate>, StoreError> {
        let skipped = if skip.is_empty() {
            String::new()
        } else {
            let ids: Vec<String> = skip.iter().map(i64::to_string).collect();
            format!(" AND id NOT IN ({})", ids.join(", "))
        };
        let mut found = Vec::new();
        for task_type in types {
            // The type is written into the statement rather than bound: SQLite (built with
            // STAT4) re-prepares a statement with a bound value that its plan's index order
            // depends on after every reset, which cost a fifth of each claim. Types are plain
            // names (validated), and each gets its own cached statement.
            let pending = format!(
                "status = 'pending' AND type = {} AND (retry_at IS NULL OR retry_at <= ?1){skipped}",
                sql_text(task_type),
            );
            let sql = if by_age {
                // The oldest of each priority are the ones that have aged most: the best
                // `per_type` under aging are among each priority's first `per_type`.
                format!(
                    "SELECT id, priority, created_at, body FROM tasks WHERE id IN ( \
                        SELECT id FROM ( \
                            SELECT id, row_number() OVER (PARTITION BY priority ORDER BY id) \
                                AS n FROM tasks WHERE {pending}) \
                        WHERE n <= {per_type})"
                )
            } else {
                format!(
                    "SELECT id, priority, created_at, body FROM tasks WHERE {pending} \
                     ORDER BY priority, id LIMIT {per_type}"
                )
            };
            found.extend(self.rows(&sql, [millis(now)], |row| {
                Ok(Candidate {
                    id: row.get(0)?,
                    priority: row.get(1)?,
                    created_at: row.get(2)?,
                    body: row.get(3)?,
                })
            })?);
        }
        Ok(found)
    }

    fn running(&mut self, task_type: &str) -> Result<usize, StoreError> {
        let n = self.row(
            "SELECT n FROM counts WHERE status = 'running' AND type = ?1",
            [task_type],
            |row| row.get::<_, i64>(0),
        )?;
        Ok(usize::try_from(n.unwrap_or(0)).unwrap_or(0))
    }

    fn expired(&mut self, now: Timestamp) -> Result<Vec<(i64, String)>, StoreError> {
        self.records(
            "SELECT id, body FROM tasks WHERE status = 'running' AND lease_expires_at < ?1",
            [millis(now)],
        )
    }

    fn set_pause(&mut self, kind: &str, name: &str, on: bool) -> Result<(), StoreError> {
        let sql = if on {
            "INSERT OR IGNORE INTO pauses (kind, name) VALUES (?1, ?2)"
        } else {
            "DELETE FROM pauses WHERE kind = ?1 AND name = ?2"
        };
        self.change(sql, params![kind, name])
    }

    fn pauses(&mut self) -> Result<Vec<(String, String)>, StoreError> {
        self.rows("SELECT kind, name FROM pauses", [], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
    }

    fn select(&mut self, query: &TaskQuery) -> Result<Vec<(i64, String)>, StoreError> {
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
            bind("body LIKE ? ESCAPE '\\'", like_pattern(text).into());
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
        let sql = query_sql(&conditions, query);
        self.records(&sql, rusqlite::params_from_iter(values.iter()))
    }

    fn counts(&mut self) -> Result<Vec<(String, String, i64)>, StoreError> {
        self.rows(
            "SELECT status, type, n FROM counts WHERE n > 0",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
    }

    fn wrong_counts(&mut self) -> Result<Vec<(String, String, i64, i64)>, StoreError> {
        self.rows(
            "SELECT status, type, COALESCE(c.n, 0), COALESCE(t.n, 0) FROM \
                (SELECT status, type, COUNT(*) AS n FROM tasks GROUP BY status, type) t \
                FULL JOIN counts c USING (status, type) \
             WHERE COALESCE(c.n, 0) != COALESCE(t.n, 0)",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
        )
    }

    fn first_work(
        &mut self,
        types: &[String],
        skip: &[i64],
        paused: &PauseSet,
    ) -> Result<Option<(i64, String)>, StoreError> {
        const NOT_PAUSED: &str = "NOT (?3 OR t.type IN (SELECT value FROM json_each(?4)) \
            OR t.id IN (SELECT value FROM json_each(?5)))";
        let sql = format!(
            "SELECT * FROM (SELECT t.id, t.body FROM tasks t WHERE t.status = 'running' \
                    AND t.type IN (SELECT value FROM json_each(?1)) \
                    AND t.id NOT IN (SELECT value FROM json_each(?2)) LIMIT 1) \
             UNION ALL SELECT * FROM (SELECT t.id, t.body FROM tasks t WHERE t.status = 'pending' \
                    AND t.type IN (SELECT value FROM json_each(?1)) \
                    AND t.id NOT IN (SELECT value FROM json_each(?2)) AND {NOT_PAUSED} LIMIT 1) \
             UNION ALL SELECT * FROM ( \
                WITH RECURSIVE upstream(id) AS ( \
                    SELECT a.after_id FROM task_after a JOIN tasks b ON b.id = a.task_id \
                        WHERE b.status = 'blocked' AND b.type IN (SELECT value FROM json_each(?1)) \
                    UNION \
                    SELECT a.after_id FROM task_after a JOIN upstream u ON a.task_id = u.id) \
                SELECT t.id, t.body FROM upstream u JOIN tasks t ON t.id = u.id \
                    WHERE (t.status = 'running' OR (t.status = 'pending' AND {NOT_PAUSED})) \
                    AND t.id NOT IN (SELECT value FROM json_each(?2)) LIMIT 1) \
             LIMIT 1"
        );
        let found = self.records(
            &sql,
            params![
                json_list(types),
                json_list(skip),
                paused.queue(),
                json_list(&paused.types()),
                json_list(&paused.tasks())
            ],
        )?;
        Ok(found.into_iter().next())
    }

    fn delete_finished(&mut self, which: Finished<'_>) -> Result<Vec<i64>, StoreError> {
        let ids: Vec<i64> = match which {
            Finished::Before {
                before,
                statuses,
                limit,
            } => self.rows(
                "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks WHERE finished_at < ?1 \
                    AND status IN (SELECT value FROM json_each(?2)) LIMIT ?3) RETURNING id",
                params![before, json_list(statuses), limit as i64],
                |row| row.get(0),
            )?,
            Finished::Ids(ids) => self.rows(
                "DELETE FROM tasks WHERE id IN (SELECT value FROM json_each(?1)) \
                    AND status IN ('completed', 'failed', 'cancelled') RETURNING id",
                [json_list(ids)],
                |row| row.get(0),
            )?,
        };
        self.forget_rows(&ids)?;
        Ok(ids)
    }

    fn put_worker(&mut self, name: &str, record: &str) -> Result<(), StoreError> {
        self.change(
            "INSERT OR REPLACE INTO workers (name, record) VALUES (?1, ?2)",
            params![name, record],
        )
    }

    fn remove_worker(&mut self, name: &str) -> Result<(), StoreError> {
        self.change("DELETE FROM workers WHERE name = ?1", [name])
    }

    fn workers(&mut self) -> Result<Vec<(String, String)>, StoreError> {
        self.rows(
            "SELECT name, record FROM workers ORDER BY name",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
    }

    fn setting(&mut self, key: &str) -> Result<Option<String>, StoreError> {
        self.row("SELECT value FROM settings WHERE key = ?1", [key], |row| {
            row.get(0)
        })
    }

    fn set_setting(&mut self, key: &str, value: Option<&str>) -> Result<(), StoreError> {
        match value {
            Some(value) => self.change(
                "INSERT OR REPLACE INTO settings (key, value) VALUES (?1, ?2)",
                [key, value],
            ),
            None => self.change("DELETE FROM settings WHERE key = ?1", [key]),
        }
    }

    fn keep_setting(&mut self, key: &str, value: &str) -> Result<String, StoreError> {
        // Writers take turns: nobody else's insert can come between.
        self.change(
            "INSERT OR IGNORE INTO settings (key, value) VALUES (?1, ?2)",
            [key, value],
        )?;
        Ok(self.setting(key)?.unwrap_or_else(|| value.to_string()))
    }

    fn announce(&mut self) {
        self.announced = true;
    }
}

/// A listing's statement: its conditions, order and limit.
pub(crate) fn query_sql(conditions: &[String], query: &TaskQuery) -> String {
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
    sql
}

/// A LIKE pattern that finds `text` anywhere, its wildcards escaped with `\`.
pub(crate) fn like_pattern(text: &str) -> String {
    let escaped = text
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

/// Names the database in a read error; a damaged file is reported as such, never reset. A
/// page found damaged inside a database that opened stops every writer (see
/// [`SqliteDriver::write`]); a file that is no database at all opens for nobody anyway.
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
fn json_list<T: serde::Serialize>(items: &[T]) -> String {
    serde_json::to_string(items).expect("a list serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::task_body;
    use crate::{NewTask, Outcome, QueueStore, TaskStatus};

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
    /// opened by this version, and takes the new state; the database as it was is kept in
    /// `queue.db.schema-1`.
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

        assert_eq!(SqliteStore::schema_version(&root).unwrap(), (1, 2));
        let store = SqliteStore::open(&root).unwrap();
        assert_eq!(SqliteStore::schema_version(&root).unwrap(), (2, 2));
        let kept = Connection::open(root.join("queue.db.schema-1")).unwrap();
        let (version, tasks): (i64, i64) = kept
            .query_row(
                "SELECT (SELECT user_version FROM pragma_user_version), COUNT(*) FROM tasks",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .unwrap();
        assert_eq!((version, tasks), (1, 2), "the copy is the queue as it was");
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

    /// A second store opened and dropped in a process that keeps one open leaves the kept
    /// one's locks in place: another process closing the queue then leaves SQLite's log alone,
    /// and the kept store goes on writing.
    #[test]
    fn a_second_store_in_the_same_process_leaves_the_first_ones_locks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("q");
        let kept = SqliteStore::init(&root).unwrap();
        kept.add(vec![NewTask {
            task_type: "alpha".into(),
            ..NewTask::default()
        }])
        .unwrap();
        drop(SqliteStore::open(&root).unwrap());
        // Another process opens and closes the queue: were the kept store's locks gone, it
        // would be the last connection, checkpoint and delete the log.
        let db = root.join("queue.db");
        let status = std::process::Command::new("python3")
            .arg("-c")
            .arg(
                "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); \
                 c.execute('SELECT count(*) FROM tasks').fetchall(); c.close()",
            )
            .arg(&db)
            .status()
            .expect("python3 runs");
        assert!(status.success());
        assert!(root.join("queue.db-wal").exists(), "the log is still there");
        kept.add(vec![NewTask {
            task_type: "alpha".into(),
            ..NewTask::default()
        }])
        .expect("the kept store writes on");
    }
}
