//! `host list`: the unfinished tasks (waiting for review, running, pending, blocked) with what
//! each waits for or who holds it; and `host wait`: block until tasks are finished.

use std::time::{Duration, Instant};

use anyhow::bail;
use jiff::Timestamp;
use queue::lifecycle::{self, PauseSet, Policy};
use queue::{QueueStore, ShownStatus, Store, Task, TaskQuery, TaskState, TaskStatus};
use serde_json::json;

use crate::cli::{ListArgs, Settings};
use crate::commands::{ago, one_line, open_store, outln, paint, print_json, unreadable_records};
use crate::config::Config;

/// The unfinished states, in the order `list` shows them.
const UNFINISHED: [TaskStatus; 4] = [
    TaskStatus::Review,
    TaskStatus::Running,
    TaskStatus::Pending,
    TaskStatus::Blocked,
];

/// Lists the unfinished tasks that pass every filter, in the order they would be claimed
/// (running first, then by aged priority and id).
pub fn run(settings: &Settings, args: &ListArgs) -> anyhow::Result<()> {
    let store = open_store(settings)?;
    print(&store, args)?;
    unreadable_records(&store)
}

fn print(store: &Store, args: &ListArgs) -> anyhow::Result<()> {
    let shown: Option<ShownStatus> = args
        .status
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let mut tasks = store.list(&TaskQuery {
        statuses: shown.map_or(UNFINISHED.to_vec(), |s| vec![s.status()]),
        task_type: args.task_type.clone(),
        worker: args.worker.clone(),
        ..TaskQuery::default()
    })?;
    tasks.retain(|t| shown.is_none_or(|s| s.holds(t)));
    // In the claim order (the priority a task has aged to, `[queue] aging`, then its id),
    // as the queue decides it.
    let policy = Policy {
        aging: Config::load(store)?.aging,
        ..Policy::default()
    };
    let now = Timestamp::now();
    let claim_rank = |t: &Task| {
        let id = t.id.parse::<i64>().unwrap_or(i64::MAX);
        lifecycle::claim_rank(t.priority, t.created_at, id, now, &policy)
    };
    let claimed_at = |t: &Task| claim_rank(t).0;
    let rank = |t: &Task| UNFINISHED.iter().position(|s| *s == t.status);
    tasks.sort_by_key(|t| (rank(t), claim_rank(t)));
    if let Some(limit) = args.limit {
        tasks.truncate(limit);
    }
    let paused = PauseSet::of_scopes(&store.paused()?);
    let rows: Vec<(&Task, String)> = tasks
        .iter()
        .map(|t| (t, waits_for(store, t, &paused, now)))
        .collect();
    if args.json {
        let listed: Vec<_> = rows
            .iter()
            .map(|(task, waits)| {
                let mut value = serde_json::to_value(task).expect("task serializes");
                value["waitsFor"] = json!(waits);
                value["agedPriority"] = json!(claimed_at(task));
                value
            })
            .collect();
        return print_json(&listed);
    }
    if rows.is_empty() {
        outln!("No unfinished tasks.");
        return Ok(());
    }
    let header = format!(
        "{:<6} {:<10} {:<8} {:>5} {:>8}  {:<30} DESCRIPTION",
        "ID", "TYPE", "STATUS", "PRI", "ADDED", "WAITS FOR / HELD BY"
    );
    outln!("{}", paint::heading(&header));
    for (t, waits) in &rows {
        outln!(
            "{:<6} {:<10} {} {:>5} {}  {:<30} {}",
            t.id,
            t.task_type,
            paint::status(t.status, &format!("{:<8}", t.shown_status())),
            match claimed_at(t) {
                aged if aged != t.priority => format!("{}→{aged}", t.priority),
                _ => t.priority.to_string(),
            },
            paint::dim(&format!("{:>8}", ago(t.created_at, now))),
            one_line(waits, 30),
            one_line(t.description.as_deref().unwrap_or(""), 50)
        );
        if let Some(url) = t
            .result
            .as_ref()
            .and_then(|r| r.pointer("/pullRequest/url"))
            .and_then(|u| u.as_str())
        {
            outln!("{:<6} pull request {url}", "");
        }
    }
    Ok(())
}

