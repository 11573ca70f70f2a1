//! The many-machines driver: PostgreSQL, for workers on several machines sharing one queue.
//!
//! - **Schema** in the database's `host` schema, from numbered migrations
//!   (`postgres/migrations/NNNN_*.sql`), recorded in `host.schema_version`. `host init` creates
//!   it; a queue of an older schema is upgraded only by `host migrate` ([`migrate`]), under an
//!   advisory lock, and refused by everything else: many machines share the database, and a
//!   worker of the old version must not meet a schema it cannot read. A newer one is refused.
//! - **Claims** lock the best pending tasks with `FOR UPDATE SKIP LOCKED`: claimers on every
//!   machine pass each other instead of queueing. A type with a `[limits]` entry is claimed
//!   under a transaction-scoped advisory lock of its own, so its running count holds across
//!   machines. Rows are written in batches, one statement per batch (`unnest`).
//! - **Pickup**: a transaction that makes work claimable sends one `NOTIFY host_work`; idle
//!   workers `LISTEN` ([`WorkListener`]), and poll as the fallback.
//! - **Durability**: `durable` commits with `synchronous_commit = on`, `relaxed` with `off`.
//! - **Connections** are re-established with backoff when the server restarts; a transaction
//!   that failed before its commit was sent, or lost a deadlock, is run again.

mod connect;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use postgres::error::SqlState;
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::ToSql;
use postgres::{Client, Row, Statement};

pub use connect::{PostgresUrl, redact_url};

use crate::driver::{
    Candidate, ClaimView, Commit, Driver, DriverTx, Finished, StoredTask, TaskRow,
};
use crate::engine::Engine;
use crate::lifecycle::PauseSet;
use crate::records::millis;
use crate::sqlite::{like_pattern, query_sql};
use crate::{Durability, StoreError, TaskQuery};

/// The migrations, in order; the schema version is how many have been applied.
const MIGRATIONS: [(&str, &str); 3] = [
    (
        "0001_initial.sql",
        include_str!("postgres/migrations/0001_initial.sql"),
    ),
    (
        "0002_review.sql",
        include_str!("postgres/migrations/0002_review.sql"),
    ),
    (
        "0003_counts.sql",
        include_str!("postgres/migrations/0003_counts.sql"),
    ),
];

/// The channel on which work that became claimable is announced.
const CHANNEL: &str = "host_work";

/// Advisory lock keys (first half of the two-key form), fixed so that every machine agrees.
const MIGRATION_LOCK: i64 = 0x686f_7374_0001; // "host" + 1
const LIMIT_LOCK: i32 = 0x686f_0003;

/// How long a transaction is tried again after losing its connection or a deadlock.
const RETRY_WINDOW: Duration = Duration::from_secs(30);

/// The most connections one process holds to the queue's database: transactions of its
/// threads (a worker's slots, a server's requests) run side by side up to this many, and wait
/// for a free connection beyond.
pub const POOL_SIZE: usize = 4;

/// The queue on PostgreSQL: the engine over a database shared by many machines.
pub type PostgresStore = Engine<PostgresDriver>;

/// A PostgreSQL database holding a queue in its `host` schema.
pub struct PostgresDriver {
    url: PostgresUrl,
    pool: Mutex<Pool>,
    /// Signalled when a connection is handed back.
    freed: Condvar,
    durability: Durability,
}

/// The connections: those idle, and how many exist (idle or in use). A connection found lost
/// is dropped; the next transaction makes a new one.
#[derive(Default)]
struct Pool {
    idle: Vec<Conn>,
    open: usize,
}

impl Drop for PostgresDriver {
    fn drop(&mut self) {
        // Closing the connections blocks on the client's runtime too.
        let idle = std::mem::take(&mut self.pool.get_mut().expect("pool lock").idle);
        blocking(move || drop(idle));
    }
}

/// A connection and the statements prepared on it.
struct Conn {
    client: Client,
    statements: HashMap<String, Statement>,
}

/// A connection taken from the pool, handed back when dropped: to the idle ones, or closed
/// and its place freed when it was lost. A transaction that panics (its `work` did) drops it
/// as lost, so that the pool never shrinks for good.
struct Checkout<'d> {
    driver: &'d PostgresDriver,
    conn: Option<Conn>,
    /// Whether the connection is of no more use; true until the transaction says otherwise.
    lost: bool,
}

