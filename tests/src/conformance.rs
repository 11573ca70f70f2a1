//! The conformance suite of [`QueueStore`]: written once, run against every store engine (see
//! `tests/integration/conformance.rs`, one test per function here per engine).
//!
//! In-process, against the trait: a property test of the store's invariants over random
//! sequences of operations; claims exactly once under contention; dependencies; cancel and
//! retry; pause; priority aging; per-type limits; lease expiry and fencing; adds all or
//! nothing; purge and listing. Across processes, with the real `host` binary on the engine's
//! queue: claims exactly once with four workers, and no task lost or run unrecorded while
//! workers are killed with SIGKILL during a drain.

use std::collections::{BTreeMap, HashSet};
use std::process::Child;
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use nix::sys::signal::Signal;
use proptest::prelude::*;
use queue::lifecycle::Policy;
use queue::{
    AttemptStatus, Dependency, Lease, NewTask, Outcome, PauseScope, QueueStore, StoreError, Task,
    TaskQuery, TaskStatus,
};
use serde_json::{Value, json};

use crate::{TestQueue, signal};

/// A store engine under test.
pub trait Engine: Sync {
    /// A new, empty queue of this engine, with its plugin folder, for `host` and for stores
    /// opened in this process.
    fn fresh(&self) -> TestQueue;

    /// A store on `queue`, applying `policy`; each call is a connection of its own, as a
    /// separate process would have.
    fn open(&self, queue: &TestQueue, policy: Policy) -> Box<dyn QueueStore>;
}

/// The embedded SQLite store.
pub struct Sqlite;

impl Engine for Sqlite {
    fn fresh(&self) -> TestQueue {
        TestQueue::new()
    }

    fn open(&self, queue: &TestQueue, policy: Policy) -> Box<dyn QueueStore> {
        Box::new(
            queue::SqliteStore::open(&queue.queue)
                .unwrap()
                .with_policy(policy),
        )
    }
}

/// The PostgreSQL store, each queue a new database of the tests' cluster.
pub struct Postgres;

impl Engine for Postgres {
    fn fresh(&self) -> TestQueue {
        TestQueue::on_postgres()
    }

    fn open(&self, queue: &TestQueue, policy: Policy) -> Box<dyn QueueStore> {
        let url = queue::PostgresUrl::parse(&queue.address).unwrap();
        Box::new(
            queue::PostgresStore::open(&url)
                .unwrap()
                .with_policy(policy),
        )
    }
}

fn new(task_type: &str, priority: u32) -> NewTask {
    NewTask {
        task_type: task_type.into(),
        priority: Some(priority),
        ..NewTask::default()
    }
}

fn types(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn all(store: &dyn QueueStore) -> Vec<Task> {
    store.list(&TaskQuery::default()).unwrap()
}

fn status(store: &dyn QueueStore, id: &str) -> TaskStatus {
    store.get(id).unwrap().status
}

const TYPES: [&str; 2] = ["alpha", "beta"];

#[derive(Clone, Debug)]
enum Op {
    /// `after`: comes after an existing task (picked from this number) when some; whatever
    /// its outcome (`afterAny`) when `any_outcome`.
    Add {
        count: usize,
        kind: usize,
        priority: u32,
        after: Option<usize>,
        any_outcome: bool,
    },
    /// Claims with a lease that expires at once when `short`, else one that lasts an hour.
    Claim {
        kind: usize,
        short: bool,
    },
    Renew {
        pick: usize,
    },
    /// `how`: 0 success, 1 retryable failure, 2 final failure, 3 success waiting for review.
    Finish {
        pick: usize,
        how: u8,
    },
    Release {
        pick: usize,
    },
    Expire,
    Cancel {
        pick: usize,
    },
    Retry {
        pick: usize,
    },
    /// Approves (`approve`) or rejects a task, as `host approve` and `host reject` do.
    Verdict {
        pick: usize,
        approve: bool,
    },
    Pause {
        kind: usize,
    },
    Resume {
        kind: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1..4usize, 0..2usize, 0..3u32, prop::option::of(any::<usize>()), any::<bool>())
            .prop_map(|(count, kind, priority, after, any_outcome)| Op::Add {
                count,
                kind,
                priority,
                after,
                any_outcome,
            }),
        4 => (0..2usize, any::<bool>()).prop_map(|(kind, short)| Op::Claim { kind, short }),
        1 => any::<usize>().prop_map(|pick| Op::Renew { pick }),
        3 => (any::<usize>(), 0..4u8).prop_map(|(pick, how)| Op::Finish { pick, how }),
        1 => any::<usize>().prop_map(|pick| Op::Release { pick }),
        1 => Just(Op::Expire),
        1 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Retry { pick }),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(pick, approve)| Op::Verdict { pick, approve }),
        1 => (0..2usize).prop_map(|kind| Op::Pause { kind }),
        1 => (0..2usize).prop_map(|kind| Op::Resume { kind }),
    ]
}

/// Errors a correct store may answer to an operation the sequence got wrong (a lease that
/// expired meanwhile, a cancel of a finished task, a retry of a task whose prerequisite
/// failed). Anything else, a refused holder among them, is a bug.
fn expected(err: &StoreError) -> bool {
    matches!(
        err,
        StoreError::LeaseLost { .. } | StoreError::WrongState { .. } | StoreError::InvalidTask(_)
    )
}

