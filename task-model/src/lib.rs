//! The task record, the one vocabulary shared by every part of the system.
//!
//! A [`Task`] is what the orchestrator adds, what the queue store keeps (one JSON file per task),
//! what a worker claims and what a role handler receives. Its JSON form is camelCase, field for
//! field the record the PowerShell design wrote, so existing tooling can read it.
//!
//! Plugins receive a task as JSON text across the library boundary, never as a Rust layout, so
//! adding a field here (with a serde default) does not break plugins built earlier.

use std::fmt;
use std::path::PathBuf;

/// A point in time (jiff's `Timestamp`), as tasks record them.
pub use jiff::Timestamp;

/// Times in JSON as RFC 3339 in UTC to the millisecond (`2026-11-26T05:37:36.123Z`), the
/// precision the stores keep; any RFC 3339 time is read. For `#[serde(with = "...")]`.
pub mod rfc3339_millis {
    use jiff::Timestamp;
    use serde::{Deserialize, Deserializer, Serializer};

    /// The text of a time.
    pub fn format(time: &Timestamp) -> String {
        time.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
    }

    /// Writes a time.
    pub fn serialize<S: Serializer>(time: &Timestamp, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format(time))
    }

    /// Reads a time.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Timestamp, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }

    /// The same for an optional time.
    pub mod option {
        use jiff::Timestamp;
        use serde::{Deserialize, Deserializer, Serializer};

        /// Writes a time, or null.
        pub fn serialize<S: Serializer>(
            time: &Option<Timestamp>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match time {
                Some(time) => serializer.serialize_str(&super::format(time)),
                None => serializer.serialize_none(),
            }
        }

        /// Reads a time, or null.
        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<Timestamp>, D::Error> {
            Option::<String>::deserialize(deserializer)?
                .map(|text| text.parse().map_err(serde::de::Error::custom))
                .transpose()
        }
    }
}
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where a task is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// Waiting to be claimed.
    Pending,
    /// Waiting for the tasks it comes after: those of `after` to complete, those of
    /// `afterAny` to finish.
    Blocked,
    /// Claimed by a worker whose lease has not expired.
    Running,
    /// Its handler succeeded and its role asks for review: it waits for `host approve` or
    /// `host reject`, and the tasks after it wait with it.
    Review,
    /// The handler succeeded.
    Completed,
    /// The handler failed (or the lease expired) and no attempt is left.
    Failed,
    /// Cancelled by the orchestrator before it finished.
    Cancelled,
}

impl TaskStatus {
    /// Every status, in the order `status` lists them.
    pub const ALL: [TaskStatus; 7] = [
        TaskStatus::Pending,
        TaskStatus::Blocked,
        TaskStatus::Running,
        TaskStatus::Review,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
    ];

    /// True for the states a task never leaves on its own.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled
        )
    }

    /// Where a task in this state is, after its name in a sentence: "is pending", "waits for
    /// review".
    pub fn phrase(self) -> &'static str {
        match self {
            TaskStatus::Pending => "is pending",
            TaskStatus::Blocked => "is blocked",
            TaskStatus::Running => "is running",
            TaskStatus::Review => "waits for review",
            TaskStatus::Completed => "is completed",
            TaskStatus::Failed => "is failed",
            TaskStatus::Cancelled => "is cancelled",
        }
    }

    /// The lowercase name used in JSON and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Blocked => "blocked",
            TaskStatus::Running => "running",
            TaskStatus::Review => "review",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
        }
    }
}

impl std::str::FromStr for TaskStatus {
    type Err = String;

    /// Reads the lowercase name, as in JSON and on the command line.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        TaskStatus::ALL
            .into_iter()
            .find(|s| s.as_str() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = TaskStatus::ALL.iter().map(|s| s.as_str()).collect();
                format!("unknown status {name:?} (one of {})", names.join(", "))
            })
    }
}

/// What lists filter by (`host list --status`, the dashboard, MCP's `list_tasks`): a status, or `input`, the
/// running tasks that wait for a person's answer ([`Task::shown_status`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShownStatus {
    /// Tasks in this status.
    Status(TaskStatus),
    /// Running tasks whose agent waits for an answer.
    Input,
}

