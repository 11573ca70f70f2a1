//! The agent role's ACP mode: drives a coding agent through the Agent Client Protocol
//! (JSON-RPC 2.0, one message a line, on the agent's standard input and output) instead of
//! reading a headless CLI's printed output.
//!
//! One attempt is one ACP session: `initialize` (this client offers file reads and writes,
//! terminals and forms), `session/new` in the attempt's folder (or `session/load` of a
//! rejected attempt's session, where the agent can), one `session/prompt` with the task's
//! prompt, and the turn's stop reason as the outcome. Every `session/update` becomes a log line
//! (the agent's messages and thoughts, each tool call and its status, the plan); the latest plan
//! goes into the result and the task's progress.
//!
//! What the agent asks of the client is answered here, under the role's rules:
//! - `session/request_permission`: by the role's `permissions` (see [`Permissions`]), with one of
//!   the agent's own options, or by a person from the queue (`"ask"`: the task waits as
//!   `input` until `host answer`); the decision is logged.
//! - `elicitation/create` (a form the agent wants filled): by a person from the queue when the
//!   role asks people anything, its fields answered with `host answer ID --field NAME=VALUE`;
//!   declined otherwise.
//! - `fs/read_text_file`, `fs/write_text_file`: only inside the attempt's folder (its worktree);
//!   any other path, a link out of it included, is refused with an error to the agent and a log
//!   line (see `files`).
//! - `terminal/*`: commands started in the attempt's folder (a `cwd` outside it is refused), each
//!   in a process group of its own, all of them killed when the attempt ends (see `terminals`).
//!
//! These are guards against an agent's mistakes, not a sandbox: the agent's own tools, and the
//! commands it runs, reach whatever its process may. The permission request an agent sends
//! before it acts is the gate, and only an agent in a mode that asks sends one.
//!
//! When the host stops the task (cancel, its time limit, the worker shutting down), the agent is
//! sent `session/cancel` and given [`CANCEL_GRACE`] to end its turn (its permission requests
//! answered `cancelled`, its writes and new terminals refused meanwhile, as ACP asks); then it
//! is killed with everything it started.

mod files;
mod permissions;
mod terminals;

pub use permissions::{AcpRole, Permissions};

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use agent_client_protocol_schema::v1 as acp;
use plugin_api::{Context, PlanStep, StopReason, Value, checklist, json, serde_json};

use crate::command::{Limits, Line, Lines, MAX_LINE, READ_SIZE, loggable, shorten};
use crate::group::ProcessGroup;
use terminals::Terminal;

/// How often the loop looks whether the host wants the task stopped.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// How long a cancelled agent has to end its turn before it is killed.
const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// How long the agent has to exit once its turn ended and its input closed.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// How long a message the agent is streaming may go without a new chunk before what it said so
/// far is logged without waiting for the end of its line.
const SPEECH_PAUSE: Duration = Duration::from_millis(500);

/// How many lines of the agent's own stderr the result keeps.
const TAIL_LINES: usize = 40;

/// JSON-RPC's error codes this client answers with: a request it cannot read, a method it does
/// not serve, a JSON it cannot make (never expected), and ACP's server-defined range for what
/// it refuses (a path outside the folder, a command that cannot start).
const INVALID_PARAMS: i64 = -32602;
const METHOD_NOT_FOUND: i64 = -32601;
const INTERNAL_ERROR: i64 = -32603;
const REFUSED: i64 = -32000;

/// How an ACP session ended.
pub struct Finished {
    /// The turn's stop reason, when the agent answered the prompt.
    pub stop_reason: Option<acp::StopReason>,
    /// Why the session failed before a stop reason: the agent's error answer, a broken
    /// protocol, or the agent exiting (with its exit code).
    pub error: Option<String>,
    /// Whether it was cancelled because [`Limits::timeout`] ran out.
    pub timed_out: bool,
    /// Whether it was cancelled because it sent no update for [`Limits::stall`].
    pub stalled: bool,
    /// Why the host stopped it, if it did.
    pub stop: Option<StopReason>,
    /// How long the session ran.
    pub duration: Duration,
    /// The agent's messages of the turn, joined.
    pub final_message: String,
    /// The latest plan.
    pub plan: Vec<PlanStep>,
    /// The tokens the agent reported for the turn, where it did.
    pub usage: Value,
    /// The session's id.
    pub session: Option<String>,
    /// The last lines of the agent's stderr.
    pub tail: String,
}

