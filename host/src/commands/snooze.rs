//! `host snooze`: puts a task off until later without spending an attempt.

use jiff::Timestamp;
use queue::{Outcome, QueueStore, Task, TaskStatus};

use crate::cli::Settings;
use crate::commands::{clock, open_store, outln, selfserve};

/// Snoozes task `id` until `until`: a waiting task directly; a running one through its lease
/// (`token`), which ends the attempt without counting it. Answers the task as it now is.
pub fn snooze_task(
    settings: &Settings,
    id: &str,
    until: Timestamp,
    reason: &str,
    token: Option<&str>,
) -> anyhow::Result<Task> {
    let store = open_store(settings)?;
    let running = store.get(id)?.status == TaskStatus::Running;
    Ok(match token {
        Some(token) if running => {
            let outcome = Outcome::Snooze {
                until,
                reason: reason.to_string(),
            };
            selfserve::finish_task(settings, id, token, outcome)?
        }
        _ => store.update(id, &|task, now| queue::lifecycle::snooze(task, until, now))?,
    })
}

/// `host snooze`: [`snooze_task`], saying until when.
pub fn run(
    settings: &Settings,
    id: &str,
    until: Timestamp,
    reason: &str,
    token: Option<&str>,
) -> anyhow::Result<()> {
    let task = snooze_task(settings, id, until, reason, token)?;
    match task.snoozed_until {
        Some(until) => outln!(
            "task {id}: snoozed until {}",
            clock(until, Timestamp::now())
        ),
        None => outln!("task {id}: {}", task.status),
    }
    Ok(())
}
