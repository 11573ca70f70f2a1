//! The rules of a task's life, decided here once for every store: what a claim, a renewal, a
//! finish, a release, a lost lease, a cancel and a retry do to a task; who may extend or finish
//! it; how long a failed task waits before its next attempt; how priorities age; and how the
//! tasks that come after a task follow it (unblocked when it completes, cancelled when it fails
//! for good, revived when it is retried). A task may also come after another whatever its
//! outcome (`afterAny`): it waits until that one has finished, and is never cancelled by it.
//!
//! A store brings the transaction ([`TaskTx`]: read a task, write it back, find the tasks after
//! it) and the queries that find candidates; the decisions are made here.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde_json::Value;

use crate::{
    Attempt, AttemptStatus, BranchOutcome, BranchState, Dependency, Input, InputAnswer, Lease,
    MAX_TASK_BYTES, NewTask, Outcome, PauseScope, Question, Review, StoreError, Task, TaskState,
    TaskStatus, Verdict, validate_name,
};

/// How long a lease lasts unless renewed, when the store is not told otherwise.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// The delay before the first retry of a failed task, when the store is not told otherwise;
/// each further retry waits twice as long (with jitter), up to [`MAX_BACKOFF`].
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(1);

/// The longest a failed task waits before its next attempt.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// How a store applies the rules: the queue-wide settings of `host.toml` and of the worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// How long a claim holds without a renewal.
    pub lease: Duration,
    /// The delay before the first retry; doubled for each further one, with jitter.
    pub backoff: Duration,
    /// At most this many tasks of a type running at once, across all workers.
    pub limits: BTreeMap<String, usize>,
    /// A pending task is claimed as if one priority step more urgent per this much waiting.
    pub aging: Option<Duration>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            lease: DEFAULT_LEASE,
            backoff: DEFAULT_BACKOFF,
            limits: BTreeMap::new(),
            aging: None,
        }
    }
}

/// What a store offers the rules inside one transaction.
pub trait TaskTx {
    /// The task with this id, if there is one.
    fn task(&mut self, id: &str) -> Result<Option<Task>, StoreError>;
    /// Writes back a task that exists.
    fn put(&mut self, task: &Task) -> Result<(), StoreError>;
    /// The ids of the tasks that come after this one, of either kind (`after`, `afterAny`: the
    /// rules read which from the dependent).
    fn dependents(&mut self, id: &str) -> Result<Vec<String>, StoreError>;
}

/// `now` plus `duration`, saturating.
pub fn later(now: Timestamp, duration: Duration) -> Timestamp {
    let duration = SignedDuration::try_from(duration).unwrap_or(SignedDuration::MAX);
    now.saturating_add(duration).unwrap_or(now)
}

/// The priority a task added at `created` is claimed at by `now`: one step lower per `step`
/// waited, down to 0.
pub fn aged_priority(priority: u32, created: Timestamp, now: Timestamp, step: Duration) -> u32 {
    let waited = now.duration_since(created).as_secs_f64().max(0.0);
    let steps = (waited / step.as_secs_f64()).floor();
    priority.saturating_sub(steps.min(f64::from(u32::MAX)) as u32)
}

/// Where a pending task stands in the claim order at `now`: lower first. By its priority
/// (aged, when the policy ages tasks), then by id (oldest first). Claims and `host list`
/// both order by this.
pub fn claim_rank(
    priority: u32,
    created: Timestamp,
    id: i64,
    now: Timestamp,
    policy: &Policy,
) -> (u32, i64) {
    let priority = match policy.aging {
        Some(step) => aged_priority(priority, created, now, step),
        None => priority,
    };
    (priority, id)
}

/// What is paused (`host pause`): the whole queue, some types, some tasks. A paused task is
/// not claimed; one already running finishes. Claims, `has_work` and `host list` all decide
/// by this.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PauseSet(Vec<PauseScope>);

impl PauseSet {
    /// The pauses as stored, (kind, name) pairs of kind `queue`, `type` or `task`.
    pub fn new(pauses: &[(String, String)]) -> PauseSet {
        PauseSet(
            pauses
                .iter()
                .map(|(kind, name)| crate::records::pause_scope(kind, name.clone()))
                .collect(),
        )
    }

    /// The pauses as `host pause` names them.
    pub fn of_scopes(scopes: &[PauseScope]) -> PauseSet {
        PauseSet(scopes.to_vec())
    }

    /// The pause that holds a task of `task_type` with id `id`, if one does: the queue's, its
    /// type's or its own.
    pub fn holder(&self, task_type: &str, id: &str) -> Option<&PauseScope> {
        self.0.iter().find(|scope| match scope {
            PauseScope::Queue => true,
            PauseScope::Type(t) => t == task_type,
            PauseScope::Task(paused) => paused == id,
        })
    }

    /// Whether every task of `task_type` is paused (the queue or the type).
    pub fn holds_type(&self, task_type: &str) -> bool {
        self.holder(task_type, "").is_some()
    }

    /// Whether the whole queue is paused.
    pub fn queue(&self) -> bool {
        self.0.contains(&PauseScope::Queue)
    }

    /// The paused types.
    pub fn types(&self) -> Vec<String> {
        self.0
            .iter()
            .filter_map(|scope| match scope {
                PauseScope::Type(t) => Some(t.clone()),
                _ => None,
            })
            .collect()
    }

