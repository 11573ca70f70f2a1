//! The many-machines store: PostgreSQL, for workers on several machines sharing one queue.
//!
//! - **Schema** in the database's `host` schema, from numbered migrations
//!   (`postgres/migrations/NNNN_*.sql`) applied under an advisory lock, so that workers starting
//!   together do not race; the version is kept in `host.schema_version`, and a newer one is
//!   refused.
//! - **Claims** lock the best pending task with `FOR UPDATE SKIP LOCKED` in one statement (a
//!   CTE): claimers on every machine pass each other instead of queueing. A type with a
//!   `[limits]` entry is claimed under a transaction-scoped advisory lock of its own, so the
//!   count of its running tasks holds across machines.
//! - **Pickup**: a transaction that makes work claimable sends one `NOTIFY host_work` (never
//!   one per task: a notification takes a database-wide lock at commit); idle workers `LISTEN`
//!   (see [`WorkListener`]), and poll as the fallback.
//! - **Durability**: `durable` commits with `synchronous_commit = on`, `relaxed` with `off`
//!   (the server may lose the last fraction of a second of commits in a crash, never half a
//!   transaction).
//! - **Connections** are re-established with backoff when the server restarts; a transaction
//!   that failed before its commit was sent, or lost a deadlock, is run again. What a claim,
//!   finish or cancel does is decided in [`crate::lifecycle`], as for every store.

mod connect;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use postgres::error::SqlState;
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::ToSql;
use postgres::{Client, Row, Statement};

pub use connect::{PostgresUrl, redact_url};

use crate::lifecycle::{self, Policy, TaskTx};
use crate::records::{
    ExpiryScan, Unreadable, millis, new_lease, parse_id, parse_task, pause_key, pause_scope,
    purgeable, task_body,
};
use crate::{
    Claim, Durability, Lease, NewTask, Outcome, PauseScope, QueueStore, Renewal, StoreError,
    Summary, Task, TaskQuery, TaskStatus, WorkerRecord, validate_name,
};
use crate::{TaskChange, TaskEdit};

/// The migrations, in order; the schema version is how many have been applied.
const MIGRATIONS: [&str; 2] = [
    include_str!("postgres/migrations/0001_initial.sql"),
    include_str!("postgres/migrations/0002_review.sql"),
];

/// The channel on which work that became claimable is announced.
const CHANNEL: &str = "host_work";

/// Advisory lock keys (first half of the two-key form), fixed so that every machine agrees.
const MIGRATION_LOCK: i64 = 0x686f_7374_0001; // "host" + 1
const LIMIT_LOCK: i32 = 0x686f_0003;

/// How long a transaction is tried again after losing its connection or a deadlock.
const RETRY_WINDOW: Duration = Duration::from_secs(30);

/// How many finished tasks one purge transaction removes.
const PURGE_BATCH: i64 = 10_000;

/// The SQL condition that a task `t` is paused, by itself, its type or the whole queue.
const NOT_PAUSED: &str = "NOT EXISTS (SELECT 1 FROM pauses p WHERE p.kind = 'queue' \
    OR (p.kind = 'type' AND p.name = t.type) \
    OR (p.kind = 'task' AND p.name = t.id::text))";

/// The PostgreSQL queue store.
pub struct PostgresStore {
    url: PostgresUrl,
    /// `None` after the connection was lost, until the next operation reconnects.
    conn: Mutex<Option<Conn>>,
    policy: Policy,
    durability: Durability,
    unreadable: Unreadable,
    expiry_scan: ExpiryScan,
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        // Closing the connection blocks on the client's runtime too.
        let conn = self.conn.get_mut().map(Option::take).unwrap_or(None);
        blocking(move || drop(conn));
    }
}

/// A connection and the statements prepared on it.
struct Conn {
    client: Client,
    statements: HashMap<String, Statement>,
}

/// Why a transaction did not happen.
enum Failure {
    /// Nothing of it was applied, and running it again may succeed: the connection was lost
    /// before the commit was sent, or the server chose it as a deadlock's victim.
    Again(StoreError),
    /// As the error says.
    Final(StoreError),
}

impl PostgresStore {
    /// Creates the queue's schema in the database (idempotent), migrating it to this version.
    pub fn init(url: &PostgresUrl) -> Result<PostgresStore, StoreError> {
        PostgresStore::connect(url, true)
    }

    /// Opens an existing queue, migrating its schema to this version if it is older.
    pub fn open(url: &PostgresUrl) -> Result<PostgresStore, StoreError> {
        PostgresStore::connect(url, false)
    }

    fn connect(url: &PostgresUrl, create: bool) -> Result<PostgresStore, StoreError> {
        blocking(|| PostgresStore::connect_here(url, create))
    }

    fn connect_here(url: &PostgresUrl, create: bool) -> Result<PostgresStore, StoreError> {
        let mut client = url.connect()?;
        migrate(&mut client, url, create)?;
        let mut store = PostgresStore {
            url: url.clone(),
            conn: Mutex::new(None),
            policy: Policy::default(),
            durability: Durability::Durable,
            unreadable: Unreadable::default(),
            expiry_scan: ExpiryScan::default(),
        };
        let durability = client
            .query_opt(
                "SELECT value FROM host.settings WHERE key = 'durability'",
                &[],
            )
            .map_err(|err| store.error(&err))?
            .map(|row| row.get::<_, String>(0));
        store.durability = match durability.as_deref() {
            Some("relaxed") => Durability::Relaxed,
            _ => Durability::Durable,
        };
        store.prepare(&mut client)?;
        *store.conn.get_mut().expect("connection lock") = Some(Conn {
            client,
            statements: HashMap::new(),
        });
        Ok(store)
    }