fn check_invariants(store: &dyn QueueStore, added: usize) -> Result<(), TestCaseError> {
    let tasks = all(store);
    let ids: Vec<String> = tasks.iter().map(|t| t.id.clone()).collect();
    let want: Vec<String> = (1..=added).map(|i| i.to_string()).collect();
    prop_assert_eq!(ids, want, "every added task is there, once");
    let status_of: BTreeMap<&str, TaskStatus> =
        tasks.iter().map(|t| (t.id.as_str(), t.status)).collect();
    let mut counts: BTreeMap<TaskStatus, usize> = BTreeMap::new();
    let mut by_type: BTreeMap<String, BTreeMap<TaskStatus, usize>> = BTreeMap::new();
    for task in &tasks {
        *counts.entry(task.status).or_default() += 1;
        *by_type
            .entry(task.task_type.clone())
            .or_default()
            .entry(task.status)
            .or_default() += 1;
        let prerequisites: Vec<TaskStatus> =
            task.after.iter().map(|id| status_of[id.as_str()]).collect();
        let any_open = task
            .after_any
            .iter()
            .any(|id| !status_of[id.as_str()].is_finished());
        // A task that never started has waited for every `afterAny` prerequisite to finish
        // (one that started is not stopped when such a prerequisite is retried).
        prop_assert!(
            !(task.status == TaskStatus::Pending && task.history.is_empty() && any_open),
            "task {} is pending before the tasks it comes after whatever the outcome finished",
            &task.id
        );
        match task.status {
            TaskStatus::Pending
            | TaskStatus::Running
            | TaskStatus::Review
            | TaskStatus::Completed => prop_assert!(
                prerequisites.iter().all(|s| *s == TaskStatus::Completed),
                "task {} started before the tasks it comes after completed",
                &task.id
            ),
            TaskStatus::Blocked => prop_assert!(
                (any_open || prerequisites.iter().any(|s| *s != TaskStatus::Completed))
                    && !prerequisites
                        .iter()
                        .any(|s| matches!(s, TaskStatus::Failed | TaskStatus::Cancelled)),
                "blocked task {} waits for something that can still complete",
                &task.id
            ),
            _ => {}
        }
        if let Some(by) = &task.cancelled_by {
            prop_assert_eq!(task.status, TaskStatus::Cancelled);
            prop_assert!(matches!(
                status_of[by.as_str()],
                TaskStatus::Failed | TaskStatus::Cancelled
            ));
        }
        match task.status {
            TaskStatus::Pending | TaskStatus::Blocked => {
                prop_assert!(task.lease_expires_at.is_none(), "{:?}", task);
                prop_assert!(task.finished_at.is_none() || task.status == TaskStatus::Pending);
            }
            TaskStatus::Running => {
                prop_assert!(task.lease_expires_at.is_some() && task.worker.is_some());
                prop_assert!(task.retry_at.is_none());
            }
            TaskStatus::Review => {
                prop_assert!(task.finished_at.is_none() && task.lease_expires_at.is_none());
                prop_assert_eq!(task.success, Some(true));
            }
            _ => {
                prop_assert!(task.finished_at.is_some(), "{:?}", task);
                prop_assert!(task.lease_expires_at.is_none() && task.retry_at.is_none());
            }
        }
        prop_assert!(task.attempts <= task.max_attempts, "{:?}", task);
        let counted = task
            .history
            .iter()
            .filter(|a| a.status != AttemptStatus::Released)
            .count();
        prop_assert_eq!(counted, task.attempts as usize, "history of {}", &task.id);
        let open = task
            .history
            .iter()
            .filter(|a| a.status == AttemptStatus::Running)
            .count();
        prop_assert_eq!(open, usize::from(task.status == TaskStatus::Running));
        for attempt in task
            .history
            .iter()
            .filter(|a| a.status != AttemptStatus::Running)
        {
            prop_assert!(
                attempt.finished_by.is_some(),
                "attempt {} of {} records who ended it",
                attempt.attempt,
                &task.id
            );
        }
    }
    let summary = store.summary().unwrap();
    for status in TaskStatus::ALL {
        prop_assert_eq!(
            summary.counts.get(&status).copied().unwrap_or(0),
            counts.get(&status).copied().unwrap_or(0),
            "summary count of {}",
            status
        );
    }
    for (task_type, want) in &by_type {
        for (status, n) in want {
            prop_assert_eq!(summary.by_type[task_type].get(status).copied(), Some(*n));
        }
    }
    Ok(())
}

fn run_ops(engine: &dyn Engine, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let q = engine.fresh();
    let long = engine.open(
        &q,
        Policy {
            lease: Duration::from_secs(3600),
            backoff: Duration::ZERO,
            ..Policy::default()
        },
    );
    // Leases from this store expire as soon as they are granted; its retries wait an hour.
    let short = engine.open(
        &q,
        Policy {
            lease: Duration::ZERO,
            backoff: Duration::from_secs(3600),
            ..Policy::default()
        },
    );
    let mut leases: Vec<Lease> = Vec::new();
    let mut added = 0;
    for op in ops {
        let pick = |leases: &Vec<Lease>, n: usize| (!leases.is_empty()).then(|| n % leases.len());
        let outcome: Result<(), StoreError> = match op {
            Op::Add {
                count,
                kind,
                priority,
                after,
                any_outcome,
            } => {
                let deps: Vec<Dependency> = after
                    .filter(|_| added > 0)
                    .map(|n| Dependency::Task((n % added + 1).to_string()))
                    .into_iter()
                    .collect();
                let (after, after_any) = if any_outcome {
                    (Vec::new(), deps)
                } else {
                    (deps, Vec::new())
                };
                let tasks = (0..count)
                    .map(|_| NewTask {
                        task_type: TYPES[kind].into(),
                        priority: Some(priority),
                        max_attempts: Some(3),
                        payload: json!({}),
                        after: after.clone(),
                        after_any: after_any.clone(),
                        ..NewTask::default()
                    })
                    .collect();
                long.add(tasks).map(|t| added += t.len())
            }
            Op::Claim { kind, short: brief } => {
                let store = if brief { &short } else { &long };
                store
                    .claim("w", &[TYPES[kind].to_string()])
                    .map(|c| leases.extend(c.map(|c| c.lease)))
            }
            Op::Renew { pick: n } => match pick(&leases, n) {
                Some(i) => long.renew(&leases[i]).map(drop),
                None => Ok(()),
            },
            Op::Finish { pick: n, how } => match pick(&leases, n) {
                Some(i) => {
                    let lease = leases.swap_remove(i);
                    let outcome = match how {
                        0 => Outcome::Success(json!({"ok": true})),
                        3 => Outcome::ForReview(json!({"ok": true})),
                        _ => Outcome::Failure {
                            error: "boom".into(),
                            result: None,
                            retryable: how == 1,
                        },
                    };
                    let store = if n % 2 == 0 { &long } else { &short };
                    store.finish(&lease, outcome).map(drop)
                }
                None => Ok(()),
            },
            Op::Release { pick: n } => match pick(&leases, n) {
                Some(i) => long.release(&leases.swap_remove(i)),
                None => Ok(()),
            },
            Op::Expire => long.expire_leases().map(drop),
            Op::Cancel { pick: n } if added > 0 => {
                long.cancel(&(n % added + 1).to_string()).map(drop)
            }
            Op::Retry { pick: n } if added > 0 => {
                long.retry(&(n % added + 1).to_string()).map(drop)
            }
            Op::Verdict { pick: n, approve } if added > 0 => {
                let id = (n % added + 1).to_string();
                if approve {
                    long.update(&id, &|t, now| queue::lifecycle::approve(t, now))
                } else {
                    long.update(&id, &|t, now| queue::lifecycle::reject(t, "no", now))
                }
                .map(drop)
            }
            Op::Cancel { .. } | Op::Retry { .. } | Op::Verdict { .. } => Ok(()),
            Op::Pause { kind } => long.pause(&PauseScope::Type(TYPES[kind].into())),
            Op::Resume { kind } => long.resume(&PauseScope::Type(TYPES[kind].into())),
        };
        if let Err(err) = outcome {
            prop_assert!(expected(&err), "unexpected error: {}", err);
        }
        check_invariants(long.as_ref(), added)?;
    }
    Ok(())
}

