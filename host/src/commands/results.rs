//! `host results`: finished tasks with outcome, worker and duration.

use queue::QueueStore;

use crate::cli::Settings;
use crate::commands::outln;
use crate::commands::{human_ms, one_line, open_store, print_json};

/// Lists finished tasks, oldest first; `failed` keeps only failures.
pub fn run(settings: &Settings, json: bool, failed: bool) -> anyhow::Result<()> {
    let store = open_store(settings)?;
    let tasks: Vec<_> = store
        .tasks()?
        .into_iter()
        .filter(|t| t.status.is_finished())
        .filter(|t| !failed || t.status == queue::TaskStatus::Failed)
        .collect();
    if json {
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
