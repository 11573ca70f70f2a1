//! `host branches [--prune [--dry-run]]`: the branches this queue made for its tasks, in the
//! repositories it knows of, with what became of each task; and the removal of those nothing
//! needs any more. `host open ID`: a worktree again on a finished task's branch.
//!
//! A branch is this queue's when its name is in the queue's namespace (`PREFIX/QUEUE-ID/task-ID`,
//! or that with `-attempt-N`, under any prefix): the queue's id is its own, so another queue's
//! branches, and the `host/task-ID` branches every queue without an id shared, are never
//! listed or touched.
//!
//! `--prune` deletes a branch when
//! - its task no longer exists (`host rm`, `host purge`): nothing can merge or discard it;
//! - its task's change was merged or discarded (`branchState`), and the branch is a leftover;
//! - its task has finished and its result does not name it (neither its branch nor an earlier
//!   attempt's): `host discard` cannot reach it (an attempt whose setup failed after an
//!   earlier attempt left a branch).
//!
//! It keeps every other: the branch of a task that is pending, blocked, running, waiting for
//! input or for review (an attempt may be making it, or will rename it), and the branch a
//! finished task records and that was neither merged nor discarded (its change waits for `host
//! merge`, `host discard` or `host retry`). A pruned branch's worktree folder, if one is left
//! (a kept worktree, or one a killed attempt left), goes with it, unless tracked files in it
//! have uncommitted changes: then the branch stays and the line says why.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use jiff::Timestamp;
use queue::{BranchOutcome, QueueStore, Store, StoreError, Task, TaskQuery, TaskStatus};
use serde_json::json;
use worktrees::{QueueBranch, Record, Repo};

use crate::cli::{BranchesArgs, Settings};
use crate::commands::{ago, open_store, outln, paint, print_json};

/// One branch of this queue, with its task and the verdict of the prune rule.
struct Row {
    repo: Repo,
    branch: QueueBranch,
    /// The task's state, or `None` when the task is gone.
    task: Option<Task>,
    /// Its worktree folder, when one exists.
    folder: Option<PathBuf>,
    /// Whether `--prune` deletes it, and why it does or does not.
    prune: bool,
    why: String,
}

/// `host branches`.
pub fn run(settings: &Settings, args: &BranchesArgs) -> anyhow::Result<()> {
    let store = open_store(settings)?;
    let repos = repositories(&store, &args.repo)?;
    let Some(queue_id) = crate::branch_names::queue_id(&store)? else {
        // A queue without an id never made a branch of its own (its tasks used the shared
        // `host/task-ID`, which no queue can claim as its own).
        return finish(args, Vec::new());
    };
    let mut rows = Vec::new();
    for repo in repos {
        for branch in worktrees::queue_branches(&repo, &queue_id)
            .with_context(|| format!("repository {}", repo.root.display()))?
        {
            let task = match store.get(&branch.task) {
                Ok(task) => Some(task),
                Err(StoreError::NotFound(_)) => None,
                Err(err) => return Err(err.into()),
            };
            let (prune, why) = judge(&store, &branch, task.as_ref());
            let folder =
                Some(worktrees::worktree_folder(&repo, &branch.branch)).filter(|f| f.exists());
            rows.push(Row {
                repo: repo.clone(),
                branch,
                task,
                folder,
                prune,
                why,
            });
        }
    }
    finish(args, rows)
}

