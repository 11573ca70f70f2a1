//! Instant pickup: idle worker slots sleep until the store says work may have become claimable
//! or until the poll interval passes. The embedded store rewrites `<queue>/doorbell`, watched
//! through file-system notifications; the PostgreSQL store sends `NOTIFY`, heard on a
//! connection of its own that `LISTEN`s.
//!
//! Polling stays as the fallback: file notifications do not arrive when the watcher cannot be
//! set up (the inotify watch limit is reached), and a listening connection can be lost (it is
//! opened again, with backoff). Then pickup takes up to `--poll`. Retries waiting out a
//! backoff and expired leases are found by polling too, as they become due by time, not by a
//! change in the queue.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use notify::event::ModifyKind;
use notify::{EventKind, RecursiveMode, Watcher};
use queue::{QueueFolder, StoreError, WorkListener, WorkSignal};

/// Wakes idle slots when something may have become claimable.
pub struct Wakeup {
    generation: Arc<(Mutex<u64>, Condvar)>,
    /// The doorbell watched, when it is; `None` when notifications are unavailable or the
    /// store announces work otherwise.
    doorbell: Option<Doorbell>,
}

/// The watch on a queue folder's doorbell, set again when the file was deleted or renamed
/// (a watch follows the file, not its name).
struct Doorbell {
    folder: QueueFolder,
    watcher: Mutex<notify::RecommendedWatcher>,
    lost: Arc<AtomicBool>,
}

impl Wakeup {
    /// Listens for the store's signal. If that is unavailable, says why in the returned text
    /// and polls only.
    pub fn start(signal: WorkSignal) -> (Wakeup, Option<String>) {
        match signal {
            WorkSignal::Doorbell(folder) => Wakeup::watch(folder),
            WorkSignal::Listen(connect) => (Wakeup::listen(connect), None),
        }
    }

    /// Hears `NOTIFY` on a thread of its own that keeps a listening connection open, opening
    /// a new one (with backoff) when it is lost. A reconnection also wakes the slots: what was
    /// announced meanwhile was not heard.
    fn listen(connect: Box<dyn Fn() -> Result<WorkListener, StoreError> + Send + Sync>) -> Wakeup {
        let generation = Arc::new((Mutex::new(0u64), Condvar::new()));
        let signal = Arc::clone(&generation);
        let ring = move || {
            let (count, changed) = &*signal;
            *count.lock().expect("wakeup lock") += 1;
            changed.notify_all();
        };
        std::thread::spawn(move || {
            let mut pause = Duration::from_millis(100);
            loop {
                let Ok(mut listener) = connect() else {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(5));
                    continue;
                };
                pause = Duration::from_millis(100);
                ring();
                loop {
                    match listener.wait(Duration::from_secs(60)) {
                        Ok(true) => ring(),
                        Ok(false) => {}
                        Err(_) => break,
                    }
                }
            }
        });
        Wakeup {
            generation,
            doorbell: None,
        }
    }

    /// Watches the queue's `doorbell` file. If that fails, says why in the returned text and
    /// polls only.
    fn watch(folder: QueueFolder) -> (Wakeup, Option<String>) {
        let generation = Arc::new((Mutex::new(0u64), Condvar::new()));
        let signal = Arc::clone(&generation);
        let lost = Arc::new(AtomicBool::new(false));
        let noticed = Arc::clone(&lost);
        let handler = move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            // The store rewrites the doorbell in place; opening and closing it is not a ring.
            // Deleted or renamed away, it is watched again at the next wait (slots wake now).
            let ring = match event.kind {
                EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_)) => {
                    noticed.store(true, Ordering::SeqCst);
                    true
                }
                EventKind::Modify(_) | EventKind::Create(_) => true,
                _ => false,
            };
            if ring {
                let (count, changed) = &*signal;
                *count.lock().expect("wakeup lock") += 1;
                changed.notify_all();
            }
        };
        let watched = notify::recommended_watcher(handler).and_then(|mut watcher| {
            watcher.watch(&folder.doorbell(), RecursiveMode::NonRecursive)?;
            Ok(watcher)
        });
        match watched {
            Ok(watcher) => (
                Wakeup {
                    generation,
                    doorbell: Some(Doorbell {
                        folder,
                        watcher: Mutex::new(watcher),
                        lost,
                    }),
                },
                None,
            ),
            Err(err) => (
                Wakeup {
                    generation,
                    doorbell: None,
                },
                Some(format!("file-system notifications unavailable ({err})")),
            ),
        }
    }

    /// Makes the doorbell again and watches it, if it was deleted or renamed away; otherwise
    /// pickup would fall back to polling for the worker's life.
    fn rewatch_if_lost(&self) {
        let Some(bell) = &self.doorbell else { return };
        if bell.lost.swap(false, Ordering::SeqCst) {
            let path = bell.folder.doorbell();
            let mut watcher = bell.watcher.lock().expect("watcher lock");
            let _ = watcher.unwatch(&path);
            if watcher.watch(&path, RecursiveMode::NonRecursive).is_err() {
                // Not there again yet (deleted as it was made): the next wait tries again.
                bell.lost.store(true, Ordering::SeqCst);
            }
        }
    }

    /// A token for [`Wakeup::wait`]: take it before looking for work, so that a task indexed
    /// while looking is not missed.
    pub fn token(&self) -> u64 {
        *self.generation.0.lock().expect("wakeup lock")
    }

    /// Sleeps until the doorbell rang after `token` was taken, or `limit` passes.
    pub fn wait(&self, token: u64, limit: Duration) {
        self.rewatch_if_lost();
        let (count, changed) = &*self.generation;
        let guard = count.lock().expect("wakeup lock");
        let _ = changed
            .wait_timeout_while(guard, limit, |now| *now == token)
            .expect("wakeup lock");
    }
}