    /// The tasks paused one by one.
    pub fn tasks(&self) -> Vec<i64> {
        self.0
            .iter()
            .filter_map(|scope| match scope {
                PauseScope::Task(id) => id.parse().ok(),
                _ => None,
            })
            .collect()
    }
}

/// The delay before the retry that follows failed attempt `attempt` (1-based): `base` doubled
/// per earlier attempt, capped at [`MAX_BACKOFF`], then scaled by a random 50-100 % so that
/// tasks failing together do not retry together.
pub fn backoff_for(base: Duration, attempt: u32) -> Duration {
    let doubled = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    doubled
        .min(MAX_BACKOFF)
        .mul_f64(0.5 + fastrand::f64() / 2.0)
}

/// Checks and prepares tasks to be added with ids from `first` on: names, attempts, the tasks
/// they come after (which must exist, without cycles; a task named in both `after` and
/// `afterAny` is refused), and the state each starts in (cancelled when a task of its `after`
/// already failed, blocked while one of either kind is unfinished).
/// Nothing is stored; an error means nothing may be.
pub fn new_tasks(
    tx: &mut impl TaskTx,
    tasks: Vec<NewTask>,
    first: u64,
    now: Timestamp,
) -> Result<Vec<Task>, StoreError> {
    for (index, task) in tasks.iter().enumerate() {
        validate_name("task type", &task.task_type).map_err(|err| invalid(index, err))?;
        check_size(task.description.as_deref(), &task.payload)
            .map_err(|err| invalid(index, err))?;
        if task.max_attempts == Some(0) {
            return Err(invalid(index, "maxAttempts must be at least 1"));
        }
    }
    let after = resolve_after(tx, &tasks, first, "after", |t| &t.after)?;
    let after_any = resolve_after(tx, &tasks, first, "afterAny", |t| &t.after_any)?;
    for (index, (after, any)) in after.iter().zip(&after_any).enumerate() {
        if let Some(id) = any.iter().find(|id| after.contains(id)) {
            return Err(invalid(
                index,
                format!("task {id} is in both after and afterAny: name it in one"),
            ));
        }
    }
    if let Some(cycle) = batch_cycle(&tasks) {
        let entries: Vec<String> = cycle.iter().map(|i| (i + 1).to_string()).collect();
        return Err(StoreError::InvalidTask(format!(
            "entries {} come after each other in a cycle",
            entries.join(" -> ")
        )));
    }
    let mut siblings = Vec::with_capacity(tasks.len());
    for (index, task) in tasks.iter().enumerate() {
        let mut ids = Vec::new();
        for &other in &task.siblings {
            if other >= tasks.len() {
                return Err(invalid(index, format!("siblings: no entry {}", other + 1)));
            }
            if other != index {
                ids.push((first + other as u64).to_string());
            }
        }
        siblings.push(ids);
    }
    let mut tasks: Vec<Task> = tasks
        .into_iter()
        .zip(after)
        .zip(after_any)
        .zip(siblings)
        .zip(first..)
        .map(|((((new, after), after_any), siblings), id)| {
            let mut task = new.into_task(id.to_string(), after, now);
            task.after_any = after_any;
            task.siblings = siblings;
            task
        })
        .collect();
    settle_new_tasks(tx, &mut tasks, now)?;
    Ok(tasks)
}

/// Refuses a description and payload that take more than [`MAX_TASK_BYTES`] together (the
/// payload counted as its JSON), with [`StoreError::TooLarge`].
pub fn check_size(description: Option<&str>, payload: &Value) -> Result<(), StoreError> {
    let payload = match payload {
        Value::Null => 0,
        other => serde_json::to_string(other).map_or(0, |json| json.len()),
    };
    let size = description.map_or(0, str::len) + payload;
    if size > MAX_TASK_BYTES {
        return Err(StoreError::TooLarge { size });
    }
    Ok(())
}

fn invalid(index: usize, message: impl std::fmt::Display) -> StoreError {
    StoreError::InvalidTask(format!("entry {}: {message}", index + 1))
}

