//! The benchmark: prints measured figures for the SQLite store and the worker runtime on this
//! machine. Run with `cargo run --release -p bench` (it builds the release host and plugins
//! first).
//!
//! Every figure is a measurement, not a verdict: the targets of the store issue are printed
//! beside them for comparison, never asserted.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use jiff::Timestamp;
use queue::{
    Attempt, AttemptStatus, Durability, NewTask, Outcome, QueueStore, SqliteStore, TaskStatus,
};
use serde_json::{Value, json};

mod floor;

fn main() -> anyhow::Result<()> {
    if floor::serve(&std::env::args().collect::<Vec<_>>())? {
        return Ok(());
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ is inside the workspace")
        .to_path_buf();
    let bin = build_release(&root)?;
    let scratch = tempfile::Builder::new().prefix("host-bench").tempdir()?;
    let bench = Bench {
        host: bin.join("host"),
        plugins: bin.clone(),
        scratch: scratch.path().to_path_buf(),
    };

    println!("# host benchmark");
    println!();
    machine(&bench.scratch);
    println!("command: cargo run --release -p bench");
    println!();

    let rate = durable_op_rate(&bench.scratch.join("fsync"), Duration::from_secs(3))?;
    println!("durable file operations (write, fsync, rename, fsync folder): {rate:.0}/s");
    println!();

    println!("## Throughput: 10,000 noop tasks, 4 worker processes of 1 slot each");
    for durability in [Durability::Durable, Durability::Relaxed] {
        let (add, drain, shares) = bench.drain_noop(10_000, 4, 1, durability)?;
        let per_sec = 10_000.0 / drain.as_secs_f64();
        let target = match durability {
            Durability::Durable => ">= 6,000",
            Durability::Relaxed => ">= 10,000",
        };
        println!(
            "- {}: drained in {:.2} s = {per_sec:.0} tasks/s (target {target}; adding them: {:.2} s)",
            durability.as_str(),
            drain.as_secs_f64(),
            add.as_secs_f64()
        );
        let shares: Vec<String> = shares
            .iter()
            .map(|(worker, n)| format!("{worker} {:.0} %", *n as f64 / 100.0))
            .collect();
        println!("  each worker's share: {}", shares.join(", "));
    }
    println!(
        "- the floor: 4 processes whose task is one transaction (finish and claim with \
         `UPDATE ... RETURNING`, the queue's indexes) and a pipe round trip to a handler:"
    );
    for (name, sync) in [
        ("durable, a flush per commit", "FULL"),
        ("relaxed", "NORMAL"),
    ] {
        let rate = floor::drain(&bench.scratch, 10_000, 4, sync)?;
        println!("  {name}: {rate:.0} tasks/s");
    }
    println!(
        "- the same with slots, whose outcomes and next claims the completer batches (relaxed):"
    );
    for (workers, slots) in [(1, 4), (4, 4)] {
        let (_, drain, _) = bench.drain_noop(10_000, workers, slots, Durability::Relaxed)?;
        println!(
            "  {workers} worker(s) x {slots} slots: {:.0} tasks/s",
            10_000.0 / drain.as_secs_f64()
        );
    }
    let after = durable_op_rate(&bench.scratch.join("fsync"), Duration::from_secs(2))?;
    println!("- (this disk's durable file operations: {rate:.0}/s at the start, {after:.0}/s now)");
    println!();

    println!("## 1,000 `true` jobs, 4 parallel, end to end (add + run all)");
    let mut fastest_ours = Duration::MAX;
    for durability in [Durability::Durable, Durability::Relaxed] {
        let ours = bench.true_jobs(1000, 4, durability)?;
        fastest_ours = fastest_ours.min(ours);
        println!(
            "- host (tester role, {}): {:.2} s",
            durability.as_str(),
            ours.as_secs_f64()
        );
    }
    for (peer, run) in [
        ("task-spooler (tsp, 4 slots)", peers::tsp as PeerRun),
        ("nq (serial by design)", peers::nq),
        ("pueue (4 parallel)", peers::pueue),
    ] {
        match run(&bench.scratch, 1000) {
            Ok(Some(took)) => println!(
                "- {peer}: {:.2} s; host takes {:.2}x its time (target for task-spooler: <= 0.6x)",
                took.as_secs_f64(),
                fastest_ours.as_secs_f64() / took.as_secs_f64()
            ),
            Ok(None) => println!("- {peer}: not installed"),
            Err(err) => println!("- {peer}: failed: {err:#}"),
        }
    }
    let floor = spawn_floor(1000, 4)?;
    println!(
        "- no queue at all (4 threads spawning `true` directly): {:.2} s, the floor for any tool here",
        floor.as_secs_f64()
    );
    println!();

    println!("## Where a task's time goes (one worker, relaxed, 2,000 tasks each)");
    let store_cost = claim_finish_cost(&bench.scratch.join("in-process"), 2000)?;
    let noop = bench.per_task(2000, "noop", json!({"type": "noop"}))?;
    let target = bench.scratch.join("true-target");
    let tester = bench.per_task(
        2000,
        "tester",
        json!({"type": "test", "target": target, "payload": {"command": ["true"]}}),
    )?;
    let spawn = spawn_floor(500, 1)?.as_secs_f64() / 500.0;
    println!(
        "- the store alone, in one process, as a worker calls it (one transaction recording an outcome and claiming the next task): {:.0} us",
        store_cost.as_secs_f64() * 1e6
    );
    println!(
        "- a noop task through a worker: {:.0} us, so the handler process round trip and the worker's own work take about {:.0} us",
        noop * 1e6,
        (noop - store_cost.as_secs_f64()) * 1e6
    );
    println!(
        "- a `true` task through a tester worker: {:.0} us, of which starting and waiting for `true` about {:.0} us (what one thread spawning it alone takes)",
        tester * 1e6,
        spawn * 1e6
    );
    println!();

    println!("## Pickup latency: an idle worker claiming a task added with `host add`");
    let latency = bench.pickup_latency(200)?;
    println!(
        "- from `host add` returning, over {} tasks: p50 {:.2} ms, p99 {:.2} ms \
         (target: p50 < 1 ms; 0 = claimed before `host add` had returned)",
        latency.from_return.len(),
        percentile(&latency.from_return, 0.5),
        percentile(&latency.from_return, 0.99)
    );
    println!(
        "- from `host add` starting (process start and durable add included): p50 {:.2} ms, p99 {:.2} ms",
        percentile(&latency.from_start, 0.5),
        percentile(&latency.from_start, 0.99)
    );
    println!();

    println!("## Scaling: one claim + finish (durable), on an empty queue and on a long history");
    let empty = bench.scratch.join("empty");
    let base = durable_claim_finish(&empty, 100, 300)?;
    println!(
        "- 100 pending, nothing finished: {:.0} us",
        base.as_secs_f64() * 1e6
    );
    let big = bench.scratch.join("history");
    let built = Instant::now();
    build_history(&big, 1_000_000, 100_000)?;
    println!(
        "  (a queue of 1,000,000 finished and 100,000 pending tasks built in {:.0} s)",
        built.elapsed().as_secs_f64()
    );
    let cost = durable_claim_finish(&big, 100_000, 300)?;
    println!(
        "- 100,000 pending, 1,000,000 finished: {:.0} us, {:.2}x the empty queue's (target <= 1.5x)",
        cost.as_secs_f64() * 1e6,
        cost.as_secs_f64() / base.as_secs_f64()
    );
    let status = bench.timed_status(&big)?;
    println!(
        "- `host status` with 1,100,000 tasks: {:.0} ms (target < 20 ms)",
        status.as_secs_f64() * 1e3
    );
    println!();

    postgres::section(&bench, rate)?;
    println!();

    println!("## Memory: a noop worker on that queue");
    let (worker, handler) = bench.worker_memory(&big)?;
    println!(
        "- peak resident: worker {:.1} MB, its handler process {:.1} MB (target: worker < 30 MB)",
        worker as f64 / 1024.0,
        handler as f64 / 1024.0
    );
    Ok(())
}

/// Builds the release host and plugins of the workspace at `root`, and returns the folder they
/// are in: `release` in the target folder cargo uses, wherever `CARGO_TARGET_DIR` or a cargo
/// configuration puts it (cargo says where).
fn build_release(root: &Path) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(&cargo)
        .current_dir(root)
        .args(["build", "--release", "--quiet"])
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("cargo build --release failed");
    }
    let metadata = Command::new(&cargo)
        .current_dir(root)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .context("cannot run cargo metadata")?;
    if !metadata.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&metadata.stderr).trim()
        );
    }
    let metadata: Value =
        serde_json::from_slice(&metadata.stdout).context("cargo metadata printed no JSON")?;
    let target = metadata["target_directory"]
        .as_str()
        .context("cargo metadata named no target directory")?;
    Ok(Path::new(target).join("release"))
}

