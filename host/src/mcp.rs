//! `host mcp`: the queue as a Model Context Protocol server on stdio, so that an assistant
//! (Copilot CLI, Claude Code, Codex CLI, ...) configured with it can list, add, claim, complete
//! and fail tasks and read the status itself.
//!
//! Every tool calls the same functions as the command line (`host add`, `host claim`, ...), so
//! the same checks, leases and rules apply. Nothing but the protocol may reach stdout.

use std::time::Duration;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{ServerCapabilities, ServerConfig};
use rmcp::{ServerHandler, ServiceExt, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use queue::{Dependency, NewTask, Outcome, QueueStore, TaskQuery};

use crate::cli::Settings;
use crate::commands::status::StatusReport;
use crate::commands::{add, open_store, selfserve};

/// How long a task claimed through MCP is held without a heartbeat.
const CLAIM_LEASE: Duration = Duration::from_secs(30 * 60);

/// Serves until the client closes stdin.
pub fn serve(settings: &Settings) -> anyhow::Result<()> {
    // Fail now, with the usual one-line error, rather than inside the protocol.
    open_store(settings)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let server = QueueServer::new(settings.clone())
            .serve(rmcp::transport::stdio())
            .await?;
        server.waiting().await?;
        Ok(())
    })
}

#[derive(Debug, Deserialize, JsonSchema)]
struct ListTasks {
    /// Only tasks in this state: pending, blocked, running, completed, failed or cancelled.
    status: Option<String>,
    /// Only tasks of this type.
    #[serde(rename = "type")]
    task_type: Option<String>,
    /// At most this many, newest first; default 100.
    limit: Option<usize>,
    /// The last id of the previous page: only tasks older than it.
    before: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct AddTask {
    /// The task type; a role claims it.
    #[serde(rename = "type")]
    task_type: String,
    /// The file or folder the task is about (absolute).
    target: Option<String>,
    /// What to do, for people and agents.
    description: Option<String>,
    /// Lower is claimed first; default 5.
    priority: Option<u32>,
    /// Input for the handler, any JSON.
    payload: Option<Value>,
    /// Ids of tasks that must complete first.
    after: Option<Vec<String>>,
    /// How many times it may be tried; default 3.
    max_attempts: Option<u32>,
    /// Time limit of one attempt in seconds.
    timeout_secs: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct ClaimTask {
    /// The role whose task types to claim (for example writer, tester).
    role: String,
    /// Who claims it, recorded on the task; default ROLE-HOSTNAME.
    name: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct CompleteTask {
    /// The task id.
    id: String,
    /// The leaseToken that claim_task returned with the task.
    lease_token: String,
    /// The result, any JSON.
    result: Option<Value>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
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
#[serde(rename_all = "camelCase")]
struct HeldTask {
    /// The task id.
    id: String,
    /// The leaseToken that claim_task returned with the task.
    lease_token: String,
}

/// The MCP server: one tool per queue operation.
#[derive(Clone)]
struct QueueServer {
    settings: Settings,
    tool_router: ToolRouter<Self>,
}

/// A tool's answer: JSON text, or the error as one line.
type ToolResult = Result<String, String>;

fn json(value: &impl serde::Serialize) -> ToolResult {
    serde_json::to_string_pretty(value).map_err(|err| err.to_string())
}

fn one_line(err: anyhow::Error) -> String {
    format!("{err:#}").replace('\n', " ")
}

#[tool_router]
impl QueueServer {
    fn new(settings: Settings) -> QueueServer {
        QueueServer {
            settings,
            tool_router: Self::tool_router(),
        }
    }

    #[tool(
        description = "Counts of tasks per state, what is paused, and what each worker is doing."
    )]
    fn status(&self) -> ToolResult {
        json(&StatusReport::read(&self.settings).map_err(one_line)?)
    }

    #[tool(
        description = "List tasks, newest first (at most `limit`, default 100; page with `before`), optionally only one state or one type."
    )]
    fn list_tasks(&self, Parameters(filter): Parameters<ListTasks>) -> ToolResult {
        let statuses = match filter.status.as_deref().filter(|s| !s.is_empty()) {
            Some(name) => vec![name.parse()?],
            None => Vec::new(),
        };
        let query = TaskQuery {
            statuses,
            task_type: filter.task_type,
            newest_first: true,
            after_id: filter.before,
            limit: Some(filter.limit.unwrap_or(100).min(1000)),
            ..TaskQuery::default()
        };
        let tasks = open_store(&self.settings)
            .and_then(|store| Ok(store.list(&query)?))
            .map_err(one_line)?;
        json(&tasks)
    }

    #[tool(description = "Add a task to the queue; returns it with its id.")]
    fn add_task(&self, Parameters(new): Parameters<AddTask>) -> ToolResult {
        let task = NewTask {
            task_type: new.task_type,
            target: new.target.map(Into::into),
            description: new.description,
            priority: new.priority,
            payload: new.payload.unwrap_or(Value::Null),
            max_attempts: new.max_attempts,
            timeout_secs: new.timeout_secs,
            after: new
                .after
                .unwrap_or_default()
                .into_iter()
                .map(Dependency::Task)
                .collect(),
        };
        let store = open_store(&self.settings).map_err(one_line)?;
        let added =
            add::add_checked(&self.settings, &store, vec![task], |_, err| err).map_err(one_line)?;
        json(&added[0])
    }

    #[tool(
        description = "Claim the highest-priority pending task of a role's types. Returns the task with its leaseToken, or an error when there is none. Only the holder of the leaseToken may extend or finish the task: pass it to heartbeat_task (at least every 15 minutes while working), then complete_task or fail_task."
    )]
    fn claim_task(&self, Parameters(claim): Parameters<ClaimTask>) -> ToolResult {
        match selfserve::claim_task(
            &self.settings,
            &claim.role,
            claim.name.as_deref(),
            CLAIM_LEASE,
        ) {
            Ok(Some(claim)) => json(&selfserve::claimed_json(&claim)),
            Ok(None) => Err(format!("no task to claim for role {}", claim.role)),
            Err(err) => Err(one_line(err)),
        }
    }

    #[tool(description = "Keep a claimed task yours; says whether it was cancelled meanwhile.")]
    fn heartbeat_task(
        &self,
        Parameters(HeldTask { id, lease_token }): Parameters<HeldTask>,
    ) -> ToolResult {
        let cancelled = selfserve::heartbeat_task(&self.settings, &id, &lease_token, CLAIM_LEASE)
            .map_err(one_line)?;
        json(&serde_json::json!({ "id": id, "cancelRequested": cancelled }))
    }

    #[tool(description = "Record that a claimed task succeeded, with an optional JSON result.")]
    fn complete_task(&self, Parameters(done): Parameters<CompleteTask>) -> ToolResult {
        let outcome = Outcome::Success(done.result.unwrap_or(Value::Null));
        json(
            &selfserve::finish_task(&self.settings, &done.id, &done.lease_token, outcome)
                .map_err(one_line)?,
        )
    }

    #[tool(description = "Record that a claimed task failed, with the reason.")]
    fn fail_task(&self, Parameters(failed): Parameters<FailTask>) -> ToolResult {
        let outcome = Outcome::Failure {
            error: failed.error,
            result: None,
            retryable: failed.retryable.unwrap_or(false),
        };
        json(
            &selfserve::finish_task(&self.settings, &failed.id, &failed.lease_token, outcome)
                .map_err(one_line)?,
        )
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for QueueServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build()).with_instructions(
            "A shared task queue for coding assistants. Use claim_task with your role, do the \
             work, then complete_task or fail_task. add_task queues work for others.",
        )
    }
}