impl ShownStatus {
    /// The status the store is asked for.
    pub fn status(self) -> TaskStatus {
        match self {
            ShownStatus::Status(status) => status,
            ShownStatus::Input => TaskStatus::Running,
        }
    }

    /// Whether `task`, read in [`ShownStatus::status`], is shown under this name.
    pub fn holds(self, task: &Task) -> bool {
        match self {
            ShownStatus::Status(status) => task.status == status,
            ShownStatus::Input => task.waiting_input().is_some(),
        }
    }
}

impl std::str::FromStr for ShownStatus {
    type Err = String;

    /// Reads a status's name or `input`.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        if name == "input" {
            return Ok(ShownStatus::Input);
        }
        name.parse().map(ShownStatus::Status).map_err(|_| {
            let names: Vec<&str> = TaskStatus::ALL.iter().map(|s| s.as_str()).collect();
            format!(
                "unknown status {name:?} (one of {}, input)",
                names.join(", ")
            )
        })
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one attempt of a task ended, or that it is still running.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttemptStatus {
    /// Its worker still holds the lease.
    Running,
    /// The handler succeeded.
    Completed,
    /// The handler failed, crashed or ran out of time.
    Failed,
    /// The worker stopped renewing its lease (it was killed, or its machine slept).
    Expired,
    /// The worker shut down and gave the task back; the attempt was not counted.
    Released,
    /// The handler (or a self-serve client) put the task off until a later time, its account
    /// out of quota or the work not due yet; the attempt was not counted.
    Snoozed,
    /// The task was cancelled while this attempt ran.
    Cancelled,
}

/// One claim of a task, as kept in its history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    /// The attempt number (the task's `attempts` when it was claimed).
    pub attempt: u32,
    /// The worker that claimed it.
    pub worker: String,
    /// When it was claimed.
    #[serde(with = "rfc3339_millis")]
    pub started_at: Timestamp,
    /// When it ended; absent while running.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rfc3339_millis::option"
    )]
    pub finished_at: Option<Timestamp>,
    /// How it ended.
    pub status: AttemptStatus,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Who ended it: its holder, or for an expired lease the worker that found it expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_by: Option<String>,
    /// The session the handler ran it in (an agent CLI's conversation), as its result named
    /// it (`sessionId`): a later attempt may resume it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

/// The priority a task gets when none is given. Lower numbers are claimed first.
pub const DEFAULT_PRIORITY: u32 = 5;

