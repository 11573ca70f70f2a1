//! `host show ID`: one task, whole.

use jiff::Timestamp;
use plugin_api::{PlanStep, checklist};
use queue::{BranchOutcome, QueueStore, TaskState, TaskStatus, rfc3339_millis};

use crate::cli::Settings;
use crate::commands::{ago, human_ms, open_store, outln, paint, print_json};

/// Prints every field of the task.
pub fn run(settings: &Settings, id: &str, json: bool) -> anyhow::Result<()> {
    let store = open_store(settings)?;
    let task = store.get(id)?;
    if json {
        return print_json(&task);
    }
    let field = |name: &str, value: Option<String>| -> std::io::Result<()> {
        if let Some(value) = value {
            outln!("{name:<12} {value}");
        }
        Ok(())
    };
    field("id", Some(task.id.clone()))?;
    field("type", Some(task.task_type.clone()))?;
    field(
        "status",
        Some(paint::status(task.status, task.shown_status())),
    )?;
    field("priority", Some(task.priority.to_string()))?;
    field(
        "target",
        task.target.as_ref().map(|t| t.display().to_string()),
    )?;
    field("description", task.description.clone())?;
    field(
        "after",
        (!task.after.is_empty()).then(|| task.after.join(", ")),
    )?;
    field(
        "after any",
        (!task.after_any.is_empty()).then(|| task.after_any.join(", ")),
    )?;
    field(
        "attempts",
        Some(format!("{} of {}", task.attempts, task.max_attempts)),
    )?;
    field(
        "timeout",
        task.timeout_secs
            .map(|s| humantime::format_duration(std::time::Duration::from_secs(s)).to_string()),
    )?;
    field("worker", task.worker.clone())?;
    // A relative age to read, the exact time (to the millisecond, as in --json) to compare.
    let now = Timestamp::now();
    let when = |at: Timestamp| {
        format!(
            "{} {}",
            ago(at, now),
            paint::dim(&format!("({})", rfc3339_millis::format(&at)))
        )
    };
    field("created", Some(when(task.created_at)))?;
    field("started", task.started_at.map(when))?;
    field("finished", task.finished_at.map(when))?;
    field("duration", task.duration_ms.map(human_ms))?;
    field("error", task.error.as_deref().map(paint::bad))?;
    if let Some(input) = task.waiting_input() {
        let asked = &input.question;
        let tool = asked
            .tool
            .as_deref()
            .map(|t| format!(" ({t})"))
            .unwrap_or_default();
        field("asks", Some(format!("{}{tool}", asked.title)))?;
        field("asked", Some(when(input.asked_at)))?;
        field("detail", asked.detail.clone())?;
        for option in &asked.options {
            field("option", Some(format!("{:<16} {}", option.id, option.name)))?;
        }
        for f in &asked.fields {
            let required = if f.required { ", required" } else { "" };
            let title = f.title.as_deref().unwrap_or(&f.name);
            field(
                "field",
                Some(format!("{:<16} {title} ({}{required})", f.name, f.kind)),
            )?;
        }
        field(
            "answer with",
            Some(crate::commands::inbox::answer_hint(&task.id, asked)),
        )?;
        field(
            "unanswered",
            input
                .expires_at
                .map(|at| format!("the agent is refused {}", ago(at, now))),
        )?;
    }
    field(
        "cancel",
        task.cancel_requested
            .then(|| "requested; the handler was told".to_string()),
    )?;
    // A task not yet tried waits for its start time (`add --in/--at`), a tried one for a retry.
    let label = if task.attempts == 0 {
        "starts"
    } else {
        "retry at"
    };
    field(label, task.retry_at.map(when))?;
    field(
        "fanned out",
        (!task.siblings.is_empty()).then(|| format!("with {}", task.siblings.join(", "))),
    )?;
    field(
        "branch",
        task.branch_state.as_ref().map(|b| {
            let into = b
                .into
                .as_deref()
                .map(|i| format!(" into {i}"))
                .unwrap_or_default();
            let files = if b.files.is_empty() {
                String::new()
            } else {
                format!(" in {}", b.files.join(", "))
            };
            let text = format!("{}{into}{files} {}", b.state.as_str(), ago(b.at, now));
            match b.state {
                BranchOutcome::Conflict => paint::bad(&text),
                _ => text,
            }
        }),
    )?;
    let result = task.result.as_ref();
    field(
        "worktree",
        result
            .and_then(|r| r.pointer("/worktree/folder"))
            .and_then(|f| f.as_str())
            .map(|f| {
                // Kept after the attempt; merging or discarding the branch removes it.
                let now = if std::path::Path::new(f).is_dir() {
                    "kept"
                } else {
                    "removed since"
                };
                format!("{f} ({now})")
            }),
    )?;
    field(
        "pull request",
        result
            .and_then(|r| r.pointer("/pullRequest/url"))
            .and_then(|u| u.as_str())
            .map(String::from),
    )?;
    if task.status == TaskStatus::Review {
        outln!(
            "{:<12} host diff {id}; host approve {id} / host reject {id} --reason TEXT",
            "waits for"
        );
    }
    if !task.reviews.is_empty() {
        outln!("reviews");
        for review in &task.reviews {
            let verdict = format!("{:?}", review.verdict).to_lowercase();
            let line = format!(
                "  #{:<3} {verdict:<10} {:<8}  {}",
                review.attempt,
                ago(review.at, now),
                review
                    .reason
                    .as_deref()
                    .unwrap_or_default()
                    .replace('\n', "\n                          ")
            );
            outln!("{}", line.trim_end());
        }
    }
    // An agent driven through ACP records the plan it followed, each step with its state;
    // while it runs, its worker publishes the plan as it stands.
    let live = match task.state() {
        TaskState::Running { holder, .. } => store
            .workers()?
            .into_iter()
            .filter(|w| w.name == holder)
            .flat_map(|w| w.tasks)
            .find(|t| t.id == task.id)
            .map(|t| t.plan)
            .filter(|plan| !plan.is_empty()),
        _ => None,
    };
    let kept = result
        .and_then(|r| r.get("plan"))
        .and_then(|p| serde_json::from_value::<Vec<PlanStep>>(p.clone()).ok());
    if let Some(plan) = &live {
        outln!("plan (as the agent follows it now)");
        outln!("{}", checklist(plan));
    } else if let Some(plan) = kept {
        outln!("plan");
        outln!("{}", checklist(&plan));
    }
    if !task.history.is_empty() {
        outln!("history");
        for run in &task.history {
            let status = format!("{:?}", run.status).to_lowercase();
            let error = run.error.as_deref().unwrap_or_default();
            let line = format!(
                "  #{:<3} {:<10} {:<24} {:<8}  {error}",
                run.attempt,
                status,
                run.worker,
                ago(run.started_at, now)
            );
            outln!("{}", line.trim_end());
        }
    }
    if !task.payload.is_null() {
        outln!("payload\n{}", serde_json::to_string_pretty(&task.payload)?);
    }
    if let Some(result) = &task.result {
        outln!("result\n{}", serde_json::to_string_pretty(result)?);
    }
    Ok(())
}
