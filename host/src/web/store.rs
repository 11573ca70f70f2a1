//! The queue's store as a long-running server (`host serve`, `host mcp`) uses it.
//!
//! On PostgreSQL the server opens its store once, at its start, and keeps it: the store's pool
//! ([`queue::POSTGRES_POOL_SIZE`] connections) serves the server's requests side by side, where
//! a store for each request was a new connection (TCP, TLS, authentication) each time.
//!
//! On SQLite it opens one for each use, as the command line does: opening is a few file
//! operations, and a store kept open in the server would not stay safe. The functions the
//! servers share with the command line that take the settings (`stats::collect`, the branch
//! and review verbs, the self-serve verbs) open a store of their own; opening one opens and
//! closes the database and its index outside SQLite, and closing a file drops every POSIX lock
//! the process holds on it, the kept store's lock included. Another process that closes the
//! queue then deletes the write-ahead log from under the kept store, whose next write finds the
//! queue damaged and marks it so. (Seen: `host status` did it after the dashboard answered
//! `/api/stats`.)

use std::sync::Arc;

use queue::{QueueAddress, Store, WorkSignal};

use crate::cli::Settings;
use crate::commands::open_store;

/// The store of a server's queue: kept, or opened for each use (see the module's notes).
#[derive(Clone)]
pub enum ServerStore {
    /// Opened once and kept for the server's life.
    Kept(Arc<Store>),
    /// Opened for each use.
    EachUse(Settings),
}

impl ServerStore {
    /// Opens the queue of `settings` (and keeps it, on PostgreSQL): a queue that cannot be
    /// opened is said now, in one line, before anything is served.
    pub fn open(settings: &Settings) -> anyhow::Result<ServerStore> {
        let store = open_store(settings)?;
        Ok(match settings.queue {
            QueueAddress::Postgres(_) => ServerStore::Kept(Arc::new(store)),
            QueueAddress::Folder(_) => ServerStore::EachUse(settings.clone()),
        })
    }

    /// Runs `work` on the store; an error only when the store could not be opened. It blocks
    /// (file or database work, and on PostgreSQL it may wait for a free connection of the
    /// pool): call it off the async runtime's threads.
    pub fn with<T>(&self, work: impl FnOnce(&Store) -> T) -> anyhow::Result<T> {
        match self {
            ServerStore::Kept(store) => Ok(work(store)),
            ServerStore::EachUse(settings) => Ok(work(&open_store(settings)?)),
        }
    }

    /// How the server hears that work may have become claimable (see [`Store::work_signal`]).
    /// It blocks, as [`ServerStore::with`] does.
    pub fn work_signal(&self) -> anyhow::Result<WorkSignal> {
        self.with(Store::work_signal)
    }
}