/// Resolves one kind of dependency (`field`, read by `deps`) of tasks about to get ids from
/// `first` on, refusing unknown ids.
fn resolve_after(
    tx: &mut impl TaskTx,
    tasks: &[NewTask],
    first: u64,
    field: &str,
    deps: fn(&NewTask) -> &Vec<Dependency>,
) -> Result<Vec<Vec<String>>, StoreError> {
    let mut resolved = Vec::with_capacity(tasks.len());
    for (index, task) in tasks.iter().enumerate() {
        let mut ids = Vec::new();
        for dep in deps(task) {
            let id = match dep {
                Dependency::Batch(other) if *other < tasks.len() => {
                    (first + *other as u64).to_string()
                }
                Dependency::Batch(other) => {
                    return Err(invalid(index, format!("{field}: no entry {}", other + 1)));
                }
                Dependency::Task(id) => {
                    if tx.task(id)?.is_none() {
                        return Err(invalid(index, format!("{field}: no task with id {id}")));
                    }
                    id.clone()
                }
            };
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        resolved.push(ids);
    }
    Ok(resolved)
}

/// Sets the state each new task starts in. Tasks of the batch may come after later entries of
/// it, so they are settled in dependency order.
fn settle_new_tasks(
    tx: &mut impl TaskTx,
    tasks: &mut [Task],
    now: Timestamp,
) -> Result<(), StoreError> {
    let batch: HashMap<String, usize> = tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.id.clone(), i))
        .collect();
    let mut settled: HashMap<String, TaskStatus> = HashMap::new();
    while settled.len() < tasks.len() {
        let before = settled.len();
        for task in tasks.iter_mut() {
            if settled.contains_key(&task.id) {
                continue;
            }
            let waits_on_batch = task
                .prerequisites()
                .iter()
                .any(|dep| batch.contains_key(dep) && !settled.contains_key(dep));
            if waits_on_batch {
                continue;
            }
            // A purged task completed or failed long ago: it holds nothing up.
            let mut status_of = |dep: &String| -> Result<TaskStatus, StoreError> {
                Ok(match settled.get(dep) {
                    Some(status) => *status,
                    None => tx.task(dep)?.map_or(TaskStatus::Completed, |t| t.status),
                })
            };
            let mut statuses = Vec::new();
            for dep in &task.after {
                statuses.push((dep.clone(), status_of(dep)?));
            }
            let mut any_open = false;
            for dep in &task.after_any {
                any_open |= !status_of(dep)?.is_finished();
            }
            if let Some((dep, status)) = statuses.iter().find(|(_, s)| is_broken(*s)) {
                cancel_for(task, dep, *status, now);
            } else if any_open || statuses.iter().any(|(_, s)| *s != TaskStatus::Completed) {
                task.status = TaskStatus::Blocked;
            }
            settled.insert(task.id.clone(), task.status);
        }
        // Cycles were refused, so every round settles at least one task.
        assert!(settled.len() > before, "dependency cycle after validation");
    }
    Ok(())
}

fn is_broken(status: TaskStatus) -> bool {
    matches!(status, TaskStatus::Failed | TaskStatus::Cancelled)
}

/// A cycle among the batch-internal `after` and `afterAny` edges, as entry indexes (the first
/// repeated at the end), if there is one.
pub fn batch_cycle(tasks: &[NewTask]) -> Option<Vec<usize>> {
    // 0 = unvisited, 1 = on the current path, 2 = done.
    fn visit(i: usize, tasks: &[NewTask], state: &mut [u8], path: &mut Vec<usize>) -> bool {
        state[i] = 1;
        path.push(i);
        for dep in tasks[i].after.iter().chain(&tasks[i].after_any) {
            if let Dependency::Batch(j) = *dep
                && j < tasks.len()
            {
                if state[j] == 1 {
                    let start = path.iter().position(|&p| p == j).unwrap_or(0);
                    path.drain(..start);
                    path.push(j);
                    return true;
                }
                if state[j] == 0 && visit(j, tasks, state, path) {
                    return true;
                }
            }
        }
        path.pop();
        state[i] = 2;
        false
    }
    let mut state = vec![0u8; tasks.len()];
    for i in 0..tasks.len() {
        let mut path = Vec::new();
        if state[i] == 0 && visit(i, tasks, &mut state, &mut path) {
            return Some(path);
        }
    }
    None
}

/// Gives a pending task to `worker` for its next attempt, at `now`.
pub fn claim(task: &mut Task, worker: &str, now: Timestamp, policy: &Policy) {
    task.status = TaskStatus::Running;
    task.attempts += 1;
    task.worker = Some(worker.to_string());
    task.started_at = Some(now);
    task.finished_at = None;
    task.duration_ms = None;
    task.success = None;
    task.result = None;
    task.retry_at = None;
    task.snoozed_until = None;
    // A new attempt makes a new branch: what became of an earlier one no longer describes it.
    task.branch_state = None;
    task.input = None;
    task.lease_expires_at = Some(later(now, policy.lease));
    let waited = now.duration_since(task.created_at).as_millis().max(0);
    task.wait_ms = Some(u64::try_from(waited).unwrap_or(u64::MAX));
    task.aged_priority = policy
        .aging
        .map(|step| aged_priority(task.priority, task.created_at, now, step))
        .filter(|aged| *aged < task.priority);
    task.history.push(Attempt {
        attempt: task.attempts,
        worker: worker.to_string(),
        started_at: now,
        finished_at: None,
        status: AttemptStatus::Running,
        error: None,
        finished_by: None,
        session: None,
    });
}

/// Checks that `lease` is the task's current lease: the same attempt of a running task, shown
/// with the secret the store gave out with it (`holder_token`), and not expired by `now`.
pub fn check_lease(
    task: &Task,
    lease: &Lease,
    holder_token: Option<&str>,
    now: Timestamp,
) -> Result<(), StoreError> {
    let lost = |why| StoreError::LeaseLost {
        id: lease.task_id.clone(),
        attempt: lease.attempt,
        why,
    };
    let TaskState::Running {
        holder,
        attempt,
        lease_ends,
        ..
    } = task.state()
    else {
        return Err(lost("the task was reclaimed or finished since"));
    };
    if attempt != lease.attempt {
        return Err(lost("the task was reclaimed or finished since"));
    }
    let holds = holder_token.is_some_and(|token| crate::secret::same(token, &lease.token));
    if !holds {
        return Err(StoreError::NotHolder {
            id: task.id.clone(),
            holder: holder.to_string(),
            attempt,
        });
    }
    if lease_ends.is_none_or(|until| until < now) {
        return Err(lost("it expired"));
    }
    Ok(())
}