/// How many times a task is tried when none is given (a lost lease counts as a try).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// One unit of work, as stored, claimed and handled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    /// Unique, assigned by the store when the task is added; increasing with age.
    pub id: String,
    /// The task type; a role claims the types it declares.
    #[serde(rename = "type")]
    pub task_type: String,
    /// The file or folder the task is about, absolute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<PathBuf>,
    /// Free text for people and for agent prompts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Lower is claimed first; equal priorities are claimed oldest first.
    pub priority: u32,
    /// Handler-specific input, any JSON.
    #[serde(default)]
    pub payload: Value,
    /// Ids of tasks this one comes after: it runs once they have all completed, and is
    /// cancelled when one of them fails or is cancelled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    /// Ids of tasks this one runs after whatever their outcome (`host add --after-any`): it
    /// waits until they have all finished (completed, failed or cancelled), and is never
    /// cancelled by them. A fix after a test, given the test's error.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after_any: Vec<String>,
    /// Where the task is in its life.
    pub status: TaskStatus,
    /// How many times the task has been claimed.
    #[serde(default)]
    pub attempts: u32,
    /// How many claims the task may have in all.
    pub max_attempts: u32,
    /// How long one attempt may run, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// The worker that holds or last held the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// When the task was added.
    #[serde(with = "rfc3339_millis")]
    pub created_at: Timestamp,
    /// When the current or last attempt started.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rfc3339_millis::option"
    )]
    pub started_at: Option<Timestamp>,
    /// When the task reached a finished state.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rfc3339_millis::option"
    )]
    pub finished_at: Option<Timestamp>,
    /// Run time of the last attempt, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Whether the last attempt succeeded; absent until one finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success: Option<bool>,
    /// What the handler returned (on failure too, when it said more than a message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Why the last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Until when the running attempt's worker holds the task; renewed by its heartbeat.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rfc3339_millis::option"
    )]
    pub lease_expires_at: Option<Timestamp>,
    /// A pending task that failed and waits out its backoff is not claimed before this time.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rfc3339_millis::option"
    )]
    pub retry_at: Option<Timestamp>,
    /// A pending task put off by `host snooze` or by its handler (a usage limit): not claimed
    /// before this time, its attempts not spent. Cleared by the next claim.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rfc3339_millis::option"
    )]
    pub snoozed_until: Option<Timestamp>,
    /// Set by `host cancel` on a running task; its handler sees it through its context.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel_requested: bool,
    /// The task whose failure or cancellation cancelled this one (it came after it); retrying
    /// that task brings this one back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_by: Option<String>,
    /// How long the task waited between becoming claimable and its latest claim, in
    /// milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
    /// The priority the task was claimed at, when waiting long had raised it (priority aging);
    /// `priority` keeps the original.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aged_priority: Option<u32>,
    /// Every claim of the task, oldest first, with how each ended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Attempt>,
    /// Every verdict on the task's change (`host approve`, `host reject`), oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reviews: Vec<Review>,
    /// What became of the task's branch after it finished (merged, discarded, or a merge that
    /// conflicted); absent while nobody acted on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch_state: Option<BranchState>,
    /// The other tasks added with this one by `host add --fanout`: the same work given to
    /// several agents, of which one change is merged and the others discarded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub siblings: Vec<String>,
    /// What the running attempt's handler asked a person and waits for (an agent's permission
    /// request or question): while it is set the task stays `running`, its worker's slot and
    /// lease held, and listings show it as `input`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Input>,
}

/// One step of the plan a handler follows (an ACP agent's plan entry), as its result and its
/// worker's record keep it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanStep {
    /// What the step does.
    pub content: String,
    /// `pending`, `in_progress` or `completed`.
    pub status: String,
    /// `high`, `medium` or `low`, where the handler says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
}

/// A plan as a checklist, one step a line, indented: `[x]` done, `[>]` under way, `[ ]` to do.
pub fn checklist(plan: &[PlanStep]) -> String {
    plan.iter()
        .map(|step| {
            let mark = match step.status.as_str() {
                "completed" => "[x]",
                "in_progress" => "[>]",
                _ => "[ ]",
            };
            format!("  {mark} {}", step.content)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// What a running task asks a person: an agent's permission request (one of its options) or
/// question (a form's fields), as a handler puts it ([`Input`] keeps it on the task).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Question {
    /// What is asked, in one line ("Run cargo test").
    pub title: String,
    /// The kind of tool that asks, in ACP's words (`read`, `edit`, `execute`, ...), if a tool
    /// asks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// More about it: a summary of the tool's input, or the question's text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The answers offered, one of which is chosen.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<InputOption>,
    /// Values asked for beside the option (a form): each answered by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<InputField>,
}

/// A question a running task put to a person, kept on the task until its worker takes the
/// answer: what `host inbox` lists and `host answer` answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Input {
    /// The attempt that asked: an answer is for it alone.
    pub attempt: u32,
    /// When it asked.
    #[serde(with = "rfc3339_millis")]
    pub asked_at: Timestamp,
    /// When the handler stops waiting and answers on its own (the agent's reject option).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rfc3339_millis::option"
    )]
    pub expires_at: Option<Timestamp>,
    /// What is asked.
    #[serde(flatten)]
    pub question: Question,
    /// The answer, once given and until the worker takes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<InputAnswer>,
}

