//! The queue engine: every [`QueueStore`] operation, written once over a [`Driver`]. It holds
//! the sequencing (which rows to read, what the rules make of them, what to write back, when
//! to announce work) and the policy (lease, backoff, limits, aging); the rules themselves are
//! [`lifecycle`]'s, and the SQL is the driver's.
//!
//! Claims take up to N tasks in one transaction, and outcomes are recorded N at a time
//! ([`QueueStore::finish_many`]), each with one read and one write of the rows involved.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use jiff::Timestamp;

use crate::driver::{ClaimView, Commit, Driver, DriverTx, Finished, StoredTask, TaskRow};
use crate::lifecycle::{self, PauseSet, Policy, TaskTx};
use crate::records::{
    ExpiryScan, Unreadable, from_millis, new_lease, parse_id, parse_task, pause_key, pause_scope,
    purgeable,
};
use crate::{
    Claim, Durability, InputAnswer, Lease, NewTask, Outcome, PauseScope, Question, QueueStore,
    Recorded, Renewal, StoreError, Summary, Task, TaskChange, TaskEdit, TaskQuery, TaskStatus,
    UsageLimit, WorkerRecord, validate_name,
};

/// The ids of the tasks whose leases `outcomes` hold (malformed ones left out: they are
/// reported as not found).
fn lease_ids(outcomes: &[(Lease, Outcome)]) -> Vec<i64> {
    outcomes
        .iter()
        .filter_map(|(lease, _)| parse_id(&lease.task_id).ok())
        .collect()
}

/// One result per recorded outcome, in order.
type Outcomes = Vec<Result<Task, StoreError>>;

/// The setting that keeps the roles' usage limits: a JSON object by role.
const USAGE_LIMITS: &str = "usageLimits";

/// How many finished tasks one purge transaction removes, so that no writer waits long.
const PURGE_BATCH: usize = 10_000;

/// A queue: the rules of a task's life applied over one database.
pub struct Engine<D: Driver> {
    driver: D,
    policy: Policy,
    unreadable: Unreadable,
    expiry_scan: ExpiryScan,
}

/// The rules' view of a transaction ([`TaskTx`]): tasks read and written whole, work
/// announced when a task becomes pending.
struct Rules<'a, T: DriverTx> {
    tx: &'a mut T,
    name: &'a std::path::Path,
    /// Tasks read in this transaction that no task comes after: settling them needs no query.
    without_dependents: Vec<i64>,
}

impl<T: DriverTx> Rules<'_, T> {
    /// Reads and parses one stored task.
    fn parsed(&self, stored: &StoredTask) -> Result<Task, StoreError> {
        parse_task(self.name, stored.id, &stored.body)
    }

    /// The task with this id and its lease secret.
    fn task_and_token(&mut self, id: &str) -> Result<Option<(Task, Option<String>)>, StoreError> {
        let Ok(id) = parse_id(id) else {
            return Ok(None);
        };
        let Some(stored) = self.tx.tasks(&[id])?.pop() else {
            return Ok(None);
        };
        if !stored.has_dependents {
            self.without_dependents.push(id);
        }
        Ok(Some((self.parsed(&stored)?, stored.token)))
    }

    /// The running task that `lease` holds, its lease checked at `now`.
    fn held(&mut self, lease: &Lease, now: Timestamp) -> Result<Task, StoreError> {
        let (task, token) = self
            .task_and_token(&lease.task_id)?
            .ok_or_else(|| StoreError::NotFound(lease.task_id.clone()))?;
        lifecycle::check_lease(&task, lease, token.as_deref(), now)?;
        Ok(task)
    }

    /// Writes back tasks that exist; a claim gives each its lease's secret.
    fn save(&mut self, tasks: &[(&Task, Option<&str>)]) -> Result<(), StoreError> {
        let rows = tasks
            .iter()
            .map(|(task, token)| TaskRow::of(task, *token))
            .collect::<Result<Vec<_>, _>>()?;
        if rows.iter().any(TaskRow::is_pending) {
            self.tx.announce();
        }
        self.tx.update(&rows)
    }
}

impl<T: DriverTx> TaskTx for Rules<'_, T> {
    fn task(&mut self, id: &str) -> Result<Option<Task>, StoreError> {
        Ok(self.task_and_token(id)?.map(|(task, _)| task))
    }

    fn put(&mut self, task: &Task) -> Result<(), StoreError> {
        self.save(&[(task, None)])
    }

    fn dependents(&mut self, id: &str) -> Result<Vec<String>, StoreError> {
        let id = parse_id(id)?;
        if self.without_dependents.contains(&id) {
            return Ok(Vec::new());
        }
        let pairs = self.tx.dependents(&[id])?;
        Ok(pairs.iter().map(|(_, dep)| dep.to_string()).collect())
    }
}

