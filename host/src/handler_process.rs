//! Crash isolation: each worker slot runs its role's handler in a child `host` process, so a
//! handler that hangs, aborts or segfaults costs its task, not the worker.
//!
//! An in-process plugin cannot be stopped from outside, and a crash inside it takes the whole
//! process down. The child ([`serve`], started as the hidden `host handler-process` command)
//! loads the one library the worker chose and runs one task at a time for the parent
//! ([`HandlerProcess`]), which keeps the lease, the store and the clock. The child stays up
//! between tasks, so the common path costs one pipe round trip, not a process start.
//!
//! Every process a task starts ends with its attempt (see [`crate::process_tree`]): the child
//! kills what is left below it when a task returns, the parent kills the child's whole tree when
//! it kills the child, and the child takes its tree down with it when the parent dies.
//!
//! The protocol is JSON lines: the parent writes [`ToChild`] on the child's stdin; the child
//! answers with [`FromChild`] on its stdout. The child moves its own stdout to stderr first, so
//! a handler that prints cannot corrupt the protocol; what it prints lands in the worker's log.
//!
//! On Windows the child runs in a console of its own with no window: the keys a user presses
//! in the worker's console (Ctrl+C, Ctrl+Break) reach the worker, which decides what becomes of
//! the running task, never the handler or the commands it runs. Its stderr comes to the worker
//! through a pipe, line by line, as it cannot write to the worker's console.

use std::io::{BufRead, Write};
#[cfg(unix)]
use std::os::unix::process::{CommandExt, ExitStatusExt};
#[cfg(windows)]
use std::os::windows::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
#[cfg(not(unix))]
use std::sync::mpsc::Receiver;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use filedescriptor::{FileDescriptor, StdioDescriptor};
use plugin_api::__private::{ErrorRecord, decode_stop_reason, encode_stop_reason};
use plugin_api::{Answer, PlanStep, Question, StopReason, Task};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::library::{TaskHooks, open_role};
use crate::loader::PluginRole;

/// How long a handler that was asked to stop may keep running before its process is killed.
pub const KILL_AFTER: Duration = Duration::from_secs(3);

/// The largest result (as JSON) a task keeps.
pub const MAX_RESULT: usize = 4 * 1024 * 1024;

/// How long a new handler process may take to load its plugin.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// What the parent tells the child.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
enum ToChild {
    /// Run the handler on this task.
    Run {
        task: Box<Task>,
        #[serde(default)]
        settings: Value,
        #[serde(default)]
        prerequisites: Vec<Task>,
        /// The lease as confirmed when the task was handed over (as `Lease` says), so that
        /// a task costs one message.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lease_left_ms: Option<u64>,
    },
    /// Tell the running handler to stop (`StopReason` as plugin-api encodes it).
    Stop { reason: u8 },
    /// The queue confirmed the running task's lease: `left_ms` of it are left from now. The
    /// child stops the task when half of that passes with no newer word (see [`LeaseWatch`]).
    Lease { left_ms: u64 },
    /// Check the role's settings before any task (answered with `Checked`).
    Check { settings: Value },
    /// What became of the running handler's question (`Ask`).
    Answer { answer: Answer },
}

/// What the child tells the parent.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
enum FromChild {
    /// The plugin is loaded; tasks may come.
    Ready,
    /// The plugin could not be loaded; the child exits.
    Fatal {
        message: String,
    },
    /// The answer to `Check`: the role's reason to refuse its settings, if it has one.
    Checked {
        refusal: Option<String>,
    },
    Progress {
        percent: u8,
        message: String,
    },
    Log {
        line: String,
    },
    /// The plan the handler follows now (`Context::plan`).
    Plan {
        steps: Vec<PlanStep>,
    },
    /// The handler asks a person (`Context::ask`) and waits for `Answer`.
    Ask {
        question: Question,
        timeout_secs: u64,
    },
    Succeeded {
        result: Value,
    },
    Failed {
        message: String,
        result: Option<Value>,
        retryable: bool,
        /// The handler put the task off until then (milliseconds since the epoch).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        snooze_until_ms: Option<i64>,
        /// ... because its account is out of quota.
        #[serde(default)]
        usage_limit: bool,
    },
}

