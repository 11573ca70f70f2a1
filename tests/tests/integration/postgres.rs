//! The queue on PostgreSQL, as users on several machines meet it: every command on a
//! `postgres://` URL, the password never shown, clear errors for a server that is down,
//! schema set-up racing from many machines, the configuration kept in the database, instant
//! pickup through LISTEN/NOTIFY, and workers living through a server restart. (The store's
//! rules are checked by the conformance suite, which runs against PostgreSQL too.)

use std::process::Stdio;
use std::time::{Duration, Instant};

use integration_tests::TestQueue;
use integration_tests::pg::{PASSWORD, PgCluster};

/// Everything `host ARGS` printed, both streams, insisting it succeeded.
fn printed(q: &TestQueue, args: &[&str]) -> String {
    let output = q.run(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "host {args:?} failed:\n{text}");
    text
}

#[test]
fn every_command_works_on_a_postgres_url_and_the_password_is_never_shown() {
    let q = TestQueue::on_postgres();
    let first = q.add(&["--type", "noop", "--payload", r#"{"n":1}"#]);
    let second = q.add(&["--type", "noop", "--after", &first]);
    let output = q.drain("noop", &["--name", "pg-worker"]);
    let mut seen = String::from_utf8_lossy(&output.stderr).to_string();
    for id in [&first, &second] {
        assert_eq!(q.task(id)["status"], "completed");
    }
    seen.push_str(&printed(&q, &["logs", &first]));
    assert!(seen.contains("pg-worker"), "the worker logged:\n{seen}");

    let status = printed(&q, &["status"]);
    assert!(
        status.contains("postgres://host_test:***@127.0.0.1:"),
        "{status}"
    );
    assert!(status.contains("completed"), "{status}");
    seen.push_str(&status);
    let json = q.status();
    assert!(json["queue"].as_str().unwrap().contains(":***@"), "{json}");
    for args in [
        vec!["status", "--json"],
        vec!["results"],
        vec!["stats"],
        vec!["show", &first],
        vec!["export"],
        vec!["doctor"],
        vec!["init"],
        vec!["purge", "--finished-before", "1h"],
    ] {
        seen.push_str(&printed(&q, &args));
    }
    // Errors name the queue without the password too.
    let error = q.fails(&["show", "999"]);
    seen.push_str(&error);
    let error = q.fails(&["pause", "--task", "999"]);
    seen.push_str(&error);
    assert!(
        !seen.contains(PASSWORD),
        "the password was printed:\n{seen}"
    );
}

#[test]
fn status_shows_each_workers_machine() {
    let q = TestQueue::on_postgres();
    let mut worker = q.spawn_worker("noop", &["--name", "seen-worker"]);
    q.wait_for("the worker's record", Duration::from_secs(20), |q| {
        q.status()["workers"]
            .as_array()
            .is_some_and(|w| !w.is_empty())
    });
    let hostname = nix::unistd::gethostname()
        .unwrap()
        .to_string_lossy()
        .to_string();
    let json = q.status();
    assert_eq!(json["workers"][0]["hostname"], hostname, "{json}");
    let text = q.ok(&["status"]);
    let line = text
        .lines()
        .find(|l| l.starts_with("seen-worker"))
        .unwrap_or_else(|| panic!("no worker line:\n{text}"));
    assert!(line.contains(&hostname), "{text}");
    worker.kill().unwrap();
    worker.wait().unwrap();
}

#[test]
fn a_server_that_is_down_a_bad_url_or_an_empty_database_is_one_clear_line() {
    let q = TestQueue::new();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = format!("postgres://ann:{PASSWORD}@127.0.0.1:{closed}/q?sslmode=disable");
    let line = q.fails(&["--queue", &down, "status"]);
    assert!(line.contains("cannot connect"), "{line}");
    assert!(line.contains("postgres://ann:***@127.0.0.1"), "{line}");
    assert!(!line.contains(PASSWORD), "{line}");

    let line = q.fails(&["--queue", "postgres://ann@127.0.0.1:notaport/q", "status"]);
    assert!(line.contains("not a valid PostgreSQL URL"), "{line}");
    let line = q.fails(&[
        "--queue",
        "postgres://ann@127.0.0.1/q?sslmode=verify-ca",
        "status",
    ]);
    assert!(
        line.contains("sslmode=verify-ca is not supported"),
        "{line}"
    );

    let cluster = PgCluster::shared();
    let empty = cluster.database();
    let line = q.fails(&["--queue", &empty, "add", "--type", "noop"]);
    assert!(line.contains("holds no queue (run `host init`"), "{line}");
    assert!(!line.contains(PASSWORD), "{line}");
}

#[test]
fn init_from_many_machines_at_once_creates_the_schema_once() {
    let q = TestQueue::new();
    let url = PgCluster::shared().database();
    let inits: Vec<_> = (0..8)
        .map(|_| {
            q.host()
                .args(["--queue", &url, "init"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for init in inits {
        let output = init.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let id = q.ok(&["--queue", &url, "add", "--type", "noop"]);
    assert_eq!(id.trim(), "1");
}

#[test]
fn the_configuration_lives_in_the_database_for_every_machine() {
    let q = TestQueue::on_postgres();
    assert_eq!(q.ok(&["config", "show"]), "");
    let bad = q.scratch.join("bad.toml");
    std::fs::write(
        &bad,
        "[roles.checker]\nhandler = \"noop\"\ncolour = \"red\"\n",
    )
    .unwrap();
    let line = q.fails(&["config", "set", bad.to_str().unwrap()]);
    assert!(line.contains("bad.toml:3"), "{line}");
    assert!(line.contains("colour"), "{line}");
    assert_eq!(q.ok(&["config", "show"]), "", "a bad file changes nothing");

    let good = "[roles.checker]\nhandler = \"noop\"\ntypes = [\"check\"]\n\n[limits]\ncheck = 1\n";
    let file = q.scratch.join("host.toml");
    std::fs::write(&file, good).unwrap();
    q.ok(&["config", "set", file.to_str().unwrap()]);
    std::fs::remove_file(&file).unwrap();
    assert_eq!(q.ok(&["config", "show"]), good);
    // A role bound only in the database's configuration runs.
    let id = q.add(&["--type", "check"]);
    q.drain("checker", &[]);
    assert_eq!(q.task(&id)["status"], "completed");
    q.ok(&["config", "unset"]);
    assert_eq!(q.ok(&["config", "show"]), "");
}

#[test]
fn an_idle_worker_hears_of_new_work_at_once() {
    let q = TestQueue::on_postgres();
    // Polling once a minute: only a notification can start the task quickly.
    let mut worker = q.spawn_worker("noop", &["--poll", "60s"]);
    q.wait_for("the worker to be idle", Duration::from_secs(20), |q| {
        q.status()["workers"][0]["state"] == "idle"
    });
    std::thread::sleep(Duration::from_millis(500));
    let added = Instant::now();
    let id = q.add(&["--type", "noop"]);
    q.wait_for("the task to complete", Duration::from_secs(10), |q| {
        q.task(&id)["status"] == "completed"
    });
    let waited = added.elapsed();
    worker.kill().unwrap();
    worker.wait().unwrap();
    assert!(
        waited < Duration::from_secs(5),
        "picked up after {waited:?}, not at once"
    );
}

#[test]
fn a_server_crash_mid_drain_loses_nothing_runs_nothing_twice_at_once_and_commands_say_one_line() {
    let cluster = PgCluster::start("127.0.0.1").unwrap_or_else(|why| panic!("{why}"));
    let q = TestQueue::at_url(&cluster.database());
    // Each attempt holds a lock of its task's own for its run: an attempt that finds it taken
    // runs beside another attempt of the same task, and says so.
    let locks = q.scratch.join("locks");
    std::fs::create_dir(&locks).unwrap();
    let overlaps = q.scratch.join("overlaps");
    let file = q.scratch.join("tasks.jsonl");
    let lines: Vec<String> = (0..300)
        .map(|i| {
            let script = format!(
                "flock -n {}/{i} sleep 0.03 || echo {i} >> {}",
                locks.display(),
                overlaps.display()
            );
            serde_json::json!({
                "type": "test",
                "target": q.scratch,
                "payload": {"command": ["sh", "-c", script]},
                "maxAttempts": 10,
            })
            .to_string()
        })
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    q.ok(&["add", "--file", file.to_str().unwrap()]);
    let workers: Vec<_> = (0..3)
        .map(|i| {
            q.spawn_worker(
                "tester",
                &["--drain", "--lease", "4s", "--name", &format!("r{i}")],
            )
        })
        .collect();
    q.wait_for("a third of the tasks", Duration::from_secs(60), |q| {
        q.status()["counts"]["completed"].as_u64().unwrap_or(0) >= 100
    });
    cluster.stop().unwrap();
    // During the outage, a command says what is wrong in one line and exits 1, at once.
    for args in [&["status"][..], &["add", "--type", "noop"]] {
        let started = Instant::now();
        let line = q.fails(args);
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{args:?} took {:?}",
            started.elapsed()
        );
        assert!(!line.contains(PASSWORD), "{line}");
    }
    std::thread::sleep(Duration::from_secs(1));
    cluster.start_server().unwrap();
    for worker in workers {
        let output = worker.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let results = q.results();
    assert_eq!(results.len(), 300);
    for task in &results {
        assert_eq!(task["status"], "completed", "{task}");
        // An attempt that ran again follows one whose lease expired (its claim or outcome
        // was lost with the server), never one that completed.
        let history = task["history"].as_array().unwrap();
        for attempt in &history[..history.len() - 1] {
            assert_ne!(attempt["status"], "completed", "{task}");
        }
    }
    let twice = std::fs::read_to_string(&overlaps).unwrap_or_default();
    assert!(twice.is_empty(), "tasks that ran twice at once: {twice}");
}

#[test]
fn tls_as_sslmode_asks_and_passwords_from_the_environment_or_pgpass() {
    let cluster = PgCluster::start("127.0.0.1").unwrap_or_else(|why| panic!("{why}"));
    let cert = cluster.enable_tls().unwrap_or_else(|why| panic!("{why}"));
    let url = cluster.database();
    let q = TestQueue::at_url(&url);
    let base = url.split('?').next().unwrap();
    let works = |q: &TestQueue, queue: &str| {
        q.ok(&["--queue", queue, "add", "--type", "noop"]);
    };
    // require: encrypted, the certificate not checked (a self-signed one is accepted).
    works(&q, &format!("{base}?sslmode=require"));
    // verify-full: the certificate must chain to sslrootcert and name the host.
    works(
        &q,
        &format!("{base}?sslmode=verify-full&sslrootcert={}", cert.display()),
    );
    let line = q.fails(&["--queue", &format!("{base}?sslmode=verify-full"), "status"]);
    assert!(line.contains("cannot connect"), "{line}");
    assert!(!line.contains(PASSWORD), "{line}");
    // require means TLS: a server without it is refused.
    let plain = PgCluster::shared()
        .database()
        .replace("sslmode=disable", "sslmode=require");
    let line = q.fails(&["--queue", &plain, "status"]);
    assert!(line.contains("cannot connect"), "{line}");

    // No password in the URL: PGPASSWORD, else a private ~/.pgpass (PGPASSFILE here).
    let bare = base.replace(&format!(":{PASSWORD}@"), "@");
    assert!(!bare.contains(PASSWORD));
    let run = |env: &[(&str, &str)]| {
        let mut cmd = q.host();
        cmd.env_remove("PGPASSWORD")
            .env("PGPASSFILE", q.scratch.join("none"))
            .args(["--queue", &bare, "status"]);
        for (key, value) in env {
            cmd.env(key, value);
        }
        cmd.output().unwrap()
    };
    let refused = run(&[]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(run(&[("PGPASSWORD", PASSWORD)]).status.success());
    let pgpass = q.scratch.join("pgpass");
    std::fs::write(&pgpass, format!("127.0.0.1:*:*:host_test:{PASSWORD}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o644)).unwrap();
    let pgpass_arg = pgpass.to_str().unwrap();
    assert_eq!(
        run(&[("PGPASSFILE", pgpass_arg)]).status.code(),
        Some(1),
        "a password file others can read is ignored, as libpq does"
    );
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let output = run(&[("PGPASSFILE", pgpass_arg)]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A queue of an older schema (here version 1: no `review` state, no conflict flag, no kept
/// counts) is refused by every command but `host migrate`, in one line naming it; `host
/// migrate` says what it will do, upgrades it keeping its tasks, and the new state works.
#[test]
fn an_older_database_is_refused_until_host_migrate_upgrades_it_keeping_its_tasks() {
    let q = TestQueue::on_postgres();
    let first = q.add(&["--type", "noop"]);
    q.drain("noop", &[]);
    let second = q.add(&["--type", "noop"]);
    let mut client = postgres::Client::connect(&q.address, postgres::NoTls).unwrap();
    client
        .batch_execute(
            "SET search_path = host; DROP TRIGGER tasks_counted ON tasks; \
             DROP FUNCTION count_tasks(); DROP TABLE counts; \
             DROP INDEX tasks_conflicts; ALTER TABLE tasks DROP COLUMN conflict; \
             ALTER TABLE tasks DROP CONSTRAINT tasks_status_check; \
             ALTER TABLE tasks ADD CONSTRAINT tasks_status_check CHECK (status IN \
                ('pending', 'blocked', 'running', 'completed', 'failed', 'cancelled')); \
             UPDATE schema_version SET version = 1",
        )
        .unwrap();
    drop(client);

    for args in [
        &["status"][..],
        &["add", "--type", "noop"],
        &["--role", "noop", "--drain"],
    ] {
        let output = q.run(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "host {args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.contains("schema version 1") && stderr.contains("run `host migrate`"),
            "{stderr}"
        );
    }
    let said = printed(&q, &["migrate"]);
    assert!(
        said.contains("upgrading schema version 1 to 3")
            && said.contains("0002_review.sql, 0003_counts.sql"),
        "{said}"
    );
    assert!(printed(&q, &["migrate"]).contains("nothing to do"));

    let report: serde_json::Value = serde_json::from_str(&q.ok(&["status", "--json"])).unwrap();
    assert_eq!(report["counts"]["completed"], 1, "{report:#}");
    assert_eq!(report["counts"]["pending"], 1);
    assert_eq!(q.task(&first)["status"], "completed");
    // The new state works on the migrated schema.
    let config = q.scratch.join("host.toml");
    std::fs::write(
        &config,
        "[roles.noop]\nhandler = \"noop\"\nreview = \"required\"\n",
    )
    .unwrap();
    q.ok(&["config", "set", config.to_str().unwrap()]);
    q.drain("noop", &[]);
    assert_eq!(q.task(&second)["status"], "review");
    q.ok(&["approve", &second]);
    assert_eq!(q.task(&second)["status"], "completed");
}