/// Puts the running attempt's question to a person (its lease was checked), asked `now` and
/// waited for until `expires_at`: it waits in `host inbox` until answered. One question at a
/// time: a new one replaces the last.
pub fn ask(task: &mut Task, question: Question, expires_at: Option<Timestamp>, now: Timestamp) {
    task.input = Some(Input {
        attempt: task.attempts,
        asked_at: now,
        expires_at,
        question,
        answer: None,
    });
}

/// Records a person's answer to the question task waits for; the worker takes it at its next
/// renewal. Refused when the task waits for no answer, when `question` (the time the answered
/// question was asked, when the answerer knows it) is not the one waiting, or when the answer
/// does not fit.
pub fn answer(
    task: &mut Task,
    answer: InputAnswer,
    question: Option<Timestamp>,
    now: Timestamp,
) -> Result<(), StoreError> {
    let input = waiting_input(task, now)?;
    if question.is_some_and(|asked| asked != input.asked_at) {
        return Err(StoreError::WrongState {
            id: task.id.clone(),
            status: task.status,
            hint: "the question answered is not the one it asks now (see `host inbox`)",
        });
    }
    input
        .check_answer(&answer.option, &answer.fields)
        .map_err(|why| StoreError::InvalidTask(format!("task {}: {why}", task.id)))?;
    if let Some(input) = task.input.as_mut() {
        input.answer = Some(answer);
    }
    Ok(())
}

/// The question the task waits to have answered at `now`; refused, saying why, when it waits
/// for none (a question whose worker stopped renewing its lease goes with the attempt).
pub fn waiting_input(task: &Task, now: Timestamp) -> Result<&Input, StoreError> {
    let refused = |hint| StoreError::WrongState {
        id: task.id.clone(),
        status: task.status,
        hint,
    };
    let Some(input) = task
        .input
        .as_ref()
        .filter(|i| task.status == TaskStatus::Running && i.attempt == task.attempts)
    else {
        return Err(refused(
            "it waits for no answer (`host inbox` lists what does)",
        ));
    };
    if input.answer.is_some() {
        return Err(refused(
            "its question was answered already; its worker takes the answer within a second",
        ));
    }
    if task.lease_expires_at.is_some_and(|end| end < now) {
        return Err(refused(
            "its worker stopped renewing its lease: the question goes with the attempt",
        ));
    }
    Ok(input)
}

/// Takes the answer to the running attempt's question (its lease was checked), ending the
/// question; without an answer, the question ends only when its handler `gives_up` on it (it
/// timed out, the task stops), else it goes on waiting.
pub fn end_input(task: &mut Task, gives_up: bool) -> Option<InputAnswer> {
    let answered = task.input.as_ref().is_some_and(|i| i.answer.is_some());
    if answered || gives_up {
        task.input.take().and_then(|input| input.answer)
    } else {
        None
    }
}

/// Extends a running task's lease to a full lease from `now`.
pub fn renew(task: &mut Task, now: Timestamp, policy: &Policy) {
    task.lease_expires_at = Some(later(now, policy.lease));
}

/// The task's running attempt in its history.
fn running_attempt(task: &mut Task) -> Option<&mut Attempt> {
    let attempt = task.attempts;
    task.history
        .iter_mut()
        .rev()
        .find(|a| a.attempt == attempt && a.status == AttemptStatus::Running)
}

/// Ends the task's running attempt in its history; a question it asked goes with it.
fn end_attempt(task: &mut Task, status: AttemptStatus, error: Option<String>, now: Timestamp) {
    task.input = None;
    let finished_by = task.worker.clone();
    if let Some(entry) = running_attempt(task) {
        entry.status = status;
        entry.finished_at = Some(now);
        entry.error = error;
        entry.finished_by = finished_by;
    }
}

/// Moves a task to a finished state at `now`.
fn finish_as(task: &mut Task, status: TaskStatus, now: Timestamp) {
    task.status = status;
    task.success = Some(status == TaskStatus::Completed);
    task.finished_at = Some(now);
    task.duration_ms = task.elapsed_ms(now);
    task.lease_expires_at = None;
    task.retry_at = None;
}

