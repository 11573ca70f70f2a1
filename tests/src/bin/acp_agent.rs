//! `acp-agent`: a scripted stand-in for a real coding agent (Copilot CLI `--acp`,
//! Gemini CLI, ...) speaking the Agent Client Protocol over stdin/stdout: JSON-RPC
//! 2.0, one JSON object per line. The integration tests start it in place of an
//! agent; every payload is built from / parsed into `agent_client_protocol_schema::v1`
//! types, so the messages follow the real schema.
//!
//! It answers `initialize` (protocol version 1, default capabilities and `loadSession`),
//! `session/new` (session id `acp-session-1`; the request's `cwd` becomes the base for
//! relative paths), `session/load` (of `acp-session-1` only, and not when
//! `ACP_AGENT_REFUSE_LOAD` is set: it replays the message "(replayed) what was said
//! before") and `session/prompt`, whose text (all text blocks concatenated) is a
//! script of directives `[[acp VERB ARGS]]` (each ends at the next `]]`), run in
//! order. Without any directive the prompt answers one agent message "done".
//! After the last directive the stop reason is `end_turn`.
//!
//! - `say TEXT` / `think TEXT`: an `agent_message_chunk` / `agent_thought_chunk`.
//! - `plan S:TEXT; S:TEXT; ...`: a `plan` update, S = pending|in_progress|completed,
//!   priority medium.
//! - `write PATH CONTENT`: `tool_call` `call-N` (kind edit, title "Write PATH",
//!   location PATH), `session/request_permission` with the options `allow_once`,
//!   `allow_always`, `reject_once`, `reject_always`; if allowed `fs/write_text_file`
//!   (CONTENT = all the rest after PATH and one blank), then `tool_call_update`
//!   completed, or failed plus the message "write refused: ERROR". Rejected:
//!   `tool_call_update` failed plus "permission rejected for write PATH". Outcome
//!   `cancelled`: the prompt ends with stop reason `cancelled`.
//! - `read PATH`: `fs/read_text_file`, then the message "read PATH: CONTENT" or
//!   "read refused: ERROR".
//! - `run PROGRAM ARGS...`: like `write` (kind execute, title "Run PROGRAM ARGS");
//!   if allowed `terminal/create` (cwd = session cwd), `terminal/wait_for_exit`,
//!   `terminal/output`, `terminal/release`, `tool_call_update` completed and the
//!   message "ran PROGRAM: exit CODE output OUTPUT". A cancel while waiting for the exit
//!   sends `terminal/kill` and `terminal/release` (answers not awaited).
//! - `ask TEXT`: a permission request for a tool call titled TEXT (kind other), then
//!   the message "answer: OPTION_ID" (or "answer: cancelled").
//! - `elicit TEXT`: `elicitation/create`, a form titled TEXT asking for `answer` (a
//!   string, required) and `count` (an integer), then the message "elicited: ACTION"
//!   followed by the content's fields as `NAME=VALUE`, comma-separated.
//! - `sleep MS`, `wait-cancel`: wait; a `session/cancel` ends the prompt `cancelled`.
//! - `usage INPUT OUTPUT`: the message "usage INPUT OUTPUT" (the `PromptResponse`
//!   usage field is behind an unstable feature of the crate).
//! - `stop REASON`: end now with end_turn|max_tokens|max_turn_requests|refusal|cancelled.
//! - `error TEXT`: answer the prompt with the JSON-RPC error -32603 TEXT.
//! - `exit CODE`: exit at once with CODE, without answering.
//! - `spawn-sleeper`: start `sleep 1000` as our own child, message "sleeper PID".
//!
//! Paths sent to the client (fs requests, tool call locations) are PATH made absolute
//! against the session cwd; messages and titles show PATH as written.
//! A `session/cancel` is noticed between directives and while waiting (sleep,
//! wait-cancel, any request to the client): the prompt then ends with `cancelled`.
//! If `ACP_AGENT_RECORD` names a file, every line received is appended to it as is.
//! stdin closing ends the process with status 0.

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant};