    /// Sets a new connection up: the queue's schema first on the search path, commits as the
    /// queue's durability says.
    fn prepare(&self, client: &mut Client) -> Result<(), StoreError> {
        let commit = match self.durability {
            Durability::Durable => "on",
            Durability::Relaxed => "off",
        };
        // A machine cut off in the middle of a transaction holds its row locks until the
        // server gives up on it: claims pass over locked tasks and the lease scan over locked
        // leases, so that must be soon. Transactions here never wait on their client for more
        // than moments, so one idle for 10 s is gone, and a silent connection is probed.
        client
            .batch_execute(&format!(
                "SET search_path = host; SET synchronous_commit = {commit}; \
                 SET idle_in_transaction_session_timeout = '10s'; \
                 SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; \
                 SET tcp_keepalives_count = 3; SET tcp_user_timeout = 10000"
            ))
            .map_err(|err| self.error(&err))
    }

    /// Applies the queue-wide rules: lease length, backoff, per-type limits, aging.
    pub fn with_policy(mut self, policy: Policy) -> PostgresStore {
        self.policy = policy;
        self
    }

    /// The queue's durability setting.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Changes the queue's durability setting, for every connection made from now on.
    pub fn set_durability(mut self, durability: Durability) -> Result<PostgresStore, StoreError> {
        self.write(|tx| {
            tx.change(
                "UPDATE settings SET value = $1 WHERE key = 'durability'",
                &[&durability.as_str()],
            )
        })?;
        self.durability = durability;
        // The open connection follows the new setting too.
        *self.conn.get_mut().expect("connection lock") = None;
        Ok(self)
    }

    /// The queue's address, its password hidden.
    pub fn url(&self) -> &PostgresUrl {
        &self.url
    }

    /// The rules this store applies.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The queue-wide configuration (`host.toml`'s text), if one was set.
    pub fn config(&self) -> Result<Option<String>, StoreError> {
        self.read(|tx| {
            Ok(tx
                .row("SELECT value FROM settings WHERE key = 'host.toml'", &[])?
                .map(|row| row.get(0)))
        })
    }

    /// Sets (or with `None`, removes) the queue-wide configuration.
    pub fn set_config(&self, text: Option<&str>) -> Result<(), StoreError> {
        self.write(|tx| match text {
            Some(text) => tx.change(
                "INSERT INTO settings (key, value) VALUES ('host.toml', $1) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[&text],
            ),
            None => tx.change("DELETE FROM settings WHERE key = 'host.toml'", &[]),
        })?;
        Ok(())
    }

    /// Consistency checks for `host doctor`: each problem found, in one line.
    pub fn check(&self) -> Result<Vec<String>, StoreError> {
        let rows = self.read(|tx| tx.rows("SELECT id, body FROM tasks ORDER BY id", &[]))?;
        Ok(rows
            .iter()
            .filter_map(|row| parse_task(self.name(), row.get(0), row.get(1)).err())
            .map(|err| err.to_string())
            .collect())
    }

    fn name(&self) -> &std::path::Path {
        std::path::Path::new(self.url.shown())
    }

    fn error(&self, err: &postgres::Error) -> StoreError {
        self.url.error(connect::describe(err))
    }

