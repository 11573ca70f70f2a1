//! `host results`: finished tasks with outcome, worker and duration.

use jiff::{SignedDuration, Timestamp};
use queue::QueueStore;

use crate::cli::{ResultsArgs, Settings};
use crate::commands::outln;
use crate::commands::{human_ms, one_line, open_store, print_json};

/// Lists finished tasks, oldest first, that pass every filter given.
pub fn run(settings: &Settings, args: &ResultsArgs) -> anyhow::Result<()> {
    let store = open_store(settings)?;
    let status = if args.failed {
        Some("failed")
    } else {
        args.status.as_deref()
    };
    let since = args
        .since
        .map(|d| Timestamp::now().saturating_sub(SignedDuration::try_from(d).unwrap_or_default()))
        .transpose()?;
    let tasks: Vec<_> = store
        .tasks()?
        .into_iter()
        .filter(|t| t.status.is_finished())
        .filter(|t| status.is_none_or(|s| t.status.as_str() == s))
        .filter(|t| args.task_type.as_ref().is_none_or(|ty| &t.task_type == ty))
        .filter(|t| {
            args.worker
                .as_ref()
                .is_none_or(|w| t.worker.as_ref() == Some(w))
        })
        .filter(|t| since.is_none_or(|since| t.finished_at.is_some_and(|f| f >= since)))
        .collect();
    if args.json {
        return print_json(&tasks);
    }
    if tasks.is_empty() {
        outln!("No finished tasks.");
        return Ok(());
    }
    outln!(
        "{:<6} {:<10} {:<10} {:<28} {:>8}  OUTCOME",
        "ID",
        "TYPE",
        "STATUS",
        "WORKER",
        "TIME"
    );
    for t in &tasks {
        let outcome = match (&t.error, &t.result) {
            (Some(error), _) => one_line(error, 70),
            (None, Some(result)) => one_line(&result.to_string(), 70),
            (None, None) => String::new(),
        };
        outln!(
            "{:<6} {:<10} {:<10} {:<28} {:>8}  {outcome}",
            t.id,
            t.task_type,
            t.status.as_str(),
            t.worker.as_deref().unwrap_or("-"),
            t.duration_ms.map(human_ms).unwrap_or_else(|| "-".into()),
        );
    }
    Ok(())
}