/// One answer a question offers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InputOption {
    /// What `host answer ID OPTION` names (the agent's own option id, e.g. `allow_once`).
    pub id: String,
    /// Its label.
    pub name: String,
    /// What it does, when it says: for a permission, ACP's `allow_once`, `allow_always`,
    /// `reject_once` or `reject_always`; for a form, `accept` (fills it: its fields go with
    /// it) or `decline`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// One value a question asks for (a form's field).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InputField {
    /// Its name, as `host answer --field NAME=VALUE` gives it.
    pub name: String,
    /// Its label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// `string`, `number`, `integer` or `boolean`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The values it may take, when it is a choice.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<String>,
    /// Whether an answer must give it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub required: bool,
}

/// A person's answer to an [`Input`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InputAnswer {
    /// The option chosen.
    pub option: String,
    /// The values given for the question's fields, by name.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub fields: serde_json::Map<String, Value>,
    /// Who answered (`host answer` gives the user, the dashboard and MCP say so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// When.
    #[serde(with = "rfc3339_millis")]
    pub at: Timestamp,
}

impl Input {
    /// Checks that `option` and `fields` answer this question: the option one of those
    /// offered, every field given known and of its type, and, when the option accepts a form
    /// (kind `accept`), every required field given. The error says what is wrong in one line,
    /// naming what would do.
    pub fn check_answer(
        &self,
        option: &str,
        fields: &serde_json::Map<String, Value>,
    ) -> Result<(), String> {
        if !self.question.options.iter().any(|o| o.id == option) {
            let ids: Vec<&str> = self
                .question
                .options
                .iter()
                .map(|o| o.id.as_str())
                .collect();
            return Err(format!(
                "{option:?} is not one of the options offered: {}",
                ids.join(", ")
            ));
        }
        for (name, value) in fields {
            let Some(field) = self.question.fields.iter().find(|f| &f.name == name) else {
                let names: Vec<&str> = self
                    .question
                    .fields
                    .iter()
                    .map(|f| f.name.as_str())
                    .collect();
                return Err(if names.is_empty() {
                    format!("field {name:?}: the question asks for no fields")
                } else {
                    format!(
                        "field {name:?}: not asked for (asked: {})",
                        names.join(", ")
                    )
                });
            };
            let fits = match field.kind.as_str() {
                "boolean" => value.is_boolean(),
                "integer" => value.is_i64() || value.is_u64(),
                "number" => value.is_number(),
                _ => value.as_str().is_some_and(|text| {
                    field.choices.is_empty() || field.choices.iter().any(|c| c == text)
                }),
            };
            if !fits {
                let wanted = match field.kind.as_str() {
                    "boolean" => "true or false",
                    "integer" => "a whole number",
                    "number" => "a number",
                    _ => "text",
                };
                return Err(if field.choices.is_empty() {
                    format!("field {name:?} takes {wanted}, not {value}")
                } else {
                    format!(
                        "field {name:?} takes one of {}, not {value}",
                        field.choices.join(", ")
                    )
                });
            }
        }
        // A form is filled when its accepting option is chosen; a refusal needs no values.
        let accepting = self
            .question
            .options
            .iter()
            .find(|o| o.id == option)
            .is_some_and(|o| o.kind.as_deref() == Some("accept"));
        if accepting
            && let Some(missing) = self
                .question
                .fields
                .iter()
                .find(|f| f.required && !fields.contains_key(&f.name))
        {
            return Err(format!("field {:?} is required", missing.name));
        }
        Ok(())
    }
}

/// A person's verdict on a task's change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Review {
    /// The attempt whose change was judged.
    pub attempt: u32,
    /// Approved or rejected.
    pub verdict: Verdict,
    /// Why, for a rejection: the next attempt's prompt includes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When.
    #[serde(with = "rfc3339_millis")]
    pub at: Timestamp,
}

/// Approved or rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The change may be merged; the task completed.
    Approved,
    /// The change is not good enough; the task runs again.
    Rejected,
}