impl Finished {
    /// Why the attempt failed, one line starting with `what`; `None` when the turn ended
    /// normally.
    pub fn failure(&self, what: &str, limits: Limits) -> Option<String> {
        let secs = |d: Option<Duration>| d.unwrap_or_default().as_secs();
        let how = if self.timed_out {
            format!(
                "{what} ran past its time limit of {}s and was cancelled",
                secs(limits.timeout)
            )
        } else if self.stalled {
            format!(
                "{what} sent no update for {}s and was cancelled as stalled",
                secs(limits.stall)
            )
        } else {
            match self.stop {
                Some(StopReason::TimedOut) => {
                    format!("{what} was cancelled at the task's time limit")
                }
                Some(StopReason::Cancelled) => {
                    format!("{what} was stopped: the task was cancelled")
                }
                Some(StopReason::Shutdown) => {
                    format!("{what} was stopped: the worker is shutting down")
                }
                _ => match (&self.error, &self.stop_reason) {
                    (Some(error), _) => format!("{what}: {error}"),
                    (None, Some(acp::StopReason::EndTurn)) => return None,
                    (None, Some(reason)) => {
                        format!("{what} ended its turn early: {}", wire_name(reason))
                    }
                    (None, None) => format!("{what} ended without finishing its turn"),
                },
            }
        };
        let last = self.tail.lines().rev().find(|l| !l.trim().is_empty());
        Some(match last {
            Some(line) if self.error.is_some() => format!("{how} (its last output: {line})"),
            _ => how,
        })
    }
}

/// ACP's own name of one of its words (a stop reason `end_turn`, a tool kind `edit`, a status
/// `in_progress`), as the wire writes it.
fn wire_name<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

/// What the reader threads hand the session loop.
enum Incoming {
    /// A line the agent wrote on its standard output.
    Message(String),
    /// A line of its stderr.
    Stderr(String),
    /// Its standard output closed.
    Closed,
}

/// One ACP session with an agent process, as the loop drives it.
struct Session<'a, 'c> {
    ctx: &'a Context<'c>,
    /// The attempt's folder as given, for messages, and resolved: the only place the agent may
    /// touch.
    dir: PathBuf,
    root: PathBuf,
    permissions: &'a Permissions,
    /// The agent's standard input; `None` once closed.
    stdin: Option<ChildStdin>,
    /// The id of this client's last request (the agent numbers its own apart).
    next_id: i64,
    /// How many terminals the agent started, which names the next.
    terminals_made: u32,
    /// The session's id, once the agent made it.
    session_id: Option<String>,
    /// Whether `session/cancel` was sent: the agent is ending its turn.
    cancelled: bool,
    /// The agent's message being streamed, logged a line at a time.
    speaking: String,
    final_message: String,
    /// Whether a step (a thought, a tool call, a plan) came after the agent's last words, so
    /// that what it says next is a new message.
    message_ended: bool,
    plan: Vec<PlanStep>,
    /// The tool calls announced, by id: for the log lines of their updates, and the kind of a
    /// permission request that names none.
    tools: HashMap<String, ToolInfo>,
    terminals: HashMap<String, Terminal>,
    /// `terminal/wait_for_exit` requests not answered yet: request id and terminal id.
    waiting: Vec<(Value, String)>,
    /// The last lines of the agent's stderr.
    tail: VecDeque<String>,
    /// When the agent last sent an update or a request: what the stall limit measures.
    last_update: Instant,
    /// How long the session waited for people to answer: not counted against the time limit.
    waited: Duration,
    /// Whether a loaded session's history is being replayed: none of it is new.
    replaying: bool,
}

/// A tool call as the agent announced it.
struct ToolInfo {
    title: String,
    /// Its kind (`edit`, `execute`, ...), where given.
    kind: Option<String>,
}

