//! The conformance suite of the database drivers ([`queue::driver::Driver`]): each primitive the
//! engine builds on, written once and run against every driver (see
//! `tests/integration/conformance.rs`). The rules above them are checked through the engine by
//! [`crate::conformance`].

use jiff::{SignedDuration, Timestamp};
use queue::driver::{Commit, Driver, DriverTx, Finished, TaskRow};
use queue::lifecycle::PauseSet;
use queue::{NewTask, StoreError, Task, TaskQuery, TaskStatus};

/// A task row of `task_type` and `priority` with id `id` (0: to be given by [`insert`]),
/// pending, added at `created`.
fn row(id: i64, task_type: &str, priority: u32, created: Timestamp) -> TaskRow {
    let task = NewTask {
        task_type: task_type.into(),
        priority: Some(priority),
        ..NewTask::default()
    }
    .into_task(id.max(1).to_string(), Vec::new(), created);
    let mut row = TaskRow::of(&task, None).unwrap();
    row.id = id;
    row
}

/// `n` rows like [`row`]'s, to be given ids by [`insert`].
fn rows(n: usize, task_type: &str, now: Timestamp) -> Vec<TaskRow> {
    vec![row(0, task_type, 5, now); n]
}

/// `row` with id `id`, its record too.
fn with_id(mut row: TaskRow, id: i64) -> TaskRow {
    let mut task: Task = serde_json::from_str(&row.body).unwrap();
    task.id = id.to_string();
    row.body = serde_json::to_string(&task).unwrap();
    row.id = id;
    row
}

/// `row` moved to `status` (the record too), with lease secret `token`.
fn moved(mut row: TaskRow, status: TaskStatus, token: Option<&str>) -> TaskRow {
    let mut task: Task = serde_json::from_str(&row.body).unwrap();
    task.status = status;
    if status.is_finished() {
        task.finished_at = Some(Timestamp::now());
    }
    if status == TaskStatus::Running {
        task.lease_expires_at = Some(Timestamp::now() + SignedDuration::from_secs(30));
    }
    let after = std::mem::take(&mut row.after);
    row = TaskRow::of(&task, token).unwrap();
    row.after = after;
    row
}