/// What became of a finished task's branch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BranchState {
    /// Merged, discarded or in conflict.
    pub state: BranchOutcome,
    /// The branch merged into (merged, conflict).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub into: Option<String>,
    /// The files that conflicted (conflict).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
    /// When.
    #[serde(with = "rfc3339_millis")]
    pub at: Timestamp,
}

/// How a finished task's branch ended up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BranchOutcome {
    /// Brought into its base branch; the branch was deleted.
    Merged,
    /// Deleted unmerged.
    Discarded,
    /// A merge was tried and conflicted; nothing changed. A flag `status` and the dashboard
    /// show until the branch is merged or discarded.
    Conflict,
}

impl BranchOutcome {
    /// The lowercase name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            BranchOutcome::Merged => "merged",
            BranchOutcome::Discarded => "discarded",
            BranchOutcome::Conflict => "conflict",
        }
    }
}

/// A task's state with what that state has, read from its record: a running task its holder
/// and lease, a finished one its outcome. The record keeps the flat fields that the JSON users,
/// the API and plugins see; code that decides by a task's state matches on this, and so never
/// reads a field that its state does not set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TaskState<'t> {
    /// Waiting to be claimed, not before `not_before` (a retry's backoff, a delayed start).
    Pending {
        /// Not claimed before this time.
        not_before: Option<Timestamp>,
        /// Whether that time is a snooze's (`host snooze`, a usage limit) rather than a
        /// backoff or a delayed start.
        snoozed: bool,
        /// Attempts made so far (0: it never ran).
        attempts: u32,
    },
    /// Waiting for the tasks it comes after.
    Blocked {
        /// The ids of those that must complete.
        after: &'t [String],
        /// The ids of those that must finish, whatever their outcome.
        after_any: &'t [String],
    },
    /// Held by a worker for one attempt.
    Running {
        /// The worker that holds it.
        holder: &'t str,
        /// The attempt it holds.
        attempt: u32,
        /// When its lease ends unless renewed.
        lease_ends: Option<Timestamp>,
        /// Whether `host cancel` asked it to stop.
        cancel_requested: bool,
    },
    /// Its handler succeeded; a person's verdict decides.
    Review {
        /// What the handler returned.
        result: Option<&'t Value>,
    },
    /// Finished well.
    Completed {
        /// What the handler returned.
        result: Option<&'t Value>,
    },
    /// Finished badly, with no attempt left.
    Failed {
        /// Why.
        error: &'t str,
    },
    /// Cancelled, by a person or because a task it came after failed (`by`).
    Cancelled {
        /// The task whose failure cancelled it.
        by: Option<&'t str>,
        /// What was said.
        reason: Option<&'t str>,
    },
}

impl TaskState<'_> {
    /// The state's name.
    pub fn status(&self) -> TaskStatus {
        match self {
            TaskState::Pending { .. } => TaskStatus::Pending,
            TaskState::Blocked { .. } => TaskStatus::Blocked,
            TaskState::Running { .. } => TaskStatus::Running,
            TaskState::Review { .. } => TaskStatus::Review,
            TaskState::Completed { .. } => TaskStatus::Completed,
            TaskState::Failed { .. } => TaskStatus::Failed,
            TaskState::Cancelled { .. } => TaskStatus::Cancelled,
        }
    }
}