impl<D: Driver> Engine<D> {
    /// The queue on `driver`, with the default policy.
    pub(crate) fn new(driver: D) -> Engine<D> {
        Engine {
            driver,
            policy: Policy::default(),
            unreadable: Unreadable::default(),
            expiry_scan: ExpiryScan::default(),
        }
    }

    /// The database under this queue, for what only it knows (its folder, its URL) and for
    /// the driver conformance suite.
    pub fn driver(&self) -> &D {
        &self.driver
    }

    /// Applies the queue-wide rules: lease length, backoff, per-type limits, aging.
    pub fn with_policy(mut self, policy: Policy) -> Engine<D> {
        self.policy = policy;
        self
    }

    /// Sets how long a lease lasts unless renewed.
    pub fn with_lease(mut self, lease: Duration) -> Engine<D> {
        self.policy.lease = lease;
        self
    }

    /// The rules this queue applies.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The queue's durability setting.
    pub fn durability(&self) -> Durability {
        self.driver.durability()
    }

    /// Changes the queue's durability setting, for every process that opens it from now on.
    pub fn set_durability(mut self, durability: Durability) -> Result<Engine<D>, StoreError> {
        self.set_setting("durability", Some(durability.as_str()))?;
        self.driver.use_durability(durability);
        Ok(self)
    }

    /// Runs `work` with the rules' view of a write transaction.
    fn write<T: Send>(
        &self,
        commit: Commit,
        mut work: impl FnMut(&mut Rules<'_, D::Tx<'_>>) -> Result<T, StoreError> + Send,
    ) -> Result<T, StoreError> {
        let name = self.driver.name();
        self.driver.write(commit, &mut |tx| {
            work(&mut Rules {
                tx,
                name,
                without_dependents: Vec::new(),
            })
        })
    }

    /// Runs `read` on one snapshot.
    fn read<T: Send>(
        &self,
        mut read: impl FnMut(&mut D::Tx<'_>) -> Result<T, StoreError> + Send,
    ) -> Result<T, StoreError> {
        self.driver.read(&mut read)
    }

    /// A queue-wide setting.
    pub(crate) fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.read(|tx| tx.setting(key))
    }

    /// Sets (or with `None`, removes) a queue-wide setting.
    pub(crate) fn set_setting(&self, key: &str, value: Option<&str>) -> Result<(), StoreError> {
        self.write(Commit::AsConfigured, |rules| {
            rules.tx.set_setting(key, value)
        })
    }

    /// The setting `key`, set to `value` unless it was set: the value kept.
    pub(crate) fn keep_setting(&self, key: &str, value: &str) -> Result<String, StoreError> {
        self.write(Commit::AsConfigured, |rules| {
            rules.tx.keep_setting(key, value)
        })
    }

    /// The usage limits kept under [`USAGE_LIMITS`], by role.
    fn parse_usage_limits(
        &self,
        kept: Option<&str>,
    ) -> Result<BTreeMap<String, UsageLimit>, StoreError> {
        kept.map_or(Ok(BTreeMap::new()), |text| {
            serde_json::from_str(text).map_err(|err| StoreError::Corrupt {
                path: PathBuf::from(format!(
                    "{}, setting {USAGE_LIMITS}",
                    self.driver.name().display()
                )),
                reason: err.to_string(),
            })
        })
    }

    /// Integrity checks for `host doctor`: the database's own, the kept counts against the
    /// tasks, and every record readable. Each problem in one line.
    pub fn check(&self) -> Result<Vec<String>, StoreError> {
        let mut problems = self.driver.check_database()?;
        let name = self.driver.name();
        let (counts, tasks) =
            self.read(|tx| Ok((tx.wrong_counts()?, tx.select(&TaskQuery::default())?)))?;
        problems.extend(counts.into_iter().map(|(status, task_type, kept, real)| {
            format!("the count of {status} {task_type} tasks says {kept}, there are {real}")
        }));
        problems.extend(
            tasks
                .iter()
                .filter_map(|(id, body)| parse_task(name, *id, body).err())
                .map(|err| err.to_string()),
        );
        Ok(problems)
    }

