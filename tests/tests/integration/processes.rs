//! Nothing a task starts outlives its attempt: not when the worker is killed, not on timeout,
//! cancel or a crash of the handler process, not on a second Ctrl+C.

use std::time::{Duration, Instant};

use integration_tests::{TestQueue, signal};
use nix::sys::signal::Signal;
use serde_json::json;

/// A `sleep` argument no other process on the machine uses, so that its processes can be
/// counted.
fn unique_seconds() -> String {
    format!(
        "{}.{}",
        300 + fastrand::u32(0..600),
        fastrand::u32(100_000..999_999)
    )
}

/// The live processes whose command line is exactly `sleep SECONDS`.
fn sleeps(seconds: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .collect();
        if args.len() == 2 && args[0].ends_with(b"sleep") && args[1] == seconds.as_bytes() {
            found.push(pid);
        }
    }
    found
}

fn wait_for_sleeps(seconds: &str, count: usize) {
    let start = Instant::now();
    while sleeps(seconds).len() < count {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the task never started its {count} `sleep {seconds}`"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_all_gone_within(seconds: &str, limit: Duration, what: &str) {
    let start = Instant::now();
    loop {
        let left = sleeps(seconds);
        if left.is_empty() {
            return;
        }
        if start.elapsed() > limit {
            for pid in &left {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(*pid as i32),
                    Signal::SIGKILL,
                );
            }
            panic!("{what}: `sleep {seconds}` still runs after {limit:?} (pids {left:?})");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_worker_killed_with_sigkill_takes_every_command_of_its_tasks_with_it() {
    let q = TestQueue::new();
    // Through the tester: its command in a process group of its own.
    let tester_sleep = unique_seconds();
    q.add(&[
        "--type",
        "test",
        "--target",
        q.scratch.to_str().unwrap(),
        "--payload",
        &json!({"command": ["sleep", tester_sleep]}).to_string(),
    ]);
    // Through a plugin: a child in its own group, and one orphaned at once.
    let plugin_sleep = unique_seconds();
    q.add(&[
        "--type",
        "spawn",
        "--payload",
        &json!({"command": ["sleep", plugin_sleep]}).to_string(),
    ]);
    let mut tester = q.spawn_worker("tester", &[]);
    let mut spawner = q.spawn_worker("spawner", &[]);
    wait_for_sleeps(&tester_sleep, 1);
    wait_for_sleeps(&plugin_sleep, 2);
    signal(&tester, Signal::SIGKILL);
    signal(&spawner, Signal::SIGKILL);
    // Not `wait_with_output`: a surviving command would hold the worker's stderr open.
    tester.wait().unwrap();
    spawner.wait().unwrap();
    assert_all_gone_within(
        &tester_sleep,
        Duration::from_secs(2),
        "tester worker killed",
    );
    assert_all_gone_within(
        &plugin_sleep,
        Duration::from_secs(2),
        "spawner worker killed",
    );
}

#[test]
fn timeout_cancel_crash_and_a_second_ctrl_c_end_every_process_of_the_attempt() {
    let q = TestQueue::new();
    let spawn = |seconds: &str, extra: serde_json::Value| {
        let mut payload = json!({"command": ["sleep", seconds]});
        payload
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        payload.to_string()
    };
    let mut worker = q.spawn_worker("spawner", &["--name", "w"]);

    // A handler that ignores the stop request and is killed at its timeout.
    let timed = unique_seconds();
    let id = q.add(&[
        "--type",
        "spawn",
        "--timeout",
        "1s",
        "--max-attempts",
        "1",
        "--payload",
        &spawn(&timed, json!({"ignoreStop": true})),
    ]);
    wait_for_sleeps(&timed, 2);
    q.wait_for("the timeout", Duration::from_secs(20), |q| {
        q.task(&id)["status"] == "failed"
    });
    assert_all_gone_within(&timed, Duration::from_secs(2), "timed out");

    // A handler that stops when cancelled: what it started ends when it returns.
    let cancelled = unique_seconds();
    let id = q.add(&[
        "--type",
        "spawn",
        "--payload",
        &spawn(&cancelled, json!({})),
    ]);
    wait_for_sleeps(&cancelled, 2);
    q.ok(&["cancel", &id]);
    q.wait_for("the cancel", Duration::from_secs(20), |q| {
        q.task(&id)["status"] == "cancelled"
    });
    assert_all_gone_within(&cancelled, Duration::from_secs(2), "cancelled");

    // A handler process that aborts leaves orphans to the worker, which ends them.
    let crashed = unique_seconds();
    let id = q.add(&[
        "--type",
        "spawn",
        "--max-attempts",
        "1",
        "--payload",
        &spawn(&crashed, json!({"abort": true})),
    ]);
    q.wait_for("the crash", Duration::from_secs(20), |q| {
        q.task(&id)["status"] == "failed"
    });
    assert!(q.task(&id)["error"].as_str().unwrap().contains("aborted"));
    assert_all_gone_within(&crashed, Duration::from_secs(2), "handler process aborted");

    // A second Ctrl+C returns the task and ends what it started.
    let interrupted = unique_seconds();
    let id = q.add(&[
        "--type",
        "spawn",
        "--payload",
        &spawn(&interrupted, json!({"ignoreStop": true})),
    ]);
    wait_for_sleeps(&interrupted, 2);
    signal(&worker, Signal::SIGINT);
    std::thread::sleep(Duration::from_millis(200));
    signal(&worker, Signal::SIGINT);
    assert!(worker.wait().unwrap().success());
    assert_all_gone_within(&interrupted, Duration::from_secs(2), "second Ctrl+C");
    assert_eq!(q.task(&id)["status"], "pending", "returned to the queue");
}
