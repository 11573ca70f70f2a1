//! Running an external command for a task: argument vector (never a shell), its own process
//! group, output streamed to the task log line by line with the last lines kept, killed with
//! everything it started when its time runs out, when it stalls, or when the task is stopped.
//!
//! How a run is watched: on Linux the calling thread does it alone, in one `poll(2)` over the
//! output pipe, a pidfd of the command (readable once it has exited) and the input pipe while
//! there is input left to write. No thread is started and nothing sleeps, so a command that
//! does nothing costs little more than starting it. Elsewhere, and on a Linux kernel without
//! pidfds (before 5.3, or one that forbids them), one thread reads the output and another
//! waits for the command, each reporting to the calling thread the moment something happens.
//! Either way the calling thread also wakes every [`STOP_CHECK`] at most: the plugin API says
//! whether the host wants the task stopped only when asked.

use std::collections::VecDeque;
use std::path::Path;
use std::process::{ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use plugin_api::{Context, StopReason, Task};

use crate::stream::Format;

use crate::group::ProcessGroup;
/// How many lines of output a result keeps.
const TAIL_LINES: usize = 40;

/// When a run is cut short. `None` leaves it to the host: the worker times the task and asks
/// the handler to stop (see [`Finished::stop`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct Limits {
    /// The longest the command may run.
    pub timeout: Option<Duration>,
    /// The longest the command may go without progress: a line of output, or with
    /// [`Limits::progress`] an event of work.
    pub stall: Option<Duration>,
    /// The structured output whose events of work are the progress the stall limit measures
    /// (see [`Format::is_work`]); without it, any line is.
    pub progress: Option<Format>,
}

/// How a command run ended.
pub struct Finished {
    /// Its exit status.
    pub status: ExitStatus,
    /// How long it ran.
    pub duration: Duration,
    /// Whether it was killed because [`Limits::timeout`] ran out.
    pub timed_out: bool,
    /// Whether it was killed because it made no progress for [`Limits::stall`].
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
            progress: None,
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
            _ if self.stalled && limits.progress.is_some() => format!(
                "{what} printed no event of work for {}s (retries and errors are not work) and \
                 was killed as stalled",
                secs(limits.stall)
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
    run_watched(argv, dir, stdin, limits, ctx, render, Waiting::Best)
}

/// What a run tells and asks of whoever asked for it: the task's context, in a test a
/// stand-in.
trait Reporter {
    /// One line of the task's log.
    fn log(&self, line: &str);
    /// Why the run should stop now, if it should.
    fn stop_reason(&self) -> Option<StopReason>;
}

impl Reporter for Context<'_> {
    fn log(&self, line: &str) {
        Context::log(self, line);
    }

    fn stop_reason(&self) -> Option<StopReason> {
        Context::stop_reason(self)
    }
}

/// How a run is waited for.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Waiting {
    /// From the calling thread alone where the system allows it, else with threads.
    Best,
    /// With threads, as where the system has no pidfds (for tests, on systems that have them).
    #[cfg_attr(not(test), allow(dead_code))]
    Threads,
}

/// [`run_rendered`], reporting to `ctx` and waiting as `waiting` says.
fn run_watched(
    argv: &[String],
    dir: &Path,
    stdin: Option<&str>,
    limits: Limits,
    ctx: &dyn Reporter,
    render: &mut dyn FnMut(String) -> Option<String>,
    waiting: Waiting,
) -> Result<Finished, String> {
    if !dir.is_dir() {
        return Err(format!(
            "target folder {} does not exist (or is not a folder)",
            dir.display()
        ));
    }
    let started = Instant::now();
    // One pipe for both streams, so the log has the lines in the order the command wrote
    // them, as a terminal would show them; and one reader, whichever watches.
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
    let input = match (stdin, child.stdin.take()) {
        (Some(text), Some(pipe)) => Some(Input {
            pipe,
            text: text.as_bytes().to_vec(),
        }),
        _ => None,
    };
    let mut watch = Watch {
        program: &argv[0],
        limits,
        started,
        group: ProcessGroup::of(&child),
        heard: Heard {
            tail: VecDeque::new(),
            last_words: None,
            last_complaint: None,
            at: Instant::now(),
        },
        lines: Lines::default(),
        ctx,
        render,
        timed_out: false,
        stalled: false,
        stop: None,
        killed: false,
    };
    #[cfg(target_os = "linux")]
    let pidfd = (waiting == Waiting::Best)
        .then(|| linux::pidfd(&child))
        .flatten();
    #[cfg(target_os = "linux")]
    let status = match pidfd {
        Some(pidfd) => linux::watch(&mut child, &pidfd, output, input, &mut watch)?,
        None => threaded::watch(child, output, input, &mut watch)?,
    };
    #[cfg(not(target_os = "linux"))]
    let status = {
        let _ = waiting;
        threaded::watch(child, output, input, &mut watch)?
    };
    Ok(Finished {
        status,
        duration: started.elapsed(),
        timed_out: watch.timed_out,
        stalled: watch.stalled,
        stop: watch.stop,
        tail: Vec::from(watch.heard.tail).join("\n"),
        last_words: watch.heard.last_complaint.or(watch.heard.last_words),
    })
}