impl Session<'_, '_> {
    /// Writes one message to the agent, a line.
    fn send(&mut self, message: Value) -> Result<(), String> {
        let stdin = self.stdin.as_mut().ok_or("the agent's input is closed")?;
        let mut line = message.to_string();
        line.push('\n');
        stdin
            .write_all(line.as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(|err| format!("cannot write to the agent: {err}"))
    }

    /// Sends request `method` and returns its id.
    fn request(&mut self, method: &str, params: Value) -> Result<i64, String> {
        self.next_id += 1;
        let id = self.next_id;
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))?;
        Ok(id)
    }

    /// Sends notification `method`.
    fn notify(&mut self, method: &str, params: Value) -> Result<(), String> {
        self.send(json!({"jsonrpc": "2.0", "method": method, "params": params}))
    }

    /// Answers the agent's request `id` with a result or an error.
    fn answer(&mut self, id: Value, result: Result<Value, (i64, String)>) -> Result<(), String> {
        self.send(match result {
            Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
            Err((code, message)) => {
                json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
            }
        })
    }

    /// Logs what the agent said so far that ends a line, or all of it with `all`.
    fn flush_speech(&mut self, all: bool) {
        while let Some(end) = self.speaking.find('\n') {
            let line: String = self.speaking.drain(..=end).collect();
            let line = line.trim_end();
            if !line.is_empty() {
                self.ctx.log(&format!("assistant: {line}"));
            }
        }
        if all && !self.speaking.trim().is_empty() {
            self.ctx
                .log(&format!("assistant: {}", self.speaking.trim_end()));
        }
        if all {
            self.speaking.clear();
        }
    }

    /// Logs a `session/update`, keeping the agent's words and its plan.
    fn update(&mut self, params: Value) {
        self.last_update = Instant::now();
        if self.replaying {
            return;
        }
        let notification: acp::SessionNotification = match serde_json::from_value(params.clone()) {
            Ok(n) => n,
            Err(err) => {
                self.ctx.log(&format!(
                    "acp: an update this client cannot read ({err}): {params}"
                ));
                return;
            }
        };
        let text = |block: &acp::ContentBlock| match block {
            acp::ContentBlock::Text(text) => text.text.clone(),
            other => format!("({})", content_kind(other)),
        };
        match notification.update {
            acp::SessionUpdate::AgentMessageChunk(chunk) => {
                let said = text(&chunk.content);
                // The final message is the last one, what the agent said after its last step.
                if std::mem::take(&mut self.message_ended) {
                    self.final_message.clear();
                }
                self.final_message.push_str(&said);
                self.speaking.push_str(&said);
                self.flush_speech(false);
                return;
            }
            acp::SessionUpdate::AgentThoughtChunk(chunk) => {
                self.flush_speech(true);
                let thought = text(&chunk.content);
                if !thought.trim().is_empty() {
                    self.ctx
                        .log(&format!("thinking: {}", shorten(thought.trim(), 500)));
                }
            }
            acp::SessionUpdate::ToolCall(call) => {
                self.flush_speech(true);
                let kind = wire_name(&call.kind);
                self.ctx.log(&format!(
                    "tool {} ({kind}): {}{}",
                    call.title,
                    wire_name(&call.status).replace('_', " "),
                    locations(&call.locations)
                ));
                self.tools.insert(
                    call.tool_call_id.to_string(),
                    ToolInfo {
                        title: call.title,
                        kind: Some(kind),
                    },
                );
            }
            acp::SessionUpdate::ToolCallUpdate(update) => {
                self.flush_speech(true);
                let id = update.tool_call_id.to_string();
                let known = self.tools.entry(id.clone()).or_insert_with(|| ToolInfo {
                    title: id.clone(),
                    kind: None,
                });
                if let Some(title) = &update.fields.title {
                    known.title = title.clone();
                }
                if let Some(kind) = &update.fields.kind {
                    known.kind = Some(wire_name(kind));
                }
                let title = known.title.clone();
                if let Some(status) = &update.fields.status {
                    let output = update
                        .fields
                        .content
                        .as_ref()
                        .map(|content| tool_output(content))
                        .filter(|o| !o.is_empty())
                        .map(|o| format!(": {}", shorten(&o, 300)))
                        .unwrap_or_default();
                    self.ctx.log(&format!(
                        "tool {title}: {}{output}",
                        wire_name(status).replace('_', " ")
                    ));
                }
            }
            acp::SessionUpdate::Plan(plan) => {
                self.flush_speech(true);
                self.plan = plan
                    .entries
                    .iter()
                    .map(|e| PlanStep {
                        content: e.content.clone(),
                        status: wire_name(&e.status),
                        priority: Some(wire_name(&e.priority)),
                    })
                    .collect();
                self.ctx.log(&format!("plan:\n{}", checklist(&self.plan)));
                self.ctx.plan(&self.plan);
                let done = self.plan.iter().filter(|e| e.status == "completed").count();
                let doing = self
                    .plan
                    .iter()
                    .find(|e| e.status == "in_progress")
                    .map_or("", |e| e.content.as_str());
                let total = self.plan.len().max(1);
                self.ctx.progress(
                    (done * 100 / total).min(99) as u8,
                    &format!("plan {done}/{}: {}", self.plan.len(), shorten(doing, 80)),
                );
            }
            _ => return,
        }
        self.message_ended = true;
    }

    /// Answers a request the agent sent.
    fn serve(&mut self, id: Value, method: &str, params: Value) -> Result<(), String> {
        self.last_update = Instant::now();
        self.flush_speech(true);
        let result = match method {
            "session/request_permission" => self.permission(params),
            "elicitation/create" => self.elicit(params),
            "fs/read_text_file" => self.read_file(params),
            "fs/write_text_file" => self.write_file(params),
            "terminal/create" => self.create_terminal(params),
            "terminal/output" => self.terminal_output(params),
            "terminal/wait_for_exit" => {
                return match self.terminal_id(&params) {
                    Ok(terminal) => {
                        self.waiting.push((id, terminal));
                        self.answer_waits()
                    }
                    Err(err) => self.answer(id, Err(err)),
                };
            }
            "terminal/kill" => self.end_terminal(params, false),
            "terminal/release" => self.end_terminal(params, true),
            other => Err((
                METHOD_NOT_FOUND,
                format!("this client does not serve {other}"),
            )),
        };
        self.answer(id, result)
    }

    /// Logs a line the agent wrote outside the protocol (its stderr, or stdout that is not
    /// JSON), cut as a command's lines are, keeping it in the tail.
    fn note_stderr(&mut self, line: String) {
        let line = loggable(line);
        self.ctx.log(&line);
        self.tail.push_back(line);
        if self.tail.len() > TAIL_LINES {
            self.tail.pop_front();
        }
    }
}

