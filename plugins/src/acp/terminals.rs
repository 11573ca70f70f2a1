//! The terminals ACP lets an agent run through its client: commands started in the attempt's
//! folder, each in a process group of its own, their output kept for the agent to read, and all
//! of them, with what they started, ended with the attempt.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_client_protocol_schema::v1 as acp;
use plugin_api::{Value, serde_json};

use super::{INVALID_PARAMS, REFUSED, Session, internal, invalid};
use crate::group::ProcessGroup;

/// The most output a terminal keeps, whatever limit the agent names.
const TERMINAL_OUTPUT_LIMIT: usize = 1024 * 1024;

/// How long a terminal's output may take to be read whole once its command has exited (what it
/// started in the background may hold its streams open).
const OUTPUT_DRAIN: Duration = Duration::from_millis(500);

/// A command the agent started through `terminal/create`.
pub(super) struct Terminal {
    child: Child,
    group: ProcessGroup,
    output: Arc<Mutex<TerminalOutput>>,
    exit: Option<acp::TerminalExitStatus>,
}

/// A terminal's output, as bytes (a character may arrive in two reads), cut from the front to
/// its byte limit.
struct TerminalOutput {
    bytes: Vec<u8>,
    limit: usize,
    truncated: bool,
    /// How many of the command's streams are still open.
    open: usize,
}

impl TerminalOutput {
    fn push(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
        if self.bytes.len() > self.limit {
            let cut = self.bytes.len() - self.limit;
            self.bytes.drain(..cut);
            self.truncated = true;
        }
    }

    /// The output as text, from a whole character where the front was cut.
    fn text(&self) -> String {
        // UTF-8's continuation bytes are 0b10xxxxxx.
        let start = if self.truncated {
            self.bytes
                .iter()
                .position(|b| b & 0xC0 != 0x80)
                .unwrap_or(self.bytes.len())
        } else {
            0
        };
        String::from_utf8_lossy(&self.bytes[start..]).into_owned()
    }
}

/// ACP's exit status of a command.
fn exit_status(status: ExitStatus) -> acp::TerminalExitStatus {
    let exit = acp::TerminalExitStatus::new().exit_code(status.code().map(|c| c as u32));
    #[cfg(unix)]
    let exit = {
        use std::os::unix::process::ExitStatusExt;
        exit.signal(status.signal().map(|s| s.to_string()))
    };
    exit
}