/// Prints what the figures were measured on.
fn machine(scratch: &Path) {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let fs_type = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(scratch)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!(
        "machine: {cpu}, {cores} cores, Linux {}, scratch on {fs_type}",
        kernel.trim()
    );
}

/// Durable file operations per second on this file system.
fn durable_op_rate(dir: &Path, limit: Duration) -> anyhow::Result<f64> {
    fs::create_dir_all(dir)?;
    let folder = File::open(dir)?;
    let start = Instant::now();
    let mut ops = 0u64;
    while start.elapsed() < limit {
        let tmp = dir.join("tmp");
        let mut file = File::create(&tmp)?;
        file.write_all(br#"{"id":"1","type":"noop","status":"pending"}"#)?;
        file.sync_all()?;
        fs::rename(&tmp, dir.join(format!("{}", ops % 64)))?;
        folder.sync_all()?;
        ops += 1;
    }
    Ok(ops as f64 / start.elapsed().as_secs_f64())
}

/// How long `threads` threads take to run `n` `true` processes between them, with no queue:
/// what process creation alone costs on this machine.
fn spawn_floor(n: usize, threads: usize) -> anyhow::Result<Duration> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let start = Instant::now();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                        let status = Command::new("true").status()?;
                        if !status.success() {
                            bail!("`true` failed: {status}");
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().expect("spawning thread panicked"))
    })?;
    Ok(start.elapsed())
}