impl Drop for Session<'_, '_> {
    fn drop(&mut self) {
        for terminal in self.terminals.values_mut() {
            terminal.kill();
        }
    }
}

/// `path` with every link resolved, if it exists (without Windows' `\\?\` prefix).
fn canonical(path: &Path) -> Option<PathBuf> {
    std::fs::canonicalize(path)
        .ok()
        .map(|p| dunce::simplified(&p).to_path_buf())
}

/// The error answer to a request whose parameters do not read as ACP's.
fn invalid(err: serde_json::Error) -> (i64, String) {
    (INVALID_PARAMS, err.to_string())
}

/// The error answer when an answer cannot be made into JSON.
fn internal(err: serde_json::Error) -> (i64, String) {
    (INTERNAL_ERROR, err.to_string())
}

fn content_kind(block: &acp::ContentBlock) -> &'static str {
    match block {
        acp::ContentBlock::Text(_) => "text",
        acp::ContentBlock::Image(_) => "image",
        acp::ContentBlock::Audio(_) => "audio",
        acp::ContentBlock::ResourceLink(_) => "resource link",
        acp::ContentBlock::Resource(_) => "resource",
        _ => "content",
    }
}

fn locations(locations: &[acp::ToolCallLocation]) -> String {
    if locations.is_empty() {
        return String::new();
    }
    let paths: Vec<String> = locations
        .iter()
        .map(|l| l.path.display().to_string())
        .collect();
    format!(" [{}]", paths.join(", "))
}