/// How long the output is read after the command ended: a process that left the group and
/// holds the pipe open is not waited for longer.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// The longest the watching thread goes without asking whether the task should stop.
const STOP_CHECK: Duration = Duration::from_millis(50);

/// The longest line read whole: a structured CLI prints its whole answer as one line of JSON,
/// which can be long. Of a longer line the first this many bytes are kept, and the log says how
/// much was dropped.
pub(crate) const MAX_LINE: usize = 16 * 1024 * 1024;

/// The longest line logged and kept in the tail as it is; a longer one is shortened there,
/// marked (what `render` is given is the whole line).
const LOG_LINE: usize = 64 * 1024;

/// How much output is read at once.
pub(crate) const READ_SIZE: usize = 64 * 1024;

/// What is to be written to the command's input, and the pipe to write it to.
struct Input {
    pipe: ChildStdin,
    text: Vec<u8>,
}

/// What watching a run needs, whichever way the command is waited for: the output so far,
/// the limits and why the run was cut short.
struct Watch<'w> {
    program: &'w str,
    limits: Limits,
    started: Instant,
    group: ProcessGroup,
    heard: Heard,
    lines: Lines,
    ctx: &'w dyn Reporter,
    render: &'w mut dyn FnMut(String) -> Option<String>,
    timed_out: bool,
    stalled: bool,
    stop: Option<StopReason>,
    /// Whether the command was killed (and is now only waited for).
    killed: bool,
}

impl Watch<'_> {
    /// Takes bytes of output: each complete line is logged and kept.
    fn output(&mut self, bytes: &[u8]) {
        let mut complete = Vec::new();
        self.lines.push(bytes, &mut complete);
        for line in complete {
            self.line(line);
        }
    }

    /// The output ended: a last line without a newline is a line too.
    fn output_ended(&mut self) {
        if let Some(line) = self.lines.finish() {
            self.line(line);
        }
    }

    fn line(&mut self, line: Line) {
        // Progress puts off the stall limit, whether it is shown or not: any line, or with
        // structured output an event of work.
        if self
            .limits
            .progress
            .is_none_or(|format| format.is_work(&line.text))
        {
            self.heard.at = Instant::now();
        }
        if let Some(shown) = (self.render)(line.text) {
            self.heard.take(shown, self.ctx);
        }
        if line.dropped > 0 {
            self.ctx.log(&format!(
                "(a line of output of {} bytes was cut to its first {} MiB: the rest was dropped)",
                MAX_LINE + line.dropped,
                MAX_LINE >> 20
            ));
        }
    }

    /// Whether the run must be cut short now (its time ran out, it stalled, or the host asks
    /// to stop), noting why. Asked again after the command was killed, it says no: killing
    /// once is enough.
    fn must_kill(&mut self) -> bool {
        if self.killed {
            return false;
        }
        self.timed_out = self
            .limits
            .timeout
            .is_some_and(|t| self.started.elapsed() > t);
        self.stalled = self
            .limits
            .stall
            .is_some_and(|s| self.heard.at.elapsed() > s);
        self.stop = self.ctx.stop_reason();
        self.killed = self.timed_out || self.stalled || self.stop.is_some();
        self.killed
    }

    /// How long the watching thread may wait for something to happen before it must look at
    /// the limits and the host's requests again.
    fn next_look(&self) -> Duration {
        let mut wait = STOP_CHECK;
        if self.killed {
            return wait;
        }
        // A moment past the limit, so that the look after the wait finds it passed.
        let past = Duration::from_millis(1);
        if let Some(timeout) = self.limits.timeout {
            wait = wait.min(timeout.saturating_sub(self.started.elapsed()) + past);
        }
        if let Some(stall) = self.limits.stall {
            wait = wait.min(stall.saturating_sub(self.heard.at.elapsed()) + past);
        }
        wait
    }

    fn waiting_failed(&self, err: std::io::Error) -> String {
        format!("waiting for `{}`: {err}", self.program)
    }
}