/// Mean cost of a task to the store, in one process, on a new relaxed queue of `n` noop tasks,
/// called as a worker of one slot calls it: each transaction records an outcome and claims the
/// next task.
fn claim_finish_cost(dir: &Path, n: usize) -> anyhow::Result<Duration> {
    let store = SqliteStore::init(dir)?.set_durability(Durability::Relaxed)?;
    store.add(vec![noop_task(); n])?;
    let types = vec!["noop".to_string()];
    let start = Instant::now();
    let mut outcomes = Vec::new();
    loop {
        let (_, next) = store.finish_and_claim(&outcomes, "bench", &types, 1)?;
        let Some(claim) = next?.pop() else { break };
        outcomes = vec![(claim.lease, Outcome::Success(json!(null)))];
    }
    Ok(start.elapsed() / n as u32)
}

/// Mean cost of one durable claim and finish on the queue at `dir` (created when missing),
/// topped up to `pending` waiting tasks first.
fn durable_claim_finish(dir: &Path, pending: usize, rounds: usize) -> anyhow::Result<Duration> {
    let store = SqliteStore::init(dir)?.set_durability(Durability::Relaxed)?;
    let have = store
        .summary()?
        .counts
        .get(&TaskStatus::Pending)
        .copied()
        .unwrap_or(0);
    let want = pending + rounds;
    for start in (have..want).step_by(10_000) {
        store.add(vec![noop_task(); (want - start).min(10_000)])?;
    }
    let store = store.set_durability(Durability::Durable)?;
    let types = vec!["noop".to_string()];
    let start = Instant::now();
    for _ in 0..rounds {
        let claim = store.claim("bench", &types)?.context("a task is pending")?;
        store.finish(&claim.lease, Outcome::Success(json!(null)))?;
    }
    Ok(start.elapsed() / rounds as u32)
}

/// A queue at `dir` holding `finished` completed tasks (each with one attempt on record, as a
/// worker leaves them) and `pending` noop tasks after them.
fn build_history(dir: &Path, finished: usize, pending: usize) -> anyhow::Result<()> {
    let store = SqliteStore::init(dir)?.set_durability(Durability::Relaxed)?;
    let now = Timestamp::now();
    let chunk = 100_000;
    for first in (1..=finished).step_by(chunk) {
        let tasks = (first..(first + chunk).min(finished + 1))
            .map(|id| {
                let mut task = noop_task().into_task(id.to_string(), vec![], now);
                task.status = TaskStatus::Completed;
                task.attempts = 1;
                task.worker = Some("bench".into());
                task.started_at = Some(now);
                task.finished_at = Some(now);
                task.duration_ms = Some(1);
                task.success = Some(true);
                task.result = Some(json!({"id": id.to_string()}));
                task.history.push(Attempt {
                    attempt: 1,
                    worker: "bench".into(),
                    started_at: now,
                    finished_at: Some(now),
                    status: AttemptStatus::Completed,
                    error: None,
                    finished_by: Some("bench".into()),
                    session: None,
                });
                task
            })
            .collect();
        store.import(tasks, vec![], (finished + 1) as u64)?;
    }
    for _ in 0..pending / 10_000 {
        store.add(vec![noop_task(); 10_000])?;
    }
    Ok(())
}