/// What ending its attempt with `outcome` makes of a running task: finished, or pending again
/// after a backoff when the failure is retryable and attempts are left. A task whose cancel was
/// requested ends cancelled unless it succeeded.
pub fn finish(task: &mut Task, outcome: Outcome, now: Timestamp, policy: &Policy) {
    // A handler that ran in a session of its own names it, for a later attempt to resume.
    let session = match &outcome {
        Outcome::Success(result) | Outcome::ForReview(result) => Some(result),
        Outcome::Failure { result, .. } => result.as_ref(),
        Outcome::Snooze { .. } => None,
    }
    .and_then(|result| result.get("sessionId")?.as_str().map(String::from));
    if let Some(entry) = running_attempt(task) {
        entry.session = session;
    }
    match outcome {
        Outcome::Success(result) => {
            end_attempt(task, AttemptStatus::Completed, None, now);
            finish_as(task, TaskStatus::Completed, now);
            task.result = Some(result);
            task.error = None;
        }
        Outcome::ForReview(result) => {
            end_attempt(task, AttemptStatus::Completed, None, now);
            finish_as(task, TaskStatus::Review, now);
            // It has not finished: the verdict finishes it, or runs it again.
            task.finished_at = None;
            task.success = Some(true);
            task.result = Some(result);
            task.error = None;
        }
        Outcome::Failure {
            error,
            result,
            retryable,
        } => {
            task.result = result;
            task.error = Some(format!("attempt {}: {error}", task.attempts));
            if task.cancel_requested {
                end_attempt(task, AttemptStatus::Cancelled, Some(error), now);
                finish_as(task, TaskStatus::Cancelled, now);
            } else if retryable && task.attempts < task.max_attempts {
                end_attempt(task, AttemptStatus::Failed, Some(error), now);
                task.status = TaskStatus::Pending;
                task.duration_ms = task.elapsed_ms(now);
                task.lease_expires_at = None;
                task.retry_at = Some(later(now, backoff_for(policy.backoff, task.attempts)));
            } else {
                end_attempt(task, AttemptStatus::Failed, Some(error), now);
                finish_as(task, TaskStatus::Failed, now);
            }
        }
        Outcome::Snooze { until, reason } => {
            if task.cancel_requested {
                release(task, now);
                return;
            }
            end_attempt(task, AttemptStatus::Snoozed, Some(reason), now);
            give_back(task);
            snooze_until(task, until, now);
        }
    }
}

/// Puts a task that waits (pending, or blocked on its prerequisites) off until `until`, its
/// attempts not spent: `host snooze`. A time already past only marks nothing.
pub fn snooze(task: &mut Task, until: Timestamp, now: Timestamp) -> Result<(), StoreError> {
    if !matches!(task.status, TaskStatus::Pending | TaskStatus::Blocked) {
        return Err(StoreError::WrongState {
            id: task.id.clone(),
            status: task.status,
            hint: "only a waiting task can be snoozed; a running one is snoozed by its handler \
                   or, with its lease token, by `host snooze ID --token`",
        });
    }
    snooze_until(task, until, now);
    Ok(())
}

/// Sets the time a pending task waits for, and marks it a snooze when it lies ahead.
fn snooze_until(task: &mut Task, until: Timestamp, now: Timestamp) {
    let until = until.max(now);
    task.retry_at = Some(until);
    task.snoozed_until = (until > now).then_some(until);
}

/// A running task pending again with its attempt not counted, as a release or a snooze
/// leaves it.
fn give_back(task: &mut Task) {
    task.status = TaskStatus::Pending;
    task.attempts = task.attempts.saturating_sub(1);
    task.worker = None;
    task.started_at = None;
    task.lease_expires_at = None;
}

/// Returns a running task to pending without counting the attempt: its worker is shutting down.
/// A task whose cancel was requested ends cancelled instead: nobody should start it again.
pub fn release(task: &mut Task, now: Timestamp) {
    if task.cancel_requested {
        end_attempt(task, AttemptStatus::Cancelled, None, now);
        finish_as(task, TaskStatus::Cancelled, now);
        task.success = None;
        task.error = Some(format!(
            "attempt {}: cancelled (its worker stopped before the handler did)",
            task.attempts
        ));
        return;
    }
    end_attempt(task, AttemptStatus::Released, None, now);
    give_back(task);
}

/// A running task whose lease ran out (its worker was killed, or its machine slept or lost the
/// network): pending again after a backoff, the attempt counted, or finished when no attempt is
/// left (cancelled, if a cancel was requested). `found_by` names who noticed.
pub fn expire(task: &mut Task, now: Timestamp, policy: &Policy, found_by: &str) {
    let holder = task.worker.clone().unwrap_or_else(|| "?".into());
    let reason = format!("lease expired (worker {holder} stopped renewing it)");
    let error = format!("attempt {}: {reason}", task.attempts);
    end_attempt(task, AttemptStatus::Expired, Some(reason), now);
    if let Some(entry) = task.history.last_mut() {
        entry.finished_by = Some(found_by.to_string());
    }
    task.lease_expires_at = None;
    if task.attempts < task.max_attempts && !task.cancel_requested {
        task.status = TaskStatus::Pending;
        task.error = Some(error);
        task.retry_at = Some(later(now, backoff_for(policy.backoff, task.attempts)));
    } else {
        let status = if task.cancel_requested {
            TaskStatus::Cancelled
        } else {
            TaskStatus::Failed
        };
        finish_as(task, status, now);
        task.error = Some(format!(
            "{error}; no attempt left ({} of {})",
            task.attempts, task.max_attempts
        ));
    }
}

/// Refuses a finished task, which cannot be cancelled: the rule [`cancel`] applies, for callers
/// that check many tasks before changing any.
pub fn check_cancellable(task: &Task) -> Result<(), StoreError> {
    if task.status.is_finished() {
        return Err(StoreError::WrongState {
            id: task.id.clone(),
            status: task.status,
            hint: "only a pending, blocked, running or review task can be cancelled",
        });
    }
    Ok(())
}

/// Cancels a task: a pending or blocked one is cancelled at once; a running one is asked to
/// stop (its worker tells the handler). Finished tasks cannot be cancelled.
pub fn cancel(task: &mut Task, now: Timestamp) -> Result<(), StoreError> {
    check_cancellable(task)?;
    let error = match task.status {
        TaskStatus::Running => {
            task.cancel_requested = true;
            return Ok(());
        }
        TaskStatus::Review => "cancelled while its change waited for review",
        _ => "cancelled before it started",
    };
    finish_as(task, TaskStatus::Cancelled, now);
    task.success = None;
    task.error = Some(error.into());
    Ok(())
}