/// Random sequences of add, claim, renew, finish (a success waiting for review among them),
/// release, lease expiry, cancel, retry, approve or reject, pause and resume: the store's
/// invariants hold after every step.
pub fn store_invariants_hold_after_every_step(engine: &dyn Engine) {
    let config = ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let strategy = prop::collection::vec(op(), 1..40);
    if let Err(err) = runner.run(&strategy, |ops| run_ops(engine, ops)) {
        panic!("{err}");
    }
}

/// Eight stores (connections of their own, as processes have) claim from 400 tasks at once:
/// each task is claimed by exactly one of them.
pub fn claims_are_exactly_once_under_contention(engine: &dyn Engine) {
    let q = engine.fresh();
    let store = engine.open(&q, Policy::default());
    for _ in 0..4 {
        store.add(vec![new("alpha", 5); 100]).unwrap();
    }
    let claimed: Vec<Vec<String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let store = engine.open(&q, Policy::default());
                scope.spawn(move || {
                    let mut mine = Vec::new();
                    while let Some(claim) =
                        store.claim(&format!("w{i}"), &types(&["alpha"])).unwrap()
                    {
                        store
                            .finish(&claim.lease, Outcome::Success(Value::Null))
                            .unwrap();
                        mine.push(claim.task.id);
                    }
                    mine
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut seen = HashSet::new();
    for id in claimed.iter().flatten() {
        assert!(seen.insert(id.clone()), "task {id} was claimed twice");
    }
    assert_eq!(seen.len(), 400, "every task was claimed");
    let busy = claimed.iter().filter(|mine| !mine.is_empty()).count();
    assert!(
        busy >= 4,
        "claims were shared: {:?}",
        claimed.iter().map(Vec::len).collect::<Vec<_>>()
    );
}

/// Four `host` worker processes drain 500 tasks, two of them with four slots: each task runs
/// exactly once.
pub fn four_workers_drain_500_tasks_each_exactly_once(engine: &dyn Engine) {
    let q = engine.fresh();
    let file = q.scratch.join("tasks.jsonl");
    let lines: Vec<String> = (0..500)
        .map(|i| format!(r#"{{"type":"noop","payload":{{"n":{i}}}}}"#))
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    assert_eq!(
        q.ok(&["add", "--file", file.to_str().unwrap()])
            .lines()
            .count(),
        500
    );
    // Two of one slot, two of four, whose slots' outcomes and claims the completer batches.
    let workers: Vec<_> = (0..4)
        .map(|i| {
            let slots = if i < 2 { "1" } else { "4" };
            let name = format!("w{i}");
            q.spawn_worker(
                "noop",
                &["--drain", "--name", &name, "--concurrency", slots],
            )
        })
        .collect();
    let mut claims: BTreeMap<String, usize> = BTreeMap::new();
    for worker in workers {
        let output = worker.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "worker failed:\n{stderr}");
        assert!(
            !stderr.contains("error"),
            "worker reported an error:\n{stderr}"
        );
        for line in stderr.lines().filter(|l| l.contains(" claimed, ")) {
            let id = line
                .split("task ")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap();
            *claims.entry(id.to_string()).or_default() += 1;
        }
    }
    assert_eq!(claims.len(), 500, "every task started");
    assert!(claims.values().all(|&n| n == 1), "no task started twice");
    for task in &q.results() {
        assert_eq!(task["status"], "completed", "{task}");
        assert_eq!(task["attempts"], 1, "{task}");
    }
}

/// Workers killed with SIGKILL at random while four of them drain 300 tasks: every task ends
/// completed, and every attempt is on record (expired ones for the killed workers).
pub fn chaos_sigkilled_workers_lose_no_task_and_every_run_is_on_record(engine: &dyn Engine) {
    let q = engine.fresh();
    let file = q.scratch.join("tasks.jsonl");
    let lines: Vec<String> = (0..300)
        .map(|i| format!(r#"{{"type":"sleep","payload":{{"ms":60,"n":{i}}},"maxAttempts":10}}"#))
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    q.ok(&["add", "--file", file.to_str().unwrap()]);
    let mut spawned = 0;
    let mut spawn = |q: &TestQueue| -> Child {
        spawned += 1;
        let name = format!("chaos{spawned}");
        q.spawn_worker(
            "sleeper",
            &[
                "--drain",
                "--name",
                &name,
                "--lease",
                "1s",
                "--poll",
                "20ms",
                "--backoff",
                "50ms",
            ],
        )
    };
    let mut workers: Vec<Child> = (0..4).map(|_| spawn(&q)).collect();
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(200));
        let victim = fastrand::usize(..workers.len());
        let mut killed = workers.swap_remove(victim);
        signal(&killed, Signal::SIGKILL);
        killed.wait().unwrap();
        workers.push(spawn(&q));
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    for mut worker in workers {
        while worker.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "the workers did not drain the queue"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let tasks = q.results();
    assert_eq!(tasks.len(), 300, "every task finished");
    let mut reclaimed = 0;
    for task in &tasks {
        assert_eq!(task["status"], "completed", "{task:#}");
        let runs = task["history"].as_array().expect("a history");
        assert_eq!(
            runs.len() as u64,
            task["attempts"].as_u64().unwrap(),
            "one history entry per attempt: {task:#}"
        );
        let (last, earlier) = runs.split_last().unwrap();
        assert_eq!(last["status"], "completed", "{task:#}");
        for run in earlier {
            assert_eq!(run["status"], "expired", "{task:#}");
            assert!(
                run["finishedAt"].is_string() && run["finishedBy"].is_string(),
                "{task:#}"
            );
            reclaimed += 1;
        }
    }
    assert!(reclaimed > 0, "some kill landed on a running task");
    q.ok(&["doctor"]);
}

/// `after`: blocked until every prerequisite completes; cancelled, down the chain, when one
/// fails; revived when that one is retried; unknown ids and cycles refused.
pub fn dependencies_unblock_cancel_and_revive(engine: &dyn Engine) {
    let q = engine.fresh();
    let store = engine.open(&q, Policy::default());
    let after = |i| NewTask {
        after: vec![Dependency::Batch(i)],
        ..new("alpha", 5)
    };
    let tasks = store
        .add(vec![
            new("alpha", 1),
            after(0),
            after(1),
            new("alpha", 2),
            after(3),
        ])
        .unwrap();
    let id = |i: usize| tasks[i].id.clone();
    assert_eq!(status(store.as_ref(), &id(1)), TaskStatus::Blocked);
    let alpha = types(&["alpha"]);
    let first = store.claim("w", &alpha).unwrap().unwrap();
    assert_eq!(first.task.id, id(0));
    store
        .finish(&first.lease, Outcome::Success(Value::Null))
        .unwrap();
    assert_eq!(
        status(store.as_ref(), &id(1)),
        TaskStatus::Pending,
        "unblocked"
    );
    assert_eq!(
        status(store.as_ref(), &id(2)),
        TaskStatus::Blocked,
        "still waits for 1"
    );

    let failing = store.claim("w", &alpha).unwrap().unwrap();
    assert_eq!(
        failing.task.id,
        id(3),
        "priority 2 before the unblocked priority 5"
    );
    let failure = Outcome::Failure {
        error: "broke".into(),
        result: None,
        retryable: false,
    };
    store.finish(&failing.lease, failure).unwrap();
    let cancelled = store.get(&id(4)).unwrap();
    assert_eq!(cancelled.status, TaskStatus::Cancelled);
    assert_eq!(cancelled.cancelled_by.as_deref(), Some(id(3).as_str()));
    assert!(cancelled.error.unwrap().contains("failed"));
    store.retry(&id(3)).unwrap();
    assert_eq!(
        status(store.as_ref(), &id(4)),
        TaskStatus::Blocked,
        "revived"
    );
    assert_eq!(status(store.as_ref(), &id(3)), TaskStatus::Pending);

    let unknown = store
        .add(vec![NewTask {
            after: vec![Dependency::Task("999".into())],
            ..new("alpha", 5)
        }])
        .unwrap_err();
    assert!(unknown.to_string().contains("999"), "{unknown}");
    let cycle = store
        .add(vec![
            NewTask {
                after: vec![Dependency::Batch(1)],
                ..new("alpha", 5)
            },
            after(0),
        ])
        .unwrap_err();
    assert!(cycle.to_string().contains("cycle"), "{cycle}");
    assert_eq!(
        all(store.as_ref()).len(),
        5,
        "nothing of a refused add was added"
    );
}

/// `afterAny`: blocked until every such prerequisite has finished, whatever its outcome (a
/// review is not an outcome yet); never cancelled by one that failed or was cancelled, nor by
/// a cascade; blocked again, if it has not started, when one is retried. Beside it, `after`
/// keeps its meaning. A task named in both kinds, unknown ids and cycles through either kind
/// are refused.
pub fn dependencies_after_any_run_whatever_the_outcome(engine: &dyn Engine) {
    let q = engine.fresh();
    let store = engine.open(&q, Policy::default());
    let alpha = types(&["alpha"]);
    let any = |deps: &[usize]| NewTask {
        after_any: deps.iter().map(|&i| Dependency::Batch(i)).collect(),
        ..new("beta", 5)
    };
    let after = |i| NewTask {
        after: vec![Dependency::Batch(i)],
        ..new("alpha", 5)
    };
    // 0 the test; 1 the fix (after any outcome of 0); 2 a deploy (after 0); 3 after 2; 4
    // after any outcome of 2.
    let tasks = store
        .add(vec![
            new("alpha", 1),
            any(&[0]),
            after(0),
            after(2),
            any(&[2]),
        ])
        .unwrap();
    let id = |i: usize| tasks[i].id.clone();
    let status_of = |i: usize| status(store.as_ref(), &id(i));
    assert_eq!(tasks[1].after_any, vec![id(0)]);
    assert!(tasks[1].after.is_empty());
    for i in 1..5 {
        assert_eq!(status_of(i), TaskStatus::Blocked, "task {i}");
    }

    let test = store.claim("w", &alpha).unwrap().unwrap();
    assert_eq!(test.task.id, id(0));
    let failure = Outcome::Failure {
        error: "2 tests failed".into(),
        result: Some(json!({"outputTail": "assertion failed"})),
        retryable: false,
    };
    store.finish(&test.lease, failure).unwrap();
    assert_eq!(
        status_of(1),
        TaskStatus::Pending,
        "the fix runs after a failure"
    );
    assert_eq!(
        status_of(2),
        TaskStatus::Cancelled,
        "`after` is cancelled as before"
    );
    assert_eq!(status_of(3), TaskStatus::Cancelled, "and down its chain");
    assert_eq!(
        status_of(4),
        TaskStatus::Pending,
        "a cascade's cancel is an outcome too"
    );
    let fix = store.get(&id(1)).unwrap();
    assert!(fix.cancelled_by.is_none() && fix.error.is_none(), "{fix:?}");

    store.retry(&id(0)).unwrap();
    for i in 1..5 {
        assert_eq!(status_of(i), TaskStatus::Blocked, "task {i} waits again");
    }
    let test = store.claim("w", &alpha).unwrap().unwrap();
    assert_eq!(test.task.id, id(0));
    store
        .finish(&test.lease, Outcome::Success(Value::Null))
        .unwrap();
    assert_eq!(status_of(1), TaskStatus::Pending, "and after a success");
    assert_eq!(status_of(2), TaskStatus::Pending);
    let deploy = store.claim("w", &alpha).unwrap().unwrap();
    assert_eq!(deploy.task.id, id(2));
    store
        .finish(&deploy.lease, Outcome::Success(Value::Null))
        .unwrap();
    assert_eq!(status_of(3), TaskStatus::Pending);
    assert_eq!(status_of(4), TaskStatus::Pending);

    // A cancelled prerequisite: its after-any dependents run, whenever they were added; a
    // review is no outcome yet.
    let more = store
        .add(vec![new("alpha", 1), any(&[0]), new("alpha", 2), any(&[2])])
        .unwrap();
    store.cancel(&more[0].id).unwrap();
    assert_eq!(status(store.as_ref(), &more[1].id), TaskStatus::Pending);
    let born = store
        .add(vec![
            NewTask {
                after_any: vec![Dependency::Task(more[0].id.clone())],
                ..new("beta", 5)
            },
            NewTask {
                after: vec![Dependency::Task(more[0].id.clone())],
                ..new("beta", 5)
            },
        ])
        .unwrap();
    assert_eq!(born[0].status, TaskStatus::Pending);
    assert_eq!(born[1].status, TaskStatus::Cancelled);
    let reviewed = store.claim("w", &alpha).unwrap().unwrap();
    assert_eq!(reviewed.task.id, more[2].id);
    store
        .finish(&reviewed.lease, Outcome::ForReview(Value::Null))
        .unwrap();
    assert_eq!(status(store.as_ref(), &more[3].id), TaskStatus::Blocked);
    store.cancel(&more[2].id).unwrap();
    assert_eq!(status(store.as_ref(), &more[3].id), TaskStatus::Pending);

    let count = all(store.as_ref()).len();
    let both = store
        .add(vec![NewTask {
            after: vec![Dependency::Task(id(0))],
            after_any: vec![Dependency::Task(id(0))],
            ..new("beta", 5)
        }])
        .unwrap_err();
    assert!(
        both.to_string().contains("both after and afterAny"),
        "{both}"
    );
    let unknown = store
        .add(vec![NewTask {
            after_any: vec![Dependency::Task("999".into())],
            ..new("beta", 5)
        }])
        .unwrap_err();
    assert!(
        unknown
            .to_string()
            .contains("afterAny: no task with id 999"),
        "{unknown}"
    );
    let cycle = store.add(vec![any(&[1]), after(0)]).unwrap_err();
    assert!(cycle.to_string().contains("cycle"), "{cycle}");
    assert_eq!(all(store.as_ref()).len(), count, "nothing of a refused add");
}

/// Cancel: a pending task never starts, a running one is flagged and ends cancelled; retry
/// brings a failed or cancelled task back with one more attempt.
pub fn cancel_and_retry(engine: &dyn Engine) {
    let q = engine.fresh();
    let store = engine.open(&q, Policy::default());
    let tasks = store.add(vec![new("alpha", 1), new("alpha", 2)]).unwrap();
    let pending = store.cancel(&tasks[1].id).unwrap();
    assert_eq!(pending.status, TaskStatus::Cancelled);
    let claim = store.claim("w", &types(&["alpha"])).unwrap().unwrap();
    assert!(
        store.claim("w", &types(&["alpha"])).unwrap().is_none(),
        "the cancelled one never starts"
    );
    let running = store.cancel(&claim.task.id).unwrap();
    assert_eq!(running.status, TaskStatus::Running);
    assert!(store.renew(&claim.lease).unwrap().cancel_requested);
    let failure = Outcome::Failure {
        error: "stopped".into(),
        result: None,
        retryable: true,
    };
    let done = store.finish(&claim.lease, failure).unwrap();
    assert_eq!(
        done.status,
        TaskStatus::Cancelled,
        "a cancel request wins over a retry"
    );
    let again = store.retry(&done.id).unwrap();
    assert_eq!(again.status, TaskStatus::Pending);
    assert!(again.max_attempts > again.attempts);
    assert!(matches!(
        store.retry(&done.id),
        Err(StoreError::WrongState { .. })
    ));
    assert!(matches!(store.cancel("999"), Err(StoreError::NotFound(_))));

    // A worker that shuts down while a cancel is pending does not hand the task to another.
    let claim = store.claim("w", &types(&["alpha"])).unwrap().unwrap();
    store.cancel(&claim.task.id).unwrap();
    store.release(&claim.lease).unwrap();
    assert_eq!(
        status(store.as_ref(), &claim.task.id),
        TaskStatus::Cancelled
    );
    assert!(store.claim("w", &types(&["alpha"])).unwrap().is_none());
}

/// A worker records outcomes and takes its next tasks in one step; the outcomes stand whatever
/// the claim finds, and a refused outcome does not keep the slot from its next task.
pub fn finish_and_claim(engine: &dyn Engine) {
    let q = engine.fresh();
    let store = engine.open(&q, Policy::default());
    let tasks = store
        .add(vec![new("alpha", 1), new("alpha", 2), new("alpha", 3)])
        .unwrap();
    let alpha = types(&["alpha"]);
    let (none, first) = store.finish_and_claim(&[], "w", &alpha, 1).unwrap();
    assert!(none.is_empty());
    let first = first.unwrap().pop().expect("the first task");
    let (done, next) = store
        .finish_and_claim(
            &[(first.lease.clone(), Outcome::Success(json!(1)))],
            "w",
            &alpha,
            1,
        )
        .unwrap();
    assert!(matches!(&done[..], [Ok(t)] if t.status == TaskStatus::Completed));
    let next = next.unwrap().pop().expect("the second task");
    assert_eq!(next.task.id, tasks[1].id);
    assert_eq!(status(store.as_ref(), &next.task.id), TaskStatus::Running);
    // A stale outcome is refused, alone: the slot still gets the third task.
    let (done, third) = store
        .finish_and_claim(
            &[(first.lease.clone(), Outcome::Success(json!(3)))],
            "w",
            &alpha,
            1,
        )
        .unwrap();
    assert!(
        matches!(&done[..], [Err(StoreError::LeaseLost { .. })]),
        "{done:?}"
    );
    assert_eq!(third.unwrap()[0].task.id, tasks[2].id);
    let (done, none) = store
        .finish_and_claim(
            &[(next.lease.clone(), Outcome::Success(json!(2)))],
            "w",
            &alpha,
            1,
        )
        .unwrap();
    assert!(matches!(&done[..], [Ok(t)] if t.status == TaskStatus::Completed));
    assert!(none.unwrap().is_empty());
}

/// Pause stops claims of the queue, a type or a task until resumed.
pub fn pause_and_resume(engine: &dyn Engine) {
    let q = engine.fresh();
    let store = engine.open(&q, Policy::default());
    let tasks = store.add(vec![new("alpha", 1), new("beta", 1)]).unwrap();
    let both = types(&["alpha", "beta"]);
    for scope in [
        PauseScope::Queue,
        PauseScope::Type("alpha".into()),
        PauseScope::Task(tasks[0].id.clone()),
    ] {
        store.pause(&scope).unwrap();
        assert_eq!(store.paused().unwrap(), vec![scope.clone()]);
        let claim = store.claim("w", &both).unwrap();
        match &scope {
            PauseScope::Queue => assert!(claim.is_none(), "{scope}"),
            _ => {
                let claim = claim.unwrap_or_else(|| panic!("{scope}: the other task"));
                assert_eq!(claim.task.id, tasks[1].id, "{scope}");
                store.release(&claim.lease).unwrap();
            }
        }
        store.resume(&scope).unwrap();
    }
    assert!(store.paused().unwrap().is_empty());
    assert!(store.pause(&PauseScope::Task("999".into())).is_err());
}

/// With aging, an old low-priority task is claimed before newer urgent ones once it has
/// waited its steps; its stored priority stays, the claim records the aged one.
pub fn priority_aging(engine: &dyn Engine) {
    let q = engine.fresh();
    let store = engine.open(&q, Policy::default());
    let old = store.add(vec![new("alpha", 3)]).unwrap().remove(0);
    std::thread::sleep(Duration::from_millis(350));
    store.add(vec![new("alpha", 1); 2]).unwrap();
    let aging = engine.open(
        &q,
        Policy {
            aging: Some(Duration::from_millis(100)),
            ..Policy::default()
        },
    );
    let claim = aging.claim("w", &types(&["alpha"])).unwrap().unwrap();
    assert_eq!(claim.task.id, old.id, "waited 3 steps: priority 0 now");
    assert_eq!(claim.task.priority, 3);
    assert_eq!(claim.task.aged_priority, Some(0));
    let plain = store.claim("w", &types(&["alpha"])).unwrap().unwrap();
    assert_eq!(plain.task.priority, 1);
    // A batch takes as many as asked, several of one priority among them.
    let more = aging.add(vec![new("alpha", 2); 3]).unwrap();
    let batch = aging.claim_up_to("w", &types(&["alpha"]), 3).unwrap();
    let claimed: Vec<&str> = batch.iter().map(|c| c.task.id.as_str()).collect();
    let newest: Vec<&str> = more.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(claimed.len(), 3, "not one per priority: {claimed:?}");
    assert!(
        claimed.contains(&newest[0]) && claimed.contains(&newest[1]),
        "the remaining priority-1 task, then the two oldest of priority 2: {claimed:?}"
    );
}

/// A per-type limit caps running tasks of that type across every store on the queue.
pub fn per_type_limits(engine: &dyn Engine) {
    let q = engine.fresh();
    let limited = |q: &TestQueue| {
        engine.open(
            q,
            Policy {
                limits: [("alpha".to_string(), 2)].into(),
                ..Policy::default()
            },
        )
    };
    let (a, b) = (limited(&q), limited(&q));
    a.add(vec![new("alpha", 1); 5]).unwrap();
    let first = a.claim("a", &types(&["alpha"])).unwrap().unwrap();
    let second = b.claim("b", &types(&["alpha"])).unwrap().unwrap();
    assert!(
        a.claim("a", &types(&["alpha"])).unwrap().is_none(),
        "limit reached"
    );
    assert!(
        b.claim("b", &types(&["alpha"])).unwrap().is_none(),
        "for every store"
    );
    a.finish(&first.lease, Outcome::Success(Value::Null))
        .unwrap();
    assert!(
        b.claim("b", &types(&["alpha"])).unwrap().is_some(),
        "a slot is free"
    );
    b.release(&second.lease).unwrap();
}

/// A worker with free slots claims several tasks in one step, in claim order and within the
/// per-type limits; several outcomes are recorded in one step, a stale one refused alone.
pub fn batched_claims_and_outcomes(engine: &dyn Engine) {
    let q = engine.fresh();
    let store = engine.open(
        &q,
        Policy {
            limits: [("beta".to_string(), 1)].into(),
            ..Policy::default()
        },
    );
    let added = store
        .add(vec![
            new("alpha", 5),
            new("alpha", 1),
            new("beta", 0),
            new("beta", 0),
            new("alpha", 9),
        ])
        .unwrap();
    let ids: Vec<&str> = added.iter().map(|t| t.id.as_str()).collect();
    let claims = store
        .claim_up_to("w", &types(&["alpha", "beta"]), 3)
        .unwrap();
    let claimed: Vec<&str> = claims.iter().map(|c| c.task.id.as_str()).collect();
    assert_eq!(
        claimed,
        vec![ids[2], ids[1], ids[0]],
        "by priority then id, one beta for its limit of 1"
    );
    assert!(claims.iter().all(|c| c.task.status == TaskStatus::Running));
    let stale = Lease {
        token: "not-the-token".into(),
        ..claims[1].lease.clone()
    };
    let results = store
        .finish_many(&[
            (claims[0].lease.clone(), Outcome::Success(json!(0))),
            (stale, Outcome::Success(json!(1))),
            (claims[2].lease.clone(), Outcome::Success(json!(2))),
        ])
        .unwrap();
    assert!(matches!(&results[0], Ok(t) if t.status == TaskStatus::Completed));
    assert!(
        matches!(&results[1], Err(StoreError::NotHolder { .. })),
        "{results:?}"
    );
    assert!(matches!(&results[2], Ok(t) if t.status == TaskStatus::Completed));
    assert_eq!(
        status(store.as_ref(), ids[2]),
        TaskStatus::Completed,
        "recorded"
    );
    assert_eq!(
        status(store.as_ref(), ids[1]),
        TaskStatus::Running,
        "left alone"
    );
    let rest = store
        .claim_up_to("w", &types(&["alpha", "beta"]), 10)
        .unwrap();
    let rest: Vec<&str> = rest.iter().map(|c| c.task.id.as_str()).collect();
    assert_eq!(rest, vec![ids[3], ids[4]], "the beta slot is free again");
}

/// A lease that is not renewed expires: the task returns after the backoff, counted, and the
/// old holder can neither renew nor finish it; only the holder's token acts on a lease.
pub fn lease_expiry_and_fencing(engine: &dyn Engine) {
    let q = engine.fresh();
    let brief = engine.open(
        &q,
        Policy {
            lease: Duration::from_millis(1),
            backoff: Duration::from_millis(200),
            ..Policy::default()
        },
    );
    let store = engine.open(&q, Policy::default());
    let task = store.add(vec![new("alpha", 5)]).unwrap().remove(0);
    let first = brief.claim("w1", &types(&["alpha"])).unwrap().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert!(
        matches!(brief.renew(&first.lease), Err(StoreError::LeaseLost { .. })),
        "an expired lease stays lost, even before anyone noticed"
    );
    assert_eq!(brief.expire_leases().unwrap(), 1);
    let returned = store.get(&task.id).unwrap();
    assert_eq!(returned.status, TaskStatus::Pending);
    let wait = returned
        .retry_at
        .expect("waits out a backoff")
        .duration_since(Timestamp::now());
    assert!(wait > SignedDuration::from_millis(50), "backoff {wait:?}");
    assert!(
        store.claim("w2", &types(&["alpha"])).unwrap().is_none(),
        "not before the backoff"
    );
    std::thread::sleep(Duration::from_millis(250));
    let second = store.claim("w2", &types(&["alpha"])).unwrap().unwrap();
    assert_eq!(second.lease.attempt, 2);
    assert!(matches!(
        store.finish(&first.lease, Outcome::Success(Value::Null)),
        Err(StoreError::LeaseLost { .. })
    ));
    let forged = Lease {
        token: "0".repeat(32),
        ..second.lease.clone()
    };
    for result in [
        store.renew(&forged).map(drop),
        store
            .finish(&forged, Outcome::Success(Value::Null))
            .map(drop),
        store.release(&forged),
    ] {
        match result {
            Err(StoreError::NotHolder {
                holder, attempt, ..
            }) => {
                assert_eq!((holder.as_str(), attempt), ("w2", 2));
            }
            other => panic!("a forged token was not refused: {other:?}"),
        }
    }
    let done = store
        .finish(&second.lease, Outcome::Success(Value::Null))
        .unwrap();
    assert_eq!(done.status, TaskStatus::Completed);
    assert_eq!(done.history[0].status, AttemptStatus::Expired);
    assert_eq!(done.history[0].finished_by.as_deref(), Some("host expire"));
    assert_eq!(done.history[1].finished_by.as_deref(), Some("w2"));
}

/// An add with one bad entry adds nothing; ids are consecutive and never reused.
pub fn an_add_is_all_or_nothing(engine: &dyn Engine) {
    let q = engine.fresh();
    let store = engine.open(&q, Policy::default());
    let err = store
        .add(vec![new("alpha", 5), new("../x", 5)])
        .unwrap_err();
    assert!(err.to_string().contains("entry 2"), "{err}");
    let err = store
        .add(vec![
            new("alpha", 5),
            NewTask {
                max_attempts: Some(0),
                ..new("alpha", 5)
            },
        ])
        .unwrap_err();
    assert!(err.to_string().contains("maxAttempts"), "{err}");
    assert!(all(store.as_ref()).is_empty());
    let added = store.add(vec![new("alpha", 5); 3]).unwrap();
    let ids: Vec<&str> = added.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["1", "2", "3"]);
}

/// Listings filter, order and page; purge removes finished tasks past an age and nothing
/// else.
pub fn listing_and_purge(engine: &dyn Engine) {
    let q = engine.fresh();
    let store = engine.open(&q, Policy::default());
    store.add(vec![new("alpha", 5); 5]).unwrap();
    store.add(vec![new("beta", 5); 2]).unwrap();
    // Claimed 1, 2, 3 but finished 3, 2, 1 (apart in time: finish times are to the
    // millisecond).
    let claims: Vec<_> = (0..3)
        .map(|_| store.claim("w", &types(&["alpha"])).unwrap().unwrap())
        .collect();
    for claim in claims.iter().rev() {
        std::thread::sleep(std::time::Duration::from_millis(5));
        store
            .finish(&claim.lease, Outcome::Success(json!({"marker": "needle"})))
            .unwrap();
    }
    let by_finish = |newest_first| {
        store
            .list(&TaskQuery {
                statuses: vec![TaskStatus::Completed],
                by_finish: true,
                newest_first,
                limit: Some(2),
                ..TaskQuery::default()
            })
            .unwrap()
            .iter()
            .map(|t| t.id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(by_finish(false), ["3", "2"], "in the order they finished");
    assert_eq!(by_finish(true), ["1", "2"], "the last to finish first");
    let page = |after, limit| {
        store
            .list(&TaskQuery {
                newest_first: true,
                after_id: after,
                limit: Some(limit),
                ..TaskQuery::default()
            })
            .unwrap()
            .iter()
            .map(|t| t.id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(page(None, 3), ["7", "6", "5"]);
    assert_eq!(page(Some(5), 3), ["4", "3", "2"]);
    let completed = store
        .list(&TaskQuery {
            statuses: vec![TaskStatus::Completed],
            text: Some("NEEDLE".into()),
            ..TaskQuery::default()
        })
        .unwrap();
    assert_eq!(completed.len(), 3);
    let beta = store
        .list(&TaskQuery {
            task_type: Some("beta".into()),
            ..TaskQuery::default()
        })
        .unwrap();
    assert_eq!(beta.len(), 2);
    let earlier = Timestamp::now()
        .saturating_sub(SignedDuration::from_hours(1))
        .unwrap();
    assert_eq!(
        store.purge(earlier, &[]).unwrap(),
        0,
        "nothing finished that long ago"
    );
    store.append_log("1", "a line").unwrap();
    let later = Timestamp::now()
        .saturating_add(SignedDuration::from_secs(1))
        .unwrap();
    assert_eq!(store.purge(later, &[TaskStatus::Failed]).unwrap(), 0);
    assert_eq!(store.purge(later, &[]).unwrap(), 3);
    assert_eq!(all(store.as_ref()).len(), 4);
    assert!(matches!(store.get("1"), Err(StoreError::NotFound(_))));
    assert_eq!(counted(store.as_ref(), TaskStatus::Completed), 0);
    assert_eq!(counted(store.as_ref(), TaskStatus::Pending), 4);
    assert_eq!(
        store.add(vec![new("alpha", 5)]).unwrap()[0].id,
        "8",
        "an id is never given out twice, even after its task was purged"
    );
}

/// How many tasks the store's summary counts in `status`.
fn counted(store: &dyn QueueStore, status: TaskStatus) -> usize {
    store
        .summary()
        .unwrap()
        .counts
        .get(&status)
        .copied()
        .unwrap_or(0)
}

/// `remove`: finished tasks by id, with their logs, all or none.
pub fn removing_finished_tasks(engine: &dyn Engine) {
    let q = engine.fresh();
    let store = engine.open(&q, Policy::default());
    store.add(vec![new("alpha", 5); 3]).unwrap();
    let claim = store.claim("w", &types(&["alpha"])).unwrap().unwrap();
    store
        .finish(&claim.lease, Outcome::Success(json!({})))
        .unwrap();
    store.cancel("2").unwrap();
    store.append_log("1", "a line").unwrap();
    let refused = store.remove(&["1".into(), "3".into()]);
    assert!(
        matches!(&refused, Err(StoreError::InvalidTask(why)) if why.contains("task 3 is pending")),
        "{refused:?}"
    );
    assert!(store.get("1").is_ok(), "nothing was removed");
    assert!(matches!(
        store.remove(&["1".into(), "99".into()]),
        Err(StoreError::NotFound(_))
    ));
    store.remove(&["1".into(), "2".into()]).unwrap();
    assert!(matches!(store.get("1"), Err(StoreError::NotFound(_))));
    assert!(matches!(store.get("2"), Err(StoreError::NotFound(_))));
    assert!(
        !matches!(store.read_log("1", 0), Ok((text, _)) if !text.is_empty()),
        "its log went with it"
    );
    assert_eq!(counted(store.as_ref(), TaskStatus::Completed), 0);
    assert_eq!(counted(store.as_ref(), TaskStatus::Pending), 1);
}

/// `edit`: a task that has not started changes; one that has is refused.
pub fn editing_a_task_before_it_starts(engine: &dyn Engine) {
    let q = engine.fresh();
    let store = engine.open(&q, Policy::default());
    store.add(vec![new("alpha", 5); 2]).unwrap();
    let edit = queue::TaskEdit {
        priority: Some(1),
        description: Some("sooner".into()),
        payload: Some(json!({"x": 1})),
        timeout_secs: Some(30),
    };
    let task = store.edit("2", &edit).unwrap();
    assert_eq!(
        (
            task.priority,
            task.description.as_deref(),
            task.timeout_secs
        ),
        (1, Some("sooner"), Some(30))
    );
    let claim = store.claim("w", &types(&["alpha"])).unwrap().unwrap();
    assert_eq!(claim.task.id, "2", "the new priority decides the claim");
    assert_eq!(claim.task.payload, json!({"x": 1}));
    assert!(matches!(
        store.edit("2", &edit),
        Err(StoreError::WrongState { .. })
    ));
    assert!(matches!(
        store.edit("99", &edit),
        Err(StoreError::NotFound(_))
    ));
}

/// Review: a success its role asks to review waits (and the tasks after it with it) until it is
/// approved (completed; they may run) or rejected (pending again, one more attempt, the reason
/// kept); a merge's conflict flags the task for `status` until its branch is merged.
pub fn review_and_branch_states(engine: &dyn Engine) {
    let q = engine.fresh();
    let store = engine.open(&q, Policy::default());
    let alpha = types(&["alpha"]);
    let tasks = store
        .add(vec![
            NewTask {
                max_attempts: Some(1),
                ..new("alpha", 1)
            },
            NewTask {
                after: vec![Dependency::Batch(0)],
                ..new("alpha", 1)
            },
        ])
        .unwrap();
    let (first, second) = (&tasks[0].id, &tasks[1].id);

    let claim = store.claim("w", &alpha).unwrap().unwrap();
    assert_eq!(
        store.work_ahead(&alpha).unwrap().map(|t| t.id),
        Some(first.clone()),
        "the running task, which the blocked one waits behind"
    );
    let waiting = store
        .finish(&claim.lease, Outcome::ForReview(json!({"n": 1})))
        .unwrap();
    assert_eq!(waiting.status, TaskStatus::Review);
    assert_eq!(
        waiting.finished_at, None,
        "waiting for review is not finished"
    );
    assert_eq!(status(store.as_ref(), second), TaskStatus::Blocked);
    assert!(store.claim("w", &alpha).unwrap().is_none());
    assert!(!store.has_work(&alpha).unwrap(), "nothing a worker can do");
    assert_eq!(counted(store.as_ref(), TaskStatus::Review), 1);
    assert!(matches!(
        store.update(second, &|t, now| queue::lifecycle::approve(t, now)),
        Err(StoreError::WrongState { .. })
    ));
    assert!(matches!(
        store.update(first, &|t, now| queue::lifecycle::reject(t, " ", now)),
        Err(StoreError::InvalidTask(_))
    ));

    let rejected = store
        .update(first, &|t, now| {
            queue::lifecycle::reject(t, "tests fail", now)
        })
        .unwrap();
    assert_eq!(rejected.status, TaskStatus::Pending);
    assert_eq!(
        rejected.max_attempts, 2,
        "a rejection gives one more attempt"
    );
    assert_eq!(rejected.reviews.len(), 1);
    assert_eq!(rejected.reviews[0].reason.as_deref(), Some("tests fail"));
    assert_eq!(rejected.reviews[0].verdict, queue::Verdict::Rejected);
    let claim = store.claim("w", &alpha).unwrap().unwrap();
    assert_eq!(&claim.task.id, first);
    assert_eq!(
        claim.task.reviews.len(),
        1,
        "the next attempt sees the reason"
    );
    store
        .finish(&claim.lease, Outcome::ForReview(json!({"n": 2})))
        .unwrap();
    let approved = store
        .update(first, &|t, now| queue::lifecycle::approve(t, now))
        .unwrap();
    assert_eq!(approved.status, TaskStatus::Completed);
    assert!(approved.finished_at.is_some());
    assert_eq!(approved.reviews[1].verdict, queue::Verdict::Approved);
    assert_eq!(
        status(store.as_ref(), second),
        TaskStatus::Pending,
        "approval lets the tasks after it run"
    );

    let conflicted = |store: &dyn QueueStore| -> Vec<String> {
        let query = TaskQuery {
            in_conflict: true,
            ..TaskQuery::default()
        };
        store
            .list(&query)
            .unwrap()
            .into_iter()
            .map(|t| t.id)
            .collect()
    };
    assert!(conflicted(store.as_ref()).is_empty());
    let files = vec!["a.txt".to_string()];
    let flagged = store
        .update(first, &|t, now| {
            queue::lifecycle::note_branch(
                t,
                queue::BranchOutcome::Conflict,
                Some("main"),
                &files,
                now,
            )
        })
        .unwrap();
    assert!(flagged.in_conflict());
    assert_eq!(conflicted(store.as_ref()), vec![first.clone()]);
    store
        .update(first, &|t, now| {
            queue::lifecycle::note_branch(t, queue::BranchOutcome::Merged, Some("main"), &[], now)
        })
        .unwrap();
    assert!(conflicted(store.as_ref()).is_empty());
    assert!(matches!(
        store.update(second, &|t, now| {
            queue::lifecycle::note_branch(t, queue::BranchOutcome::Discarded, None, &[], now)
        }),
        Err(StoreError::WrongState { .. })
    ));

    // Cancelling a task that waits for review cancels the tasks after it.
    let more = store
        .add(vec![
            new("gamma", 1),
            NewTask {
                after: vec![Dependency::Batch(0)],
                ..new("beta", 1)
            },
        ])
        .unwrap();
    let claim = store.claim("w", &types(&["gamma"])).unwrap().unwrap();
    assert_eq!(claim.task.id, more[0].id);
    store
        .finish(&claim.lease, Outcome::ForReview(json!(null)))
        .unwrap();
    let cancelled = store.cancel(&more[0].id).unwrap();
    assert_eq!(cancelled.status, TaskStatus::Cancelled);
    assert_eq!(status(store.as_ref(), &more[1].id), TaskStatus::Cancelled);
}

/// Tasks added together by a fan-out name each other as siblings.
pub fn fanned_out_tasks_name_their_siblings(engine: &dyn Engine) {
    let q = engine.fresh();
    let store = engine.open(&q, Policy::default());
    store.add(vec![new("alpha", 1)]).unwrap();
    let copies = store
        .add(
            (0..3)
                .map(|_| NewTask {
                    siblings: vec![0, 1, 2],
                    ..new("alpha", 1)
                })
                .collect(),
        )
        .unwrap();
    let ids: Vec<&str> = copies.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["2", "3", "4"]);
    assert_eq!(store.get("3").unwrap().siblings, ["2", "4"]);
    assert!(matches!(
        store.add(vec![NewTask {
            siblings: vec![5],
            ..new("alpha", 1)
        }]),
        Err(StoreError::InvalidTask(_))
    ));
}
