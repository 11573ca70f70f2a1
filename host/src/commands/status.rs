//! `host status`: counts per state, and what each worker is doing (Show-Status).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use jiff::Timestamp;
use queue::{PauseScope, QueueStore, Store, TaskQuery, TaskStatus, WorkerRecord};
use serde::Serialize;

use crate::cli::Settings;
use crate::commands::{ago, open_store, out, paint, print_json};

/// A worker whose record is older than this is shown as dead.
pub const WORKER_STALE_AFTER: Duration = Duration::from_secs(10);

/// What `status` reports; also the JSON of `status --json`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    /// The queue folder.
    pub queue: String,
    /// Tasks per state, every state present.
    pub counts: BTreeMap<&'static str, usize>,
    /// Pending tasks per type.
    pub pending_by_type: BTreeMap<String, usize>,
    /// What `host pause` stopped: "queue", "type TYPE" or "task ID".
    pub paused: Vec<String>,
    /// Tasks whose change waits for review (the oldest, at most [`ATTENTION_SHOWN`]).
    pub review: Vec<String>,
    /// Running tasks whose agent waits for a person's answer (`host answer`).
    pub input: Vec<Waiting>,
    /// Tasks whose branch's merge conflicted (at most [`ATTENTION_SHOWN`]), with the files.
    pub conflicts: Vec<Conflict>,
    /// The roles out of quota now (a CLI's usage limit), each claiming nothing until its
    /// limit resets.
    pub usage_limits: Vec<queue::UsageLimit>,
    /// Every published worker.
    pub workers: Vec<WorkerView>,
}

/// How many tasks of each kind that needs a person `status` names.
pub const ATTENTION_SHOWN: usize = 20;

/// A running task that waits for a person's answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Waiting {
    /// The task.
    pub id: String,
    /// What it asks.
    pub title: String,
}

/// A task whose branch's merge conflicted.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Conflict {
    /// The task.
    pub id: String,
    /// The branch it was to be merged into.
    pub into: Option<String>,
    /// The files that conflicted.
    pub files: Vec<String>,
}

/// A worker record with its liveness.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerView {
    #[serde(flatten)]
    pub record: WorkerRecord,
    /// False when the worker stopped heartbeating (killed, machine asleep).
    pub alive: bool,
}

impl StatusReport {
    /// Reads the counts the store keeps and the worker records; of the tasks, only those
    /// waiting for a person (review, conflicts) are read, at most [`ATTENTION_SHOWN`] of each.
    pub fn read(settings: &Settings) -> anyhow::Result<StatusReport> {
        StatusReport::of(settings, &open_store(settings)?)
    }

    /// [`StatusReport::read`] from a store already open (a server keeps one).
    pub fn of(settings: &Settings, store: &Store) -> anyhow::Result<StatusReport> {
        let summary = store.summary()?;
        let counts = TaskStatus::ALL
            .iter()
            .map(|s| (s.as_str(), summary.counts.get(s).copied().unwrap_or(0)))
            .collect();
        let pending_by_type = summary.pending_by_type;
        let paused = store
            .paused()?
            .into_iter()
            .map(|scope| match scope {
                PauseScope::Queue => "queue".to_string(),
                PauseScope::Type(t) => format!("type {t}"),
                PauseScope::Task(id) => format!("task {id}"),
            })
            .collect();
        let attention = |query: TaskQuery| {
            store.list(&TaskQuery {
                limit: Some(ATTENTION_SHOWN),
                ..query
            })
        };
        let review = attention(TaskQuery {
            statuses: vec![TaskStatus::Review],
            ..TaskQuery::default()
        })?
        .into_iter()
        .map(|t| t.id)
        .collect();
        let input = crate::commands::inbox::asking(store)?
            .into_iter()
            .filter_map(|t| {
                let title = t.waiting_input()?.question.title.clone();
                Some(Waiting { id: t.id, title })
            })
            .collect();
        let conflicts = attention(TaskQuery {
            in_conflict: true,
            ..TaskQuery::default()
        })?
        .into_iter()
        .filter_map(|t| {
            let state = t.branch_state?;
            Some(Conflict {
                id: t.id,
                into: state.into,
                files: state.files,
            })
        })
        .collect();
        let now = Timestamp::now();
        let usage_limits = crate::usage_limits::in_force(store, now)?;
        let workers = store
            .workers()?
            .into_iter()
            .map(|record| WorkerView {
                alive: !record.is_dead(now, WORKER_STALE_AFTER),
                record,
            })
            .collect();
        Ok(StatusReport {
            queue: settings.queue.to_string(),
            counts,
            pending_by_type,
            paused,
            review,
            input,
            conflicts,
            usage_limits,
            workers,
        })
    }

