//! `host snooze`: puts a task off until later without spending an attempt.

use jiff::Timestamp;
use queue::{Outcome, QueueStore, TaskStatus};

use crate::cli::Settings;
use crate::commands::{clock, open_store, outln, selfserve};

/// Snoozes task `id` until `until`: a waiting task directly; a running one through its lease
/// (`token`), which ends the attempt without counting it.
pub fn run(
    settings: &Settings,
    id: &str,
    until: Timestamp,
    reason: &str,
    token: Option<&str>,
) -> anyhow::Result<()> {
    let store = open_store(settings)?;
    let running = store.get(id)?.status == TaskStatus::Running;
    let task = match token {
        Some(token) if running => {
            let outcome = Outcome::Snooze {
                until,
                reason: reason.to_string(),
            };
            selfserve::finish_task(settings, id, token, outcome)?
        }
        _ => store.update(id, &|task, now| queue::lifecycle::snooze(task, until, now))?,
    };
    match task.snoozed_until {
        Some(until) => outln!(
            "task {id}: snoozed until {}",
            clock(until, Timestamp::now())
        ),
        None => outln!("task {id}: {}", task.status),
    }
    Ok(())
}
