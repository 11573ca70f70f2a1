//! Nothing a task starts outlives its attempt: the processes below a handler process are found
//! and killed when the attempt ends, when the handler process dies, and when the worker dies.
//!
//! On Linux, every process that runs plugin code (handler processes, plugin probes) and every
//! worker is a *subreaper*: a process orphaned below it (a command whose parent exited, a daemon
//! that double-forked) is re-parented to it rather than to init, so it stays findable as a
//! descendant. Plugin processes also ask the kernel for a signal when their parent dies
//! (`PR_SET_PDEATHSIG`; SIGCONT, which wakes even a stopped process), on which they kill
//! everything below them and exit: a worker killed with SIGKILL takes its handlers' commands
//! with it.
//!
//! A tree is killed by first stopping every process in it (SIGSTOP, repeated until no new
//! process appears, so that nothing can fork its way out), then killing them all. Each process
//! is signalled only after checking, just before, that its parent is still in the tree: a pid
//! that was reaped meanwhile and given to an unrelated program is left alone.
//!
//! On other Unix systems (no subreapers, no parent-death signal) only the handler process's own
//! process group is killed, by the worker; what a plugin moves out of that group survives.
//!
//! On Windows, job objects do all of it: each handler process is put in a job of its own
//! ([`track`]), which everything it starts joins, and killing the job kills them all; the
//! worker puts itself in a job that kills everything in it when its last handle closes, which
//! happens when the worker exits or dies.

#[cfg(target_os = "linux")]
use std::collections::HashMap;
#[cfg(unix)]
use std::collections::HashSet;
#[cfg(target_os = "linux")]
use std::time::{Duration, Instant};

#[cfg(unix)]
use nix::sys::signal::{Signal, kill};
#[cfg(unix)]
use nix::unistd::Pid;

/// Every process's children, by parent, from one pass over `/proc`; zombies (exited, not yet
/// reaped) only with `zombies`.
#[cfg(target_os = "linux")]
fn children_by_parent(zombies: bool) -> HashMap<u32, Vec<u32>> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return children;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some((state, ppid)) = state_and_parent(pid)
            && (zombies || live(state))
        {
            children.entry(ppid).or_default().push(pid);
        }
    }
    children
}

