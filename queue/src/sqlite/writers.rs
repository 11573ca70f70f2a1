//! The queue folder's writers' lock: an OS lock (flock) that writers queue on around each
//! write transaction, handed to the next waiter the moment it is released. SQLite's own busy
//! handler sleeps 1, 2, 5 ... 100 ms between tries, which let one worker of four take nearly
//! every task.

use std::path::Path;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::StoreError;
use crate::folder::io_err;

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
/// [`hold_writes`], so that a process stopping itself holds no lock while stopped.
pub(super) static WRITING: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Waits for this process's writes under way to finish and keeps new ones from starting
/// until the guard is dropped: what a process takes before it stops itself (Ctrl+Z), so that
/// it never holds the queue's writers' lock while stopped, which would freeze every other
/// process of the queue.
pub fn hold_writes() -> std::sync::RwLockWriteGuard<'static, ()> {
    WRITING
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A waiter's hand-over slot: whoever takes the sender out decides. The waiting thread hands the
/// lock over with it; a caller that gave up takes it first, and the thread then releases what
/// it got.
type HandOver = Arc<Mutex<Option<Sender<std::io::Result<()>>>>>;

/// The queue folder's writers' lock, as one connection holds it: the open lock file, and the
/// thread that waits for the lock when another process holds it. The thread is started at the
/// first wait and kept for the next ones (a thread per contended write cost more than the write
/// on a busy queue); it ends with this value.
pub(super) struct WritersLock {
    file: std::fs::File,
    waiter: Mutex<Option<Sender<HandOver>>>,
}

impl WritersLock {
    /// The lock of `file`, the folder's writers' lock file opened by this connection.
    pub(super) fn new(file: std::fs::File) -> WritersLock {
        WritersLock {
            file,
            waiter: Mutex::new(None),
        }
    }

    /// Releases the lock (a no-op when not held).
    pub(super) fn unlock(&self) {
        let _ = self.file.unlock();
    }

    /// Takes the lock for the queue folder `root`: at once when it is free, else by the waiting
    /// thread (the OS wakes the next waiter as soon as it is released), while this one says
    /// after [`LOCK_NOTICE_AFTER`] who holds it and gives up after [`lock_limit`].
    pub(super) fn lock(&self, root: &Path) -> Result<(), StoreError> {
        match self.file.try_lock() {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(err)) => return Err(io_err(root)(err)),
        }
        let (sender, taken) = std::sync::mpsc::channel();
        let hand_over: HandOver = Arc::new(Mutex::new(Some(sender)));
        self.send_to_waiter(Arc::clone(&hand_over), root)?;
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
                    // The one thing the store says on its own: a command that hangs silently on
                    // a stopped worker is worse.
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
                            self.unlock();
                        }
                    }
                    return Err(StoreError::Database {
                        path: root.to_path_buf(),
                        message: format!(
                            "the queue's writers' lock has been held by {} for {}s; nothing was \
                             changed (resume or stop that process, then try again)",
                            crate::os::lock_holder(root)
                                .unwrap_or_else(|| "another process".into()),
                            limit.as_secs()
                        ),
                    });
                }
            }
        }
    }

    /// Gives `hand_over` to the waiting thread, starting it on the first wait.
    fn send_to_waiter(&self, hand_over: HandOver, root: &Path) -> Result<(), StoreError> {
        let mut waiter = self.waiter.lock().expect("waiter lock");
        if let Some(sender) = waiter.as_ref() {
            match sender.send(hand_over) {
                Ok(()) => return Ok(()),
                // The thread is gone (it cannot be, short of a panic): start another.
                Err(std::sync::mpsc::SendError(back)) => {
                    return self.start_waiter(&mut waiter, back, root);
                }
            }
        }
        self.start_waiter(&mut waiter, hand_over, root)
    }

    fn start_waiter(
        &self,
        waiter: &mut Option<Sender<HandOver>>,
        first: HandOver,
        root: &Path,
    ) -> Result<(), StoreError> {
        // The same open file, so the lock the thread takes is this one's.
        let file = self.file.try_clone().map_err(io_err(root))?;
        let (sender, requests) = std::sync::mpsc::channel::<HandOver>();
        sender.send(first).expect("the receiver is here");
        std::thread::Builder::new()
            .name("writers-lock".into())
            .spawn(move || {
                for hand_over in requests {
                    let got = file.lock();
                    match hand_over.lock().expect("hand-over lock").take() {
                        Some(sender) => {
                            let _ = sender.send(got);
                        }
                        None => {
                            let _ = file.unlock();
                        }
                    }
                }
            })
            .map_err(io_err(root))?;
        *waiter = Some(sender);
        Ok(())
    }
}