/// A line of output.
#[derive(Debug, PartialEq)]
pub(crate) struct Line {
    /// The line, at most [`MAX_LINE`] bytes of it.
    pub(crate) text: String,
    /// How many bytes of it past [`MAX_LINE`] were dropped.
    pub(crate) dropped: usize,
}

/// Cuts output into lines as it arrives: without the line end (`\n` or `\r\n`), invalid UTF-8
/// replaced, cut at [`MAX_LINE`] bytes (the rest of a longer line is dropped and counted).
#[derive(Default)]
pub(crate) struct Lines {
    /// The start of the line being read.
    partial: Vec<u8>,
    /// How long the line being read is so far, with what did not fit.
    length: usize,
    /// Whether its last byte so far is a `\r`.
    ends_in_cr: bool,
}

impl Lines {
    /// Adds `bytes`, putting each line they complete in `complete`.
    pub(crate) fn push(&mut self, mut bytes: &[u8], complete: &mut Vec<Line>) {
        while let Some(end) = bytes.iter().position(|&b| b == b'\n') {
            self.keep(&bytes[..end]);
            complete.push(self.take());
            bytes = &bytes[end + 1..];
        }
        self.keep(bytes);
    }

    /// The last line, when the output ended without a line end.
    pub(crate) fn finish(&mut self) -> Option<Line> {
        (self.length > 0).then(|| self.take())
    }

    /// Keeps what fits of a piece of the current line: one byte more than a line may have, so
    /// that a `\r` ending a line of exactly [`MAX_LINE`] bytes is still seen as its end.
    fn keep(&mut self, piece: &[u8]) {
        if let Some(&last) = piece.last() {
            self.ends_in_cr = last == b'\r';
        }
        self.length += piece.len();
        let room = (MAX_LINE + 1).saturating_sub(self.partial.len());
        self.partial
            .extend_from_slice(&piece[..piece.len().min(room)]);
    }

    fn take(&mut self) -> Line {
        let length = self.length - usize::from(self.ends_in_cr);
        let kept = length.min(MAX_LINE);
        let text = String::from_utf8_lossy(&self.partial[..kept]).into_owned();
        self.partial.clear();
        self.length = 0;
        self.ends_in_cr = false;
        Line {
            text,
            dropped: length - kept,
        }
    }
}

/// Watching a run from the calling thread alone, with a pidfd (Linux 5.3 and later).
#[cfg(target_os = "linux")]
mod linux {
    use std::io::{ErrorKind, Read, Write};
    use std::os::fd::{AsFd, OwnedFd};
    use std::process::{Child, ExitStatus};
    use std::time::Instant;

    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    use rustix::process::{Pid, PidfdFlags, pidfd_open};

    use super::{Input, OUTPUT_GRACE, READ_SIZE, Watch};

    /// A descriptor that becomes readable when `child` exits; `None` where the kernel gives
    /// none, and the run is then watched by threads. The child is not waited for until it
    /// is readable, so its process id cannot be another process's meanwhile.
    pub(super) fn pidfd(child: &Child) -> Option<OwnedFd> {
        pidfd_open(Pid::from_child(child), PidfdFlags::empty()).ok()
    }

