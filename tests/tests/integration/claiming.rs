//! Claim order, concurrent workers, and what a worker does around each task.

use std::process::Child;
use std::time::Duration;

use integration_tests::{TestQueue, signal};
use nix::sys::signal::Signal;

fn started_order(q: &TestQueue) -> Vec<String> {
    let mut tasks = q.results();
    tasks.sort_by_key(|t| t["startedAt"].as_str().unwrap().to_string());
    tasks
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn lower_priority_number_starts_first_and_equal_priorities_oldest_first() {
    let q = TestQueue::new();
    let p9 = q.add(&["--type", "noop", "--priority", "9"]);
    let p1 = q.add(&["--type", "noop", "--priority", "1"]);
    let p5 = q.add(&["--type", "noop", "--priority", "5"]);
    let older = q.add(&["--type", "noop", "--priority", "3"]);
    let newer = q.add(&["--type", "noop", "--priority", "3"]);
    q.drain("noop", &[]);
    assert_eq!(started_order(&q), [p1, older, newer, p5, p9]);
}

#[test]
fn default_priority_is_five() {
    let q = TestQueue::new();
    let id = q.add(&["--type", "noop"]);
    assert_eq!(q.task(&id)["priority"], 5);
}

#[test]
fn a_worker_claims_only_its_roles_types() {
    let q = TestQueue::new();
    let noop = q.add(&["--type", "noop"]);
    let other = q.add(&["--type", "panic"]);
    q.drain("noop", &[]);
    assert_eq!(q.task(&noop)["status"], "completed");
    assert_eq!(q.task(&other)["status"], "pending");
}

#[test]
fn status_shows_a_busy_worker_with_its_task_and_progress() {
    let q = TestQueue::new();
    let id = q.add(&["--type", "sleep", "--payload", r#"{"ms": 3000}"#]);
    let mut worker = q.spawn_worker("sleeper", &["--name", "sleepy"]);
    q.wait_for(
        "the worker to report progress",
        Duration::from_secs(20),
        |q| {
            let status = q.status();
            status["workers"].as_array().is_some_and(|ws| {
                ws.iter().any(|w| {
                    w["name"] == "sleepy"
                        && w["state"] == "busy"
                        && w["tasks"][0]["id"] == id.as_str()
                        && w["tasks"][0]["progress"].as_u64().unwrap_or(0) > 0
                })
            })
        },
    );
    let text = q.ok(&["status"]);
    assert!(text.contains("sleepy") && text.contains("busy"), "{text}");
    signal(&worker, Signal::SIGKILL);
    worker.wait().unwrap();
}

/// A `sleeper` worker with the given grace period, busy with a task that sleeps `ms`.
fn running_sleeper(q: &TestQueue, ms: u64, grace: &str) -> (String, Child) {
    let id = q.add(&[
        "--type",
        "sleep",
        "--payload",
        &format!(r#"{{"ms": {ms}}}"#),
    ]);
    let worker = q.spawn_worker("sleeper", &["--grace", grace]);
    q.wait_for("the task to start", Duration::from_secs(20), |q| {
        q.task(&id)["status"] == "running"
    });
    (id, worker)
}

#[test]
fn ctrl_c_lets_the_running_task_finish_within_the_grace_period() {
    let q = TestQueue::new();
    let (id, worker) = running_sleeper(&q, 1500, "30s");
    signal(&worker, Signal::SIGINT);
    let output = worker.wait_with_output().unwrap();
    assert!(output.status.success());
    let task = q.task(&id);
    assert_eq!(task["status"], "completed", "{task}");
    assert!(
        q.status()["workers"].as_array().unwrap().is_empty(),
        "worker record removed"
    );
}

#[test]
fn ctrl_c_returns_an_unfinished_task_to_pending_when_the_grace_period_ends() {
    let q = TestQueue::new();
    let (id, worker) = running_sleeper(&q, 60000, "200ms");
    signal(&worker, Signal::SIGINT);
    let output = worker.wait_with_output().unwrap();
    assert!(output.status.success());
    let task = q.task(&id);
    assert_eq!(task["status"], "pending", "{task}");
    assert_eq!(task["attempts"], 0, "a shutdown does not use up an attempt");
}

#[test]
fn a_second_ctrl_c_returns_the_task_at_once() {
    let q = TestQueue::new();
    let (id, worker) = running_sleeper(&q, 60000, "10m");
    signal(&worker, Signal::SIGINT);
    std::thread::sleep(Duration::from_millis(200));
    signal(&worker, Signal::SIGINT);
    let output = worker.wait_with_output().unwrap();
    assert!(output.status.success());
    assert_eq!(q.task(&id)["status"], "pending");
}

#[test]
fn an_idle_worker_is_woken_by_a_resume_a_retry_and_a_finished_prerequisite() {
    let q = TestQueue::new();
    // Polling alone would take a minute: each pickup below must come from the doorbell.
    let mut worker = q.spawn_worker("noop", &["--poll", "60s"]);
    q.wait_for("the worker to be idle", Duration::from_secs(20), |q| {
        q.status()["workers"][0]["state"] == "idle"
    });
    let picked_up_soon = |q: &TestQueue, id: &str| {
        let since = std::time::Instant::now();
        q.wait_for("the task to complete", Duration::from_secs(5), |q| {
            q.task(id)["status"] == "completed"
        });
        assert!(
            since.elapsed() < Duration::from_secs(2),
            "{:?}",
            since.elapsed()
        );
    };

    q.ok(&["pause", "--type", "noop"]);
    let paused = q.add(&["--type", "noop"]);
    let cancelled = q.add(&["--type", "noop"]);
    q.ok(&["cancel", &cancelled]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(q.task(&paused)["status"], "pending");
    q.ok(&["resume", "--type", "noop"]);
    picked_up_soon(&q, &paused);

    q.ok(&["retry", &cancelled]);
    picked_up_soon(&q, &cancelled);

    // The prerequisite is of a type this worker does not claim; an assistant takes it by hand.
    let first = q.add(&["--type", "inspect", "--target", q.scratch.to_str().unwrap()]);
    let second = q.add(&["--type", "noop", "--after", &first]);
    let claimed: serde_json::Value =
        serde_json::from_str(&q.ok(&["claim", "--role", "inspector", "--name", "me", "--json"]))
            .unwrap();
    let token = claimed["leaseToken"].as_str().unwrap();
    q.ok(&["complete", &first, "--token", token]);
    picked_up_soon(&q, &second);

    signal(&worker, Signal::SIGTERM);
    assert!(worker.wait().unwrap().success());
}

#[test]
fn an_idle_worker_is_woken_by_a_new_task_without_polling() {
    let q = TestQueue::new();
    // Polling alone would take a minute: only the file-system notification can be this quick.
    let mut worker = q.spawn_worker("noop", &["--poll", "60s"]);
    q.wait_for("the worker to be idle", Duration::from_secs(20), |q| {
        q.status()["workers"][0]["state"] == "idle"
    });
    for _ in 0..3 {
        let id = q.add(&["--type", "noop"]);
        let added = std::time::Instant::now();
        q.wait_for("the new task to complete", Duration::from_secs(5), |q| {
            q.task(&id)["status"] == "completed"
        });
        assert!(
            added.elapsed() < Duration::from_secs(2),
            "{:?}",
            added.elapsed()
        );
    }
    signal(&worker, Signal::SIGTERM);
    assert!(worker.wait().unwrap().success());
}
