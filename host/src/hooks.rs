//! `[hooks]` of `host.toml`: a command run when a task needs someone's attention (it failed
//! for good, its change waits for review, its merge conflicts), with the task's JSON on stdin,
//! as a desktop notification or a chat message would want it. Which hook runs when is decided
//! by [`crate::attention`], which announces the same events to `[notify]`.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use queue::Task;

/// How long a hook may run before it is killed: it must not hold up a worker or a merge.
const HOOK_LIMIT: Duration = Duration::from_secs(30);

/// Runs `command` for `event` about `task`, waiting for it at most [`HOOK_LIMIT`]. The error
/// says why it did not run or did not succeed, naming the event.
pub fn run(command: &[String], event: &str, task: &Task) -> Result<(), String> {
    let fail = |why: String| format!("hook {event} ({}): {why}", command[0]);
    let mut hook = Command::new(&command[0]);
    // On Windows, a hidden console of its own: the Ctrl+Break that stops the worker does not
    // end the hook mid-way.
    #[cfg(windows)]
    std::os::windows::process::CommandExt::creation_flags(
        &mut hook,
        crate::handler_process::CREATE_NO_WINDOW,
    );
    let mut child = hook
        .args(&command[1..])
        .env("HOST_EVENT", event)
        .env("HOST_TASK_ID", &task.id)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|err| fail(err.to_string()))?;
    let json = serde_json::to_vec(task).expect("a task serializes");
    if let Some(mut stdin) = child.stdin.take() {
        // From a thread: a hook that does not read a task larger than the pipe holds must not
        // stop the clock below. One that does not read its input is its own business.
        std::thread::spawn(move || {
            let _ = stdin.write_all(&json);
        });
    }
    let started = Instant::now();
    loop {
        let waited = match child.try_wait() {
            // A worker reaps the orphans its plugins leave, and may reap this child first: it
            // has ended, and how is not known.
            #[cfg(unix)]
            Err(err) if err.raw_os_error() == Some(nix::errno::Errno::ECHILD as i32) => {
                return Ok(());
            }
            waited => waited.map_err(|err| fail(err.to_string()))?,
        };
        match waited {
            Some(status) if status.success() => return Ok(()),
            Some(status) => return Err(fail(format!("it ended with {status}"))),
            None if started.elapsed() > HOOK_LIMIT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!(
                    "it ran past {}s and was killed",
                    HOOK_LIMIT.as_secs()
                )));
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
