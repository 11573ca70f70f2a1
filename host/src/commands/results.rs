//! `host results`: finished tasks with outcome, worker and duration.

use jiff::{SignedDuration, Timestamp};
use queue::{QueueStore, Store, TaskQuery, TaskStatus};

use crate::cli::{ResultsArgs, Settings};
use crate::commands::{
    ago, human_ms, one_line, open_store, outln, paint, print_json, unreadable_records,
};

/// The finished states.
pub const FINISHED: [TaskStatus; 3] = [
    TaskStatus::Completed,
    TaskStatus::Failed,
    TaskStatus::Cancelled,
];

/// Lists finished tasks in the order they finished that pass every filter given; with
/// `--limit N`, the N that finished last.
pub fn run(settings: &Settings, args: &ResultsArgs) -> anyhow::Result<()> {
    let store = open_store(settings)?;
    print(&store, args)?;
    unreadable_records(&store)
}

fn print(store: &Store, args: &ResultsArgs) -> anyhow::Result<()> {
    let status = if args.failed {
        Some("failed")
    } else {
        args.status.as_deref()
    };
    let statuses = match status {
        Some(name) => vec![name.parse().map_err(anyhow::Error::msg)?],
        None => FINISHED.to_vec(),
    };
    let finished_since = args
        .since
        .map(|d| Timestamp::now().saturating_sub(SignedDuration::try_from(d).unwrap_or_default()))
        .transpose()?;
    let query = TaskQuery {
        statuses,
        task_type: args.task_type.clone(),
        worker: args.worker.clone(),
        finished_since,
        newest_first: args.limit.is_some(),
        by_finish: true,
        limit: args.limit,
        ..TaskQuery::default()
    };
    let mut tasks = store.list(&query)?;
    if query.newest_first {
        tasks.reverse();
    }
    if args.json {
        return print_json(&tasks);
    }
    if tasks.is_empty() {
        outln!("No finished tasks.");
        return Ok(());
    }
    let header = format!(
        "{:<6} {:<10} {:<10} {:<28} {:>8} {:>9}  OUTCOME",
        "ID", "TYPE", "STATUS", "WORKER", "TIME", "FINISHED"
    );
    outln!("{}", paint::heading(&header));
    let now = Timestamp::now();
    for t in &tasks {
        let outcome = match (&t.error, &t.result) {
            (Some(error), _) => paint::bad(&one_line(error, 70)),
            (None, Some(result)) => one_line(&readable(result), 70),
            (None, None) => String::new(),
        };
        let finished = t.finished_at.map(|at| ago(at, now)).unwrap_or_default();
        outln!(
            "{:<6} {:<10} {} {:<28} {:>8} {}  {outcome}",
            t.id,
            t.task_type,
            paint::status(t.status, &format!("{:<10}", t.status.as_str())),
            t.worker.as_deref().unwrap_or("-"),
            t.duration_ms.map(human_ms).unwrap_or_else(|| "-".into()),
            paint::dim(&format!("{finished:>9}")),
        );
    }
    Ok(())
}

/// A result as a line for people: an agent's final message where it left one; for an agent
/// that left none, what it ran and changed; else the JSON.
fn readable(result: &serde_json::Value) -> String {
    use serde_json::Value;
    if let Some(message) = result.get("finalMessage").and_then(Value::as_str)
        && !message.trim().is_empty()
    {
        return message.to_string();
    }
    let Some(program) = result.get("program").and_then(Value::as_str) else {
        return result.to_string();
    };
    let mut said = match result.get("exitCode").and_then(Value::as_i64) {
        Some(code) => format!("{program} exited {code}"),
        None => format!("{program} ran"),
    };
    if let Some(stat) = result
        .pointer("/worktree/diffstat")
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
    {
        said.push_str(&format!("; {}", stat.trim()));
    } else if let Some(changes) = result.get("changedFiles").and_then(Value::as_object) {
        let files: usize = changes
            .values()
            .filter_map(Value::as_array)
            .map(Vec::len)
            .sum();
        said.push_str(&format!("; {files} files changed"));
    }
    said
}
