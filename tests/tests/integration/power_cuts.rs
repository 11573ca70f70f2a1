//! Power cuts and failing disks, on a file system of the tests' own (`power-cut-fs`, FUSE) that
//! keeps what was written since each file's last flush in a form it can drop: a cut loses
//! exactly what a machine losing power would lose. A process kill (the chaos tests) never
//! loses what the kernel already holds; this does.
//!
//! The loop: a queue on that file system, `host add` processes and workers running, a cut at a
//! random moment (the file system fails every operation from then on and every process of the
//! queue is killed), the file system mounted again, then the checks. `POWER_CUTS` sets how many
//! cuts (the suite makes 100 of a durable queue and 20 of a relaxed one; the README's long run,
//! `POWER_CUTS=1000 cargo test --workspace power_cuts -- --nocapture`, makes 1,000 and 200), and
//! the figures are printed.
//!
//! Needs root and /dev/fuse, which CI has; elsewhere each test says loudly that it skipped.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use integration_tests::{TestQueue, running_as_root, skipped, workspace};
use power_cut_fs::{DiskError, Fault, FaultOp, PowerCutFs};

/// Whether this machine can mount the tests' file system; says so loudly when not.
fn can_mount(what: &str) -> bool {
    if !running_as_root(what) {
        return false;
    }
    if !Path::new("/dev/fuse").exists() {
        skipped(&format!("{what} (no /dev/fuse)"));
        return false;
    }
    true
}

/// A queue folder on a power-cut file system, with the plugins of the suite's queues.
struct CutQueue {
    /// First, so that it is unmounted before the folders below are removed.
    fs: Option<PowerCutFs>,
    /// Scratch space and plugins, on the real disk.
    base: TestQueue,
    /// What the file system keeps: the disk, as it would be after the power came back.
    backing: PathBuf,
    mountpoint: PathBuf,
}

impl CutQueue {
    fn new() -> CutQueue {
        let base = TestQueue::new();
        let backing = base.scratch.join("disk");
        let mountpoint = base.scratch.join("mnt");
        std::fs::create_dir(&backing).unwrap();
        std::fs::create_dir(&mountpoint).unwrap();
        let mut queue = CutQueue {
            base,
            backing,
            mountpoint,
            fs: None,
        };
        queue.mount();
        queue
    }

    fn mount(&mut self) {
        self.fs = Some(power_cut_fs::mount(&self.backing, &self.mountpoint).expect("mount"));
    }

    fn fs(&self) -> &PowerCutFs {
        self.fs.as_ref().expect("mounted")
    }

    /// The queue folder, on the file system.
    fn queue(&self) -> PathBuf {
        self.mountpoint.join("q")
    }

    /// `host` on this queue.
    fn host(&self) -> Command {
        self.launcher().command()
    }

    /// What starts `host` on this queue, for another thread.
    fn launcher(&self) -> Launcher {
        Launcher {
            queue: self.queue(),
            plugins: self.base.plugins.clone(),
            dir: self.base.scratch.clone(),
        }
    }