/// The child's protocol messages as they arrive on its stdout. On Unix the slot's own thread
/// waits for them (poll(2)), which spares a thread hop per message; elsewhere a reader thread
/// hands them over.
struct Messages {
    #[cfg(unix)]
    stdout: std::process::ChildStdout,
    /// Bytes read past the last whole line.
    #[cfg(unix)]
    pending: Vec<u8>,
    #[cfg(unix)]
    closed: bool,
    #[cfg(not(unix))]
    inbox: Receiver<Option<FromChild>>,
}

impl Messages {
    #[cfg(unix)]
    fn new(stdout: std::process::ChildStdout) -> Messages {
        Messages {
            stdout,
            pending: Vec::new(),
            closed: false,
        }
    }

    #[cfg(not(unix))]
    fn new(stdout: std::process::ChildStdout) -> Messages {
        let (sender, inbox) = mpsc::channel();
        thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(message) = serde_json::from_str(&line)
                    && sender.send(Some(message)).is_err()
                {
                    return;
                }
            }
            let _ = sender.send(None);
        });
        Messages { inbox }
    }

    /// The next message, waiting up to `limit`; `Ok(None)` once the child closed its output.
    /// A line that is not the protocol is a bug of the child, not of the task: it is skipped.
    #[cfg(unix)]
    fn recv_timeout(&mut self, limit: Duration) -> Result<Option<FromChild>, RecvTimeoutError> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use std::io::Read;
        use std::os::fd::AsFd;
        let deadline = Instant::now() + limit;
        loop {
            while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                if let Ok(message) = serde_json::from_slice(&line[..end]) {
                    return Ok(Some(message));
                }
            }
            if self.closed {
                return Ok(None);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let wait = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
            let mut ready = [PollFd::new(self.stdout.as_fd(), PollFlags::POLLIN)];
            match poll(&mut ready, wait) {
                Ok(0) => return Err(RecvTimeoutError::Timeout),
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(_) => self.closed = true,
            }
            if self.closed || ready[0].revents().is_none_or(|r| r.is_empty()) {
                continue;
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.stdout.read(&mut chunk) {
                Ok(0) => self.closed = true,
                Ok(n) => self.pending.extend_from_slice(&chunk[..n]),
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => self.closed = true,
            }
        }
    }

    #[cfg(not(unix))]
    fn recv_timeout(&mut self, limit: Duration) -> Result<Option<FromChild>, RecvTimeoutError> {
        self.inbox.recv_timeout(limit)
    }
}

/// How a handler run ended, seen from the parent.
#[derive(Debug)]
pub enum RunEnd {
    /// The handler returned.
    Returned(Result<Value, ErrorRecord>),
    /// The handler process died; the text says how (signal or exit status).
    Died(String),
    /// The handler ignored a stop request for [`KILL_AFTER`] and its process was killed.
    Killed(StopReason),
}

/// The handler processes this process runs, by pid: its other children are orphans that a dead
/// handler process left behind (re-parented to this subreaper), to be killed. Held while a
/// child is spawned, so that a new one is never taken for an orphan.
static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// The parent's handle on one child handler process.
pub struct HandlerProcess {
    child: Child,
    /// Its input; closed when it is asked to end.
    stdin: Option<ChildStdin>,
    messages: Messages,
    /// Whether it was ended after a task (see [`HandlerProcess::returned`]) and a fresh one
    /// must take the next task.
    spent: bool,
    /// The processes its job held once it was ready: any other after a task is one the task
    /// left running.
    #[cfg(windows)]
    settled: Option<std::collections::HashSet<usize>>,
    /// Ends when all the child wrote to its stderr has been relayed.
    #[cfg(windows)]
    relayed: Option<Receiver<()>>,
}