    /// Returns the leases that ran out by `now`, as `found_by` noticed; inside a write.
    fn expire_due<T: DriverTx>(
        &self,
        rules: &mut Rules<'_, T>,
        now: Timestamp,
        found_by: &str,
    ) -> Result<usize, StoreError> {
        let mut expired = 0;
        for (id, body) in rules.tx.expired(now)? {
            let mut task = match parse_task(rules.name, id, &body) {
                Ok(task) => task,
                Err(err) => {
                    self.unreadable.note(id, &err);
                    continue;
                }
            };
            lifecycle::expire(&mut task, now, &self.policy, found_by);
            rules.put(&task)?;
            self.settle(rules, &task, now, true)?;
            expired += 1;
        }
        Ok(expired)
    }

    /// Lets the tasks after `task` follow its new state, and announces work a freed slot of a
    /// limited type or an unblocked task made claimable. A task whose attempt ended and that
    /// waits to run again (`ended_attempt`) never cancelled the tasks after it: they are left
    /// as they are without a look.
    fn settle<T: DriverTx>(
        &self,
        rules: &mut Rules<'_, T>,
        task: &Task,
        now: Timestamp,
        ended_attempt: bool,
    ) -> Result<(), StoreError> {
        let waits_again = ended_attempt && task.status == TaskStatus::Pending;
        let unblocked = !waits_again && lifecycle::settle_dependents(rules, task, now)?;
        let freed_slot =
            task.status != TaskStatus::Running && self.policy.limits.contains_key(&task.task_type);
        if unblocked || freed_slot {
            rules.tx.announce();
        }
        Ok(())
    }

    /// Takes the turn of claimers of each limited type among `types` (on a database shared by
    /// many machines, a lock held until the commit), before the transaction writes anything:
    /// taken after a write, a claimer holding one type's turn could wait for a row that this
    /// transaction wrote (the kept counts), while this one waits for its turn.
    fn take_limit_turns<T: DriverTx>(
        &self,
        rules: &mut Rules<'_, T>,
        types: &[String],
    ) -> Result<(), StoreError> {
        let mut limited: Vec<&String> = types
            .iter()
            .filter(|t| self.policy.limits.contains_key(*t))
            .collect();
        limited.sort();
        for task_type in limited {
            rules.tx.running(task_type)?;
        }
        Ok(())
    }

    /// Up to `count` claims for `worker` of `types`, inside a write, written.
    fn claim_in<T: DriverTx>(
        &self,
        rules: &mut Rules<'_, T>,
        worker: &str,
        types: &[String],
        count: usize,
        now: Timestamp,
    ) -> Result<Vec<Claim>, StoreError> {
        self.expire_if_due(rules, now, worker)?;
        let room = self.room(rules, types, count, &[])?;
        let eligible: Vec<String> = types
            .iter()
            .filter(|t| room.contains_key(t.as_str()))
            .cloned()
            .collect();
        if eligible.is_empty() {
            return Ok(Vec::new());
        }
        let skip = self.unreadable.ids();
        let view = rules.tx.claim_view(
            &[],
            &eligible,
            now,
            count,
            &skip,
            self.policy.aging.is_some(),
        )?;
        let claims = self.choose(rules, worker, eligible, room, count, now, skip, view)?;
        self.write_ended(rules, &[], &claims, now)?;
        Ok(claims)
    }

    /// Scans for leases that ran out when the scan is due (it runs at most once per
    /// fraction of a lease per process).
    fn expire_if_due<T: DriverTx>(
        &self,
        rules: &mut Rules<'_, T>,
        now: Timestamp,
        found_by: &str,
    ) -> Result<(), StoreError> {
        if self.expiry_scan.due(self.policy.lease) {
            self.expire_due(rules, now, found_by)?;
        }
        Ok(())
    }

