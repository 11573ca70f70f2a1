//! Where a queue lives ([`QueueAddress`]: a folder or a `postgres://` URL) and the store opened
//! there ([`Store`]), which does what every [`QueueStore`] does plus what differs by engine:
//! the queue-wide configuration, how idle workers hear of new work, and integrity checks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;

use crate::lifecycle::Policy;
use crate::postgres::{PostgresStore, PostgresUrl, WorkListener};
use crate::{
    Claim, Durability, Lease, NewTask, Outcome, PauseScope, QueueFolder, QueueStore, Recorded,
    Renewal, SqliteStore, StoreError, Summary, Task, TaskQuery, TaskStatus, UsageLimit,
    WorkerRecord,
};
use crate::{InputAnswer, Question, TaskChange, TaskEdit};

/// The file in a queue folder that holds the queue's configuration.
pub const CONFIG_FILE: &str = "host.toml";

/// The key of the queue's id among its settings.
const QUEUE_ID: &str = "queue_id";

/// `path` made absolute without `.` or `..` in it, as the file system resolves them: the real
/// path when it exists, else its folder's real path and its name, else a lexical cleaning.
pub fn normal_path(path: &Path) -> std::io::Result<PathBuf> {
    let path = std::path::absolute(path)?;
    // dunce: on Windows, without the `\\?\` prefix that std's canonical paths carry.
    if let Ok(real) = dunce::canonicalize(&path) {
        return Ok(real);
    }
    let cleaned = path_clean::clean(&path);
    let real_parent = cleaned.parent().and_then(|p| dunce::canonicalize(p).ok());
    Ok(match (real_parent, cleaned.file_name()) {
        (Some(parent), Some(name)) => parent.join(name),
        _ => cleaned,
    })
}

/// Where a queue lives.
#[derive(Clone, Debug)]
pub enum QueueAddress {
    /// A coordination folder: the embedded SQLite store.
    Folder(PathBuf),
    /// A PostgreSQL database: the store for workers on many machines.
    Postgres(Box<PostgresUrl>),
}

impl QueueAddress {
    /// A `postgres://` or `postgresql://` URL, else a folder (made absolute). A libpq
    /// key=value string (`host=db dbname=q`) is refused, in an error that does not repeat it
    /// (it may hold a password), rather than taken for a folder of that name.
    pub fn parse(text: &str) -> Result<QueueAddress, StoreError> {
        if PostgresUrl::is_url(text) {
            return PostgresUrl::parse(text).map(|url| QueueAddress::Postgres(Box::new(url)));
        }
        if PostgresUrl::is_key_value(text) {
            return Err(StoreError::KeyValueAddress);
        }
        let path = normal_path(Path::new(text)).map_err(|source| StoreError::Io {
            path: PathBuf::from(text),
            source,
        })?;
        Ok(QueueAddress::Folder(path))
    }

    /// The coordination folder, for a folder queue.
    pub fn folder(&self) -> Option<&Path> {
        match self {
            QueueAddress::Folder(path) => Some(path),
            QueueAddress::Postgres(_) => None,
        }
    }
}

impl std::fmt::Display for QueueAddress {
    /// The folder, or the URL with its password hidden.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueueAddress::Folder(path) => write!(f, "{}", path.display()),
            QueueAddress::Postgres(url) => write!(f, "{url}"),
        }
    }
}

/// How an idle worker hears that work may have become claimable.
pub enum WorkSignal {
    /// The folder's doorbell, a file that the store rewrites in place (watch it for changes;
    /// [`QueueFolder::doorbell`] makes it again if it was deleted).
    Doorbell(QueueFolder),
    /// Announcements on a database connection: opens a listener, again after one is lost.
    Listen(Box<dyn Fn() -> Result<WorkListener, StoreError> + Send + Sync>),
}

/// A queue store of either engine.
// A process opens one or two: their size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Store {
    /// The embedded store, in a coordination folder.
    Sqlite(SqliteStore),
    /// The store on a PostgreSQL server.
    Postgres(PostgresStore),
}

