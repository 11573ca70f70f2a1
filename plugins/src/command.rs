//! Running an external command for a task: argument vector (never a shell), its own process
//! group, output streamed to the task log line by line with the last lines kept, killed with
//! everything it started when its time runs out, when it stalls, or when the task is stopped.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use plugin_api::{Context, StopReason, Task};

use crate::group::ProcessGroup;

/// How many lines of output a result keeps.
const TAIL_LINES: usize = 40;

/// When a run is cut short. `None` leaves it to the host: the worker times the task and asks
/// the handler to stop (see [`Finished::stop`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct Limits {
    /// The longest the command may run.
    pub timeout: Option<Duration>,
    /// The longest the command may go without printing a line.
    pub stall: Option<Duration>,
}

/// How a command run ended.
pub struct Finished {
    /// Its exit status.
    pub status: ExitStatus,
    /// How long it ran.
    pub duration: Duration,
    /// Whether it was killed because [`Limits::timeout`] ran out.
    pub timed_out: bool,
    /// Whether it was killed because it printed nothing for [`Limits::stall`].
    pub stalled: bool,
    /// Why it was killed at the host's request (cancel, the worker's timeout, shutdown).
    pub stop: Option<StopReason>,
    /// The last lines of its output (stdout and stderr in the order it wrote them).
    pub tail: String,
    /// The last line of output that reads like a complaint ("Error: ...", "Not logged in"),
    /// else the last that says anything (not blank, not only punctuation; escape codes
    /// removed): usually why a command failed.
    pub last_words: Option<String>,
}

impl Limits {
    /// The limits of a task's run: a task with a time limit (its own, or its role's, which the
    /// worker puts in `timeout_secs`) is timed by the worker alone, which asks the handler to
    /// stop; one without is timed here, with `default`. One timer decides, so a timed-out
    /// attempt always ends through the handler, which keeps what the command printed.
    pub fn for_task(task: &Task, default: Duration, stall: Option<Duration>) -> Limits {
        Limits {
            timeout: task.timeout_secs.is_none().then_some(default),
            stall,
        }
    }
}

impl Finished {
    /// Why the run failed, one line starting with `what` (for example "`cargo test`") and
    /// ending with the command's last meaningful output; `None` when it succeeded.
    pub fn failure(&self, what: &str, limits: Limits) -> Option<String> {
        let secs = |d: Option<Duration>| d.unwrap_or_default().as_secs();
        let exited = self.stop.is_none() && !self.timed_out && !self.stalled;
        let how = match (self.stop, self.status.code()) {
            _ if self.timed_out => format!(
                "{what} ran past its time limit of {}s and was killed",
                secs(limits.timeout)
            ),
            _ if self.stalled => format!(
                "{what} printed nothing for {}s and was killed as stalled",
                secs(limits.stall)
            ),
            (Some(StopReason::TimedOut), _) => {
                format!("{what} was killed at the task's time limit")
            }
            (Some(StopReason::Cancelled), _) => {
                format!("{what} was stopped: the task was cancelled")
            }
            (Some(StopReason::Shutdown), _) => {
                format!("{what} was stopped: the worker is shutting down")
            }
            (None, Some(0)) => return None,
            (None, Some(code)) => format!("{what} exited with code {code}"),
            (None, None) => format!("{what} was killed by a signal"),
        };
        // An exit's reason is usually the last thing said; a kill's only shows where it was.
        Some(match &self.last_words {
            Some(words) if exited => format!("{how}: {words}"),
            Some(words) => format!("{how}; its last output: {words}"),
            None => format!("{how} (it printed nothing)"),
        })
    }
}

/// Runs `argv` in `dir`, feeding it `stdin`, within `limits`. Fails with a message naming the
/// program when it cannot be started (for example, it is not on `PATH`), and the folder when
/// that is what is missing.
pub fn run(
    argv: &[String],
    dir: &Path,
    stdin: Option<&str>,
    limits: Limits,
    ctx: &Context<'_>,
) -> Result<Finished, String> {
    run_rendered(argv, dir, stdin, limits, ctx, &mut Some)
}

