//! Processes killed at any instant leave a store that every command still reads.

use std::fs;
use std::time::Duration;

use integration_tests::{TestQueue, signal};
use nix::sys::signal::Signal;
use serde_json::Value;

fn every_store_file_parses(q: &TestQueue) {
    for dir in ["tasks", "workers"] {
        for entry in fs::read_dir(q.queue.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            let bytes = fs::read(&path).unwrap();
            serde_json::from_slice::<Value>(&bytes)
                .unwrap_or_else(|err| panic!("{} does not parse: {err}", path.display()));
        }
    }
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
        every_store_file_parses(&q);
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
    let marker: Value =
        serde_json::from_slice(&fs::read(q.queue.join("queue.json")).unwrap()).unwrap();
    assert_eq!(marker["durability"], "relaxed");
    let id = q.add(&["--type", "noop"]);
    q.drain("noop", &[]);
    assert_eq!(q.task(&id)["status"], "completed");

    assert!(
        q.ok(&["init"]).contains("relaxed"),
        "init alone keeps the setting"
    );
    assert!(
        q.ok(&["init", "--durability", "durable"])
            .contains("durable")
    );
    let marker: Value =
        serde_json::from_slice(&fs::read(q.queue.join("queue.json")).unwrap()).unwrap();
    assert_eq!(marker["durability"], "durable");
    assert_eq!(
        q.task(&id)["status"],
        "completed",
        "nothing lost by the switch"
    );
}
