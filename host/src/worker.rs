//! The worker: a [`ClaimLoop`] that claims tasks of one role's types, runs the role's handler,
//! and records each outcome, while a heartbeat keeps its leases and its status record fresh.
//!
//! Shutdown never loses a task: the first Ctrl+C (SIGINT or SIGTERM) stops claiming and waits up
//! to the grace period for running handlers; when it runs out, or on a second Ctrl+C, running
//! tasks are released back to pending before the process exits.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use plugin_api::__private::{decode_stop_reason, encode_stop_reason};
use plugin_api::{Answer, Question, StopReason};
use queue::{
    ActiveTask, Claim, Lease, Outcome, QueueStore, StoreError, TaskState, WorkerRecord, WorkerState,
};

use crate::attention::EventKind;
use crate::commands::status::WORKER_STALE_AFTER;
use crate::completer::{Completer, Request, Response};
use crate::handler_process::{HandlerProcess, KILL_AFTER, RunEnd};
use crate::library::TaskHooks;
use crate::loader::PluginRole;
use crate::usage_limits::LimitWatch;
use crate::wakeup::Wakeup;

/// How a worker runs.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// Unique worker name, shown in `status` and recorded on tasks.
    pub name: String,
    /// How many tasks run at once.
    pub concurrency: usize,
    /// Exit once no task of the role's types is pending or running.
    pub drain: bool,
    /// How often an idle worker looks for new tasks.
    pub poll: Duration,
    /// How long the first Ctrl+C waits for running tasks before returning them to the queue.
    pub grace: Duration,
    /// The time limit of tasks that do not set their own.
    pub default_timeout: Option<Duration>,
    /// The role's name as the worker was started with (a `host.toml` binding may run another
    /// plugin role under it).
    pub role: String,
    /// The task types claimed.
    pub types: Vec<String>,
    /// The role's settings from `host.toml`, handed to its handler.
    pub settings: serde_json::Value,
    /// Where the role is bound (`q/host.toml [roles.writer]`), for messages; `None` when it
    /// runs unbound, under its plugin's name.
    pub binding: Option<String>,
    /// Tasks that finished longer ago than this are purged (`[queue] keep_finished`).
    pub keep_finished: Option<Duration>,
    /// A success waits for a person's verdict (`review = "required"`).
    pub review: bool,
    /// Who hears of a task this worker ran that failed for good or waits for review, of a
    /// usage limit, and of the queue drained (`[hooks]`, `[notify]`).
    pub attention: crate::attention::Attention,
    /// The roles that take this role's tasks while its account is out of quota (`fallback`).
    pub fallback: Vec<String>,
    /// The roles whose `fallback` names this one: it claims their types while they are out.
    pub stands_in_for: Vec<String>,
}

/// Why the claim loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerExit {
    /// `--drain` and nothing left to do.
    Drained,
    /// Stopped by a signal; every task it held finished or was released.
    Stopped,
}

/// A task being run by one slot.
struct Running {
    lease: Lease,
    after: Vec<String>,
    task_type: String,
    progress: AtomicU8,
    message: Mutex<String>,
    stop: AtomicU8,
    started: Instant,
    timeout: Option<Duration>,
    renewed: Mutex<Instant>,
    /// When a renewal last succeeded (or the task was claimed).
    confirmed: Mutex<Instant>,
    /// The plan the handler reported last.
    plan: Mutex<Vec<plugin_api::PlanStep>>,
    /// The question the handler waits to have answered.
    asking: Mutex<Option<Asking>>,
    /// A renewal found the question answered.
    answered: AtomicBool,
    /// How long the handler has waited for answers: not counted against its timeout.
    waited: Mutex<Duration>,
}

/// A question of the handler's that waits for a person.
struct Asking {
    since: Instant,
    /// When the handler stops waiting; `None`: never.
    until: Option<Instant>,
}

impl Running {
    /// How long the task has worked: its time since the claim, less the time it waited for
    /// people to answer its questions.
    fn worked(&self) -> Duration {
        let asking = self
            .asking
            .lock()
            .expect("asking lock")
            .as_ref()
            .map_or(Duration::ZERO, |a| a.since.elapsed());
        let waited = *self.waited.lock().expect("waited lock");
        self.started.elapsed().saturating_sub(waited + asking)
    }

    fn stop_reason(&self) -> Option<StopReason> {
        decode_stop_reason(self.stop.load(Ordering::SeqCst))
    }

