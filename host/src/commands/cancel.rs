//! `host cancel ID` and `host retry ID`: move one task by hand.

use queue::{QueueStore, TaskStatus};

use crate::cli::Settings;
use crate::commands::{open_store, outln};

/// Cancels a pending task at once, or asks the worker of a running one to stop it.
pub fn cancel(settings: &Settings, id: &str) -> anyhow::Result<()> {
    let task = open_store(settings)?.cancel(id)?;
    if task.status == TaskStatus::Running {
        let worker = task.worker.as_deref().unwrap_or("its worker");
        outln!("task {id}: cancel requested; {worker} will stop it");
    } else {
        outln!("task {id}: cancelled");
    }
    Ok(())
}

/// Returns a failed or cancelled task to the queue.
pub fn retry(settings: &Settings, id: &str) -> anyhow::Result<()> {
    let task = open_store(settings)?.retry(id)?;
    outln!(
        "task {id}: pending again (attempt {} of {} next)",
        task.attempts + 1,
        task.max_attempts
    );
    Ok(())
}
