//! Instant pickup: idle worker slots sleep until a task is indexed as pending (a file-system
//! notification from the queue's `pending/` folder) or until the poll interval passes.
//!
//! Polling stays as the fallback: notifications do not arrive for changes made by other
//! machines on a network file system (NFS, SMB), nor when the watcher cannot be set up (the
//! inotify watch limit is reached). Then pickup takes up to `--poll`. Retries waiting out a
//! backoff and expired leases are found by polling too, as they become due by time, not by a
//! change in the folder.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use notify::event::{ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher};

/// Wakes idle slots when something may have become claimable.
pub struct Wakeup {
    generation: Arc<(Mutex<u64>, Condvar)>,
    // Kept alive for as long as slots wait on it; `None` when notifications are unavailable.
    _watcher: Option<notify::RecommendedWatcher>,
}

impl Wakeup {
    /// Watches `<queue>/pending`, and with `finishes` also `<queue>/running` for tasks that end
    /// (which frees a slot of a type with a `[limits]` entry). If that fails, says why in the
    /// returned text and polls only.
    pub fn watch(queue: &Path, finishes: bool) -> (Wakeup, Option<String>) {
        let generation = Arc::new((Mutex::new(0u64), Condvar::new()));
        let signal = Arc::clone(&generation);
        let running = queue.join("running");
        let pending = queue.join("pending");
        let pending_dir = pending.clone();
        let handler = move |event: notify::Result<notify::Event>| {
            // A marker appearing in pending/ (created, or moved in) is work appearing; claims
            // only take markers out. One leaving running/ is a task ending.
            let Ok(event) = event else { return };
            let (appeared, left): (&[PathBuf], &[PathBuf]) = match event.kind {
                EventKind::Create(_) => (&event.paths, &[]),
                EventKind::Remove(_) => (&[], &event.paths),
                EventKind::Modify(ModifyKind::Name(RenameMode::To)) => (&event.paths, &[]),
                EventKind::Modify(ModifyKind::Name(RenameMode::From)) => (&[], &event.paths),
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
                    let split = event.paths.len().min(1);
                    (&event.paths[split..], &event.paths[..split])
                }
                _ => (&[], &[]),
            };
            let wake = appeared.iter().any(|p| p.starts_with(&pending))
                || left.iter().any(|p| p.starts_with(&running));
            if wake {
                let (count, changed) = &*signal;
                *count.lock().expect("wakeup lock") += 1;
                changed.notify_all();
            }
        };
        let watched = notify::recommended_watcher(handler).and_then(|mut watcher| {
            watcher.watch(&pending_dir, RecursiveMode::Recursive)?;
            if finishes {
                watcher.watch(&queue.join("running"), RecursiveMode::NonRecursive)?;
            }
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

    /// Sleeps until something was indexed after `token` was taken, or `limit` passes.
    pub fn wait(&self, token: u64, limit: Duration) {
        let (count, changed) = &*self.generation;
        let guard = count.lock().expect("wakeup lock");
        let _ = changed
            .wait_timeout_while(guard, limit, |now| *now == token)
            .expect("wakeup lock");
    }
}
