//! Role `tester` (task type `test`): runs a test command in the target.
//!
//! Payload (optional): `{"command": ["cargo", "test", "--quiet"]}`, an argument vector (never
//! passed through a shell). Without one, the project's own test command is detected from the
//! target: `cargo test` (Cargo.toml), `npm test` (package.json), `python3 -m pytest`
//! (pyproject.toml, pytest.ini, setup.py, tox.ini) or `make test` (a Makefile with a `test`
//! target). The command runs with the task's timeout (default 10 minutes) and is killed, with
//! its whole process group, when it runs over or the task is cancelled.
//!
//! A test task that comes after agent tasks whose changes are on worktree branches of the
//! target's repository (not merged yet) runs on those changes, in a throwaway worktree of them
//! (see [`Workplace`]), not in the user's checkout.
//!
//! Result: `command`, `exitCode`, `durationMs`, `timedOut`, `outputTail` (the last lines of
//! stdout and stderr together) and `branches` (the branches tested, when not the target
//! itself). A non-zero exit fails the task with the same result attached.

use std::path::Path;
use std::time::Duration;

use plugin_api::{Context, HandlerError, Role, Task, Value, json};

use crate::command::{self, Limits};
use crate::paths::{Workplace, target};

/// Runs the target's tests.
pub struct Tester;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

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

impl Role for Tester {
    fn name(&self) -> &str {
        "tester"
    }

    fn task_types(&self) -> Vec<String> {
        vec!["test".into()]
    }

    fn settings(&self) -> Vec<plugin_api::Setting> {
        vec![crate::paths::branch_setting()]
    }

    fn validate(&self, task: &Task) -> Result<(), String> {
        target(task)?;
        payload_command(task).map(|_| ())
    }

    fn handle(&self, task: &Task, ctx: &Context<'_>) -> Result<Value, HandlerError> {
        let place = Workplace::for_task(task, target(task)?, &ctx.prerequisites(), ctx)?;
        let dir = place.dir();
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
        let limits = Limits::for_task(task, DEFAULT_TIMEOUT, None);
        let shown = argv.join(" ");
        ctx.progress(0, &format!("running {shown}"));
        let run = command::run(&argv, dir, None, limits, ctx)?;
        let mut result = json!({
            "command": argv,
            "exitCode": run.status.code(),
            "durationMs": run.duration.as_millis() as u64,
            "timedOut": run.timed_out || run.stop == Some(plugin_api::StopReason::TimedOut),
            "outputTail": run.tail,
        });
        if !place.branches().is_empty() {
            result["branches"] = json!(place.branches());
        }
        ctx.progress(100, &format!("{shown} finished"));
        match run.failure(&format!("`{shown}`"), limits) {
            None => Ok(result),
            Some(why) => Err(HandlerError::new(why).with_result(result)),
        }
    }
}

plugin_api::register_role!(Tester);