impl Terminal {
    /// Its exit status, once it has exited (looked at without waiting).
    fn exited(&mut self) -> Option<acp::TerminalExitStatus> {
        if self.exit.is_none()
            && let Ok(Some(status)) = self.child.try_wait()
        {
            self.exit = Some(exit_status(status));
            // What it wrote just before it exited is read before its exit is told.
            let deadline = Instant::now() + OUTPUT_DRAIN;
            while self.output.lock().expect("terminal output lock").open > 0
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        self.exit.clone()
    }

    /// Ends the command and whatever it started, what it left in the background included.
    pub(super) fn kill(&mut self) {
        if self.exit.is_none() {
            self.group.kill_all();
            if let Ok(status) = self.child.wait() {
                self.exit = Some(exit_status(status));
            }
        } else {
            // Its own process is gone; what it started in its group may not be.
            self.group.kill();
        }
    }
}

/// Copies a terminal's stream into its kept output until it closes.
fn copy_into(mut stream: Box<dyn Read + Send>, output: &Mutex<TerminalOutput>) {
    let mut buffer = [0u8; 8192];
    while let Ok(n) = stream.read(&mut buffer) {
        if n == 0 {
            break;
        }
        output
            .lock()
            .expect("terminal output lock")
            .push(&buffer[..n]);
    }
    output.lock().expect("terminal output lock").open -= 1;
}

impl Session<'_, '_> {
    /// Serves `terminal/create`: the command in the folder (or a `cwd` inside it), in a process
    /// group of its own, its output kept up to its limit (at most [`TERMINAL_OUTPUT_LIMIT`]);
    /// refused once the turn is being cancelled.
    pub(super) fn create_terminal(&mut self, params: Value) -> Result<Value, (i64, String)> {
        let request: acp::CreateTerminalRequest =
            serde_json::from_value(params).map_err(invalid)?;
        self.refuse_when_cancelled("run", Path::new(&request.command))?;
        let cwd = match &request.cwd {
            Some(cwd) => self.inside("run a command in", cwd)?,
            None => self.root.clone(),
        };
        let mut command = Command::new(&request.command);
        command
            .args(&request.args)
            .current_dir(&cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for var in &request.env {
            command.env(&var.name, &var.value);
        }
        ProcessGroup::prepare(&mut command);
        let shown = std::iter::once(request.command.as_str())
            .chain(request.args.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ");
        let mut child = command.spawn().map_err(|err| {
            self.ctx
                .log(&format!("terminal: cannot start `{shown}`: {err}"));
            (REFUSED, format!("cannot start {}: {err}", request.command))
        })?;
        let group = ProcessGroup::of(&child);
        let output = Arc::new(Mutex::new(TerminalOutput {
            bytes: Vec::new(),
            limit: request
                .output_byte_limit
                .map_or(TERMINAL_OUTPUT_LIMIT, |n| n as usize)
                .min(TERMINAL_OUTPUT_LIMIT),
            truncated: false,
            open: 0,
        }));
        let streams: Vec<Box<dyn Read + Send>> = [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        .collect();
        output.lock().expect("terminal output lock").open = streams.len();
        for stream in streams {
            let output = Arc::clone(&output);
            std::thread::spawn(move || copy_into(stream, &output));
        }
        self.terminals_made += 1;
        let id = format!("term-{}", self.terminals_made);
        self.ctx.log(&format!("terminal {id}: {shown}"));
        self.terminals.insert(
            id.clone(),
            Terminal {
                child,
                group,
                output,
                exit: None,
            },
        );
        serde_json::to_value(acp::CreateTerminalResponse::new(id)).map_err(internal)
    }

    /// The terminal a request names, if it is one of this session's.
    pub(super) fn terminal_id(&self, params: &Value) -> Result<String, (i64, String)> {
        let id = params["terminalId"]
            .as_str()
            .ok_or_else(|| (INVALID_PARAMS, "no terminalId".to_string()))?;
        if self.terminals.contains_key(id) {
            Ok(id.to_string())
        } else {
            Err((INVALID_PARAMS, format!("no terminal {id}")))
        }
    }

    /// Serves `terminal/output`: what the command printed so far, and its exit once it exited.
    pub(super) fn terminal_output(&mut self, params: Value) -> Result<Value, (i64, String)> {
        let id = self.terminal_id(&params)?;
        let terminal = self.terminals.get_mut(&id).expect("checked");
        let exit = terminal.exited();
        let output = terminal.output.lock().expect("terminal output lock");
        let response =
            acp::TerminalOutputResponse::new(output.text(), output.truncated).exit_status(exit);
        serde_json::to_value(response).map_err(internal)
    }

    /// `terminal/kill` (the command ends, its output kept) or `terminal/release` (forgotten).
    /// A release answers the requests still waiting for the command's exit first.
    pub(super) fn end_terminal(
        &mut self,
        params: Value,
        release: bool,
    ) -> Result<Value, (i64, String)> {
        let id = self.terminal_id(&params)?;
        if release {
            self.terminals.get_mut(&id).expect("checked").kill();
            self.answer_waits().map_err(|err| (REFUSED, err))?;
            self.terminals.remove(&id);
            serde_json::to_value(acp::ReleaseTerminalResponse::new()).map_err(internal)
        } else {
            self.terminals.get_mut(&id).expect("checked").kill();
            serde_json::to_value(acp::KillTerminalResponse::new()).map_err(internal)
        }
    }

    /// Answers the `terminal/wait_for_exit` requests whose command has exited.
    pub(super) fn answer_waits(&mut self) -> Result<(), String> {
        let mut done = Vec::new();
        for (index, (_, id)) in self.waiting.iter().enumerate() {
            if let Some(exit) = self.terminals.get_mut(id).and_then(Terminal::exited) {
                done.push((index, exit));
            }
        }
        for (index, exit) in done.into_iter().rev() {
            let (request, id) = self.waiting.remove(index);
            self.ctx.log(&format!(
                "terminal {id}: exited{}",
                exit.exit_code
                    .map(|c| format!(" with code {c}"))
                    .unwrap_or_default()
            ));
            let response = serde_json::to_value(acp::WaitForTerminalExitResponse::new(exit))
                .map_err(|err| err.to_string())?;
            self.answer(request, Ok(response))?;
        }
        Ok(())
    }
}
