//! `GET /api/events`: a `change` event with the status JSON whenever the status changes.
//!
//! The status is read once for every open stream, not once per stream: one task reads it at
//! most every [`POLL`], only while a stream is open, and hands it to the streams through a
//! watch channel. A stream sends a value that differs from what it sent last, and a comment
//! now and then to keep its connection alive. (Each stream reading the status itself, four
//! times a second, once took 38 % of a core for 200 idle pages.)

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream};
use tokio::sync::{Notify, watch};

use crate::cli::Settings;
use crate::commands::status::StatusReport;

/// How often the status is read while a stream is open: a change shows on every open page
/// within about this long.
const POLL: Duration = Duration::from_millis(250);

/// The status as the event streams see it: the JSON of the last read, or empty before the
/// first read since the streams were last all closed.
pub struct StatusFeed {
    latest: watch::Sender<Arc<str>>,
    /// Wakes the reading task when a stream opens.
    opened: Notify,
}

impl StatusFeed {
    /// The feed of the queue of `settings`, with its reading task (which sleeps until a stream
    /// opens). Call it inside the runtime.
    pub fn start(settings: Settings) -> Arc<StatusFeed> {
        let (latest, _) = watch::channel(Arc::from(""));
        let feed = Arc::new(StatusFeed {
            latest,
            opened: Notify::new(),
        });
        tokio::spawn(read_while_watched(Arc::clone(&feed), settings));
        feed
    }

    /// An event stream: the status now (once read), then each change.
    pub fn events(&self) -> Sse<impl Stream<Item = Result<Event, Infallible>> + use<>> {
        let receiver = self.latest.subscribe();
        self.opened.notify_one();
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

/// Reads the status every [`POLL`] while a stream is open, telling the streams when it changed.
async fn read_while_watched(feed: Arc<StatusFeed>, settings: Settings) {
    loop {
        while feed.latest.receiver_count() == 0 {
            // What was read is stale by the time a stream opens again: it waits for a fresh
            // read rather than being handed an old status.
            feed.latest.send_replace(Arc::from(""));
            feed.opened.notified().await;
        }
        let settings = settings.clone();
        // Opening the store and reading it is file or database work: off the server's threads.
        let now = tokio::task::spawn_blocking(move || {
            StatusReport::read(&settings)
                .ok()
                .and_then(|report| serde_json::to_string(&report).ok())
                .unwrap_or_default()
        })
        .await
        .unwrap_or_default();
        feed.latest.send_if_modified(|latest| {
            let changed = !now.is_empty() && **latest != *now;
            if changed {
                *latest = Arc::from(now);
            }
            changed
        });
        tokio::time::sleep(POLL).await;
    }
}
