//! At-least-once execution: killed workers, crashing and hanging handlers, retries, cancellation.

use std::time::{Duration, Instant};

use integration_tests::{TestQueue, add_long_first_attempt, alive, attempt_pids, signal};
use nix::sys::signal::Signal;
use serde_json::Value;

fn history(task: &Value) -> &Vec<Value> {
    task["history"].as_array().expect("the task has a history")
}

#[test]
fn a_task_whose_worker_is_killed_returns_within_lease_and_another_worker_completes_it() {
    let q = TestQueue::new();
    let id = q.add(&["--type", "sleep", "--payload", r#"{"ms": 1500}"#]);
    let first = q.spawn_worker("sleeper", &["--name", "first", "--lease", "2s"]);
    q.wait_for("the task to start", Duration::from_secs(20), |q| {
        q.task(&id)["status"] == "running"
    });
    signal(&first, Signal::SIGKILL);
    let killed_at = Instant::now();
    let _ = first.wait_with_output();

    let second = q.spawn_worker("sleeper", &["--name", "second", "--drain"]);
    q.wait_for("the task to be reclaimed", Duration::from_secs(20), |q| {
        q.task(&id)["worker"] == "second"
    });
    let back_after = killed_at.elapsed();
    assert!(
        back_after <= Duration::from_secs(2 + 5),
        "back after {back_after:?}"
    );
    assert!(second.wait_with_output().unwrap().status.success());
    let task = q.task(&id);
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(task["attempts"], 2);
    let runs = history(&task);
    assert_eq!(runs[0]["worker"], "first");
    assert_eq!(runs[0]["status"], "expired");
    assert!(runs[0]["error"].as_str().unwrap().contains("lease expired"));
    assert_eq!(runs[1]["worker"], "second");
    assert_eq!(runs[1]["status"], "completed");
}

#[test]
fn a_handler_that_overruns_its_timeout_fails_and_the_worker_goes_on() {
    let q = TestQueue::new();
    let polite = q.add(&[
        "--type",
        "sleep",
        "--priority",
        "1",
        "--timeout",
        "1s",
        "--payload",
        r#"{"ms": 60000}"#,
    ]);
    let hung = q.add(&[
        "--type",
        "sleep",
        "--priority",
        "2",
        "--timeout",
        "1s",
        "--payload",
        r#"{"ms": 600000, "ignoreStop": true}"#,
    ]);
    let next = q.add(&["--type", "sleep", "--priority", "3"]);
    q.drain("sleeper", &["--name", "sleepy"]);

    let polite = q.task(&polite);
    assert_eq!(polite["status"], "failed", "{polite:#}");
    assert!(
        polite["error"]
            .as_str()
            .unwrap()
            .contains("timed out after 1s")
    );
    let hung = q.task(&hung);
    assert_eq!(hung["status"], "failed", "{hung:#}");
    let error = hung["error"].as_str().unwrap();
    assert!(
        error.contains("timed out after 1s") && error.contains("was killed"),
        "{error}"
    );
    let next = q.task(&next);
    assert_eq!(next["status"], "completed");
    assert_eq!(next["worker"], "sleepy");
}

#[test]
fn a_handler_that_aborts_or_segfaults_fails_its_task_and_the_worker_goes_on() {
    let q = TestQueue::new();
    let abort = q.add(&[
        "--type",
        "crash",
        "--priority",
        "1",
        "--payload",
        r#"{"how": "abort"}"#,
    ]);
    let segfault = q.add(&[
        "--type",
        "crash",
        "--priority",
        "2",
        "--payload",
        r#"{"how": "segfault"}"#,
    ]);
    let next = q.add(&["--type", "crash", "--priority", "3"]);
    q.drain("crasher", &["--name", "crashy"]);

    for (id, says) in [
        (&abort, "SIGABRT"),
        (&segfault, "segmentation fault (SIGSEGV)"),
    ] {
        let task = q.task(id);
        assert_eq!(task["status"], "failed", "{task:#}");
        assert_eq!(task["attempts"], 1, "a crash is not retried: {task:#}");
        assert!(task["error"].as_str().unwrap().contains(says), "{task:#}");
    }
    let next = q.task(&next);
    assert_eq!(next["status"], "completed", "{next:#}");
    assert_eq!(next["worker"], "crashy");
}

#[test]
fn what_a_handler_prints_goes_to_the_worker_log_and_never_into_the_protocol() {
    let q = TestQueue::new();
    let printed = q.add(&["--type", "announce", "--payload", r#"{"print": true}"#]);
    let next = q.add(&["--type", "announce"]);
    let output = q.drain("announcer", &[]);
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        log.contains(r#"{"op":"succeeded","result":{"said":"forged"}}"#),
        "{log}"
    );
    assert!(log.contains("no line end"), "{log}");
    for id in [&printed, &next] {
        let task = q.task(id);
        assert_eq!(task["status"], "completed", "{task:#}");
        assert_eq!(
            task["result"]["said"], "hello",
            "the handler's own result: {task:#}"
        );
    }
}

#[test]
fn a_retryable_failure_is_retried_with_backoff_and_every_error_is_kept() {
    let q = TestQueue::new();
    let id = q.add(&["--type", "flaky", "--payload", r#"{"succeedOn": 3}"#]);
    q.drain("flaky", &["--backoff", "300ms"]);
    let task = q.task(&id);
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(task["attempts"], 3);
    let runs = history(&task);
    assert_eq!(runs.len(), 3);
    for (i, run) in runs[..2].iter().enumerate() {
        assert_eq!(run["status"], "failed");
        let error = run["error"].as_str().unwrap();
        assert!(
            error.contains(&format!("flaked on attempt {}", i + 1)),
            "{error}"
        );
    }
    // The second retry waits at least half of twice the base backoff (jitter is 50-100 %).
    let at = |run: &Value, field: &str| -> jiff::Timestamp {
        run[field].as_str().unwrap().parse().unwrap()
    };
    let waited = at(&runs[2], "startedAt").duration_since(at(&runs[1], "finishedAt"));
    assert!(waited.as_millis() >= 300, "waited only {waited:?}");
}

#[test]
fn a_failure_without_attempts_left_fails_and_retry_puts_it_back() {
    let q = TestQueue::new();
    let id = q.add_failing_once();
    q.drain("flaky", &[]);
    assert_eq!(q.task(&id)["status"], "failed");

    let said = q.ok(&["retry", &id]);
    assert!(said.contains("pending again"), "{said}");
    q.drain("flaky", &[]);
    let task = q.task(&id);
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(history(&task).len(), 2);

    let line = q.fails(&["retry", &id]);
    assert!(line.contains("is completed"), "{line}");
}

#[test]
fn a_cancelled_pending_task_never_starts() {
    let q = TestQueue::new();
    let id = q.add(&["--type", "sleep"]);
    q.ok(&["cancel", &id]);
    q.drain("sleeper", &[]);
    let task = q.task(&id);
    assert_eq!(task["status"], "cancelled");
    assert_eq!(task["attempts"], 0);
    assert!(task.get("history").is_none(), "{task:#}");
}

fn cancel_running(payload: &str) -> Value {
    let q = TestQueue::new();
    let id = q.add(&["--type", "sleep", "--payload", payload]);
    let worker = q.spawn_worker("sleeper", &["--drain"]);
    q.wait_for("the task to start", Duration::from_secs(20), |q| {
        q.task(&id)["status"] == "running"
    });
    let said = q.ok(&["cancel", &id]);
    assert!(said.contains("cancel requested"), "{said}");
    let output = worker.wait_with_output().unwrap();
    assert!(output.status.success());
    q.task(&id)
}

#[test]
fn a_cancelled_running_task_sees_the_flag_and_stops() {
    let task = cancel_running(r#"{"ms": 600000}"#);
    assert_eq!(task["status"], "cancelled", "{task:#}");
    assert!(
        task["error"].as_str().unwrap().contains("Cancelled"),
        "{task:#}"
    );
}

#[test]
fn a_cancelled_running_task_that_ignores_the_flag_is_stopped() {
    let task = cancel_running(r#"{"ms": 600000, "ignoreStop": true}"#);
    assert_eq!(task["status"], "cancelled", "{task:#}");
    assert!(
        task["error"].as_str().unwrap().contains("was killed"),
        "{task:#}"
    );
}

#[test]
fn a_stopped_worker_s_task_ends_before_its_lease_runs_out_and_never_runs_twice_at_once() {
    let q = TestQueue::new();
    let (id, pids) = add_long_first_attempt(&q);
    let mut first = q.spawn_worker("tester", &["--name", "first", "--lease", "6s"]);
    q.wait_for("the first attempt", Duration::from_secs(20), |_| {
        attempt_pids(&pids).len() == 1
    });
    let command = attempt_pids(&pids)[0];
    // Ctrl+Z or SIGSTOP: the worker can neither renew the lease nor stop its handler.
    signal(&first, Signal::SIGSTOP);
    let stopped_at = Instant::now();
    q.wait_for(
        "the stopped worker's command to end",
        Duration::from_secs(20),
        |_| !alive(command),
    );
    let ended_after = stopped_at.elapsed();
    assert!(
        ended_after < Duration::from_secs(6),
        "the attempt ended {ended_after:?} after its worker stopped: after its lease of 6s"
    );
    let second = q.spawn_worker("tester", &["--name", "second", "--drain"]);
    let output = second.wait_with_output().unwrap();
    assert!(output.status.success());
    assert_eq!(attempt_pids(&pids).len(), 2);
    let task = q.task(&id);
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(task["worker"], "second");
    signal(&first, Signal::SIGCONT);
    signal(&first, Signal::SIGKILL);
    let _ = first.wait();
}

#[test]
fn a_stopped_handler_process_still_takes_its_command_along_when_its_worker_is_killed() {
    let q = TestQueue::new();
    let (_, pids) = add_long_first_attempt(&q);
    let mut worker = q.spawn_worker("tester", &[]);
    q.wait_for("the attempt", Duration::from_secs(20), |_| {
        attempt_pids(&pids).len() == 1
    });
    let command = attempt_pids(&pids)[0];
    let stat = std::fs::read_to_string(format!("/proc/{command}/stat")).unwrap();
    let handler: i32 = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let handler = nix::unistd::Pid::from_raw(handler);
    nix::sys::signal::kill(handler, Signal::SIGSTOP).unwrap();
    signal(&worker, Signal::SIGKILL);
    let _ = worker.wait();
    let gone = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        !alive(command)
    });
    let _ = nix::sys::signal::kill(handler, Signal::SIGKILL);
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(command as i32), Signal::SIGKILL);
    assert!(gone, "the task's command ran on after its worker died");
}

#[test]
fn ctrl_z_never_stops_a_worker_while_it_holds_the_writers_lock() {
    let q = TestQueue::new();
    let file = q.scratch.join("tasks.jsonl");
    std::fs::write(&file, "{\"type\":\"noop\"}\n".repeat(20_000)).unwrap();
    q.ok(&["add", "--file", file.to_str().unwrap()]);
    let mut worker = q.spawn_worker("noop", &["--concurrency", "2"]);
    for round in 0..15 {
        std::thread::sleep(Duration::from_millis(50 + fastrand::u64(0..100)));
        signal(&worker, Signal::SIGTSTP);
        // Stopped, however it got there.
        let pid = worker.id();
        q.wait_for("the worker to stop", Duration::from_secs(10), |_| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(')')
                    .unwrap()
                    .1
                    .trim_start()
                    .starts_with('T')
            })
        });
        let started = Instant::now();
        let output = q.host().args(["add", "--type", "noop"]).output().unwrap();
        assert!(
            output.status.success() && started.elapsed() < Duration::from_secs(2),
            "round {round}: an add beside a stopped worker took {:?}: {}",
            started.elapsed(),
            String::from_utf8_lossy(&output.stderr)
        );
        signal(&worker, Signal::SIGCONT);
    }
    signal(&worker, Signal::SIGKILL);
    let _ = worker.wait();
}

#[test]
fn a_writer_waiting_on_a_stopped_holder_says_who_and_gives_up_in_one_line() {
    let q = TestQueue::new();
    // Held by this test process, as a stopped worker would hold it.
    let folder = std::fs::File::open(&q.queue).unwrap();
    folder.lock().unwrap();
    let started = Instant::now();
    let output = q
        .host()
        .args(["add", "--type", "noop"])
        .env("HOST_LOCK_WAIT", "4s")
        .output()
        .unwrap();
    let took = started.elapsed();
    folder.unlock().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let me = format!("process {}", std::process::id());
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "a notice, then the error: {stderr}");
    assert!(
        lines[0].starts_with("waiting for the queue's writers' lock") && lines[0].contains(&me),
        "{stderr}"
    );
    assert!(
        lines[1].contains(&me) && lines[1].contains("nothing was changed"),
        "{stderr}"
    );
    assert!(
        took < Duration::from_secs(30),
        "gave up after the limit set ({took:?})"
    );
    assert_eq!(q.status()["counts"]["pending"].as_u64().unwrap_or(0), 0);
    q.add(&["--type", "noop"]);
}