/// Lists the rows, or prunes them.
fn finish(args: &BranchesArgs, rows: Vec<Row>) -> anyhow::Result<()> {
    if args.prune {
        return prune(&rows, args.dry_run, args.json);
    }
    if args.json {
        let listed: Vec<_> = rows.iter().map(as_json).collect();
        return print_json(&listed);
    }
    if rows.is_empty() {
        outln!("No branches of this queue.");
        return Ok(());
    }
    let now = Timestamp::now();
    let mut last_repo: Option<&Path> = None;
    for row in &rows {
        if last_repo != Some(row.repo.root.as_path()) {
            outln!("{}", paint::heading(&row.repo.root.display().to_string()));
            last_repo = Some(&row.repo.root);
        }
        let age = Timestamp::from_second(row.branch.committed_at)
            .map(|at| ago(at, now))
            .unwrap_or_default();
        let folder = row
            .folder
            .as_ref()
            .map(|f| format!("  worktree {}", f.display()))
            .unwrap_or_default();
        let verdict = if row.prune {
            paint::bad(&format!("prunable: {}", row.why))
        } else {
            paint::dim(&row.why)
        };
        outln!(
            "  {:<40} task {:<5} {:<22} {:>8}  {verdict}{folder}",
            row.branch.branch,
            row.branch.task,
            state(row),
            age
        );
    }
    Ok(())
}

/// The task's state in words: `completed`, `completed, merged`, `task gone`.
fn state(row: &Row) -> String {
    match &row.task {
        None => "task gone".to_string(),
        Some(task) => match &task.branch_state {
            Some(b) => format!("{}, {}", task.status.as_str(), b.state.as_str()),
            None => task.status.as_str().to_string(),
        },
    }
}

fn as_json(row: &Row) -> serde_json::Value {
    json!({
        "repository": row.repo.root,
        "branch": row.branch.branch,
        "task": row.branch.task,
        "attempt": row.branch.attempt,
        "taskState": row.task.as_ref().map(|t| t.status.as_str()),
        "branchState": row.task.as_ref().and_then(|t| t.branch_state.as_ref()).map(|b| b.state.as_str()),
        "lastCommitAt": Timestamp::from_second(row.branch.committed_at)
            .ok()
            .map(|at| queue::rfc3339_millis::format(&at)),
        "worktree": row.folder,
        "prunable": row.prune,
        "why": row.why,
    })
}

/// Deletes the prunable rows' branches (and their worktree folders); says what it deleted, or
/// with `dry_run` what it would delete.
fn prune(rows: &[Row], dry_run: bool, json: bool) -> anyhow::Result<()> {
    let mut done = Vec::new();
    let mut failed = 0;
    for row in rows.iter().filter(|r| r.prune) {
        let name = &row.branch.branch;
        let outcome = if dry_run {
            Ok(row.folder.clone())
        } else {
            worktrees::delete_branch(&row.repo, name)
        };
        match outcome {
            Ok(folder) => {
                if !json {
                    let verb = if dry_run { "would delete" } else { "deleted" };
                    let folder = folder
                        .as_ref()
                        .map(|f| format!(" and its worktree {}", f.display()))
                        .unwrap_or_default();
                    outln!(
                        "{verb} {name} in {}{folder} (task {}: {})",
                        row.repo.root.display(),
                        row.branch.task,
                        row.why
                    );
                }
                let mut value = as_json(row);
                value["worktree"] = json!(folder);
                done.push(value);
            }
            Err(err) => {
                failed += 1;
                eprintln!("error: {name} (task {}) was kept: {err}", row.branch.task);
            }
        }
    }
    if json {
        print_json(&done)?;
    } else if done.is_empty() && failed == 0 {
        outln!("Nothing to prune.");
    }
    if failed > 0 {
        bail!("{failed} branch(es) could not be deleted (said above)");
    }
    Ok(())
}

