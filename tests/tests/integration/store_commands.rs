//! The store's housekeeping commands: import of an earlier version's folder, export, purge,
//! doctor; and a new queue opened by several processes at once.

use std::fs;
use std::path::Path;
use std::time::Duration;

use integration_tests::TestQueue;
use jiff::Timestamp;
use queue::{Attempt, AttemptStatus, NewTask, TaskStatus};
use serde_json::{Value, json};

/// Writes a queue folder as the folder-of-files store of earlier versions left it: a completed
/// task with its history and log, a pending one, one blocked after it, a paused type.
fn old_queue(dir: &Path) {
    fs::create_dir_all(dir.join("tasks")).unwrap();
    fs::create_dir_all(dir.join("paused/type")).unwrap();
    fs::create_dir_all(dir.join("logs")).unwrap();
    fs::write(
        dir.join("queue.json"),
        r#"{"format": 2, "durability": "durable"}"#,
    )
    .unwrap();
    fs::write(dir.join("next-id"), "4").unwrap();
    fs::write(dir.join("paused/type/noop"), "").unwrap();
    fs::write(dir.join("logs/1.log"), "hello from before\n").unwrap();
    let now = Timestamp::now();
    let new = |description: &str| NewTask {
        task_type: "noop".into(),
        description: Some(description.into()),
        ..NewTask::default()
    };
    let mut done = new("done before").into_task("1".into(), vec![], now);
    done.status = TaskStatus::Completed;
    done.attempts = 1;
    done.worker = Some("old-worker".into());
    done.finished_at = Some(now);
    done.result = Some(json!({"answer": 42}));
    done.history.push(Attempt {
        attempt: 1,
        worker: "old-worker".into(),
        started_at: now,
        finished_at: Some(now),
        status: AttemptStatus::Completed,
        error: None,
        finished_by: None,
        session: None,
    });
    let waiting = new("waiting").into_task("2".into(), vec![], now);
    let mut blocked = new("blocked").into_task("3".into(), vec!["2".into()], now);
    blocked.status = TaskStatus::Blocked;
    for task in [done, waiting, blocked] {
        fs::write(
            dir.join("tasks").join(format!("{}.json", task.id)),
            serde_json::to_vec_pretty(&task).unwrap(),
        )
        .unwrap();
    }
}

#[test]
fn a_folder_of_the_earlier_format_is_named_and_imported_whole() {
    let q = TestQueue::new();
    let old = q.scratch.join("old-queue");
    old_queue(&old);
    let old_arg = old.to_str().unwrap();
    let line = q.fails(&["status", "--queue", old_arg]);
    assert!(
        line.contains("earlier version") && line.contains("host import"),
        "{line}"
    );
    let line = q.fails(&["init", "--queue", old_arg]);
    assert!(line.contains("host import"), "{line}");

    // Into a new queue.
    let said = q.ok(&["import", old_arg]);
    assert!(
        said.contains("imported 3 task(s), 1 pause(s) and 1 log(s)"),
        "{said}"
    );
    let done = q.task("1");
    assert_eq!(done["status"], "completed");
    assert_eq!(done["result"]["answer"], 42);
    assert_eq!(done["history"][0]["worker"], "old-worker");
    assert_eq!(q.task("3")["status"], "blocked");
    assert_eq!(q.task("3")["after"][0], "2");
    assert_eq!(q.status()["paused"][0], "type noop");
    assert_eq!(q.ok(&["logs", "1"]), "hello from before\n");
    assert_eq!(
        q.add(&["--type", "noop"]),
        "4",
        "ids go on after the old ones"
    );
    let line = q.fails(&["import", old_arg]);
    assert!(
        line.contains("already exists") && line.contains("nothing was imported"),
        "{line}"
    );
    assert_eq!(
        q.status()["counts"]["pending"],
        2,
        "a refused import changed nothing"
    );

    // In place: the old folder becomes a queue of this version.
    let said = q.ok(&["import", old_arg, "--queue", old_arg]);
    assert!(said.contains("imported 3 task(s)"), "{said}");
    q.ok(&["resume", "--type", "noop", "--queue", old_arg]);
    q.drain("noop", &["--queue", old_arg]);
    let results: Vec<Value> =
        serde_json::from_str(&q.ok(&["results", "--json", "--queue", old_arg])).unwrap();
    assert_eq!(
        results.len(),
        3,
        "the blocked task ran after its prerequisite"
    );
}

#[test]
fn export_prints_every_task_and_purge_removes_old_finished_ones() {
    let q = TestQueue::new();
    let ids: Vec<String> = (0..3).map(|_| q.add(&["--type", "noop"])).collect();
    q.ok(&["cancel", &ids[0]]);
    let array: Vec<Value> = serde_json::from_str(&q.ok(&["export"])).unwrap();
    assert_eq!(array.len(), 3);
    assert_eq!(array[0]["id"], ids[0].as_str());
    let lines = q.ok(&["export", "--jsonl"]);
    let parsed: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(parsed, array);

    let said = q.ok(&["purge", "--finished-before", "1h"]);
    assert!(said.contains("purged 0"), "{said}");
    let said = q.ok(&["purge", "--finished-before", "0s", "--status", "failed"]);
    assert!(said.contains("purged 0"), "{said}");
    let said = q.ok(&["purge", "--finished-before", "0s"]);
    assert!(said.contains("purged 1"), "{said}");
    assert_eq!(q.status()["counts"]["cancelled"], 0);
    assert_eq!(q.status()["counts"]["pending"], 2);
    assert!(q.fails(&["show", &ids[0]]).contains("no task"));
}

