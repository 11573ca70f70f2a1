//! The self-serve verbs, for an assistant that takes work itself instead of being driven by a
//! worker: `host claim`, `host heartbeat`, `host log`, `host progress`, `host complete`, `host
//! fail`. They use the same store operations as workers, so leases, attempt fencing, retries
//! and dependencies apply.
//!
//! A claim hands out the lease's secret token; every later call on the task must show it, so
//! that only the holder extends or finishes a task (another assistant, or a slip of the task
//! id, is refused, naming the holder).
//!
//! While it holds tasks, a holder is listed among the workers (`status`, `watch`, the
//! dashboard) from a record these verbs keep: its tasks with their progress, and its last
//! action as its heartbeat. It counts as alive until its lease runs out.

use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use jiff::Timestamp;
use queue::{
    ActiveTask, Claim, Lease, Outcome, QueueStore, Task, TaskQuery, TaskStatus, WorkerRecord,
    WorkerState,
};
use serde_json::Value;

use crate::cli::Settings;
use crate::commands::status::WORKER_STALE_AFTER;
use crate::commands::work::{claiming_store, find_role, role_types};
use crate::commands::{open_store, outln, print_json};
use crate::config::Config;
use crate::wakeup::Wakeup;

/// How often a waiting claim looks again without news: leases expire, backoffs end and tasks
/// age without ringing anything.
const WAIT_POLL: Duration = Duration::from_secs(1);

/// The longest lease, and the longest wait for work, a self-serve call may ask for.
const LONGEST: Duration = Duration::from_secs(7 * 24 * 3600);

fn check_length(what: &str, length: Duration) -> anyhow::Result<()> {
    if length > LONGEST {
        bail!(
            "a {what} of {} is longer than the longest allowed, {}",
            humantime::format_duration(length),
            humantime::format_duration(LONGEST)
        );
    }
    Ok(())
}

/// How a claim waits for work when there is none.
pub struct Waiting<'a> {
    /// How long, at most.
    pub wait: Duration,
    /// What wakes it when work may have come; without one it looks every second.
    pub wakeup: Option<&'a Wakeup>,
    /// True once whoever asked is gone: the wait ends, and a task claimed meanwhile is
    /// returned to the queue instead of being held by nobody.
    pub abandoned: &'a (dyn Fn() -> bool + Sync),
}

