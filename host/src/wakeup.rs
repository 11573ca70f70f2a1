//! Instant pickup: idle worker slots sleep until the queue's doorbell rings (a file-system
//! notification on `<queue>/doorbell`, which the store rewrites whenever work may have become
//! claimable) or until the poll interval passes.
//!
//! Polling stays as the fallback: notifications do not arrive for changes made by other
//! machines on a network file system (NFS, SMB), nor when the watcher cannot be set up (the
//! inotify watch limit is reached). Then pickup takes up to `--poll`. Retries waiting out a
//! backoff and expired leases are found by polling too, as they become due by time, not by a
//! change in the folder.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};

/// Wakes idle slots when something may have become claimable.
pub struct Wakeup {
    generation: Arc<(Mutex<u64>, Condvar)>,
    // Kept alive for as long as slots wait on it; `None` when notifications are unavailable.
    _watcher: Option<notify::RecommendedWatcher>,
}

impl Wakeup {
    /// Watches the queue's `doorbell` file. If that fails, says why in the returned text and
    /// polls only.
    pub fn watch(doorbell: &Path) -> (Wakeup, Option<String>) {
        let generation = Arc::new((Mutex::new(0u64), Condvar::new()));
        let signal = Arc::clone(&generation);
        let handler = move |event: notify::Result<notify::Event>| {
            // The store rewrites the doorbell in place; opening and closing it is not a ring.
            if event.is_ok_and(|e| matches!(e.kind, EventKind::Modify(_) | EventKind::Create(_))) {
                let (count, changed) = &*signal;
                *count.lock().expect("wakeup lock") += 1;
                changed.notify_all();
            }
        };
        let watched = notify::recommended_watcher(handler).and_then(|mut watcher| {
            watcher.watch(doorbell, RecursiveMode::NonRecursive)?;
            Ok(watcher)
        });
        match watched {
            Ok(watcher) => (
                Wakeup {
                    generation,
                    _watcher: Some(watcher),
                },
                None,
            ),
            Err(err) => (
                Wakeup {
                    generation,
                    _watcher: None,
                },
                Some(format!("file-system notifications unavailable ({err})")),
            ),
        }
    }

    /// A token for [`Wakeup::wait`]: take it before looking for work, so that a task indexed
    /// while looking is not missed.
    pub fn token(&self) -> u64 {
        *self.generation.0.lock().expect("wakeup lock")
    }

    /// Sleeps until the doorbell rang after `token` was taken, or `limit` passes.
    pub fn wait(&self, token: u64, limit: Duration) {
        let (count, changed) = &*self.generation;
        let guard = count.lock().expect("wakeup lock");
        let _ = changed
            .wait_timeout_while(guard, limit, |now| *now == token)
            .expect("wakeup lock");
    }
}