impl HandlerProcess {
    /// Starts a child that loads `role` from its library and checks the role's `settings`
    /// (see `Role::check_settings`), and waits until it is ready. The error is the role's own
    /// reason when it refuses its settings.
    pub fn start(role: &PluginRole, settings: &Value) -> anyhow::Result<HandlerProcess> {
        let exe = std::env::current_exe().context("cannot find the host executable")?;
        let mut live = LIVE.lock().expect("live handlers lock");
        let mut command = Command::new(&exe);
        command
            .arg("handler-process")
            .arg("--role")
            .arg(role.name())
            .arg("--library")
            .arg(role.library())
            .arg("--parent")
            .arg(std::process::id().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        // Its own process group (Windows: its own console): a Ctrl+C in the terminal reaches
        // the worker, which decides what happens to the running task, not the handler directly.
        #[cfg(unix)]
        command.process_group(0).stderr(Stdio::inherit());
        #[cfg(windows)]
        command
            .creation_flags(CREATE_NO_WINDOW)
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        #[cfg(windows)]
        crate::process_tree::track(&child);
        live.push(child.id());
        drop(live);
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        #[cfg(windows)]
        let relayed = child.stderr.take().map(|stderr| {
            let (done, relayed) = mpsc::channel();
            thread::spawn(move || {
                relay_lines(stderr);
                let _ = done.send(());
            });
            relayed
        });
        let messages = Messages::new(stdout);
        let mut process = HandlerProcess {
            child,
            stdin: Some(stdin),
            messages,
            spent: false,
            #[cfg(windows)]
            settled: None,
            #[cfg(windows)]
            relayed,
        };
        let ready = process.messages.recv_timeout(START_TIMEOUT);
        let ready = match ready {
            Ok(Some(FromChild::Ready)) => {
                let check = ToChild::Check {
                    settings: settings.clone(),
                };
                match process.send(&check) {
                    Ok(()) => process.messages.recv_timeout(START_TIMEOUT),
                    Err(_) => Ok(None),
                }
            }
            other => other,
        };
        match ready {
            Ok(Some(FromChild::Checked { refusal: None })) => {
                #[cfg(windows)]
                {
                    process.settled = crate::process_tree::processes_of(process.child.id());
                }
                Ok(process)
            }
            Ok(Some(FromChild::Checked {
                refusal: Some(reason),
            })) => bail!("{reason}"),
            Ok(Some(FromChild::Fatal { message })) => bail!("{message}"),
            Ok(_) | Err(_) => {
                let how = process.kill();
                bail!(
                    "the handler process for role {} did not start ({how})",
                    role.name()
                )
            }
        }
    }

    /// Runs one task in the child, relaying progress and log lines to `hooks` and stop
    /// requests from `hooks` to the handler, until it returns, dies or is killed. The role's
    /// settings and the task's prerequisites come from `hooks` too.
    pub fn run(&mut self, task: &Task, hooks: &dyn TaskHooks) -> RunEnd {
        let left_ms = |(confirmed, lease): (Instant, Duration)| {
            let left = (confirmed + lease).saturating_duration_since(Instant::now());
            u64::try_from(left.as_millis()).unwrap_or(u64::MAX)
        };
        let mut lease_told = hooks.lease_confirmed();
        let run = ToChild::Run {
            task: Box::new(task.clone()),
            settings: hooks.settings(),
            prerequisites: hooks.prerequisites(),
            lease_left_ms: lease_told.map(left_ms),
        };
        if self.send(&run).is_err() {
            return RunEnd::Died(self.wait_for_exit());
        }
        let mut stop_sent: Option<(StopReason, Instant)> = None;
        // Whether the handler waits for the answer to a question it asked.
        let mut asking = false;
        loop {
            if asking && let Some(answer) = hooks.answer() {
                asking = false;
                // A child that cannot be told dies of it, or is killed when it is stopped.
                let _ = self.send(&ToChild::Answer { answer });
            }
            if let Some(confirmed) = hooks.lease_confirmed()
                && lease_told.map(|(at, _)| at) != Some(confirmed.0)
            {
                lease_told = Some(confirmed);
                // A child that cannot be told dies of it, or stops the task on its own.
                let _ = self.send(&ToChild::Lease {
                    left_ms: left_ms(confirmed),
                });
            }
            match self.messages.recv_timeout(Duration::from_millis(50)) {
                Ok(Some(FromChild::Progress { percent, message })) => {
                    hooks.progress(percent, &message)
                }
                Ok(Some(FromChild::Log { line })) => hooks.log(&line),
                Ok(Some(FromChild::Plan { steps })) => hooks.plan(steps),
                Ok(Some(FromChild::Ask {
                    question,
                    timeout_secs,
                })) => match hooks.ask(&question, Duration::from_secs(timeout_secs)) {
                    Ok(()) => asking = true,
                    Err(answer) => {
                        let _ = self.send(&ToChild::Answer { answer });
                    }
                },
                Ok(Some(FromChild::Succeeded { result })) => return self.returned(Ok(result)),
                Ok(Some(FromChild::Failed {
                    message,
                    result,
                    retryable,
                    snooze_until_ms,
                    usage_limit,
                })) => {
                    let snooze = snooze_until_ms
                        .and_then(|ms| plugin_api::Timestamp::from_millisecond(ms).ok())
                        .map(|until| plugin_api::Snooze { until, usage_limit });
                    return self.returned(Err(ErrorRecord {
                        message,
                        result,
                        retryable,
                        snooze,
                    }));
                }
                Ok(Some(
                    FromChild::Ready | FromChild::Fatal { .. } | FromChild::Checked { .. },
                )) => {}
                Ok(None) | Err(RecvTimeoutError::Disconnected) => {
                    return RunEnd::Died(self.wait_for_exit());
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            match (stop_sent, hooks.stop_reason()) {
                (None, Some(reason)) => {
                    let stop = ToChild::Stop {
                        reason: encode_stop_reason(Some(reason)),
                    };
                    // A child that cannot be told will be killed at the deadline anyway.
                    let _ = self.send(&stop);
                    stop_sent = Some((reason, Instant::now()));
                }
                (Some((reason, since)), _) if since.elapsed() >= KILL_AFTER => {
                    self.kill();
                    return RunEnd::Killed(reason);
                }
                _ => {}
            }
        }
    }

    /// Whether the child may be given the next task: false once it was ended with what a task
    /// left running.
    pub fn reusable(&self) -> bool {
        !self.spent
    }

    /// The end of a run whose handler returned. On Windows, what the task left running is
    /// ended first: a process cannot end the processes below it and stay up itself without
    /// unsafe code, so the child goes with them and the slot starts a fresh one (so a plugin
    /// that keeps a helper process between tasks gets a new handler process every task).
    fn returned(&mut self, outcome: Result<Value, ErrorRecord>) -> RunEnd {
        #[cfg(windows)]
        if let Some(settled) = &self.settled
            && crate::process_tree::processes_of(self.child.id())
                .is_some_and(|now| !now.is_subset(settled))
        {
            self.kill();
            self.spent = true;
        }
        RunEnd::Returned(outcome)
    }

    fn send(&mut self, message: &ToChild) -> std::io::Result<()> {
        let mut line = serde_json::to_string(message).expect("protocol message serializes");
        line.push('\n');
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        stdin.write_all(line.as_bytes())?;
        stdin.flush()
    }

    /// Closes the child's input, on which it ends what it started and exits (see [`serve`]),
    /// and says whether it has exited within a moment: far cheaper than [`Self::kill`]'s walk
    /// of the process tree, which is for a child that does not. The child is not reaped.
    fn ends_when_told(&mut self) -> bool {
        drop(self.stdin.take());
        crate::process_tree::exits_within(&self.child, Duration::from_millis(500))
    }

    /// Kills the child with every process below it, and says how it ended.
    fn kill(&mut self) -> String {
        crate::process_tree::kill_tree(self.child.id(), true);
        // On Windows the child itself too, should its job not have been made.
        #[cfg(windows)]
        let _ = self.child.kill();
        self.wait_for_exit()
    }

    /// Waits for the child to end, then kills what it left behind: a handler process that
    /// crashed could not end the commands its task started, which were re-parented to this
    /// process.
    fn wait_for_exit(&mut self) -> String {
        // Waits without reaping first: until it is reaped, its pid cannot be given to another
        // program, so it leaves the list that `kill_all` signals before that.
        #[cfg(target_os = "linux")]
        {
            use nix::sys::wait::{Id, WaitPidFlag, waitid};
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT);
        }
        let mut live = LIVE.lock().expect("live handlers lock");
        live.retain(|pid| *pid != self.child.id());
        let how = match self.child.wait() {
            Ok(status) => describe_exit("handler", status),
            Err(err) => format!("the handler process could not be waited for: {err}"),
        };
        let keep = live.iter().copied().collect();
        crate::process_tree::kill_orphans(&keep);
        // What it wrote last reaches the log before the worker goes on (or exits); a command
        // it left holding its stderr is not waited for long.
        #[cfg(windows)]
        if let Some(relayed) = self.relayed.take() {
            let _ = relayed.recv_timeout(Duration::from_secs(1));
        }
        how
    }
}

impl Drop for HandlerProcess {
    fn drop(&mut self) {
        // Dropped with the child idle (its last task's outcome is the parent's already, or it
        // died): closing its input lets it end what it started and exit by itself, which is
        // far cheaper than the tree walk of `kill`, kept for a child that does not. Once it
        // has been reaped, its pid may belong to another process: only an unreaped child is
        // signalled (`wait_for_exit` takes it off the list first).
        if matches!(self.child.try_wait(), Ok(None)) && !self.ends_when_told() {
            self.kill();
        } else {
            self.wait_for_exit();
        }
    }
}

/// Kills every handler process of this process, with everything below them: for a worker
/// that exits while handlers still run (a second Ctrl+C).
pub fn kill_all() {
    let live = LIVE.lock().expect("live handlers lock");
    for pid in live.iter() {
        crate::process_tree::kill_tree(*pid, true);
    }
}

/// `CREATE_NO_WINDOW`: the child has a console of its own that is never shown, so no key
/// pressed in the worker's console (Ctrl+Break included) and no closing of it reaches it; the
/// commands it starts share that hidden console rather than each opening a window.
#[cfg(windows)]
pub const CREATE_NO_WINDOW: u32 = 0x0800_0000;

/// Copies what a child writes to `from` to this process's stderr, a whole line per write so
/// that lines of several children do not mix. Text that is not UTF-8 (a console program's code
/// page) is written with replacement characters, as a console takes nothing else.
#[cfg(windows)]
fn relay_lines(from: impl std::io::Read) {
    let mut reader = std::io::BufReader::new(from);
    let mut line = Vec::new();
    while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
        let mut text = String::from_utf8_lossy(&line).into_owned();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        let _ = std::io::stderr().write_all(text.as_bytes());
        line.clear();
    }
}

/// Says in words how a child process (`what`: "handler", "plugin probe") ended.
pub fn describe_exit(what: &str, status: ExitStatus) -> String {
    #[cfg(windows)]
    if let Some(code) = status.code() {
        // What Windows reports for a crash: an NTSTATUS error code as the exit code.
        let how = match code as u32 {
            0xC000_0409 => Some("aborted"),
            0xC000_0005 => Some("crashed with an access violation"),
            0xC000_001D => Some("crashed on an illegal instruction"),
            0xC000_00FD => Some("crashed with a stack overflow"),
            _ => None,
        };
        if let Some(how) = how {
            return format!("the {what} process {how} (status {:#010X})", code as u32);
        }
    }
    #[cfg(unix)]
    if let Some(signal) = status.signal() {
        let name = nix::sys::signal::Signal::try_from(signal)
            .map(|s| s.as_str().to_string())
            .unwrap_or_else(|_| format!("signal {signal}"));
        let how = match name.as_str() {
            "SIGABRT" => "aborted",
            "SIGSEGV" => "crashed with a segmentation fault",
            "SIGBUS" => "crashed with a bus error",
            "SIGILL" => "crashed on an illegal instruction",
            "SIGFPE" => "crashed on an arithmetic fault",
            "SIGKILL" => "was killed",
            _ => "was ended by a signal",
        };
        return format!("the {what} process {how} ({name})");
    }
    match status.code() {
        Some(code) => format!("the {what} process exited with status {code}"),
        None => format!("the {what} process ended: {status}"),
    }
}

/// Where the child writes the protocol: the real stdout, with stdout itself pointed at stderr
/// so that whatever a handler prints goes to the worker's log instead of into the protocol.
fn protocol_output() -> anyhow::Result<std::fs::File> {
    let protocol = FileDescriptor::redirect_stdio(&std::io::stderr(), StdioDescriptor::Stdout)
        .context("cannot point stdout at stderr")?;
    protocol.as_file().context("cannot duplicate stdout")
}

/// The child side (`host handler-process`): loads the role from `library` and runs the tasks
/// its parent (the worker, process `parent`) sends, one at a time, until its stdin closes.
/// Dies with the worker, and ends every process a task started when the task returns.
pub fn serve(role_name: &str, library: &Path, parent: u32) -> anyhow::Result<()> {
    crate::process_tree::die_with_parent(parent);
    let out = Arc::new(Mutex::new(protocol_output()?));

    let role = match open_role(library, role_name) {
        Ok(role) => role,
        Err(message) => {
            reply(&out, &FromChild::Fatal { message });
            return Ok(());
        }
    };
    reply(&out, &FromChild::Ready);

    let stop = Arc::new(AtomicU8::new(0));
    let watch = Arc::new(LeaseWatch::default());
    let (jobs, inbox) = mpsc::channel();
    let (answer_sender, answers) = mpsc::channel();
    let answers = Arc::new(Mutex::new(answers));
    {
        let stop = Arc::clone(&stop);
        let watch = Arc::clone(&watch);
        thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str(&line) {
                    Ok(ToChild::Stop { reason }) => stop.store(reason, Ordering::SeqCst),
                    Ok(ToChild::Lease { left_ms }) => {
                        watch.confirmed(Duration::from_millis(left_ms));
                    }
                    Ok(ToChild::Answer { answer }) => {
                        let _ = answer_sender.send(answer);
                    }
                    Ok(job) => {
                        stop.store(0, Ordering::SeqCst);
                        if let ToChild::Run { lease_left_ms, .. } = &job {
                            watch.started();
                            if let Some(left) = lease_left_ms {
                                watch.confirmed(Duration::from_millis(*left));
                            }
                        }
                        if jobs.send(job).is_err() {
                            break;
                        }
                    }
                    Err(_) => {}
                }
            }
            // The parent is gone: nobody will record what a running handler does.
            crate::process_tree::end_descendants();
            std::process::exit(0);
        });
    }
    {
        let (stop, watch, out) = (Arc::clone(&stop), Arc::clone(&watch), Arc::clone(&out));
        thread::spawn(move || watch.guard(&stop, &out));
    }
    for job in inbox {
        let (task, settings, prerequisites) = match job {
            ToChild::Run {
                task,
                settings,
                prerequisites,
                ..
            } => (task, settings, prerequisites),
            ToChild::Check { settings } => {
                let refusal = role.check_settings(&settings).err();
                reply(&out, &FromChild::Checked { refusal });
                continue;
            }
            ToChild::Stop { .. } | ToChild::Lease { .. } | ToChild::Answer { .. } => continue,
        };
        let hooks = ChildHooks {
            out: Arc::clone(&out),
            stop: Arc::clone(&stop),
            answers: Arc::clone(&answers),
            settings,
            prerequisites,
        };
        let reply_message = match role.handle(&task, &hooks) {
            Ok(result) => match too_large(&result) {
                None => FromChild::Succeeded { result },
                Some(message) => FromChild::Failed {
                    message,
                    result: None,
                    retryable: false,
                    snooze_until_ms: None,
                    usage_limit: false,
                },
            },
            Err(record) => {
                let refusal = record.result.as_ref().and_then(too_large);
                FromChild::Failed {
                    message: match &refusal {
                        Some(why) => format!("{}; {why}", record.message),
                        None => record.message,
                    },
                    result: if refusal.is_some() {
                        None
                    } else {
                        record.result
                    },
                    retryable: record.retryable,
                    snooze_until_ms: record.snooze.map(|s| s.until.as_millisecond()),
                    usage_limit: record.snooze.is_some_and(|s| s.usage_limit),
                }
            }
        };
        // The attempt is over: so is everything it started.
        watch.ended();
        crate::process_tree::end_descendants();
        reply(&out, &reply_message);
    }
    Ok(())
}