/// Claims the best pending task for a role as `name` (default ROLE-HOSTNAME), holding it for
/// `lease`. With nothing to claim, waits as `waiting` says for a task to become claimable;
/// `None` when none did.
pub fn claim_task(
    settings: &Settings,
    role_name: &str,
    name: Option<&str>,
    lease: Duration,
    waiting: &Waiting<'_>,
) -> anyhow::Result<Option<Claim>> {
    check_length("lease", lease)?;
    check_length("wait", waiting.wait)?;
    let store = open_store(settings)?;
    let config = Config::load(&store)?;
    let role = find_role(settings, &config, role_name)?;
    // A typo in the role's table is refused here as at a worker's start.
    config.role_settings(role_name, &role)?;
    let types = role_types(&config, role_name, &role);
    let store = claiming_store(store, &config, lease);
    let worker = name.map_or_else(
        || format!("{role_name}-{}", crate::worker::hostname()),
        String::from,
    );
    queue::validate_name("worker name", &worker)?;
    let now = Timestamp::now();
    if let Some(other) = store.workers()?.into_iter().find(|w| {
        w.name == worker && w.alive_until.is_none() && !w.is_dead(now, WORKER_STALE_AFTER)
    }) {
        bail!(
            "name {worker} is in use by a worker (pid {} on {}); pick another with --name",
            other.pid,
            other.hostname
        );
    }
    let deadline = Instant::now() + waiting.wait;
    loop {
        let token = waiting.wakeup.map(Wakeup::token);
        if let Some(claim) = store.claim(&worker, &types)? {
            if (waiting.abandoned)() {
                store.release(&claim.lease)?;
                return Ok(None);
            }
            update_holder(
                &store,
                &worker,
                Some(lease),
                Some((role_name, &types)),
                None,
            )?;
            return Ok(Some(claim));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || (waiting.abandoned)() {
            return Ok(None);
        }
        match (waiting.wakeup, token) {
            (Some(wakeup), Some(token)) => wakeup.wait(token, left.min(WAIT_POLL)),
            _ => std::thread::sleep(left.min(WAIT_POLL)),
        }
    }
}

/// Rewrites the record of self-serve holder `name` as of now, alive for `lease` (`None`: until
/// the end its record already has, as after a task is finished): its tasks
/// are the running tasks it holds (read from the store, so concurrent calls cannot lose one),
/// with their last progress, and without any the record is removed. `role` names the role it
/// claims for; `progress` is news of one task.
fn update_holder(
    store: &dyn QueueStore,
    name: &str,
    lease: Option<Duration>,
    role: Option<(&str, &[String])>,
    progress: Option<(&str, u8, &str)>,
) -> anyhow::Result<()> {
    let now = Timestamp::now();
    let workers = store.workers()?;
    let existing = workers.iter().find(|w| w.name == name);
    if existing.is_some_and(|w| w.alive_until.is_none()) {
        // A worker process of that name: its record is its own.
        return Ok(());
    }
    let held = store.list(&TaskQuery {
        statuses: vec![TaskStatus::Running],
        ..TaskQuery::default()
    })?;
    let tasks: Vec<ActiveTask> = held
        .into_iter()
        .filter(|task| task.worker.as_deref() == Some(name))
        .map(|task| {
            let known = existing.and_then(|w| w.tasks.iter().find(|t| t.id == task.id));
            let (percent, message) = match progress {
                Some((id, percent, message)) if id == task.id => (percent, message.to_string()),
                _ => known.map_or((0, String::new()), |t| (t.progress, t.message.clone())),
            };
            ActiveTask {
                id: task.id,
                task_type: task.task_type,
                progress: percent.min(100),
                message,
                plan: known.map(|t| t.plan.clone()).unwrap_or_default(),
            }
        })
        .collect();
    if tasks.is_empty() {
        return Ok(store.remove_worker(name)?);
    }
    let (role, types) = match (role, existing) {
        (Some((role, types)), _) => (role.to_string(), types.to_vec()),
        (None, Some(w)) => (w.role.clone(), w.types.clone()),
        (None, None) => (String::new(), Vec::new()),
    };
    store.put_worker(&WorkerRecord {
        name: name.to_string(),
        role,
        types,
        // No process of its own: whatever ran `host claim` has exited.
        pid: 0,
        hostname: crate::worker::hostname(),
        state: WorkerState::Busy,
        tasks,
        started_at: existing.map_or(now, |w| w.started_at),
        heartbeat_at: now,
        alive_until: match lease {
            Some(lease) => Some(queue::lifecycle::later(now, lease)),
            None => Some(existing.and_then(|w| w.alive_until).unwrap_or(now)),
        },
        library: None,
    })?;
    Ok(())
}

/// The task's JSON with the lease's token added as `leaseToken`: what `host claim --json` and
/// the MCP `claim_task` tool answer.
pub fn claimed_json(claim: &Claim) -> Value {
    let mut json = serde_json::to_value(&claim.task).expect("task serializes");
    json["leaseToken"] = claim.lease.token.clone().into();
    json
}

/// `host claim`: claims the best pending task for a role (waiting up to `wait` for one) and
/// prints it with its lease token.
pub fn claim(
    settings: &Settings,
    role_name: &str,
    name: Option<&str>,
    lease: Duration,
    wait: Duration,
    json: bool,
) -> anyhow::Result<()> {
    let wakeup = match wait.is_zero() {
        true => None,
        false => Some(Wakeup::start(open_store(settings)?.work_signal()).0),
    };
    let waiting = Waiting {
        wait,
        wakeup: wakeup.as_ref(),
        abandoned: &|| false,
    };
    let Some(claim) = claim_task(settings, role_name, name, lease, &waiting)? else {
        if wait.is_zero() {
            bail!("no task to claim for role {role_name}");
        }
        bail!(
            "no task to claim for role {role_name} after waiting {}",
            humantime::format_duration(wait)
        );
    };
    if json {
        return print_json(&claimed_json(&claim));
    }
    let task = &claim.task;
    outln!("{}", task.id);
    outln!("type         {}", task.task_type);
    if let Some(target) = &task.target {
        outln!("target       {}", target.display());
    }
    if let Some(description) = &task.description {
        outln!("description  {description}");
    }
    if !task.payload.is_null() {
        outln!("payload      {}", task.payload);
    }
    outln!("lease token  {}", claim.lease.token);
    outln!(
        "claimed by {} (attempt {} of {}); keep it with `host heartbeat {id} --token TOKEN` at \
         least every {}, finish with `host complete {id} --token TOKEN` or `host fail {id} \
         --token TOKEN --error TEXT`",
        claim.lease.worker,
        task.attempts,
        task.max_attempts,
        humantime::format_duration(lease / 2),
        id = task.id
    );
    Ok(())
}

/// The lease that `token` claims on task `id`: checked by the store, which refuses anyone but
/// the holder.
fn lease_of(store: &dyn QueueStore, id: &str, token: &str) -> anyhow::Result<Lease> {
    Ok(lease_on(&store.get(id)?, token))
}

/// The lease that `token` claims on `task`, as [`lease_of`] reads it.
fn lease_on(task: &Task, token: &str) -> Lease {
    Lease {
        task_id: task.id.clone(),
        attempt: task.attempts,
        worker: task.worker.clone().unwrap_or_default(),
        token: token.to_string(),
    }
}

/// Extends the lease of a claimed task to `lease` from now, as the holder of `token`; says
/// whether a cancel was requested.
pub fn heartbeat_task(
    settings: &Settings,
    id: &str,
    token: &str,
    lease: Duration,
) -> anyhow::Result<bool> {
    report_progress(settings, id, token, lease, None)
}

/// Extends the lease as [`heartbeat_task`] does and, given `progress` (0-100 and a message),
/// shows it beside the holder in `status`; says whether a cancel was requested.
pub fn report_progress(
    settings: &Settings,
    id: &str,
    token: &str,
    lease: Duration,
    progress: Option<(u8, &str)>,
) -> anyhow::Result<bool> {
    check_length("lease", lease)?;
    let store = open_store(settings)?.with_lease(lease);
    let held = lease_of(&store, id, token)?;
    let renewal = store.renew(&held)?;
    let progress = progress.map(|(percent, message)| (id, percent, message));
    update_holder(&store, &held.worker, Some(lease), None, progress)?;
    Ok(renewal.cancel_requested)
}

/// Appends `lines` to a claimed task's log (`host logs ID`), as the holder of `token`,
/// extending its lease as a heartbeat does; says whether a cancel was requested.
pub fn log_task(
    settings: &Settings,
    id: &str,
    token: &str,
    lease: Duration,
    lines: &[String],
) -> anyhow::Result<bool> {
    let cancelled = report_progress(settings, id, token, lease, None)?;
    let store = open_store(settings)?;
    for line in lines.iter().flat_map(|text| text.lines()) {
        store.append_log(id, line)?;
    }
    Ok(cancelled)
}

/// `host progress`: reports progress on a claimed task and extends its lease.
pub fn progress(
    settings: &Settings,
    id: &str,
    token: &str,
    lease: Duration,
    percent: u8,
    message: &str,
) -> anyhow::Result<()> {
    if report_progress(settings, id, token, lease, Some((percent, message)))? {
        say_cancelled(id)?;
    } else {
        outln!("task {id}: {}% {message}", percent.min(100));
    }
    Ok(())
}

/// `host log`: appends lines to a claimed task's log and extends its lease.
pub fn log(
    settings: &Settings,
    id: &str,
    token: &str,
    lease: Duration,
    lines: &[String],
) -> anyhow::Result<()> {
    if log_task(settings, id, token, lease, lines)? {
        say_cancelled(id)?;
    }
    Ok(())
}

fn say_cancelled(id: &str) -> std::io::Result<()> {
    outln!(
        "task {id}: cancel requested; stop and run `host fail {id} --token TOKEN --error cancelled`"
    );
    Ok(())
}

/// `host heartbeat`: extends the lease of a claimed task.
pub fn heartbeat(
    settings: &Settings,
    id: &str,
    token: &str,
    lease: Duration,
) -> anyhow::Result<()> {
    if heartbeat_task(settings, id, token, lease)? {
        say_cancelled(id)?;
    } else {
        outln!(
            "task {id}: lease extended by {}",
            humantime::format_duration(lease)
        );
    }
    Ok(())
}

/// Records how a claimed task ended, as the holder of `token`.
pub fn finish_task(
    settings: &Settings,
    id: &str,
    token: &str,
    outcome: Outcome,
) -> anyhow::Result<Task> {
    let store = open_store(settings)?;
    let claimed = store.get(id)?;
    let held = lease_on(&claimed, token);
    // A success of a role that asks for review waits for it, as a worker's would.
    let config = Config::load(&store)?;
    let outcome = match outcome {
        Outcome::Success(result) => {
            let holder = store.workers()?.into_iter().find(|w| w.name == held.worker);
            let role = holder.as_ref().map(|w| w.role.as_str());
            if config.review_for(role, &claimed.task_type) {
                Outcome::ForReview(result)
            } else {
                Outcome::Success(result)
            }
        }
        other => other,
    };
    let task = store
        .finish(&held, outcome)
        .context("the outcome was not recorded")?;
    update_holder(&store, &held.worker, None, None, None)?;
    for line in crate::attention::Attention::new(&config).after_outcome(&store, &task) {
        eprintln!("warning: {line}");
    }
    Ok(task)
}

/// `host complete`: records success, with an optional JSON result.
pub fn complete(
    settings: &Settings,
    id: &str,
    token: &str,
    result: Option<&str>,
) -> anyhow::Result<()> {
    let result = match result {
        Some(text) => serde_json::from_str(text)
            .map_err(|err| anyhow!("--result is not valid JSON: {err}"))?,
        None => Value::Null,
    };
    let task = finish_task(settings, id, token, Outcome::Success(result))?;
    outln!("task {id}: {}", task.status);
    Ok(())
}

/// `host fail`: records a failure; retried later when `retryable` and attempts are left.
pub fn fail(
    settings: &Settings,
    id: &str,
    token: &str,
    error: &str,
    retryable: bool,
) -> anyhow::Result<()> {
    let outcome = Outcome::Failure {
        error: error.to_string(),
        result: None,
        retryable,
    };
    let task = finish_task(settings, id, token, outcome)?;
    outln!("task {id}: {}", task.status);
    Ok(())
}

/// `host logs`: prints a task's log; with `follow`, keeps printing new lines until the task has
/// finished.
pub fn logs(settings: &Settings, id: &str, follow: bool) -> anyhow::Result<()> {
    let store = open_store(settings)?;
    let mut offset = 0;
    loop {
        let (text, next) = store.read_log(id, offset)?;
        if !text.is_empty() {
            crate::commands::out!("{text}");
        }
        offset = next;
        if !follow {
            if offset == 0 {
                // On stderr, so that `host logs ID > file` still gives an empty file.
                let status = store.get(id)?.status;
                eprintln!("task {id} ({status}) has logged nothing");
            }
            return Ok(());
        }
        let task = store.get(id)?;
        // A task waiting for review waits for a person, not for more lines.
        if task.status.is_finished() || task.status == queue::TaskStatus::Review {
            let (rest, _) = store.read_log(id, offset)?;
            crate::commands::out!("{rest}");
            // The exit status tells a script how the task ended.
            if task.status == queue::TaskStatus::Review {
                bail!(
                    "task {id} waits for review (host approve {id} / host reject {id} --reason TEXT)"
                );
            }
            if task.status != queue::TaskStatus::Completed {
                bail!(
                    "task {id} {}: {}",
                    task.status,
                    task.error.as_deref().unwrap_or("no error recorded")
                );
            }
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
