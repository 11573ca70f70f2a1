//! Bad input (SPEC §7): one line on stderr, exit 1, and the store exactly as it was.

use std::fs;

use integration_tests::TestQueue;

/// A queue with one task already in it, so "unchanged" covers existing files too.
fn queue_with_a_task() -> TestQueue {
    let q = TestQueue::new();
    q.add(&["--type", "noop", "--description", "already here"]);
    q
}

#[test]
fn unknown_role() {
    let q = queue_with_a_task();
    let before = q.snapshot();
    let line = q.fails(&["--role", "nobody"]);
    assert!(line.contains("nobody"), "{line}");
    assert_eq!(q.snapshot(), before);
}

#[test]
fn unknown_task_type() {
    let q = queue_with_a_task();
    let before = q.snapshot();
    let line = q.fails(&["add", "--type", "nonsense"]);
    assert!(line.contains("unknown task type \"nonsense\""), "{line}");
    assert_eq!(q.snapshot(), before);
}

#[test]
fn malformed_payload() {
    let q = queue_with_a_task();
    let before = q.snapshot();
    let line = q.fails(&["add", "--type", "noop", "--payload", "{not json"]);
    assert!(line.contains("--payload is not valid JSON"), "{line}");
    assert_eq!(q.snapshot(), before);
}

#[test]
fn malformed_task_file_adds_nothing() {
    let q = queue_with_a_task();
    let before = q.snapshot();
    let file = q.scratch.join("plan.json");
    fs::write(
        &file,
        r#"[{"type": "noop"}, {"type": "noop", "priorty": 1}, {"type": "noop"}]"#,
    )
    .unwrap();
    let line = q.fails(&["add", "--file", file.to_str().unwrap()]);
    assert!(
        line.contains("plan.json: entry 2") && line.contains("priorty"),
        "{line}"
    );
    assert_eq!(q.snapshot(), before);

    fs::write(&file, "{\"type\": \"noop\"}\n{\"type\": \"noop\"\n").unwrap();
    let line = q.fails(&["add", "--file", file.to_str().unwrap()]);
    // One position: the file's line and the column in it, not serde's "line 1" of that line.
    assert!(
        line.contains("plan.json: line 2, column 15: EOF while parsing"),
        "{line}"
    );
    assert!(!line.contains("line 1"), "{line}");
    assert_eq!(q.snapshot(), before);
}

#[test]
fn a_task_file_with_an_unknown_type_adds_nothing() {
    let q = queue_with_a_task();
    let before = q.snapshot();
    let file = q.scratch.join("plan.jsonl");
    fs::write(&file, "{\"type\": \"noop\"}\n{\"type\": \"nonsense\"}\n").unwrap();
    let line = q.fails(&["add", "--file", file.to_str().unwrap()]);
    assert!(
        line.contains("plan.jsonl: entry 2") && line.contains("nonsense"),
        "{line}"
    );
    assert_eq!(q.snapshot(), before);
}

