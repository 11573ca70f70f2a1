//! Around the queue: shell completions and the manual page.

use std::time::Duration;

use integration_tests::TestQueue;
use serde_json::Value;

#[test]
fn completions_load_in_their_shell_and_the_manual_page_names_every_command() {
    let q = TestQueue::new();
    let bash = q.ok(&["completions", "bash"]);
    let script = q.scratch.join("host.bash");
    std::fs::write(&script, &bash).unwrap();
    // Loaded by bash itself, the script registers a completion for `host`.
    let loaded = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("source {} && complete -p host", script.display()))
        .output()
        .unwrap();
    assert!(
        loaded.status.success() && String::from_utf8_lossy(&loaded.stdout).contains("host"),
        "{loaded:?}"
    );
    assert!(bash.contains("new-role") && bash.contains("completions"));
    assert!(q.ok(&["completions", "zsh"]).starts_with("#compdef host"));
    assert!(q.ok(&["completions", "fish"]).contains("complete -c host"));
    // roff writes a hyphen as `\-`.
    let man = q.ok(&["man"]).replace("\\-", "-");
    assert!(man.contains(".TH host 1"), "{man}");
    for command in ["list", "wait", "claim", "new-role"] {
        assert!(
            man.contains(&format!("host-{command}(1)")),
            "{command} missing from the manual page"
        );
    }
    let output = q.run(&["completions", "tcsh"]);
    assert_eq!(output.status.code(), Some(2), "a usage error");
}

#[test]
fn retry_and_cancel_act_on_many_tasks_at_once() {
    let q = TestQueue::new();
    let doomed: Vec<String> = (0..3).map(|_| q.add_failing_once()).collect();
    let other = q.add(&["--type", "noop"]);
    q.drain("flaky", &[]);
    assert!(doomed.iter().all(|id| q.task(id)["status"] == "failed"));

    let said = q.ok(&["retry", "--failed", "--type", "flaky"]);
    assert_eq!(said.lines().count(), 3, "{said}");
    assert!(doomed.iter().all(|id| q.task(id)["status"] == "pending"));

    let said = q.ok(&["cancel", "--type", "flaky"]);
    assert_eq!(said.lines().count(), 3, "{said}");
    assert!(doomed.iter().all(|id| q.task(id)["status"] == "cancelled"));
    assert_eq!(
        q.task(&other)["status"],
        "pending",
        "other types are left alone"
    );

    q.ok(&["retry", &doomed[0], &doomed[1]]);
    assert_eq!(q.task(&doomed[0])["status"], "pending");
    assert_eq!(q.task(&doomed[2])["status"], "cancelled");
    assert_eq!(q.run(&["retry", "--type", "flaky"]).status.code(), Some(2));
    assert_eq!(q.run(&["cancel"]).status.code(), Some(2));
}