/// The child's own guard against two attempts at once: the worker tells it each time the queue
/// confirms the running task's lease ([`ToChild::Lease`]); when half of the lease left then
/// passes with no newer word, the worker is stopped (Ctrl+Z, SIGSTOP), hung or cut off from the
/// queue, and cannot stop the task before its lease runs out and another worker starts it. So
/// the child asks its handler to stop, and when three quarters have passed, ends what the task
/// started and exits.
#[derive(Default)]
struct LeaseWatch(Mutex<Watched>);

#[derive(Default)]
struct Watched {
    /// Whether a task runs: a confirmation the parent sent as the last task returned is stale.
    running: bool,
    /// When the running task must stop and when it is ended, once a lease was confirmed.
    deadlines: Option<(Instant, Instant)>,
}

impl LeaseWatch {
    /// A task was handed over (in order with the confirmations that follow it).
    fn started(&self) {
        let mut watched = self.0.lock().expect("lease watch lock");
        *watched = Watched {
            running: true,
            deadlines: None,
        };
    }

    /// The lease was confirmed with `left` of it remaining.
    fn confirmed(&self, left: Duration) {
        let mut watched = self.0.lock().expect("lease watch lock");
        if watched.running {
            let now = Instant::now();
            watched.deadlines = Some((now + left / 2, now + left * 3 / 4));
        }
    }