fn write<D: Driver, T: Send>(
    driver: &D,
    mut work: impl FnMut(&mut D::Tx<'_>) -> Result<T, StoreError> + Send,
) -> T {
    driver.write(Commit::AsConfigured, &mut work).unwrap()
}

fn read<D: Driver, T: Send>(
    driver: &D,
    mut work: impl FnMut(&mut D::Tx<'_>) -> Result<T, StoreError> + Send,
) -> T {
    driver.read(&mut work).unwrap()
}

/// Adds rows with ids reserved for them; returns the ids.
fn insert<D: Driver>(driver: &D, mut rows: Vec<TaskRow>) -> Vec<i64> {
    write(driver, |tx| {
        let first = tx.reserve_ids(rows.len())?;
        for (n, row) in rows.iter_mut().enumerate() {
            *row = with_id(row.clone(), first + n as i64);
        }
        tx.insert(&rows)?;
        Ok(rows.iter().map(|r| r.id).collect())
    })
}

/// Ids are consecutive per batch and never given out twice, even after their tasks were
/// deleted; a batch of rows and the edges to their prerequisites read back whole.
pub fn ids_rows_and_edges_round_trip<D: Driver>(driver: &D) {
    let now = Timestamp::now();
    let first = insert(driver, vec![row(0, "a", 5, now), row(0, "a", 5, now)]);
    assert_eq!(first[1], first[0] + 1);
    let mut after = row(0, "a", 5, now);
    after.after = vec![first[0], first[1]];
    let third = insert(driver, vec![after])[0];
    assert_eq!(third, first[1] + 1);

    let stored = read(driver, |tx| tx.tasks(&[third, first[0], 999_999]));
    assert_eq!(
        stored.iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![first[0], third],
        "in id order, missing ids left out"
    );
    let task: Task = serde_json::from_str(&stored[1].body).unwrap();
    assert_eq!(task.task_type, "a");
    assert!(stored[0].has_dependents && !stored[1].has_dependents);
    let pairs = read(driver, |tx| tx.dependents(&[first[0], first[1]]));
    assert_eq!(pairs, vec![(first[0], third), (first[1], third)]);

    // Deleted, finished: the id is still never given again.
    let done = moved(row(third, "a", 5, now), TaskStatus::Completed, None);
    write(driver, |tx| tx.update(std::slice::from_ref(&done)));
    let deleted = write(driver, |tx| {
        tx.delete_finished(Finished::Ids(&[third, first[0]]))
    });
    assert_eq!(deleted, vec![third], "only the finished one");
    assert!(read(driver, |tx| tx.dependents(&[first[0]])).is_empty());
    let next = insert(driver, vec![row(0, "a", 5, now)])[0];
    assert!(next > third, "{next} after {third}");
}

/// A write that fails applies nothing.
pub fn a_failed_write_applies_nothing<D: Driver>(driver: &D) {
    let now = Timestamp::now();
    let result = driver.write(Commit::AsConfigured, &mut |tx| {
        let id = tx.reserve_ids(1)?;
        tx.insert(&[row(id, "a", 5, now)])?;
        tx.set_pause("queue", "", true)?;
        Err::<(), _>(StoreError::InvalidTask("refused".into()))
    });
    assert!(matches!(result, Err(StoreError::InvalidTask(_))));
    assert!(read(driver, |tx| tx.select(&TaskQuery::default())).is_empty());
    assert!(read(driver, |tx| tx.pauses()).is_empty());
}

/// A write whose work panics applies nothing and leaves the driver whole: more of them than a
/// pool holds connections, and a write after them still runs (a connection lost to each panic
/// would leave it waiting for ever).
pub fn a_panicking_write_leaves_the_driver_usable<D: Driver>(driver: &D) {
    let now = Timestamp::now();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for _ in 0..queue::POSTGRES_POOL_SIZE + 2 {
                let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let _ = driver.write::<()>(Commit::AsConfigured, &mut |tx| {
                        let id = tx.reserve_ids(1)?;
                        tx.insert(&[row(id, "a", 5, now)])?;
                        panic!("a handler bug");
                    });
                }));
                assert!(panicked.is_err());
            }
            let id = insert(driver, vec![row(0, "a", 5, now)])[0];
            let _ = done.send(id);
        });
        match finished.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(id) => {
                let ids: Vec<i64> = read(driver, |tx| tx.select(&TaskQuery::default()))
                    .iter()
                    .map(|(id, _)| *id)
                    .collect();
                assert_eq!(ids, vec![id], "nothing of the panicking writes stayed");
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                panic!("a write after panicking writes failed")
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                // The writes hang: failing here is the only way out of the scope.
                eprintln!("writes after panicking writes did not finish in 60 s");
                std::process::exit(1);
            }
        }
    });
}

/// A running task's lease secret stays through updates that give none, and goes when it stops
/// running; a claim's update gives a new one.
pub fn lease_secrets_stay_while_running<D: Driver>(driver: &D) {
    let now = Timestamp::now();
    let id = insert(driver, vec![row(0, "a", 5, now)])[0];
    let base = row(id, "a", 5, now);
    let token = |driver: &D| read(driver, |tx| tx.tasks(&[id]))[0].token.clone();
    write(driver, |tx| {
        tx.update(&[moved(base.clone(), TaskStatus::Running, Some("s1"))])
    });
    assert_eq!(token(driver).as_deref(), Some("s1"));
    write(driver, |tx| {
        tx.update(&[moved(base.clone(), TaskStatus::Running, None)])
    });
    assert_eq!(token(driver).as_deref(), Some("s1"), "kept by a renewal");
    write(driver, |tx| {
        tx.update(&[moved(base.clone(), TaskStatus::Pending, None)])
    });
    assert_eq!(token(driver), None, "gone when it stops running");
}