    fn request_stop(&self, reason: StopReason) {
        let _ = self.stop.compare_exchange(
            0,
            encode_stop_reason(Some(reason)),
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }
}

/// State shared by the slots, the heartbeat and the signal handling.
struct Shared {
    store: Arc<dyn QueueStore>,
    /// Records the slots' outcomes and claims their next tasks, in batches.
    completer: Completer,
    role: PluginRole,
    types: Vec<String>,
    options: WorkerOptions,
    record: Mutex<WorkerRecord>,
    wakeup: Wakeup,
    running: Mutex<Vec<Arc<Running>>>,
    stopping: AtomicBool,
    exiting: Exiting,
    dirty: AtomicBool,
    /// Hooks and notifications still running, each outcome's on a thread of its own so that a
    /// slow one does not hold up the next claim's lease; the worker waits for them before it
    /// exits.
    hooks: Mutex<Vec<thread::JoinHandle<()>>>,
    /// The usage limits that hold this role, or the roles it stands in for.
    limits: LimitWatch,
}

enum Event {
    SlotDone,
    Signal,
    /// The queue cannot be written any more (it was found damaged): the worker stops at once.
    Damaged(StoreError),
}

/// The claim loop of one worker process.
pub struct ClaimLoop {
    shared: Arc<Shared>,
}

impl ClaimLoop {
    /// Prepares a worker for `role`, woken by `wakeup` when work appears; fails if a live
    /// worker already uses the name.
    pub fn new(
        store: Arc<dyn QueueStore>,
        role: PluginRole,
        options: WorkerOptions,
        wakeup: Wakeup,
    ) -> Result<ClaimLoop, StoreError> {
        let now = Timestamp::now();
        if let Some(other) = store
            .workers()?
            .into_iter()
            .find(|w| w.name == options.name && !w.is_dead(now, WORKER_STALE_AFTER))
        {
            return Err(StoreError::InvalidTask(format!(
                "worker name {} is in use by pid {} on {}; pick another with --name",
                other.name, other.pid, other.hostname
            )));
        }
        // Records of workers long dead only clutter `status`; failing to drop them is no reason
        // not to start.
        let _ = crate::commands::workers::prune(
            store.as_ref(),
            crate::commands::workers::DEAD_WORKER_KEPT,
        );
        // Damage found now stops the worker before it writes into the damaged file.
        store.quick_check()?;
        let types = options.types.clone();
        let limits = LimitWatch::new(&options.role, options.stands_in_for.clone());
        // Before the first claim: a worker started while its role is out claims nothing.
        limits.refresh(store.as_ref())?;
        let record = WorkerRecord {
            name: options.name.clone(),
            role: options.role.clone(),
            types: types.clone(),
            pid: std::process::id(),
            hostname: hostname(),
            state: WorkerState::Idle,
            tasks: Vec::new(),
            started_at: now,
            heartbeat_at: now,
            alive_until: None,
            library: queue::LibraryFile::of(role.library()),
        };
        store.put_worker(&record)?;
        Ok(ClaimLoop {
            shared: Arc::new(Shared {
                completer: Completer::new(Arc::clone(&store), options.name.clone(), types.clone()),
                store,
                role,
                types,
                options,
                record: Mutex::new(record),
                wakeup,
                running: Mutex::new(Vec::new()),
                stopping: AtomicBool::new(false),
                exiting: Exiting::default(),
                dirty: AtomicBool::new(false),
                hooks: Mutex::new(Vec::new()),
                limits,
            }),
        })
    }