impl Store {
    /// Creates the queue at `address` if need be (idempotent) and opens it; with
    /// `durability`, sets it for the whole queue.
    pub fn init(
        address: &QueueAddress,
        durability: Option<Durability>,
    ) -> Result<Store, StoreError> {
        let store = match address {
            QueueAddress::Folder(root) => Store::Sqlite(SqliteStore::init(root)?),
            QueueAddress::Postgres(url) => Store::Postgres(PostgresStore::init(url)?),
        };
        match durability {
            Some(durability) if durability != store.durability() => match store {
                Store::Sqlite(s) => s.set_durability(durability).map(Store::Sqlite),
                Store::Postgres(s) => s.set_durability(durability).map(Store::Postgres),
            },
            _ => Ok(store),
        }
    }

    /// Opens the existing queue at `address`, migrating its schema if it is older.
    pub fn open(address: &QueueAddress) -> Result<Store, StoreError> {
        Ok(match address {
            QueueAddress::Folder(root) => Store::Sqlite(SqliteStore::open(root)?),
            QueueAddress::Postgres(url) => Store::Postgres(PostgresStore::open(url)?),
        })
    }

    /// Applies the queue-wide rules: lease length, backoff, per-type limits, aging.
    pub fn with_policy(self, policy: Policy) -> Store {
        match self {
            Store::Sqlite(s) => Store::Sqlite(s.with_policy(policy)),
            Store::Postgres(s) => Store::Postgres(s.with_policy(policy)),
        }
    }

    /// Sets how long a lease lasts unless renewed.
    pub fn with_lease(self, lease: Duration) -> Store {
        let mut policy = self.policy().clone();
        policy.lease = lease;
        self.with_policy(policy)
    }

    /// The rules this store applies.
    pub fn policy(&self) -> &Policy {
        match self {
            Store::Sqlite(s) => s.policy(),
            Store::Postgres(s) => s.policy(),
        }
    }

    /// The queue's durability setting.
    pub fn durability(&self) -> Durability {
        match self {
            Store::Sqlite(s) => s.durability(),
            Store::Postgres(s) => s.durability(),
        }
    }

    /// The coordination folder, for the embedded store.
    pub fn folder(&self) -> Option<&QueueFolder> {
        match self {
            Store::Sqlite(s) => Some(s.folder()),
            Store::Postgres(_) => None,
        }
    }

    /// The queue-wide configuration's text and where it was read from; `None` when there is
    /// none. In a folder, `host.toml`; on PostgreSQL, the database, so that every machine
    /// reads the same.
    pub fn config(&self) -> Result<Option<(String, String)>, StoreError> {
        match self {
            Store::Sqlite(s) => {
                let path = s.folder().root().join(CONFIG_FILE);
                match std::fs::read_to_string(&path) {
                    Ok(text) => Ok(Some((text, path.display().to_string()))),
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(source) => Err(StoreError::Io { path, source }),
                }
            }
            Store::Postgres(s) => Ok(s
                .setting(CONFIG_FILE)?
                .map(|text| (text, format!("{CONFIG_FILE} in {}", s.url())))),
        }
    }

    /// Replaces the queue-wide configuration (`None` removes it). The caller checks the text.
    pub fn set_config(&self, text: Option<&str>) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.folder().write_config(CONFIG_FILE, text),
            Store::Postgres(s) => s.set_setting(CONFIG_FILE, text),
        }
    }

    /// The queue's id, if it has one yet: what names its task branches apart from other
    /// queues' on one repository (a queue made before queues had ids has none until
    /// [`Store::queue_id`] gives it one).
    pub fn known_queue_id(&self) -> Result<Option<String>, StoreError> {
        match self {
            Store::Sqlite(s) => s.setting(QUEUE_ID),
            Store::Postgres(s) => s.setting(QUEUE_ID),
        }
    }

    /// The queue's id, made from `fresh` and kept when it has none: of processes doing this at
    /// once, on any database, every one gets the same id.
    pub fn queue_id(&self, fresh: impl FnOnce() -> String) -> Result<String, StoreError> {
        if let Some(id) = self.known_queue_id()? {
            return Ok(id);
        }
        let fresh = fresh();
        match self {
            Store::Sqlite(s) => s.keep_setting(QUEUE_ID, &fresh),
            Store::Postgres(s) => s.keep_setting(QUEUE_ID, &fresh),
        }
    }

    /// How idle workers hear of new work.
    pub fn work_signal(&self) -> WorkSignal {
        match self {
            Store::Sqlite(s) => WorkSignal::Doorbell(s.folder().clone()),
            Store::Postgres(s) => {
                let url = s.url().clone();
                WorkSignal::Listen(Box::new(move || WorkListener::connect(&url)))
            }
        }
    }

    /// Integrity checks of the stored tasks for `host doctor`: each problem, in one line.
    pub fn check(&self) -> Result<Vec<String>, StoreError> {
        match self {
            Store::Sqlite(s) => s.check(),
            Store::Postgres(s) => s.check(),
        }
    }
}