/// Candidates: claimable tasks of each type (pending, backoff over, not skipped), best first by
/// priority then id, at most so many per type; with `by_age`, the oldest so many of each
/// priority.
pub fn candidates_come_in_claim_order<D: Driver>(driver: &D) {
    let now = Timestamp::now();
    let mut later = row(0, "a", 1, now);
    later.retry_at = Some((now + SignedDuration::from_secs(60)).as_millisecond());
    let ids = insert(
        driver,
        vec![
            row(0, "a", 5, now),
            row(0, "a", 1, now),
            row(0, "a", 5, now),
            later,
            row(0, "b", 0, now),
            row(0, "c", 0, now),
        ],
    );
    let found = |types: &[&str], per_type: usize, skip: &[i64], by_age: bool| {
        let types: Vec<String> = types.iter().map(|t| t.to_string()).collect();
        write(driver, |tx| {
            tx.candidates(&types, now, per_type, skip, by_age)
        })
        .iter()
        .map(|c| c.id)
        .collect::<Vec<_>>()
    };
    assert_eq!(found(&["a"], 10, &[], false), vec![ids[1], ids[0], ids[2]]);
    assert_eq!(found(&["a"], 2, &[], false), vec![ids[1], ids[0]]);
    assert_eq!(found(&["a"], 10, &[ids[1]], false), vec![ids[0], ids[2]]);
    let mut both = found(&["a", "b"], 1, &[], false);
    both.sort_unstable();
    assert_eq!(both, vec![ids[1], ids[4]], "one per type, c not asked");
    let mut by_age = found(&["a"], 1, &[], true);
    by_age.sort_unstable();
    assert_eq!(
        by_age,
        vec![ids[0], ids[1]],
        "the oldest of priorities 5 and 1"
    );
    let mut by_age = found(&["a"], 2, &[], true);
    by_age.sort_unstable();
    assert_eq!(
        by_age,
        vec![ids[0], ids[1], ids[2]],
        "the two oldest of each priority"
    );
}