    /// Runs until drained (with `--drain`) or stopped by SIGINT/SIGTERM.
    pub fn run(self) -> anyhow::Result<WorkerExit> {
        // Commands that a crashed handler process leaves behind are re-parented here, where
        // they are found and killed.
        crate::process_tree::become_subreaper();
        let shared = self.shared;
        let (events, inbox) = mpsc::channel();
        let signals = listen_for_signals(events.clone())?;
        // Start every handler process before claiming anything, so that a plugin that cannot
        // run stops the worker at once rather than failing tasks.
        let processes = match (0..shared.options.concurrency)
            .map(|_| HandlerProcess::start(&shared.role, &shared.options.settings))
            .collect::<anyhow::Result<Vec<_>>>()
        {
            Ok(processes) => processes,
            Err(err) => {
                // It never worked: no record of it stays behind to be shown as dead.
                let _ = shared.store.remove_worker(&shared.options.name);
                return Err(err.context(match &shared.options.binding {
                    Some(binding) => {
                        format!("role {} ({binding}) cannot start", shared.options.role)
                    }
                    None => format!("role {} cannot start", shared.options.role),
                }));
            }
        };
        watch_limits(&shared);
        for (slot, process) in processes.into_iter().enumerate() {
            let shared = Arc::clone(&shared);
            let events = events.clone();
            thread::Builder::new()
                .name(format!("slot-{slot}"))
                .spawn(move || {
                    let _ = events.send(match slot_loop(&shared, process) {
                        Some(damage) => Event::Damaged(damage),
                        None => Event::SlotDone,
                    });
                })?;
        }
        let heartbeat = {
            let shared = Arc::clone(&shared);
            thread::spawn(move || heartbeat_loop(&shared))
        };
        let guard = {
            let shared = Arc::clone(&shared);
            thread::spawn(move || lease_guard_loop(&shared))
        };
        let upkeep = {
            let shared = Arc::clone(&shared);
            let events = events.clone();
            thread::spawn(move || upkeep_loop(&shared, &events))
        };
        say(
            &shared,
            &format!(
                "role {} ({}) from {}, {} slot(s); waiting for tasks",
                shared.options.role,
                shared.types.join(", "),
                shared.role.library().display(),
                shared.options.concurrency
            ),
        );

        let mut slots_done = 0;
        let mut signals_seen = 0;
        let mut deadline: Option<Instant> = None;
        let mut damage = None;
        let exit = loop {
            let wait = deadline
                .map(|d| d.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_secs(3600));
            match inbox.recv_timeout(wait) {
                Ok(Event::SlotDone) => {
                    slots_done += 1;
                    if slots_done == shared.options.concurrency {
                        break if signals_seen > 0 {
                            WorkerExit::Stopped
                        } else {
                            WorkerExit::Drained
                        };
                    }
                }
                Ok(Event::Signal) => {
                    signals_seen += 1;
                    if signals_seen == 1 {
                        shared.stopping.store(true, Ordering::SeqCst);
                        shared.dirty.store(true, Ordering::SeqCst);
                        let busy = shared.running.lock().expect("running lock").len();
                        if busy == 0 {
                            say(&shared, "stopping");
                        } else {
                            say(
                                &shared,
                                &format!(
                                    "stopping: waiting up to {} for {busy} running task(s); \
                                 Ctrl+C again returns them to the queue now",
                                    humantime::format_duration(shared.options.grace)
                                ),
                            );
                        }
                        deadline = Some(Instant::now() + shared.options.grace);
                    } else {
                        release_running(&shared);
                        break WorkerExit::Stopped;
                    }
                }
                Ok(Event::Damaged(err)) => {
                    // Nothing more can be recorded: what runs ends now, and its leases run out
                    // for the queue to hand the tasks out again once it is mended.
                    shared.stopping.store(true, Ordering::SeqCst);
                    for task in shared.running.lock().expect("running lock").iter() {
                        task.request_stop(StopReason::Shutdown);
                    }
                    damage = Some(err);
                    break WorkerExit::Stopped;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        release_running(&shared);
                        break WorkerExit::Stopped;
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break WorkerExit::Stopped,
            }
        };
        shared.exiting.set();
        // Handlers still running were released above; what they started ends now.
        crate::handler_process::kill_all();
        signals.close();
        let _ = heartbeat.join();
        let _ = guard.join();
        let _ = upkeep.join();
        if let Some(err) = damage {
            return Err(anyhow::Error::new(err));
        }
        for hook in std::mem::take(&mut *shared.hooks.lock().expect("hooks lock")) {
            let _ = hook.join();
        }
        if let Err(err) = shared.store.remove_worker(&shared.options.name) {
            say(
                &shared,
                &format!("could not remove the worker record: {err}"),
            );
        }
        Ok(exit)
    }
}

/// Returns every task this worker still runs to pending: used when the grace period ends or on
/// a second Ctrl+C. A handler that finishes afterwards finds its lease gone and records nothing.
fn release_running(shared: &Shared) {
    let running: Vec<Arc<Running>> = shared.running.lock().expect("running lock").clone();
    for task in running {
        task.request_stop(StopReason::Shutdown);
        release(shared, &task.lease);
    }
}

/// Claims and runs tasks until the worker stops; returns the damage that stopped it, if the
/// queue was found damaged.
fn slot_loop(shared: &Shared, process: HandlerProcess) -> Option<StoreError> {
    let mut process = Some(process);
    // A task claimed together with the last one's outcome, to run next.
    let mut next: Option<Claim> = None;
    // What a draining worker said it waits for, so that it says so once.
    let mut told_drain: Option<String> = None;
    // How long a draining worker waits before it looks again: what it waits for may end
    // without a word (a task of another worker finishing unblocks nothing and rings no bell),
    // so it looks soon at first, then less and less often, up to the poll interval.
    let mut drain_wait = DRAIN_FIRST_LOOK;
    while !shared.stopping.load(Ordering::SeqCst) {
        let Some(handler) = process.as_mut() else {
            match HandlerProcess::start(&shared.role, &shared.options.settings) {
                Ok(started) => process = Some(started),
                Err(err) => {
                    // Nobody renews a task that waits for a handler: give it back.
                    if let Some(claim) = next.take() {
                        release(shared, &claim.lease);
                    }
                    say(shared, &format!("error: {err:#}; trying again"));
                    thread::sleep(Duration::from_secs(1));
                }
            }
            continue;
        };
        let token = shared.wakeup.token();
        if next.is_none()
            && let Some(limit) = shared.limits.holding(Timestamp::now())
        {
            // Drained meanwhile (the fallback roles did the rest): nothing to wait for.
            if shared.options.drain && matches!(shared.store.has_work(&shared.types), Ok(false)) {
                return None;
            }
            // The account is out: every task would meet the same limit until it resets.
            let left = limit.until.duration_since(Timestamp::now());
            let left = Duration::try_from(left).unwrap_or_default();
            shared.wakeup.wait(token, left.min(shared.options.poll));
            continue;
        }
        let claimed = match next.take() {
            Some(claim) => Ok(Some(claim)),
            None => {
                shared
                    .completer
                    .submit(Request {
                        outcome: None,
                        claim: true,
                    })
                    .next
            }
        };
        for warning in shared.store.take_warnings() {
            say(shared, &format!("warning: {warning}"));
        }
        match claimed {
            Ok(Some(claim)) => {
                drain_wait = DRAIN_FIRST_LOOK;
                let (survived, following) = run_task(shared, handler, claim);
                next = following;
                if !survived {
                    process = None; // it died or was killed: start a fresh one
                }
            }
            Ok(None) => {
                let mut wait = shared.options.poll;
                if shared.options.drain {
                    match shared.store.work_ahead(&shared.types) {
                        Ok(None) => return None,
                        Ok(Some(task)) => {
                            let why = waiting_for(&task, Timestamp::now());
                            if told_drain.as_ref() != Some(&why) {
                                say(shared, &format!("--drain: nothing to claim yet; {why}"));
                                told_drain = Some(why);
                            }
                            wait = drain_wait.min(wait);
                            drain_wait = drain_wait.saturating_mul(2).min(shared.options.poll);
                        }
                        Err(err) => say(shared, &format!("error: {err}")),
                    }
                }
                shared.wakeup.wait(token, wait);
            }
            Err(err @ StoreError::Damaged { .. }) => return Some(err),
            Err(err) => {
                say(shared, &format!("error: {err}"));
                thread::sleep(shared.options.poll.max(Duration::from_millis(500)));
            }
        }
    }
    // Claimed with the last outcome as the worker began to stop: not started, so given back.
    if let Some(claim) = next {
        release(shared, &claim.lease);
    }
    None
}

/// How soon a draining worker that can claim nothing looks again the first time (see
/// `drain_wait` in [`slot_loop`]).
const DRAIN_FIRST_LOOK: Duration = Duration::from_millis(5);

/// What a draining worker that can claim nothing waits for, in words: the task it waits for and
/// why that task cannot be claimed yet.
fn waiting_for(task: &queue::Task, now: Timestamp) -> String {
    let id = &task.id;
    match task.state() {
        TaskState::Running { .. } if task.waiting_input().is_some() => {
            format!("waiting for task {id}, whose agent waits for an answer (host answer {id})")
        }
        TaskState::Running { holder, .. } => {
            format!("waiting for task {id}, running on {holder}")
        }
        TaskState::Pending {
            not_before: Some(at),
            snoozed,
            attempts,
        } if at > now => {
            let when = crate::commands::clock(at, now);
            let what = if snoozed {
                "snoozed until"
            } else if attempts == 0 {
                "set to start at"
            } else {
                "to be retried at"
            };
            format!("waiting for task {id}, {what} {when}")
        }
        _ => format!(
            "waiting for task {id} ({}; a limit or another worker holds it)",
            task.status
        ),
    }
}

/// Returns a task this worker holds to the queue, saying so.
fn release(shared: &Shared, lease: &Lease) {
    match shared.store.release(lease) {
        Ok(()) => say(
            shared,
            &format!("task {} returned to the queue", lease.task_id),
        ),
        Err(err) => say(shared, &format!("task {}: {err}", lease.task_id)),
    }
}

/// Runs one claimed task in the slot's handler process and records the outcome, claiming the
/// next task in the same step unless the worker is stopping. Returns whether the process
/// survived, and the next task.
fn run_task(shared: &Shared, handler: &mut HandlerProcess, claim: Claim) -> (bool, Option<Claim>) {
    let Claim { task, lease } = claim;
    let running = Arc::new(Running {
        lease: lease.clone(),
        after: task.prerequisites(),
        task_type: task.task_type.clone(),
        progress: AtomicU8::new(0),
        message: Mutex::new(String::new()),
        stop: AtomicU8::new(0),
        started: Instant::now(),
        timeout: task
            .timeout_secs
            .map(Duration::from_secs)
            .or(shared.options.default_timeout),
        renewed: Mutex::new(Instant::now()),
        confirmed: Mutex::new(Instant::now()),
        plan: Mutex::new(Vec::new()),
        asking: Mutex::new(None),
        answered: AtomicBool::new(false),
        waited: Mutex::new(Duration::ZERO),
    });
    shared
        .running
        .lock()
        .expect("running lock")
        .push(Arc::clone(&running));
    shared.dirty.store(true, Ordering::SeqCst);
    say(
        shared,
        &format!(
            "task {} ({}) claimed, attempt {} of {}",
            task.id, task.task_type, task.attempts, task.max_attempts
        ),
    );

    let hooks = Hooks {
        shared,
        running: &running,
    };
    // The handler sees the time limit the worker enforces (the task's, else its role's), so
    // that it does not time the task on a clock of its own.
    let mut given = task.clone();
    given.timeout_secs = running.timeout.map(|t| t.as_secs().max(1));
    let end = handler.run(&given, &hooks);
    let survived = matches!(end, RunEnd::Returned(_)) && handler.reusable();

    shared
        .running
        .lock()
        .expect("running lock")
        .retain(|r| !Arc::ptr_eq(r, &running));
    shared.dirty.store(true, Ordering::SeqCst);
    let stop = running.stop_reason();
    if stop == Some(StopReason::Shutdown) {
        // Released by the shutdown path; recording an outcome now would be stale.
        return (survived, None);
    }
    let timed_out = || {
        format!(
            "timed out after {}",
            humantime::format_duration(running.timeout.unwrap_or_default())
        )
    };
    let failure = |error: String| Outcome::Failure {
        error,
        result: None,
        retryable: false,
    };
    let outcome = match end {
        // What the handler kept of the attempt (an output tail, changed files) stays.
        RunEnd::Returned(Ok(result)) if stop == Some(StopReason::TimedOut) => Outcome::Failure {
            error: timed_out(),
            result: Some(result),
            retryable: false,
        },
        RunEnd::Returned(Err(record)) if stop == Some(StopReason::TimedOut) => Outcome::Failure {
            error: format!("{}; {}", timed_out(), record.message),
            result: record.result,
            retryable: false,
        },
        RunEnd::Returned(Err(record)) if record.snooze.is_some() => {
            let snooze = record.snooze.expect("matched");
            let mut until = snooze.until;
            if snooze.usage_limit {
                limit_met(shared, &task, until, &record.message);
                // The roles standing in take the task now rather than at the reset.
                if !shared.options.fallback.is_empty() {
                    until = Timestamp::now();
                }
            }
            Outcome::Snooze {
                until,
                reason: record.message,
            }
        }
        RunEnd::Returned(Ok(result)) if shared.options.review => Outcome::ForReview(result),
        RunEnd::Returned(Ok(result)) => Outcome::Success(result),
        RunEnd::Returned(Err(record)) => Outcome::Failure {
            error: record.message,
            result: record.result,
            retryable: record.retryable,
        },
        RunEnd::Died(how) => failure(how),
        RunEnd::Killed(StopReason::TimedOut) => failure(format!(
            "{}; the handler ignored the stop request for {} and was killed",
            timed_out(),
            humantime::format_duration(KILL_AFTER)
        )),
        RunEnd::Killed(_) => failure(format!(
            "cancelled; the handler ignored the stop request for {} and was killed",
            humantime::format_duration(KILL_AFTER)
        )),
    };
    let limited = shared.limits.holding(Timestamp::now()).is_some();
    let Response { done, next } = shared.completer.submit(Request {
        outcome: Some((lease.clone(), outcome)),
        claim: !shared.stopping.load(Ordering::SeqCst) && !limited,
    });
    // A claim that failed is tried again by the loop.
    let next = next.unwrap_or_else(|err| {
        say(shared, &format!("error: {err}"));
        None
    });
    match done.expect("an outcome handed in has a result") {
        Ok(done) => {
            let took = format!("{} ms", done.duration_ms.unwrap_or_default());
            let line = match done.state() {
                TaskState::Completed { .. } => format!("task {} completed in {took}", done.id),
                TaskState::Review { .. } => format!(
                    "task {} succeeded in {took} and waits for review (host approve {0} / host \
                     reject {0} --reason ...)",
                    done.id
                ),
                TaskState::Pending {
                    snoozed: true,
                    not_before: Some(until),
                    ..
                } => format!(
                    "task {} snoozed until {} ({took}, attempt not counted): {}",
                    done.id,
                    crate::commands::clock(until, Timestamp::now()),
                    done.history
                        .last()
                        .and_then(|a| a.error.as_deref())
                        .unwrap_or_default()
                ),
                TaskState::Pending { .. }
                    if done
                        .history
                        .last()
                        .is_some_and(|a| a.status == queue::AttemptStatus::Snoozed) =>
                {
                    format!(
                        "task {} returned to the queue for role(s) {}, attempt not counted",
                        done.id,
                        shared.options.fallback.join(", ")
                    )
                }
                TaskState::Pending { .. } => format!(
                    "task {} failed in {took}, will retry: {}",
                    done.id,
                    done.error.as_deref().unwrap_or_default()
                ),
                TaskState::Failed { error } => {
                    format!("task {} failed in {took}: {error}", done.id)
                }
                TaskState::Cancelled { reason, .. } => format!(
                    "task {} cancelled in {took}: {}",
                    done.id,
                    reason.unwrap_or_default()
                ),
                other => format!("task {} {} in {took}", done.id, other.status()),
            };
            say(shared, &line);
            if shared.options.attention.wants_outcome(&done) {
                let store = Arc::clone(&shared.store);
                announce_aside(shared, move |attention| {
                    attention.after_outcome(store.as_ref(), &done)
                });
            }
            (survived, next)
        }
        Err(err) => {
            say(
                shared,
                &format!("task {}: outcome not recorded: {err}", lease.task_id),
            );
            (survived, next)
        }
    }
}

/// The handler's view of the worker, through the loader's [`TaskHooks`].
struct Hooks<'a> {
    shared: &'a Shared,
    running: &'a Running,
}

impl TaskHooks for Hooks<'_> {
    fn progress(&self, percent: u8, message: &str) {
        self.running.progress.store(percent, Ordering::SeqCst);
        *self.running.message.lock().expect("message lock") = message.to_string();
        self.shared.dirty.store(true, Ordering::SeqCst);
    }