    /// Runs `work` in a transaction and commits it, announcing new work when it made some
    /// claimable. A transaction that failed before its commit was sent (a lost connection, a
    /// deadlock) runs again, with backoff, for up to [`RETRY_WINDOW`]; so `work` may run more
    /// than once, and must decide afresh each time. On error nothing of it is applied, except
    /// when the connection broke during the commit itself, which the error says.
    fn write<T: Send>(
        &self,
        work: impl FnMut(&mut Tx<'_>) -> Result<T, StoreError> + Send,
    ) -> Result<T, StoreError> {
        self.write_within(RETRY_WINDOW, work)
    }

    /// [`PostgresStore::write`], tried again for no longer than `window`.
    fn write_within<T: Send>(
        &self,
        window: Duration,
        work: impl FnMut(&mut Tx<'_>) -> Result<T, StoreError> + Send,
    ) -> Result<T, StoreError> {
        blocking(|| self.write_here(window, work))
    }

    fn write_here<T>(
        &self,
        window: Duration,
        mut work: impl FnMut(&mut Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(50);
        loop {
            match self.transaction(&mut work) {
                Ok(out) => return Ok(out),
                Err(Failure::Again(err)) if started.elapsed() < window => {
                    std::thread::sleep(pause.mul_f64(0.5 + fastrand::f64() / 2.0));
                    pause = (pause * 2).min(Duration::from_secs(2));
                    drop(err);
                }
                Err(Failure::Again(err) | Failure::Final(err)) => return Err(err),
            }
        }
    }

    /// A transaction that changes nothing.
    fn read<T: Send>(
        &self,
        mut read: impl FnMut(&mut Tx<'_>) -> Result<T, StoreError> + Send,
    ) -> Result<T, StoreError> {
        self.write(&mut read)
    }

    fn transaction<T>(
        &self,
        work: &mut impl FnMut(&mut Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, Failure> {
        let mut slot = self.conn.lock().expect("connection lock");
        if slot.as_ref().is_some_and(|conn| conn.client.is_closed()) {
            *slot = None;
        }
        if slot.is_none() {
            // The connection was lost: the server may be restarting.
            let mut client = self.url.connect().map_err(Failure::Again)?;
            self.prepare(&mut client).map_err(Failure::Again)?;
            *slot = Some(Conn {
                client,
                statements: HashMap::new(),
            });
        }
        let (result, lost) = self.run_transaction(slot.as_mut().expect("connected"), work);
        if lost {
            *slot = None;
        }
        result
    }

    /// One try of a transaction on `conn`; also says whether the connection is lost.
    fn run_transaction<T>(
        &self,
        conn: &mut Conn,
        work: &mut impl FnMut(&mut Tx<'_>) -> Result<T, StoreError>,
    ) -> (Result<T, Failure>, bool) {
        let transaction = match conn.client.transaction() {
            Ok(transaction) => transaction,
            Err(err) => {
                let (failure, lost) = self.classify(&err);
                return (Err(failure), lost);
            }
        };
        let mut tx = Tx {
            tx: transaction,
            statements: &mut conn.statements,
            store: self,
            work_appeared: false,
            trouble: None,
            without_dependents: None,
        };
        let done = work(&mut tx).and_then(|out| {
            if tx.work_appeared {
                let notify = format!("NOTIFY {CHANNEL}");
                tx.tx.batch_execute(&notify).map_err(|err| tx.fail(err))?;
            }
            Ok(out)
        });
        let out = match done {
            Ok(out) => out,
            Err(err) => {
                return match tx.trouble {
                    Some(Trouble::ConnectionLost) => (Err(Failure::Again(err)), true),
                    Some(Trouble::Conflict) => (Err(Failure::Again(err)), false),
                    None => (Err(Failure::Final(err)), false),
                };
            }
        };
        match tx.tx.commit() {
            Ok(()) => (Ok(out), false),
            Err(err) if is_connection_lost(&err) => (
                Err(Failure::Final(self.url.error(format!(
                    "the connection broke while committing ({}); the change may or may not \
                     have been made",
                    connect::describe(&err)
                )))),
                true,
            ),
            Err(err) => (Err(self.classify(&err).0), false),
        }
    }

    /// Whether running a transaction that failed with `err` again may help, and whether the
    /// connection is lost.
    fn classify(&self, err: &postgres::Error) -> (Failure, bool) {
        let lost = is_connection_lost(err);
        let failure = if lost || is_conflict(err) {
            Failure::Again(self.error(err))
        } else {
            Failure::Final(self.error(err))
        };
        (failure, lost)
    }

    /// Returns the leases that ran out by `now`, as `found_by` noticed, skipping those another
    /// transaction holds. Inside a write.
    fn expire_due(
        &self,
        tx: &mut Tx<'_>,
        now: Timestamp,
        found_by: &str,
    ) -> Result<usize, StoreError> {
        let rows = tx.rows(
            "SELECT id, body FROM tasks \
             WHERE status = 'running' AND lease_expires_at < $1 FOR UPDATE SKIP LOCKED",
            &[&millis(now)],
        )?;
        let mut expired = 0;
        for row in rows {
            let id: i64 = row.get(0);
            let mut task = match parse_task(self.name(), id, row.get(1)) {
                Ok(task) => task,
                Err(err) => {
                    self.unreadable.note(id, &err);
                    continue;
                }
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

    /// A claim, inside a write: see [`QueueStore::claim`].
    fn claim_in(
        &self,
        tx: &mut Tx<'_>,
        worker: &str,
        types: &[String],
        now: Timestamp,
    ) -> Result<Option<Claim>, StoreError> {
        if self.expiry_scan.due(self.policy.lease) {
            self.expire_due(tx, now, worker)?;
        }
        let mut eligible: Vec<String> = Vec::new();
        for task_type in types {
            if let Some(limit) = self.policy.limits.get(task_type) {
                // Claimers of a limited type take turns, on every machine, until they commit.
                tx.change(
                    "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                    &[&LIMIT_LOCK, task_type],
                )?;
                let running: i64 = tx
                    .row(
                        "SELECT count(*) FROM tasks WHERE status = 'running' AND type = $1",
                        &[task_type],
                    )?
                    .map_or(0, |row| row.get(0));
                if usize::try_from(running).unwrap_or(0) >= *limit {
                    continue;
                }
            }
            eligible.push(task_type.clone());
        }
        if eligible.is_empty() {
            return Ok(None);
        }
        let mut skip = self.unreadable.ids();
        loop {
            let Some((id, body)) = self.best_candidate(tx, &eligible, now, &skip)? else {
                return Ok(None);
            };
            let mut task = match parse_task(self.name(), id, &body) {
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

    /// The best claimable task among `types` that is not in `skip`, locked until the commit:
    /// lowest (aged) priority, then lowest id. Tasks that other claimers hold locked are passed
    /// over. One indexed lookup per type (per priority level, with aging): a single statement
    /// over several types could not walk the index in order, and would sort every pending task.
    fn best_candidate(
        &self,
        tx: &mut Tx<'_>,
        types: &[String],
        now: Timestamp,
        skip: &[i64],
    ) -> Result<Option<(i64, String)>, StoreError> {
        let pending = format!(
            "status = 'pending' AND type = $1 AND (retry_at IS NULL OR retry_at <= $2) \
             AND id <> ALL($3) AND {NOT_PAUSED}"
        );
        let now_ms = millis(now);
        let Some(step) = self.policy.aging else {
            // The best of each type, locked (a type's runner-up stays locked until the commit,
            // which only makes other claimers pass it over meanwhile).
            let sql = format!(
                "WITH next AS ( \
                    SELECT id, priority, body FROM tasks t WHERE {pending} \
                    ORDER BY priority, id LIMIT 1 FOR UPDATE SKIP LOCKED) \
                 SELECT id, priority, body FROM next"
            );
            let mut best: Option<((i32, i64), String)> = None;
            for task_type in types {
                if let Some(row) = tx.row(&sql, &[task_type, &now_ms, &skip])? {
                    let key = (row.get::<_, i32>(1), row.get::<_, i64>(0));
                    if best.as_ref().is_none_or(|(best, _)| key < *best) {
                        best = Some((key, row.get(2)));
                    }
                }
            }
            return Ok(best.map(|((_, id), body)| (id, body)));
        };
        // The oldest task of each priority is the one that has aged most.
        let sql = format!(
            "SELECT DISTINCT ON (priority) id, priority, created_at FROM tasks t WHERE {pending} \
             ORDER BY priority, id"
        );
        let mut candidates: Vec<(u32, i64)> = Vec::new();
        for task_type in types {
            for row in tx.rows(&sql, &[task_type, &now_ms, &skip])? {
                let priority = u32::try_from(row.get::<_, i32>(1)).unwrap_or(0);
                let created = crate::records::from_millis(row.get(2));
                let aged = lifecycle::aged_priority(priority, created, now, step);
                candidates.push((aged, row.get(0)));
            }
        }
        candidates.sort_unstable();
        for (_, id) in candidates {
            let locked = tx.row(
                "SELECT body FROM tasks WHERE id = $1 AND status = 'pending' \
                 FOR UPDATE SKIP LOCKED",
                &[&id],
            )?;
            if let Some(row) = locked {
                return Ok(Some((id, row.get(0))));
            }
        }
        Ok(None)
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
        tx.work_appeared |= self.policy.limits.contains_key(&task.task_type);
        if task.status != TaskStatus::Pending {
            tx.work_appeared |= lifecycle::settle_dependents(tx, &task, now)?;
        }
        Ok(task)
    }
}

/// Runs `f` where the client library may block: the synchronous PostgreSQL client drives its
/// own runtime and cannot start inside another one (the dashboard's, the MCP server's), so
/// there `f` runs on a thread of its own.
fn blocking<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|scope| match scope.spawn(f).join() {
        Ok(out) => out,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// Brings the schema up to this version's under an advisory lock, so that processes starting
/// together do not race. Refuses a newer schema; without `create`, refuses a database that
/// holds no queue.
fn migrate(client: &mut Client, url: &PostgresUrl, create: bool) -> Result<(), StoreError> {
    let known = MIGRATIONS.len() as i32;
    let error = |err: postgres::Error| url.error(connect::describe(&err));
    let version = |client: &mut Client| -> Result<Option<i32>, StoreError> {
        let exists: bool = client
            .query_one("SELECT to_regclass('host.schema_version') IS NOT NULL", &[])
            .map_err(error)?
            .get(0);
        if !exists {
            return Ok(None);
        }
        Ok(client
            .query_opt("SELECT version FROM host.schema_version", &[])
            .map_err(error)?
            .map(|row| row.get(0)))
    };
    let check = |found: Option<i32>| match found {
        Some(found) if found > known => Err(StoreError::NewerSchema {
            path: PathBuf::from(url.shown()),
            found: found.into(),
            known: known.into(),
        }),
        None if !create => Err(StoreError::EmptyDatabase(PathBuf::from(url.shown()))),
        _ => Ok(()),
    };
    let found = version(client)?;
    check(found)?;
    if found == Some(known) {
        return Ok(());
    }
    let mut tx = client.transaction().map_err(error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(error)?;
    tx.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS host; \
         CREATE TABLE IF NOT EXISTS host.schema_version (version INTEGER NOT NULL); \
         INSERT INTO host.schema_version (version) \
            SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM host.schema_version); \
         SET LOCAL search_path = host",
    )
    .map_err(error)?;
    // Another process may have migrated meanwhile.
    let from: i32 = tx
        .query_one("SELECT version FROM schema_version", &[])
        .map_err(error)?
        .get(0);
    check(Some(from))?;
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(from as usize) {
        tx.batch_execute(sql).map_err(|err| {
            url.error(format!(
                "schema migration {} failed: {}",
                index + 1,
                connect::describe(&err)
            ))
        })?;
    }
    tx.execute("UPDATE schema_version SET version = $1", &[&known])
        .map_err(error)?;
    tx.commit().map_err(error)
}

/// Waits for work to become claimable, on a connection of its own.
pub struct WorkListener {
    client: Client,
    url: PostgresUrl,
}

impl WorkListener {
    /// A connection of its own to the queue at `url`, listening.
    pub fn connect(url: &PostgresUrl) -> Result<WorkListener, StoreError> {
        let mut client = url.connect()?;
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .map_err(|err| url.error(connect::describe(&err)))?;
        Ok(WorkListener {
            client,
            url: url.clone(),
        })
    }

    /// Sleeps until work is announced (true) or `limit` passes (false). An error means the
    /// connection was lost: listen again on a new one.
    pub fn wait(&mut self, limit: Duration) -> Result<bool, StoreError> {
        let error = |err: postgres::Error| self.url.error(connect::describe(&err));
        let announced = {
            let mut notifications = self.client.notifications();
            let announced = notifications
                .timeout_iter(limit)
                .next()
                .map_err(error)?
                .is_some();
            // Announcements that arrived together wake the worker once.
            let mut pending = notifications.iter();
            while pending.next().map_err(error)?.is_some() {}
            announced
        };
        if self.client.is_closed() {
            return Err(self.url.error("the connection was lost".into()));
        }
        Ok(announced)
    }
}

/// Why a statement inside a transaction failed, when running the transaction again may help.
#[derive(Clone, Copy)]
enum Trouble {
    ConnectionLost,
    Conflict,
}

/// A transaction, as the rules see it.
/// Deletes what refers to removed tasks: their dependency rows, logs and pauses.
fn forget_rows(tx: &mut Tx<'_>, ids: &[i64]) -> Result<(), StoreError> {
    let names: Vec<String> = ids.iter().map(i64::to_string).collect();
    let ids = ids.to_vec();
    tx.change("DELETE FROM task_after WHERE task_id = ANY($1)", &[&ids])?;
    tx.change("DELETE FROM task_logs WHERE task_id = ANY($1)", &[&ids])?;
    tx.change(
        "DELETE FROM pauses WHERE kind = 'task' AND name = ANY($1)",
        &[&names],
    )?;
    Ok(())
}

struct Tx<'c> {
    tx: postgres::Transaction<'c>,
    statements: &'c mut HashMap<String, Statement>,
    store: &'c PostgresStore,
    /// Set when some task became claimable; announced at the commit.
    work_appeared: bool,
    trouble: Option<Trouble>,
    /// A task locked in this transaction that no task comes after.
    without_dependents: Option<i64>,
}

impl Tx<'_> {
    fn fail(&mut self, err: postgres::Error) -> StoreError {
        if is_connection_lost(&err) {
            self.trouble = Some(Trouble::ConnectionLost);
        } else if is_conflict(&err) {
            self.trouble = Some(Trouble::Conflict);
        }
        self.store.error(&err)
    }

    /// The statement for `sql`, prepared once per connection.
    fn statement(&mut self, sql: &str) -> Result<Statement, StoreError> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.tx.prepare(sql).map_err(|err| self.fail(err))?;
        self.statements.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }

    fn rows(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, StoreError> {
        let statement = self.statement(sql)?;
        self.tx
            .query(&statement, params)
            .map_err(|err| self.fail(err))
    }

    fn row(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, StoreError> {
        let statement = self.statement(sql)?;
        self.tx
            .query_opt(&statement, params)
            .map_err(|err| self.fail(err))
    }

    fn change(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<(), StoreError> {
        let statement = self.statement(sql)?;
        self.tx
            .execute(&statement, params)
            .map(drop)
            .map_err(|err| self.fail(err))
    }

    /// The task with this id and its lease's secret, locked until the commit.
    fn task_and_token(&mut self, id: &str) -> Result<Option<(Task, Option<String>)>, StoreError> {
        let Ok(id) = parse_id(id) else {
            return Ok(None);
        };
        let row = self.row(
            "SELECT body, lease_token FROM tasks WHERE id = $1 FOR UPDATE",
            &[&id],
        )?;
        row.map(|row| Ok((parse_task(self.store.name(), id, row.get(0))?, row.get(1))))
            .transpose()
    }

    /// The task a lease names, checked to be the lease's (see [`lifecycle::check_lease`]).
    /// Also notes whether any task comes after it, which saves a query when its outcome
    /// settles them: no task can be added after it while this transaction holds it locked.
    fn leased(&mut self, lease: &Lease, now: Timestamp) -> Result<Task, StoreError> {
        let id = parse_id(&lease.task_id)?;
        let row = self
            .row(
                "SELECT body, lease_token, \
                    EXISTS (SELECT 1 FROM task_after WHERE after_id = $1) \
                 FROM tasks WHERE id = $1 FOR UPDATE",
                &[&id],
            )?
            .ok_or_else(|| StoreError::NotFound(lease.task_id.clone()))?;
        let task = parse_task(self.store.name(), id, row.get(0))?;
        let token: Option<String> = row.get(1);
        if !row.get::<_, bool>(2) {
            self.without_dependents = Some(id);
        }
        lifecycle::check_lease(&task, lease, token.as_deref(), now)?;
        Ok(task)
    }

    /// Stores a new task and the edges to the tasks it comes after.
    fn insert(&mut self, task: &Task) -> Result<(), StoreError> {
        let row = TaskRow::of(task)?;
        self.change(
            "INSERT INTO tasks (id, type, status, priority, created_at, finished_at, retry_at, \
                lease_expires_at, worker, body, conflict) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            &row.params(),
        )?;
        self.work_appeared |= task.status == TaskStatus::Pending;
        for after in &task.after {
            self.change(
                "INSERT INTO task_after (task_id, after_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&row.id, &parse_id(after).unwrap_or(0)],
            )?;
        }
        Ok(())
    }

    /// Writes back a task that exists. A running task's lease keeps its secret, or gets
    /// `token` (a claim); the secret goes when the attempt ends.
    fn save(&mut self, task: &Task, token: Option<&str>) -> Result<(), StoreError> {
        let row = TaskRow::of(task)?;
        let mut params = row.params();
        params.push(&token);
        self.change(
            "UPDATE tasks SET type = $2, status = $3, priority = $4, created_at = $5, \
                finished_at = $6, retry_at = $7, lease_expires_at = $8, worker = $9, \
                body = $10, conflict = $11, \
                lease_token = CASE WHEN $3 = 'running' THEN COALESCE($12, lease_token) END \
             WHERE id = $1",
            &params,
        )?;
        self.work_appeared |= task.status == TaskStatus::Pending;
        Ok(())
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
        let id = parse_id(id)?;
        if self.without_dependents == Some(id) {
            return Ok(Vec::new());
        }
        let rows = self.rows(
            "SELECT task_id FROM task_after WHERE after_id = $1 ORDER BY task_id",
            &[&id],
        )?;
        Ok(rows
            .iter()
            .map(|row| row.get::<_, i64>(0).to_string())
            .collect())
    }
}

/// A task's columns, as `insert` and `save` bind them: $1 id, $2 type, $3 status, $4 priority,
/// $5 to $8 times, $9 worker, $10 the whole task as JSON.
struct TaskRow {
    id: i64,
    task_type: String,
    status: &'static str,
    priority: i32,
    times: [Option<i64>; 4],
    worker: Option<String>,
    body: String,
    conflict: bool,
}

impl TaskRow {
    fn of(task: &Task) -> Result<TaskRow, StoreError> {
        let time = |at: Option<Timestamp>| at.map(millis);
        Ok(TaskRow {
            id: parse_id(&task.id)?,
            task_type: task.task_type.clone(),
            status: task.status.as_str(),
            priority: i32::try_from(task.priority).unwrap_or(i32::MAX),
            times: [
                Some(millis(task.created_at)),
                time(task.finished_at),
                time(task.retry_at),
                time(task.lease_expires_at),
            ],
            worker: task.worker.clone(),
            body: task_body(task),
            conflict: task.in_conflict(),
        })
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.id,
            &self.task_type,
            &self.status,
            &self.priority,
            &self.times[0],
            &self.times[1],
            &self.times[2],
            &self.times[3],
            &self.worker,
            &self.body,
            &self.conflict,
        ]
    }
}

/// The connection is gone, or going: the server shut down, restarted, or cannot be reached.
fn is_connection_lost(err: &postgres::Error) -> bool {
    if err.is_closed() {
        return true;
    }
    match err.code() {
        // Class 08: connection exception; 57P01-57P03: the server is shutting down or starting.
        Some(code) => {
            code.code().starts_with("08")
                || [
                    SqlState::ADMIN_SHUTDOWN,
                    SqlState::CRASH_SHUTDOWN,
                    SqlState::CANNOT_CONNECT_NOW,
                ]
                .contains(code)
        }
        None => std::error::Error::source(err).is_some_and(|source| source.is::<std::io::Error>()),
    }
}

/// The server rolled the transaction back to resolve a conflict with another one.
fn is_conflict(err: &postgres::Error) -> bool {
    err.code().is_some_and(|code| {
        *code == SqlState::T_R_DEADLOCK_DETECTED || *code == SqlState::T_R_SERIALIZATION_FAILURE
    })
}

impl QueueStore for PostgresStore {
    fn add(&self, tasks: Vec<NewTask>) -> Result<Vec<Task>, StoreError> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let now = Timestamp::now();
        self.write(|tx| {
            // The counter's row lock makes adds take turns until they commit, so each gets
            // consecutive ids (the rules number a batch from its first id).
            let count = tasks.len() as i64;
            let first: i64 = tx
                .row(
                    "UPDATE next_task_id SET id = id + $1 RETURNING id - $1",
                    &[&count],
                )?
                .map_or(1, |row| row.get(0));
            let tasks = lifecycle::new_tasks(tx, tasks.clone(), first as u64, now)?;
            for task in &tasks {
                tx.insert(task)?;
            }
            Ok(tasks)
        })
    }

    fn claim(&self, worker: &str, types: &[String]) -> Result<Option<Claim>, StoreError> {
        validate_name("worker name", worker)?;
        let now = Timestamp::now();
        self.write(|tx| self.claim_in(tx, worker, types, now))
    }

    fn renew(&self, lease: &Lease) -> Result<Renewal, StoreError> {
        // Tried once: the worker renews again within a second, and must see soon when it
        // cannot (it stops the task's handler before the lease runs out).
        self.write_within(Duration::ZERO, |tx| {
            let now = Timestamp::now();
            let mut task = tx.leased(lease, now)?;
            lifecycle::renew(&mut task, now, &self.policy);
            tx.put(&task)?;
            Ok(Renewal {
                cancel_requested: task.cancel_requested,
            })
        })
    }

    fn finish(&self, lease: &Lease, outcome: Outcome) -> Result<Task, StoreError> {
        self.write(|tx| self.finish_in(tx, lease, outcome.clone(), Timestamp::now()))
    }

    fn finish_and_claim(
        &self,
        lease: &Lease,
        outcome: Outcome,
        worker: &str,
        types: &[String],
    ) -> Result<(Task, Option<Claim>), StoreError> {
        validate_name("worker name", worker)?;
        let together = self.write(|tx| {
            let now = Timestamp::now();
            let done = self.finish_in(tx, lease, outcome.clone(), now)?;
            let next = self.claim_in(tx, worker, types, now)?;
            Ok((done, next))
        });
        match together {
            Ok(both) => Ok(both),
            // Nothing was applied: the outcome is recorded on its own (and fails again, with
            // its own error, if it was the outcome that failed). No savepoint around the claim:
            // two more round trips for every task, for a failure that is rare.
            Err(_) => Ok((self.finish(lease, outcome)?, None)),
        }
    }

    fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        self.write(|tx| {
            let now = Timestamp::now();
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
        self.write(|tx| lifecycle::edit(tx, id, edit))
    }

    fn cancel(&self, id: &str) -> Result<Task, StoreError> {
        self.write(|tx| {
            let now = Timestamp::now();
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
        self.write(|tx| {
            let now = Timestamp::now();
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
        self.write(|tx| {
            let now = Timestamp::now();
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
        let (kind, name) = pause_key(scope);
        self.write(|tx| {
            if let PauseScope::Task(id) = scope
                && tx.task(id)?.is_none()
            {
                return Err(StoreError::NotFound(id.clone()));
            }
            tx.change(
                "INSERT INTO pauses (kind, name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&kind, &name],
            )
        })
    }

    fn resume(&self, scope: &PauseScope) -> Result<(), StoreError> {
        let (kind, name) = pause_key(scope);
        self.write(|tx| {
            tx.change(
                "DELETE FROM pauses WHERE kind = $1 AND name = $2",
                &[&kind, &name],
            )?;
            tx.work_appeared = true;
            Ok(())
        })
    }

    fn paused(&self) -> Result<Vec<PauseScope>, StoreError> {
        let rows = self.read(|tx| tx.rows("SELECT kind, name FROM pauses", &[]))?;
        let mut scopes: Vec<PauseScope> = rows
            .iter()
            .map(|row| pause_scope(row.get(0), row.get(1)))
            .collect();
        scopes.sort();
        Ok(scopes)
    }

    fn get(&self, id: &str) -> Result<Task, StoreError> {
        let numeric = parse_id(id)?;
        let row = self.read(|tx| tx.row("SELECT body FROM tasks WHERE id = $1", &[&numeric]))?;
        match row {
            Some(row) => parse_task(self.name(), numeric, row.get(0)),
            None => Err(StoreError::NotFound(id.to_string())),
        }
    }

    fn list(&self, query: &TaskQuery) -> Result<Vec<Task>, StoreError> {
        let mut conditions: Vec<String> = Vec::new();
        if query.in_conflict {
            conditions.push("conflict".into());
        }
        let mut values: Vec<Box<dyn ToSql + Sync>> = Vec::new();
        let mut bind = |condition: &str, value: Box<dyn ToSql + Sync>| {
            values.push(value);
            conditions.push(condition.replace('?', &format!("${}", values.len())));
        };
        if !query.statuses.is_empty() {
            let names: Vec<String> = query.statuses.iter().map(|s| s.as_str().into()).collect();
            bind("status = ANY(?)", Box::new(names));
        }
        if let Some(task_type) = query.task_type.as_ref().filter(|t| !t.is_empty()) {
            bind("type = ?", Box::new(task_type.clone()));
        }
        if let Some(worker) = query.worker.as_ref().filter(|w| !w.is_empty()) {
            bind("worker = ?", Box::new(worker.clone()));
        }
        if let Some(since) = query.finished_since {
            bind("finished_at >= ?", Box::new(millis(since)));
        }
        if let Some(text) = query.text.as_ref().filter(|t| !t.is_empty()) {
            let escaped = text
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            bind("body ILIKE ?", Box::new(format!("%{escaped}%")));
        }
        if let Some(after) = query.after_id {
            let after = i64::try_from(after).unwrap_or(i64::MAX);
            let condition = if query.newest_first {
                "id < ?"
            } else {
                "id > ?"
            };
            bind(condition, Box::new(after));
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
        let params: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v.as_ref()).collect();
        // Not cached: each combination of filters is a statement of its own.
        let rows = self.read(|tx| {
            tx.tx
                .query(sql.as_str(), &params)
                .map_err(|err| tx.fail(err))
        })?;
        Ok(rows
            .iter()
            .filter_map(|row| {
                let id = row.get(0);
                self.unreadable
                    .readable(id, parse_task(self.name(), id, row.get(1)))
            })
            .collect())
    }

    fn summary(&self) -> Result<Summary, StoreError> {
        let rows = self.read(|tx| {
            tx.rows(
                "SELECT status, type, count(*) FROM tasks GROUP BY status, type",
                &[],
            )
        })?;
        let mut summary = Summary::default();
        for row in rows {
            summary.count(row.get(0), row.get(1), row.get(2));
        }
        Ok(summary)
    }

    fn has_work(&self, types: &[String]) -> Result<bool, StoreError> {
        // One task that is work, so that its record can be read: see the embedded store.
        let sql = format!(
            "(SELECT t.id, t.body FROM tasks t WHERE t.status = 'running' AND t.type = ANY($1) \
                    AND t.id <> ALL($2) LIMIT 1) \
             UNION ALL (SELECT t.id, t.body FROM tasks t WHERE t.status = 'pending' \
                    AND t.type = ANY($1) AND t.id <> ALL($2) AND {NOT_PAUSED} LIMIT 1) \
             UNION ALL ( \
                WITH RECURSIVE upstream(id) AS ( \
                    SELECT a.after_id FROM task_after a JOIN tasks b ON b.id = a.task_id \
                        WHERE b.status = 'blocked' AND b.type = ANY($1) \
                    UNION \
                    SELECT a.after_id FROM task_after a JOIN upstream u ON a.task_id = u.id) \
                SELECT t.id, t.body FROM upstream u JOIN tasks t ON t.id = u.id \
                    WHERE (t.status = 'running' OR (t.status = 'pending' AND {NOT_PAUSED})) \
                    AND t.id <> ALL($2) LIMIT 1) \
             LIMIT 1"
        );
        let types = types.to_vec();
        loop {
            let unreadable = self.unreadable.ids();
            let Some(row) = self.read(|tx| tx.row(&sql, &[&types, &unreadable]))? else {
                return Ok(false);
            };
            let id: i64 = row.get(0);
            match parse_task(self.name(), id, row.get(1)) {
                Ok(_) => return Ok(true),
                Err(err) => self.unreadable.note(id, &err),
            }
        }
    }

    fn expire_leases(&self) -> Result<usize, StoreError> {
        self.write(|tx| self.expire_due(tx, Timestamp::now(), "host expire"))
    }

    fn purge(&self, before: Timestamp, statuses: &[TaskStatus]) -> Result<usize, StoreError> {
        let finished: Vec<String> = purgeable(statuses).into_iter().map(String::from).collect();
        let mut purged = 0;
        // In batches, each its own transaction, so that no lock is held long.
        loop {
            let removed = self.write(|tx| {
                let ids: Vec<i64> = tx
                    .rows(
                        "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks \
                            WHERE finished_at < $1 AND status = ANY($2) LIMIT $3) RETURNING id",
                        &[&millis(before), &finished, &PURGE_BATCH],
                    )?
                    .iter()
                    .map(|row| row.get(0))
                    .collect();
                forget_rows(tx, &ids)?;
                Ok(ids.len())
            })?;
            purged += removed;
            if (removed as i64) < PURGE_BATCH {
                return Ok(purged);
            }
        }
    }

    fn forget_finished(&self, ids: &[i64]) -> Result<(), StoreError> {
        let ids = ids.to_vec();
        self.write(|tx| {
            let removed: Vec<i64> = tx
                .rows(
                    "DELETE FROM tasks WHERE id = ANY($1) \
                        AND status IN ('completed', 'failed', 'cancelled') RETURNING id",
                    &[&ids],
                )?
                .iter()
                .map(|row| row.get(0))
                .collect();
            forget_rows(tx, &removed)
        })
    }

    fn put_worker(&self, record: &WorkerRecord) -> Result<(), StoreError> {
        validate_name("worker name", &record.name)?;
        let json = serde_json::to_string(record).expect("worker record serializes");
        self.write(|tx| {
            tx.change(
                "INSERT INTO workers (name, record) VALUES ($1, $2) \
                 ON CONFLICT (name) DO UPDATE SET record = excluded.record",
                &[&record.name, &json],
            )
        })
    }

    fn remove_worker(&self, name: &str) -> Result<(), StoreError> {
        self.write(|tx| tx.change("DELETE FROM workers WHERE name = $1", &[&name]))
    }

    fn workers(&self) -> Result<Vec<WorkerRecord>, StoreError> {
        let rows =
            self.read(|tx| tx.rows("SELECT name, record FROM workers ORDER BY name", &[]))?;
        rows.iter()
            .map(|row| {
                serde_json::from_str(row.get(1)).map_err(|err| StoreError::Corrupt {
                    path: PathBuf::from(format!("{}, worker {}", self.url, row.get::<_, &str>(0))),
                    reason: err.to_string(),
                })
            })
            .collect()
    }

    fn append_log(&self, id: &str, line: &str) -> Result<(), StoreError> {
        let id = parse_id(id)?;
        let chunk = format!("{line}\n");
        self.write(|tx| {
            tx.change(
                "INSERT INTO task_logs (task_id, start, chunk) \
                 SELECT $1, COALESCE(MAX(start + octet_length(chunk)), 0), $2 \
                 FROM task_logs WHERE task_id = $1",
                &[&id, &chunk],
            )
        })
    }

    fn read_log(&self, id: &str, from: u64) -> Result<(String, u64), StoreError> {
        self.get(id)?;
        let numeric = parse_id(id)?;
        let from_i = i64::try_from(from).unwrap_or(i64::MAX);
        let rows = self.read(|tx| {
            tx.rows(
                "SELECT start, chunk FROM task_logs \
                 WHERE task_id = $1 AND start + octet_length(chunk) > $2 ORDER BY start",
                &[&numeric, &from_i],
            )
        })?;
        let mut bytes = Vec::new();
        let mut next = from;
        for row in rows {
            let start = u64::try_from(row.get::<_, i64>(0)).unwrap_or(0);
            let chunk: &str = row.get(1);
            let skip = usize::try_from(next.saturating_sub(start)).unwrap_or(usize::MAX);
            let part = chunk.as_bytes().get(skip..).unwrap_or_default();
            bytes.extend_from_slice(part);
            next += part.len() as u64;
        }
        Ok((String::from_utf8_lossy(&bytes).into_owned(), next))
    }

    fn lease_duration(&self) -> Duration {
        self.policy.lease
    }

    fn take_warnings(&self) -> Vec<String> {
        self.unreadable.take_warnings()
    }
}