/// Refuses a task that does not wait for review: the rule [`approve`] and [`reject`] apply, for
/// callers that check many tasks before changing any.
pub fn check_in_review(task: &Task) -> Result<(), StoreError> {
    if task.status != TaskStatus::Review {
        return Err(StoreError::WrongState {
            id: task.id.clone(),
            status: task.status,
            hint: "only a task waiting for review can be approved or rejected",
        });
    }
    Ok(())
}

/// Approves the change of a task waiting for review: it completes, and the tasks after it may
/// run. For [`crate::QueueStore::update`].
pub fn approve(task: &mut Task, now: Timestamp) -> Result<(), StoreError> {
    check_in_review(task)?;
    task.reviews.push(Review {
        attempt: task.attempts,
        verdict: Verdict::Approved,
        reason: None,
        at: now,
    });
    finish_as(task, TaskStatus::Completed, now);
    Ok(())
}

/// Rejects the change of a task waiting for review, saying why: the task is pending again with
/// one more attempt, and the reason is kept in its `reviews` for the next attempt's prompt.
/// For [`crate::QueueStore::update`].
pub fn reject(task: &mut Task, reason: &str, now: Timestamp) -> Result<(), StoreError> {
    check_in_review(task)?;
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(StoreError::InvalidTask(format!(
            "task {}: a rejection needs a reason (the next attempt is told it)",
            task.id
        )));
    }
    task.reviews.push(Review {
        attempt: task.attempts,
        verdict: Verdict::Rejected,
        reason: Some(reason.to_string()),
        at: now,
    });
    task.status = TaskStatus::Pending;
    requeue(task);
    Ok(())
}

/// What a task put back in the queue by a person (retried, rejected) starts from: one more
/// attempt, and nothing of the last attempt's ending (its cancel request, result, times).
fn requeue(task: &mut Task) {
    task.cancelled_by = None;
    task.max_attempts = task.max_attempts.max(task.attempts + 1);
    task.cancel_requested = false;
    task.retry_at = None;
    task.finished_at = None;
    task.duration_ms = None;
    task.success = None;
    task.result = None;
}

/// Refuses a task whose branch cannot be merged: one not completed (a task waiting for review
/// is approved first), or whose branch was merged or discarded already.
pub fn check_mergeable(task: &Task) -> Result<(), StoreError> {
    let hint = match task.status {
        TaskStatus::Completed => return check_branch_left(task),
        TaskStatus::Review => "approve it first (host approve)",
        _ => "only a completed task's branch is merged",
    };
    Err(StoreError::WrongState {
        id: task.id.clone(),
        status: task.status,
        hint,
    })
}

/// Refuses a task whose branch cannot be discarded: one not finished (a running task is
/// still making it; one waiting for review is rejected or cancelled first), or whose branch
/// was merged or discarded already.
pub fn check_discardable(task: &Task) -> Result<(), StoreError> {
    let hint = match task.status {
        status if status.is_finished() => return check_branch_left(task),
        TaskStatus::Review => "reject or cancel it first",
        _ => "its attempt has not ended (cancel it first)",
    };
    Err(StoreError::WrongState {
        id: task.id.clone(),
        status: task.status,
        hint,
    })
}

/// Refuses a task whose branch was merged or discarded (`host show` says which and when).
fn check_branch_left(task: &Task) -> Result<(), StoreError> {
    match &task.branch_state {
        Some(b) if b.state != BranchOutcome::Conflict => Err(StoreError::WrongState {
            id: task.id.clone(),
            status: task.status,
            hint: "its branch was merged or discarded already (`host show` says which)",
        }),
        _ => Ok(()),
    }
}

/// Records what became of a finished task's branch (`host merge`, `host discard`): `into` is
/// the branch merged into, `files` the files of a conflict. For [`crate::QueueStore::update`].
pub fn note_branch(
    task: &mut Task,
    state: BranchOutcome,
    into: Option<&str>,
    files: &[String],
    now: Timestamp,
) -> Result<(), StoreError> {
    match state {
        BranchOutcome::Discarded => check_discardable(task)?,
        BranchOutcome::Merged | BranchOutcome::Conflict => check_mergeable(task)?,
    }
    task.branch_state = Some(BranchState {
        state,
        into: into.map(str::to_string),
        files: files.to_vec(),
        at: now,
    });
    Ok(())
}

/// Applies `edit` to task `id`, which must not have started yet, and writes it back.
pub fn edit(tx: &mut impl TaskTx, id: &str, edit: &crate::TaskEdit) -> Result<Task, StoreError> {
    let mut task = tx
        .task(id)?
        .ok_or_else(|| StoreError::NotFound(id.into()))?;
    if !matches!(task.status, TaskStatus::Pending | TaskStatus::Blocked) {
        return Err(StoreError::WrongState {
            id: task.id.clone(),
            status: task.status,
            hint: "only a pending or blocked task can be changed",
        });
    }
    if let Some(priority) = edit.priority {
        task.priority = priority;
    }
    if let Some(description) = &edit.description {
        task.description = Some(description.clone());
    }
    if let Some(payload) = &edit.payload {
        task.payload = payload.clone();
    }
    if let Some(secs) = edit.timeout_secs {
        task.timeout_secs = Some(secs);
    }
    check_size(task.description.as_deref(), &task.payload)?;
    tx.put(&task)?;
    Ok(task)
}