    fn log(&self, line: &str) {
        let id = &self.running.lease.task_id;
        if let Err(err) = self.shared.store.append_log(id, line) {
            say(
                self.shared,
                &format!("task {id}: could not write its log: {err}"),
            );
        }
    }

    fn stop_reason(&self) -> Option<StopReason> {
        self.running.stop_reason()
    }

    fn settings(&self) -> serde_json::Value {
        self.shared.options.settings.clone()
    }

    fn lease_confirmed(&self) -> Option<(Instant, Duration)> {
        let confirmed = *self.running.confirmed.lock().expect("confirmed lock");
        Some((confirmed, self.shared.store.lease_duration()))
    }

    fn plan(&self, steps: Vec<plugin_api::PlanStep>) {
        *self.running.plan.lock().expect("plan lock") = steps;
        self.shared.dirty.store(true, Ordering::SeqCst);
    }

    fn ask(&self, question: &Question, wait: Duration) -> Result<(), Answer> {
        if question.options.is_empty() {
            return Err(Answer::Failed {
                reason: "a question must offer at least one option to answer with".into(),
            });
        }
        let lease = &self.running.lease;
        let expires_at = Timestamp::now().checked_add(wait).ok();
        let task = self
            .shared
            .store
            .ask(lease, question.clone(), expires_at)
            .map_err(|err| Answer::Failed {
                reason: err.to_string(),
            })?;
        self.running.answered.store(false, Ordering::SeqCst);
        let since = Instant::now();
        *self.running.asking.lock().expect("asking lock") = Some(Asking {
            since,
            // A wait too long to reckon is no limit at all.
            until: since.checked_add(wait),
        });
        let id = &lease.task_id;
        let line = format!(
            "input: asks a person: {} (answer within {}: {})",
            question.title,
            humantime::format_duration(wait),
            crate::commands::inbox::answer_hint(id, question)
        );
        self.log(&line);
        say(
            self.shared,
            &format!("task {id} waits for input: {}", question.title),
        );
        self.shared.dirty.store(true, Ordering::SeqCst);
        if self.shared.options.attention.wants(EventKind::Input) {
            announce_aside(self.shared, move |attention| {
                attention.announce(&crate::attention::Event::Input(task))
            });
        }
        Ok(())
    }