/// The text a tool call's content shows: its text blocks and the files its diffs change.
fn tool_output(content: &[acp::ToolCallContent]) -> String {
    content
        .iter()
        .filter_map(|c| match c {
            acp::ToolCallContent::Content(c) => match &c.content {
                acp::ContentBlock::Text(text) => Some(text.text.trim().to_string()),
                _ => None,
            },
            acp::ToolCallContent::Diff(diff) => Some(format!("diff of {}", diff.path.display())),
            acp::ToolCallContent::Terminal(t) => Some(format!("terminal {}", t.terminal_id)),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `argv` as an ACP agent in `dir` on `prompt`, answering its requests under
/// `permissions`, within `limits`. Fails with a message naming the program when it cannot be
/// started.
pub fn run(
    argv: &[String],
    dir: &Path,
    prompt: &str,
    resume: Option<Resumption<'_>>,
    role: &AcpRole,
    limits: Limits,
    ctx: &Context<'_>,
) -> Result<Finished, String> {
    let started = Instant::now();
    // Without a trailing separator: the agent is told this path as its session's folder.
    let dir: PathBuf = dir.components().collect();
    let dir = dir.as_path();
    let mut command = Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    ProcessGroup::prepare(&mut command);
    let mut child = command.spawn().map_err(|err| {
        if err.kind() == std::io::ErrorKind::NotFound && !dir.is_dir() {
            format!("the folder {} does not exist", dir.display())
        } else {
            format!("cannot start `{}`: {err}", argv[0])
        }
    })?;
    let mut group = ProcessGroup::of(&child);
    let (sender, incoming) = mpsc::channel();
    read_lines(
        child.stdout.take().expect("piped"),
        sender.clone(),
        Incoming::Message,
        true,
    );
    read_lines(
        child.stderr.take().expect("piped"),
        sender,
        Incoming::Stderr,
        false,
    );
    let root = canonical(dir).unwrap_or_else(|| dir.to_path_buf());
    let mut session = Session {
        ctx,
        dir: dir.to_path_buf(),
        root,
        permissions: &role.permissions,
        stdin: child.stdin.take(),
        next_id: 0,
        terminals_made: 0,
        cancelled: false,
        session_id: None,
        speaking: String::new(),
        final_message: String::new(),
        message_ended: false,
        plan: Vec::new(),
        tools: HashMap::new(),
        terminals: HashMap::new(),
        waiting: Vec::new(),
        tail: VecDeque::new(),
        last_update: Instant::now(),
        waited: Duration::ZERO,
        replaying: false,
    };
    let mut finished = Finished {
        stop_reason: None,
        error: None,
        timed_out: false,
        stalled: false,
        stop: None,
        duration: Duration::ZERO,
        final_message: String::new(),
        plan: Vec::new(),
        usage: json!({}),
        session: None,
        tail: String::new(),
    };
    let outcome = drive(
        &mut session,
        &incoming,
        dir,
        Prompts {
            fresh: prompt,
            resume,
        },
        role,
        limits,
        &mut finished,
    );
    if let Err(err) = outcome {
        finished.error.get_or_insert(err);
    }
    session.flush_speech(true);
    // The turn is over: the agent is told by its input closing, then ended with what it
    // started.
    drop(session.stdin.take());
    let deadline = Instant::now() + EXIT_GRACE;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => break None,
        }
    };
    match status {
        // Its id may be another process's by now; what it started in its group is killed.
        Some(_) => group.kill(),
        None => group.kill_all(),
    }
    let status = status.or_else(|| child.wait().ok());
    // What it said on stderr as it exited (its other messages are too late to matter).
    while let Ok(message) = incoming.recv_timeout(Duration::from_millis(50)) {
        if let Incoming::Stderr(line) = message {
            session.note_stderr(line);
        }
    }
    if finished.stop_reason.is_none()
        && finished.error.is_none()
        && finished.stop.is_none()
        && !finished.timed_out
        && !finished.stalled
    {
        finished.error = Some(match status.and_then(|s| s.code()) {
            Some(code) => format!("exited with code {code} before ending its turn"),
            None => "was killed before ending its turn".into(),
        });
    }
    finished.duration = started.elapsed();
    finished.final_message = std::mem::take(&mut session.final_message);
    finished.plan = std::mem::take(&mut session.plan);
    finished.session = session.session_id.take();
    finished.tail = session.tail.iter().cloned().collect::<Vec<_>>().join("\n");
    Ok(finished)
}

/// Reads `stream` line by line into `sender` (cut as a command's output is: see
/// [`Lines`]), each line made into a message by `make`; `Closed` follows the last when
/// `report_close`. A line over [`MAX_LINE`] is not passed on whole: the log says it was dropped.
fn read_lines<R: Read + Send + 'static>(
    mut stream: R,
    sender: Sender<Incoming>,
    make: fn(String) -> Incoming,
    report_close: bool,
) {
    let closed = sender.clone();
    let pass = move |line: Line| {
        sender.send(if line.dropped == 0 {
            make(line.text)
        } else {
            Incoming::Stderr(format!(
                "acp: a line of {} bytes from the agent is over the {} MiB a line may have: \
                 dropped",
                MAX_LINE + line.dropped,
                MAX_LINE >> 20
            ))
        })
    };
    std::thread::spawn(move || {
        let mut lines = Lines::default();
        let mut complete = Vec::new();
        let mut buffer = vec![0u8; READ_SIZE];
        loop {
            let read = match stream.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(read) => read,
            };
            lines.push(&buffer[..read], &mut complete);
            for line in complete.drain(..) {
                if pass(line).is_err() {
                    return;
                }
            }
        }
        if let Some(line) = lines.finish() {
            let _ = pass(line);
        }
        if report_close {
            let _ = closed.send(Incoming::Closed);
        }
    });
}