use agent_client_protocol_schema::ProtocolVersion;
use agent_client_protocol_schema::v1::*;
use serde_json::{Value, json};

const SESSION_ID: &str = "acp-session-1";

/// `call!(agent, METHOD, REQUEST => RESPONSE_TYPE)`: [`Agent::call`], typed.
macro_rules! call {
    ($agent:expr, $method:literal, $req:expr => $resp:ty) => {
        $agent.call($method, json!($req), serde_json::from_value::<$resp>)
    };
}

/// A message from the client, sorted by JSON-RPC shape.
enum Incoming {
    Request(RequestId, String, Value),
    Notification(String),
    Response(RequestId, Result<Value, Error>),
}

/// Why a prompt's script ended early.
enum End {
    Stop(StopReason),
    Fail(String),
}

const CANCELLED: End = End::Stop(StopReason::Cancelled);

fn main() {
    let (tx, rx) = channel();
    std::thread::spawn(move || read_stdin(&tx));
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let (deferred, sleepers) = (VecDeque::new(), Vec::new());
    let mut agent = Agent {
        rx,
        deferred,
        next_id: 0,
        next_call: 0,
        cwd,
        cancelled: false,
        sleepers,
    };
    loop {
        let msg = match agent.deferred.pop_front() {
            Some(msg) => msg,
            None => agent.rx.recv().unwrap_or_else(|_| std::process::exit(0)),
        };
        match msg {
            Incoming::Request(id, method, params) => respond(id, agent.answer(&method, params)),
            Incoming::Notification(_) => {} // a cancel with no prompt running: nothing to do
            Incoming::Response(id, _) => eprintln!("acp-agent: late or unknown response {id}"),
        }
    }
}

/// The reader thread: records and classifies each line of stdin.
fn read_stdin(tx: &Sender<Incoming>) {
    let record = std::env::var_os("ACP_AGENT_RECORD").map(|path| {
        let file = OpenOptions::new().create(true).append(true).open(&path);
        file.map_err(|e| eprintln!("acp-agent: cannot open {path:?}: {e}"))
    });
    let mut record = record.and_then(Result::ok);
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        if let Some(file) = record.as_mut() {
            let _ = writeln!(file, "{line}").and_then(|()| file.flush());
        }
        let Some(msg) = classify(&line) else {
            eprintln!("acp-agent: malformed message: {line}");
            continue;
        };
        if tx.send(msg).is_err() {
            break;
        }
    }
}

fn classify(line: &str) -> Option<Incoming> {
    let mut msg: Value = serde_json::from_str(line).ok()?;
    let id: Option<Option<RequestId>> = msg
        .get("id")
        .map(|id| serde_json::from_value(id.clone()).ok());
    if let Some(method) = msg.get("method").and_then(Value::as_str).map(str::to_owned) {
        let params = msg.get_mut("params").map_or(Value::Null, Value::take);
        return Some(match id {
            Some(id) => Incoming::Request(id?, method, params),
            None => Incoming::Notification(method),
        });
    }
    let result = match msg.get_mut("error") {
        Some(error) => Err(serde_json::from_value(error.take()).ok()?),
        None => Ok(msg.get_mut("result")?.take()),
    };
    Some(Incoming::Response(id.flatten()?, result))
}

fn send(message: Value) {
    let mut out = std::io::stdout().lock();
    let written = writeln!(out, "{message}").and_then(|()| out.flush());
    if written.is_err() {
        std::process::exit(0); // the client is gone
    }
}

fn respond(id: RequestId, result: Result<Value, Error>) {
    send(json!(JsonRpcMessage::wrap(Response::new(id, result))));
}