    fn answer(&self) -> Option<Answer> {
        let running = self.running;
        let (timed_out, stopped) = {
            let asking = running.asking.lock().expect("asking lock");
            let asking = asking.as_ref()?;
            (
                asking.until.is_some_and(|until| Instant::now() >= until),
                running.stop_reason().is_some(),
            )
        };
        if !(timed_out || stopped || running.answered.swap(false, Ordering::SeqCst)) {
            return None;
        }
        let lease = &running.lease;
        let answer = match self.shared.store.end_input(lease, timed_out || stopped) {
            // A task that stops allows nothing more, whatever was answered meanwhile.
            Ok(Some(_)) if stopped => Answer::Stopped,
            Ok(Some(answer)) => {
                self.log(&format!(
                    "input: answered {}{}",
                    answer.option,
                    answer
                        .by
                        .as_deref()
                        .map(|by| format!(" by {by}"))
                        .unwrap_or_default()
                ));
                Answer::Chosen {
                    option: answer.option,
                    fields: answer.fields,
                    by: answer.by,
                }
            }
            // Not answered after all (the renewal's news was of an earlier question): it waits.
            Ok(None) if !timed_out && !stopped => return None,
            Ok(None) if stopped => Answer::Stopped,
            Ok(None) => {
                self.log("input: nobody answered in time");
                Answer::TimedOut
            }
            Err(err) if stopped => {
                self.log(&format!("input: withdrawn as the task stops ({err})"));
                Answer::Stopped
            }
            Err(err) => Answer::Failed {
                reason: err.to_string(),
            },
        };
        if let Some(asking) = running.asking.lock().expect("asking lock").take() {
            *running.waited.lock().expect("waited lock") += asking.since.elapsed();
        }
        self.shared.dirty.store(true, Ordering::SeqCst);
        Some(answer)
    }