/// A process's state letter and parent, from `/proc/PID/stat` (`pid (comm) state ppid ...`,
/// where comm may hold spaces and parentheses).
#[cfg(target_os = "linux")]
fn state_and_parent(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

#[cfg(target_os = "linux")]
fn live(state: char) -> bool {
    state != 'Z' && state != 'X'
}

/// The live processes below `root` (children, their children, ...).
#[cfg(target_os = "linux")]
fn descendants(root: u32) -> Vec<u32> {
    let children = children_by_parent(false);
    let mut found = Vec::new();
    let mut queue = vec![root];
    while let Some(pid) = queue.pop() {
        for child in children.get(&pid).into_iter().flatten() {
            found.push(*child);
            queue.push(*child);
        }
    }
    found
}

/// Kills every process below `root`, and `root` itself when `including_root` (a child of this
/// process, not yet reaped): stops them all first, so that none can start another while they
/// are being killed. Returns once none is left alive, or after a few seconds of trying.
#[cfg(target_os = "linux")]
pub fn kill_tree(root: u32, including_root: bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut tree: HashSet<u32> = descendants(root).into_iter().collect();
        let root_alive = including_root && state_and_parent(root).is_some_and(|(s, _)| live(s));
        if (tree.is_empty() && !root_alive) || Instant::now() > deadline {
            return;
        }
        tree.insert(root);
        // Signals `pid` if it still hangs below the tree (or is the root): a pid reaped since
        // the scan may belong to another program now.
        let signal = |tree: &HashSet<u32>, pid: u32, signal: Signal| {
            let below = pid == root
                || state_and_parent(pid)
                    .is_some_and(|(s, parent)| live(s) && tree.contains(&parent));
            if below && (pid != root || including_root) {
                let _ = kill(Pid::from_raw(pid as i32), signal);
            }
        };
        // Freeze until the set stops growing: a process stopped cannot fork.
        loop {
            for pid in &tree {
                signal(&tree, *pid, Signal::SIGSTOP);
            }
            let before = tree.len();
            tree.extend(descendants(root));
            if tree.len() == before || Instant::now() > deadline {
                break;
            }
        }
        for pid in &tree {
            signal(&tree, *pid, Signal::SIGKILL);
        }
        // The killed stay zombies until their parent (or a subreaper) reaps them; they are
        // no longer counted.
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether `child` exits within `limit`, watched through a pidfd without reaping it (its pid
/// stays its own until the caller waits for it). False when the time ran out, and at once
/// where there are no pidfds (the caller then looks for itself).
#[cfg(target_os = "linux")]
pub fn exits_within(child: &std::process::Child, limit: Duration) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    use rustix::process::{Pid, PidfdFlags, pidfd_open};
    let Ok(pidfd) = pidfd_open(Pid::from_child(child), PidfdFlags::empty()) else {
        return false;
    };
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let left = Timespec::try_from(left).unwrap_or_default();
        let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
        match poll(&mut fds, Some(&left)) {
            Ok(0) if Instant::now() >= deadline => return false,
            Ok(0) | Err(rustix::io::Errno::INTR) => {}
            Ok(_) => return true,
            Err(_) => return false,
        }
    }
}

/// Without pidfds a child is not watched: the caller goes on as if it had not exited.
#[cfg(not(target_os = "linux"))]
pub fn exits_within(_child: &std::process::Child, _limit: std::time::Duration) -> bool {
    false
}

/// Kills the process group `root` leads, the portable stand-in for the Linux tree walk; a
/// process never kills its own group this way.
#[cfg(all(unix, not(target_os = "linux")))]
pub fn kill_tree(root: u32, including_root: bool) {
    if root == std::process::id() {
        return;
    }
    let _ = nix::sys::signal::killpg(Pid::from_raw(root as i32), Signal::SIGKILL);
    if including_root {
        let _ = kill(Pid::from_raw(root as i32), Signal::SIGKILL);
    }
}

/// Kills and reaps the children of this process that are not in `keep` (the children it still
/// uses), with everything below them: orphans a dead child left behind, re-parented to this
/// subreaper, and the zombies they leave in turn.
#[cfg(target_os = "linux")]
pub fn kill_orphans(keep: &HashSet<u32>) {
    let me = std::process::id();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let orphans: Vec<u32> = children_by_parent(true)
            .remove(&me)
            .unwrap_or_default()
            .into_iter()
            .filter(|pid| !keep.contains(pid))
            .collect();
        if orphans.is_empty() {
            return;
        }
        for orphan in orphans {
            // A child of this process: its pid is not reused before it is reaped here.
            kill_tree(orphan, true);
            let _ = nix::sys::wait::waitpid(Pid::from_raw(orphan as i32), None);
        }
    }
}

#[cfg(all(unix, not(target_os = "linux")))]
pub fn kill_orphans(_keep: &HashSet<u32>) {}

/// Kills everything below this process and reaps it: for a process that runs plugin code,
/// when a task's attempt ends. Costs one system call when nothing is left.
#[cfg(target_os = "linux")]
pub fn end_descendants() {
    use nix::sys::wait::{Id, WaitPidFlag, waitid};
    // Whether this process has any child, running or not yet reaped: one call, where finding
    // its descendants reads all of `/proc`.
    let flags = WaitPidFlag::WNOHANG
        | WaitPidFlag::WNOWAIT
        | WaitPidFlag::WEXITED
        | WaitPidFlag::WSTOPPED
        | WaitPidFlag::WCONTINUED;
    if matches!(waitid(Id::All, flags), Err(nix::errno::Errno::ECHILD)) {
        return;
    }
    kill_tree(std::process::id(), false);
    // Nothing else in this process waits for its children between tasks.
    use nix::sys::wait::WaitStatus;
    while let Ok(status) = nix::sys::wait::waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}

#[cfg(not(target_os = "linux"))]
pub fn end_descendants() {}

/// Makes this process the subreaper of everything it starts, so that orphans stay below it.
/// On Windows, puts it in a job that kills everything in it when this process ends.
pub fn become_subreaper() {
    #[cfg(target_os = "linux")]
    let _ = nix::sys::prctl::set_child_subreaper(true);
    #[cfg(windows)]
    windows::hold_everything();
}

