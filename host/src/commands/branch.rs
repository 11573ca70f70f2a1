//! `host diff`, `host merge` and `host discard`: what becomes of the branch a worktree task
//! leaves (see the `worktrees` crate). The dashboard calls the same functions.

use anyhow::{Context as _, anyhow};
use queue::{BranchOutcome, QueueStore, Store, Task, TaskStatus, lifecycle};
use worktrees::{MergeStyle, Record};

use crate::cli::Settings;
use crate::commands::{open_store, out, outln};
use crate::config::Config;

/// The branch record a task's result holds, or why there is none.
pub(crate) fn record(store: &Store, task: &Task) -> anyhow::Result<Record> {
    let recorded = task.result.as_ref().and_then(|r| r.get("worktree"));
    let Some(recorded) = recorded else {
        let why = if task.status.is_finished() {
            "left no branch: it ran in no worktree (its role's isolation is none, or its target \
             is not in git), or its attempt failed before its agent ran (a worktree's setup \
             failed, and its worktree and branch were removed)"
        } else if task.status == TaskStatus::Review {
            "ran without a worktree, so it has no branch: its change, if any, is in its target \
             (its role's isolation is none, or its target is not in git)"
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
    // A result is what a handler said: only a branch made for this task of this queue (or of
    // this queue before it had an id, named as recorded then) is acted on.
    let queue_id = crate::branch_names::queue_id(store)?;
    if !worktrees::is_branch_of(&record.branch, queue_id.as_deref(), &task.id) {
        anyhow::bail!(
            "task {}: its result names branch {:?}, which is not one made for it",
            task.id,
            record.branch
        );
    }
    Ok(record)
}

/// The branch record of a task whose branch is still there to act on (not merged nor
/// discarded; a conflicted one is), and its repository; else why not, ending with `refusal`
/// ("nothing to open").
pub(crate) fn live_branch(
    store: &Store,
    task: &Task,
    refusal: &str,
) -> anyhow::Result<(Record, worktrees::Repo)> {
    let record = record(store, task)?;
    if let Some(b) = &task.branch_state
        && b.state != BranchOutcome::Conflict
    {
        anyhow::bail!(
            "task {}: its branch {} was {} already; {refusal}",
            task.id,
            record.branch,
            b.state.as_str()
        );
    }
    let repo = worktrees::Repo {
        root: record.repository.clone(),
    };
    Ok((record, repo))
}

/// The change a branch record describes, as a patch.
pub fn patch(id: &str, record: &Record) -> anyhow::Result<String> {
    worktrees::diff(record).with_context(|| format!("task {id}"))
}

/// Merges a completed task's branch into its base branch and records it on the task; answers
/// what was said. Its fan-out siblings are settled: those not finished are cancelled, and
/// their branches discarded. A conflict is recorded on the task (`status` shows it) and
/// announced (`[hooks] conflict`, `[notify]`).
pub fn merge_task(store: &Store, id: &str, style: MergeStyle) -> anyhow::Result<String> {
    let task = store.get(id)?;
    lifecycle::check_mergeable(&task)?;
    for sibling in &task.siblings {
        if let Ok(other) = store.get(sibling)
            && other.branch_state.as_ref().map(|b| b.state) == Some(BranchOutcome::Merged)
        {
            anyhow::bail!(
                "task {id}: task {sibling}, another copy of the same task (--fanout), was merged \
                 already; `host discard {id}` drops this one"
            );
        }
    }
    let record = record(store, &task)?;
    let message =
        worktrees::commit_message(id, task.description.as_deref().unwrap_or(&task.task_type));
    let merged = worktrees::merge(&record, style, &message);
    if let Err(worktrees::Error::Conflict { files, .. }) = &merged {
        let flagged = store.update(id, &|t, now| {
            lifecycle::note_branch(
                t,
                BranchOutcome::Conflict,
                record.base_branch.as_deref(),
                files,
                now,
            )
        });
        // A broken host.toml must not hide the conflict: nobody is told.
        if let Ok(config) = Config::load(store) {
            let flagged = flagged.as_ref().unwrap_or(&task).clone();
            let event = crate::attention::Event::Conflict(flagged);
            for line in crate::attention::Attention::new(&config).announce(&event) {
                eprintln!("warning: {line}");
            }
        }
        if let Err(err) = flagged {
            eprintln!("warning: task {id}: the conflict was not recorded on the task: {err}");
        }
    }
    let into = merged.with_context(|| format!("task {id}"))?;
    let mut said = format!(
        "merged {} into {into} and deleted the branch{}",
        record.branch,
        earlier_attempts(&record, id)
    );
    // The merge is done: failing to record it must not say otherwise.
    if let Err(err) = store.update(id, &|t, now| {
        lifecycle::note_branch(t, BranchOutcome::Merged, Some(&into), &[], now)
    }) {
        eprintln!("warning: task {id}: the merge was not recorded on the task: {err}");
    }
    let mut settled = Vec::new();
    for sibling in &task.siblings {
        match settle_sibling(store, sibling) {
            Ok(Some(what)) => settled.push(what),
            Ok(None) => {}
            Err(err) => eprintln!("warning: task {sibling}, a copy of task {id}: {err:#}"),
        }
    }
    if !settled.is_empty() {
        said.push_str(&format!(
            "; the other copies (--fanout): {}",
            settled.join(", ")
        ));
    }
    Ok(said)
}

/// Settles a fan-out copy of a merged task: cancelled if it has not finished (a running one is
/// asked to stop, and keeps what branch it makes), its branch discarded if it has one left.
/// Says what was done, or `None` when nothing was left to do.
fn settle_sibling(store: &Store, id: &str) -> anyhow::Result<Option<String>> {
    let mut task = match store.get(id) {
        // Removed since (`host rm`, a purge): nothing is left of it.
        Err(queue::StoreError::NotFound(_)) => return Ok(None),
        found => found?,
    };
    let mut done = Vec::new();
    if !task.status.is_finished() {
        task = store.cancel(id)?;
        done.push(if task.status == TaskStatus::Running {
            "asked to stop"
        } else {
            "cancelled"
        });
    }
    if lifecycle::check_discardable(&task).is_ok()
        && let Ok(record) = record(store, &task)
    {
        drop_branch(store, &task, &record)?;
        done.push("branch discarded");
    }
    Ok((!done.is_empty()).then(|| format!("task {id} {}", done.join(", "))))
}

/// Deletes a finished task's branch (and its earlier attempts') and records that on it; says
/// what was deleted.
fn drop_branch(store: &Store, task: &Task, record: &Record) -> anyhow::Result<String> {
    worktrees::discard(record).with_context(|| format!("task {}", task.id))?;
    store.update(&task.id, &|t, now| {
        lifecycle::note_branch(t, BranchOutcome::Discarded, None, &[], now)
    })?;
    Ok(format!(
        "{}{}",
        record.branch,
        earlier_attempts(record, &task.id)
    ))
}

/// Deletes the branches earlier attempts at a task left, now that its change was merged or
/// discarded; says which, for the end of a sentence. A failure is only a warning: the task's
/// own branch was dealt with.
fn earlier_attempts(record: &Record, id: &str) -> String {
    match worktrees::discard_earlier_attempts(record) {
        Ok(earlier) if earlier.is_empty() => String::new(),
        Ok(earlier) => format!(" (and the earlier attempts' {})", earlier.join(", ")),
        Err(err) => {
            eprintln!("warning: task {id}: earlier attempts' branches were kept: {err}");
            String::new()
        }
    }
}

/// Deletes the branch of a finished task and records it; answers what was said.
pub fn discard_task(store: &Store, id: &str) -> anyhow::Result<String> {
    let task = store.get(id)?;
    lifecycle::check_discardable(&task)?;
    let branch = drop_branch(store, &task, &record(store, &task)?)?;
    Ok(format!("deleted {branch}"))
}

/// Approves a task waiting for review: it completes and the tasks after it may run; answers
/// what was said.
pub fn approve_task(store: &Store, id: &str) -> anyhow::Result<String> {
    let task = store.update(id, &lifecycle::approve)?;
    let next = match record(store, &task) {
        Ok(_) => format!("; `host merge {id}` brings its change in"),
        Err(_) => String::new(),
    };
    Ok(format!("approved task {id}: completed{next}"))
}

/// Rejects a task waiting for review: it runs again, told `reason`; answers what was said.
pub fn reject_task(store: &Store, id: &str, reason: &str) -> anyhow::Result<String> {
    let task = store.update(id, &|t, now| lifecycle::reject(t, reason, now))?;
    Ok(format!(
        "rejected task {id}: pending again for attempt {} of {}, told why",
        task.attempts + 1,
        task.max_attempts
    ))
}

/// `host diff`: the change of a task's branch; once merged, the change as its recorded
/// commits made it (the branch itself is deleted by then).
pub fn diff(settings: &Settings, id: &str) -> anyhow::Result<()> {
    let store = open_store(settings)?;
    out!("{}", task_patch(&store, id)?.1);
    Ok(())
}

/// The branch record of task `id` and its change as a patch: the branch's, or once merged, the
/// change as its recorded commits made it (the branch is deleted by then). What `host diff`
/// prints and the dashboard shows.
pub fn task_patch(store: &Store, id: &str) -> anyhow::Result<(Record, String)> {
    let task = store.get(id)?;
    let record = record(store, &task)?;
    let patch = match task.branch_state.as_ref().map(|b| b.state) {
        Some(BranchOutcome::Merged) => {
            let into = task
                .branch_state
                .as_ref()
                .and_then(|b| b.into.clone())
                .or_else(|| record.base_branch.clone())
                .unwrap_or_else(|| "its base branch".into());
            // The branch is gone; its last commit is what was merged (a merge keeps it, a
            // squash or rebase leaves it until git collects it).
            let head = match record.commits.last() {
                Some(head) => head.sha.clone(),
                None => record.base.clone(),
            };
            worktrees::diff_to(&record, &head).map_err(|_| {
                anyhow!(
                    "task {id} was merged into {into}, and the commits it recorded are no longer \
                     in the repository: `git log {into}` shows the change"
                )
            })?
        }
        _ => patch(id, &record)?,
    };
    Ok((record, patch))
}

/// `host merge`.
pub fn merge(settings: &Settings, id: &str, squash: bool, rebase: bool) -> anyhow::Result<()> {
    let style = match (squash, rebase) {
        (true, _) => MergeStyle::Squash,
        (_, true) => MergeStyle::Rebase,
        _ => MergeStyle::Merge,
    };
    outln!("{}", merge_task(&open_store(settings)?, id, style)?);
    Ok(())
}

/// `host discard`: every id is checked first, so that one that cannot be discarded discards
/// nothing.
pub fn discard(settings: &Settings, ids: &[String]) -> anyhow::Result<()> {
    let store = open_store(settings)?;
    crate::commands::cancel::check_all(&store, ids, "discarded", lifecycle::check_discardable)?;
    for id in ids {
        outln!("{}", discard_task(&store, id)?);
    }
    Ok(())
}

/// `host approve`: every id is checked first, so that one not waiting for review approves
/// nothing.
pub fn approve(settings: &Settings, ids: &[String]) -> anyhow::Result<()> {
    let store = open_store(settings)?;
    crate::commands::cancel::check_all(&store, ids, "approved", lifecycle::check_in_review)?;
    for id in ids {
        outln!("{}", approve_task(&store, id)?);
    }
    Ok(())
}

/// `host reject`.
pub fn reject(settings: &Settings, id: &str, reason: &str) -> anyhow::Result<()> {
    outln!("{}", reject_task(&open_store(settings)?, id, reason)?);
    Ok(())
}