    fn prerequisites(&self) -> Vec<plugin_api::Task> {
        let mut tasks = Vec::new();
        for id in &self.running.after {
            match self.shared.store.get(id) {
                Ok(task) => tasks.push(task),
                Err(err) => say(self.shared, &format!("task {id}: {err}")),
            }
        }
        tasks
    }
}

/// Renews leases, enforces timeouts and publishes the worker record, until the worker exits.
/// Renews the leases of running tasks (which also brings news of `host cancel`) and keeps the
/// worker's record fresh. Store calls may block (a PostgreSQL link being reconnected): the
/// deadlines that must hold whatever the store does are kept by [`lease_guard_loop`].
fn heartbeat_loop(shared: &Shared) {
    let tick = Duration::from_millis(100);
    let record_every = Duration::from_secs(1);
    // Renewing also brings news of `host cancel`, so it happens at least every second.
    let renew_every = (shared.store.lease_duration() / 3).min(Duration::from_secs(1));
    let mut last_record = Instant::now();
    while shared.exiting.pause(tick) {
        let running: Vec<Arc<Running>> = shared.running.lock().expect("running lock").clone();
        for task in &running {
            let mut renewed = task.renewed.lock().expect("renewed lock");
            if renewed.elapsed() < renew_every {
                continue;
            }
            *renewed = Instant::now();
            match shared.store.renew(&task.lease) {
                Ok(renewal) => {
                    *task.confirmed.lock().expect("confirmed lock") = Instant::now();
                    if renewal.answered {
                        task.answered.store(true, Ordering::SeqCst);
                    }
                    if renewal.cancel_requested && task.stop_reason().is_none() {
                        task.request_stop(StopReason::Cancelled);
                        say(
                            shared,
                            &format!(
                                "task {} was cancelled; asking its handler to stop",
                                task.lease.task_id
                            ),
                        );
                    }
                }
                Err(err @ (StoreError::LeaseLost { .. } | StoreError::NotHolder { .. })) => {
                    task.request_stop(StopReason::Cancelled);
                    say(shared, &format!("{err}; asking its handler to stop"));
                }
                Err(err) => say(
                    shared,
                    &format!("task {}: lease renewal failed: {err}", task.lease.task_id),
                ),
            }
        }
        if shared.dirty.swap(false, Ordering::SeqCst) || last_record.elapsed() >= record_every {
            last_record = Instant::now();
            publish_record(shared, &running);
        }
    }
}

