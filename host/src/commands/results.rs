//! `host results`: finished tasks with outcome, worker and duration.

use jiff::{SignedDuration, Timestamp};
use queue::{QueueStore, Task};

use crate::cli::{ResultsArgs, Settings};
use crate::commands::outln;
use crate::commands::{human_ms, one_line, open_store, print_json};

/// Which tasks a listing shows (`host results`, the MCP `list_tasks` tool, the dashboard's
/// table): every condition given must hold; an empty one is no condition.
#[derive(Debug, Default)]
pub struct TaskQuery {
    /// Tasks in this state.
    pub status: Option<String>,
    /// Tasks of this type.
    pub task_type: Option<String>,
    /// Tasks last run by this worker.
    pub worker: Option<String>,
    /// Tasks that finished at or after this time.
    pub finished_since: Option<Timestamp>,
    /// Tasks whose JSON contains this text, ignoring case.
    pub text: Option<String>,
}

impl TaskQuery {
    /// Whether the task passes.
    pub fn matches(&self, task: &Task) -> bool {
        let given = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
        given(&self.status).is_none_or(|s| task.status.as_str() == s)
            && given(&self.task_type).is_none_or(|t| task.task_type == t)
            && given(&self.worker).is_none_or(|w| task.worker.as_ref() == Some(&w))
            && self
                .finished_since
                .is_none_or(|since| task.finished_at.is_some_and(|f| f >= since))
            && given(&self.text).is_none_or(|text| {
                serde_json::to_string(task)
                    .unwrap_or_default()
                    .to_lowercase()
                    .contains(&text.to_lowercase())
            })
    }
}

/// Lists finished tasks, oldest first, that pass every filter given.
pub fn run(settings: &Settings, args: &ResultsArgs) -> anyhow::Result<()> {
    let store = open_store(settings)?;
    let query = TaskQuery {
        status: if args.failed {
            Some("failed".into())
        } else {
            args.status.clone()
        },
        task_type: args.task_type.clone(),
        worker: args.worker.clone(),
        finished_since: args
            .since
            .map(|d| {
                Timestamp::now().saturating_sub(SignedDuration::try_from(d).unwrap_or_default())
            })
            .transpose()?,
        text: None,
    };
    let tasks: Vec<_> = store
        .tasks()?
        .into_iter()
        .filter(|t| t.status.is_finished() && query.matches(t))
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
