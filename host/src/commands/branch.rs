//! `host diff`, `host merge` and `host discard`: what becomes of the branch a worktree task
//! leaves (see the `worktrees` crate). The dashboard calls the same functions.

use anyhow::{Context as _, anyhow};
use queue::{QueueStore, Task, TaskStatus};
use worktrees::{MergeStyle, Record};

use crate::cli::Settings;
use crate::commands::{open_store, out, outln};
use crate::config::Config;

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
    let record: Record = serde_json::from_value(recorded.clone()).with_context(|| {
        format!(
            "task {}: its result's worktree record is unreadable",
            task.id
        )
    })?;
    // A result is what a handler said: only a branch made for this task is acted on.
    if !worktrees::is_branch_of(&record.branch, &task.id) {
        anyhow::bail!(
            "task {}: its result names branch {:?}, which is not one made for it",
            task.id,
            record.branch
        );
    }
    Ok(record)
}

/// The branch record of task `id`.
pub fn recorded(settings: &Settings, id: &str) -> anyhow::Result<Record> {
    record(&open_store(settings)?.get(id)?)
}

/// The change a branch record describes, as a patch.
pub fn patch(id: &str, record: &Record) -> anyhow::Result<String> {
    worktrees::diff(record).with_context(|| format!("task {id}"))
}

/// Merges a completed task's branch into its base branch; answers what was said. A conflict
/// runs the `[hooks] conflict` command.
pub fn merge_task(settings: &Settings, id: &str, style: MergeStyle) -> anyhow::Result<String> {
    let store = open_store(settings)?;
    let task = store.get(id)?;
    if task.status != TaskStatus::Completed {
        anyhow::bail!(
            "task {id} is {}: only a completed task's branch is merged (`host diff {id}` shows it, \
             `host discard {id}` drops it)",
            task.status
        );
    }
    let record = record(&task)?;
    let message =
        worktrees::commit_message(id, task.description.as_deref().unwrap_or(&task.task_type));
    let merged = worktrees::merge(&record, style, &message);
    if let Err(worktrees::Error::Conflict { .. }) = &merged
        // A broken host.toml must not hide the conflict: the hook is skipped.
        && let Some(hook) = Config::load(&store).ok().and_then(|c| c.hooks.conflict)
        && let Err(why) = crate::hooks::run(&hook, "conflict", &task)
    {
        eprintln!("warning: task {id}: {why}");
    }
    let into = merged.with_context(|| format!("task {id}"))?;
    Ok(format!(
        "merged {} into {into} and deleted the branch",
        record.branch
    ))
}

/// Deletes the task's branch; answers what was said.
pub fn discard_task(settings: &Settings, id: &str) -> anyhow::Result<String> {
    let record = recorded(settings, id)?;
    worktrees::discard(&record).with_context(|| format!("task {id}"))?;
    Ok(format!("deleted {}", record.branch))
}

/// `host diff`.
pub fn diff(settings: &Settings, id: &str) -> anyhow::Result<()> {
    out!("{}", patch(id, &recorded(settings, id)?)?);
    Ok(())
}

/// `host merge`.
pub fn merge(settings: &Settings, id: &str, squash: bool, rebase: bool) -> anyhow::Result<()> {
    let style = match (squash, rebase) {
        (true, _) => MergeStyle::Squash,
        (_, true) => MergeStyle::Rebase,
        _ => MergeStyle::Merge,
    };
    outln!("{}", merge_task(settings, id, style)?);
    Ok(())
}

/// `host discard`.
pub fn discard(settings: &Settings, id: &str) -> anyhow::Result<()> {
    outln!("{}", discard_task(settings, id)?);
    Ok(())
}