impl Drop for Checkout<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        let driver = self.driver;
        let mut pool = driver.pool.lock().unwrap_or_else(|p| p.into_inner());
        if self.lost || conn.client.is_closed() {
            pool.open -= 1;
            drop(pool);
            blocking(move || drop(conn));
        } else {
            pool.idle.push(conn);
        }
        driver.freed.notify_one();
    }
}

/// Why a transaction did not happen.
enum Failure {
    /// Nothing of it was applied, and running it again may succeed: the connection was lost
    /// before the commit was sent, or the server chose it as a deadlock's victim.
    Again(StoreError),
    /// As the error says.
    Final(StoreError),
}

impl Engine<PostgresDriver> {
    /// Creates the queue's schema in the database when it holds none, and opens it. A queue
    /// already there is opened as [`PostgresStore::open`] does.
    pub fn init(url: &PostgresUrl) -> Result<PostgresStore, StoreError> {
        blocking(|| PostgresDriver::connect(url, true)).map(Engine::new)
    }

    /// Opens an existing queue of this version's schema; an older one is refused, naming
    /// `host migrate`.
    pub fn open(url: &PostgresUrl) -> Result<PostgresStore, StoreError> {
        blocking(|| PostgresDriver::connect(url, false)).map(Engine::new)
    }

    /// The queue's address, its password hidden.
    pub fn url(&self) -> &PostgresUrl {
        &self.driver().url
    }
}

impl PostgresDriver {
    fn connect(url: &PostgresUrl, create: bool) -> Result<PostgresDriver, StoreError> {
        let mut client = url.connect()?;
        let error = |err: postgres::Error| url.error(connect::describe(&err));
        match schema_version(&mut client, url)? {
            None if create => create_schema(&mut client, url)?,
            None => return Err(StoreError::EmptyDatabase(PathBuf::from(url.shown()))),
            Some(found) => check_version(url, found)?,
        }
        let durability = match client
            .query_opt(
                "SELECT value FROM host.settings WHERE key = 'durability'",
                &[],
            )
            .map_err(error)?
            .map(|row| row.get::<_, String>(0))
            .as_deref()
        {
            Some("relaxed") => Durability::Relaxed,
            _ => Durability::Durable,
        };
        let driver = PostgresDriver {
            url: url.clone(),
            pool: Mutex::new(Pool::default()),
            freed: Condvar::new(),
            durability,
        };
        driver.prepare(&mut client)?;
        let mut pool = driver.pool.lock().expect("pool lock");
        pool.idle.push(Conn {
            client,
            statements: HashMap::new(),
        });
        pool.open = 1;
        drop(pool);
        Ok(driver)
    }

    /// Sets a new connection up: the queue's schema first on the search path, commits as the
    /// queue's durability says.
    fn prepare(&self, client: &mut Client) -> Result<(), StoreError> {
        let commit = match self.durability {
            Durability::Durable => "on",
            Durability::Relaxed => "off",
        };
        // Generic plans: the statements here are few and simple, and planning each execution
        // anew (custom plans, for array parameters always) cost as much as running it.
        // A machine cut off in the middle of a transaction holds its row locks until the
        // server gives up on it: claims pass over locked tasks and the lease scan over locked
        // leases, so that must be soon. Transactions here never wait on their client for more
        // than moments, so one idle for 10 s is gone, and a silent connection is probed.
        client
            .batch_execute(&format!(
                "SET search_path = host; SET synchronous_commit = {commit}; \
                 SET plan_cache_mode = force_generic_plan; \
                 SET idle_in_transaction_session_timeout = '10s'; \
                 SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; \
                 SET tcp_keepalives_count = 3; SET tcp_user_timeout = 10000"
            ))
            .map_err(|err| self.error(&err))
    }

    fn error(&self, err: &postgres::Error) -> StoreError {
        self.url.error(connect::describe(err))
    }

