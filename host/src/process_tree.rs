//! Nothing a task starts outlives its attempt: the processes below a handler process are found
//! and killed when the attempt ends, when the handler process dies, and when the worker dies.
//!
//! On Linux, every process that runs plugin code (handler processes, plugin probes) and every
//! worker is a *subreaper*: a process orphaned below it (a command whose parent exited, a daemon
//! that double-forked) is re-parented to it rather than to init, so it stays findable as a
//! descendant. Plugin processes also ask the kernel for a SIGTERM when their parent dies
//! (`PR_SET_PDEATHSIG`), on which they kill everything below them and exit: a worker killed with
//! SIGKILL takes its handlers' commands with it.
//!
//! A tree is killed by first stopping every process in it (SIGSTOP, repeated until no new
//! process appears, so that nothing can fork its way out), then killing them all. Elsewhere than
//! Linux, the process group is killed instead.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The live processes below `root` (children, their children, ...), zombies left out.
#[cfg(target_os = "linux")]
pub fn descendants(root: u32) -> Vec<u32> {
    let children = children_by_parent();
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

/// Every live process's children, by parent, from one pass over `/proc`.
#[cfg(target_os = "linux")]
fn children_by_parent() -> HashMap<u32, Vec<u32>> {
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
            && state != 'Z'
            && state != 'X'
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

/// Kills every process below `root`, and `root` itself when `including_root`: stops them all
/// first, so that none can start another while they are being killed. Returns once none is
/// left alive, or after a few seconds of trying.
#[cfg(target_os = "linux")]
pub fn kill_tree(root: u32, including_root: bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let signal = |pid: u32, signal: Signal| {
        let _ = kill(Pid::from_raw(pid as i32), signal);
    };
    loop {
        let mut tree: HashSet<u32> = descendants(root).into_iter().collect();
        if including_root && alive(root) {
            tree.insert(root);
        }
        if tree.is_empty() || Instant::now() > deadline {
            return;
        }
        // Freeze until the set stops growing: a process stopped cannot fork.
        loop {
            for pid in &tree {
                signal(*pid, Signal::SIGSTOP);
            }
            let before = tree.len();
            tree.extend(descendants(root));
            if tree.len() == before || Instant::now() > deadline {
                break;
            }
        }
        for pid in &tree {
            signal(*pid, Signal::SIGKILL);
        }
        // The killed stay zombies until their parent (or a subreaper) reaps them; they are
        // no longer counted.
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Kills the process group `root` leads; the portable stand-in for the Linux tree walk.
#[cfg(not(target_os = "linux"))]
pub fn kill_tree(root: u32, including_root: bool) {
    let _ = nix::sys::signal::killpg(Pid::from_raw(root as i32), Signal::SIGKILL);
    if including_root {
        let _ = kill(Pid::from_raw(root as i32), Signal::SIGKILL);
    }
}

/// Whether `pid` is a live process (not a zombie).
#[cfg(target_os = "linux")]
fn alive(pid: u32) -> bool {
    state_and_parent(pid).is_some_and(|(state, _)| state != 'Z' && state != 'X')
}

/// Kills the processes below this one that are not below one of `keep` (its own children that
/// it still uses) and reaps them: orphans a dead child left behind, re-parented to this
/// subreaper.
#[cfg(target_os = "linux")]
pub fn kill_orphans(keep: &HashSet<u32>) {
    let me = std::process::id();
    let orphans: Vec<u32> = direct_children(me)
        .into_iter()
        .filter(|pid| !keep.contains(pid))
        .collect();
    for orphan in orphans {
        kill_tree(orphan, true);
        let _ = nix::sys::wait::waitpid(Pid::from_raw(orphan as i32), None);
    }
}

#[cfg(not(target_os = "linux"))]
pub fn kill_orphans(_keep: &HashSet<u32>) {}

/// The live children of `parent`.
#[cfg(target_os = "linux")]
fn direct_children(parent: u32) -> Vec<u32> {
    children_by_parent().remove(&parent).unwrap_or_default()
}

/// Whether this process has any child, running or not yet reaped: one system call, where
/// finding its descendants reads all of `/proc`.
pub fn has_children() -> bool {
    use nix::sys::wait::{Id, WaitPidFlag, waitid};
    let flags = WaitPidFlag::WNOHANG
        | WaitPidFlag::WNOWAIT
        | WaitPidFlag::WEXITED
        | WaitPidFlag::WSTOPPED
        | WaitPidFlag::WCONTINUED;
    !matches!(waitid(Id::All, flags), Err(nix::errno::Errno::ECHILD))
}

/// Kills everything below this process and reaps it: for a process that runs plugin code,
/// when a task's attempt ends. Costs one system call when nothing is left.
pub fn end_descendants() {
    if has_children() {
        kill_tree(std::process::id(), false);
        reap_children();
    }
}

/// Reaps the children of this process that have exited, without waiting for any that runs.
/// Only for a process where nothing else waits on its children (a handler process between
/// tasks).
pub fn reap_children() {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}

/// Makes this process the subreaper of everything it starts, so that orphans stay below it.
pub fn become_subreaper() {
    #[cfg(target_os = "linux")]
    let _ = nix::sys::prctl::set_child_subreaper(true);
}

/// For a process that runs plugin code: when `parent` (the process that started it) dies, for
/// whatever reason, everything below this process is killed and it exits. Also makes it a
/// subreaper. If `parent` is already gone, that happens at once.
pub fn die_with_parent(parent: u32) {
    become_subreaper();
    #[cfg(target_os = "linux")]
    {
        let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGTERM);
        let orphaned = || nix::unistd::getppid().as_raw() as u32 != parent;
        let signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM]);
        match signals {
            Ok(mut signals) => {
                std::thread::spawn(move || {
                    if signals.forever().next().is_some() {
                        kill_tree(std::process::id(), false);
                        std::process::exit(143);
                    }
                });
            }
            Err(_) => {
                // Without the handler, SIGTERM's default action still ends this process.
            }
        }
        // The parent may have died before the request above was made.
        if orphaned() {
            kill_tree(std::process::id(), false);
            std::process::exit(143);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = parent;
}
