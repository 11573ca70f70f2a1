//! Property test of the file store: random sequences of add, claim, renew, finish, release,
//! lease expiry, cancel and retry, with the store's invariants checked after every step.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;
use queue::{
    AttemptStatus, Dependency, FileStore, Lease, NewTask, Outcome, QueueStore, StoreError, Task,
    TaskStatus,
};
use serde_json::json;

const TYPES: [&str; 2] = ["alpha", "beta"];

#[derive(Clone, Debug)]
enum Op {
    /// `after`: comes after an existing task (picked from this number) when some.
    Add {
        count: usize,
        kind: usize,
        priority: u32,
        after: Option<usize>,
    },
    /// Claims with a lease that expires at once when `short`, else one that lasts an hour.
    Claim {
        kind: usize,
        short: bool,
    },
    Renew {
        pick: usize,
    },
    /// `how`: 0 success, 1 retryable failure, 2 final failure.
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
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1..4usize, 0..2usize, 0..3u32, prop::option::of(any::<usize>()))
            .prop_map(|(count, kind, priority, after)| Op::Add { count, kind, priority, after }),
        4 => (0..2usize, any::<bool>()).prop_map(|(kind, short)| Op::Claim { kind, short }),
        1 => any::<usize>().prop_map(|pick| Op::Renew { pick }),
        3 => (any::<usize>(), 0..3u8).prop_map(|(pick, how)| Op::Finish { pick, how }),
        1 => any::<usize>().prop_map(|pick| Op::Release { pick }),
        1 => Just(Op::Expire),
        1 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Retry { pick }),
    ]
}

/// Errors a correct store may answer to an operation the sequence got wrong (a lease that
/// expired meanwhile, a cancel of a finished task, a retry of a task whose prerequisite
/// failed).
fn expected(err: &StoreError) -> bool {
    matches!(
        err,
        StoreError::LeaseLost { .. } | StoreError::WrongState { .. } | StoreError::InvalidTask(_)
    )
}