/// Keeps the running tasks' deadlines without touching the store, so that nothing the store
/// does (a call waiting out a reconnection) delays them: a task past its time limit is asked to
/// stop, and so is one whose lease the queue has not confirmed for a third of the lease. Cut
/// off from the queue, the lease runs out and the task goes to another worker: its handler
/// stops (and is killed if need be) before then, so that two attempts never run at once.
fn lease_guard_loop(shared: &Shared) {
    let lease = shared.store.lease_duration();
    while shared.exiting.pause(Duration::from_millis(100)) {
        let running: Vec<Arc<Running>> = shared.running.lock().expect("running lock").clone();
        for task in &running {
            if task.stop_reason().is_some() {
                continue;
            }
            if task.timeout.is_some_and(|t| task.worked() > t) {
                task.request_stop(StopReason::TimedOut);
                say(
                    shared,
                    &format!(
                        "task {} timed out; asking its handler to stop",
                        task.lease.task_id
                    ),
                );
                continue;
            }
            let unconfirmed = task.confirmed.lock().expect("confirmed lock").elapsed();
            if unconfirmed >= lease / 3 {
                task.request_stop(StopReason::Cancelled);
                say(
                    shared,
                    &format!(
                        "task {}: the queue has not confirmed its lease for {}s; stopping its \
                         handler before the lease runs out",
                        task.lease.task_id,
                        unconfirmed.as_secs()
                    ),
                );
            }
        }
    }
}

/// How often a worker checks the store ([`QueueStore::quick_check`]) and applies
/// `[queue] keep_finished`.
const UPKEEP_EVERY: Duration = Duration::from_secs(600);

/// Checks the store and applies `[queue] keep_finished` every [`UPKEEP_EVERY`] (the check ran
/// at start), on a thread of its own so that neither holds up lease renewals. Damage found
/// stops the worker.
fn upkeep_loop(shared: &Shared, events: &mpsc::Sender<Event>) {
    let mut last: Option<Instant> = None;
    while !shared.exiting.is_set() {
        if last.is_none_or(|at| at.elapsed() >= UPKEEP_EVERY) {
            if last.is_some() {
                match shared.store.quick_check() {
                    Err(err @ StoreError::Damaged { .. }) => {
                        let _ = events.send(Event::Damaged(err));
                        return;
                    }
                    Err(err) => say(shared, &format!("could not check the queue: {err}")),
                    Ok(()) => {}
                }
            }
            last = Some(Instant::now());
            if let Some(keep) = shared.options.keep_finished {
                purge_finished(shared, keep);
            }
        }
        watch_limits(shared);
        shared.exiting.pause(Duration::from_millis(200));
    }
}

/// Set once the worker exits: its background loops pause on it between rounds, so that they
/// end the moment it is set rather than after their pause (a draining worker exits at once).
#[derive(Default)]
struct Exiting {
    set: Mutex<bool>,
    rung: Condvar,
}

impl Exiting {
    /// Tells the loops to end.
    fn set(&self) {
        *self.set.lock().expect("exiting lock") = true;
        self.rung.notify_all();
    }

    /// Whether the worker exits.
    fn is_set(&self) -> bool {
        *self.set.lock().expect("exiting lock")
    }

    /// Waits `pause` unless the worker exits meanwhile; true while it does not.
    fn pause(&self, pause: Duration) -> bool {
        let set = self.set.lock().expect("exiting lock");
        let (set, _) = self
            .rung
            .wait_timeout_while(set, pause, |set| !*set)
            .expect("exiting lock");
        !*set
    }
}

/// Records the usage limit a task of this worker met: this role's workers claim nothing until
/// `until`, and say so.
fn limit_met(shared: &Shared, task: &queue::Task, until: Timestamp, reason: &str) {
    let limit = queue::UsageLimit {
        role: shared.options.role.clone(),
        types: shared.types.clone(),
        until,
        reason: reason.to_string(),
        task: task.id.clone(),
        worker: shared.options.name.clone(),
    };
    match shared.limits.met(shared.store.as_ref(), limit) {
        // Another slot met it first, and said so.
        Ok(false) => return,
        Ok(true) => {}
        Err(err) => say(shared, &format!("could not record the usage limit: {err}")),
    }
    let fallback = match shared.options.fallback.as_slice() {
        [] => String::new(),
        roles => format!("; role(s) {} take its tasks meanwhile", roles.join(", ")),
    };
    say(
        shared,
        &format!(
            "role {}: usage limit until {} ({reason}); claiming nothing until then{fallback}",
            shared.options.role,
            crate::commands::clock(until, Timestamp::now()),
        ),
    );
    let (role, task, fallback) = (
        shared.options.role.clone(),
        task.clone(),
        shared.options.fallback.clone(),
    );
    announce_aside(shared, move |attention| {
        attention.usage_limit(&role, until, &task, &fallback)
    });
}

