//! `GET /api/events`: a `change` event with the status JSON whenever the status changes.
//!
//! The status is read once for every open stream, not once per stream: one task reads it, only
//! while a stream is open, and hands it to the streams through a watch channel. A stream sends
//! a value that differs from what it sent last, and a comment now and then to keep its
//! connection alive. (Each stream reading the status itself, four times a second, once took
//! 38 % of a core for 200 idle pages.)
//!
//! The task reads when told that something changed, and otherwise seldom: the store's work
//! signal (the doorbell file on SQLite, `NOTIFY` on PostgreSQL) rings when a task is added,
//! retried, resumed or unblocked; this server says when one of its requests changed the queue;
//! a stream that opens asks for a fresh read. Reads follow one another at least [`MIN_GAP`]
//! apart, so that a burst of signals is one read. What rings nothing (claims, heartbeats,
//! progress, a completion that unblocks nothing, another process's cancel or pause) shows
//! within [`FALLBACK`]. (Reading four times a second whatever happened opened a new PostgreSQL
//! connection every 250 ms.)

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::ServerStore;
use crate::cli::Settings;
use crate::wakeup::Wakeup;

/// The least time between two reads: signals closer together than this make one read.
const MIN_GAP: Duration = Duration::from_millis(200);

/// How often the status is read while a stream is open and nothing signals a change: what
/// changes without a signal shows on every open page within about this long.
const FALLBACK: Duration = Duration::from_secs(2);

/// How long the thread that hears the store's signal waits at a time (it waits again after).
const SIGNAL_WAIT: Duration = Duration::from_secs(60);

/// The status as the event streams see it: the JSON of the last read, or empty before the
/// first read since the streams were last all closed.
pub struct StatusFeed {
    latest: watch::Sender<Arc<str>>,
    /// Wakes the reading task: a stream opened, or the queue may have changed.
    wake: Notify,
}

impl StatusFeed {
    /// The feed of the queue of `settings`, read from `store`, with its reading task (which
    /// sleeps until a stream opens) and a thread that hears the store's signal. Call it inside
    /// the runtime.
    pub fn start(settings: Settings, store: ServerStore) -> Arc<StatusFeed> {
        let (latest, _) = watch::channel(Arc::from(""));
        let feed = Arc::new(StatusFeed {
            latest,
            wake: Notify::new(),
        });
        hear_signal(Arc::clone(&feed), store.clone());
        tokio::spawn(read_while_watched(Arc::clone(&feed), settings, store));
        feed
    }

    /// Says that the queue may have changed: open streams hear of it within [`MIN_GAP`].
    pub fn changed(&self) {
        // One stored permit at most: signals while a read is under way make one more read.
        self.wake.notify_one();
    }

    /// An event stream: the status now (once read), then each change.
    pub fn events(&self) -> Sse<impl Stream<Item = Result<Event, Infallible>> + use<>> {
        let receiver = self.latest.subscribe();
        // The first stream wakes the reading task; a later one gets the last status at once,
        // and a fresh one soon after, should it differ.
        self.changed();
        let stream = stream::unfold((receiver, None), |(mut receiver, sent)| async move {
            loop {
                let now: Arc<str> = Arc::clone(&receiver.borrow_and_update());
                if !now.is_empty() && sent.as_deref() != Some(&*now) {
                    let event = Event::default().event("change").data(&*now);
                    return Some((Ok(event), (receiver, Some(now))));
                }
                // Ends the stream only if the feed is gone, which it never is while serving.
                receiver.changed().await.ok()?;
            }
        });
        Sse::new(stream).keep_alive(KeepAlive::default())
    }
}

/// Hears the store's work signal on a thread of its own (waiting for it blocks; on PostgreSQL
/// it holds one listening connection) and tells the feed. Without it, the feed still reads
/// every [`FALLBACK`].
fn hear_signal(feed: Arc<StatusFeed>, store: ServerStore) {
    let spawned = std::thread::Builder::new()
        .name("status-signal".into())
        .spawn(move || {
            let (wakeup, unavailable) = match store.work_signal() {
                Ok(signal) => Wakeup::start(signal),
                Err(err) => return unheard(&format!("{err:#}")),
            };
            if let Some(why) = unavailable {
                unheard(&why);
            }
            let mut heard = wakeup.token();
            loop {
                wakeup.wait(heard, SIGNAL_WAIT);
                let now = wakeup.token();
                if now != heard {
                    heard = now;
                    feed.changed();
                }
            }
        });
    if let Err(err) = spawned {
        unheard(&format!("cannot start a thread: {err}"));
    }
}

/// Says, in one line, why the store's signal is not heard.
fn unheard(why: &str) {
    let why = why.replace('\n', " ");
    eprintln!(
        "warning: the dashboard shows changes within {} s only: {why}",
        FALLBACK.as_secs()
    );
}

/// Reads the status while a stream is open, when told of a change and every [`FALLBACK`],
/// telling the streams when it changed. A failed read is said once on stderr, in one line,
/// and the streams keep the last status meanwhile.
async fn read_while_watched(feed: Arc<StatusFeed>, settings: Settings, store: ServerStore) {
    let settings = Arc::new(settings);
    let mut failing: Option<String> = None;
    loop {
        while feed.latest.receiver_count() == 0 {
            // What was read is stale by the time a stream opens again: it waits for a fresh
            // read rather than being handed an old status.
            feed.latest.send_replace(Arc::from(""));
            feed.wake.notified().await;
        }
        let began = Instant::now();
        let (reading, from) = (Arc::clone(&settings), store.clone());
        // Reading the store is file or database work: off the server's threads.
        let read = tokio::task::spawn_blocking(move || {
            let report =
                from.with(|s| crate::commands::status::StatusReport::of(&reading, s))??;
            anyhow::Ok(serde_json::to_string(&report)?)
        })
        .await
        .map_err(anyhow::Error::from)
        .and_then(|read| read);
        match read {
            Ok(now) => {
                failing = None;
                feed.latest.send_if_modified(|latest| {
                    let changed = **latest != *now;
                    if changed {
                        *latest = Arc::from(now);
                    }
                    changed
                });
            }
            Err(err) => {
                let why = format!("{err:#}").replace('\n', " ");
                if failing.as_ref() != Some(&why) {
                    eprintln!("warning: the dashboard cannot read the status: {why}");
                    failing = Some(why);
                }
            }
        }
        tokio::select! {
            () = feed.wake.notified() => {}
            () = tokio::time::sleep(FALLBACK) => {}
        }
        tokio::time::sleep_until(began + MIN_GAP).await;
    }
}