fn names(dir: &Path) -> Vec<String> {
    match fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The task ids that have a marker anywhere below `<root>/<index>/<type>/`, with how many
/// markers each.
fn indexed(root: &Path, index: &str) -> BTreeMap<String, usize> {
    let mut ids = BTreeMap::new();
    let mut count = |name: &str| {
        let id = name.rsplit('-').next().unwrap().trim_start_matches('0');
        *ids.entry(id.to_string()).or_default() += 1;
    };
    fn walk(dir: &Path, count: &mut impl FnMut(&str)) {
        for name in names(dir) {
            if dir.join(&name).is_dir() {
                walk(&dir.join(&name), count);
            } else {
                count(&name);
            }
        }
    }
    for task_type in TYPES {
        walk(&root.join(index).join(task_type), &mut count);
    }
    ids
}

fn check_invariants(root: &Path, store: &FileStore, added: usize) -> Result<(), TestCaseError> {
    let tasks: Vec<Task> = store.tasks().unwrap();
    let ids: Vec<String> = tasks.iter().map(|t| t.id.clone()).collect();
    let want: Vec<String> = (1..=added).map(|i| i.to_string()).collect();
    prop_assert_eq!(ids, want, "every added task is there, once");

    let pending = indexed(root, "pending");
    let delayed = indexed(root, "delayed");
    let running: Vec<String> = names(&root.join("running"));
    let blocked = indexed(root, "blocked");
    let status_of: BTreeMap<&str, TaskStatus> =
        tasks.iter().map(|t| (t.id.as_str(), t.status)).collect();
    let mut counts: BTreeMap<TaskStatus, usize> = BTreeMap::new();
    for task in &tasks {
        *counts.entry(task.status).or_default() += 1;
        let markers = pending.get(&task.id).copied().unwrap_or(0)
            + delayed.get(&task.id).copied().unwrap_or(0);
        let is_running = running.contains(&task.id);
        prop_assert_eq!(
            blocked.contains_key(&task.id),
            task.status == TaskStatus::Blocked,
            "task {} is in blocked/ iff it is blocked",
            &task.id
        );
        let prerequisites: Vec<TaskStatus> =
            task.after.iter().map(|id| status_of[id.as_str()]).collect();
        match task.status {
            TaskStatus::Pending | TaskStatus::Running | TaskStatus::Completed => prop_assert!(
                prerequisites.iter().all(|s| *s == TaskStatus::Completed),
                "task {} started before the tasks it comes after completed",
                &task.id
            ),
            TaskStatus::Blocked => prop_assert!(
                prerequisites.iter().any(|s| *s != TaskStatus::Completed)
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
            TaskStatus::Pending => {
                prop_assert_eq!(markers, 1, "pending task {} is indexed once", &task.id);
                prop_assert!(!is_running);
                prop_assert_eq!(
                    delayed.contains_key(&task.id),
                    task.retry_at.is_some(),
                    "task {} waits for a retry iff it is in delayed/",
                    &task.id
                );
            }
            TaskStatus::Running => {
                prop_assert_eq!(markers, 0);
                prop_assert!(is_running, "running task {} has a running marker", &task.id);
                prop_assert!(task.lease_expires_at.is_some() && task.worker.is_some());
            }
            TaskStatus::Blocked => {
                prop_assert_eq!(markers, 0);
                prop_assert!(!is_running);
            }
            _ => {
                prop_assert_eq!(markers, 0, "finished task {} is not indexed", &task.id);
                prop_assert!(!is_running);
                prop_assert!(task.finished_at.is_some());
            }
        }
        for status in [
            TaskStatus::Completed,
            TaskStatus::Failed,
            TaskStatus::Cancelled,
        ] {
            prop_assert_eq!(
                root.join(status.as_str()).join(&task.id).exists(),
                task.status == status,
                "task {} has a {} marker iff it is {}",
                &task.id,
                status,
                status
            );
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
    }
    prop_assert_eq!(counts.values().sum::<usize>(), added);
    let summary = store.summary().unwrap();
    for status in TaskStatus::ALL {
        prop_assert_eq!(
            summary.counts.get(&status).copied().unwrap_or(0),
            counts.get(&status).copied().unwrap_or(0),
            "summary count of {}",
            status
        );
    }
    prop_assert_eq!(
        pending.len() + delayed.len(),
        counts.get(&TaskStatus::Pending).copied().unwrap_or(0)
    );
    prop_assert_eq!(
        running.len(),
        counts.get(&TaskStatus::Running).copied().unwrap_or(0)
    );
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("q");
    let long = FileStore::init(&root)
        .unwrap()
        .with_lease(Duration::from_secs(3600))
        .with_backoff(Duration::ZERO);
    // Leases from this store expire as soon as they are granted; its retries wait an hour.
    let short = FileStore::open(&root)
        .unwrap()
        .with_lease(Duration::ZERO)
        .with_backoff(Duration::from_secs(3600));
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
            } => {
                let after: Vec<Dependency> = after
                    .filter(|_| added > 0)
                    .map(|n| Dependency::Task((n % added + 1).to_string()))
                    .into_iter()
                    .collect();
                let tasks = (0..count)
                    .map(|_| NewTask {
                        task_type: TYPES[kind].into(),
                        priority: Some(priority),
                        max_attempts: Some(3),
                        payload: json!({}),
                        after: after.clone(),
                        ..NewTask::default()
                    })
                    .collect();
                long.add(tasks).map(|t| added += t.len())
            }
            Op::Claim {
                kind,
                short: is_short,
            } => {
                let store = if is_short { &short } else { &long };
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
            Op::Cancel { .. } | Op::Retry { .. } => Ok(()),
        };
        if let Err(err) = outcome {
            prop_assert!(expected(&err), "unexpected error: {}", err);
        }
        check_invariants(&root, &long, added)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn store_invariants_hold_after_every_step(ops in prop::collection::vec(op(), 1..40)) {
        run(ops)?;
    }
}
