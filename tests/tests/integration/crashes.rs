//! Processes killed at any instant leave a store that every command still reads.

use std::fs;
use std::time::Duration;

use integration_tests::{TestQueue, signal};
use nix::sys::signal::Signal;

/// The durability setting the queue's database holds.
fn durability(q: &TestQueue) -> String {
    let conn = rusqlite::Connection::open(q.queue.join("queue.db")).unwrap();
    conn.query_row(
        "SELECT value FROM settings WHERE key = 'durability'",
        [],
        |row| row.get(0),
    )
    .unwrap()
}

#[test]
fn workers_killed_mid_write_leave_a_readable_store() {
    let q = TestQueue::new();
    let file = q.scratch.join("tasks.jsonl");
    let lines: Vec<&str> = (0..400).map(|_| r#"{"type":"noop"}"#).collect();
    fs::write(&file, lines.join("\n")).unwrap();
    q.ok(&["add", "--file", file.to_str().unwrap()]);

    for round in 0..12u64 {
        let worker = q.spawn_worker("noop", &["--name", &format!("victim{round}")]);
        // Kill at varying points: while starting, claiming, writing task files.
        std::thread::sleep(Duration::from_millis(40 + round * 17));
        signal(&worker, Signal::SIGKILL);
        let _ = worker.wait_with_output();
        let status = q.status();
        assert_eq!(
            status["counts"]
                .as_object()
                .unwrap()
                .values()
                .map(|v| v.as_u64().unwrap())
                .sum::<u64>(),
            400,
            "no task lost: {status}"
        );
        q.ok(&["doctor"]);
    }
    // Killed workers show as leftovers, not as a broken store; results still read.
    q.ok(&["results"]);
    q.ok(&["status"]);
}

#[test]
fn a_killed_add_adds_all_or_nothing() {
    let q = TestQueue::new();
    let file = q.scratch.join("tasks.jsonl");
    let lines: Vec<&str> = (0..300).map(|_| r#"{"type":"noop"}"#).collect();
    fs::write(&file, lines.join("\n")).unwrap();
    for round in 0..6u64 {
        let mut add = q
            .host()
            .args(["add", "--file", file.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(5 + round * 15));
        signal(&add, Signal::SIGKILL);
        let _ = add.wait();
        let total: u64 = q.status()["counts"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(total % 300, 0, "a batch was added in part: {total} tasks");
    }
}

#[test]
fn a_relaxed_queue_says_so_works_the_same_and_can_be_made_durable_again() {
    let q = TestQueue::new();
    let said = q.ok(&["init", "--durability", "relaxed"]);
    assert!(said.contains("relaxed"), "{said}");
    assert_eq!(durability(&q), "relaxed");
    let id = q.add(&["--type", "noop"]);
    q.drain("noop", &[]);
    assert_eq!(q.task(&id)["status"], "completed");

    let again = q.ok(&["init"]);
    assert!(again.contains("relaxed"), "init alone keeps the setting");
    assert!(again.contains("a queue already, left as it was"), "{again}");
    assert!(
        q.ok(&["init", "--durability", "durable"])
            .contains("durable")
    );
    assert_eq!(durability(&q), "durable");
    assert_eq!(
        q.task(&id)["status"],
        "completed",
        "nothing lost by the switch"
    );
}
