//! The status report read from a store already open.
//!
//! This is [`StatusReport::read`] without its `open_store`: a server that keeps its store (see
//! [`super::ServerStore`]) reads the status from it, where `StatusReport::read` opens a store
//! for every read, which on PostgreSQL is a new connection each time. It must say what
//! `StatusReport::read` says, field for field (the dashboard's API promises the JSON of `host
//! status --json`, and a test compares them); it belongs beside it in `commands/status.rs`, as
//! the body that `read` calls with the store it opened.

use jiff::Timestamp;
use queue::{PauseScope, QueueStore, Store, TaskQuery, TaskStatus};

use crate::cli::Settings;
use crate::commands::status::{
    ATTENTION_SHOWN, Conflict, StatusReport, WORKER_STALE_AFTER, WorkerView,
};

/// The status of the queue of `settings`, read from `store`, its open store. It blocks (file
/// or database work): call it off the async runtime's threads.
pub fn report(settings: &Settings, store: &Store) -> anyhow::Result<StatusReport> {
    let summary = store.summary()?;
    let counts = TaskStatus::ALL
        .iter()
        .map(|s| (s.as_str(), summary.counts.get(s).copied().unwrap_or(0)))
        .collect();
    let paused = store
        .paused()?
        .into_iter()
        .map(|scope| match scope {
            PauseScope::Queue => "queue".to_string(),
            PauseScope::Type(t) => format!("type {t}"),
            PauseScope::Task(id) => format!("task {id}"),
        })
        .collect();
    let attention = |query: TaskQuery| {
        store.list(&TaskQuery {
            limit: Some(ATTENTION_SHOWN),
            ..query
        })
    };
    let review = attention(TaskQuery {
        statuses: vec![TaskStatus::Review],
        ..TaskQuery::default()
    })?
    .into_iter()
    .map(|t| t.id)
    .collect();
    let conflicts = attention(TaskQuery {
        in_conflict: true,
        ..TaskQuery::default()
    })?
    .into_iter()
    .filter_map(|t| {
        let state = t.branch_state?;
        Some(Conflict {
            id: t.id,
            into: state.into,
            files: state.files,
        })
    })
    .collect();
    let now = Timestamp::now();
    let workers = store
        .workers()?
        .into_iter()
        .map(|record| WorkerView {
            alive: !record.is_dead(now, WORKER_STALE_AFTER),
            record,
        })
        .collect();
    Ok(StatusReport {
        queue: settings.queue.to_string(),
        counts,
        pending_by_type: summary.pending_by_type,
        paused,
        review,
        conflicts,
        workers,
    })
}
