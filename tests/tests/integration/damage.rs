//! A queue whose files were damaged, emptied or pulled from under it: the loss is named, never
//! hidden by a fresh database, and nothing more is written into it until a person has looked.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Duration;

use integration_tests::{TestQueue, signal};
use nix::sys::signal::Signal;

/// Reads a worker's stderr to the end once it has exited.
fn stderr_of(mut child: std::process::Child) -> (std::process::ExitStatus, String) {
    let status = child.wait().unwrap();
    let mut text = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    (status, text)
}

#[test]
fn an_emptied_database_is_refused_by_everything_but_init() {
    let q = TestQueue::new();
    q.add(&["--type", "noop"]);
    let db = q.queue.join("queue.db");
    fs::File::create(&db).unwrap(); // truncated to 0 bytes
    let before = q.snapshot();
    for args in [
        &["status"][..],
        &["add", "--type", "noop"],
        &["list"],
        &["doctor"],
        &["--role", "noop", "--drain"],
    ] {
        let line = q.fails(args);
        assert!(
            line.contains("queue.db is missing or empty") && line.contains("host init"),
            "{args:?}: {line}"
        );
    }
    assert_eq!(q.snapshot(), before, "no new queue was made in its place");
    assert_eq!(fs::metadata(&db).unwrap().len(), 0);

    fs::remove_file(&db).unwrap();
    let line = q.fails(&["status"]);
    assert!(line.contains("queue.db is missing or empty"), "{line}");
    assert!(!db.exists(), "nothing but init makes it");

    // Asked for by name, a new queue starts again.
    q.ok(&["init"]);
    assert_eq!(q.add(&["--type", "noop"]), "1");
}

#[test]
fn a_log_deleted_while_workers_run_stops_every_writer_and_doctor_says_why() {
    let q = TestQueue::new();
    let worker = q.spawn_worker("noop", &["--poll", "20ms"]);
    let first = q.add(&["--type", "noop"]);
    q.wait_for("the first task", Duration::from_secs(20), |q| {
        q.task(&first)["status"] == "completed"
    });
    fs::remove_file(q.queue.join("queue.db-wal")).unwrap();
    fs::remove_file(q.queue.join("queue.db-shm")).unwrap();
    // A process opening the queue now makes new files and cannot tell; the worker, which still
    // has the old ones, notices at its next write and stops.
    let _ = q.run(&["add", "--type", "noop"]);
    let (status, stderr) = stderr_of(worker);
    assert_eq!(status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("queue.db-")
            && last.contains("while process")
            && last.contains("stopped writing"),
        "{stderr}"
    );
    // Every later writer refuses, in one line, and says why.
    let line = q.fails(&["add", "--type", "noop"]);
    assert!(
        line.contains("while process") && line.contains("host doctor"),
        "{line}"
    );
    let doctor = q.run(&["doctor"]);
    let report = String::from_utf8_lossy(&doctor.stdout);
    assert_eq!(doctor.status.code(), Some(1), "{report}");
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("PROBLEM") && l.contains("while process")),
        "{report}"
    );
    // Reads still work, so that what is there can be saved.
    q.ok(&["export"]);
}

#[test]
fn a_log_deleted_after_an_unclean_stop_is_named_not_silently_dropped() {
    let q = TestQueue::new();
    // A worker holds the queue open, so the log is not folded into the database on exit.
    let worker = q.spawn_worker("noop", &["--poll", "20ms"]);
    q.ok(&["pause"]);
    for _ in 0..3 {
        q.add(&["--type", "noop"]);
    }
    signal(&worker, Signal::SIGKILL);
    let (_, _) = stderr_of(worker);
    let wal = q.queue.join("queue.db-wal");
    assert!(
        fs::metadata(&wal).unwrap().len() > 0,
        "the adds are in the log"
    );
    fs::remove_file(&wal).unwrap();
    let line = q.fails(&["status"]);
    assert!(
        line.contains("queue.db-wal") && line.contains("lost"),
        "{line}"
    );
    let line = q.fails(&["add", "--type", "noop"]);
    assert!(line.contains("lost"), "{line}");
}

#[test]
fn a_damaged_page_stops_the_worker_at_start_and_every_writer_after() {
    let q = TestQueue::new();
    let payload = format!(r#"{{"filler":"{}"}}"#, "x".repeat(2000));
    for _ in 0..60 {
        q.add(&["--type", "noop", "--payload", &payload]);
    }
    // Every process has exited: the log is folded into the database file.
    assert!(!q.queue.join("queue.db-wal").exists());
    let db = q.queue.join("queue.db");
    let pages = fs::metadata(&db).unwrap().len() / 4096;
    assert!(pages > 20, "{pages} pages");
    let mut file = fs::OpenOptions::new().write(true).open(&db).unwrap();
    for page in [pages / 2, pages / 2 + 1] {
        file.seek(SeekFrom::Start(page * 4096)).unwrap();
        file.write_all(&[0x5a; 4096]).unwrap();
    }
    drop(file);

    let output = q.run(&["--role", "noop", "--drain"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("damaged") && stderr.contains("stopped writing"),
        "{stderr}"
    );
    assert!(q.queue.join("damaged").exists(), "the finding is on record");
    let line = q.fails(&["add", "--type", "noop"]);
    assert!(
        line.contains("damaged") && line.contains("stopped writing"),
        "{line}"
    );
}

#[test]
fn a_deleted_doorbell_is_made_again_and_pickup_stays_instant() {
    let q = TestQueue::new();
    // Polling every minute: a task picked up within seconds was heard through the doorbell.
    let mut worker = q.spawn_worker("noop", &["--poll", "60s"]);
    let first = q.add(&["--type", "noop"]);
    q.wait_for("the first task", Duration::from_secs(20), |q| {
        q.task(&first)["status"] == "completed"
    });
    let doorbell = q.queue.join("doorbell");
    fs::remove_file(&doorbell).unwrap();
    q.wait_for("the doorbell made again", Duration::from_secs(10), |_| {
        doorbell.exists()
    });
    for _ in 0..3 {
        let id = q.add(&["--type", "noop"]);
        q.wait_for(
            "a task after the doorbell was deleted",
            Duration::from_secs(10),
            |q| q.task(&id)["status"] == "completed",
        );
    }
    signal(&worker, Signal::SIGKILL);
    let _ = worker.wait();
}