    /// How many more tasks of each of `types` may be claimed, at most `count` each (types with
    /// no room left out): a limited type's limit less its running tasks, of which `ended` (this
    /// transaction's finished attempts, not yet written) no longer count.
    fn room<'t, T: DriverTx>(
        &self,
        rules: &mut Rules<'_, T>,
        types: &'t [String],
        count: usize,
        ended: &[&Task],
    ) -> Result<HashMap<&'t str, usize>, StoreError> {
        let mut room = HashMap::new();
        for task_type in types {
            let free = match self.policy.limits.get(task_type) {
                Some(limit) => {
                    let running = rules.tx.running(task_type)?;
                    let ending = ended.iter().filter(|t| t.task_type == *task_type).count();
                    limit.saturating_sub(running.saturating_sub(ending))
                }
                None => count,
            };
            if free > 0 {
                room.insert(task_type.as_str(), free.min(count));
            }
        }
        Ok(room)
    }

    /// Chooses up to `count` tasks for `worker` among `view`'s candidates, in claim order and
    /// within `room`, and leases them (nothing is written). Unreadable and paused candidates are
    /// passed over; when that left slots empty, the driver is asked again without them.
    #[allow(clippy::too_many_arguments)]
    fn choose<T: DriverTx>(
        &self,
        rules: &mut Rules<'_, T>,
        worker: &str,
        mut eligible: Vec<String>,
        mut room: HashMap<&str, usize>,
        count: usize,
        now: Timestamp,
        mut skip: Vec<i64>,
        view: ClaimView,
    ) -> Result<Vec<Claim>, StoreError> {
        let paused = PauseSet::new(&view.pauses);
        let mut candidates = view.candidates;
        let mut chosen = loop {
            let mut readable = Vec::with_capacity(candidates.len());
            let mut passed_over = false;
            for candidate in candidates {
                let task = match parse_task(rules.name, candidate.id, &candidate.body) {
                    Ok(task) => task,
                    Err(err) => {
                        self.unreadable.note(candidate.id, &err);
                        skip.push(candidate.id);
                        passed_over = true;
                        continue;
                    }
                };
                if let Some(holder) = paused.holder(&task.task_type, &task.id) {
                    match holder {
                        PauseScope::Task(_) => skip.push(candidate.id),
                        PauseScope::Type(_) => eligible.retain(|t| *t != task.task_type),
                        PauseScope::Queue => eligible.clear(),
                    }
                    passed_over = true;
                    continue;
                }
                let rank = lifecycle::claim_rank(
                    candidate.priority,
                    from_millis(candidate.created_at),
                    candidate.id,
                    now,
                    &self.policy,
                );
                readable.push((rank, task));
            }
            if !passed_over || readable.len() >= count || eligible.is_empty() {
                break readable;
            }
            candidates =
                rules
                    .tx
                    .candidates(&eligible, now, count, &skip, self.policy.aging.is_some())?;
        };
        chosen.sort_by_key(|(rank, _)| *rank);
        let mut claims = Vec::new();
        for (_, mut task) in chosen {
            if claims.len() == count {
                break;
            }
            let Some(free) = room.get_mut(task.task_type.as_str()).filter(|n| **n > 0) else {
                continue;
            };
            *free -= 1;
            lifecycle::claim(&mut task, worker, now, &self.policy);
            let lease = new_lease(&task, worker)?;
            claims.push(Claim { task, lease });
        }
        Ok(claims)
    }

    /// Checks each outcome against its leased task (`stored`, read in this transaction) and
    /// applies it; nothing is written. One result per outcome, in order; a refused one changes
    /// nothing.
    fn apply_outcomes<T: DriverTx>(
        &self,
        rules: &mut Rules<'_, T>,
        outcomes: &[(Lease, Outcome)],
        stored: Vec<StoredTask>,
        now: Timestamp,
    ) -> Vec<Result<Task, StoreError>> {
        let stored: HashMap<i64, StoredTask> = stored.into_iter().map(|s| (s.id, s)).collect();
        outcomes
            .iter()
            .map(|(lease, outcome)| {
                let s = parse_id(&lease.task_id)
                    .ok()
                    .and_then(|id| stored.get(&id))
                    .ok_or_else(|| StoreError::NotFound(lease.task_id.clone()))?;
                if !s.has_dependents {
                    rules.without_dependents.push(s.id);
                }
                let mut task = rules.parsed(s)?;
                lifecycle::check_lease(&task, lease, s.token.as_deref(), now)?;
                lifecycle::finish(&mut task, outcome.clone(), now, &self.policy);
                Ok(task)
            })
            .collect()
    }

    /// Writes the `ended` tasks and the `claims` (with their leases' secrets) in one statement,
    /// then settles the tasks after the ended ones.
    fn write_ended<T: DriverTx>(
        &self,
        rules: &mut Rules<'_, T>,
        ended: &[&Task],
        claims: &[Claim],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let rows: Vec<(&Task, Option<&str>)> = ended
            .iter()
            .map(|task| (*task, None))
            .chain(
                claims
                    .iter()
                    .map(|c| (&c.task, Some(c.lease.token.as_str()))),
            )
            .collect();
        if rows.is_empty() {
            return Ok(());
        }
        rules.save(&rows)?;
        for task in ended {
            self.settle(rules, task, now, true)?;
        }
        Ok(())
    }

    /// Records outcomes, inside a write: the leased tasks read in one statement, each checked
    /// against its lease, the ended ones written back in one statement, then the tasks after
    /// them settled. One result per outcome, in order; a refused one changes nothing.
    fn finish_in<T: DriverTx>(
        &self,
        rules: &mut Rules<'_, T>,
        outcomes: &[(Lease, Outcome)],
        now: Timestamp,
    ) -> Result<Vec<Result<Task, StoreError>>, StoreError> {
        let stored = rules.tx.tasks(&lease_ids(outcomes))?;
        let results = self.apply_outcomes(rules, outcomes, stored, now);
        let ended: Vec<&Task> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        self.write_ended(rules, &ended, &[], now)?;
        Ok(results)
    }

    /// Records outcomes and claims up to `count` tasks in one write, reading the leased tasks,
    /// the candidates and the pauses together and writing the ended and the claimed tasks
    /// together. When a task comes after one that ended, the ended ones are written and
    /// settled first and the claim reads again, so that a task they unblocked may be claimed.
    /// An error of the claim's sets `claim_failed`.
    #[allow(clippy::too_many_arguments)]
    fn finish_and_claim_in<T: DriverTx>(
        &self,
        rules: &mut Rules<'_, T>,
        outcomes: &[(Lease, Outcome)],
        worker: &str,
        types: &[String],
        count: usize,
        now: Timestamp,
        claim_failed: &mut bool,
    ) -> Result<(Outcomes, Vec<Claim>), StoreError> {
        let failed = |err: StoreError, flag: &mut bool| {
            *flag = true;
            err
        };
        self.expire_if_due(rules, now, worker)?;
        // Every type is asked for: the room of a limited one is known once the ended tasks are.
        let skip = self.unreadable.ids();
        let ClaimView {
            leased,
            candidates,
            pauses,
        } = rules
            .tx
            .claim_view(
                &lease_ids(outcomes),
                types,
                now,
                count,
                &skip,
                self.policy.aging.is_some(),
            )
            .map_err(|err| failed(err, claim_failed))?;
        let results = self.apply_outcomes(rules, outcomes, leased, now);
        let ended: Vec<&Task> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        let unblocks = ended
            .iter()
            .any(|task| parse_id(&task.id).is_ok_and(|id| !rules.without_dependents.contains(&id)));
        let claims = if unblocks {
            self.write_ended(rules, &ended, &[], now)?;
            self.claim_in(rules, worker, types, count, now)
                .map_err(|err| failed(err, claim_failed))?
        } else {
            let room = self
                .room(rules, types, count, &ended)
                .map_err(|err| failed(err, claim_failed))?;
            let eligible: Vec<String> = types
                .iter()
                .filter(|t| room.contains_key(t.as_str()))
                .cloned()
                .collect();
            let view = ClaimView {
                leased: Vec::new(),
                candidates,
                pauses,
            };
            let claims = self
                .choose(rules, worker, eligible, room, count, now, skip, view)
                .map_err(|err| failed(err, claim_failed))?;
            // Should the write fail, the outcomes are tried again on their own.
            self.write_ended(rules, &ended, &claims, now)
                .map_err(|err| {
                    if claims.is_empty() {
                        err
                    } else {
                        failed(err, claim_failed)
                    }
                })?;
            claims
        };
        Ok((results, claims))
    }

    /// Applies `change` to the running task that `lease` holds, in one write fenced by the
    /// lease; the task as written.
    fn with_lease_held(
        &self,
        lease: &Lease,
        mut change: impl FnMut(&mut Task, Timestamp) + Send,
    ) -> Result<Task, StoreError> {
        self.write(Commit::AsConfigured, |rules| {
            let now = Timestamp::now();
            let mut task = rules.held(lease, now)?;
            change(&mut task, now);
            rules.put(&task)?;
            Ok(task)
        })
    }

    /// Applies `change` to task `id` and settles the tasks after it, in one write.
    fn change_one<F>(&self, id: &str, change: F) -> Result<Task, StoreError>
    where
        F: Fn(&mut Rules<'_, D::Tx<'_>>, &mut Task, Timestamp) -> Result<(), StoreError> + Sync,
    {
        self.write(Commit::AsConfigured, |rules| {
            let now = Timestamp::now();
            let mut task = rules
                .task(id)?
                .ok_or_else(|| StoreError::NotFound(id.into()))?;
            change(rules, &mut task, now)?;
            rules.put(&task)?;
            self.settle(rules, &task, now, false)?;
            Ok(task)
        })
    }

    /// Brings in tasks (with their ids, history and state) and pauses from a queue of another
    /// store, all or nothing; refused when any of their ids is taken. Ids given out afterwards
    /// continue after `next_id - 1`. A running task's old worker cannot renew it: its lease
    /// ends now at the latest, so the next claim returns it to the queue. Returns how many.
    pub fn import(
        &self,
        tasks: Vec<Task>,
        paused: Vec<PauseScope>,
        next_id: u64,
    ) -> Result<usize, StoreError> {
        let now = Timestamp::now();
        self.write(Commit::AsConfigured, |rules| {
            let mut rows = Vec::with_capacity(tasks.len());
            for task in &tasks {
                if rules.task(&task.id)?.is_some() {
                    return Err(StoreError::InvalidTask(format!(
                        "task {} already exists in this queue; import into a new queue",
                        task.id
                    )));
                }
                let mut task = task.clone();
                if task.status == TaskStatus::Running {
                    task.lease_expires_at =
                        Some(task.lease_expires_at.map_or(now, |at| at.min(now)));
                }
                rows.push(TaskRow::of(&task, None)?);
            }
            rules.tx.insert(&rows)?;
            for scope in &paused {
                let (kind, name) = pause_key(scope);
                rules.tx.set_pause(kind, name, true)?;
            }
            let last = i64::try_from(next_id.saturating_sub(1)).unwrap_or(i64::MAX);
            rules.tx.advance_ids(last)?;
            rules.tx.announce();
            Ok(tasks.len())
        })
    }
}