#[test]
fn dead_workers_are_listed_as_dead_pruned_on_demand_and_dropped_after_a_day() {
    let q = TestQueue::new();
    let db = rusqlite::Connection::open(q.queue.join("queue.db")).unwrap();
    let now = jiff::Timestamp::now();
    for (name, age) in [("gone-long-ago", 2 * 86400), ("gone-just-now", 60)] {
        let seen = now - jiff::SignedDuration::from_secs(age);
        let record = serde_json::json!({
            "name": name, "role": "noop", "types": ["noop"], "pid": 4_000_000,
            "hostname": "elsewhere", "state": "busy", "tasks": [],
            "startedAt": seen.to_string(), "heartbeatAt": seen.to_string(),
        });
        db.execute(
            "INSERT INTO workers (name, record) VALUES (?1, ?2)",
            rusqlite::params![name, record.to_string()],
        )
        .unwrap();
    }
    drop(db);
    let names = |q: &TestQueue| -> Vec<(String, bool)> {
        let listed: serde_json::Value =
            serde_json::from_str(&q.ok(&["workers", "--json"])).unwrap();
        listed
            .as_array()
            .unwrap()
            .iter()
            .map(|w| {
                (
                    w["name"].as_str().unwrap().to_string(),
                    w["alive"].as_bool().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(names(&q).len(), 2);
    // A worker starting drops the record dead for more than a day.
    q.drain("noop", &[]);
    assert_eq!(names(&q), [("gone-just-now".to_string(), false)]);
    let text = q.ok(&["workers"]);
    assert!(
        text.lines()
            .any(|l| l.starts_with("gone-just-now") && l.contains("dead")),
        "{text}"
    );
    let said = q.ok(&["workers", "--prune"]);
    assert!(
        said.starts_with("removed 1 dead worker record(s)"),
        "{said}"
    );
    assert!(names(&q).is_empty());
}

#[test]
fn pausing_a_type_nothing_knows_is_refused_and_help_lists_a_commands_own_options_first() {
    let q = TestQueue::new();
    let line = q.fails(&["pause", "--type", "nosuchtype"]);
    assert!(
        line.contains("unknown task type \"nosuchtype\"") && line.contains("nothing was paused"),
        "{line}"
    );
    assert!(q.status()["paused"].as_array().unwrap().is_empty());
    q.ok(&["pause", "--type", "noop"]);

    let help = q.ok(&["add", "--help"]);
    let own = help.find("--type <TYPE>").unwrap();
    let global = help.find("Global options").unwrap();
    assert!(own < global && help[global..].contains("--queue"), "{help}");
}

#[test]
fn a_task_added_for_later_waits_for_its_time_and_then_runs() {
    let q = TestQueue::new();
    let later = q.add(&["--type", "noop", "--in", "1h"]);
    let far = q.add(&["--type", "noop", "--at", "2099-01-01T00:00:00Z"]);
    let listed: serde_json::Value = serde_json::from_str(&q.ok(&["list", "--json"])).unwrap();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["waitsFor"].as_str().unwrap().starts_with("starts in")),
        "{listed:#}"
    );
    let claimed = q.run(&["claim", "--role", "noop"]);
    assert_eq!(
        claimed.status.code(),
        Some(1),
        "nothing claimable before its time"
    );

    // Once its time comes, a worker picks it up by itself: it started no earlier.
    let soon = q.add(&["--type", "noop", "--in", "2s"]);
    let worker = q.spawn_worker("noop", &["--poll", "200ms"]);
    q.wait_for(
        "the delayed task",
        std::time::Duration::from_secs(30),
        |q| q.task(&soon)["status"] == "completed",
    );
    let task = q.task(&soon);
    let time = |field: &str| {
        task[field]
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .unwrap()
    };
    let waited = time("startedAt").duration_since(time("createdAt"));
    assert!(
        waited.as_secs_f64() >= 1.9,
        "started {waited:?} after it was added"
    );
    for id in [&later, &far] {
        assert_eq!(q.task(id)["status"], "pending");
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    assert!(worker.wait_with_output().unwrap().status.success());
    let line = q.fails(&["add", "--type", "noop", "--at", "tomorrowish"]);
    assert!(line.contains("\"tomorrowish\" is not a time"), "{line}");
    let local = q.add(&["--type", "noop", "--at", "23:59"]);
    assert_eq!(q.task(&local)["status"], "pending");
}

#[test]
fn rm_removes_finished_tasks_all_or_none() {
    let q = TestQueue::new();
    let done = q.add(&["--type", "noop"]);
    q.drain("noop", &[]);
    let waiting = q.add(&["--type", "noop"]);
    let line = q.fails(&["rm", &done, &waiting]);
    assert!(
        line.contains(&format!("task {waiting} is pending")),
        "{line}"
    );
    assert_eq!(q.task(&done)["status"], "completed", "nothing was removed");
    assert!(q.ok(&["rm", &done]).contains("removed 1 task(s)"));
    let line = q.fails(&["show", &done]);
    assert!(line.contains(&done), "{line}");
    assert_eq!(q.run(&["rm"]).status.code(), Some(2));
}

#[test]
fn edit_changes_a_queued_task_and_refuses_one_that_started() {
    let q = TestQueue::new();
    let first = q.add(&["--type", "noop"]);
    let second = q.add(&["--type", "noop"]);
    q.ok(&[
        "edit",
        &second,
        "--priority",
        "0",
        "--payload",
        r#"{"n": 2}"#,
    ]);
    let claimed: serde_json::Value =
        serde_json::from_str(&q.ok(&["claim", "--role", "noop", "--json"])).unwrap();
    assert_eq!(claimed["id"], second.as_str());
    assert_eq!(claimed["payload"]["n"], 2);
    let line = q.fails(&["edit", &second, "--priority", "3"]);
    assert!(
        line.contains(&second) && line.contains("pending or blocked"),
        "{line}"
    );
    let line = q.fails(&["edit", &first, "--payload", "{nope"]);
    assert!(line.contains("--payload is not valid JSON"), "{line}");
    assert_eq!(
        q.run(&["edit", &first]).status.code(),
        Some(2),
        "nothing to change"
    );
}

#[test]
fn json_times_are_rfc3339_to_the_millisecond() {
    let q = TestQueue::new();
    let id = q.add(&["--type", "noop"]);
    q.drain("noop", &[]);
    let task = q.task(&id);
    for field in ["createdAt", "startedAt", "finishedAt"] {
        let text = task[field].as_str().unwrap();
        assert_eq!(
            text.len(),
            "2026-11-26T05:37:36.123Z".len(),
            "{field}: {text}"
        );
        assert!(
            text.ends_with('Z') && text.parse::<jiff::Timestamp>().is_ok(),
            "{text}"
        );
    }
    let started = task["history"][0]["startedAt"].as_str().unwrap();
    assert_eq!(started.len(), 24, "{started}");
}

#[test]
fn answers_that_used_to_mislead_now_say_what_happened() {
    let q = TestQueue::new();
    // A binding whose handler no plugin provides is named, not called an unknown type.
    std::fs::write(
        q.queue.join("host.toml"),
        "[roles.reviewer]\nhandler = \"nobody\"\ntypes = [\"review\"]\n",
    )
    .unwrap();
    let line = q.fails(&["add", "--type", "review"]);
    assert!(
        line.contains("role reviewer claims type \"review\" but is bound to handler \"nobody\""),
        "{line}"
    );
    std::fs::remove_file(q.queue.join("host.toml")).unwrap();

    // A task added after one that failed is born cancelled: said on stderr.
    let failed = q.add_failing_once();
    q.drain("flaky", &[]);
    let output = q.run(&["add", "--type", "noop", "--after", &failed]);
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("warning: task") && stderr.contains("cancelled already"),
        "{stderr}"
    );

    // `logs --follow` ends with the task, and its exit status says how it ended.
    let output = q.run(&["logs", &failed, "--follow"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains(&format!("task {failed} failed")));

    // `resume` says what is still paused.
    q.ok(&["pause", "--type", "noop"]);
    q.ok(&["pause", "--type", "panic"]);
    let said = q.ok(&["resume", "--type", "noop"]);
    assert!(said.contains("still paused: type panic"), "{said}");

    // An error that prints its cause is not followed by the cause again.
    let file = q.scratch.join("a-file");
    std::fs::write(&file, "").unwrap();
    let line = q.fails(&["status", "--queue", file.join("sub").to_str().unwrap()]);
    let os = line.matches("os error").count();
    assert!(os <= 1, "{line}");
}

#[test]
fn the_writer_honours_the_umask() {
    let q = TestQueue::new();
    let target = q.scratch.join("site");
    std::fs::create_dir_all(&target).unwrap();
    let payload = r#"{"files": [{"path": "index.html", "content": "hi"}]}"#;
    q.add(&[
        "--type",
        "write",
        "--target",
        target.to_str().unwrap(),
        "--payload",
        payload,
    ]);
    let output = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 022 && exec {} --role writer --drain",
            integration_tests::workspace().host().display()
        ))
        .env("HOST_QUEUE_DIR", &q.address)
        .env("HOST_PLUGIN_PATH", &q.plugins)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(target.join("index.html"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);
}

/// `host ARGS` on a pseudo-terminal (through util-linux's `script`), with `env` added; returns
/// what the terminal showed.
fn on_terminal(q: &TestQueue, args: &str, env: &[(&str, &str)]) -> String {
    let host = integration_tests::workspace().host();
    let output = std::process::Command::new("script")
        .args(["-qec", &format!("{} {args}", host.display()), "/dev/null"])
        .current_dir(&q.scratch)
        .env("HOST_QUEUE_DIR", &q.address)
        .env("HOST_PLUGIN_PATH", &q.plugins)
        .env_remove("NO_COLOR")
        .env_remove("CLICOLOR_FORCE")
        .env("TERM", "xterm")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script (util-linux) runs");
    assert!(output.status.success(), "host {args}: {output:?}");
    String::from_utf8_lossy(&output.stdout).replace("\r\n", "\n")
}

#[test]
fn human_output_is_coloured_on_a_terminal_only_and_times_read_as_ages() {
    let q = TestQueue::new();
    let done = q.add(&["--type", "noop"]);
    q.drain("noop", &[]);
    q.add(&["--type", "noop", "--description", "still to do"]);
    for command in ["status", "results", "list"] {
        let shown = on_terminal(&q, command, &[]);
        assert!(shown.contains("\x1b["), "{command} on a terminal: {shown}");
        assert!(
            !on_terminal(&q, command, &[("NO_COLOR", "1")]).contains('\x1b'),
            "{command} with NO_COLOR"
        );
        assert!(
            !on_terminal(&q, &format!("{command} --color never"), &[]).contains('\x1b'),
            "{command} --color never"
        );
        assert!(!q.ok(&[command]).contains('\x1b'), "{command} into a pipe");
        assert!(q.ok(&[command, "--color", "always"]).contains("\x1b["));
    }
    // Human output gives ages; JSON gives the time itself (checked in
    // json_times_are_rfc3339_to_the_millisecond).
    let results = q.ok(&["results"]);
    assert!(
        results.contains("FINISHED") && results.contains("s ago"),
        "{results}"
    );
    let list = q.ok(&["list"]);
    assert!(
        list.contains("s ago") && list.contains("still to do"),
        "{list}"
    );
    let shown = q.ok(&["show", &done]);
    let finished = q.task(&done)["finishedAt"].as_str().unwrap().to_string();
    assert!(
        shown.contains(&format!("s ago ({finished})")),
        "{shown}\nwants {finished}"
    );
    let stats = q.ok(&["stats"]);
    assert!(stats.contains("per minute over the last hour"), "{stats}");
}

#[test]
fn paths_are_shown_without_dots_and_an_absent_plugin_folder_is_not_an_error() {
    let q = TestQueue::new();
    std::fs::create_dir_all(q.scratch.join("app")).unwrap();
    let dotted = q.scratch.join("app/../copilot-orchestration/.");
    std::fs::rename(&q.queue, q.scratch.join("copilot-orchestration")).unwrap();
    let report: serde_json::Value =
        serde_json::from_str(&q.ok(&["status", "--json", "--queue", dotted.to_str().unwrap()]))
            .unwrap();
    let real = q
        .scratch
        .join("copilot-orchestration")
        .canonicalize()
        .unwrap();
    assert_eq!(report["queue"], real.to_str().unwrap(), "{report}");

    // A target that does not exist yet is cleaned too.
    let queue = ["--queue", dotted.to_str().unwrap()];
    let target = q.scratch.join("app/./new/../later");
    let id = q.ok(&[
        &queue[..],
        &[
            "add",
            "--type",
            "noop",
            "--target",
            target.to_str().unwrap(),
        ],
    ]
    .concat());
    let task: serde_json::Value =
        serde_json::from_str(&q.ok(&[&queue[..], &["show", id.trim(), "--json"]].concat()))
            .unwrap();
    let app = q.scratch.join("app").canonicalize().unwrap();
    assert_eq!(task["target"], app.join("later").to_str().unwrap());

    // The queue's own plugin folder is optional: its absence is said plainly.
    let said = q.ok(&[
        "plugins",
        "--plugin-dir",
        q.scratch.join("nothing-here").to_str().unwrap(),
    ]);
    assert!(!said.contains("missing"), "{said}");
    assert!(said.contains("nothing-here  (no such folder)"), "{said}");
}

#[test]
fn a_cancelled_command_says_it_was_cancelled_not_killed_by_a_signal() {
    let q = TestQueue::new();
    let id = q.add(&[
        "--type",
        "test",
        "--target",
        q.scratch.to_str().unwrap(),
        "--payload",
        r#"{"command": ["sleep", "60"]}"#,
    ]);
    let worker = q.spawn_worker("tester", &["--drain"]);
    q.wait_for("the command to start", Duration::from_secs(20), |q| {
        q.task(&id)["status"] == "running"
    });
    q.ok(&["cancel", &id]);
    assert!(worker.wait_with_output().unwrap().status.success());
    let task = q.task(&id);
    assert_eq!(task["status"], "cancelled", "{task:#}");
    let error = task["error"].as_str().unwrap();
    assert!(error.contains("the task was cancelled"), "{error}");
    assert!(!error.contains("signal"), "{error}");
}

#[test]
fn bulk_actions_check_every_id_first_and_refuse_unknown_types() {
    let q = TestQueue::new();
    let pending = q.add(&["--type", "noop"]);
    // A bad id among good ones changes nothing.
    let line = q.fails(&["cancel", &pending, "99"]);
    assert!(
        line.contains("nothing was cancelled: no task with id 99"),
        "{line}"
    );
    assert_eq!(q.task(&pending)["status"], "pending");
    let line = q.fails(&["retry", &pending]);
    assert!(line.contains("nothing was retried"), "{line}");
    // A type nothing knows is a typo, whatever the command.
    for args in [
        &["cancel", "--type", "nope"][..],
        &["retry", "--failed", "--type", "nope"],
        &["wait", "--type", "nope"],
    ] {
        let line = q.fails(args);
        assert!(
            line.contains("unknown task type \"nope\""),
            "{args:?}: {line}"
        );
    }
    q.drain("noop", &[]);
    let said = q.ok(&["wait"]);
    assert!(said.contains("nothing to wait for"), "{said}");
    let line = q.fails(&["pause", "--task", &pending]);
    assert!(
        line.contains("is completed: pausing it would stop nothing"),
        "{line}"
    );
    // A time limit of nothing is refused, not rounded up.
    let output = q.run(&["add", "--type", "noop", "--timeout", "0s"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("at least 1s"));
}

#[test]
fn results_follow_the_order_tasks_finished_in_and_show_names_what_a_task_waits_for() {
    let q = TestQueue::new();
    // Claimed by priority: the later task finishes first (each takes 20 ms, so that the two
    // finish in different milliseconds, which is what the finishing times record).
    let task = |priority| {
        q.add(&[
            "--type",
            "sleep",
            "--priority",
            priority,
            "--payload",
            r#"{"ms": 20}"#,
        ])
    };
    let slow = task("9");
    let quick = task("1");
    q.drain("sleeper", &[]);
    let finished: Vec<String> = q
        .results()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(finished, [quick.clone(), slow.clone()]);
    let last = q.ok(&["results", "-n", "1"]);
    assert!(last.lines().nth(1).unwrap().starts_with(&slow), "{last}");

    let later = q.add(&[
        "--type",
        "noop",
        "--in",
        "10m",
        "--after",
        &slow,
        "--timeout",
        "5m",
    ]);
    let shown = q.ok(&["show", &later]);
    assert!(shown.contains(&format!("after        {slow}")), "{shown}");
    assert!(
        shown.contains("starts       in 9m") || shown.contains("starts       in 10m"),
        "{shown}"
    );
    assert!(shown.contains("timeout      5m"), "{shown}");
}

#[test]
fn task_file_errors_name_the_file_and_the_entry() {
    let q = TestQueue::new();
    let file = q.scratch.join("plan.json");
    let name = file.display().to_string();
    let add_file = |text: &str| {
        std::fs::write(&file, text).unwrap();
        q.fails(&["add", "--file", &name])
    };
    let line = add_file(r#"[{"type": "noop"}, 5]"#);
    assert!(line.contains(&format!("{name}: entry 2: ")), "{line}");
    assert!(
        line.contains("expected a task: an object with at least \"type\""),
        "{line}"
    );
    let line = add_file(r#"[{"type": "noop", "after": ["99"]}]"#);
    assert!(
        line.contains(&format!(
            "{name}: nothing was added: entry 1: after: no task with id 99"
        )),
        "{line}"
    );
    let line = add_file(r#"[{"type": "noop"}, {"type": "nope"}]"#);
    assert!(
        line.contains(&format!("{name}: entry 2: unknown task type \"nope\"")),
        "{line}"
    );
}

#[test]
fn a_failed_hook_gets_the_task_that_failed_for_good() {
    let q = TestQueue::new();
    let seen = q.scratch.join("failed.json");
    std::fs::write(
        q.queue.join("host.toml"),
        format!(
            "[hooks]\nfailed = [\"sh\", \"-c\", \"cat > \\\"$0\\\"; echo $HOST_EVENT $HOST_TASK_ID >> \\\"$0.event\\\"\", {:?}]\n",
            seen.display().to_string()
        ),
    )
    .unwrap();
    // One that fails and will be retried does not call for attention; one with no attempt left
    // does.
    let retried = q.add(&["--type", "flaky", "--payload", r#"{"succeedOn": 2}"#]);
    let failed = q.add_failing_once();
    q.drain("flaky", &[]);
    assert_eq!(q.task(&retried)["status"], "completed");
    let task: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&seen).unwrap()).unwrap();
    assert_eq!(task["id"], failed.as_str());
    assert_eq!(task["status"], "failed");
    let events = std::fs::read_to_string(q.scratch.join("failed.json.event")).unwrap();
    assert_eq!(events, format!("failed {failed}\n"));

    std::fs::write(q.queue.join("host.toml"), "[hooks]\nfailed = []\n").unwrap();
    let line = q.fails(&["add", "--type", "noop"]);
    assert!(
        line.contains("host.toml:2: hooks.failed: must name a program")
            || line.contains("hooks.failed: must name a program"),
        "{line}"
    );
}

#[test]
fn the_demo_plays_to_the_end_and_its_log_is_plain_labelled_text() {
    // The README's first command, with this suite's build instead of a release build, in a
    // folder of its own, its output going to a pipe as a log's would.
    // The build sits under a folder anyone may write to, as in a clone under /tmp, where the
    // host refuses the plugins beside it: the demo runs them from a private copy.
    use std::os::unix::fs::PermissionsExt;
    let ws = integration_tests::workspace();
    let dir = integration_tests::scratch_dir();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let build = shared.join("release");
    std::fs::create_dir(&build).unwrap();
    std::fs::copy(ws.host(), build.join("host")).unwrap();
    for name in ["builtin_roles", "deployer"] {
        let file = integration_tests::library_file(name);
        std::fs::copy(ws.library(name), build.join(&file)).unwrap();
    }
    let demo = dir.path().join("demo");
    let output = std::process::Command::new("bash")
        .arg(ws.root.join("demo.sh"))
        .env("DEMO_HOST", build.join("host"))
        .env("DEMO_DIR", &demo)
        .env_remove("HOST_PLUGIN_PATH")
        .env_remove("HOST_QUEUE_DIR")
        .env_remove("NO_COLOR")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{log}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!log.contains('\x1b'), "escape codes in a log:\n{log}");
    let said = String::from_utf8_lossy(&output.stderr);
    for (id, kind) in [(1, "write"), (2, "inspect"), (3, "test"), (4, "deploy")] {
        assert!(
            said.contains(&format!("added task {id} ({kind})")),
            "{said}"
        );
    }
    let plugins = dir.path().join("demo-plugins");
    assert!(
        log.contains(&format!("Plugins (copied to {})", plugins.display()))
            && !log.contains("REFUSED"),
        "{log}"
    );
    let mode = std::fs::metadata(&plugins).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "the demo's plugin folder is private");
    assert!(log.contains("completed       4"), "{log}");
    assert!(
        log.contains("demo-app/src/lib.rs"),
        "the deployed copy:\n{log}"
    );
}

#[test]
fn host_snooze_puts_a_task_off_without_spending_an_attempt() {
    let q = TestQueue::new();
    // A waiting task, by anyone: not claimed before the time, shown as snoozed.
    let waiting = q.add(&["--type", "noop"]);
    let said = q.ok(&["snooze", &waiting, "--for", "2h"]);
    assert!(
        said.contains(&format!("task {waiting}: snoozed until")),
        "{said}"
    );
    let task = q.task(&waiting);
    assert_eq!(task["status"], "pending");
    assert!(task["snoozedUntil"].is_string(), "{task:#}");
    assert!(q.ok(&["list"]).contains("snoozed until"));
    let none = q.fails(&["claim", "--role", "noop"]);
    assert!(none.contains("no task to claim"), "{none}");
    // Snoozing it to a time past makes it claimable again.
    q.ok(&["snooze", &waiting, "--until", "2020-01-01T00:00:00Z"]);
    assert!(q.task(&waiting).get("snoozedUntil").is_none());

    // A claimed task: only with its lease token, and the attempt is not counted.
    let claimed: Value =
        serde_json::from_str(&q.ok(&["claim", "--role", "noop", "--name", "me", "--json"]))
            .unwrap();
    let id = claimed["id"].as_str().unwrap().to_string();
    let refused = q.fails(&["snooze", &id, "--for", "1h"]);
    assert!(
        refused.contains(&format!("task {id}")) && refused.contains("--token"),
        "{refused}"
    );
    let token = claimed["leaseToken"].as_str().unwrap();
    q.ok(&[
        "snooze",
        &id,
        "--for",
        "1h",
        "--reason",
        "the API is down",
        "--token",
        token,
    ]);
    let task = q.task(&id);
    assert_eq!(task["status"], "pending", "{task:#}");
    assert_eq!(task["attempts"], 0, "{task:#}");
    assert_eq!(task["history"][0]["status"], "snoozed");
    assert_eq!(task["history"][0]["error"], "the API is down");

    // Neither or both of --for and --until is a usage error.
    let output = q.run(&["snooze", &id]);
    assert_eq!(output.status.code(), Some(2));
    let finished = q.add(&["--type", "noop"]);
    q.ok(&["cancel", &finished]);
    let refused = q.fails(&["snooze", &finished, "--for", "1h"]);
    assert!(refused.contains(&format!("task {finished}")), "{refused}");
}

#[test]
fn a_draining_worker_says_once_what_it_waits_for_when_it_can_claim_nothing_yet() {
    let q = TestQueue::new();
    let soon = q.add(&["--type", "noop", "--in", "2s"]);
    let output = q.drain("noop", &["--poll", "100ms"]);
    let said = String::from_utf8_lossy(&output.stderr);
    assert_eq!(q.task(&soon)["status"], "completed", "{said}");
    assert_eq!(
        said.matches(&format!(
            "--drain: nothing to claim yet; waiting for task {soon}, set to start at "
        ))
        .count(),
        1,
        "{said}"
    );
}

#[test]
fn a_draining_worker_sees_another_workers_last_task_end_without_waiting_out_its_poll() {
    use std::io::BufRead;
    let q = TestQueue::new();
    let target = q.scratch.display().to_string();
    // The task runs until the test opens its gate, once the second worker waits for it.
    let gate = q.scratch.join("gate");
    let wait_for_gate = format!("while [ ! -e '{}' ]; do sleep 0.05; done", gate.display());
    let payload = serde_json::json!({ "command": ["sh", "-c", wait_for_gate] });
    let id = q.add(&[
        "--type",
        "test",
        "--target",
        &target,
        "--payload",
        &payload.to_string(),
    ]);
    let mut busy = q.spawn_worker("tester", &["--drain", "--name", "busy"]);
    q.wait_for("the task to run", Duration::from_secs(30), |q| {
        q.task(&id)["status"] == "running"
    });
    // An hour between looks, and a task whose end rings no bell (it unblocks nothing): the
    // second worker looks sooner while what it waits for may end any moment.
    let mut second = q.spawn_worker("tester", &["--drain", "--name", "second", "--poll", "1h"]);
    let (lines, said) = std::sync::mpsc::channel();
    let stderr = second.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines.send(line);
        }
    });
    let waits = format!("waiting for task {id}, running on busy");
    let mut heard = Vec::new();
    while !heard.iter().any(|line: &String| line.contains(&waits)) {
        match said.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => heard.push(line),
            Err(_) => panic!("the second worker never said it waits: {heard:#?}"),
        }
    }
    std::fs::write(&gate, "").unwrap();
    let start = std::time::Instant::now();
    let exited = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > Duration::from_secs(60) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = second.kill();
    let _ = second.wait();
    heard.extend(said.try_iter());
    assert!(
        exited.is_some_and(|s| s.success()),
        "the second worker still waits a minute after the task ended: {heard:#?}"
    );
    assert!(busy.wait().unwrap().success());
    assert_eq!(q.task(&id)["status"], "completed");
}