    /// The task returned: nothing to guard until the next one.
    fn ended(&self) {
        *self.0.lock().expect("lease watch lock") = Watched::default();
    }

    /// Watches the deadlines for the child's life.
    fn guard(&self, stop: &AtomicU8, out: &Mutex<std::fs::File>) {
        let mut asked = false;
        loop {
            thread::sleep(Duration::from_millis(100));
            let Some((stop_at, end_at)) = self.0.lock().expect("lease watch lock").deadlines else {
                asked = false;
                continue;
            };
            let now = Instant::now();
            if now >= end_at {
                eprintln!(
                    "the worker has not confirmed this task's lease in time: ending what the \
                     task started before the lease runs out"
                );
                crate::process_tree::end_descendants();
                std::process::exit(1);
            }
            if now >= stop_at && !asked {
                asked = true;
                let cancelled = encode_stop_reason(Some(StopReason::Cancelled));
                let _ = stop.compare_exchange(0, cancelled, Ordering::SeqCst, Ordering::SeqCst);
                let line = "the worker has not confirmed this task's lease in time (it is \
                            stopped, hung or cut off from the queue): stopping the task before \
                            the lease runs out"
                    .to_string();
                reply(out, &FromChild::Log { line });
            }
        }
    }
}

/// Why a handler's result is not kept, when it is larger than [`MAX_RESULT`] as JSON: the queue
/// stores results whole, and one result of many megabytes slows every listing.
fn too_large(result: &Value) -> Option<String> {
    let size = serde_json::to_string(result).map_or(0, |text| text.len());
    (size > MAX_RESULT).then(|| {
        format!(
            "the result is {:.1} MiB of JSON, over the limit of {} MiB: keep large output in a \
             file and put its path in the result",
            size as f64 / (1024.0 * 1024.0),
            MAX_RESULT / (1024 * 1024)
        )
    })
}

