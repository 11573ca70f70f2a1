//! Role `tester` (task type `test`): runs a test command in the target.
//!
//! Payload (optional): `{"command": ["cargo", "test", "--quiet"]}`, an argument vector (never
//! passed through a shell). Without one, the project's own test command is detected from the
//! target: `cargo test` (Cargo.toml), `npm test` (package.json), `python3 -m pytest`
//! (pyproject.toml, pytest.ini, setup.py, tox.ini) or `make test` (a Makefile with a `test`
//! target). The command runs with the task's timeout (default 10 minutes) and is killed, with
//! its whole process group, when it runs over or the task is cancelled.
//!
//! Result: `command`, `exitCode`, `durationMs`, `timedOut` and `outputTail` (the last lines of
//! stdout and stderr together). A non-zero exit fails the task with the same result attached.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plugin_api::{Context, HandlerError, Role, Task, Value, json};

use crate::paths::target;

/// Runs the target's tests.
pub struct Tester;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
const TAIL_LINES: usize = 40;

fn payload_command(task: &Task) -> Result<Option<Vec<String>>, String> {
    let Some(command) = task.payload.get("command") else {
        return Ok(None);
    };
    let argv: Option<Vec<String>> = command
        .as_array()
        .map(|items| items.iter().map(|v| v.as_str().map(String::from)).collect())
        .unwrap_or(None);
    match argv {
        Some(argv) if !argv.is_empty() => Ok(Some(argv)),
        _ => Err("payload \"command\" must be a non-empty array of strings".into()),
    }
}

/// The project's own test command, from the files in `dir`.
pub fn detect_command(dir: &Path) -> Option<Vec<String>> {
    let has = |name: &str| dir.join(name).is_file();
    let argv: &[&str] = if has("Cargo.toml") {
        &["cargo", "test"]
    } else if has("package.json") {
        &["npm", "test"]
    } else if ["pyproject.toml", "pytest.ini", "setup.py", "tox.ini"]
        .iter()
        .any(|f| has(f))
    {
        &["python3", "-m", "pytest"]
    } else if ["Makefile", "makefile", "GNUmakefile"].iter().any(|f| {
        std::fs::read_to_string(dir.join(f))
            .is_ok_and(|text| text.lines().any(|l| l.starts_with("test:")))
    }) {
        &["make", "test"]
    } else {
        return None;
    };
    Some(argv.iter().map(|s| s.to_string()).collect())
}

/// Collects the last lines of output and forwards each line to the task log.
fn pump(stream: impl Read, tail: Arc<Mutex<VecDeque<String>>>, ctx: &Context<'_>) {
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        ctx.log(&line);
        let mut tail = tail.lock().expect("tail lock");
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
}

impl Role for Tester {
    fn name(&self) -> &str {
        "tester"
    }

    fn task_types(&self) -> Vec<String> {
        vec!["test".into()]
    }

    fn validate(&self, task: &Task) -> Result<(), String> {
        target(task)?;
        payload_command(task).map(|_| ())
    }

    fn handle(&self, task: &Task, ctx: &Context<'_>) -> Result<Value, HandlerError> {
        let dir = target(task)?;
        let argv = match payload_command(task)? {
            Some(argv) => argv,
            None => detect_command(dir).ok_or_else(|| {
                format!(
                    "no test command: the payload has none and none was detected in {} \
                     (looked for Cargo.toml, package.json, pyproject.toml, a Makefile with `test:`)",
                    dir.display()
                )
            })?,
        };
        let timeout = task
            .timeout_secs
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TIMEOUT);
        let shown = argv.join(" ");
        ctx.progress(0, &format!("running {shown}"));
        let started = Instant::now();
        let mut child = Command::new(&argv[0])
            .args(&argv[1..])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so a timeout kills what the command started too.
            .process_group(0)
            .spawn()
            .map_err(|err| format!("cannot run `{}` in {}: {err}", argv[0], dir.display()))?;
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let mut timed_out = false;
        let status = std::thread::scope(|scope| {
            let out_tail = Arc::clone(&tail);
            let err_tail = Arc::clone(&tail);
            scope.spawn(move || pump(stdout, out_tail, ctx));
            scope.spawn(move || pump(stderr, err_tail, ctx));
            // Short commands are common: look often at first, then back off.
            let mut pause = Duration::from_millis(1);
            loop {
                if let Some(status) = child.try_wait()? {
                    return Ok::<_, std::io::Error>(status);
                }
                if started.elapsed() > timeout || ctx.is_cancelled() {
                    timed_out = started.elapsed() > timeout;
                    let group = nix::unistd::Pid::from_raw(child.id() as i32);
                    let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
                    return child.wait();
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
        })?;
        let duration_ms = started.elapsed().as_millis() as u64;
        let output_tail =
            Vec::from(std::mem::take(&mut *tail.lock().expect("tail lock"))).join("\n");
        let result = json!({
            "command": argv,
            "exitCode": status.code(),
            "durationMs": duration_ms,
            "timedOut": timed_out,
            "outputTail": output_tail,
        });
        ctx.progress(100, &format!("{shown} finished"));
        match status.code() {
            Some(0) => Ok(result),
            _ if timed_out => Err(HandlerError::new(format!(
                "`{shown}` timed out after {}s and was killed",
                timeout.as_secs()
            ))
            .with_result(result)),
            Some(code) => Err(
                HandlerError::new(format!("`{shown}` exited with code {code}")).with_result(result),
            ),
            None => Err(
                HandlerError::new(format!("`{shown}` was killed by a signal")).with_result(result),
            ),
        }
    }
}

plugin_api::register_role!(Tester);