    /// Tasks that are pending, blocked or running: still to be done by workers. Tasks that
    /// wait for review, and those blocked only behind them, wait for a person instead: with
    /// nothing pending or running, none of them is counted.
    pub fn unfinished(&self) -> usize {
        let moving = self.counts["pending"] + self.counts["running"];
        if moving == 0 && self.counts["review"] > 0 {
            return 0;
        }
        moving + self.counts["blocked"]
    }

    /// The human form.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "Queue {}", self.queue);
        for status in TaskStatus::ALL {
            let state = status.as_str();
            let count = self.counts.get(state).copied().unwrap_or(0);
            let label = format!("{state:<10}");
            let label = if count > 0 {
                paint::status(status, &label)
            } else {
                paint::dim(&label)
            };
            let _ = write!(out, "  {label} {count:>6}");
            if state == "pending" && !self.pending_by_type.is_empty() {
                let by_type: Vec<String> = self
                    .pending_by_type
                    .iter()
                    .map(|(t, n)| format!("{t} {n}"))
                    .collect();
                let _ = write!(out, "   ({})", by_type.join(", "));
            }
            out.push('\n');
        }
        if !self.paused.is_empty() {
            let _ = writeln!(out, "  paused: {}", self.paused.join(", "));
        }
        if !self.review.is_empty() {
            let _ = writeln!(
                out,
                "  {} {}   (host diff ID; host approve ID / host reject ID --reason TEXT)",
                paint::status(TaskStatus::Review, "waiting for review:"),
                self.review.join(", ")
            );
        }
        for waiting in &self.input {
            let _ = writeln!(
                out,
                "  {} task {} asks: {}   (host inbox; host answer {} OPTION)",
                paint::status(TaskStatus::Running, "waiting for input:"),
                waiting.id,
                super::one_line(&waiting.title, 60),
                waiting.id
            );
        }
        for conflict in &self.conflicts {
            let into = conflict
                .into
                .as_deref()
                .map(|b| format!(" into {b}"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  {} task {}{into} conflicts in {}   (merge it by hand, or drop it: host discard {})",
                paint::bad("merge conflict:"),
                conflict.id,
                conflict.files.join(", "),
                conflict.id
            );
        }
        let now = Timestamp::now();
        for limit in &self.usage_limits {
            let _ = writeln!(
                out,
                "  {} usage limit until {}   ({})",
                paint::bad(&format!("{}:", limit.role)),
                super::clock(limit.until, now),
                super::one_line(&limit.reason, 100)
            );
        }
        out.push('\n');
        if self.workers.is_empty() {
            out.push_str("No workers. Start one with `host --role ROLE`.\n");
            return out;
        }
        let header = format!(
            "{:<28} {:<16} {:<12} {:<8} {:<10} {:<6} HEARTBEAT / PROGRESS",
            "WORKER", "HOST", "ROLE", "STATE", "TASK", "DONE"
        );
        let _ = writeln!(out, "{}", paint::heading(&header));
        for w in &self.workers {
            let r = &w.record;
            let state = if w.alive {
                format!("{:<8}", format!("{:?}", r.state).to_lowercase())
            } else {
                paint::bad(&format!("{:<8}", "dead"))
            };
            let heartbeat = paint::dim(&format!("{:<8}", ago(r.heartbeat_at, now)));
            if r.tasks.is_empty() {
                let _ = writeln!(
                    out,
                    "{:<28} {:<16} {:<12} {state} {:<10} {:<6} {heartbeat}",
                    r.name, r.hostname, r.role, "-", "-"
                );
            }
            for t in &r.tasks {
                let _ = writeln!(
                    out,
                    "{:<28} {:<16} {:<12} {state} {:<10} {:<6} {heartbeat}  {}",
                    r.name,
                    r.hostname,
                    r.role,
                    format!("{} {}", t.id, t.task_type),
                    format!("{}%", t.progress),
                    t.message
                );
            }
        }
        out
    }
}

/// Prints the report.
pub fn run(settings: &Settings, json: bool) -> anyhow::Result<()> {
    let report = StatusReport::read(settings)?;
    if json {
        print_json(&report)
    } else {
        out!("{}", report.render());
        Ok(())
    }
}