impl<D: Driver> QueueStore for Engine<D> {
    fn add(&self, tasks: Vec<NewTask>) -> Result<Vec<Task>, StoreError> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let now = Timestamp::now();
        self.write(Commit::AsConfigured, |rules| {
            let first = rules.tx.reserve_ids(tasks.len())?;
            let tasks = lifecycle::new_tasks(rules, tasks.clone(), first as u64, now)?;
            let rows = tasks
                .iter()
                .map(|task| TaskRow::of(task, None))
                .collect::<Result<Vec<_>, _>>()?;
            if rows.iter().any(TaskRow::is_pending) {
                rules.tx.announce();
            }
            rules.tx.insert(&rows)?;
            Ok(tasks)
        })
    }

    fn claim(&self, worker: &str, types: &[String]) -> Result<Option<Claim>, StoreError> {
        Ok(self.claim_up_to(worker, types, 1)?.pop())
    }

    fn claim_up_to(
        &self,
        worker: &str,
        types: &[String],
        count: usize,
    ) -> Result<Vec<Claim>, StoreError> {
        validate_name("worker name", worker)?;
        if count == 0 {
            return Ok(Vec::new());
        }
        let now = Timestamp::now();
        self.write(Commit::Lazy, |rules| {
            self.take_limit_turns(rules, types)?;
            self.claim_in(rules, worker, types, count, now)
        })
    }

    fn finish_many(
        &self,
        outcomes: &[(Lease, Outcome)],
    ) -> Result<Vec<Result<Task, StoreError>>, StoreError> {
        let now = Timestamp::now();
        self.write(Commit::AsConfigured, |rules| {
            self.finish_in(rules, outcomes, now)
        })
    }

    fn renew(&self, lease: &Lease) -> Result<Renewal, StoreError> {
        let name = self.driver.name();
        self.driver.write_once(Commit::Lazy, &mut |tx| {
            let mut rules = Rules {
                tx,
                name,
                without_dependents: Vec::new(),
            };
            let now = Timestamp::now();
            let mut task = rules.held(lease, now)?;
            lifecycle::renew(&mut task, now, &self.policy);
            rules.put(&task)?;
            Ok(Renewal {
                cancel_requested: task.cancel_requested,
                answered: task.input.as_ref().is_some_and(|i| i.answer.is_some()),
            })
        })
    }

    fn ask(
        &self,
        lease: &Lease,
        question: Question,
        expires_at: Option<Timestamp>,
    ) -> Result<Task, StoreError> {
        self.with_lease_held(lease, |task, now| {
            lifecycle::ask(task, question.clone(), expires_at, now);
        })
    }

    fn answer(
        &self,
        id: &str,
        answer: InputAnswer,
        question: Option<Timestamp>,
    ) -> Result<Task, StoreError> {
        self.change_one(id, |_, task, now| {
            lifecycle::answer(task, answer.clone(), question, now)
        })
    }

    fn end_input(&self, lease: &Lease, gives_up: bool) -> Result<Option<InputAnswer>, StoreError> {
        let mut answer = None;
        self.with_lease_held(lease, |task, _| {
            answer = lifecycle::end_input(task, gives_up);
        })?;
        Ok(answer)
    }

    fn finish(&self, lease: &Lease, outcome: Outcome) -> Result<Task, StoreError> {
        let now = Timestamp::now();
        let outcomes = [(lease.clone(), outcome)];
        self.write(Commit::AsConfigured, |rules| {
            let mut results = self.finish_in(rules, &outcomes, now)?;
            results.pop().expect("one outcome, one result")
        })
    }

    fn finish_and_claim(
        &self,
        outcomes: &[(Lease, Outcome)],
        worker: &str,
        types: &[String],
        count: usize,
    ) -> Result<Recorded, StoreError> {
        validate_name("worker name", worker)?;
        // Committed lazily and flushed after: should the flush fail, the claims were made all
        // the same and go to their slots, while no outcome is reported as recorded.
        // Set when it was the claim that failed: the outcomes are then recorded on their own,
        // and the claim's error handed back beside them.
        let mut claim_failed = false;
        let together = self.write(Commit::Lazy, |rules| {
            claim_failed = false;
            let now = Timestamp::now();
            if count == 0 {
                return Ok((self.finish_in(rules, outcomes, now)?, Vec::new()));
            }
            self.take_limit_turns(rules, types)?;
            self.finish_and_claim_in(
                rules,
                outcomes,
                worker,
                types,
                count,
                now,
                &mut claim_failed,
            )
        });
        match together {
            Ok((done, claims)) if outcomes.is_empty() => Ok((done, Ok(claims))),
            Ok((done, claims)) => match self.driver.flush() {
                Ok(()) => Ok((done, Ok(claims))),
                Err(err) => {
                    // Each recorded outcome is told, as a finish of its own would have been.
                    let told = |err: &StoreError| match err {
                        StoreError::NotFlushed { path, source } => StoreError::NotFlushed {
                            path: path.clone(),
                            source: std::io::Error::new(source.kind(), source.to_string()),
                        },
                        other => StoreError::Database {
                            path: self.driver.name().to_path_buf(),
                            message: other.to_string(),
                        },
                    };
                    let done = done
                        .into_iter()
                        .map(|result| result.and_then(|_| Err(told(&err))))
                        .collect();
                    Ok((done, Ok(claims)))
                }
            },
            Err(err) if claim_failed && outcomes.is_empty() => Ok((Vec::new(), Err(err))),
            Err(err) if claim_failed => Ok((self.finish_many(outcomes)?, Err(err))),
            Err(err) => Err(err),
        }
    }

    fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        self.write(Commit::AsConfigured, |rules| {
            let now = Timestamp::now();
            let mut task = rules.held(lease, now)?;
            lifecycle::release(&mut task, now);
            rules.put(&task)?;
            self.settle(rules, &task, now, true)
        })
    }

    fn edit(&self, id: &str, edit: &TaskEdit) -> Result<Task, StoreError> {
        self.write(Commit::AsConfigured, |rules| {
            lifecycle::edit(rules, id, edit)
        })
    }

    fn cancel(&self, id: &str) -> Result<Task, StoreError> {
        self.change_one(id, |_, task, now| lifecycle::cancel(task, now))
    }

    fn retry(&self, id: &str) -> Result<Task, StoreError> {
        self.change_one(id, |rules, task, _| lifecycle::retry(rules, task))
    }

    fn update(&self, id: &str, change: &TaskChange<'_>) -> Result<Task, StoreError> {
        self.change_one(id, |_, task, now| change(task, now))
    }

    fn pause(&self, scope: &PauseScope) -> Result<(), StoreError> {
        if let PauseScope::Type(task_type) = scope {
            validate_name("task type", task_type)?;
        }
        let (kind, name) = pause_key(scope);
        self.write(Commit::AsConfigured, |rules| {
            if let PauseScope::Task(id) = scope
                && rules.task(id)?.is_none()
            {
                return Err(StoreError::NotFound(id.clone()));
            }
            rules.tx.set_pause(kind, name, true)
        })
    }

    fn resume(&self, scope: &PauseScope) -> Result<(), StoreError> {
        let (kind, name) = pause_key(scope);
        self.write(Commit::AsConfigured, |rules| {
            rules.tx.set_pause(kind, name, false)?;
            rules.tx.announce();
            Ok(())
        })
    }

    fn paused(&self) -> Result<Vec<PauseScope>, StoreError> {
        let mut scopes: Vec<PauseScope> = self
            .read(|tx| tx.pauses())?
            .into_iter()
            .map(|(kind, name)| pause_scope(&kind, name))
            .collect();
        scopes.sort();
        Ok(scopes)
    }

    fn get(&self, id: &str) -> Result<Task, StoreError> {
        let numeric = parse_id(id)?;
        match self.read(|tx| tx.tasks(&[numeric]))?.pop() {
            Some(stored) => parse_task(self.driver.name(), numeric, &stored.body),
            None => Err(StoreError::NotFound(id.to_string())),
        }
    }

    fn list(&self, query: &TaskQuery) -> Result<Vec<Task>, StoreError> {
        let rows = self.read(|tx| tx.select(query))?;
        let name = self.driver.name();
        Ok(rows
            .iter()
            .filter_map(|(id, body)| self.unreadable.readable(*id, parse_task(name, *id, body)))
            .collect())
    }

    fn summary(&self) -> Result<Summary, StoreError> {
        let mut summary = Summary::default();
        for (status, task_type, n) in self.read(|tx| tx.counts())? {
            summary.count(&status, task_type, n);
        }
        Ok(summary)
    }

    fn work_ahead(&self, types: &[String]) -> Result<Option<Task>, StoreError> {
        // One task that is work, read whole: an unreadable one never finishes, so it is no
        // work to wait for.
        loop {
            let skip = self.unreadable.ids();
            let found = self.read(|tx| {
                let paused = PauseSet::new(&tx.pauses()?);
                tx.first_work(types, &skip, &paused)
            })?;
            let Some((id, body)) = found else {
                return Ok(None);
            };
            match parse_task(self.driver.name(), id, &body) {
                Ok(task) => return Ok(Some(task)),
                Err(err) => self.unreadable.note(id, &err),
            }
        }
    }

    fn expire_leases(&self) -> Result<usize, StoreError> {
        let now = Timestamp::now();
        self.write(Commit::AsConfigured, |rules| {
            self.expire_due(rules, now, "host expire")
        })
    }

    fn purge(&self, before: Timestamp, statuses: &[TaskStatus]) -> Result<usize, StoreError> {
        let statuses = purgeable(statuses);
        let mut purged = 0;
        loop {
            let ids = self.write(Commit::AsConfigured, |rules| {
                rules.tx.delete_finished(Finished::Before {
                    before: before.as_millisecond(),
                    statuses: &statuses,
                    limit: PURGE_BATCH,
                })
            })?;
            self.driver.forget_logs(&ids)?;
            purged += ids.len();
            if ids.len() < PURGE_BATCH {
                return Ok(purged);
            }
        }
    }

    fn forget_finished(&self, ids: &[i64]) -> Result<(), StoreError> {
        let removed = self.write(Commit::AsConfigured, |rules| {
            rules.tx.delete_finished(Finished::Ids(ids))
        })?;
        self.driver.forget_logs(&removed)
    }

    fn put_worker(&self, record: &WorkerRecord) -> Result<(), StoreError> {
        validate_name("worker name", &record.name)?;
        let json = serde_json::to_string(record).expect("worker record serializes");
        self.write(Commit::Lazy, |rules| {
            rules.tx.put_worker(&record.name, &json)
        })
    }

    fn remove_worker(&self, name: &str) -> Result<(), StoreError> {
        self.write(Commit::Lazy, |rules| rules.tx.remove_worker(name))
    }

    fn workers(&self) -> Result<Vec<WorkerRecord>, StoreError> {
        let rows = self.read(|tx| tx.workers())?;
        rows.into_iter()
            .map(|(name, record)| {
                serde_json::from_str(&record).map_err(|err| StoreError::Corrupt {
                    path: PathBuf::from(format!("{}, worker {name}", self.driver.name().display())),
                    reason: err.to_string(),
                })
            })
            .collect()
    }

    fn usage_limits(&self) -> Result<Vec<UsageLimit>, StoreError> {
        let kept = self.setting(USAGE_LIMITS)?;
        Ok(self
            .parse_usage_limits(kept.as_deref())?
            .into_values()
            .collect())
    }

    fn set_usage_limit(&self, limit: &UsageLimit) -> Result<(), StoreError> {
        self.write(Commit::AsConfigured, |rules| {
            let kept = rules.tx.setting(USAGE_LIMITS)?;
            let mut limits = self.parse_usage_limits(kept.as_deref())?;
            limits.insert(limit.role.clone(), limit.clone());
            let text = serde_json::to_string(&limits).expect("limits serialize");
            rules.tx.set_setting(USAGE_LIMITS, Some(&text))
        })
    }

    fn append_log(&self, id: &str, line: &str) -> Result<(), StoreError> {
        self.driver.append_log(parse_id(id)?, line)
    }

    fn read_log(&self, id: &str, from: u64) -> Result<(String, u64), StoreError> {
        self.get(id)?;
        self.driver.read_log(parse_id(id)?, from)
    }

    fn lease_duration(&self) -> Duration {
        self.policy.lease
    }

    fn take_warnings(&self) -> Vec<String> {
        self.unreadable.take_warnings()
    }

    fn quick_check(&self) -> Result<(), StoreError> {
        self.driver.quick_check()
    }
}
