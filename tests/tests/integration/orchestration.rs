//! Dependencies (`after`), pause and resume.

use std::fs;
use std::path::Path;
use std::process::Child;

use integration_tests::TestQueue;
use jiff::Timestamp;
use serde_json::Value;

fn time(task: &Value, field: &str) -> Timestamp {
    task[field].as_str().unwrap().parse().unwrap()
}

fn wait_all(workers: Vec<Child>) {
    for worker in workers {
        let output = worker.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn the_build_plan_example_runs_in_dependency_order() {
    let q = TestQueue::new();
    fs::create_dir_all(q.scratch.join("app")).unwrap();
    fs::write(q.scratch.join("app/README.md"), "# app\n").unwrap();
    let plan = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plans/build-plan.json");
    let ids = q.ok(&["add", "--file", plan.to_str().unwrap()]);
    assert_eq!(ids.lines().count(), 5);
    let counts = &q.status()["counts"];
    assert_eq!(counts["pending"], 1, "only the survey can start: {counts}");
    assert_eq!(counts["blocked"], 4, "{counts}");

    let workers = ["inspector", "writer", "tester"]
        .iter()
        .map(|role| q.spawn_worker(role, &["--drain"]))
        .collect();
    wait_all(workers);

    let tasks: Vec<Value> = ids.lines().map(|id| q.task(id)).collect();
    for task in &tasks {
        assert_eq!(task["status"], "completed", "{task:#}");
        for dep in task["after"].as_array().into_iter().flatten() {
            let before = tasks.iter().find(|t| t["id"] == *dep).unwrap();
            assert!(
                time(task, "startedAt") >= time(before, "finishedAt"),
                "task {} started before task {dep} finished",
                task["id"]
            );
        }
    }
    let test = &tasks[4];
    assert!(
        test["result"]["outputTail"]
            .as_str()
            .unwrap()
            .contains("all checks passed"),
        "{test:#}"
    );
}

#[test]
fn a_cycle_or_an_unknown_id_is_refused_and_nothing_is_added() {
    let q = TestQueue::new();
    let before = q.snapshot();
    let file = q.scratch.join("cycle.json");
    fs::write(
        &file,
        r#"[{"key": "a", "type": "noop", "after": ["c"]},
            {"key": "b", "type": "noop", "after": ["a"]},
            {"key": "c", "type": "noop", "after": ["b"]}]"#,
    )
    .unwrap();
    let line = q.fails(&["add", "--file", file.to_str().unwrap()]);
    // The file, the entries by key and position, and "nothing was added" once.
    assert!(
        line.contains(&format!(
            "{}: nothing was added: \"a\" (entry 1) -> \"c\" (entry 3) -> \"b\" (entry 2) -> \"a\" (entry 1) come after each other in a cycle",
            file.display()
        )),
        "{line}"
    );
    assert_eq!(line.matches("nothing was added").count(), 1, "{line}");
    let line = q.fails(&["add", "--type", "noop", "--after", "42"]);
    assert!(line.contains("no task with id 42"), "{line}");
    assert!(line.contains("entry 1: after"), "{line}");
    fs::write(&file, r#"[{"type": "noop", "after": ["nope"]}]"#).unwrap();
    let line = q.fails(&["add", "--file", file.to_str().unwrap()]);
    assert!(line.contains("no entry with key \"nope\""), "{line}");
    assert_eq!(q.snapshot(), before);
}

#[test]
fn a_failed_prerequisite_cancels_its_dependents_and_retrying_it_revives_them() {
    let q = TestQueue::new();
    let flaky = q.add_failing_once();
    let next = q.add(&["--type", "noop", "--after", &flaky]);
    let last = q.add(&["--type", "noop", "--after", &next]);
    assert_eq!(q.task(&next)["status"], "blocked");
    q.drain("flaky", &[]);
    for id in [&next, &last] {
        let task = q.task(id);
        assert_eq!(task["status"], "cancelled", "{task:#}");
    }
    let error = q.task(&next)["error"].as_str().unwrap().to_string();
    assert!(
        error.contains(&format!("comes after task {flaky}, which failed")),
        "{error}"
    );
    let error = q.task(&last)["error"].as_str().unwrap().to_string();
    assert!(
        error.contains(&format!("comes after task {next}, which was cancelled")),
        "{error}"
    );
    let line = q.fails(&["retry", &last]);
    assert!(line.contains(&format!("retry task {next}")), "{line}");

    q.ok(&["retry", &flaky]);
    assert_eq!(q.task(&next)["status"], "blocked");
    assert_eq!(q.task(&last)["status"], "blocked");
    q.drain("flaky", &[]);
    q.drain("noop", &[]);
    for id in [&flaky, &next, &last] {
        assert_eq!(q.task(id)["status"], "completed");
    }
}

#[test]
fn an_after_any_task_runs_after_a_failed_or_cancelled_prerequisite_where_after_is_cancelled() {
    let q = TestQueue::new();
    let flaky = q.add_failing_once();
    let fix = q.add(&["--type", "noop", "--after-any", &flaky]);
    let deploy = q.add(&["--type", "noop", "--after", &flaky]);
    let both = q.add(&["--type", "noop", "--after", &fix, "--after-any", &flaky]);
    assert_eq!(q.task(&fix)["status"], "blocked");
    assert_eq!(q.task(&fix)["afterAny"], serde_json::json!([flaky]));
    let list = q.ok(&["list"]);
    assert!(
        list.contains(&format!("after any outcome of {flaky}")),
        "{list}"
    );
    let shown = q.ok(&["show", &both]);
    assert!(
        shown.contains(&format!("{:<12} {flaky}", "after any")),
        "{shown}"
    );
    assert!(shown.contains(&format!("{:<12} {fix}", "after")), "{shown}");

    q.drain("flaky", &[]);
    assert_eq!(q.task(&flaky)["status"], "failed");
    assert_eq!(q.task(&fix)["status"], "pending", "after any outcome");
    let cancelled = q.task(&deploy);
    assert_eq!(cancelled["status"], "cancelled", "{cancelled:#}");
    q.drain("noop", &[]);
    for id in [&fix, &both] {
        assert_eq!(q.task(id)["status"], "completed", "task {id}");
    }

    // A cancelled prerequisite is an outcome too; cancelling it never cancels such a task.
    // Of a type no worker here claims: they are cancelled before they could run.
    let first = q.add(&["--type", "flaky"]);
    let second = q.add(&["--type", "flaky"]);
    let any = q.add(&["--type", "noop", &format!("--after-any={first},{second}")]);
    assert_eq!(q.task(&any)["afterAny"], serde_json::json!([first, second]));
    q.ok(&["cancel", &first]);
    assert_eq!(
        q.task(&any)["status"],
        "blocked",
        "still waits for {second}"
    );
    q.ok(&["cancel", &second]);
    assert_eq!(q.task(&any)["status"], "pending");
    q.drain("noop", &[]);
    assert_eq!(q.task(&any)["status"], "completed");

    let line = q.fails(&[
        "add",
        "--type",
        "noop",
        "--after",
        &fix,
        "--after-any",
        &fix,
    ]);
    assert!(
        line.contains(&format!("task {fix} is in both after and afterAny")),
        "{line}"
    );
    let line = q.fails(&["add", "--type", "noop", "--after-any", "4242"]);
    assert!(line.contains("afterAny: no task with id 4242"), "{line}");
}

#[test]
fn a_task_file_names_earlier_entries_in_after_any_by_key() {
    let q = TestQueue::new();
    let file = q.scratch.join("plan.json");
    fs::write(
        &file,
        r#"[{"key": "test", "type": "flaky", "maxAttempts": 1, "payload": {"succeedOn": 2}},
            {"key": "fix", "type": "noop", "afterAny": ["test"]},
            {"type": "noop", "after": ["test"]},
            {"type": "noop", "after": ["fix"], "afterAny": ["test"]}]"#,
    )
    .unwrap();
    let ids: Vec<String> = q
        .ok(&["add", "--file", file.to_str().unwrap()])
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(q.task(&ids[1])["afterAny"], serde_json::json!([ids[0]]));
    assert_eq!(q.task(&ids[3])["after"], serde_json::json!([ids[1]]));
    q.drain("flaky", &[]);
    q.drain("noop", &[]);
    let statuses: Vec<Value> = ids.iter().map(|id| q.task(id)["status"].clone()).collect();
    assert_eq!(
        statuses,
        ["failed", "completed", "cancelled", "completed"],
        "{ids:?}"
    );

    let before = q.snapshot();
    fs::write(
        &file,
        r#"[{"key": "a", "type": "noop", "afterAny": ["b"]},
            {"key": "b", "type": "noop", "after": ["a"]}]"#,
    )
    .unwrap();
    let line = q.fails(&["add", "--file", file.to_str().unwrap()]);
    assert!(line.contains("come after each other in a cycle"), "{line}");
    fs::write(&file, r#"[{"type": "noop", "afterAny": ["nope"]}]"#).unwrap();
    let line = q.fails(&["add", "--file", file.to_str().unwrap()]);
    assert!(
        line.contains(&format!(
            "{}: entry 1: afterAny: no entry with key \"nope\"",
            file.display()
        )),
        "{line}"
    );
    assert_eq!(q.snapshot(), before);
}

#[test]
fn a_paused_type_is_not_claimed_until_resumed() {
    let q = TestQueue::new();
    let id = q.add(&["--type", "noop"]);
    let other = q.add(&["--type", "sleep"]);
    q.ok(&["pause", "--type", "noop"]);
    assert!(q.status()["paused"][0] == "type noop");
    let mut worker = q.spawn_worker("noop", &["--poll", "50ms"]);
    q.drain("sleeper", &[]);
    assert_eq!(q.task(&other)["status"], "completed", "other types go on");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        q.task(&id)["status"],
        "pending",
        "paused work is not claimed"
    );

    q.ok(&["resume", "--type", "noop"]);
    q.wait_for(
        "the resumed task",
        std::time::Duration::from_secs(10),
        |q| q.task(&id)["status"] == "completed",
    );
    integration_tests::signal(&worker, nix::sys::signal::Signal::SIGTERM);
    worker.wait().unwrap();
    let line = q.fails(&["resume", "--type", "noop"]);
    assert!(line.contains("is not paused"), "{line}");
}