/// Refuses a task that is neither failed nor cancelled, which cannot be retried: the state rule
/// [`retry`] applies, for callers that check many tasks before changing any.
pub fn check_retryable(task: &Task) -> Result<(), StoreError> {
    let hint = match task.status {
        TaskStatus::Failed | TaskStatus::Cancelled => return Ok(()),
        TaskStatus::Review => "its change waits for review: reject it to run it again",
        _ => "only a failed or cancelled task can be retried",
    };
    Err(StoreError::WrongState {
        id: task.id.clone(),
        status: task.status,
        hint,
    })
}

/// Puts a failed or cancelled task back: pending, or blocked while a task it comes after is
/// unfinished, with at least one more attempt. Refused while a task it comes after has failed
/// or was cancelled (retry that one instead).
pub fn retry(tx: &mut impl TaskTx, task: &mut Task) -> Result<(), StoreError> {
    check_retryable(task)?;
    task.status = match prerequisites(tx, task)? {
        Prerequisites::Done => TaskStatus::Pending,
        Prerequisites::Waiting => TaskStatus::Blocked,
        Prerequisites::Broken(dep, status) => {
            return Err(StoreError::InvalidTask(format!(
                "task {} comes after task {dep}, which is {status}: retry task {dep} instead",
                task.id
            )));
        }
    };
    requeue(task);
    Ok(())
}

/// Where the tasks a task comes after stand.
pub enum Prerequisites {
    /// Those of its `after` all completed, those of its `afterAny` all finished (or purged):
    /// the task may run.
    Done,
    /// Some still to finish.
    Waiting,
    /// This one of its `after` failed or was cancelled: the task cannot run until it is
    /// retried.
    Broken(String, TaskStatus),
}

/// Where the tasks `task` comes after stand. A task purged from the history has completed or
/// failed long ago; it no longer holds anything up. One waiting for review has not finished.
pub fn prerequisites(tx: &mut impl TaskTx, task: &Task) -> Result<Prerequisites, StoreError> {
    let mut waiting = false;
    for dep in &task.after {
        match tx.task(dep)?.map(|t| t.status) {
            Some(status) if is_broken(status) => {
                return Ok(Prerequisites::Broken(dep.clone(), status));
            }
            Some(TaskStatus::Completed) | None => {}
            Some(_) => waiting = true,
        }
    }
    for dep in &task.after_any {
        if tx.task(dep)?.is_some_and(|t| !t.status.is_finished()) {
            waiting = true;
        }
    }
    Ok(if waiting {
        Prerequisites::Waiting
    } else {
        Prerequisites::Done
    })
}

/// Brings the tasks after `task` in line with its new state: unblocked when it completed;
/// when it failed or was cancelled for good, those of whose `after` it is cancelled (and theirs
/// after them) and those of whose `afterAny` it is unblocked; revived when it waits to run
/// again. Returns whether some task became claimable.
pub fn settle_dependents(
    tx: &mut impl TaskTx,
    task: &Task,
    now: Timestamp,
) -> Result<bool, StoreError> {
    match task.status {
        TaskStatus::Completed => unblock_dependents(tx, &task.id),
        TaskStatus::Failed | TaskStatus::Cancelled => cancel_dependents(tx, task, now),
        TaskStatus::Pending | TaskStatus::Blocked => {
            revive_dependents(tx, &task.id)?;
            Ok(false)
        }
        TaskStatus::Running | TaskStatus::Review => Ok(false),
    }
}

/// `id` completed: its blocked dependents whose other prerequisites are complete too become
/// pending.
fn unblock_dependents(tx: &mut impl TaskTx, id: &str) -> Result<bool, StoreError> {
    let mut unblocked = false;
    for dependent in tx.dependents(id)? {
        let Some(task) = tx.task(&dependent)? else {
            continue;
        };
        unblocked |= unblock(tx, task)?;
    }
    Ok(unblocked)
}

/// Makes `task` pending if it is blocked and all it comes after allows it to run. Returns
/// whether it did.
fn unblock(tx: &mut impl TaskTx, mut task: Task) -> Result<bool, StoreError> {
    if task.status == TaskStatus::Blocked
        && matches!(prerequisites(tx, &task)?, Prerequisites::Done)
    {
        task.status = TaskStatus::Pending;
        tx.put(&task)?;
        return Ok(true);
    }
    Ok(false)
}

/// `prerequisite` failed or was cancelled for good: every task that comes after it (`after`),
/// directly or not, and has not run is cancelled, naming it; a task that comes after one of
/// them whatever its outcome (`afterAny`) may run once the rest of what it waits for allows.
/// Returns whether some task became claimable.
fn cancel_dependents(
    tx: &mut impl TaskTx,
    prerequisite: &Task,
    now: Timestamp,
) -> Result<bool, StoreError> {
    let mut unblocked = false;
    for dependent in tx.dependents(&prerequisite.id)? {
        let Some(mut task) = tx.task(&dependent)? else {
            continue;
        };
        if !task.after.contains(&prerequisite.id) {
            unblocked |= unblock(tx, task)?;
            continue;
        }
        if !matches!(task.status, TaskStatus::Blocked | TaskStatus::Pending) {
            continue;
        }
        cancel_for(&mut task, &prerequisite.id, prerequisite.status, now);
        tx.put(&task)?;
        unblocked |= cancel_dependents(tx, &task, now)?;
    }
    Ok(unblocked)
}