impl Task {
    /// The task's state with what that state has.
    pub fn state(&self) -> TaskState<'_> {
        match self.status {
            TaskStatus::Pending => TaskState::Pending {
                not_before: self.retry_at,
                snoozed: self.snoozed_until.is_some(),
                attempts: self.attempts,
            },
            TaskStatus::Blocked => TaskState::Blocked {
                after: &self.after,
                after_any: &self.after_any,
            },
            TaskStatus::Running => TaskState::Running {
                holder: self.worker.as_deref().unwrap_or("?"),
                attempt: self.attempts,
                lease_ends: self.lease_expires_at,
                cancel_requested: self.cancel_requested,
            },
            TaskStatus::Review => TaskState::Review {
                result: self.result.as_ref(),
            },
            TaskStatus::Completed => TaskState::Completed {
                result: self.result.as_ref(),
            },
            TaskStatus::Failed => TaskState::Failed {
                error: self.error.as_deref().unwrap_or("failed"),
            },
            TaskStatus::Cancelled => TaskState::Cancelled {
                by: self.cancelled_by.as_deref(),
                reason: self.error.as_deref(),
            },
        }
    }

    /// The ids of every task this one comes after, of either kind (`after`, then `afterAny`),
    /// each once.
    pub fn prerequisites(&self) -> Vec<String> {
        let mut ids = self.after.clone();
        for id in &self.after_any {
            if !ids.contains(id) {
                ids.push(id.clone());
            }
        }
        ids
    }

    /// The question the running attempt waits for a person to answer, if it waits for one:
    /// asked, not yet answered, and its worker's lease not run out (a dead worker's question
    /// goes with its attempt).
    pub fn waiting_input(&self) -> Option<&Input> {
        self.input.as_ref().filter(|input| {
            self.status == TaskStatus::Running
                && input.attempt == self.attempts
                && input.answer.is_none()
                && self
                    .lease_expires_at
                    .is_none_or(|end| end >= Timestamp::now())
        })
    }

    /// The state's name as lists show it: `input` for a running task that waits for a person,
    /// else its status.
    pub fn shown_status(&self) -> &'static str {
        if self.waiting_input().is_some() {
            "input"
        } else {
            self.status.as_str()
        }
    }

    /// True while a merge of the task's branch conflicted and nobody has merged or discarded
    /// it since.
    pub fn in_conflict(&self) -> bool {
        self.branch_state
            .as_ref()
            .is_some_and(|b| b.state == BranchOutcome::Conflict)
    }

    /// How long the task has run (running) or ran (finished), if it started.
    pub fn elapsed_ms(&self, now: Timestamp) -> Option<u64> {
        if let Some(ms) = self.duration_ms {
            return Some(ms);
        }
        let started = self.started_at?;
        let end = self.finished_at.unwrap_or(now);
        let ms = end.duration_since(started).as_millis();
        Some(u64::try_from(ms.max(0)).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_shown_status_is_a_status_or_input() {
        use super::ShownStatus;
        assert_eq!("input".parse(), Ok(ShownStatus::Input));
        assert_eq!(
            "review".parse(),
            Ok(ShownStatus::Status(super::TaskStatus::Review))
        );
        assert_eq!(ShownStatus::Input.status(), super::TaskStatus::Running);
        let refused = "waiting".parse::<ShownStatus>().unwrap_err();
        assert!(
            refused.starts_with("unknown status \"waiting\" (one of pending,")
                && refused.ends_with(", input)"),
            "{refused}"
        );
    }

    use super::*;

    #[test]
    fn json_is_camel_case_with_type_field() {
        let task = Task {
            id: "7".into(),
            task_type: "inspect".into(),
            target: Some("/src".into()),
            description: None,
            priority: 1,
            payload: serde_json::json!({"k": 1}),
            after: vec![],
            after_any: vec![],
            status: TaskStatus::Pending,
            attempts: 0,
            max_attempts: 3,
            timeout_secs: Some(60),
            worker: None,
            created_at: "2026-01-02T03:04:05Z".parse().unwrap(),
            started_at: None,
            finished_at: None,
            duration_ms: None,
            success: None,
            result: None,
            error: None,
            lease_expires_at: None,
            retry_at: None,
            snoozed_until: None,
            cancel_requested: false,
            cancelled_by: None,
            wait_ms: None,
            aged_priority: None,
            history: vec![],
            reviews: vec![],
            branch_state: None,
            siblings: vec![],
            input: None,
        };
        let json = serde_json::to_value(&task).unwrap();
        assert_eq!(json["type"], "inspect");
        assert_eq!(json["maxAttempts"], 3);
        assert_eq!(json["timeoutSecs"], 60);
        assert_eq!(json["createdAt"], "2026-01-02T03:04:05.000Z");
        assert_eq!(json["status"], "pending");
        let back: Task = serde_json::from_value(json).unwrap();
        assert_eq!(back, task);
    }
}