#[test]
fn task_file_from_stdin_adds_all() {
    use std::io::Write;
    let q = TestQueue::new();
    let mut child = q
        .host()
        .args(["add", "--file", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"[{"type":"noop","priority":2},{"type":"noop","timeout":"90s"}]"#)
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    assert_eq!(String::from_utf8(output.stdout).unwrap(), "1\n2\n");
    assert_eq!(q.task("2")["timeoutSecs"], 90);
}

#[test]
fn a_task_over_the_size_limit_is_refused_from_a_task_file() {
    let q = queue_with_a_task();
    let before = q.snapshot();
    let file = q.scratch.join("big.json");
    let big = "x".repeat(3 * 1024 * 1024);
    let entries = serde_json::json!([{"type": "noop"}, {"type": "noop", "description": big}]);
    fs::write(&file, entries.to_string()).unwrap();
    let line = q.fails(&["add", "--file", file.to_str().unwrap()]);
    assert!(
        line.contains("big.json: entry 2") && line.contains("limit of 2097152 bytes (2 MiB)"),
        "{line}"
    );
    assert_eq!(q.snapshot(), before);
    // Just under the limit is taken, payload included.
    let under = serde_json::json!([{
        "type": "noop",
        "description": "x".repeat(2 * 1024 * 1024 - 100),
        "payload": {"n": 1},
    }]);
    fs::write(&file, under.to_string()).unwrap();
    q.ok(&["add", "--file", file.to_str().unwrap()]);
}

#[test]
fn a_libpq_connection_string_is_refused_without_showing_its_password() {
    let q = TestQueue::new();
    let password = "pw-that-must-not-show";
    let address = format!("host=db.example port=5432 password={password} dbname=q user=ann");
    for (args, env) in [
        (vec!["--queue", address.as_str(), "status"], None),
        (vec!["--queue", address.as_str(), "init"], None),
        (vec!["status"], Some(address.as_str())),
        (vec!["init"], Some(address.as_str())),
    ] {
        let mut command = q.host();
        command.args(&args);
        if let Some(address) = env {
            command.env("HOST_QUEUE_DIR", address);
        }
        let output = command.output().unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("postgres://"), "{stderr}");
        assert!(
            !stdout.contains(password) && !stderr.contains(password),
            "the password shows: {stdout}{stderr}"
        );
    }
    // Not taken for a folder of that name either.
    let made: Vec<_> = fs::read_dir(&q.scratch).unwrap().collect();
    assert!(made.is_empty(), "{made:?}");
}

/// Replaces task `id`'s record in the queue's database with text that is not a task.
fn corrupt_record(q: &TestQueue, id: &str) {
    let conn = rusqlite::Connection::open(q.queue.join("queue.db")).unwrap();
    conn.execute("UPDATE tasks SET body = 'garbage' WHERE id = ?1", [id])
        .unwrap();
}

#[test]
fn a_corrupted_database_is_named_and_left_untouched() {
    let q = queue_with_a_task();
    let db = q.queue.join("queue.db");
    fs::write(&db, b"not a database at all\n".repeat(200)).unwrap();
    let _ = fs::remove_file(q.queue.join("queue.db-wal"));
    let _ = fs::remove_file(q.queue.join("queue.db-shm"));
    let before = q.snapshot();
    for args in [&["status"][..], &["results"], &["show", "1"], &["init"]] {
        let line = q.fails(args);
        assert!(
            line.contains("corrupted") && line.contains("queue.db"),
            "{line}"
        );
    }
    assert_eq!(q.snapshot(), before, "byte for byte, never reset");
}

#[test]
fn a_corrupted_task_record_is_named_and_left_untouched() {
    let q = queue_with_a_task();
    corrupt_record(&q, "1");
    for args in [&["export"][..], &["show", "1"]] {
        let line = q.fails(args);
        assert!(
            line.contains("corrupted") && line.contains("task 1"),
            "{line}"
        );
    }
    q.ok(&["status"]);
}

#[test]
fn listings_report_a_corrupted_record_and_go_on_with_the_rest() {
    let q = TestQueue::new();
    let ids: Vec<String> = (0..3).map(|_| q.add(&["--type", "noop"])).collect();
    q.drain("noop", &[]);
    corrupt_record(&q, &ids[1]);
    for args in [
        &["export", "--jsonl"][..],
        &["results", "--json"],
        &["results"],
    ] {
        let output = q.run(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("corrupted") && stderr.contains(&format!("task {}", ids[1])),
            "{stderr}"
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        let flat = stdout.replace(' ', "");
        for good in [&ids[0], &ids[2]] {
            assert!(
                flat.contains(&format!("\"id\":\"{good}\""))
                    || stdout.contains(&format!("\n{good} ")),
                "{args:?} lists task {good}:\n{stdout}"
            );
        }
    }
}

#[test]
fn drain_does_not_wait_for_unreadable_tasks_or_what_comes_after_them() {
    let q = TestQueue::new();
    let broken = q.add(&["--type", "noop", "--priority", "1"]);
    let after = q.add(&["--type", "noop", "--after", &broken]);
    let held = q.add(&["--type", "noop"]);
    corrupt_record(&q, &broken);
    // A running task whose record cannot be read: nobody can ever finish it.
    let conn = rusqlite::Connection::open(q.queue.join("queue.db")).unwrap();
    conn.execute(
        "UPDATE tasks SET status = 'running', body = 'garbage', lease_expires_at = ?2 \
         WHERE id = ?1",
        rusqlite::params![held, i64::MAX],
    )
    .unwrap();
    drop(conn);
    let output = q.drain("noop", &["--poll", "20ms"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("task {broken}")), "{stderr}");
    assert_eq!(q.task(&after)["status"], "blocked");
}

#[test]
fn a_worker_skips_a_corrupted_task_says_so_once_and_drains() {
    let q = TestQueue::new();
    let bad = q.add(&["--type", "noop", "--priority", "1"]);
    let good = q.add(&["--type", "noop"]);
    corrupt_record(&q, &bad);
    let output = q.drain("noop", &["--poll", "20ms"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(q.task(&good)["status"], "completed");
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("corrupted")).collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(warnings[0].contains(&format!("task {bad}")), "{stderr}");
    let conn = rusqlite::Connection::open(q.queue.join("queue.db")).unwrap();
    let body: String = conn
        .query_row("SELECT body FROM tasks WHERE id = ?1", [&bad], |r| r.get(0))
        .unwrap();
    assert_eq!(body, "garbage", "left as it was");
}

#[test]
fn writer_path_escaping_the_target() {
    let q = queue_with_a_task();
    let before = q.snapshot();
    let target = q.scratch.join("project");
    let target = target.to_str().unwrap();
    for path in ["../outside.txt", "/etc/outside.txt", "a/../../outside.txt"] {
        let payload = format!(r#"{{"files": [{{"path": "{path}", "content": "x"}}]}}"#);
        let line = q.fails(&[
            "add",
            "--type",
            "write",
            "--target",
            target,
            "--payload",
            &payload,
        ]);
        assert!(line.contains("leaves the target"), "{line}");
    }
    assert_eq!(q.snapshot(), before);
    assert!(!q.scratch.join("outside.txt").exists());
}

#[test]
fn not_a_queue_folder() {
    let q = TestQueue::new();
    let elsewhere = q.scratch.join("nowhere");
    let line = q.fails(&["status", "--queue", elsewhere.to_str().unwrap()]);
    assert!(
        line.contains("not a queue folder") && line.contains("host init"),
        "{line}"
    );
    assert!(!elsewhere.exists());
}

#[test]
fn global_options_go_before_or_after_the_command() {
    let q = TestQueue::new();
    let other = q.scratch.join("other");
    let other = other.to_str().unwrap();
    q.ok(&["--queue", other, "init"]);
    q.ok(&["--queue", other, "add", "--type", "noop"]);
    let status = q.ok(&["status", "--json", "--queue", other]);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["counts"]["pending"], 1, "{status}");
    let plugins = q.ok(&["-v", "--plugin-dir", q.plugins.to_str().unwrap(), "plugins"]);
    assert!(plugins.contains("noop"), "{plugins}");
    // The queue of the environment was not touched.
    let own: serde_json::Value = serde_json::from_str(&q.ok(&["status", "--json"])).unwrap();
    assert_eq!(own["counts"]["pending"], 0, "{own}");
}

#[test]
fn usage_errors_exit_2() {
    let q = TestQueue::new();
    for args in [
        &["add"][..],
        &["--concurrency", "0", "--role", "noop"],
        &["frobnicate"],
        &[],
        // Worker options belong to `host --role`, not to a command.
        &["--role", "noop", "status"],
        &["--drain", "init"],
    ] {
        let output = q.run(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn a_database_that_is_a_link_a_folder_or_cut_short_is_named_for_what_it_is() {
    let q = queue_with_a_task();
    let payload = format!(r#"{{"filler":"{}"}}"#, "x".repeat(3000));
    for _ in 0..40 {
        q.add(&["--type", "noop", "--payload", &payload]);
    }
    let db = q.queue.join("queue.db");
    let real = q.scratch.join("elsewhere.db");
    fs::rename(&db, &real).unwrap();
    std::os::unix::fs::symlink(&real, &db).unwrap();
    let line = q.fails(&["status"]);
    assert!(
        line.contains("queue.db") && line.contains("is a symlink"),
        "{line}"
    );

    fs::remove_file(&db).unwrap();
    fs::create_dir(&db).unwrap();
    let line = q.fails(&["status"]);
    assert!(
        line.contains("queue.db") && line.contains("is not a file"),
        "{line}"
    );

    fs::remove_dir(&db).unwrap();
    fs::rename(&real, &db).unwrap();
    let file = fs::OpenOptions::new().write(true).open(&db).unwrap();
    file.set_len(fs::metadata(&db).unwrap().len() / 3).unwrap();
    drop(file);
    let line = q.fails(&["status"]);
    assert!(
        line.contains("queue.db") && line.contains("damaged"),
        "{line}"
    );
    assert!(!line.contains("locked"), "{line}");
}