    /// Writes the input, reads the output and waits for the child, all in one `poll(2)`, until
    /// the child has exited; then reads what output is left for [`OUTPUT_GRACE`] at most.
    pub(super) fn watch(
        child: &mut Child,
        pidfd: &OwnedFd,
        output: std::io::PipeReader,
        mut input: Option<Input>,
        watch: &mut Watch<'_>,
    ) -> Result<ExitStatus, String> {
        // Neither pipe may block this thread: a command that prints before it reads would
        // otherwise fill its output pipe and wait for us while we wait for it to read.
        let nonblocking = |fd: std::os::fd::BorrowedFd<'_>| {
            rustix::io::ioctl_fionbio(fd, true)
                .map_err(|err| format!("cannot set up the pipes of `{}`: {err}", watch.program))
        };
        nonblocking(output.as_fd())?;
        if let Some(input) = &input {
            nonblocking(input.pipe.as_fd())?;
        }
        let mut output = Some(output);
        let mut buf = vec![0; READ_SIZE];
        let status = loop {
            let wait = Timespec::try_from(watch.next_look()).unwrap_or(Timespec {
                tv_sec: 0,
                tv_nsec: 50_000_000,
            });
            let mut fds = vec![PollFd::new(pidfd, PollFlags::IN)];
            if let Some(output) = &output {
                fds.push(PollFd::new(output, PollFlags::IN));
            }
            if let Some(input) = &input {
                fds.push(PollFd::new(&input.pipe, PollFlags::OUT));
            }
            match poll(&mut fds, Some(&wait)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(err) => return Err(watch.waiting_failed(err.into())),
            }
            let exited = !fds[0].revents().is_empty();
            let ready = |at: Option<usize>| at.is_some_and(|i| !fds[i].revents().is_empty());
            let output_ready = ready(output.as_ref().map(|_| 1));
            let input_ready = ready(input.as_ref().map(|_| fds.len() - 1));
            drop(fds);
            if output_ready && !read_available(&mut output, &mut buf, watch) {
                output = None;
            }
            if input_ready && !write_some(&mut input) {
                // All written, or the command will not read it: closing the pipe says so.
                input = None;
            }
            if exited {
                // The pidfd said it has exited: this wait does not block.
                break child.wait().map_err(|err| watch.waiting_failed(err))?;
            }
            if watch.must_kill() {
                watch.group.kill_all();
            }
        };
        // The attempt is over, and so is what it started in its process group. Output still in
        // the pipe is read for a moment; a process that left the group and holds the pipe
        // open is not waited for.
        watch.group.kill();
        drop(input);
        let grace = Instant::now() + OUTPUT_GRACE;
        while let Some(open) = &output {
            let left = grace.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let left = Timespec::try_from(left).unwrap_or_default();
            let mut fds = [PollFd::new(open, PollFlags::IN)];
            match poll(&mut fds, Some(&left)) {
                Ok(0) | Err(rustix::io::Errno::INTR) => continue,
                Ok(_) => {}
                Err(_) => break,
            }
            if !read_available(&mut output, &mut buf, watch) {
                output = None;
            }
        }
        Ok(status)
    }

    /// Reads what the output pipe holds. Answers whether it is still open: at its end, the
    /// last line is taken too.
    fn read_available(
        output: &mut Option<std::io::PipeReader>,
        buf: &mut [u8],
        watch: &mut Watch<'_>,
    ) -> bool {
        let Some(pipe) = output else {
            return false;
        };
        loop {
            match pipe.read(buf) {
                Ok(0) => break,
                Ok(n) => watch.output(&buf[..n]),
                Err(err) if err.kind() == ErrorKind::WouldBlock => return true,
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                // A pipe that cannot be read is as good as closed.
                Err(_) => break,
            }
        }
        watch.output_ended();
        false
    }

    /// Writes what the input pipe takes. Answers whether there is more to write; a command
    /// that does not read its input is not an error.
    fn write_some(input: &mut Option<Input>) -> bool {
        let Some(Input { pipe, text }) = input else {
            return false;
        };
        while !text.is_empty() {
            match pipe.write(text) {
                Ok(0) => return false,
                Ok(n) => {
                    text.drain(..n);
                }
                Err(err) if err.kind() == ErrorKind::WouldBlock => return true,
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        false
    }
}

/// Watching a run with two threads, where there are no pidfds: one reads the output and one
/// waits for the command, and the calling thread acts on what they report the moment they
/// report it.
mod threaded {
    use std::io::{Read, Write};
    use std::process::{Child, ExitStatus};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;
    use std::time::Instant;

    use super::{Input, OUTPUT_GRACE, READ_SIZE, Watch};

    /// What the threads report.
    enum Event {
        Output(Vec<u8>),
        OutputEnded,
        /// The command exited; the child comes back with it so that, on Windows, its process
        /// id stays its own (its handle open) until the run is over.
        Exited(std::io::Result<ExitStatus>, Child),
    }

    pub(super) fn watch(
        mut child: Child,
        mut output: std::io::PipeReader,
        input: Option<Input>,
        watch: &mut Watch<'_>,
    ) -> Result<ExitStatus, String> {
        if let Some(Input { mut pipe, text }) = input {
            // Written from a thread: a command that prints before it reads would otherwise
            // fill its output pipe and wait for us while we wait for it. One that does not
            // read its input is not an error.
            std::thread::spawn(move || {
                let _ = pipe.write_all(&text);
            });
        }
        let (events, happened) = mpsc::channel();
        let reader = events.clone();
        // Output is read on a thread of its own, never this one: a process the command left
        // running may hold the pipe open for ever.
        std::thread::spawn(move || {
            let mut buf = vec![0; READ_SIZE];
            loop {
                match output.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if reader.send(Event::Output(buf[..n].to_vec())).is_err() {
                            return;
                        }
                    }
                    Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = reader.send(Event::OutputEnded);
        });
        // Set once the command was waited for, after which it must not be signalled by its
        // id (which may then be another process's); the moment between the two is left.
        let reaped = Arc::new(AtomicBool::new(false));
        let waiter_reaped = Arc::clone(&reaped);
        std::thread::spawn(move || {
            let status = child.wait();
            waiter_reaped.store(true, Ordering::SeqCst);
            let _ = events.send(Event::Exited(status, child));
        });
        let mut output_open = true;
        let (status, _child) = loop {
            match happened.recv_timeout(watch.next_look()) {
                Ok(Event::Output(bytes)) => watch.output(&bytes),
                Ok(Event::OutputEnded) => {
                    watch.output_ended();
                    output_open = false;
                }
                Ok(Event::Exited(status, child)) => {
                    break (status.map_err(|err| watch.waiting_failed(err))?, child);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(watch.waiting_failed(std::io::Error::other("the waiter ended")));
                }
            }
            if watch.must_kill() {
                if reaped.load(Ordering::SeqCst) {
                    watch.group.kill();
                } else {
                    watch.group.kill_all();
                }
            }
        };
        // As on Linux: what the command started is ended, and the output read for a moment.
        watch.group.kill();
        let grace = Instant::now() + OUTPUT_GRACE;
        while output_open {
            match happened.recv_timeout(grace.saturating_duration_since(Instant::now())) {
                Ok(Event::Output(bytes)) => watch.output(&bytes),
                Ok(Event::OutputEnded) => {
                    watch.output_ended();
                    output_open = false;
                }
                Ok(Event::Exited(..)) => {}
                Err(_) => break,
            }
        }
        Ok(status)
    }
}

/// `line` as the log and the tail keep it: at most [`LOG_LINE`] bytes, a longer one cut at a
/// character and marked with its length.
pub(crate) fn loggable(line: String) -> String {
    if line.len() <= LOG_LINE {
        return line;
    }
    let mut end = LOG_LINE;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &line[..end], line.len())
}