fn permission_options() -> Vec<PermissionOption> {
    use PermissionOptionKind::*;
    vec![
        PermissionOption::new("allow_once", "Allow once", AllowOnce),
        PermissionOption::new("allow_always", "Allow always", AllowAlways),
        PermissionOption::new("reject_once", "Reject once", RejectOnce),
        PermissionOption::new("reject_always", "Reject always", RejectAlways),
    ]
}

fn status_update(call_id: &str, status: ToolCallStatus) -> SessionUpdate {
    SessionUpdate::ToolCallUpdate(ToolCallUpdate::new(
        call_id.to_owned(),
        ToolCallUpdateFields::new().status(status),
    ))
}

struct Agent {
    rx: Receiver<Incoming>,
    /// Client requests that arrived while a prompt ran; handled after it.
    deferred: VecDeque<Incoming>,
    next_id: i64,
    next_call: u32,
    cwd: PathBuf,
    cancelled: bool,
    sleepers: Vec<Child>,
}

impl Agent {
    /// The answer to a client request.
    fn answer(&mut self, method: &str, params: Value) -> Result<Value, Error> {
        match method {
            "initialize" => {
                let _: InitializeRequest = serde_json::from_value(params)?;
                let caps = AgentCapabilities::new().load_session(true);
                let info = Implementation::new("acp-agent", "0.1.0");
                let response = InitializeResponse::new(ProtocolVersion::V1);
                Ok(json!(response.agent_capabilities(caps).agent_info(info)))
            }
            "session/new" => {
                let req: NewSessionRequest = serde_json::from_value(params)?;
                self.cwd = req.cwd;
                Ok(json!(NewSessionResponse::new(SESSION_ID)))
            }
            "session/load" => {
                let req: LoadSessionRequest = serde_json::from_value(params)?;
                if std::env::var_os("ACP_AGENT_REFUSE_LOAD").is_some()
                    || req.session_id.to_string() != SESSION_ID
                {
                    return Err(Error::invalid_params().data(json!("no such session here")));
                }
                self.cwd = req.cwd;
                // The conversation so far, replayed as ACP asks of a loaded session.
                self.message("(replayed) what was said before");
                Ok(json!(LoadSessionResponse::new()))
            }
            "session/prompt" => self.prompt(&serde_json::from_value(params)?),
            _ => Err(Error::method_not_found()),
        }
    }

    fn prompt(&mut self, req: &PromptRequest) -> Result<Value, Error> {
        self.cancelled = false;
        let text: String = req
            .prompt
            .iter()
            .filter_map(|block| match block {
                ContentBlock::Text(t) => Some(t.text.as_str()),
                _ => None,
            })
            .collect();
        let mut directives = Vec::new();
        let mut rest = text.as_str();
        while let Some(start) = rest.find("[[acp") {
            let body = &rest[start + 5..];
            let end = body.find("]]").unwrap_or(body.len());
            directives.push(body[..end].trim().to_owned());
            rest = body.get(end + 2..).unwrap_or("");
        }
        if directives.is_empty() {
            self.message("done");
        }
        let outcome = directives.iter().try_for_each(|directive| {
            self.poll_cancel()?;
            self.run_directive(directive)
        });
        match outcome {
            Ok(()) => Ok(json!(PromptResponse::new(StopReason::EndTurn))),
            Err(End::Stop(reason)) => Ok(json!(PromptResponse::new(reason))),
            Err(End::Fail(text)) => Err(Error::new(-32603, text)),
        }
    }