    fn ok(&self, args: &[&str]) -> String {
        let output = self.host().args(args).output().unwrap();
        assert!(
            output.status.success(),
            "host {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// Runs a noop worker until nothing is left to do, insisting that it exits 0.
    fn drain(&self) {
        let output = self
            .host()
            .args(["--role", "noop", "--drain", "--lease", "1s"])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "a draining worker: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Cuts the power, kills `processes`, and mounts the file system again.
    fn cut_and_remount(&mut self, processes: &Processes) -> power_cut_fs::CutReport {
        let report = self.fs().cut().expect("the cut reverts the backing folder");
        processes.kill_all();
        let _ = self.fs.take().expect("mounted").unmount();
        self.mount();
        report
    }
}

/// Starts `host` on a queue.
#[derive(Clone)]
struct Launcher {
    queue: PathBuf,
    plugins: PathBuf,
    dir: PathBuf,
}

impl Launcher {
    fn command(&self) -> Command {
        let mut cmd = Command::new(workspace().host());
        cmd.current_dir(&self.dir)
            .env("HOST_QUEUE_DIR", &self.queue)
            .env("HOST_PLUGIN_PATH", &self.plugins)
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null());
        cmd
    }
}

/// The queue's processes: killed all at once at the cut; none starts after it.
#[derive(Default, Clone)]
struct Processes(Arc<Mutex<(bool, Vec<u32>)>>);

impl Processes {
    fn spawn(&self, mut cmd: Command) -> Option<Child> {
        let mut list = self.0.lock().unwrap();
        if list.0 {
            return None;
        }
        let child = cmd.spawn().ok()?;
        list.1.push(child.id());
        Some(child)
    }

    fn kill_all(&self) {
        let mut list = self.0.lock().unwrap();
        list.0 = true;
        for pid in list.1.iter() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// What one cut found.
#[derive(Default)]
struct CutFindings {
    /// Tasks whose `host add` printed their id.
    acknowledged_adds: usize,
    /// Outcomes a worker logged as recorded.
    acknowledged_outcomes: usize,
    /// Of those, what the queue no longer had after the cut.
    lost_adds: usize,
    lost_outcomes: usize,
    /// How long before the cut the oldest lost acknowledgement was made.
    lost_window: Duration,
    /// Bytes the file system dropped.
    dropped_bytes: u64,
}

/// One round: adds and workers running on a fresh queue, a cut after `run_for`, the checks.
fn one_cut(relaxed: bool, run_for: Duration) -> CutFindings {
    let phase = Instant::now();
    let mut q = CutQueue::new();
    q.ok(&[
        "init",
        "--durability",
        if relaxed { "relaxed" } else { "durable" },
    ]);
    let mut phases = vec![("init", phase.elapsed())];
    let processes = Processes::default();
    let stop = Arc::new(AtomicBool::new(false));
    // Ids printed by `host add`, each with when it was printed.
    let acked: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let adders: Vec<_> = (0..3)
        .map(|_| {
            let (stop, acked, processes) =
                (Arc::clone(&stop), Arc::clone(&acked), processes.clone());
            let launcher = q.launcher();
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let mut cmd = launcher.command();
                    cmd.args(["add", "--type", "noop"])
                        .stdout(Stdio::piped())
                        .stderr(Stdio::null());
                    let Some(child) = processes.spawn(cmd) else {
                        break;
                    };
                    let output = child.wait_with_output().unwrap();
                    let text = String::from_utf8_lossy(&output.stdout);
                    if output.status.success()
                        && let Ok(id) = text.trim().parse()
                    {
                        acked.lock().unwrap().push((id, Instant::now()));
                    }
                }
            })
        })
        .collect();
    // Workers, their logs read as they come: "task N completed" is an outcome acknowledged.
    let outcomes: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let readers: Vec<_> = (0..2)
        .filter_map(|i| {
            let mut cmd = q.host();
            cmd.args([
                "--role",
                "noop",
                "--poll",
                "20ms",
                // Short, so that the drain after the cut need not wait long for the tasks
                // the killed workers held.
                "--lease",
                "1s",
                "--name",
                &format!("w{i}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
            let mut child = processes.spawn(cmd)?;
            let stderr = child.stderr.take().unwrap();
            let outcomes = Arc::clone(&outcomes);
            Some(thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    // `12:00:00.000 w0: task 7 completed in 2 ms`
                    let completed = line
                        .split_once(": task ")
                        .and_then(|(_, rest)| rest.split_once(" completed in "))
                        .and_then(|(id, _)| id.parse().ok());
                    if let Some(id) = completed {
                        outcomes.lock().unwrap().push((id, Instant::now()));
                    }
                }
                let _ = child.wait();
            }))
        })
        .collect();
    phases.push(("start", phase.elapsed()));
    thread::sleep(run_for);
    stop.store(true, Ordering::SeqCst);
    let cut_at = Instant::now();
    let report = q.cut_and_remount(&processes);
    for adder in adders {
        adder.join().unwrap();
    }
    for reader in readers {
        reader.join().unwrap();
    }
    phases.push(("cut and mount", phase.elapsed()));

    // The checks, on the disk as the power left it.
    let db = q.queue().join("queue.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(integrity, "ok", "after the cut");
    let mut rows = conn.prepare("SELECT id, status, body FROM tasks").unwrap();
    let tasks: Vec<(i64, String, String)> = rows
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    drop(rows);
    drop(conn);
    let mut present = BTreeSet::new();
    let mut finished = BTreeSet::new();
    for (id, status, body) in &tasks {
        let record: serde_json::Value = serde_json::from_str(body).unwrap();
        // No task is both finished and claimable: the claim index reads the column, listings
        // the record, and both agree.
        assert_eq!(record["status"], status.as_str(), "task {id} after the cut");
        let id = u64::try_from(*id).unwrap();
        present.insert(id);
        if status == "completed" {
            finished.insert(id);
        }
    }
    let acked = acked.lock().unwrap().clone();
    let outcomes = outcomes.lock().unwrap().clone();
    let lost_adds: Vec<_> = acked
        .iter()
        .filter(|(id, _)| !present.contains(id))
        .collect();
    let lost_outcomes: Vec<_> = outcomes
        .iter()
        .filter(|(id, _)| !finished.contains(id))
        .collect();
    let oldest_lost = lost_adds
        .iter()
        .chain(&lost_outcomes)
        .map(|(_, at)| *at)
        .min();

    // A worker started afterwards drains what is left.
    q.drain();
    phases.push(("drain", phase.elapsed()));
    if std::env::var_os("POWER_CUTS_PHASES").is_some() {
        eprintln!("phases: {phases:?}");
    }
    let status: serde_json::Value = serde_json::from_str(&q.ok(&["status", "--json"])).unwrap();
    let counts = &status["counts"];
    for state in ["pending", "running", "blocked", "failed"] {
        assert_eq!(
            counts[state].as_u64().unwrap_or(0),
            0,
            "{state} after the drain: {status}"
        );
    }
    CutFindings {
        acknowledged_adds: acked.len(),
        acknowledged_outcomes: outcomes.len(),
        lost_adds: lost_adds.len(),
        lost_outcomes: lost_outcomes.len(),
        lost_window: oldest_lost.map_or(Duration::ZERO, |at| cut_at.duration_since(at)),
        dropped_bytes: report.bytes_restored + report.bytes_truncated,
    }
}

/// Runs `cuts` rounds and prints what they found; returns the totals.
fn cuts(relaxed: bool, cuts: usize) -> CutFindings {
    let mut total = CutFindings::default();
    let started = Instant::now();
    for round in 0..cuts {
        let run_for = Duration::from_millis(150 + fastrand::u64(0..1200));
        let found = one_cut(relaxed, run_for);
        if found.lost_adds + found.lost_outcomes > 0 {
            eprintln!(
                "cut {round} after {run_for:?}: lost {} of {} acknowledged adds and {} of {} \
                 outcomes, the oldest acknowledged {:?} before the cut",
                found.lost_adds,
                found.acknowledged_adds,
                found.lost_outcomes,
                found.acknowledged_outcomes,
                found.lost_window
            );
        }
        total.acknowledged_adds += found.acknowledged_adds;
        total.acknowledged_outcomes += found.acknowledged_outcomes;
        total.lost_adds += found.lost_adds;
        total.lost_outcomes += found.lost_outcomes;
        total.lost_window = total.lost_window.max(found.lost_window);
        total.dropped_bytes += found.dropped_bytes;
    }
    eprintln!(
        "power cuts, {} queue: {cuts} cuts in {:.0?}; acknowledged {} adds and {} outcomes; \
         lost {} adds and {} outcomes (at most {} ms of acknowledged work before a cut); \
         {:.1} MiB of unflushed writes dropped",
        if relaxed { "relaxed" } else { "durable" },
        started.elapsed(),
        total.acknowledged_adds,
        total.acknowledged_outcomes,
        total.lost_adds,
        total.lost_outcomes,
        total.lost_window.as_millis(),
        total.dropped_bytes as f64 / (1024.0 * 1024.0)
    );
    total
}

/// How many cuts: `POWER_CUTS`, else `default`.
fn how_many(default: usize) -> usize {
    std::env::var("POWER_CUTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

#[test]
fn a_durable_queue_loses_nothing_it_acknowledged_to_power_cuts() {
    if !can_mount("power cuts of a durable queue") {
        return;
    }
    let total = cuts(false, how_many(100));
    assert!(total.acknowledged_adds > 0 && total.acknowledged_outcomes > 0);
    assert_eq!(total.lost_adds, 0, "acknowledged adds lost");
    assert_eq!(total.lost_outcomes, 0, "acknowledged outcomes lost");
    assert!(
        total.dropped_bytes > 0,
        "the cuts dropped nothing: they tested nothing"
    );
}

#[test]
fn a_relaxed_queue_survives_power_cuts_whole_and_the_loss_is_measured() {
    if !can_mount("power cuts of a relaxed queue") {
        return;
    }
    // What is lost is measured and printed (the README's durability section); what holds for
    // every queue is checked in each round: integrity, agreement, a worker drains the rest.
    let total = cuts(true, (how_many(100) / 5).max(1));
    assert!(total.acknowledged_adds > 0);
}

#[test]
fn failing_writes_and_flushes_are_said_in_one_line_and_the_queue_works_again() {
    if !can_mount("failing writes and flushes") {
        return;
    }
    let q = CutQueue::new();
    q.ok(&["init"]);
    q.ok(&["add", "--type", "noop"]);
    q.ok(&["--role", "noop", "--drain"]);
    q.ok(&["add", "--type", "noop"]);
    // An idle worker of another role keeps the queue open (and its log with it) throughout,
    // and must live through the faults.
    let mut idle = q
        .host()
        .args(["--role", "tester", "--name", "idle"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(q.base.scratch.join("idle.log")).unwrap())
        .spawn()
        .unwrap();
    let idle_log = q.base.scratch.join("idle.log");
    q.base
        .wait_for("the idle worker", Duration::from_secs(20), |_| {
            std::fs::read_to_string(&idle_log).is_ok_and(|log| log.contains("waiting for tasks"))
        });
    let one_line = |args: &[&str]| -> String {
        let output = q.host().args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        assert_eq!(output.status.code(), Some(1), "host {args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "host {args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "nothing reported done: {args:?}");
        stderr
    };
    let fault = |op, error| Fault {
        op,
        file_suffix: "queue.db-wal".into(),
        error,
        after: 0,
        times: None,
    };

    // A full disk: rolled back, said so.
    q.fs().inject(fault(FaultOp::Write, DiskError::Enospc));
    let line = one_line(&["add", "--type", "noop"]);
    assert!(
        line.contains("disk is full") && line.contains("nothing was"),
        "{line}"
    );
    let line = one_line(&["purge", "--finished-before", "0s"]);
    assert!(line.contains("queue.db"), "{line}");
    q.fs().heal();

    // A flush that fails: the add is not reported done.
    q.fs().inject(fault(FaultOp::Fsync, DiskError::Eio));
    // SQLite flushes a log it starts anew itself (and rolls back when that fails); the store
    // flushes every other durable commit (and says the change was made but not flushed).
    let line = one_line(&["add", "--type", "noop"]);
    assert!(
        line.contains("could not be flushed") || line.contains("nothing was changed"),
        "{line}"
    );
    q.fs().heal();

    // A worker whose outcomes cannot be written says so and logs nothing as done.
    q.fs().inject(fault(FaultOp::Write, DiskError::Eio));
    let output = q
        .host()
        .args([
            "--role", "noop", "--drain", "--lease", "1s", "--name", "failing",
        ])
        .env("HOST_LOCK_WAIT", "5s")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("completed in"), "{stderr}");
    assert!(q.fs().faults_hit() > 0);
    // `doctor` reads; it says what it found.
    let doctor = q.host().arg("doctor").output().unwrap();
    assert!(!String::from_utf8_lossy(&doctor.stderr).contains("panicked"));
    q.fs().heal();

    // The disk works again: so does the queue.
    q.ok(&["add", "--type", "noop"]);
    q.drain();
    let status: serde_json::Value = serde_json::from_str(&q.ok(&["status", "--json"])).unwrap();
    assert!(
        status["counts"]["completed"].as_u64().unwrap_or(0) >= 2,
        "{status}"
    );
    assert_eq!(
        status["counts"]["pending"].as_u64().unwrap_or(0),
        0,
        "{status}"
    );
    q.ok(&["doctor"]);
    assert!(
        idle.try_wait().unwrap().is_none(),
        "a worker exited on a failing disk:\n{}",
        std::fs::read_to_string(q.base.scratch.join("idle.log")).unwrap()
    );
    let _ = idle.kill();
    let _ = idle.wait();
}