/// Calls the same method on whichever store this is.
macro_rules! delegate {
    ($(fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;)*) => {
        $(fn $name(&self $(, $arg: $ty)*) -> $ret {
            match self {
                Store::Sqlite(s) => s.$name($($arg),*),
                Store::Postgres(s) => s.$name($($arg),*),
            }
        })*
    };
}

impl QueueStore for Store {
    delegate! {
        fn add(&self, tasks: Vec<NewTask>) -> Result<Vec<Task>, StoreError>;
        fn claim(&self, worker: &str, types: &[String]) -> Result<Option<Claim>, StoreError>;
        fn claim_up_to(
            &self,
            worker: &str,
            types: &[String],
            count: usize
        ) -> Result<Vec<Claim>, StoreError>;
        fn finish_many(
            &self,
            outcomes: &[(Lease, Outcome)]
        ) -> Result<Vec<Result<Task, StoreError>>, StoreError>;
        fn renew(&self, lease: &Lease) -> Result<Renewal, StoreError>;
        fn finish(&self, lease: &Lease, outcome: Outcome) -> Result<Task, StoreError>;
        fn finish_and_claim(
            &self,
            outcomes: &[(Lease, Outcome)],
            worker: &str,
            types: &[String],
            count: usize
        ) -> Result<Recorded, StoreError>;
        fn release(&self, lease: &Lease) -> Result<(), StoreError>;
        fn ask(
            &self,
            lease: &Lease,
            question: Question,
            expires_at: Option<Timestamp>
        ) -> Result<Task, StoreError>;
        fn answer(
            &self,
            id: &str,
            answer: InputAnswer,
            question: Option<Timestamp>
        ) -> Result<Task, StoreError>;
        fn end_input(&self, lease: &Lease, gives_up: bool) -> Result<Option<InputAnswer>, StoreError>;
        fn edit(&self, id: &str, edit: &TaskEdit) -> Result<Task, StoreError>;
        fn cancel(&self, id: &str) -> Result<Task, StoreError>;
        fn retry(&self, id: &str) -> Result<Task, StoreError>;
        fn update(&self, id: &str, change: &TaskChange<'_>) -> Result<Task, StoreError>;
        fn pause(&self, scope: &PauseScope) -> Result<(), StoreError>;
        fn resume(&self, scope: &PauseScope) -> Result<(), StoreError>;
        fn paused(&self) -> Result<Vec<PauseScope>, StoreError>;
        fn get(&self, id: &str) -> Result<Task, StoreError>;
        fn list(&self, query: &TaskQuery) -> Result<Vec<Task>, StoreError>;
        fn summary(&self) -> Result<Summary, StoreError>;
        fn work_ahead(&self, types: &[String]) -> Result<Option<Task>, StoreError>;
        fn expire_leases(&self) -> Result<usize, StoreError>;
        fn purge(&self, before: Timestamp, statuses: &[TaskStatus]) -> Result<usize, StoreError>;
        fn forget_finished(&self, ids: &[i64]) -> Result<(), StoreError>;
        fn put_worker(&self, record: &WorkerRecord) -> Result<(), StoreError>;
        fn remove_worker(&self, name: &str) -> Result<(), StoreError>;
        fn workers(&self) -> Result<Vec<WorkerRecord>, StoreError>;
        fn usage_limits(&self) -> Result<Vec<UsageLimit>, StoreError>;
        fn set_usage_limit(&self, limit: &UsageLimit) -> Result<(), StoreError>;
        fn append_log(&self, id: &str, line: &str) -> Result<(), StoreError>;
        fn read_log(&self, id: &str, from: u64) -> Result<(String, u64), StoreError>;
        fn lease_duration(&self) -> Duration;
        fn take_warnings(&self) -> Vec<String>;
        fn quick_check(&self) -> Result<(), StoreError>;
    }
}
