//! `host mcp`: the queue as a Model Context Protocol server on stdio, so that an assistant
//! (Copilot CLI, Claude Code, Codex CLI, ...) configured with it can add, claim, work on and
//! finish tasks, and steer and read the queue, itself.
//!
//! Every tool calls the same functions as the command line (`host add`, `host claim`, ...), so
//! the same checks, leases and rules apply. Every answer is a JSON object, as structured
//! content with a text copy; a refusal is a tool error with one line of text. Nothing but the
//! protocol may reach stdout.
//!
//! The server opens the queue's store once, at its start ([`ServerStore`]), and the tools use
//! it, the self-serve ones (claim, heartbeat, progress, log, complete, fail) excepted: the
//! command-line functions they share open their own. Tools run their store calls on
//! the runtime's blocking threads, so that one call waiting on the database or on a plugin's
//! check never holds up the others or the protocol.

mod transport;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, CustomRequest, CustomResult, ErrorCode, Implementation,
    JsonObject, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler, ServiceExt};
use rmcp::{tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

use queue::{Outcome, PauseScope, QueueStore, ShownStatus, Store, TaskQuery};

use crate::cli::Settings;
use crate::commands::{add, selfserve};
use crate::wakeup::Wakeup;
use crate::web::ServerStore;

/// How long a task claimed through MCP is held without a heartbeat, unless the claim says.
const CLAIM_LEASE: Duration = Duration::from_secs(30 * 60);

/// The longest a claim may wait for work: MCP clients commonly give up on a call after 60
/// seconds (the TypeScript SDK's default); the caller claims again to wait longer.
const MAX_WAIT: Duration = Duration::from_secs(50);

/// Serves until the client closes stdin.
pub fn serve(settings: &Settings) -> anyhow::Result<()> {
    // Fail now, with the usual one-line error, rather than inside the protocol.
    let store = ServerStore::open(settings)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let queue_server = QueueServer::new(settings.clone(), store);
    let closing = Arc::clone(&queue_server.closing);
    let served = runtime.block_on(async {
        let server = queue_server.serve(transport::CheckedStdio::new()).await?;
        server.waiting().await?;
        anyhow::Ok(())
    });
    // A claim still waiting on its thread gives up within a second; the runtime does not wait
    // longer for it.
    closing.store(true, Ordering::SeqCst);
    runtime.shutdown_timeout(Duration::from_secs(2));
    served
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ListTasks {
    /// Only tasks in this state: pending, blocked, running, review, completed, failed or
    /// cancelled; or input, the running tasks whose agent waits for an answer.
    status: Option<String>,
    /// Only tasks of this type.
    #[serde(rename = "type")]
    task_type: Option<String>,
    /// Only tasks whose JSON contains this text (ignoring case).
    text: Option<String>,
    /// At most this many, newest first; default 100, at most 1000.
    limit: Option<usize>,
    /// For the next page: the `next` of the previous answer (only tasks older than it). A
    /// task id, as a number or as the string `id` of a task.
    before: Option<TaskNumber>,
}

/// A task id given as a number (`next` of `list_tasks`) or as a string (a task's `id`), so
/// that either round-trips.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
enum TaskNumber {
    /// The id as a number.
    Number(u64),
    /// The id as a string of digits.
    Text(String),
}

impl TaskNumber {
    fn value(&self) -> Result<u64, String> {
        match self {
            TaskNumber::Number(number) => Ok(*number),
            TaskNumber::Text(text) => text
                .trim()
                .parse()
                .map_err(|_| format!("before: {text:?} is not a task id")),
        }
    }
}

/// A task to add: the fields of a line of `host add --file`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AddTask {
    /// A name for this task that later tasks of the same call can put in their `after` or
    /// `afterAny`.
    key: Option<String>,
    /// The task type; a role claims it.
    #[serde(rename = "type")]
    task_type: String,
    /// The file or folder the task is about: an absolute path.
    target: Option<String>,
    /// What to do, for people and agents.
    description: Option<String>,
    /// Lower is claimed first; default 5.
    priority: Option<u32>,
    /// Input for the handler, any JSON.
    payload: Option<Value>,
    /// Tasks that must complete first: ids of queued tasks, or keys of earlier tasks of the
    /// same call.
    after: Option<Vec<Value>>,
    /// Tasks that must finish first, whatever their outcome (completed, failed or cancelled):
    /// ids or keys, as in `after`. Their status, error and result reach an agent's prompt, so
    /// that a fix can run after the test that found what to fix.
    after_any: Option<Vec<Value>>,
    /// How many times it may be tried; default 3.
    #[schemars(range(min = 1))]
    max_attempts: Option<u32>,
    /// Time limit of one attempt, such as "90s" or "10m".
    timeout: Option<String>,
    /// Time limit of one attempt in seconds.
    #[schemars(range(min = 1))]
    timeout_secs: Option<u64>,
    /// Not before this time: 2026-12-01T09:00:00Z.
    at: Option<String>,
    /// Not before this long from now, such as "10m".
    #[serde(rename = "in")]
    delay: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct AddTasks {
    /// The tasks, added all or none.
    tasks: Vec<AddTask>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ClaimTask {
    /// The role whose task types to claim (for example writer, tester).
    role: String,
    /// Who claims it, recorded on the task and shown in status; default ROLE-HOSTNAME.
    name: Option<String>,
    /// With nothing to claim, wait up to this many seconds for a task (at most 50); default 0.
    wait_secs: Option<u64>,
    /// How long the claim holds without a heartbeat, in seconds; default 1800.
    lease_secs: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CompleteTask {
    /// The task id.
    id: String,
    /// The leaseToken that claim_task returned with the task.
    lease_token: String,
    /// The result, any JSON.
    result: Option<Value>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FailTask {
    /// The task id.
    id: String,
    /// The leaseToken that claim_task returned with the task.
    lease_token: String,
    /// Why it failed, in one line.
    error: String,
    /// Whether another attempt may succeed.
    retryable: Option<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HeldTask {
    /// The task id.
    id: String,
    /// The leaseToken that claim_task returned with the task.
    lease_token: String,
    /// How long the lease lasts from now, in seconds; default 1800.
    lease_secs: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LogTask {
    /// The task id.
    id: String,
    /// The leaseToken that claim_task returned with the task.
    lease_token: String,
    /// The lines to append to the task's log.
    lines: Vec<String>,
    /// How long the lease lasts from now, in seconds; default 1800.
    lease_secs: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ProgressTask {
    /// The task id.
    id: String,
    /// The leaseToken that claim_task returned with the task.
    lease_token: String,
    /// How far along, 0 to 100.
    #[schemars(range(max = 100))]
    percent: u8,
    /// What it is doing now.
    message: Option<String>,
    /// How long the lease lasts from now, in seconds; default 1800.
    lease_secs: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SnoozeTask {
    /// The task id.
    id: String,
    /// For this many seconds from now (give this or `until`).
    #[schemars(range(min = 1))]
    secs: Option<u64>,
    /// Until this time, RFC 3339 (give this or `secs`).
    until: Option<String>,
    /// Why, kept on the attempt of a held task.
    reason: Option<String>,
    /// For a task held through claim_task: its leaseToken. A waiting task needs none.
    lease_token: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct TaskId {
    /// The task id.
    id: String,
}

/// A person's (or a reviewing agent's) answer to the question a running task asks.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct AnswerTask {
    /// The task id.
    id: String,
    /// The option chosen: the id of one of the options the question offers (see `inbox` or
    /// the task's `input.options`), e.g. `allow_once`. Leave it out to fill a form with its
    /// accepting option.
    option: Option<String>,
    /// Values of the question's form, by field name.
    #[serde(default)]
    fields: serde_json::Map<String, Value>,
    /// The question's `askedAt` (from `inbox` or the task's `input`): when given, an answer
    /// meant for an earlier question is refused rather than given to a newer one.
    #[serde(default, rename = "askedAt")]
    asked_at: Option<String>,
}

/// What to pause or resume: one task, one type, or the whole queue.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Scope {
    /// One task.
    task: Option<String>,
    /// Every task of this type.
    #[serde(rename = "type")]
    task_type: Option<String>,
    /// The whole queue: must be true when neither task nor type is given.
    queue: Option<bool>,
}

impl Scope {
    fn parse(&self) -> Result<PauseScope, String> {
        match (&self.task, &self.task_type, self.queue.unwrap_or(false)) {
            (Some(id), None, false) => Ok(PauseScope::Task(id.clone())),
            (None, Some(task_type), false) => Ok(PauseScope::Type(task_type.clone())),
            (None, None, true) => Ok(PauseScope::Queue),
            _ => Err("give exactly one of task, type, or queue: true".into()),
        }
    }
}

/// The MCP server: one tool per queue operation.
#[derive(Clone)]
struct QueueServer {
    settings: Settings,
    store: ServerStore,
    tool_router: ToolRouter<Self>,
    /// What wakes waiting claims, made at the first one and shared by all: on PostgreSQL it
    /// holds a connection.
    wakeup: Arc<OnceLock<Wakeup>>,
    /// Set when the client has gone.
    closing: Arc<AtomicBool>,
}

/// A tool's answer: a JSON object, or the refusal as one line.
type ToolResult = Result<CallToolResult, String>;

/// The schema of every answer: an object (tasks and reports have their own documented JSON).
fn object_schema() -> Arc<JsonObject> {
    let Value::Object(schema) = json!({ "type": "object" }) else {
        unreachable!("a JSON object literal")
    };
    Arc::new(schema)
}

fn answer(value: &impl serde::Serialize) -> ToolResult {
    let value = serde_json::to_value(value).map_err(|err| err.to_string())?;
    Ok(CallToolResult::structured(value))
}

fn one_line(err: anyhow::Error) -> String {
    format!("{err:#}").replace('\n', " ")
}

/// Runs `work` with the server's settings and store on a blocking thread of the runtime: store
/// calls wait on a file or a database, plugin checks on a child process. A panic in it is a
/// refusal in one line, not the server's end.
async fn blocking<T: Send + 'static>(
    server: &QueueServer,
    work: impl FnOnce(&Settings, &Store) -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let (settings, store) = (server.settings.clone(), server.store.clone());
    tokio::task::spawn_blocking(move || store.with(|store| work(&settings, store)))
        .await
        .map_err(|err| err.to_string())?
        .map_err(one_line)?
}

/// Runs `work` with the server's settings on a blocking thread of the runtime: for the
/// functions shared with the command line that open the store themselves.
async fn blocking_settings<T: Send + 'static>(
    server: &QueueServer,
    work: impl FnOnce(&Settings) -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let settings = server.settings.clone();
    tokio::task::spawn_blocking(move || work(&settings))
        .await
        .map_err(|err| err.to_string())?
}

fn lease(secs: Option<u64>) -> Duration {
    secs.map_or(CLAIM_LEASE, |s| Duration::from_secs(s.max(1)))
}

/// The entry of `host add --file` that a tool's task stands for. A relative target is refused:
/// the server's folder is not the caller's.
fn entry(task: AddTask) -> Result<Value, String> {
    if let Some(target) = &task.target
        && !std::path::Path::new(target).is_absolute()
    {
        return Err(format!(
            "target {target:?} is relative: give an absolute path (this server's working folder \
             is not yours)"
        ));
    }
    let mut entry = json!({
        "type": task.task_type,
        "key": task.key,
        "target": task.target,
        "description": task.description,
        "priority": task.priority,
        "payload": task.payload,
        "after": task.after.unwrap_or_default(),
        "afterAny": task.after_any.unwrap_or_default(),
        "maxAttempts": task.max_attempts,
        "timeout": task.timeout,
        "timeoutSecs": task.timeout_secs,
        "at": task.at,
        "in": task.delay,
    });
    if let Value::Object(fields) = &mut entry {
        fields.retain(|_, value| !value.is_null());
    }
    Ok(entry)
}

#[tool_router]
impl QueueServer {
    fn new(settings: Settings, store: ServerStore) -> QueueServer {
        QueueServer {
            settings,
            store,
            tool_router: Self::tool_router(),
            wakeup: Arc::default(),
            closing: Arc::default(),
        }
    }

    /// Adds the tasks all or none, through the same checks as `host add --file`.
    async fn add(&self, tasks: Vec<AddTask>) -> Result<Vec<queue::Task>, String> {
        let entries = tasks
            .into_iter()
            .enumerate()
            .map(|(index, task)| Ok((format!("task {}", index + 1), entry(task)?)))
            .collect::<Result<Vec<_>, String>>()?;
        let tasks = add::tasks_from_entries("", entries).map_err(one_line)?;
        blocking(self, move |settings, store| {
            add::add_checked(settings, store, tasks, |index, err| {
                err.context(format!("task {}", index + 1))
            })
            .map_err(one_line)
        })
        .await
    }

    #[tool(
        description = "Counts of tasks per state, what is paused, and every worker and self-serve holder with its tasks and progress.",
        output_schema = object_schema(),
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn status(&self) -> ToolResult {
        let report = blocking(self, |settings, store| {
            crate::commands::status::StatusReport::of(settings, store).map_err(one_line)
        })
        .await?;
        answer(&report)
    }

    #[tool(
        description = "List tasks, newest first: at most `limit` (default 100), filtered by state, type and text. When more remain, `next` (a number) is the `before` of the next page.",
        output_schema = object_schema(),
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn list_tasks(&self, Parameters(filter): Parameters<ListTasks>) -> ToolResult {
        let shown: Option<ShownStatus> = filter
            .status
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(str::parse)
            .transpose()?;
        // Running tasks are as many as the workers' slots: for `input`, all are read and the
        // page cut after the filter.
        let input_only = shown == Some(ShownStatus::Input);
        let before = filter.before.as_ref().map(TaskNumber::value).transpose()?;
        let limit = filter.limit.unwrap_or(100).clamp(1, 1000);
        let query = TaskQuery {
            statuses: shown.map(|s| vec![s.status()]).unwrap_or_default(),
            task_type: filter.task_type,
            text: filter.text,
            newest_first: true,
            after_id: before,
            limit: (!input_only).then_some(limit + 1),
            ..TaskQuery::default()
        };
        let mut tasks = blocking(self, move |_, store| {
            store.list(&query).map_err(|err| one_line(err.into()))
        })
        .await?;
        tasks.retain(|t| shown.is_none_or(|s| s.holds(t)));
        // `next` is a number, the type `before` declares (ids are numbers in text).
        let next = (tasks.len() > limit).then(|| {
            tasks.truncate(limit);
            tasks.last().and_then(|t| t.id.parse::<u64>().ok())
        });
        answer(&json!({ "tasks": tasks, "next": next.flatten() }))
    }

    #[tool(
        description = "One task whole (payload, result, error, history of attempts) with the tasks it comes after and their results.",
        output_schema = object_schema(),
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn get_task(&self, Parameters(TaskId { id }): Parameters<TaskId>) -> ToolResult {
        let (task, prerequisites) = blocking(self, move |_, store| {
            let task = store.get(&id).map_err(|err| err.to_string())?;
            // A prerequisite purged since (`keep_finished`) is left out, as workers leave it
            // out.
            let prerequisites: Vec<queue::Task> = task
                .prerequisites()
                .iter()
                .filter_map(|id| store.get(id).ok())
                .collect();
            Ok((task, prerequisites))
        })
        .await?;
        answer(&json!({ "task": task, "prerequisites": prerequisites }))
    }

    #[tool(
        description = "Add one task (the fields of a line of `host add --file`); returns it with its id.",
        output_schema = object_schema(),
        annotations(read_only_hint = false, destructive_hint = false, open_world_hint = false)
    )]
    async fn add_task(&self, Parameters(task): Parameters<AddTask>) -> ToolResult {
        let added = self.add(vec![task]).await?;
        answer(&added[0])
    }

    #[tool(
        description = "Add several tasks at once, all or none; a task's `after` may name an earlier one of the same call by its `key` (and so may its `afterAny`). Returns them with their ids, in order.",
        output_schema = object_schema(),
        annotations(read_only_hint = false, destructive_hint = false, open_world_hint = false)
    )]
    async fn add_tasks(&self, Parameters(AddTasks { tasks }): Parameters<AddTasks>) -> ToolResult {
        if tasks.is_empty() {
            return Err("no tasks given".into());
        }
        answer(&json!({ "tasks": self.add(tasks).await? }))
    }

    #[tool(
        description = "Claim the highest-priority pending task of a role's types, waiting up to waitSecs (at most 50) for one. Returns the task with its leaseToken. Only the holder of the leaseToken may extend or finish the task: pass it to heartbeat_task, log_task or progress_task (one of them at least every half lease) while working, then to complete_task or fail_task.",
        output_schema = object_schema(),
        annotations(read_only_hint = false, destructive_hint = false, open_world_hint = false)
    )]
    async fn claim_task(
        &self,
        Parameters(claim): Parameters<ClaimTask>,
        context: RequestContext<RoleServer>,
    ) -> ToolResult {
        let (settings, store) = (self.settings.clone(), self.store.clone());
        let wait = Duration::from_secs(claim.wait_secs.unwrap_or(0)).min(MAX_WAIT);
        let lease = lease(claim.lease_secs);
        let role = claim.role.clone();
        let (wakeups, closing) = (Arc::clone(&self.wakeup), Arc::clone(&self.closing));
        let cancelled = Arc::new(AtomicBool::new(false));
        let gone = Arc::clone(&cancelled);
        // A wait blocks: on a thread of its own, so the server keeps answering meanwhile.
        let mut job = tokio::task::spawn_blocking(move || {
            if !wait.is_zero() && wakeups.get().is_none() {
                let _ = wakeups.set(Wakeup::start(store.work_signal()?).0);
            }
            let abandoned = || gone.load(Ordering::SeqCst) || closing.load(Ordering::SeqCst);
            let waiting = selfserve::Waiting {
                wait,
                wakeup: wakeups.get(),
                abandoned: &abandoned,
            };
            selfserve::claim_task(&settings, &role, claim.name.as_deref(), lease, &waiting)
        });
        let claimed = tokio::select! {
            joined = &mut job => joined.map_err(|err| err.to_string())?,
            () = context.ct.cancelled() => {
                // Nobody will hear the answer: a task claimed in the meantime goes back.
                cancelled.store(true, Ordering::SeqCst);
                if let Ok(Ok(Some(claimed))) = job.await {
                    blocking(self, move |_, store| {
                        store.release(&claimed.lease).map_err(|err| err.to_string())
                    })
                    .await?;
                }
                return Err("the claim was cancelled".into());
            }
        };
        match claimed {
            Ok(Some(claimed)) => answer(&selfserve::claimed_json(&claimed)),
            Ok(None) => Err(format!("no task to claim for role {}", claim.role)),
            Err(err) => Err(one_line(err)),
        }
    }

    #[tool(
        description = "Keep a claimed task yours for another lease; says whether it was cancelled meanwhile (then stop and fail_task it).",
        output_schema = object_schema(),
        annotations(read_only_hint = false, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    async fn heartbeat_task(&self, Parameters(held): Parameters<HeldTask>) -> ToolResult {
        let lease = lease(held.lease_secs);
        let (id, token) = (held.id.clone(), held.lease_token);
        let cancelled = blocking_settings(self, move |settings| {
            selfserve::heartbeat_task(settings, &id, &token, lease).map_err(one_line)
        })
        .await?;
        answer(&json!({ "id": held.id, "cancelRequested": cancelled }))
    }

    #[tool(
        description = "Append lines to a claimed task's log (what `host logs ID` shows); also a heartbeat.",
        output_schema = object_schema(),
        annotations(read_only_hint = false, destructive_hint = false, open_world_hint = false)
    )]
    async fn log_task(&self, Parameters(log): Parameters<LogTask>) -> ToolResult {
        let lease = lease(log.lease_secs);
        let (id, token, lines) = (log.id.clone(), log.lease_token, log.lines);
        let cancelled = blocking_settings(self, move |settings| {
            selfserve::log_task(settings, &id, &token, lease, &lines).map_err(one_line)
        })
        .await?;
        answer(&json!({ "id": log.id, "cancelRequested": cancelled }))
    }

    #[tool(
        description = "Report progress (0-100 and a message) on a claimed task, shown beside you in status and the dashboard; also a heartbeat.",
        output_schema = object_schema(),
        annotations(read_only_hint = false, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    async fn progress_task(&self, Parameters(progress): Parameters<ProgressTask>) -> ToolResult {
        if progress.percent > 100 {
            return Err(format!("percent {} is over 100", progress.percent));
        }
        let lease = lease(progress.lease_secs);
        let (id, token) = (progress.id.clone(), progress.lease_token);
        let (percent, message) = (progress.percent, progress.message.unwrap_or_default());
        let cancelled = blocking_settings(self, move |settings| {
            selfserve::report_progress(settings, &id, &token, lease, Some((percent, &message)))
                .map_err(one_line)
        })
        .await?;
        answer(&json!({ "id": progress.id, "cancelRequested": cancelled }))
    }

    #[tool(
        description = "Record that a claimed task succeeded, with an optional JSON result.",
        output_schema = object_schema(),
        annotations(read_only_hint = false, destructive_hint = false, open_world_hint = false)
    )]
    async fn complete_task(&self, Parameters(done): Parameters<CompleteTask>) -> ToolResult {
        let outcome = Outcome::Success(done.result.unwrap_or(Value::Null));
        self.finish(done.id, done.lease_token, outcome).await
    }

    #[tool(
        description = "Record that a claimed task failed, with the reason; retried later when retryable and attempts are left.",
        output_schema = object_schema(),
        annotations(read_only_hint = false, destructive_hint = false, open_world_hint = false)
    )]
    async fn fail_task(&self, Parameters(failed): Parameters<FailTask>) -> ToolResult {
        let outcome = Outcome::Failure {
            error: failed.error,
            result: None,
            retryable: failed.retryable.unwrap_or(false),
        };
        self.finish(failed.id, failed.lease_token, outcome).await
    }

    #[tool(
        description = "Put a task off until later without spending an attempt: a waiting (pending or blocked) task by anyone, a held one with its leaseToken. Give secs or until.",
        output_schema = object_schema(),
        annotations(read_only_hint = false, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    async fn snooze_task(&self, Parameters(snooze): Parameters<SnoozeTask>) -> ToolResult {
        let until = match (snooze.secs, &snooze.until) {
            (Some(secs), None) => {
                queue::lifecycle::later(jiff::Timestamp::now(), Duration::from_secs(secs))
            }
            (None, Some(text)) => text
                .parse::<jiff::Timestamp>()
                .map_err(|err| format!("until: {text:?} is not an RFC 3339 time ({err})"))?,
            _ => return Err("give one of secs and until".into()),
        };
        let task = blocking_settings(self, move |settings| {
            crate::commands::snooze::snooze_task(
                settings,
                &snooze.id,
                until,
                snooze.reason.as_deref().unwrap_or("snoozed"),
                snooze.lease_token.as_deref(),
            )
            .map_err(one_line)
        })
        .await?;
        answer(&task)
    }

    /// Records how a claimed task ended, as the holder of `token`.
    async fn finish(&self, id: String, token: String, outcome: Outcome) -> ToolResult {
        let task = blocking_settings(self, move |settings| {
            selfserve::finish_task(settings, &id, &token, outcome).map_err(one_line)
        })
        .await?;
        answer(&task)
    }

    #[tool(
        description = "Cancel a task: a pending or blocked one never starts (nor do the tasks that come after it by `after`; those by `afterAny` may then run); a running one's holder is told to stop; one waiting for review is dropped.",
        output_schema = object_schema(),
        annotations(read_only_hint = false, destructive_hint = true, idempotent_hint = true, open_world_hint = false)
    )]
    async fn cancel_task(&self, Parameters(TaskId { id }): Parameters<TaskId>) -> ToolResult {
        let task = blocking(self, move |_, store| {
            store.cancel(&id).map_err(|err| err.to_string())
        })
        .await?;
        answer(&task)
    }

    #[tool(
        description = "Put a failed or cancelled task back in the queue, with at least one more attempt.",
        output_schema = object_schema(),
        annotations(read_only_hint = false, destructive_hint = false, open_world_hint = false)
    )]
    async fn retry_task(&self, Parameters(TaskId { id }): Parameters<TaskId>) -> ToolResult {
        let task = blocking(self, move |_, store| {
            store.retry(&id).map_err(|err| err.to_string())
        })
        .await?;
        answer(&task)
    }

    #[tool(
        description = "Everything that waits for a person, oldest first: agents' questions (kind input, with the question and its options), changes to review, merges that conflicted, roles out of quota; each with the command that settles it.",
        output_schema = object_schema(),
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn inbox(&self) -> ToolResult {
        let items = blocking(self, |_, store| {
            crate::commands::inbox::read(store).map_err(one_line)
        })
        .await?;
        answer(&json!({ "items": items }))
    }

    #[tool(
        description = "Answer the question a running task's agent asks (a permission request or a form, listed by `inbox` as kind input) with one of the options it offers; the agent resumes. Refused when the task waits for no answer or the option is not one offered.",
        output_schema = object_schema(),
        annotations(read_only_hint = false, destructive_hint = false, open_world_hint = false)
    )]
    async fn answer_task(&self, Parameters(reply): Parameters<AnswerTask>) -> ToolResult {
        let asked_at = reply
            .asked_at
            .map(|at| at.parse())
            .transpose()
            .map_err(|err| format!("askedAt: {err}"))?;
        let given = crate::commands::inbox::Reply {
            option: reply.option,
            fields: reply.fields,
            asked_at,
        };
        let said = blocking(self, move |_, store| {
            crate::commands::inbox::answer_task(store, &reply.id, given, "an MCP client")
                .map_err(one_line)
        })
        .await?;
        answer(&json!({ "answered": said }))
    }

    #[tool(
        description = "Stop claims of one task, one type, or (with queue: true) the whole queue until resume; running tasks go on.",
        output_schema = object_schema(),
        annotations(read_only_hint = false, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    async fn pause(&self, Parameters(scope): Parameters<Scope>) -> ToolResult {
        let scope = scope.parse()?;
        let paused = blocking(self, move |_, store| {
            store.pause(&scope).map_err(|err| err.to_string())?;
            paused(store)
        })
        .await?;
        answer(&json!({ "paused": paused }))
    }

    #[tool(
        description = "Lift a pause of one task, one type, or (with queue: true) the whole queue.",
        output_schema = object_schema(),
        annotations(read_only_hint = false, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    async fn resume(&self, Parameters(scope): Parameters<Scope>) -> ToolResult {
        let scope = scope.parse()?;
        let paused = blocking(self, move |_, store| {
            if !store
                .paused()
                .map_err(|err| err.to_string())?
                .contains(&scope)
            {
                return Err(format!("{scope} is not paused"));
            }
            store.resume(&scope).map_err(|err| err.to_string())?;
            paused(store)
        })
        .await?;
        answer(&json!({ "paused": paused }))
    }
}

/// What is paused now, as the pause tools answer.
fn paused(store: &Store) -> Result<Vec<String>, String> {
    Ok(store
        .paused()
        .map_err(|err| err.to_string())?
        .iter()
        .map(ToString::to_string)
        .collect())
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for QueueServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("host", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "A shared task queue for coding assistants. Take work with claim_task (your \
                 role; waitSecs to wait for some), read it whole with get_task, report with \
                 log_task and progress_task while you work, then complete_task or fail_task \
                 with the leaseToken. add_task and add_tasks queue work for others.",
            )
    }

    /// rmcp reads a `tools/call` whose `arguments` is not an object as a request of a method it
    /// does not know; it is a call with invalid parameters, and says so.
    async fn on_custom_request(
        &self,
        request: CustomRequest,
        _context: RequestContext<RoleServer>,
    ) -> Result<CustomResult, McpError> {
        if request.method == "tools/call" {
            let params = request.params.unwrap_or(Value::Null);
            let why = match serde_json::from_value::<CallToolRequestParams>(params) {
                Err(err) => err.to_string(),
                Ok(_) => "malformed parameters".to_string(),
            };
            return Err(McpError::invalid_params(
                format!("invalid tools/call parameters: {why} (`arguments` must be an object)"),
                None,
            ));
        }
        Err(McpError::new(
            ErrorCode::METHOD_NOT_FOUND,
            format!("method not found: {}", request.method),
            None,
        ))
    }
}
