//! `host cancel`, `host retry`, `host pause` and `host resume`: steer work by hand.

use queue::{PauseScope, QueueStore, TaskStatus};

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

/// Returns a failed or cancelled task to the queue (blocked, if it comes after unfinished work).
pub fn retry(settings: &Settings, id: &str) -> anyhow::Result<()> {
    let task = open_store(settings)?.retry(id)?;
    outln!(
        "task {id}: {} again (attempt {} of {} next)",
        task.status,
        task.attempts + 1,
        task.max_attempts
    );
    Ok(())
}

/// Stops claims in a scope.
pub fn pause(settings: &Settings, scope: &PauseScope) -> anyhow::Result<()> {
    open_store(settings)?.pause(scope)?;
    outln!("paused {scope}: nothing there is claimed until `host resume`");
    Ok(())
}

/// Lifts a pause.
pub fn resume(settings: &Settings, scope: &PauseScope) -> anyhow::Result<()> {
    let store = open_store(settings)?;
    if !store.paused()?.contains(scope) {
        anyhow::bail!("{scope} is not paused");
    }
    store.resume(scope)?;
    outln!("resumed {scope}");
    Ok(())
}