/// An earlier session to go on with (`session/load`), where the agent can: a rejected
/// attempt's, so that the agent keeps what it learned.
#[derive(Clone, Copy, Debug)]
pub struct Resumption<'a> {
    /// The agent's id of the session.
    pub session: &'a str,
    /// The prompt to send in it (which says that it goes on).
    pub prompt: &'a str,
}

/// The prompt of a new session, and an earlier session to go on with instead.
struct Prompts<'a> {
    fresh: &'a str,
    resume: Option<Resumption<'a>>,
}

/// The session from `initialize` to the prompt's answer, recorded in `finished`. An `Err` is a
/// broken session (the agent's input closed, an error answer to a setup request).
fn drive(
    session: &mut Session<'_, '_>,
    incoming: &Receiver<Incoming>,
    dir: &Path,
    prompts: Prompts<'_>,
    role: &AcpRole,
    limits: Limits,
    finished: &mut Finished,
) -> Result<(), String> {
    let started = Instant::now();
    let capabilities = acp::ClientCapabilities::new()
        .fs(acp::FileSystemCapabilities::new()
            .read_text_file(true)
            .write_text_file(true))
        .terminal(true)
        .elicitation(
            acp::ElicitationCapabilities::new().form(acp::ElicitationFormCapabilities::new()),
        );
    let initialize = acp::InitializeRequest::new(agent_client_protocol_schema::ProtocolVersion::V1)
        .client_capabilities(capabilities);
    let mut waiting_for = session.request(
        "initialize",
        serde_json::to_value(initialize).map_err(|e| e.to_string())?,
    )?;
    let mut stage = Stage::Initialize;
    // The prompt of the session opened: the fresh one unless an earlier session is loaded.
    let mut prompt = prompts.fresh;
    let new_session = |session: &mut Session<'_, '_>| -> Result<i64, String> {
        let request = acp::NewSessionRequest::new(dir.to_path_buf());
        session.request(
            "session/new",
            serde_json::to_value(request).map_err(|e| e.to_string())?,
        )
    };
    let mut cancelled_at: Option<Instant> = None;
    loop {
        // The host's stop, the time limit and the stall limit, checked between messages.
        if cancelled_at.is_none() && stop_due(session, limits, started, finished) {
            cancelled_at = Some(Instant::now());
            session.cancelled = true;
            let Some(id) = session.session_id.clone() else {
                return Ok(());
            };
            session.ctx.log("acp: cancelling the turn (session/cancel)");
            let _ = session.notify(
                "session/cancel",
                serde_json::to_value(acp::CancelNotification::new(id)).unwrap_or_default(),
            );
        }
        if cancelled_at.is_some_and(|at| at.elapsed() > CANCEL_GRACE) {
            session
                .ctx
                .log("acp: the agent did not end its turn after session/cancel; killing it");
            return Ok(());
        }
        session.answer_waits()?;
        let line = match incoming.recv_timeout(STOP_CHECK) {
            Ok(Incoming::Message(line)) => line,
            Ok(Incoming::Stderr(line)) => {
                session.note_stderr(line);
                continue;
            }
            Ok(Incoming::Closed) | Err(RecvTimeoutError::Disconnected) => return Ok(()),
            Err(RecvTimeoutError::Timeout) => {
                if session.last_update.elapsed() >= SPEECH_PAUSE {
                    session.flush_speech(true);
                }
                continue;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let message: Value = match serde_json::from_str(&line) {
            Ok(message) => message,
            Err(_) => {
                // Not JSON-RPC: something the agent printed; kept like its stderr.
                session.note_stderr(line);
                continue;
            }
        };
        let method = message["method"].as_str().map(String::from);
        let id = message.get("id").cloned().filter(|id| !id.is_null());
        match (method, id) {
            (Some(method), Some(id)) => session.serve(id, &method, message["params"].clone())?,
            (Some(method), None) if method == "session/update" => {
                session.update(message["params"].clone());
            }
            (None, Some(id)) if id.as_i64() == Some(waiting_for) => {
                if stage == Stage::Load {
                    session.replaying = false;
                    let resumed = prompts.resume.expect("loading a session");
                    if let Some(error) = message.get("error") {
                        session.ctx.log(&format!(
                            "acp: session {} could not be resumed ({}): a new session",
                            resumed.session,
                            error["message"].as_str().unwrap_or("an error")
                        ));
                        waiting_for = new_session(session)?;
                        stage = Stage::NewSession;
                        continue;
                    }
                }
                if let Some(error) = message.get("error") {
                    let text = error["message"].as_str().unwrap_or("an error").to_string();
                    let data = error
                        .get("data")
                        .filter(|d| !d.is_null())
                        .map(|d| format!(" ({})", shorten(&d.to_string(), 300)))
                        .unwrap_or_default();
                    return Err(format!(
                        "answered {} with an error: {text}{data}",
                        stage.method()
                    ));
                }
                let result = message["result"].clone();
                match stage {
                    Stage::Initialize => {
                        let loads = result["agentCapabilities"]["loadSession"] == true;
                        match prompts.resume {
                            Some(resumed) if loads => {
                                let request = acp::LoadSessionRequest::new(
                                    resumed.session.to_string(),
                                    dir.to_path_buf(),
                                );
                                session.replaying = true;
                                waiting_for = session.request(
                                    "session/load",
                                    serde_json::to_value(request).map_err(|e| e.to_string())?,
                                )?;
                                stage = Stage::Load;
                                continue;
                            }
                            Some(resumed) => session.ctx.log(&format!(
                                "acp: the agent cannot go on with session {} (it offers no \
                                 session/load): a new session",
                                resumed.session
                            )),
                            None => {}
                        }
                        waiting_for = new_session(session)?;
                        stage = Stage::NewSession;
                    }
                    Stage::NewSession => {
                        let created: acp::NewSessionResponse = serde_json::from_value(result)
                            .map_err(|err| format!("answered session/new with {err}"))?;
                        let id = created.session_id.to_string();
                        session.ctx.log(&format!(
                            "acp: session {id}{}",
                            modes_offered(created.modes.as_ref())
                        ));
                        prompt = prompts.fresh;
                        (waiting_for, stage) =
                            opened(session, id, created.modes.as_ref(), role, prompt)?;
                    }
                    Stage::Load => {
                        let loaded: acp::LoadSessionResponse = serde_json::from_value(result)
                            .map_err(|err| format!("answered session/load with {err}"))?;
                        let resumed = prompts.resume.expect("loading a session");
                        session.ctx.log(&format!(
                            "acp: session {} resumed (that of the rejected attempt){}",
                            resumed.session,
                            modes_offered(loaded.modes.as_ref())
                        ));
                        prompt = resumed.prompt;
                        (waiting_for, stage) = opened(
                            session,
                            resumed.session.to_string(),
                            loaded.modes.as_ref(),
                            role,
                            prompt,
                        )?;
                    }
                    // Stopped while it switched: no turn is started.
                    Stage::SetMode if session.cancelled => return Ok(()),
                    Stage::SetMode => {
                        waiting_for = send_prompt(session, prompt)?;
                        stage = Stage::Prompt;
                    }
                    Stage::Prompt => {
                        let answered: acp::PromptResponse = serde_json::from_value(result.clone())
                            .map_err(|err| format!("answered session/prompt with {err}"))?;
                        session.flush_speech(true);
                        session.ctx.log(&format!(
                            "acp: turn ended: {}",
                            wire_name(&answered.stop_reason)
                        ));
                        finished.usage = usage(&result);
                        finished.stop_reason = Some(answered.stop_reason);
                        return Ok(());
                    }
                }
            }
            // An answer to nothing this client waits for, or a message with neither.
            _ => {}
        }
    }
}

/// Whether the attempt must end now: the host stopped it, or its time or stall limit ran out
/// (noted in `finished`).
fn stop_due(
    session: &Session<'_, '_>,
    limits: Limits,
    started: Instant,
    finished: &mut Finished,
) -> bool {
    if let Some(stop) = session.ctx.stop_reason() {
        finished.stop = Some(stop);
    } else if limits
        .timeout
        .is_some_and(|t| started.elapsed().saturating_sub(session.waited) > t)
    {
        finished.timed_out = true;
    } else if limits
        .stall
        .is_some_and(|s| session.last_update.elapsed() > s)
        // An agent waiting for a command it ran is not stalled.
        && session.waiting.is_empty()
    {
        finished.stalled = true;
    } else {
        return false;
    }
    true
}

/// What the log says of a session's modes: " (mode auto of default, auto)", or nothing.
fn modes_offered(modes: Option<&acp::SessionModeState>) -> String {
    modes.map_or_else(String::new, |m| {
        let ids: Vec<String> = m.available_modes.iter().map(|a| a.id.to_string()).collect();
        format!(" (mode {} of {})", m.current_mode_id, ids.join(", "))
    })
}

/// Takes the session the agent opened or loaded: puts it in the role's mode where it is not
/// (the next step waits for that), else sends the prompt. Returns the request waited for and
/// its stage.
fn opened(
    session: &mut Session<'_, '_>,
    id: String,
    modes: Option<&acp::SessionModeState>,
    role: &AcpRole,
    prompt: &str,
) -> Result<(i64, Stage), String> {
    session.session_id = Some(id.clone());
    let is_offered = |mode: &str| {
        modes.is_some_and(|m| m.available_modes.iter().any(|a| a.id.to_string() == mode))
    };
    let current = modes.map(|m| m.current_mode_id.to_string());
    match role.mode.as_deref() {
        Some(mode) if current.as_deref() == Some(mode) => {}
        Some(mode) if is_offered(mode) => {
            session.ctx.log(&format!("acp: switching to mode {mode}"));
            let request = acp::SetSessionModeRequest::new(id, mode.to_string());
            let waiting_for = session.request(
                "session/set_mode",
                serde_json::to_value(request).map_err(|e| e.to_string())?,
            )?;
            return Ok((waiting_for, Stage::SetMode));
        }
        Some(mode) if role.mode_required => {
            let offered = match modes_offered(modes) {
                none if none.is_empty() => " (it names no modes)".to_string(),
                offered => offered,
            };
            return Err(format!(
                "offers no mode {mode:?} (the role's `mode`){offered}"
            ));
        }
        Some(mode) => session.ctx.log(&format!(
            "acp: the agent offers no mode {mode} (the preset's): left as it is"
        )),
        None => {}
    }
    Ok((send_prompt(session, prompt)?, Stage::Prompt))
}

/// Sends the task's prompt in the session; returns the request's id.
fn send_prompt(session: &mut Session<'_, '_>, prompt: &str) -> Result<i64, String> {
    let id = session.session_id.clone().ok_or("no session")?;
    let request = acp::PromptRequest::new(
        id,
        vec![acp::ContentBlock::Text(acp::TextContent::new(prompt))],
    );
    session.request(
        "session/prompt",
        serde_json::to_value(request).map_err(|e| e.to_string())?,
    )
}

/// The setup step the session is at: which request it waits to be answered.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Initialize,
    NewSession,
    Load,
    SetMode,
    Prompt,
}

impl Stage {
    fn method(self) -> &'static str {
        match self {
            Stage::Initialize => "initialize",
            Stage::NewSession => "session/new",
            Stage::Load => "session/load",
            Stage::SetMode => "session/set_mode",
            Stage::Prompt => "session/prompt",
        }
    }
}