/// [`run`], with each line of output passed through `render` before it is logged and kept:
/// what it answers is logged instead (nothing for `None`), as a structured output's events
/// become readable lines.
pub fn run_rendered(
    argv: &[String],
    dir: &Path,
    stdin: Option<&str>,
    limits: Limits,
    ctx: &Context<'_>,
    render: &mut dyn FnMut(String) -> Option<String>,
) -> Result<Finished, String> {
    if !dir.is_dir() {
        return Err(format!(
            "target folder {} does not exist (or is not a folder)",
            dir.display()
        ));
    }
    let started = Instant::now();
    // One pipe for both streams, so the log has the lines in the order the command wrote
    // them, as a terminal would show them.
    let (output, output_writer) =
        std::io::pipe().map_err(|err| format!("cannot make a pipe: {err}"))?;
    let mut child = {
        let mut command = Command::new(&argv[0]);
        let stderr = output_writer
            .try_clone()
            .map_err(|err| format!("cannot make a pipe: {err}"))?;
        command
            .args(&argv[1..])
            .current_dir(dir)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(output_writer)
            .stderr(stderr);
        // Its own process group, so a timeout kills what the command started too.
        ProcessGroup::prepare(&mut command);
        // The command (holding the pipe's write end) is dropped at the end of this block, so
        // the output ends when the child and what it started have closed theirs.
        command.spawn().map_err(|err| match err.kind() {
            std::io::ErrorKind::NotFound => format!("program `{}` not found on PATH", argv[0]),
            _ => format!("cannot run `{}` in {}: {err}", argv[0], dir.display()),
        })?
    };
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // Written from a thread: a command that prints before it reads would otherwise fill
        // its output pipe and wait for us while we wait for it. One that does not read its
        // input is not an error.
        let text = text.to_string();
        std::thread::spawn(move || {
            let _ = pipe.write_all(text.as_bytes());
        });
    }
    // Lines arrive from a reader thread of their own, and are logged here: this thread never
    // blocks on the pipe, which a process the command left running may hold open for ever.
    let (line_tx, lines) = mpsc::channel();
    std::thread::spawn(move || read_lines(output, &line_tx));
    let mut heard = Heard {
        tail: VecDeque::new(),
        last_words: None,
        last_complaint: None,
        at: Instant::now(),
    };
    let mut group = ProcessGroup::of(&child);
    let (mut timed_out, mut stalled, mut stop) = (false, false, None);
    // Short commands are common: look often at first, then back off.
    let mut pause = Duration::from_millis(1);
    let status = loop {
        match lines.recv_timeout(pause) {
            Ok(line) => {
                // Any output counts against the stall limit, whether it is shown or not.
                heard.at = Instant::now();
                if let Some(line) = render(line) {
                    heard.take(line, ctx);
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // The output is closed: the command is exiting; look again soon.
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                std::thread::sleep(pause.min(Duration::from_millis(5)))
            }
        }
        let waited = child
            .try_wait()
            .map_err(|err| format!("waiting for `{}`: {err}", argv[0]))?;
        if let Some(status) = waited {
            break status;
        }
        timed_out = limits.timeout.is_some_and(|t| started.elapsed() > t);
        stalled = limits.stall.is_some_and(|s| heard.at.elapsed() > s);
        stop = ctx.stop_reason();
        if timed_out || stalled || stop.is_some() {
            group.kill();
            // Where no group could be made (a Windows job), the command itself at least.
            let _ = child.kill();
            break child
                .wait()
                .map_err(|err| format!("waiting for `{}`: {err}", argv[0]))?;
        }
        pause = (pause * 2).min(Duration::from_millis(50));
    };
    // The attempt is over, and so is what it started in its process group. Output still in
    // the pipe is read for a moment; a process that left the group and holds the pipe open is
    // not waited for.
    group.kill();
    let grace = Instant::now() + OUTPUT_GRACE;
    while let Ok(line) = lines.recv_timeout(grace.saturating_duration_since(Instant::now())) {
        if let Some(line) = render(line) {
            heard.take(line, ctx);
        }
    }
    Ok(Finished {
        status,
        duration: started.elapsed(),
        timed_out,
        stalled,
        stop,
        tail: Vec::from(heard.tail).join("\n"),
        last_words: heard.last_complaint.or(heard.last_words),
    })
}

/// How long the output is read after the command ended.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// The longest line kept whole; the rest of a longer one is dropped.
const MAX_LINE: usize = 64 * 1024;

/// What the command has printed so far.
struct Heard {
    tail: VecDeque<String>,
    last_words: Option<String>,
    last_complaint: Option<String>,
    /// When it last printed a line (or started).
    at: Instant,
}

impl Heard {
    /// Logs a line, keeping it in the tail and noting what it says.
    fn take(&mut self, line: String, ctx: &Context<'_>) {
        ctx.log(&line);
        self.at = Instant::now();
        let plain = without_escapes(&line);
        if plain.chars().any(char::is_alphanumeric) {
            let words = shorten(plain.trim(), 300);
            if is_complaint(&words) {
                self.last_complaint = Some(words.clone());
            }
            self.last_words = Some(words);
        }
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }
}

/// Sends each line of `stream` (invalid UTF-8 replaced, cut at [`MAX_LINE`]) until it ends.
fn read_lines(stream: impl std::io::Read, lines: &mpsc::Sender<String>) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let line = String::from_utf8_lossy(&line[..line.len().min(MAX_LINE)]).into_owned();
        if lines.send(line).is_err() {
            return;
        }
    }
}

/// Whether a line reads like the reason for a failure. CLIs often follow it with advice
/// (Copilot CLI's "No authentication information found." comes before how to log in).
fn is_complaint(line: &str) -> bool {
    let line = line.to_lowercase();
    [
        "error",
        "fail",
        "not logged in",
        "denied",
        "unauthori",
        "invalid",
        "cannot",
        "can't",
        "not found",
        "refused",
    ]
    .iter()
    .any(|word| line.contains(word))
}

/// The line without terminal escape sequences (colours, cursor moves).
fn without_escapes(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            plain.push(c);
            continue;
        }
        // CSI: ESC [ parameters, then one final byte in @..~; other escapes: ESC and one char.
        if chars.next_if_eq(&'[').is_some() {
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            chars.next();
        }
    }
    plain
}

/// At most `max` characters of `text`, marked when cut.
pub fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_removed_and_text_kept() {
        assert_eq!(
            without_escapes("\u{1b}[1;31mError:\u{1b}[0m Not logged in"),
            "Error: Not logged in"
        );
        assert_eq!(without_escapes("plain"), "plain");
    }

    #[test]
    fn a_complaint_is_told_from_advice() {
        assert!(is_complaint("Error: No authentication information found."));
        assert!(is_complaint("Not logged in · Please run /login"));
        assert!(!is_complaint(
            "  • Run 'gh auth login' to authenticate with the GitHub CLI"
        ));
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary() {
        assert_eq!(shorten("héllo", 2), "hé…");
        assert_eq!(shorten("hi", 2), "hi");
    }
}