/// `prerequisite` is being retried: the tasks its failure cancelled are blocked on it again,
/// and so on down the chain; a task that comes after it whatever its outcome (`afterAny`) and
/// has not started waits again for the new outcome.
fn revive_dependents(tx: &mut impl TaskTx, prerequisite: &str) -> Result<(), StoreError> {
    for dependent in tx.dependents(prerequisite)? {
        let Some(mut task) = tx.task(&dependent)? else {
            continue;
        };
        if task.status == TaskStatus::Pending
            && task.attempts == 0
            && task.after_any.iter().any(|id| id == prerequisite)
        {
            task.status = TaskStatus::Blocked;
            tx.put(&task)?;
            continue;
        }
        if task.status != TaskStatus::Cancelled
            || task.cancelled_by.as_deref() != Some(prerequisite)
        {
            continue;
        }
        task.status = TaskStatus::Blocked;
        task.cancelled_by = None;
        task.error = None;
        task.finished_at = None;
        task.success = None;
        tx.put(&task)?;
        revive_dependents(tx, &task.id)?;
    }
    Ok(())
}

/// Cancels `task` because `dep`, which it comes after, ended `status`.
fn cancel_for(task: &mut Task, dep: &str, status: TaskStatus, now: Timestamp) {
    let what = if status == TaskStatus::Failed {
        "failed"
    } else {
        "was cancelled"
    };
    task.status = TaskStatus::Cancelled;
    task.cancelled_by = Some(dep.to_string());
    task.error = Some(format!(
        "cancelled: it comes after task {dep}, which {what}"
    ));
    task.finished_at = Some(now);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        for attempt in 1..=30 {
            let want = Duration::from_secs(1)
                .saturating_mul(1 << (attempt - 1).min(20))
                .min(MAX_BACKOFF);
            let got = backoff_for(Duration::from_secs(1), attempt);
            assert!(got >= want / 2 && got <= want, "attempt {attempt}: {got:?}");
        }
    }

    /// A running task, claimed at `now`, asking `question`.
    fn asking(now: Timestamp) -> Task {
        let mut task = NewTask {
            task_type: "work".into(),
            ..NewTask::default()
        }
        .into_task("7".into(), Vec::new(), now);
        claim(&mut task, "w", now, &Policy::default());
        let option = |id: &str, kind: &str| crate::InputOption {
            id: id.into(),
            name: id.into(),
            kind: Some(kind.into()),
        };
        let question = crate::Question {
            title: "Run cargo test".into(),
            tool: Some("execute".into()),
            detail: None,
            options: vec![
                option("allow_once", "allow_once"),
                option("reject_once", "reject_once"),
            ],
            fields: Vec::new(),
        };
        ask(&mut task, question, None, now);
        task
    }

    fn reply(option: &str, now: Timestamp) -> InputAnswer {
        InputAnswer {
            option: option.into(),
            fields: serde_json::Map::new(),
            by: Some("me".into()),
            at: now,
        }
    }

    #[test]
    fn an_answer_is_for_the_question_asked_now_while_its_worker_holds_the_task() {
        let now = Timestamp::now();
        let mut task = asking(now);
        let asked = task.input.as_ref().unwrap().asked_at;
        // An option not offered, or an answer meant for an earlier question, is refused.
        let err = answer(&mut task, reply("yes", now), None, now).unwrap_err();
        assert!(
            err.to_string().contains("not one of the options offered"),
            "{err}"
        );
        let earlier = asked.checked_sub(SignedDuration::from_secs(1)).unwrap();
        let err = answer(&mut task, reply("allow_once", now), Some(earlier), now).unwrap_err();
        assert!(matches!(err, StoreError::WrongState { .. }), "{err}");
        // Once its lease ran out, nobody waits for the answer.
        let later = task.lease_expires_at.unwrap() + SignedDuration::from_secs(1);
        let err = answer(&mut task, reply("allow_once", later), None, later).unwrap_err();
        assert!(
            err.to_string().contains("stopped renewing its lease"),
            "{err}"
        );

        answer(&mut task, reply("allow_once", now), Some(asked), now).unwrap();
        let err = answer(&mut task, reply("reject_once", now), None, now).unwrap_err();
        assert!(err.to_string().contains("answered already"), "{err}");
        // The worker takes the answer, which ends the question.
        assert_eq!(end_input(&mut task, false).unwrap().option, "allow_once");
        assert!(task.input.is_none());
    }

    #[test]
    fn an_unanswered_question_ends_only_when_its_handler_gives_up_or_the_attempt_ends() {
        let now = Timestamp::now();
        let mut task = asking(now);
        assert!(end_input(&mut task, false).is_none());
        assert!(task.waiting_input().is_some(), "still asked");
        assert!(end_input(&mut task, true).is_none());
        assert!(task.input.is_none(), "given up on");

        let mut task = asking(now);
        finish(
            &mut task,
            Outcome::Success(serde_json::json!({})),
            now,
            &Policy::default(),
        );
        assert!(task.input.is_none(), "gone with the attempt");
    }
}