#[test]
fn doctor_says_what_it_checked_and_what_it_found() {
    let q = TestQueue::new();
    let id = q.add(&["--type", "noop"]);
    let report = q.ok(&["doctor"]);
    assert!(
        report.contains("owner-only") && report.contains("integrity"),
        "{report}"
    );
    assert!(!report.contains("PROBLEM"), "{report}");
    let conn = rusqlite::Connection::open(q.queue.join("queue.db")).unwrap();
    conn.execute("UPDATE tasks SET body = 'garbage' WHERE id = ?1", [&id])
        .unwrap();
    drop(conn);
    let output = q.run(&["doctor"]);
    assert_eq!(output.status.code(), Some(1));
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        report.contains("PROBLEM") && report.contains(&format!("task {id}")),
        "{report}"
    );
}

#[test]
fn processes_opening_a_new_queue_at_once_do_not_race_on_its_schema() {
    let q = TestQueue::new();
    // Several rounds: the races (SQLite's journal vanishing while another process lists the
    // folder, two processes making `logs/`) are narrow.
    for round in 0..5 {
        let fresh = q.scratch.join(format!("fresh-{round}"));
        let fresh = fresh.to_str().unwrap();
        let children: Vec<_> = (0..8)
            .map(|_| {
                q.host()
                    .args(["init", "--queue", fresh])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in children {
            let output = child.wait_with_output().unwrap();
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        q.ok(&["add", "--type", "noop", "--queue", fresh]);
        q.ok(&["doctor", "--queue", fresh]);
    }
}

#[test]
fn drain_ends_when_nothing_left_can_become_claimable() {
    let q = TestQueue::new();
    // A paused task, and one blocked behind it: neither can start until someone resumes.
    let first = q.add(&["--type", "noop"]);
    let second = q.add(&["--type", "noop", "--after", &first]);
    q.ok(&["pause", "--task", &first]);
    let started = std::time::Instant::now();
    q.drain("noop", &["--poll", "50ms"]);
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    assert_eq!(q.task(&first)["status"], "pending");
    assert_eq!(q.task(&second)["status"], "blocked");
    // Blocked behind work that can still run: the drain waits for it and runs both.
    q.ok(&["resume", "--task", &first]);
    q.drain("noop", &["--poll", "50ms"]);
    assert_eq!(q.task(&second)["status"], "completed");
}

#[test]
fn list_shows_unfinished_tasks_in_claim_order_with_what_each_waits_for() {
    let q = TestQueue::new();
    let low = q.add(&[
        "--type",
        "noop",
        "--priority",
        "9",
        "--description",
        "later",
    ]);
    let urgent = q.add(&["--type", "noop", "--priority", "1"]);
    let blocked = q.add(&["--type", "noop", "--after", &low]);
    q.ok(&["pause", "--type", "noop"]);
    let done = q.add(&["--type", "sleep", "--payload", r#"{"ms": 1}"#]);
    q.drain("sleeper", &[]);
    let listed: serde_json::Value = serde_json::from_str(&q.ok(&["list", "--json"])).unwrap();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [urgent.as_str(), low.as_str(), blocked.as_str()],
        "{listed:#}"
    );
    assert!(
        !ids.contains(&done.as_str()),
        "finished tasks are not listed"
    );
    assert_eq!(listed[0]["waitsFor"], "paused (type noop)");
    assert_eq!(listed[2]["waitsFor"], format!("after {low}"));
    let text = q.ok(&["tasks", "--status", "blocked"]);
    let row = text.lines().nth(1).unwrap();
    assert!(
        row.starts_with(&blocked) && row.contains(&format!("after {low}")),
        "{text}"
    );
    q.ok(&["resume", "--type", "noop"]);
    let text = q.ok(&["list", "-n", "1"]);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.contains("a noop worker"), "{text}");
}

#[test]
fn wait_blocks_until_tasks_finish_and_says_whether_they_completed() {
    let q = TestQueue::new();
    let slow = q.add(&["--type", "sleep", "--payload", r#"{"ms": 1500}"#]);
    let line = q.fails(&["wait", &slow, "--timeout", "300ms"]);
    assert!(
        line.contains("timed out after 300ms") && line.contains(&slow),
        "{line}"
    );
    let worker = q.spawn_worker("sleeper", &["--drain"]);
    let started = std::time::Instant::now();
    let said = q.ok(&["wait", "--type", "sleep"]);
    assert!(started.elapsed() > Duration::from_millis(800), "it waited");
    assert!(said.contains("1 task(s) completed"), "{said}");
    assert!(worker.wait_with_output().unwrap().status.success());

    let doomed = q.add_failing_once();
    q.drain("flaky", &[]);
    let line = q.fails(&["wait", &doomed, &slow]);
    assert!(line.contains(&format!("{doomed} failed")), "{line}");
}