    fn run_directive(&mut self, directive: &str) -> Result<(), End> {
        let (verb, args) = directive
            .split_once(char::is_whitespace)
            .unwrap_or((directive, ""));
        let args = args.trim_start();
        let words: Vec<&str> = args.split_whitespace().collect();
        match verb {
            "say" => self.message(args),
            "think" => self.update(SessionUpdate::AgentThoughtChunk(ContentChunk::new(
                args.into(),
            ))),
            "plan" => {
                let entries = args
                    .split(';')
                    .filter(|e| !e.trim().is_empty())
                    .map(|entry| {
                        let (status, text) = entry.split_once(':').unwrap_or(("pending", entry));
                        let status =
                            serde_json::from_value(json!(status.trim())).unwrap_or_else(|_| {
                                eprintln!("acp-agent: unknown plan status {status:?}");
                                PlanEntryStatus::Pending
                            });
                        PlanEntry::new(text.trim(), PlanEntryPriority::Medium, status)
                    });
                self.update(SessionUpdate::Plan(Plan::new(entries.collect())));
            }
            "write" => {
                let (path, content) = args.split_once(char::is_whitespace).unwrap_or((args, ""));
                let tool = self
                    .tool_call(format!("Write {path}"), ToolKind::Edit)
                    .locations(vec![ToolCallLocation::new(self.absolute(path))]);
                let Some(call_id) = self.permitted(tool, &format!("write {path}"))? else {
                    return Ok(());
                };
                let req = WriteTextFileRequest::new(SESSION_ID, self.absolute(path), content);
                match call!(self, "fs/write_text_file", req => WriteTextFileResponse)? {
                    Ok(_) => self.update(status_update(&call_id, ToolCallStatus::Completed)),
                    Err(e) => {
                        self.update(status_update(&call_id, ToolCallStatus::Failed));
                        self.message(&format!("write refused: {e}"));
                    }
                }
            }
            "read" => {
                let req = ReadTextFileRequest::new(SESSION_ID, self.absolute(args));
                match call!(self, "fs/read_text_file", req => ReadTextFileResponse)? {
                    Ok(resp) => self.message(&format!("read {args}: {}", resp.content)),
                    Err(e) => self.message(&format!("read refused: {e}")),
                }
            }
            "run" => self.run(&words)?,
            "ask" => {
                let tool = self.tool_call(args.to_owned(), ToolKind::Other);
                let answer = match self.ask_permission(tool)? {
                    Ok(Some(option_id)) => option_id,
                    Ok(None) => "cancelled".to_owned(),
                    Err(e) => format!("error: {e}"),
                };
                self.message(&format!("answer: {answer}"));
            }
            "elicit" => {
                let schema = ElicitationSchema::new()
                    .string("answer", true)
                    .integer("count", 0, 100, false);
                let form =
                    ElicitationFormMode::new(ElicitationSessionScope::new(SESSION_ID), schema);
                let req = CreateElicitationRequest::new(form, args.to_owned());
                let said = match call!(self, "elicitation/create", req => CreateElicitationResponse)?
                {
                    Ok(resp) => match resp.action {
                        ElicitationAction::Accept(accept) => {
                            let content: Vec<String> = accept
                                .content
                                .unwrap_or_default()
                                .into_iter()
                                .map(|(name, value)| format!("{name}={}", json!(value)))
                                .collect();
                            format!("elicited: accept {}", content.join(","))
                        }
                        ElicitationAction::Decline => "elicited: decline".to_owned(),
                        ElicitationAction::Cancel => "elicited: cancel".to_owned(),
                        other => format!("elicited: {other:?}"),
                    },
                    Err(e) => format!("elicit failed: {e}"),
                };
                self.message(&said);
            }
            "sleep" => {
                let ms = args.parse().unwrap_or_else(|_| {
                    eprintln!("acp-agent: bad sleep duration {args:?}");
                    0
                });
                self.wait(None, Some(Instant::now() + Duration::from_millis(ms)))?;
            }
            "wait-cancel" => {
                self.wait(None, None)?;
            }
            "usage" => self.message(&format!("usage {args}")),
            "stop" => {
                let reason = serde_json::from_value(json!(args)).unwrap_or_else(|_| {
                    eprintln!("acp-agent: unknown stop reason {args:?}");
                    StopReason::EndTurn
                });
                return Err(End::Stop(reason));
            }
            "error" => return Err(End::Fail(args.to_owned())),
            "exit" => std::process::exit(args.parse().unwrap_or(1)),
            "spawn-sleeper" => {
                let mut sleeper = Command::new("sleep");
                sleeper
                    .arg("1000")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                match sleeper.spawn() {
                    Ok(child) => {
                        self.message(&format!("sleeper {}", child.id()));
                        self.sleepers.push(child);
                    }
                    Err(e) => eprintln!("acp-agent: cannot spawn sleep: {e}"),
                }
            }
            _ => eprintln!("acp-agent: unknown directive {directive:?}"),
        }
        Ok(())
    }