fn reply(out: &Mutex<std::fs::File>, message: &FromChild) {
    let mut line = serde_json::to_string(message).expect("protocol message serializes");
    line.push('\n');
    // If the parent is gone there is nobody to tell; the stdin thread ends the process.
    let _ = out
        .lock()
        .expect("protocol lock")
        .write_all(line.as_bytes());
}

/// The child's hooks: progress and log lines travel to the parent; stop requests and answers
/// come from it.
struct ChildHooks {
    out: Arc<Mutex<std::fs::File>>,
    stop: Arc<AtomicU8>,
    answers: Arc<Mutex<mpsc::Receiver<Answer>>>,
    settings: Value,
    prerequisites: Vec<Task>,
}

impl TaskHooks for ChildHooks {
    fn progress(&self, percent: u8, message: &str) {
        let message = message.to_string();
        reply(&self.out, &FromChild::Progress { percent, message });
    }

    fn log(&self, line: &str) {
        let line = line.to_string();
        reply(&self.out, &FromChild::Log { line });
    }

    fn stop_reason(&self) -> Option<StopReason> {
        decode_stop_reason(self.stop.load(Ordering::SeqCst))
    }

    fn settings(&self) -> Value {
        self.settings.clone()
    }

    fn prerequisites(&self) -> Vec<Task> {
        self.prerequisites.clone()
    }

    fn plan(&self, steps: Vec<PlanStep>) {
        reply(&self.out, &FromChild::Plan { steps });
    }

    fn ask(&self, question: &Question, timeout: Duration) -> Result<(), Answer> {
        // An answer that came after an earlier question was given up on is not this one's.
        let answers = self.answers.lock().expect("answers lock");
        while answers.try_recv().is_ok() {}
        let ask = FromChild::Ask {
            question: question.clone(),
            timeout_secs: timeout.as_secs(),
        };
        reply(&self.out, &ask);
        Ok(())
    }

    fn answer(&self) -> Option<Answer> {
        self.answers.lock().expect("answers lock").try_recv().ok()
    }
}