fn noop_task() -> NewTask {
    NewTask {
        task_type: "noop".into(),
        ..NewTask::default()
    }
}

type PeerRun = fn(&Path, usize) -> anyhow::Result<Option<Duration>>;

/// Pickup latency samples in milliseconds, sorted.
#[derive(Default)]
struct Latency {
    from_start: Vec<f64>,
    from_return: Vec<f64>,
}

/// The `q` quantile of sorted samples.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

struct Bench {
    host: PathBuf,
    plugins: PathBuf,
    scratch: PathBuf,
}

impl Bench {
    fn host(&self, queue: &Path) -> Command {
        let mut cmd = Command::new(&self.host);
        cmd.env("HOST_QUEUE_DIR", queue)
            .env("HOST_PLUGIN_PATH", &self.plugins)
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, queue: &Path, args: &[&str]) -> anyhow::Result<String> {
        let output = self.host(queue).args(args).output()?;
        if !output.status.success() {
            bail!(
                "host {args:?}: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8(output.stdout)?)
    }

    fn fresh_queue(&self, name: &str, durability: Durability) -> anyhow::Result<PathBuf> {
        self.init(self.scratch.join(name), durability)
    }

    /// Initialises the queue at `queue` (a folder, or a PostgreSQL URL as a path).
    fn init(&self, queue: PathBuf, durability: Durability) -> anyhow::Result<PathBuf> {
        self.run(&queue, &["init", "--durability", durability.as_str()])?;
        Ok(queue)
    }

    fn spawn_workers(&self, queue: &Path, role: &str, n: usize) -> anyhow::Result<Vec<Child>> {
        self.spawn_slotted_workers(queue, role, n, 1)
    }

    fn spawn_slotted_workers(
        &self,
        queue: &Path,
        role: &str,
        n: usize,
        slots: usize,
    ) -> anyhow::Result<Vec<Child>> {
        (0..n)
            .map(|i| {
                self.host(queue)
                    .args(["--role", role, "--drain", "--name", &format!("{role}{i}")])
                    .args(["--concurrency", &slots.to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("cannot start a worker")
            })
            .collect()
    }

    fn wait_all(workers: Vec<Child>) -> anyhow::Result<()> {
        for mut worker in workers {
            let status = worker.wait()?;
            if !status.success() {
                bail!("a worker failed: {status}");
            }
        }
        Ok(())
    }

    /// Adds `n` tasks from a JSON Lines file; returns how long the add took.
    fn add_file(&self, queue: &Path, lines: &[String]) -> anyhow::Result<Duration> {
        let file = self.scratch.join("tasks.jsonl");
        fs::write(&file, lines.join("\n"))?;
        let start = Instant::now();
        self.run(
            queue,
            &["add", "--file", file.to_str().context("utf-8 path")?],
        )?;
        Ok(start.elapsed())
    }

    /// Drains `n` noop tasks with `workers` workers of `slots` slots: how long adding and
    /// draining took, and how many tasks each worker ran.
    fn drain_noop(
        &self,
        n: usize,
        workers: usize,
        slots: usize,
        durability: Durability,
    ) -> anyhow::Result<(Duration, Duration, BTreeMap<String, usize>)> {
        let name = format!("noop-{}-{workers}x{slots}", durability.as_str());
        let queue = self.fresh_queue(&name, durability)?;
        self.drain_noop_on(&queue, n, workers, slots)
    }

    /// [`Bench::drain_noop`] on an initialised queue.
    fn drain_noop_on(
        &self,
        queue: &Path,
        n: usize,
        workers: usize,
        slots: usize,
    ) -> anyhow::Result<(Duration, Duration, BTreeMap<String, usize>)> {
        let queue = queue.to_path_buf();
        let lines = vec![r#"{"type":"noop"}"#.to_string(); n];
        let add = self.add_file(&queue, &lines)?;
        let start = Instant::now();
        Self::wait_all(self.spawn_slotted_workers(&queue, "noop", workers, slots)?)?;
        let took = start.elapsed();
        let results: Vec<Value> = serde_json::from_str(&self.run(&queue, &["results", "--json"])?)?;
        let mut shares = BTreeMap::new();
        for task in &results {
            let worker = task["worker"].as_str().unwrap_or("?").to_string();
            *shares.entry(worker).or_default() += 1;
        }
        Ok((add, took, shares))
    }

    /// Seconds per task of one worker of `role` draining `n` tasks like `entry` on a relaxed
    /// queue.
    fn per_task(&self, n: usize, role: &str, entry: Value) -> anyhow::Result<f64> {
        let queue = self.fresh_queue(&format!("per-task-{role}"), Durability::Relaxed)?;
        if let Some(target) = entry["target"].as_str() {
            fs::create_dir_all(target)?;
        }
        self.add_file(&queue, &vec![entry.to_string(); n])?;
        let start = Instant::now();
        Self::wait_all(self.spawn_workers(&queue, role, 1)?)?;
        Ok(start.elapsed().as_secs_f64() / n as f64)
    }

    fn true_jobs(
        &self,
        n: usize,
        workers: usize,
        durability: Durability,
    ) -> anyhow::Result<Duration> {
        let queue = self.fresh_queue(&format!("true-jobs-{}", durability.as_str()), durability)?;
        let target = self.scratch.join("true-target");
        fs::create_dir_all(&target)?;
        let entry = json!({"type": "test", "target": target, "payload": {"command": ["true"]}});
        let lines = vec![entry.to_string(); n];
        let start = Instant::now();
        self.add_file(&queue, &lines)?;
        Self::wait_all(self.spawn_workers(&queue, "tester", workers)?)?;
        let took = start.elapsed();
        let failed: Vec<Value> =
            serde_json::from_str(&self.run(&queue, &["results", "--json", "--failed"])?)?;
        if !failed.is_empty() {
            bail!("{} `true` jobs failed", failed.len());
        }
        Ok(took)
    }

    /// Milliseconds from `host add` starting, and from it returning, to the task being claimed
    /// by an idle worker.
    fn pickup_latency(&self, n: usize) -> anyhow::Result<Latency> {
        let queue = self.fresh_queue("latency", Durability::Durable)?;
        self.pickup_latency_on(&queue, n)
    }

    /// [`Bench::pickup_latency`] on an initialised queue.
    fn pickup_latency_on(&self, queue: &Path, n: usize) -> anyhow::Result<Latency> {
        let queue = queue.to_path_buf();
        let mut worker = self
            .host(&queue)
            .args(["--role", "noop", "--name", "idle"])
            .stderr(Stdio::null())
            .spawn()?;
        std::thread::sleep(Duration::from_millis(500));
        let mut latency = Latency::default();
        for _ in 0..n {
            let spawned = jiff::Timestamp::now();
            let id = self.run(&queue, &["add", "--type", "noop"])?;
            let returned = SystemTime::now();
            let task = loop {
                let task: Value =
                    serde_json::from_str(&self.run(&queue, &["show", id.trim(), "--json"])?)?;
                if task["startedAt"].is_string() {
                    break task;
                }
            };
            let started: jiff::Timestamp =
                task["startedAt"].as_str().unwrap_or_default().parse()?;
            let returned = jiff::Timestamp::try_from(returned)?;
            let ms = |from: jiff::Timestamp| started.duration_since(from).as_secs_f64() * 1e3;
            // Claimed before `add` had even exited counts as zero.
            latency.from_return.push(ms(returned).max(0.0));
            latency.from_start.push(ms(spawned));
            // Spread the adds so that each finds the worker idle.
            std::thread::sleep(Duration::from_millis(5));
        }
        stop(&worker)?;
        worker.wait()?;
        latency.from_return.sort_by(f64::total_cmp);
        latency.from_start.sort_by(f64::total_cmp);
        Ok(latency)
    }

    fn timed_status(&self, queue: &Path) -> anyhow::Result<Duration> {
        let start = Instant::now();
        self.run(queue, &["status", "--json"])?;
        Ok(start.elapsed())
    }

    /// Peak resident kilobytes of a worker and of its handler process.
    fn worker_memory(&self, queue: &Path) -> anyhow::Result<(u64, u64)> {
        let mut worker = self
            .host(queue)
            .args(["--role", "noop", "--name", "memory"])
            .stderr(Stdio::null())
            .spawn()?;
        std::thread::sleep(Duration::from_secs(3));
        let pid = worker.id();
        let peak = |pid: u32| -> u64 {
            fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("VmHWM:"))
                        .and_then(|l| l.split_whitespace().nth(1))
                        .and_then(|kb| kb.parse().ok())
                })
                .unwrap_or(0)
        };
        let handler = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .ok()
            .and_then(|c| c.split_whitespace().next().and_then(|p| p.parse().ok()))
            .map_or(0, peak);
        let worker_peak = peak(pid);
        stop(&worker)?;
        worker.wait()?;
        Ok((worker_peak, handler))
    }
}

mod postgres;

/// Asks a worker to stop (SIGTERM), as Ctrl+C would.
fn stop(child: &Child) -> anyhow::Result<()> {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
    Ok(())
}

/// The same 1,000 `true` jobs through other queues, where they are installed.
mod peers {
    use super::*;

    fn installed(program: &str) -> bool {
        Command::new("sh")
            .args(["-c", &format!("command -v {program}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn quiet(cmd: &mut Command) -> anyhow::Result<()> {
        let status = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status()?;
        if !status.success() {
            bail!("{cmd:?} failed: {status}");
        }
        Ok(())
    }

    /// task-spooler with 4 slots.
    pub fn tsp(scratch: &Path, n: usize) -> anyhow::Result<Option<Duration>> {
        let program = if installed("tsp") {
            "tsp"
        } else if installed("ts") {
            "ts"
        } else {
            return Ok(None);
        };
        let socket = scratch.join("tsp.socket");
        let tsp = || {
            let mut cmd = Command::new(program);
            cmd.env("TS_SOCKET", &socket).env("TS_SAVELIST", "");
            cmd
        };
        quiet(tsp().args(["-S", "4"]))?;
        let start = Instant::now();
        for _ in 0..n {
            quiet(tsp().arg("true"))?;
        }
        loop {
            let list = tsp().output()?;
            let text = String::from_utf8_lossy(&list.stdout);
            if !text.contains("running") && !text.contains("queued") {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let took = start.elapsed();
        let _ = quiet(tsp().arg("-K"));
        Ok(Some(took))
    }

    /// nq, which runs jobs one after another.
    pub fn nq(scratch: &Path, n: usize) -> anyhow::Result<Option<Duration>> {
        if !installed("nq") {
            return Ok(None);
        }
        let dir = scratch.join("nq");
        fs::create_dir_all(&dir)?;
        let start = Instant::now();
        for _ in 0..n {
            quiet(Command::new("nq").env("NQDIR", &dir).arg("true"))?;
        }
        quiet(Command::new("nq").env("NQDIR", &dir).arg("-w"))?;
        Ok(Some(start.elapsed()))
    }

    /// pueue with 4 parallel tasks, on a daemon of its own.
    pub fn pueue(scratch: &Path, n: usize) -> anyhow::Result<Option<Duration>> {
        if !installed("pueue") || !installed("pueued") {
            return Ok(None);
        }
        let dir = scratch.join("pueue");
        fs::create_dir_all(&dir)?;
        let config = dir.join("pueue.yml");
        fs::write(
            &config,
            format!(
                "shared:\n  pueue_directory: {0}\n  runtime_directory: {0}\n  use_unix_socket: true\n",
                dir.display()
            ),
        )?;
        let pueue = |args: &[&str]| {
            let mut cmd = Command::new("pueue");
            cmd.arg("-c").arg(&config).args(args);
            cmd
        };
        let mut daemon = Command::new("pueued")
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        std::thread::sleep(Duration::from_secs(1));
        let outcome = (|| {
            quiet(&mut pueue(&["parallel", "4"]))?;
            let start = Instant::now();
            for _ in 0..n {
                quiet(&mut pueue(&["add", "--", "true"]))?;
            }
            quiet(&mut pueue(&["wait"]))?;
            Ok(Some(start.elapsed()))
        })();
        let _ = quiet(&mut pueue(&["shutdown"]));
        let _ = daemon.kill();
        let _ = daemon.wait();
        outcome
    }
}