#[test]
fn a_paused_queue_and_a_paused_task_are_not_claimed() {
    let q = TestQueue::new();
    let held = q.add(&["--type", "noop", "--priority", "1"]);
    let free = q.add(&["--type", "noop", "--priority", "2"]);
    q.ok(&["pause", "--task", &held]);
    q.ok(&["pause"]);
    let mut worker = q.spawn_worker("noop", &["--poll", "50ms"]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(q.task(&free)["status"], "pending", "the queue is paused");
    q.ok(&["resume"]);
    q.wait_for("the free task", std::time::Duration::from_secs(10), |q| {
        q.task(&free)["status"] == "completed"
    });
    assert_eq!(
        q.task(&held)["status"],
        "pending",
        "the task is still paused"
    );
    integration_tests::signal(&worker, nix::sys::signal::Signal::SIGTERM);
    worker.wait().unwrap();
}

#[test]
fn a_per_type_limit_of_one_is_never_exceeded_by_four_workers() {
    let q = TestQueue::new();
    fs::write(q.queue.join("host.toml"), "[limits]\nsleep = 1\n").unwrap();
    let ids: Vec<String> = (0..10)
        .map(|_| q.add(&["--type", "sleep", "--payload", r#"{"ms": 80}"#]))
        .collect();
    let workers = (0..4)
        .map(|i| {
            q.spawn_worker(
                "sleeper",
                &["--drain", "--poll", "60s", "--name", &format!("s{i}")],
            )
        })
        .collect();
    // Polling once a minute: only the wake-up when a task ends lets them finish in time.
    let started = std::time::Instant::now();
    wait_all(workers);
    assert!(started.elapsed().as_secs() < 30, "{:?}", started.elapsed());
    let mut runs: Vec<(Timestamp, Timestamp)> = ids
        .iter()
        .map(|id| {
            let task = q.task(id);
            assert_eq!(task["status"], "completed", "{task:#}");
            (time(&task, "startedAt"), time(&task, "finishedAt"))
        })
        .collect();
    runs.sort();
    for pair in runs.windows(2) {
        assert!(
            pair[1].0 >= pair[0].1,
            "two sleep tasks ran at once: {pair:?}"
        );
    }
}

#[test]
fn an_aged_low_priority_task_starts_within_its_bound_behind_a_stream_of_urgent_ones() {
    let q = TestQueue::new();
    fs::write(q.queue.join("host.toml"), "[queue]\naging = \"200ms\"\n").unwrap();
    let low = q.add(&[
        "--type",
        "sleep",
        "--priority",
        "9",
        "--payload",
        r#"{"ms": 10}"#,
    ]);
    let file = q.scratch.join("urgent.jsonl");
    let urgent = r#"{"type": "sleep", "priority": 1, "payload": {"ms": 10}}"#;
    fs::write(&file, vec![urgent; 1000].join("\n")).unwrap();
    q.ok(&["add", "--file", file.to_str().unwrap()]);
    let mut worker = q.spawn_worker("sleeper", &[]);
    q.wait_for(
        "the low-priority task",
        std::time::Duration::from_secs(30),
        |q| q.task(&low)["status"] == "completed",
    );
    integration_tests::signal(&worker, nix::sys::signal::Signal::SIGTERM);
    worker.wait().unwrap();

    let task = q.task(&low);
    let waited = time(&task, "startedAt").duration_since(time(&task, "createdAt"));
    // Nine steps of 200 ms bring it to priority 0, level with the oldest urgent task, and it is
    // older; a second covers the task running when it got there and the worker's start.
    assert!(waited.as_secs_f64() < 9.0 * 0.2 + 1.0, "waited {waited:?}");
    assert_eq!(task["priority"], 9, "the original priority stays on record");
    // 0 when the urgent tasks were added at once; on a loaded machine their add can take long
    // enough that the old task catches up with them a step earlier.
    let aged = task["agedPriority"]
        .as_u64()
        .expect("claimed at an aged priority");
    assert!(aged <= 1, "claimed at {aged}");
    assert!(
        q.status()["counts"]["pending"].as_u64().unwrap() > 100,
        "it did not simply wait for the urgent stream to end"
    );
}

#[test]
fn host_toml_binds_a_role_name_to_a_plugin_role_and_its_errors_name_file_and_line() {
    let q = TestQueue::new();
    fs::write(
        q.queue.join("host.toml"),
        "[roles.reviewer]\nhandler = \"inspector\"\ntypes = [\"review\"]\n",
    )
    .unwrap();
    let tree = q.scratch.join("tree");
    fs::create_dir_all(&tree).unwrap();
    fs::write(tree.join("a.rs"), "fn a() {}\n").unwrap();
    let id = q.add(&["--type", "review", "--target", tree.to_str().unwrap()]);
    q.drain("reviewer", &["--name", "rev"]);
    let task = q.task(&id);
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(task["result"]["files"], 1);

    fs::write(
        q.queue.join("host.toml"),
        "[roles.reviewer]\nhandler = \"inspector\"\nmodel = \"copilot\"\n",
    )
    .unwrap();
    let line = q.fails(&["--role", "reviewer"]);
    assert!(
        line.contains("host.toml:3:") && line.contains("model"),
        "{line}"
    );
}

#[test]
fn watch_shows_workers_and_counts_in_a_terminal_and_ends_when_the_queue_empties() {
    use std::io::Read;
    use std::time::{Duration, Instant};

    let q = TestQueue::new();
    for _ in 0..4 {
        q.add(&["--type", "sleep", "--payload", r#"{"ms": 400}"#]);
    }
    let worker = q.spawn_worker("sleeper", &["--drain", "--name", "pty-worker"]);
    let size = nix::pty::Winsize {
        ws_row: 40,
        ws_col: 150,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size), None).unwrap();
    let mut watch = q
        .host()
        .args(["watch", "--interval", "200ms"])
        .stdin(pty.slave.try_clone().unwrap())
        .stdout(pty.slave.try_clone().unwrap())
        .stderr(pty.slave)
        .spawn()
        .unwrap();
    let mut master = std::fs::File::from(pty.master);
    let reader = std::thread::spawn(move || {
        let mut screen = Vec::new();
        let mut chunk = [0u8; 4096];
        // Ends with an error (EIO) once the watch and every copy of the pty's other end close.
        while let Ok(n @ 1..) = master.read(&mut chunk) {
            screen.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8_lossy(&screen).to_string()
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = watch.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "watch did not end by itself");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    wait_all(vec![worker]);
    let screen = reader.join().unwrap();
    for expected in [
        "Workers",
        "pty-worker",
        "sleeper",
        "running",
        "Nothing pending",
    ] {
        assert!(
            screen.contains(expected),
            "{expected:?} not on screen:\n{screen}"
        );
    }
    assert!(
        screen.contains("\x1b[?1049h"),
        "drawn on the alternate screen"
    );
}

#[test]
fn stats_and_results_filters_report_per_type_and_worker() {
    let q = TestQueue::new();
    for _ in 0..3 {
        q.add(&["--type", "sleep", "--payload", r#"{"ms": 20}"#]);
    }
    let failing = q.add_failing_once();
    q.drain("sleeper", &["--name", "sleepy"]);
    q.drain("flaky", &["--name", "flaky-one"]);

    let stats: Value = serde_json::from_str(&q.ok(&["stats", "--json"])).unwrap();
    let sleep = &stats["byType"]["sleep"];
    assert_eq!(sleep["counts"]["completed"], 3, "{stats:#}");
    assert!(sleep["runMsP50"].as_u64().unwrap() >= 20, "{stats:#}");
    assert!(sleep["waitMsP95"].is_u64(), "{stats:#}");
    assert_eq!(stats["byType"]["flaky"]["counts"]["failed"], 1);
    assert_eq!(stats["byWorker"]["sleepy"]["counts"]["completed"], 3);
    assert_eq!(stats["byRole"]["sleeper"]["counts"]["completed"], 3);
    assert!(stats["all"]["perMinuteLastHour"].as_f64().unwrap() > 0.0);
    assert!(q.ok(&["stats"]).contains("sleepy"));

    let only = |args: &[&str]| -> Vec<String> {
        let mut full = vec!["results", "--json"];
        full.extend_from_slice(args);
        let tasks: Vec<Value> = serde_json::from_str(&q.ok(&full)).unwrap();
        tasks
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(only(&["--type", "sleep"]).len(), 3);
    assert_eq!(only(&["--worker", "flaky-one"]), vec![failing.clone()]);
    assert_eq!(only(&["--status", "failed"]), vec![failing]);
    assert_eq!(only(&["--since", "1h"]).len(), 4);
}
