//! The queue's store as a long-running server (`host serve`, `host mcp`) uses it: opened once,
//! at the server's start, and kept for its life. On PostgreSQL its pool
//! ([`queue::POSTGRES_POOL_SIZE`] connections) serves the server's requests side by side, where
//! a store for each request was a new connection (TCP, TLS, authentication) each time; on
//! SQLite it is one connection, held open.

use std::sync::Arc;

use queue::{Store, WorkSignal};

use crate::cli::Settings;
use crate::commands::open_store;

/// The store of a server's queue, kept for the server's life.
#[derive(Clone)]
pub struct ServerStore(Arc<Store>);

impl ServerStore {
    /// Opens the queue of `settings` and keeps it: a queue that cannot be opened is said now,
    /// in one line, before anything is served.
    pub fn open(settings: &Settings) -> anyhow::Result<ServerStore> {
        Ok(ServerStore(Arc::new(open_store(settings)?)))
    }

    /// Runs `work` on the store. It blocks (file or database work, and on PostgreSQL it may
    /// wait for a free connection of the pool): call it off the async runtime's threads.
    pub fn with<T>(&self, work: impl FnOnce(&Store) -> T) -> anyhow::Result<T> {
        Ok(work(&self.0))
    }

    /// How the server hears that work may have become claimable (see [`Store::work_signal`]).
    pub fn work_signal(&self) -> anyhow::Result<WorkSignal> {
        self.with(Store::work_signal)
    }
}