    /// `run PROGRAM ARGS...` through the client's terminal methods.
    fn run(&mut self, words: &[&str]) -> Result<(), End> {
        let Some((program, program_args)) = words.split_first() else {
            eprintln!("acp-agent: run without a program");
            return Ok(());
        };
        let command_line = words.join(" ");
        let tool = self.tool_call(format!("Run {command_line}"), ToolKind::Execute);
        let Some(call_id) = self.permitted(tool, &format!("run {command_line}"))? else {
            return Ok(());
        };
        let args = program_args.iter().map(|a| (*a).to_owned()).collect();
        let req = CreateTerminalRequest::new(SESSION_ID, *program)
            .args(args)
            .cwd(self.cwd.clone());
        let terminal = match call!(self, "terminal/create", req => CreateTerminalResponse)? {
            Ok(resp) => resp.terminal_id,
            Err(e) => {
                self.update(status_update(&call_id, ToolCallStatus::Failed));
                self.message(&format!("run refused: {e}"));
                return Ok(());
            }
        };
        let req = WaitForTerminalExitRequest::new(SESSION_ID, terminal.clone());
        let exited = match call!(self, "terminal/wait_for_exit", req => WaitForTerminalExitResponse)
        {
            Ok(exited) => exited,
            Err(end) => {
                // Cancelled while the command runs: kill and release it, without waiting for the answers.
                let kill = KillTerminalRequest::new(SESSION_ID, terminal.clone());
                self.send_request("terminal/kill", json!(kill));
                let release = ReleaseTerminalRequest::new(SESSION_ID, terminal);
                self.send_request("terminal/release", json!(release));
                return Err(end);
            }
        };
        let req = TerminalOutputRequest::new(SESSION_ID, terminal.clone());
        let output = call!(self, "terminal/output", req => TerminalOutputResponse)?;
        let req = ReleaseTerminalRequest::new(SESSION_ID, terminal);
        let released = call!(self, "terminal/release", req => ReleaseTerminalResponse)?;
        match (exited, output, released) {
            (Ok(exit), Ok(output), Ok(_)) => {
                let status = exit.exit_status;
                let code = match (status.exit_code, status.signal) {
                    (Some(code), _) => code.to_string(),
                    (None, Some(signal)) => format!("signal {signal}"),
                    (None, None) => "unknown".to_owned(),
                };
                self.update(status_update(&call_id, ToolCallStatus::Completed));
                self.message(&format!(
                    "ran {program}: exit {code} output {}",
                    output.output
                ));
            }
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                self.update(status_update(&call_id, ToolCallStatus::Failed));
                self.message(&format!("run failed: {e}"));
            }
        }
        Ok(())
    }

    /// A new tool call `call-N` (status pending); not yet sent.
    fn tool_call(&mut self, title: String, kind: ToolKind) -> ToolCall {
        self.next_call += 1;
        ToolCall::new(format!("call-{}", self.next_call), title)
            .kind(kind)
            .status(ToolCallStatus::Pending)
    }

    /// `session/request_permission` for `tool`: the selected option id, `None` if cancelled.
    fn ask_permission(&mut self, tool: ToolCall) -> Result<Result<Option<String>, String>, End> {
        let req = RequestPermissionRequest::new(SESSION_ID, tool.into(), permission_options());
        let resp = call!(self, "session/request_permission", req => RequestPermissionResponse)?;
        Ok(resp.map(|resp| match resp.outcome {
            RequestPermissionOutcome::Selected(s) => Some(s.option_id.to_string()),
            _ => None,
        }))
    }

    /// Announces `tool` and asks permission for it: `Some(call id)` if an allow option was
    /// chosen; a rejection is reported (failed update + message) and gives `None`.
    fn permitted(&mut self, tool: ToolCall, what: &str) -> Result<Option<String>, End> {
        let call_id = tool.tool_call_id.to_string();
        self.update(SessionUpdate::ToolCall(tool.clone()));
        let failure = match self.ask_permission(tool)? {
            Ok(Some(option_id)) if option_id.starts_with("allow_") => return Ok(Some(call_id)),
            Ok(Some(_)) => format!("permission rejected for {what}"),
            Ok(None) => return Err(CANCELLED),
            Err(e) => format!("permission request failed: {e}"),
        };
        self.update(status_update(&call_id, ToolCallStatus::Failed));
        self.message(&failure);
        Ok(None)
    }

    fn absolute(&self, path: &str) -> PathBuf {
        if Path::new(path).is_absolute() {
            PathBuf::from(path)
        } else {
            self.cwd.join(path)
        }
    }

    fn update(&mut self, update: SessionUpdate) {
        let note = SessionNotification::new(SESSION_ID, update);
        send(json!(JsonRpcMessage::wrap(Notification {
            method: "session/update".into(),
            params: Some(note)
        })));
    }

    fn message(&mut self, text: &str) {
        self.update(SessionUpdate::AgentMessageChunk(ContentChunk::new(
            text.into(),
        )));
    }

    /// Sends a request to the client; returns its id.
    fn send_request(&mut self, method: &str, params: Value) -> RequestId {
        self.next_id += 1;
        let id = RequestId::Number(self.next_id);
        send(json!(JsonRpcMessage::wrap(Request {
            id: id.clone(),
            method: method.into(),
            params: Some(params)
        })));
        id
    }

    /// A request to the client and its decoded answer (`Err` = the client's error message).
    /// A `session/cancel` while waiting ends the prompt.
    fn call<R>(
        &mut self,
        method: &str,
        params: Value,
        decode: fn(Value) -> serde_json::Result<R>,
    ) -> Result<Result<R, String>, End> {
        let id = self.send_request(method, params);
        Ok(match self.wait(Some(&id), None)? {
            Some(Ok(result)) => decode(result).map_err(|e| format!("bad {method} result: {e}")),
            Some(Err(error)) => Err(error.message),
            None => unreachable!("no deadline"),
        })
    }

    /// Takes in the messages already received without blocking; `Err` if a cancel is among them.
    fn poll_cancel(&mut self) -> Result<(), End> {
        self.wait(None, Some(Instant::now())).map(|_| ())
    }

    /// Waits for the response to `want` (`Some`), the `deadline` (`None`), or a cancel (`Err`).
    /// Other client requests are deferred until the prompt is answered.
    fn wait(
        &mut self,
        want: Option<&RequestId>,
        deadline: Option<Instant>,
    ) -> Result<Option<Result<Value, Error>>, End> {
        loop {
            if self.cancelled {
                return Err(CANCELLED);
            }
            let msg = match deadline {
                None => self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(deadline) => self
                    .rx
                    .recv_timeout(deadline.saturating_duration_since(Instant::now())),
            };
            match msg {
                Err(RecvTimeoutError::Disconnected) => std::process::exit(0),
                Err(RecvTimeoutError::Timeout) => return Ok(None),
                Ok(Incoming::Notification(method)) => self.cancelled |= method == "session/cancel",
                Ok(Incoming::Response(id, result)) if Some(&id) == want => {
                    return Ok(Some(result));
                }
                Ok(Incoming::Response(id, _)) => {
                    eprintln!("acp-agent: late or unknown response {id}")
                }
                Ok(request) => self.deferred.push_back(request),
            }
        }
    }
}