/// The turn's tokens from the prompt's answer (`usage`, not yet part of ACP's stable schema),
/// as the stream modes record them: `inputTokens`, `outputTokens`.
fn usage(result: &Value) -> Value {
    let usage = &result["usage"];
    let mut recorded = serde_json::Map::new();
    for key in ["inputTokens", "outputTokens"] {
        if let Some(n) = usage[key].as_u64() {
            recorded.insert(key.into(), json!(n));
        }
    }
    Value::Object(recorded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_cut_as_a_commands_output_is_and_one_over_the_limit_is_dropped_saying_so() {
        let mut input = b"{\"a\":1}\r\n".to_vec();
        input.extend(vec![b'x'; MAX_LINE + 5]);
        input.extend(b"\nlast");
        let (sender, incoming) = mpsc::channel();
        read_lines(std::io::Cursor::new(input), sender, Incoming::Message, true);
        let got: Vec<String> = incoming
            .iter()
            .map(|message| match message {
                Incoming::Message(text) => format!("message {text}"),
                Incoming::Stderr(text) => format!("stderr {text}"),
                Incoming::Closed => "closed".into(),
            })
            .collect();
        assert_eq!(
            got.len(),
            4,
            "{:?}",
            got.iter().map(|g| shorten(g, 80)).collect::<Vec<_>>()
        );
        assert_eq!(got[0], "message {\"a\":1}");
        assert!(
            got[1].starts_with(&format!("stderr acp: a line of {} bytes", MAX_LINE + 5)),
            "{}",
            shorten(&got[1], 200)
        );
        assert_eq!(got[2..], ["message last", "closed"]);
    }
}