/// What keeps a task from finishing, in words: a person's review, its holder, the tasks it comes after, a pause,
/// a retry backoff, or nothing (it is next in line for a worker of its type).
fn waits_for(store: &queue::Store, task: &Task, paused: &PauseSet, now: Timestamp) -> String {
    match task.state() {
        TaskState::Review { .. } => format!("a review (host approve {})", task.id),
        TaskState::Running { .. } if task.waiting_input().is_some() => {
            format!("an answer (host answer {})", task.id)
        }
        TaskState::Running { holder, .. } => format!("held by {holder}"),
        TaskState::Blocked { after, after_any } => {
            // Those still open: an `after` one until it completes, an `afterAny` one until it
            // finishes whatever the outcome.
            let open = |ids: &[String], done: fn(TaskStatus) -> bool| -> Vec<String> {
                ids.iter()
                    .filter(|id| store.get(id).is_ok_and(|t| !done(t.status)))
                    .cloned()
                    .collect()
            };
            let after = open(after, |s| s == TaskStatus::Completed);
            let any = open(after_any, TaskStatus::is_finished);
            match (after.is_empty(), any.is_empty()) {
                (_, true) => format!("after {}", after.join(", ")),
                (true, false) => format!("after any outcome of {}", any.join(", ")),
                (false, false) => format!(
                    "after {}; after any outcome of {}",
                    after.join(", "),
                    any.join(", ")
                ),
            }
        }
        TaskState::Pending {
            not_before,
            snoozed,
            attempts,
        } => match (paused.holder(&task.task_type, &task.id), not_before) {
            (Some(scope), _) => format!("paused ({scope})"),
            (None, Some(at)) if at > now && snoozed => {
                format!("snoozed until {}", super::clock(at, now))
            }
            (None, Some(at)) if at > now && attempts == 0 => format!("starts {}", ago(at, now)),
            (None, Some(at)) if at > now => format!("retry {}", ago(at, now)),
            _ => format!("a {} worker", task.task_type),
        },
        TaskState::Completed { .. } | TaskState::Failed { .. } | TaskState::Cancelled { .. } => {
            "nothing (finished)".into()
        }
    }
}

/// True for a task waiting for review, or blocked behind one (`depth` counts the steps back,
/// so that a long chain is not walked for ever).
fn waits_for_review(store: &queue::Store, task: &Task, depth: usize) -> bool {
    match task.status {
        TaskStatus::Review => true,
        TaskStatus::Blocked if depth < 50 => task.prerequisites().iter().any(|id| {
            store
                .get(id)
                .is_ok_and(|t| waits_for_review(store, &t, depth + 1))
        }),
        _ => false,
    }
}

/// `host wait`: blocks until the tasks (`ids`, else the unfinished tasks of `task_type`, else
/// every unfinished task, as of the start) are finished or wait for a person's review. Fails, naming them, when any of them
/// did not complete, or when `timeout` passes first.
pub fn wait(
    settings: &Settings,
    ids: &[String],
    task_type: Option<&str>,
    timeout: Option<Duration>,
) -> anyhow::Result<()> {
    let store = open_store(settings)?;
    if let Some(task_type) = task_type {
        crate::commands::cancel::check_type_known(settings, &store, task_type, "waited for")?;
    }
    let watched: Vec<String> = if ids.is_empty() {
        store
            .list(&TaskQuery {
                statuses: UNFINISHED.to_vec(),
                task_type: task_type.map(String::from),
                ..TaskQuery::default()
            })?
            .into_iter()
            .map(|t| t.id)
            .collect()
    } else {
        ids.to_vec()
    };
    if watched.is_empty() {
        outln!("nothing to wait for: no task is pending, blocked, running or in review");
        return Ok(());
    }
    let started = Instant::now();
    // The questions already told of: a script waiting here would otherwise wait in silence
    // for an answer only a person can give.
    let mut told = std::collections::HashSet::new();
    let tasks = loop {
        let tasks = watched
            .iter()
            .map(|id| store.get(id))
            .collect::<Result<Vec<Task>, _>>()?;
        for task in &tasks {
            if let Some(input) = task.waiting_input()
                && told.insert((task.id.clone(), input.asked_at))
            {
                eprintln!(
                    "task {} waits for your answer: {} ({})",
                    task.id,
                    input.question.title,
                    crate::commands::inbox::answer_hint(&task.id, &input.question)
                );
            }
        }
        // A task waiting for review, and one blocked behind it, waits for a person, not for
        // the workers: waiting for it would never end in a script.
        let open: Vec<&str> = tasks
            .iter()
            .filter(|t| !t.status.is_finished() && !waits_for_review(&store, t, 0))
            .map(|t| t.id.as_str())
            .collect();
        if open.is_empty() {
            break tasks;
        }
        if let Some(limit) = timeout.filter(|t| started.elapsed() >= *t) {
            bail!(
                "timed out after {}: {} task(s) not finished ({})",
                humantime::format_duration(limit),
                open.len(),
                open.join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let not_completed: Vec<String> = tasks
        .iter()
        .filter(|t| t.status != TaskStatus::Completed)
        .map(|t| match t.status {
            TaskStatus::Blocked => format!("{} blocked behind a task waiting for review", t.id),
            status => format!("{} {status}", t.id),
        })
        .collect();
    if !not_completed.is_empty() {
        let hint = if tasks.iter().any(|t| waits_for_review(&store, t, 0)) {
            " (a task in review waits for `host approve ID` or `host reject ID --reason TEXT`)"
        } else {
            ""
        };
        bail!(
            "{} of {} task(s) did not complete: {}{hint}",
            not_completed.len(),
            tasks.len(),
            not_completed.join(", ")
        );
    }
    outln!("{} task(s) completed", tasks.len());
    Ok(())
}
