//! Running an external command for a task: argument vector (never a shell), its own process
//! group, output streamed to the task log line by line with the last lines kept, killed with
//! everything it started when the task's time runs out or the task is stopped.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use plugin_api::Context;

/// How many lines of output a result keeps.
const TAIL_LINES: usize = 40;

/// How a command run ended.
pub struct Finished {
    /// Its exit status.
    pub status: ExitStatus,
    /// How long it ran.
    pub duration: Duration,
    /// Whether it was killed because the time ran out.
    pub timed_out: bool,
    /// Whether it was killed because the task was told to stop.
    pub stopped: bool,
    /// The last lines of stdout and stderr together.
    pub tail: String,
}

/// Runs `argv` in `dir`, feeding it `stdin`. Fails with a message naming the program when it
/// cannot be started (for example, it is not on `PATH`).
pub fn run(
    argv: &[String],
    dir: &Path,
    stdin: Option<&str>,
    timeout: Duration,
    ctx: &Context<'_>,
) -> Result<Finished, String> {
    let started = Instant::now();
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .current_dir(dir)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills what the command started too.
        .process_group(0)
        .spawn()
        .map_err(|err| match err.kind() {
            std::io::ErrorKind::NotFound => format!("program `{}` not found on PATH", argv[0]),
            _ => format!("cannot run `{}` in {}: {err}", argv[0], dir.display()),
        })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A command that does not read its input is not an error.
        let _ = pipe.write_all(text.as_bytes());
    }
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let (mut timed_out, mut stopped) = (false, false);
    let status = std::thread::scope(|scope| {
        let (closed_tx, closed) = mpsc::channel();
        for (stream, tail) in [
            (Box::new(stdout) as Box<dyn Read + Send>, Arc::clone(&tail)),
            (Box::new(stderr), Arc::clone(&tail)),
        ] {
            let closed_tx = closed_tx.clone();
            scope.spawn(move || {
                pump(stream, tail, ctx);
                let _ = closed_tx.send(());
            });
        }
        drop(closed_tx);
        // Short commands are common: look often at first, then back off. A command usually
        // closes its output as it exits, so the end of both streams is the cue to look again
        // at once rather than after the pause.
        let mut pause = Duration::from_millis(1);
        let mut open_streams = 2;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok::<_, std::io::Error>(status);
            }
            timed_out = started.elapsed() > timeout;
            stopped = ctx.is_cancelled();
            if timed_out || stopped {
                let group = nix::unistd::Pid::from_raw(child.id() as i32);
                let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
                return child.wait();
            }
            if open_streams > 0 {
                match closed.recv_timeout(pause) {
                    Ok(()) => {
                        open_streams -= 1;
                        if open_streams == 0 {
                            pause = Duration::from_micros(50);
                        }
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => open_streams = 0,
                }
            } else {
                std::thread::sleep(pause);
            }
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    })
    .map_err(|err| format!("waiting for `{}`: {err}", argv[0]))?;
    let tail = Vec::from(std::mem::take(&mut *tail.lock().expect("tail lock"))).join("\n");
    Ok(Finished {
        status,
        duration: started.elapsed(),
        timed_out,
        stopped,
        tail,
    })
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