/// For a process that runs plugin code: when `parent` (the process that started it) dies, for
/// whatever reason, everything below this process is killed and it exits. Also makes it a
/// subreaper. If `parent` is already gone, that happens at once.
pub fn die_with_parent(parent: u32) {
    become_subreaper();
    #[cfg(target_os = "linux")]
    {
        // SIGCONT, not SIGTERM: a process stopped (SIGSTOP) when its parent dies holds any other
        // signal pending for as long as it stays stopped, and the commands its task started
        // would run on beside the task's next attempt; SIGCONT wakes it, whatever its state.
        // A SIGCONT that is only a resume (the parent alive) changes nothing. The kernel sends
        // it when the *thread* that started this process ends, too: hence the parent check.
        let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGCONT);
        let signals = [signal_hook::consts::SIGTERM, signal_hook::consts::SIGCONT];
        if let Ok(mut signals) = signal_hook::iterator::Signals::new(signals) {
            std::thread::spawn(move || {
                for signal in signals.forever() {
                    let orphaned = nix::unistd::getppid().as_raw() as u32 != parent;
                    if signal == signal_hook::consts::SIGTERM || orphaned {
                        kill_tree(std::process::id(), false);
                        std::process::exit(143);
                    }
                }
            });
        }
        // Without the handler, SIGTERM's default action still ends this process. The parent
        // may have died before the request above was made.
        if nix::unistd::getppid().as_raw() as u32 != parent {
            kill_tree(std::process::id(), false);
            std::process::exit(143);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = parent;
}

#[cfg(windows)]
pub use windows::{kill_orphans, kill_tree, processes_of, track};

#[cfg(windows)]
mod windows {
    use std::process::Child;
    use std::sync::{Mutex, OnceLock};

    use win32job::{ExtendedLimitInfo, Job};

    /// The job of each handler process, by its pid.
    static JOBS: Mutex<Vec<(u32, Job)>> = Mutex::new(Vec::new());

    /// The job this process put itself in; closed (killing what is in it) when it ends.
    static EVERYTHING: OnceLock<Option<Job>> = OnceLock::new();

    fn killing_job() -> Option<Job> {
        let job = Job::create().ok()?;
        let mut info = ExtendedLimitInfo::new();
        info.limit_kill_on_job_close();
        job.set_extended_limit_info(&info).ok()?;
        Some(job)
    }

    pub(super) fn hold_everything() {
        EVERYTHING.get_or_init(|| {
            let job = killing_job()?;
            job.assign_current_process().ok()?;
            Some(job)
        });
    }

    /// Puts a child that runs plugin code in a job of its own, so that [`kill_tree`] kills it
    /// with everything it started. What it starts in the moment before is not in the job.
    pub fn track(child: &Child) {
        use std::os::windows::io::AsRawHandle;
        if let Some(job) = killing_job()
            && job.assign_process(child.as_raw_handle() as isize).is_ok()
        {
            JOBS.lock().expect("jobs lock").push((child.id(), job));
        }
    }

    /// The processes a tracked child's job holds, by id: the child, what it started (with what
    /// those started) and possibly its console's host; `None` for a child without a job.
    pub fn processes_of(root: u32) -> Option<std::collections::HashSet<usize>> {
        let jobs = JOBS.lock().expect("jobs lock");
        let (_, job) = jobs.iter().find(|(pid, _)| *pid == root)?;
        job.query_process_id_list()
            .ok()
            .map(|pids| pids.into_iter().collect())
    }

    /// Kills what the tracked children not in `keep` (those that ended) left running.
    pub fn kill_orphans(keep: &std::collections::HashSet<u32>) {
        let mut jobs = JOBS.lock().expect("jobs lock");
        jobs.retain(|(pid, _)| keep.contains(pid));
    }

    /// Kills a tracked child with everything it started (its job); `including_root` is always
    /// so on Windows.
    pub fn kill_tree(root: u32, _including_root: bool) {
        let mut jobs = JOBS.lock().expect("jobs lock");
        jobs.retain(|(pid, _)| *pid != root);
    }
}