    /// Runs `work` again, with backoff, while it fails in a way that passes, for up to
    /// `window`.
    fn retrying<T>(
        &self,
        window: Duration,
        writing: bool,
        work: &mut (dyn FnMut(&mut Tx<'_>) -> Result<T, StoreError> + Send),
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(50);
        loop {
            match self.transaction(writing, work) {
                Ok(out) => return Ok(out),
                Err(Failure::Again(_)) if started.elapsed() < window => {
                    std::thread::sleep(pause.mul_f64(0.5 + fastrand::f64() / 2.0));
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Err(Failure::Again(err) | Failure::Final(err)) => return Err(err),
            }
        }
    }

    fn transaction<T>(
        &self,
        writing: bool,
        work: &mut (dyn FnMut(&mut Tx<'_>) -> Result<T, StoreError> + Send),
    ) -> Result<T, Failure> {
        let mut checkout = Checkout {
            driver: self,
            conn: Some(self.take_connection()?),
            lost: true,
        };
        let conn = checkout.conn.as_mut().expect("taken above");
        let (result, lost) = self.attempt(conn, writing, work);
        checkout.lost = lost;
        drop(checkout);
        result
    }

    /// An idle connection of the pool, a new one while the pool has room, else the next one
    /// handed back.
    fn take_connection(&self) -> Result<Conn, Failure> {
        let mut pool = self.pool.lock().expect("pool lock");
        loop {
            if let Some(conn) = pool.idle.pop() {
                return Ok(conn);
            }
            if pool.open < POOL_SIZE {
                pool.open += 1;
                drop(pool);
                // The server may be restarting: a failure to connect passes.
                let connected = self.url.connect().and_then(|mut client| {
                    self.prepare(&mut client)?;
                    Ok(client)
                });
                return connected
                    .map(|client| Conn {
                        client,
                        statements: HashMap::new(),
                    })
                    .map_err(|err| {
                        self.pool.lock().expect("pool lock").open -= 1;
                        self.freed.notify_one();
                        Failure::Again(err)
                    });
            }
            pool = self.freed.wait(pool).expect("pool lock");
        }
    }

    /// One try of a transaction on `conn`, announcing work when `work` asked to; also says
    /// whether the connection is lost.
    fn attempt<T>(
        &self,
        conn: &mut Conn,
        writing: bool,
        work: &mut (dyn FnMut(&mut Tx<'_>) -> Result<T, StoreError> + Send),
    ) -> (Result<T, Failure>, bool) {
        let tx = match conn.client.transaction() {
            Ok(tx) => tx,
            Err(err) => {
                let (failure, lost) = self.classify(&err);
                return (Err(failure), lost);
            }
        };
        let mut tx = Tx {
            tx,
            statements: &mut conn.statements,
            driver: self,
            writing,
            announced: false,
            trouble: None,
        };
        let done = work(&mut tx).and_then(|out| {
            if tx.announced {
                tx.change(&format!("NOTIFY {CHANNEL}"), &[])?;
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
}

impl Driver for PostgresDriver {
    type Tx<'t> = Tx<'t>;

    fn name(&self) -> &Path {
        Path::new(self.url.shown())
    }

    fn durability(&self) -> Durability {
        self.durability
    }

    fn use_durability(&mut self, durability: Durability) {
        self.durability = durability;
        // The connections follow the new setting too: new ones are made with it.
        let pool = self.pool.get_mut().expect("pool lock");
        let idle = std::mem::take(&mut pool.idle);
        pool.open -= idle.len();
        blocking(move || drop(idle));
    }

    fn write<T: Send>(
        &self,
        _commit: Commit,
        work: &mut (dyn FnMut(&mut Tx<'_>) -> Result<T, StoreError> + Send),
    ) -> Result<T, StoreError> {
        blocking(|| self.retrying(RETRY_WINDOW, true, work))
    }

    fn read<T: Send>(
        &self,
        read: &mut (dyn FnMut(&mut Tx<'_>) -> Result<T, StoreError> + Send),
    ) -> Result<T, StoreError> {
        blocking(|| self.retrying(RETRY_WINDOW, false, read))
    }

    /// Tried once: the worker renews again within a second, and must see soon when it cannot
    /// (it stops the task's handler before the lease runs out).
    fn write_once<T: Send>(
        &self,
        _commit: Commit,
        work: &mut (dyn FnMut(&mut Tx<'_>) -> Result<T, StoreError> + Send),
    ) -> Result<T, StoreError> {
        blocking(|| self.retrying(Duration::ZERO, true, work))
    }

    fn append_log(&self, id: i64, line: &str) -> Result<(), StoreError> {
        let chunk = format!("{line}\n");
        self.write(Commit::Lazy, &mut |tx| {
            tx.change(
                "INSERT INTO task_logs (task_id, start, chunk) \
                 SELECT $1, COALESCE(MAX(start + octet_length(chunk)), 0), $2 \
                 FROM task_logs WHERE task_id = $1",
                &[&id, &chunk],
            )
        })
    }

    fn read_log(&self, id: i64, from: u64) -> Result<(String, u64), StoreError> {
        let from_i = i64::try_from(from).unwrap_or(i64::MAX);
        let rows = self.read(&mut |tx| {
            tx.rows(
                "SELECT start, chunk FROM task_logs \
                 WHERE task_id = $1 AND start + octet_length(chunk) > $2 ORDER BY start",
                &[&id, &from_i],
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

    /// Logs live in the database and go with their tasks.
    fn forget_logs(&self, _ids: &[i64]) -> Result<(), StoreError> {
        Ok(())
    }

    /// The server checks its own pages.
    fn check_database(&self) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
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

/// The schema version of the queue in the database, `None` when it holds none.
fn schema_version(client: &mut Client, url: &PostgresUrl) -> Result<Option<i32>, StoreError> {
    let error = |err: postgres::Error| url.error(connect::describe(&err));
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
}

/// Refuses a schema other than this version's: a newer one needs a newer host, an older one
/// `host migrate`.
fn check_version(url: &PostgresUrl, found: i32) -> Result<(), StoreError> {
    let known = MIGRATIONS.len() as i32;
    if found > known {
        return Err(StoreError::NewerSchema {
            path: PathBuf::from(url.shown()),
            found: found.into(),
            known: known.into(),
        });
    }
    if found < known {
        return Err(StoreError::OlderSchema {
            path: PathBuf::from(url.shown()),
            found: found.into(),
            known: known.into(),
        });
    }
    Ok(())
}

/// Creates the queue's schema in a database that holds none, under the migration lock.
fn create_schema(client: &mut Client, url: &PostgresUrl) -> Result<(), StoreError> {
    apply_migrations(client, url, true).map(drop)
}

/// What `host migrate` does to a PostgreSQL queue: the migrations from its version to this
/// host's, by name, and whether the queue is at this version already (nothing to do).
pub fn migration_plan(url: &PostgresUrl) -> Result<(i32, Vec<&'static str>), StoreError> {
    blocking(|| {
        let mut client = url.connect()?;
        let found = schema_version(&mut client, url)?
            .ok_or_else(|| StoreError::EmptyDatabase(PathBuf::from(url.shown())))?;
        let known = MIGRATIONS.len() as i32;
        if found > known {
            check_version(url, found)?;
        }
        let names = MIGRATIONS
            .iter()
            .skip(found as usize)
            .map(|(name, _)| *name)
            .collect();
        Ok((found, names))
    })
}

/// Upgrades a PostgreSQL queue to this host's schema, under the advisory lock that keeps two
/// migrations apart; returns the version it was at. What `host migrate` does.
pub fn migrate(url: &PostgresUrl) -> Result<i32, StoreError> {
    blocking(|| {
        let mut client = url.connect()?;
        apply_migrations(&mut client, url, false)
    })
}

/// Applies the migrations the queue lacks in one transaction, holding the migration lock;
/// with `create`, to a database without a queue. Returns the version found.
fn apply_migrations(
    client: &mut Client,
    url: &PostgresUrl,
    create: bool,
) -> Result<i32, StoreError> {
    let error = |err: postgres::Error| url.error(connect::describe(&err));
    let mut tx = client.transaction().map_err(error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(error)?;
    if create {
        tx.batch_execute(
            "CREATE SCHEMA IF NOT EXISTS host; \
             CREATE TABLE IF NOT EXISTS host.schema_version (version INTEGER NOT NULL); \
             INSERT INTO host.schema_version (version) \
                SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM host.schema_version)",
        )
        .map_err(error)?;
    }
    tx.batch_execute("SET LOCAL search_path = host")
        .map_err(error)?;
    // Another process may have migrated, or created the queue, meanwhile.
    let from: i32 = tx
        .query_opt("SELECT version FROM schema_version", &[])
        .map_err(error)?
        .map_or(0, |row| row.get(0));
    if create && from > 0 {
        return check_version(url, from).map(|()| from);
    }
    if from > MIGRATIONS.len() as i32 {
        check_version(url, from)?;
    }
    for (name, sql) in MIGRATIONS.iter().skip(from as usize) {
        tx.batch_execute(sql).map_err(|err| {
            url.error(format!(
                "schema migration {name} failed: {}; nothing was changed",
                connect::describe(&err)
            ))
        })?;
    }
    tx.execute(
        "UPDATE schema_version SET version = $1",
        &[&(MIGRATIONS.len() as i32)],
    )
    .map_err(error)?;
    tx.commit().map_err(error)?;
    Ok(from)
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

/// A transaction on the connection.
pub struct Tx<'c> {
    tx: postgres::Transaction<'c>,
    statements: &'c mut HashMap<String, Statement>,
    driver: &'c PostgresDriver,
    /// A write locks the rows it reads; a read does not.
    writing: bool,
    /// Set when some task became claimable; announced at the commit.
    announced: bool,
    trouble: Option<Trouble>,
}

impl Tx<'_> {
    fn fail(&mut self, err: postgres::Error) -> StoreError {
        if is_connection_lost(&err) {
            self.trouble = Some(Trouble::ConnectionLost);
        } else if is_conflict(&err) {
            self.trouble = Some(Trouble::Conflict);
        }
        self.driver.error(&err)
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

    fn change(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<(), StoreError> {
        let statement = self.statement(sql)?;
        self.tx
            .execute(&statement, params)
            .map(drop)
            .map_err(|err| self.fail(err))
    }

    /// (id, body) rows of a query.
    fn records(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<(i64, String)>, StoreError> {
        Ok(self
            .rows(sql, params)?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect())
    }

    /// Rows of `sql` with `FOR UPDATE` added in a write.
    fn locking(&self, sql: &str) -> String {
        if self.writing {
            format!("{sql} FOR UPDATE")
        } else {
            sql.to_string()
        }
    }
}

/// Tasks' columns as arrays, one element per row, for statements that take a batch of rows
/// with `unnest`: $1 id, $2 type, $3 status, $4 priority, $5 to $8 times, $9 worker, $10 the
/// whole task as JSON, $11 the conflict flag, $12 the lease's secret.
struct Columns {
    id: Vec<i64>,
    task_type: Vec<String>,
    status: Vec<&'static str>,
    priority: Vec<i32>,
    times: [Vec<Option<i64>>; 4],
    worker: Vec<Option<String>>,
    body: Vec<String>,
    conflict: Vec<bool>,
    token: Vec<Option<String>>,
}

impl Columns {
    fn of(rows: &[TaskRow]) -> Columns {
        Columns {
            id: rows.iter().map(|r| r.id).collect(),
            task_type: rows.iter().map(|r| r.task_type.clone()).collect(),
            status: rows.iter().map(|r| r.status).collect(),
            priority: rows
                .iter()
                .map(|r| i32::try_from(r.priority).unwrap_or(i32::MAX))
                .collect(),
            times: [
                rows.iter().map(|r| Some(r.created_at)).collect(),
                rows.iter().map(|r| r.finished_at).collect(),
                rows.iter().map(|r| r.retry_at).collect(),
                rows.iter().map(|r| r.lease_expires_at).collect(),
            ],
            worker: rows.iter().map(|r| r.worker.clone()).collect(),
            body: rows.iter().map(|r| r.body.clone()).collect(),
            conflict: rows.iter().map(|r| r.conflict).collect(),
            token: rows.iter().map(|r| r.token.clone()).collect(),
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 12] {
        [
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
            &self.token,
        ]
    }
}

/// The rows of a batch, as a table named `u`.
const UNNEST: &str = "unnest($1::bigint[], $2::text[], $3::text[], $4::int[], $5::bigint[], \
    $6::bigint[], $7::bigint[], $8::bigint[], $9::text[], $10::text[], $11::bool[], $12::text[]) \
    AS u(id, type, status, priority, created_at, finished_at, retry_at, lease_expires_at, \
         worker, body, conflict, token)";

impl DriverTx for Tx<'_> {
    fn tasks(&mut self, ids: &[i64]) -> Result<Vec<StoredTask>, StoreError> {
        let sql = self.locking(
            "SELECT id, body, lease_token, \
                EXISTS (SELECT 1 FROM task_after a WHERE a.after_id = t.id) \
             FROM tasks t WHERE id = ANY($1) ORDER BY id",
        );
        let rows = self.rows(&sql, &[&ids])?;
        Ok(rows
            .iter()
            .map(|row| StoredTask {
                id: row.get(0),
                body: row.get(1),
                token: row.get(2),
                has_dependents: row.get(3),
            })
            .collect())
    }

    fn dependents(&mut self, ids: &[i64]) -> Result<Vec<(i64, i64)>, StoreError> {
        let rows = self.rows(
            "SELECT after_id, task_id FROM task_after WHERE after_id = ANY($1) ORDER BY task_id",
            &[&ids],
        )?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    fn reserve_ids(&mut self, count: usize) -> Result<i64, StoreError> {
        // The counter's row lock makes adds take turns until they commit, so each gets
        // consecutive ids.
        let count = count as i64;
        let rows = self.rows(
            "UPDATE next_task_id SET id = id + $1 RETURNING id - $1",
            &[&count],
        )?;
        Ok(rows.first().map_or(1, |row| row.get(0)))
    }

    fn advance_ids(&mut self, last: i64) -> Result<(), StoreError> {
        self.change(
            "UPDATE next_task_id SET id = GREATEST(id, $1 + 1)",
            &[&last],
        )
    }

    fn insert(&mut self, rows: &[TaskRow]) -> Result<(), StoreError> {
        let columns = Columns::of(rows);
        self.change(
            &format!(
                "INSERT INTO tasks (id, type, status, priority, created_at, finished_at, \
                    retry_at, lease_expires_at, worker, body, conflict, lease_token) \
                 SELECT * FROM {UNNEST}"
            ),
            &columns.params(),
        )?;
        let (tasks, afters): (Vec<i64>, Vec<i64>) = rows
            .iter()
            .flat_map(|row| row.after.iter().map(|after| (row.id, *after)))
            .unzip();
        if tasks.is_empty() {
            return Ok(());
        }
        self.change(
            "INSERT INTO task_after (task_id, after_id) \
             SELECT * FROM unnest($1::bigint[], $2::bigint[]) ON CONFLICT DO NOTHING",
            &[&tasks, &afters],
        )
    }

    fn update(&mut self, rows: &[TaskRow]) -> Result<(), StoreError> {
        const SET: &str = "type = u.type, status = u.status, priority = u.priority, \
            created_at = u.created_at, finished_at = u.finished_at, retry_at = u.retry_at, \
            lease_expires_at = u.lease_expires_at, worker = u.worker, body = u.body, \
            conflict = u.conflict, \
            lease_token = CASE WHEN u.status = 'running' THEN COALESCE(u.token, t.lease_token) END";
        // One row (most writes) by its key: a join with `unnest` costs the server twice as
        // much for one row.
        let sql = match rows {
            [_] => format!(
                "UPDATE tasks t SET {SET} FROM (SELECT $1::bigint AS id, $2::text AS type, \
                    $3::text AS status, $4::int AS priority, $5::bigint AS created_at, \
                    $6::bigint AS finished_at, $7::bigint AS retry_at, \
                    $8::bigint AS lease_expires_at, $9::text AS worker, $10::text AS body, \
                    $11::bool AS conflict, $12::text AS token) u WHERE t.id = $1"
            ),
            _ => format!("UPDATE tasks t SET {SET} FROM {UNNEST} WHERE t.id = u.id"),
        };
        match rows {
            [row] => {
                let priority = i32::try_from(row.priority).unwrap_or(i32::MAX);
                self.change(
                    &sql,
                    &[
                        &row.id,
                        &row.task_type,
                        &row.status,
                        &priority,
                        &row.created_at,
                        &row.finished_at,
                        &row.retry_at,
                        &row.lease_expires_at,
                        &row.worker,
                        &row.body,
                        &row.conflict,
                        &row.token,
                    ],
                )
            }
            _ => self.change(&sql, &Columns::of(rows).params()),
        }
    }

    fn candidates(
        &mut self,
        types: &[String],
        now: Timestamp,
        per_type: usize,
        skip: &[i64],
        by_age: bool,
    ) -> Result<Vec<Candidate>, StoreError> {
        if !by_age {
            // Every type in one statement (see `claim_view`).
            return Ok(self
                .claim_view(&[], types, now, per_type, skip, false)?
                .candidates);
        }
        const PENDING: &str = "status = 'pending' AND type = $1 \
            AND (retry_at IS NULL OR retry_at <= $2) AND id <> ALL($3)";
        let now = millis(now);
        let mut found = Vec::new();
        for task_type in types {
            // The oldest of each priority are the ones that have aged most: the best
            // `per_type` under aging are among each priority's first `per_type`. Locked apart,
            // as a window cannot lock.
            let oldest: Vec<i64> = self
                .rows(
                    &format!(
                        "SELECT id FROM ( \
                            SELECT id, row_number() OVER (PARTITION BY priority ORDER BY id) \
                                AS n FROM tasks WHERE {PENDING}) AS ranked \
                         WHERE n <= $4"
                    ),
                    &[task_type, &now, &skip, &(per_type as i64)],
                )?
                .iter()
                .map(|row| row.get(0))
                .collect();
            let rows = self.rows(
                "SELECT id, priority, created_at, body FROM tasks \
                 WHERE id = ANY($1) AND status = 'pending' FOR UPDATE SKIP LOCKED",
                &[&oldest],
            )?;
            found.extend(rows.iter().map(|row| Candidate {
                id: row.get(0),
                priority: u32::try_from(row.get::<_, i32>(1)).unwrap_or(0),
                created_at: row.get(2),
                body: row.get(3),
            }));
        }
        Ok(found)
    }

    /// One statement (one round trip) for the three: rows tagged 0 are leased tasks, 1
    /// candidates, 2 pauses. With aging, the candidates need two statements per type (see
    /// `candidates`), read apart.
    fn claim_view(
        &mut self,
        leased: &[i64],
        types: &[String],
        now: Timestamp,
        per_type: usize,
        skip: &[i64],
        by_age: bool,
    ) -> Result<ClaimView, StoreError> {
        if by_age {
            return Ok(ClaimView {
                leased: self.tasks(leased)?,
                candidates: self.candidates(types, now, per_type, skip, by_age)?,
                pauses: self.pauses()?,
            });
        }
        // Each type's best, walking the claim index in order, locked; other claimers' locked
        // tasks passed over.
        let rows = self.rows(
            "WITH leased AS ( \
                SELECT id, body, lease_token, \
                    EXISTS (SELECT 1 FROM task_after a WHERE a.after_id = t.id) AS has_dependents \
                FROM tasks t WHERE id = ANY($1) FOR UPDATE), \
             candidates AS ( \
                SELECT c.* FROM unnest($2::text[]) AS k(type) CROSS JOIN LATERAL ( \
                    SELECT id, priority, created_at, body FROM tasks \
                    WHERE status = 'pending' AND type = k.type \
                        AND (retry_at IS NULL OR retry_at <= $3) AND id <> ALL($4) \
                    ORDER BY priority, id LIMIT $5 FOR UPDATE SKIP LOCKED) c) \
             SELECT 0, id, body, lease_token, has_dependents, NULL::int, NULL::bigint, \
                    NULL::text, NULL::text FROM leased \
             UNION ALL SELECT 1, id, body, NULL, NULL, priority, created_at, NULL, NULL \
                    FROM candidates \
             UNION ALL SELECT 2, NULL, NULL, NULL, NULL, NULL, NULL, kind, name FROM pauses",
            &[&leased, &types, &millis(now), &skip, &(per_type as i64)],
        )?;
        let mut view = ClaimView::default();
        for row in &rows {
            match row.get::<_, i32>(0) {
                0 => view.leased.push(StoredTask {
                    id: row.get(1),
                    body: row.get(2),
                    token: row.get(3),
                    has_dependents: row.get(4),
                }),
                1 => view.candidates.push(Candidate {
                    id: row.get(1),
                    priority: u32::try_from(row.get::<_, i32>(5)).unwrap_or(0),
                    created_at: row.get(6),
                    body: row.get(2),
                }),
                _ => view.pauses.push((row.get(7), row.get(8))),
            }
        }
        view.leased.sort_by_key(|task| task.id);
        Ok(view)
    }

    fn running(&mut self, task_type: &str) -> Result<usize, StoreError> {
        // Claimers of a limited type take turns, on every machine, until they commit.
        self.change(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&LIMIT_LOCK, &task_type],
        )?;
        let rows = self.rows(
            "SELECT COALESCE(SUM(n), 0)::bigint FROM counts WHERE status = 'running' AND type = $1",
            &[&task_type],
        )?;
        let n: i64 = rows.first().map_or(0, |row| row.get(0));
        Ok(usize::try_from(n).unwrap_or(0))
    }

    fn expired(&mut self, now: Timestamp) -> Result<Vec<(i64, String)>, StoreError> {
        self.records(
            "SELECT id, body FROM tasks \
             WHERE status = 'running' AND lease_expires_at < $1 FOR UPDATE SKIP LOCKED",
            &[&millis(now)],
        )
    }

    fn set_pause(&mut self, kind: &str, name: &str, on: bool) -> Result<(), StoreError> {
        let sql = if on {
            "INSERT INTO pauses (kind, name) VALUES ($1, $2) ON CONFLICT DO NOTHING"
        } else {
            "DELETE FROM pauses WHERE kind = $1 AND name = $2"
        };
        self.change(sql, &[&kind, &name])
    }

    fn pauses(&mut self) -> Result<Vec<(String, String)>, StoreError> {
        let rows = self.rows("SELECT kind, name FROM pauses", &[])?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    fn select(&mut self, query: &TaskQuery) -> Result<Vec<(i64, String)>, StoreError> {
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
            bind("body ILIKE ?", Box::new(like_pattern(text)));
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
        let sql = query_sql(&conditions, query);
        let params: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v.as_ref()).collect();
        // Not prepared: each combination of filters is a statement of its own.
        let rows = self
            .tx
            .query(sql.as_str(), &params)
            .map_err(|err| self.fail(err))?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    fn counts(&mut self) -> Result<Vec<(String, String, i64)>, StoreError> {
        let rows = self.rows(
            "SELECT status, type, SUM(n)::bigint FROM counts GROUP BY status, type \
             HAVING SUM(n) > 0",
            &[],
        )?;
        Ok(rows
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2)))
            .collect())
    }

    fn wrong_counts(&mut self) -> Result<Vec<(String, String, i64, i64)>, StoreError> {
        let rows = self.rows(
            "SELECT status, type, COALESCE(c.n, 0)::bigint, COALESCE(t.n, 0)::bigint FROM \
                (SELECT status, type, count(*) AS n FROM tasks GROUP BY status, type) t \
                FULL JOIN (SELECT status, type, SUM(n) AS n FROM counts GROUP BY status, type) c \
                USING (status, type) \
             WHERE COALESCE(c.n, 0) <> COALESCE(t.n, 0)",
            &[],
        )?;
        Ok(rows
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)))
            .collect())
    }

    fn first_work(
        &mut self,
        types: &[String],
        skip: &[i64],
        paused: &PauseSet,
    ) -> Result<Option<(i64, String)>, StoreError> {
        const NOT_PAUSED: &str = "NOT ($3 OR t.type = ANY($4) OR t.id = ANY($5))";
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
        let found = self.records(
            &sql,
            &[
                &types,
                &skip,
                &paused.queue(),
                &paused.types(),
                &paused.tasks(),
            ],
        )?;
        Ok(found.into_iter().next())
    }

    fn delete_finished(&mut self, which: Finished<'_>) -> Result<Vec<i64>, StoreError> {
        let rows = match which {
            Finished::Before {
                before,
                statuses,
                limit,
            } => self.rows(
                "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks \
                    WHERE finished_at < $1 AND status = ANY($2) LIMIT $3) RETURNING id",
                &[&before, &statuses, &(limit as i64)],
            )?,
            Finished::Ids(ids) => self.rows(
                "DELETE FROM tasks WHERE id = ANY($1) \
                    AND status IN ('completed', 'failed', 'cancelled') RETURNING id",
                &[&ids],
            )?,
        };
        let ids: Vec<i64> = rows.iter().map(|row| row.get(0)).collect();
        let names: Vec<String> = ids.iter().map(i64::to_string).collect();
        self.change("DELETE FROM task_after WHERE task_id = ANY($1)", &[&ids])?;
        self.change("DELETE FROM task_logs WHERE task_id = ANY($1)", &[&ids])?;
        self.change(
            "DELETE FROM pauses WHERE kind = 'task' AND name = ANY($1)",
            &[&names],
        )?;
        Ok(ids)
    }

    fn put_worker(&mut self, name: &str, record: &str) -> Result<(), StoreError> {
        self.change(
            "INSERT INTO workers (name, record) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET record = excluded.record",
            &[&name, &record],
        )
    }

    fn remove_worker(&mut self, name: &str) -> Result<(), StoreError> {
        self.change("DELETE FROM workers WHERE name = $1", &[&name])
    }

    fn workers(&mut self) -> Result<Vec<(String, String)>, StoreError> {
        let rows = self.rows("SELECT name, record FROM workers ORDER BY name", &[])?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    fn setting(&mut self, key: &str) -> Result<Option<String>, StoreError> {
        let rows = self.rows("SELECT value FROM settings WHERE key = $1", &[&key])?;
        Ok(rows.first().map(|row| row.get(0)))
    }

    fn set_setting(&mut self, key: &str, value: Option<&str>) -> Result<(), StoreError> {
        match value {
            Some(value) => self.change(
                "INSERT INTO settings (key, value) VALUES ($1, $2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[&key, &value],
            ),
            None => self.change("DELETE FROM settings WHERE key = $1", &[&key]),
        }
    }

    fn keep_setting(&mut self, key: &str, value: &str) -> Result<String, StoreError> {
        // A concurrent insert of the key makes this one wait for its commit and then do
        // nothing; the read after it, a statement of its own, sees the committed value.
        self.change(
            "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
            &[&key, &value],
        )?;
        Ok(self.setting(key)?.unwrap_or_else(|| value.to_string()))
    }

    fn announce(&mut self) {
        self.announced = true;
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
