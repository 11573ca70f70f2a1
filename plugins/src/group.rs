//! The processes a command starts, killed together: on Unix the command's own process group,
//! on Windows a job object (with kill-on-close) that the command and everything it starts
//! belong to.

use std::process::{Child, Command};

/// Everything a command started, to be killed at once.
pub struct ProcessGroup {
    #[cfg(unix)]
    leader: nix::unistd::Pid,
    #[cfg(windows)]
    job: Option<win32job::Job>,
    /// The command's process id, to kill it by where no job could be made.
    #[cfg(windows)]
    pid: u32,
}

impl ProcessGroup {
    /// Makes `command` start a group of its own.
    pub fn prepare(command: &mut Command) {
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(command, 0);
        #[cfg(windows)]
        let _ = command;
    }

    /// The group of a child started from a command that [`ProcessGroup::prepare`] prepared.
    /// On Windows, what the child starts before it is put in its job (a moment after it
    /// started) is not in it.
    pub fn of(child: &Child) -> ProcessGroup {
        #[cfg(unix)]
        return ProcessGroup {
            leader: nix::unistd::Pid::from_raw(child.id() as i32),
        };
        #[cfg(windows)]
        {
            use std::os::windows::io::AsRawHandle;
            let job = win32job::Job::create().ok().filter(|job| {
                let mut info = win32job::ExtendedLimitInfo::new();
                info.limit_kill_on_job_close();
                job.set_extended_limit_info(&info).is_ok()
                    && job.assign_process(child.as_raw_handle() as isize).is_ok()
            });
            ProcessGroup {
                job,
                pid: child.id(),
            }
        }
    }

    /// Kills every process of the group, and the command itself even where it is not in the
    /// group: on Unix one that left it (`setsid`), on Windows one for which no job could be
    /// made (with what it started, as far as `taskkill` finds them). Only until the command has
    /// been waited for: after that its id may be another process's.
    pub fn kill_all(&mut self) {
        #[cfg(unix)]
        let _ = nix::sys::signal::kill(self.leader, nix::sys::signal::Signal::SIGKILL);
        #[cfg(windows)]
        if self.job.is_none() {
            let _ = std::process::Command::new("taskkill")
                .args(["/F", "/T", "/PID", &self.pid.to_string()])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
        self.kill();
    }

    /// Kills every process of the group.
    pub fn kill(&mut self) {
        #[cfg(unix)]
        let _ = nix::sys::signal::killpg(self.leader, nix::sys::signal::Signal::SIGKILL);
        // Closing the job's last handle kills what is in it.
        #[cfg(windows)]
        drop(self.job.take());
    }
}