/// What the command has printed so far.
struct Heard {
    tail: VecDeque<String>,
    last_words: Option<String>,
    last_complaint: Option<String>,
    /// When it last made progress (a line, or an event of work: see [`Limits::progress`]), or
    /// started.
    at: Instant,
}

impl Heard {
    /// Logs a line, keeping it in the tail and noting what it says.
    fn take(&mut self, line: String, ctx: &dyn Reporter) {
        let line = loggable(line);
        ctx.log(&line);
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
    fn output_is_cut_into_lines_whatever_the_pieces_it_arrives_in() {
        let text = b"one\r\ntwo\n\nthr\xffee\nlast";
        for piece in [1, 2, 5, text.len()] {
            let mut lines = Lines::default();
            let mut complete = Vec::new();
            for chunk in text.chunks(piece) {
                lines.push(chunk, &mut complete);
            }
            complete.extend(lines.finish());
            let texts: Vec<&str> = complete.iter().map(|l| l.text.as_str()).collect();
            assert_eq!(
                texts,
                ["one", "two", "", "thr\u{fffd}ee", "last"],
                "{piece}"
            );
        }
        // A line of hundreds of KiB (a CLI's whole answer in one event) is kept whole.
        let mut lines = Lines::default();
        let mut complete = Vec::new();
        for _ in 0..5 {
            lines.push(&vec![b'x'; READ_SIZE], &mut complete);
        }
        lines.push(b"\r\nnext\n", &mut complete);
        assert_eq!(complete.len(), 2);
        assert_eq!(complete[0].text.len(), 5 * READ_SIZE);
        assert_eq!(complete[0].dropped, 0);
        assert_eq!(complete[1].text, "next");
        // One past the bound is cut, and how much was dropped is told.
        lines.push(&vec![b'x'; MAX_LINE + 10], &mut complete);
        lines.push(b"\r\n", &mut complete);
        assert_eq!(complete[2].text.len(), MAX_LINE);
        assert_eq!(complete[2].dropped, 10);
        assert_eq!(lines.finish(), None);
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary() {
        assert_eq!(shorten("héllo", 2), "hé…");
        assert_eq!(shorten("hi", 2), "hi");
    }
}

/// Runs of real commands, waited for both ways: with a pidfd from the calling thread (where
/// there is one) and with threads.
#[cfg(all(test, unix))]
mod runs {
    use std::sync::Mutex;

    use super::*;

    /// A stand-in for the task's context: keeps the log, and asks to stop from `stop_at` on.
    #[derive(Default)]
    struct Recorder {
        lines: Mutex<Vec<String>>,
        stop_at: Option<Instant>,
    }

    impl Reporter for Recorder {
        fn log(&self, line: &str) {
            self.lines.lock().unwrap().push(line.to_string());
        }

        fn stop_reason(&self) -> Option<StopReason> {
            self.stop_at
                .is_some_and(|at| Instant::now() >= at)
                .then_some(StopReason::Cancelled)
        }
    }

    fn sh(script: &str) -> Vec<String> {
        ["sh", "-c", script].map(String::from).to_vec()
    }

    /// Runs `argv` each way; answers each way's end and log.
    fn both_ways(
        argv: &[String],
        stdin: Option<&str>,
        limits: Limits,
        stop_after: Option<Duration>,
    ) -> Vec<(Waiting, Finished, Vec<String>)> {
        [Waiting::Best, Waiting::Threads]
            .into_iter()
            .map(|waiting| {
                let recorder = Recorder {
                    stop_at: stop_after.map(|after| Instant::now() + after),
                    ..Recorder::default()
                };
                let dir = std::env::temp_dir();
                let finished =
                    run_watched(argv, &dir, stdin, limits, &recorder, &mut Some, waiting).unwrap();
                (waiting, finished, recorder.lines.into_inner().unwrap())
            })
            .collect()
    }

    #[test]
    fn output_of_both_streams_is_logged_in_order_and_the_exit_kept() {
        let script = "echo one; echo two >&2; printf 'Error: three'; exit 3";
        for (how, run, lines) in both_ways(&sh(script), None, Limits::default(), None) {
            assert_eq!(lines, ["one", "two", "Error: three"], "{how:?}");
            assert_eq!(run.status.code(), Some(3), "{how:?}");
            assert_eq!(run.tail, "one\ntwo\nError: three", "{how:?}");
            assert_eq!(run.last_words.as_deref(), Some("Error: three"), "{how:?}");
            assert!(
                !run.timed_out && !run.stalled && run.stop.is_none(),
                "{how:?}"
            );
        }
    }

    #[test]
    fn a_long_line_is_rendered_whole_and_one_past_the_bound_is_cut_and_the_log_says_so() {
        let long = 200 * 1024;
        let script = format!(
            "head -c {long} /dev/zero | tr '\\0' a; echo; \
             head -c {} /dev/zero | tr '\\0' b; echo; echo end",
            MAX_LINE + 5
        );
        let recorder = Recorder::default();
        let mut rendered = Vec::new();
        let run = run_watched(
            &sh(&script),
            &std::env::temp_dir(),
            None,
            Limits::default(),
            &recorder,
            &mut |line| {
                rendered.push(line.len());
                Some(line)
            },
            Waiting::Best,
        )
        .unwrap();
        assert_eq!(run.status.code(), Some(0));
        assert_eq!(rendered, [long, MAX_LINE, 3]);
        let logged = recorder.lines.into_inner().unwrap();
        assert_eq!(
            logged.len(),
            4,
            "{:?}",
            logged.iter().map(String::len).collect::<Vec<_>>()
        );
        assert!(
            logged[0].starts_with("aaa")
                && logged[0].ends_with(&format!("… ({long} bytes in all)")),
            "{}",
            &logged[0][logged[0].len() - 40..]
        );
        assert!(logged[0].len() < LOG_LINE + 100);
        assert_eq!(
            logged[2],
            format!(
                "(a line of output of {} bytes was cut to its first 16 MiB: the rest was dropped)",
                MAX_LINE + 5
            )
        );
        assert_eq!(logged[3], "end");
    }

    #[test]
    fn a_command_that_prints_before_it_reads_gets_all_its_input() {
        // More than any pipe holds, both ways: neither side may wait for the other.
        let input: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
        for (how, run, lines) in both_ways(&sh("cat"), Some(&input), Limits::default(), None) {
            assert_eq!(run.status.code(), Some(0), "{how:?}");
            assert_eq!(lines.len(), 20_000, "{how:?}");
            assert_eq!(
                lines.last().map(String::as_str),
                Some("line 19999"),
                "{how:?}"
            );
            assert_eq!(run.tail.lines().count(), TAIL_LINES, "{how:?}");
        }
        // One that does not read its input is not an error.
        for (how, run, _) in both_ways(&sh("exit 0"), Some(&input), Limits::default(), None) {
            assert_eq!(run.status.code(), Some(0), "{how:?}");
        }
    }

    #[test]
    fn a_command_is_killed_with_what_it_started_when_its_time_runs_out_or_it_stalls() {
        let limits = Limits {
            timeout: Some(Duration::from_millis(300)),
            ..Limits::default()
        };
        for (how, run, _) in both_ways(&sh("sleep 30 & sleep 30"), None, limits, None) {
            assert!(run.timed_out, "{how:?}");
            assert!(
                run.duration < Duration::from_secs(5),
                "{how:?}: {:?}",
                run.duration
            );
            assert_eq!(run.status.code(), None, "{how:?}: killed by a signal");
        }
        let limits = Limits {
            stall: Some(Duration::from_millis(300)),
            ..Limits::default()
        };
        for (how, run, lines) in both_ways(&sh("echo hello; sleep 30"), None, limits, None) {
            assert!(run.stalled && !run.timed_out, "{how:?}");
            assert_eq!(lines, ["hello"], "{how:?}");
            assert!(
                run.duration < Duration::from_secs(5),
                "{how:?}: {:?}",
                run.duration
            );
        }
    }

    #[test]
    fn a_stop_request_kills_the_command_and_says_why() {
        let stop = Some(Duration::from_millis(200));
        for (how, run, _) in both_ways(&sh("sleep 30"), None, Limits::default(), stop) {
            assert_eq!(run.stop, Some(StopReason::Cancelled), "{how:?}");
            assert!(
                run.duration < Duration::from_secs(5),
                "{how:?}: {:?}",
                run.duration
            );
            let why = run.failure("`sleep`", Limits::default()).unwrap();
            assert!(why.contains("cancelled"), "{how:?}: {why}");
        }
    }

    #[test]
    fn a_short_command_costs_about_its_start() {
        let argv = vec!["true".to_string()];
        for (how, run, _) in both_ways(&argv, None, Limits::default(), None) {
            assert_eq!(run.status.code(), Some(0), "{how:?}");
            // Nothing sleeps: far under the old 1-50 ms back-off, even on a loaded machine.
            assert!(
                run.duration < Duration::from_millis(500),
                "{how:?}: {:?}",
                run.duration
            );
        }
    }
}