/// A claim view holds what `tasks`, `candidates` and `pauses` read apart: the leased tasks
/// with their secrets and whether tasks come after them, the candidates in claim order, and
/// every pause (paused tasks are still candidates: the engine passes them over).
pub fn claim_view_reads_what_the_primitives_read<D: Driver>(driver: &D) {
    let now = Timestamp::now();
    let mut ids = insert(driver, [rows(3, "a", now), rows(2, "b", now)].concat());
    write(driver, |tx| {
        tx.update(&[moved(
            row(ids[0], "a", 5, now),
            TaskStatus::Running,
            Some("secret"),
        )])
    });
    let mut after = row(0, "c", 5, now);
    after.after = vec![ids[0]];
    insert(driver, vec![moved(after, TaskStatus::Blocked, None)]);
    write(driver, |tx| tx.set_pause("task", &ids[2].to_string(), true));
    let types = vec!["a".to_string(), "b".to_string()];
    let leased = vec![ids[0], ids[1]];
    let (view, apart) = write(driver, |tx| {
        let view = tx.claim_view(&leased, &types, now, 5, &[ids[4]], false)?;
        let apart = (
            tx.tasks(&leased)?,
            tx.candidates(&types, now, 5, &[ids[4]], false)?,
            tx.pauses()?,
        );
        Ok((view, apart))
    });
    let summary = |tasks: &[queue::driver::StoredTask]| {
        tasks
            .iter()
            .map(|t| (t.id, t.token.clone(), t.has_dependents, t.body.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(summary(&view.leased), summary(&apart.0));
    assert_eq!(
        summary(&view.leased)
            .iter()
            .map(|(id, token, deps, _)| (*id, token.clone(), *deps))
            .collect::<Vec<_>>(),
        vec![(ids[0], Some("secret".into()), true), (ids[1], None, false)]
    );
    let candidates = |c: &[queue::driver::Candidate]| {
        let mut found: Vec<(i64, u32, i64)> =
            c.iter().map(|c| (c.id, c.priority, c.created_at)).collect();
        found.sort_unstable();
        found
    };
    assert_eq!(candidates(&view.candidates), candidates(&apart.1));
    ids.sort_unstable();
    assert_eq!(
        candidates(&view.candidates)
            .iter()
            .map(|(id, ..)| *id)
            .collect::<Vec<_>>(),
        vec![ids[1], ids[2], ids[3]],
        "pending a and b, the running one and the skipped one left out, the paused one in"
    );
    assert_eq!(view.pauses, vec![("task".into(), ids[2].to_string())]);
    assert_eq!(view.pauses, apart.2);
    let empty = write(driver, |tx| tx.claim_view(&[], &[], now, 5, &[], false));
    assert!(empty.leased.is_empty() && empty.candidates.is_empty());
    assert_eq!(empty.pauses.len(), 1);
}

/// Counts follow every insert, move and delete; `running` reads them; nothing is wrong.
pub fn counts_follow_the_rows<D: Driver>(driver: &D) {
    let now = Timestamp::now();
    let ids = insert(driver, [rows(2, "a", now), rows(1, "b", now)].concat());
    write(driver, |tx| {
        tx.update(&[moved(
            row(ids[0], "a", 5, now),
            TaskStatus::Running,
            Some("s"),
        )])
    });
    write(driver, |tx| {
        tx.update(&[moved(row(ids[2], "b", 5, now), TaskStatus::Failed, None)])
    });
    let mut counts = read(driver, |tx| tx.counts());
    counts.sort();
    assert_eq!(
        counts,
        vec![
            ("failed".into(), "b".into(), 1),
            ("pending".into(), "a".into(), 1),
            ("running".into(), "a".into(), 1),
        ]
    );
    assert_eq!(write(driver, |tx| tx.running("a")), 1);
    assert_eq!(write(driver, |tx| tx.running("b")), 0);
    write(driver, |tx| tx.delete_finished(Finished::Ids(&[ids[2]])));
    assert!(
        !read(driver, |tx| tx.counts())
            .iter()
            .any(|(_, t, _)| t == "b")
    );
    assert!(read(driver, |tx| tx.wrong_counts()).is_empty());
}

/// Expired leases: running tasks whose lease ended, no others.
pub fn expired_leases_are_found<D: Driver>(driver: &D) {
    let now = Timestamp::now();
    let ids = insert(driver, rows(3, "a", now));
    let mut gone = moved(row(ids[0], "a", 5, now), TaskStatus::Running, Some("s"));
    gone.lease_expires_at = Some((now - SignedDuration::from_secs(1)).as_millisecond());
    let live = moved(row(ids[1], "a", 5, now), TaskStatus::Running, Some("t"));
    write(driver, |tx| tx.update(&[gone.clone(), live.clone()]));
    let expired: Vec<i64> = write(driver, |tx| tx.expired(now))
        .iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(expired, vec![ids[0]]);
}

/// Pauses, settings and worker records: set, read, replaced, removed.
pub fn pauses_settings_and_workers<D: Driver>(driver: &D) {
    write(driver, |tx| {
        tx.set_pause("type", "a", true)?;
        tx.set_pause("type", "a", true)?;
        tx.set_pause("task", "7", true)
    });
    let mut pauses = read(driver, |tx| tx.pauses());
    pauses.sort();
    assert_eq!(
        pauses,
        vec![("task".into(), "7".into()), ("type".into(), "a".into())]
    );
    write(driver, |tx| tx.set_pause("type", "a", false));
    assert_eq!(read(driver, |tx| tx.pauses()).len(), 1);

    write(driver, |tx| tx.set_setting("k", Some("1")));
    write(driver, |tx| tx.set_setting("k", Some("2")));
    assert_eq!(read(driver, |tx| tx.setting("k")).as_deref(), Some("2"));
    write(driver, |tx| tx.set_setting("k", None));
    assert_eq!(read(driver, |tx| tx.setting("k")), None);
    assert_eq!(write(driver, |tx| tx.keep_setting("id", "first")), "first");
    assert_eq!(
        write(driver, |tx| tx.keep_setting("id", "second")),
        "first",
        "kept"
    );
    assert_eq!(
        read(driver, |tx| tx.setting("id")).as_deref(),
        Some("first")
    );

    write(driver, |tx| tx.put_worker("w2", "{}"));
    write(driver, |tx| tx.put_worker("w1", "{\"a\":1}"));
    write(driver, |tx| tx.put_worker("w1", "{\"a\":2}"));
    assert_eq!(
        read(driver, |tx| tx.workers()),
        vec![
            ("w1".into(), "{\"a\":2}".into()),
            ("w2".into(), "{}".into())
        ]
    );
    write(driver, |tx| tx.remove_worker("w2"));
    assert_eq!(read(driver, |tx| tx.workers()).len(), 1);
}

/// Listings filter by state, type and text, order by id either way, page and limit.
pub fn listings_filter_order_and_page<D: Driver>(driver: &D) {
    let now = Timestamp::now();
    let mut described = row(0, "b", 5, now);
    let mut task: Task = serde_json::from_str(&described.body).unwrap();
    task.description = Some("Find 100% of it".into());
    described.body = serde_json::to_string(&task).unwrap();
    let ids = insert(
        driver,
        vec![row(0, "a", 5, now), described, row(0, "a", 5, now)],
    );
    let select = |query: TaskQuery| -> Vec<i64> {
        read(driver, |tx| tx.select(&query))
            .iter()
            .map(|r| r.0)
            .collect()
    };
    assert_eq!(select(TaskQuery::default()), ids);
    assert_eq!(
        select(TaskQuery {
            task_type: Some("a".into()),
            newest_first: true,
            ..TaskQuery::default()
        }),
        vec![ids[2], ids[0]]
    );
    assert_eq!(
        select(TaskQuery {
            text: Some("100%".into()),
            ..TaskQuery::default()
        }),
        vec![ids[1]],
        "% is no wildcard"
    );
    assert_eq!(
        select(TaskQuery {
            after_id: Some(ids[0] as u64),
            limit: Some(1),
            ..TaskQuery::default()
        }),
        vec![ids[1]]
    );
    assert_eq!(
        select(TaskQuery {
            statuses: vec![TaskStatus::Running],
            ..TaskQuery::default()
        }),
        Vec::<i64>::new()
    );
}

/// The first work a worker waits for: a running or claimable task of its types, or one
/// upstream of its blocked tasks; paused tasks and skipped ones are no work.
pub fn first_work_is_found_upstream_and_not_when_paused<D: Driver>(driver: &D) {
    let now = Timestamp::now();
    let ids = insert(driver, vec![row(0, "up", 5, now)]);
    let mut blocked = moved(row(1, "down", 5, now), TaskStatus::Blocked, None);
    blocked.after = vec![ids[0]];
    insert(driver, vec![blocked]);
    let work = |types: &[&str], skip: &[i64], paused: &PauseSet| {
        let types: Vec<String> = types.iter().map(|t| t.to_string()).collect();
        read(driver, |tx| tx.first_work(&types, skip, paused)).map(|(id, _)| id)
    };
    let none = PauseSet::default();
    assert_eq!(
        work(&["down"], &[], &none),
        Some(ids[0]),
        "upstream of a blocked task"
    );
    assert_eq!(work(&["up"], &[], &none), Some(ids[0]));
    assert_eq!(work(&["other"], &[], &none), None);
    assert_eq!(work(&["up"], &[ids[0]], &none), None, "skipped");
    let by_type = PauseSet::new(&[("type".into(), "up".into())]);
    assert_eq!(
        work(&["down"], &[], &by_type),
        None,
        "its prerequisite is paused"
    );
    let by_task = PauseSet::new(&[("task".into(), ids[0].to_string())]);
    assert_eq!(work(&["up"], &[], &by_task), None);
    let queue = PauseSet::new(&[("queue".into(), String::new())]);
    assert_eq!(work(&["up"], &[], &queue), None);
    // Running work is work even when paused.
    write(driver, |tx| {
        tx.update(&[moved(
            row(ids[0], "up", 5, now),
            TaskStatus::Running,
            Some("s"),
        )])
    });
    assert_eq!(work(&["up"], &[], &queue), Some(ids[0]));
}

/// Purging by age removes up to the limit of the finished states asked for, older than the
/// time, with their pauses.
pub fn purging_by_age_respects_states_time_and_limit<D: Driver>(driver: &D) {
    let now = Timestamp::now();
    let ids = insert(driver, rows(4, "a", now));
    let done: Vec<TaskRow> = ids[..3]
        .iter()
        .map(|id| moved(row(*id, "a", 5, now), TaskStatus::Completed, None))
        .collect();
    write(driver, |tx| tx.update(&done));
    write(driver, |tx| tx.set_pause("task", &ids[0].to_string(), true));
    let later = (Timestamp::now() + SignedDuration::from_secs(1)).as_millisecond();
    let purge = |statuses: &'static [&'static str], limit: usize| {
        write(driver, |tx| {
            tx.delete_finished(Finished::Before {
                before: later,
                statuses,
                limit,
            })
        })
    };
    assert!(purge(&["failed"], 10).is_empty());
    assert_eq!(purge(&["completed"], 2).len(), 2);
    assert_eq!(purge(&["completed", "failed"], 10).len(), 1);
    let left: Vec<i64> = read(driver, |tx| tx.select(&TaskQuery::default()))
        .iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(left, vec![ids[3]]);
    assert!(
        read(driver, |tx| tx.pauses()).is_empty(),
        "the purged task's pause went with it"
    );
}