/// Runs `announce` (hooks and notifications) on a thread of its own, saying each line it
/// answers (a sink that failed), so that a slow hook or webhook holds up no claim's lease; the
/// worker waits for it before it exits.
fn announce_aside(
    shared: &Shared,
    announce: impl FnOnce(&crate::attention::Attention) -> Vec<String> + Send + 'static,
) {
    let (name, attention) = (
        shared.options.name.clone(),
        shared.options.attention.clone(),
    );
    let announcing = thread::spawn(move || {
        for line in announce(&attention) {
            say_as(&name, &line);
        }
    });
    let mut hooks = shared.hooks.lock().expect("hooks lock");
    hooks.retain(|h| !h.is_finished());
    hooks.push(announcing);
}

/// Keeps the worker's view of the usage limits fresh, and claims the types of the roles it
/// stands in for while they are out.
fn watch_limits(shared: &Shared) {
    if let Err(err) = shared.limits.refresh(shared.store.as_ref()) {
        say(shared, &format!("could not read the usage limits: {err}"));
        return;
    }
    if shared.options.stands_in_for.is_empty() {
        return;
    }
    let mut types = shared.types.clone();
    for extra in shared.limits.standing_in_for(Timestamp::now()) {
        if !types.contains(&extra) {
            types.push(extra);
        }
    }
    shared.completer.claim_types(types);
}

/// Removes the tasks that finished longer than `keep` ago.
fn purge_finished(shared: &Shared, keep: Duration) {
    let keep_for = jiff::SignedDuration::try_from(keep).unwrap_or(jiff::SignedDuration::MAX);
    let before = Timestamp::now()
        .saturating_sub(keep_for)
        .unwrap_or(Timestamp::UNIX_EPOCH);
    match shared.store.purge(before, &[]) {
        Ok(0) => {}
        Ok(purged) => say(
            shared,
            &format!(
                "purged {purged} task(s) that finished more than {} ago (keep_finished)",
                humantime::format_duration(keep)
            ),
        ),
        Err(err) => say(shared, &format!("could not purge finished tasks: {err}")),
    }
}

fn publish_record(shared: &Shared, running: &[Arc<Running>]) {
    let mut record = shared.record.lock().expect("record lock");
    record.heartbeat_at = Timestamp::now();
    record.state = if shared.stopping.load(Ordering::SeqCst) {
        WorkerState::Stopping
    } else if running.is_empty() {
        WorkerState::Idle
    } else {
        WorkerState::Busy
    };
    record.tasks = running
        .iter()
        .map(|r| ActiveTask {
            id: r.lease.task_id.clone(),
            task_type: r.task_type.clone(),
            progress: r.progress.load(Ordering::SeqCst),
            message: r.message.lock().expect("message lock").clone(),
            plan: r.plan.lock().expect("plan lock").clone(),
        })
        .collect();
    if let Err(err) = shared.store.put_worker(&record) {
        say(
            shared,
            &format!("could not publish the worker record: {err}"),
        );
    }
}

/// One line on stderr, prefixed with the time and the worker's name.
fn say(shared: &Shared, line: &str) {
    say_as(&shared.options.name, line);
}

/// [`say`] from where the worker's state is not at hand (a hook's thread).
fn say_as(name: &str, line: &str) {
    use std::io::Write as _;
    let now = Timestamp::now().strftime("%H:%M:%S%.3f");
    // Formatted first and written whole: one write per line, never interleaved with another
    // slot's line.
    let text = format!("{now} {name}: {line}\n");
    let _ = std::io::stderr().write_all(text.as_bytes());
}

/// Sends an [`Event::Signal`] for every SIGINT and SIGTERM (on Windows, Ctrl+C, Ctrl+Break and
/// the console closing); what is returned stops that on Unix when closed.
#[cfg(unix)]
fn listen_for_signals(
    events: mpsc::Sender<Event>,
) -> anyhow::Result<signal_hook::iterator::Handle> {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])?;
    let handle = signals.handle();
    thread::spawn(move || {
        for _ in signals.forever() {
            if events.send(Event::Signal).is_err() {
                break;
            }
        }
    });
    Ok(handle)
}

/// Sends an [`Event::Signal`] for every Ctrl+C, Ctrl+Break and the console closing.
#[cfg(windows)]
fn listen_for_signals(events: mpsc::Sender<Event>) -> anyhow::Result<ConsoleEvents> {
    let events = Mutex::new(events);
    ctrlc::set_handler(move || {
        let _ = events.lock().map(|e| e.send(Event::Signal));
    })?;
    Ok(ConsoleEvents)
}

/// The console's events, heard for the rest of the process (a handler cannot be set twice).
#[cfg(windows)]
struct ConsoleEvents;

#[cfg(windows)]
impl ConsoleEvents {
    /// Nothing to stop: the worker exits next.
    fn close(&self) {}
}

/// This machine's name, reduced to what a worker name may contain.
pub fn hostname() -> String {
    #[cfg(unix)]
    let name = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok());
    #[cfg(windows)]
    let name = std::env::var("COMPUTERNAME").ok();
    name.map(|h| {
        h.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    })
    .filter(|h: &String| !h.is_empty())
    .unwrap_or_else(|| "localhost".to_string())
}