/// The prune rule (see the module's documentation): whether the branch goes, and why or why
/// not.
fn judge(store: &Store, branch: &QueueBranch, task: Option<&Task>) -> (bool, String) {
    let Some(task) = task else {
        return (true, "its task is gone".into());
    };
    if !task.status.is_finished() {
        return (false, format!("kept: the task {}", task.status.phrase()));
    }
    match task.branch_state.as_ref().map(|b| b.state) {
        Some(BranchOutcome::Merged) => return (true, "its change was merged".into()),
        Some(BranchOutcome::Discarded) => return (true, "its change was discarded".into()),
        _ => {}
    }
    let recorded = match super::branch::record(store, task) {
        Ok(record) => Some(record),
        // A task that ran in no worktree names no branch; any other error (the store busy, a
        // record unreadable) decides nothing.
        Err(_)
            if task
                .result
                .as_ref()
                .is_none_or(|r| r.get("worktree").is_none()) =>
        {
            None
        }
        Err(err) => return (false, format!("kept: {err:#}")),
    };
    let named = recorded.as_ref().is_some_and(|r: &Record| {
        r.branch == branch.branch || r.earlier_attempts.contains(&branch.branch)
    });
    if !named {
        return (true, "the task's result does not name it".into());
    }
    let why = match (task.status, &task.branch_state) {
        (_, Some(_)) => format!(
            "kept: its merge conflicted (host merge {0} or host discard {0})",
            task.id
        ),
        (TaskStatus::Completed, None) => {
            format!(
                "kept: not merged (host merge {0} or host discard {0})",
                task.id
            )
        }
        _ => format!("kept: host retry {0} or host discard {0}", task.id),
    };
    (false, why)
}

/// The repositories to look in: those given, the one holding the current folder, and those
/// the queue's tasks recorded branches in.
fn repositories(store: &Store, given: &[PathBuf]) -> anyhow::Result<Vec<Repo>> {
    let mut roots: Vec<PathBuf> = Vec::new();
    for dir in given {
        let root = toplevel(dir)
            .ok_or_else(|| anyhow!("--repo {}: not in a git repository", dir.display()))?;
        roots.push(root);
    }
    if let Some(here) = std::env::current_dir().ok().and_then(|d| toplevel(&d)) {
        roots.push(here);
    }
    let mut after_id = None;
    loop {
        let page = store.list(&TaskQuery {
            text: Some("\"repository\"".into()),
            after_id,
            limit: Some(500),
            ..TaskQuery::default()
        })?;
        let Some(last) = page.last() else { break };
        after_id = last.id.parse().ok();
        for task in &page {
            let recorded = task
                .result
                .as_ref()
                .and_then(|r| r.get("worktree"))
                .and_then(|w| w.get("repository"))
                .and_then(|r| r.as_str());
            if let Some(root) = recorded.map(PathBuf::from).filter(|r| r.is_dir()) {
                roots.push(root);
            }
        }
        if after_id.is_none() || page.len() < 500 {
            break;
        }
    }
    let mut seen: Vec<PathBuf> = Vec::new();
    for root in roots {
        let root = dunce::canonicalize(&root).unwrap_or(root);
        if !seen.contains(&root) {
            seen.push(root);
        }
    }
    Ok(seen.into_iter().map(|root| Repo { root }).collect())
}

/// The top folder of the git work tree `dir` is in.
fn toplevel(dir: &Path) -> Option<PathBuf> {
    let probe = Repo {
        root: dir.to_path_buf(),
    };
    let top = probe.git(&["rev-parse", "--show-toplevel"]).ok()?;
    Some(PathBuf::from(top.trim()))
}

/// `host open ID`: makes a worktree again on the branch a finished (or in-review) task left,
/// and prints its folder.
pub fn open(settings: &Settings, id: &str) -> anyhow::Result<()> {
    let store = open_store(settings)?;
    let task = store.get(id)?;
    if !task.status.is_finished() && task.status != TaskStatus::Review {
        bail!(
            "task {id} {}: its next attempt remakes its branch; open it once the task has \
             finished",
            task.status.phrase()
        );
    }
    let (record, repo) = super::branch::live_branch(&store, &task, "nothing to open")?;
    let folder = worktrees::open(&repo, &record.branch).with_context(|| format!("task {id}"))?;
    // The folder of the task's target inside the worktree, as the agent saw it.
    let target = task
        .target
        .as_deref()
        .and_then(|t| t.strip_prefix(&record.repository).ok())
        .filter(|rel| !rel.as_os_str().is_empty())
        .map_or_else(|| folder.clone(), |rel| folder.join(rel));
    outln!("{}", target.display());
    Ok(())
}
