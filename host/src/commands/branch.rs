//! `host diff`, `host merge` and `host discard`: what becomes of the branch a worktree task
//! leaves (see the `worktrees` crate).

use anyhow::{Context as _, anyhow};
use queue::{QueueStore, Task, TaskStatus};
use worktrees::{MergeStyle, Record};

use crate::cli::Settings;
use crate::commands::{open_store, out, outln};

/// The branch record a task's result holds, or why there is none.
fn record(task: &Task) -> anyhow::Result<Record> {
    let recorded = task.result.as_ref().and_then(|r| r.get("worktree"));
    let Some(recorded) = recorded else {
        let why = if task.status.is_finished() {
            "ran in no worktree (its role's isolation is none, or its target is not in git)"
        } else {
            "has not finished an attempt yet"
        };
        return Err(anyhow!("task {} {why}", task.id));
    };
    serde_json::from_value(recorded.clone()).with_context(|| {
        format!(
            "task {}: its result's worktree record is unreadable",
            task.id
        )
    })
}

/// Prints the task's change as a patch.
pub fn diff(settings: &Settings, id: &str) -> anyhow::Result<()> {
    let task = open_store(settings)?.get(id)?;
    let patch = worktrees::diff(&record(&task)?).with_context(|| format!("task {id}"))?;
    out!("{patch}");
    Ok(())
}

/// Merges the task's branch into its base branch.
pub fn merge(settings: &Settings, id: &str, squash: bool, rebase: bool) -> anyhow::Result<()> {
    let task = open_store(settings)?.get(id)?;
    if task.status != TaskStatus::Completed {
        anyhow::bail!(
            "task {id} is {}: only a completed task's branch is merged (`host diff {id}` shows it, \
             `host discard {id}` drops it)",
            task.status
        );
    }
    let record = record(&task)?;
    let style = match (squash, rebase) {
        (true, _) => MergeStyle::Squash,
        (_, true) => MergeStyle::Rebase,
        _ => MergeStyle::Merge,
    };
    let message = format!(
        "host task {id}: {}",
        task.description.as_deref().unwrap_or(&task.task_type)
    );
    let into = worktrees::merge(&record, style, &message).with_context(|| format!("task {id}"))?;
    outln!(
        "merged {} into {into} and deleted the branch",
        record.branch
    );
    Ok(())
}

/// Deletes the task's branch.
pub fn discard(settings: &Settings, id: &str) -> anyhow::Result<()> {
    let task = open_store(settings)?.get(id)?;
    let record = record(&task)?;
    worktrees::discard(&record).with_context(|| format!("task {id}"))?;
    outln!("deleted {}", record.branch);
    Ok(())
}
