//! Agent-backed roles (a fake agent CLI stands in for each preset) and the self-serve verbs.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use integration_tests::TestQueue;
use serde_json::Value;

const PRESETS: [&str; 5] = ["copilot", "claude", "codex", "gemini", "aider"];

/// A folder of links named like each agent CLI, all to the fake agent.
fn fake_agents(q: &TestQueue) -> PathBuf {
    let bin = q.scratch.join("bin");
    fs::create_dir_all(&bin).unwrap();
    let fake = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/fake-agent/fake-agent");
    for name in PRESETS {
        // Made once per queue; a test that runs several CLIs asks again for each.
        match std::os::unix::fs::symlink(&fake, bin.join(name)) {
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
            made => made.unwrap(),
        }
    }
    bin
}

/// A `host.toml` with one role per preset: role `p-NAME` claims type `t-NAME`.
fn bind_presets(q: &TestQueue, extra: &str) {
    let mut toml = String::new();
    for name in PRESETS {
        toml.push_str(&format!(
            "[roles.p-{name}]\nhandler = \"agent\"\ntypes = [\"t-{name}\"]\nagent = \"{name}\"\n{extra}\n"
        ));
    }
    fs::write(q.queue.join("host.toml"), toml).unwrap();
}

/// Drains role `role` with the fake agents first on `PATH`, recording into `record`.
fn drain_agent(q: &TestQueue, role: &str, bin: &Path, record: &Path, env: &[(&str, &str)]) {
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let mut cmd = q.host();
    cmd.args(["--role", role, "--drain"])
        .env("PATH", path)
        .env("FAKE_AGENT_RECORD", record);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let output = cmd.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn recorded_argv(record: &Path) -> Vec<String> {
    let bytes = fs::read(record.join("argv")).unwrap();
    bytes
        .split(|b| *b == 0)
        .filter(|part| !part.is_empty())
        .map(|part| String::from_utf8(part.to_vec()).unwrap())
        .collect()
}

#[test]
fn each_preset_runs_its_cli_with_the_documented_argv_in_the_target() {
    let q = TestQueue::new();
    let bin = fake_agents(&q);
    bind_presets(&q, "");
    for name in PRESETS {
        let target = q.scratch.join(format!("target-{name}"));
        fs::create_dir_all(&target).unwrap();
        let id = q.add(&[
            "--type",
            &format!("t-{name}"),
            "--target",
            target.to_str().unwrap(),
            "--description",
            "Add a greeting",
        ]);
        let record = q.scratch.join(format!("record-{name}"));
        drain_agent(&q, &format!("p-{name}"), &bin, &record, &[]);

        let task = q.task(&id);
        assert_eq!(task["status"], "completed", "{task:#}");
        let argv = recorded_argv(&record);
        let prompt = argv
            .iter()
            .find(|a| a.contains("Add a greeting"))
            .unwrap_or_else(|| panic!("no prompt in {argv:?}"))
            .clone();
        assert!(
            prompt.contains(&format!("Task {id} (t-{name})")),
            "{prompt}"
        );
        let want: Vec<&str> = match name {
            "copilot" => vec![
                "copilot",
                "-p",
                &prompt,
                "--allow-all-tools",
                "--no-ask-user",
                "--output-format",
                "json",
                "--usage-output-file",
                argv.last().unwrap(),
            ],
            "claude" => vec![
                "claude",
                "-p",
                &prompt,
                "--permission-mode",
                "acceptEdits",
                "--output-format",
                "stream-json",
                "--verbose",
            ],
            "codex" => vec![
                "codex",
                "exec",
                "--json",
                "--skip-git-repo-check",
                "--sandbox",
                "workspace-write",
                &prompt,
            ],
            "gemini" => vec![
                "gemini",
                "-p",
                &prompt,
                "--approval-mode",
                "auto_edit",
                "--skip-trust",
                "--output-format",
                "stream-json",
            ],
            "aider" => vec![
                "aider",
                "--message",
                &prompt,
                "--yes-always",
                "--no-gitignore",
            ],
            _ => unreachable!(),
        };
        assert_eq!(argv, want);
        if name == "copilot" {
            let file = Path::new(argv.last().unwrap());
            assert!(
                file.is_absolute() && !file.exists(),
                "{file:?}: removed after"
            );
        }
        let cwd = fs::read_to_string(record.join("cwd")).unwrap();
        assert_eq!(
            Path::new(cwd.trim()).canonicalize().unwrap(),
            target.canonicalize().unwrap()
        );
        let created = task["result"]["changedFiles"]["created"]
            .as_array()
            .unwrap();
        assert!(
            created.contains(&"agent-was-here.txt".into()),
            "{created:?}"
        );
        assert_eq!(task["result"]["agent"], name);
        assert_eq!(task["result"]["program"], name);
        assert_eq!(task["result"]["prompt"]["via"], "argument");
        assert!(task["result"].get("command").is_none(), "no argv kept");
        assert!(prompt.ends_with("Make the change, then stop."), "{prompt}");
        // In the order the CLI wrote them, stdout and stderr together.
        let log = q.ok(&["logs", &id]);
        let order: Vec<&str> = log
            .lines()
            .filter_map(|l| l.split_once("fake agent: ").map(|(_, rest)| rest))
            .collect();
        assert_eq!(
            order,
            [
                format!("starting in {}", cwd.trim()).as_str(),
                "a note on stderr",
                "wrote agent-was-here.txt"
            ],
            "{log}"
        );
    }
}

#[test]
fn a_review_task_is_asked_for_a_report_not_a_change() {
    let q = TestQueue::new();
    let bin = fake_agents(&q);
    fs::write(
        q.queue.join("host.toml"),
        "[roles.reviewer]\nhandler = \"agent\"\ntypes = [\"review\"]\nagent = \"claude\"\n",
    )
    .unwrap();
    let target = q.scratch.join("t");
    fs::create_dir_all(&target).unwrap();
    q.add(&["--type", "review", "--target", target.to_str().unwrap()]);
    let record = q.scratch.join("record");
    drain_agent(&q, "reviewer", &bin, &record, &[]);
    let prompt = &recorded_argv(&record)[2];
    assert!(prompt.contains("Do not change any file"), "{prompt}");
    assert!(!prompt.contains("Make the change"), "{prompt}");
}

#[test]
fn a_failing_agent_fails_its_task_with_the_reason_the_cli_gave() {
    let q = TestQueue::new();
    let bin = fake_agents(&q);
    bind_presets(&q, "");
    let target = q.scratch.join("t");
    fs::create_dir_all(&target).unwrap();
    let failing = q.add(&["--type", "t-claude", "--target", target.to_str().unwrap()]);
    let env = [
        ("FAKE_AGENT_EXIT", "3"),
        (
            "FAKE_AGENT_STDERR",
            "\u{1b}[31mError:\u{1b}[0m Not logged in",
        ),
    ];
    drain_agent(&q, "p-claude", &bin, &q.scratch.join("record"), &env);
    let task = q.task(&failing);
    assert_eq!(task["status"], "failed", "{task:#}");
    let error = task["error"].as_str().unwrap();
    assert!(
        error.contains("`claude` exited with code 3: Error: Not logged in"),
        "{error}"
    );
    assert_eq!(task["result"]["exitCode"], 3);
}

#[test]
fn a_timed_out_attempt_keeps_its_output_and_names_the_cli_whichever_timeout_applies() {
    let q = TestQueue::new();
    let bin = fake_agents(&q);
    // The role's timeout for p-codex's tasks; the task's own for p-claude's.
    bind_presets(&q, "");
    let toml = fs::read_to_string(q.queue.join("host.toml"))
        .unwrap()
        .replace(
            "agent = \"codex\"\n",
            "agent = \"codex\"\ntimeout = \"5s\"\n",
        );
    fs::write(q.queue.join("host.toml"), toml).unwrap();
    let (first, second) = (q.scratch.join("t1"), q.scratch.join("t2"));
    fs::create_dir_all(&first).unwrap();
    fs::create_dir_all(&second).unwrap();
    let by_role = q.add(&["--type", "t-codex", "--target", first.to_str().unwrap()]);
    let by_task = q.add(&[
        "--type",
        "t-claude",
        "--target",
        second.to_str().unwrap(),
        "--timeout",
        "5s",
    ]);
    let started = std::time::Instant::now();
    let slow = [("FAKE_AGENT_SLEEP", "60")];
    drain_agent(&q, "p-codex", &bin, &q.scratch.join("r1"), &slow);
    drain_agent(&q, "p-claude", &bin, &q.scratch.join("r2"), &slow);
    assert!(started.elapsed().as_secs() < 40, "{:?}", started.elapsed());
    for (id, cli) in [(by_role, "codex"), (by_task, "claude")] {
        let task = q.task(&id);
        assert_eq!(task["status"], "failed", "{task:#}");
        let error = task["error"].as_str().unwrap();
        assert!(error.contains("timed out after 5s"), "{error}");
        assert!(error.contains(&format!("`{cli}`")), "{error}");
        let result = &task["result"];
        assert_eq!(result["timedOut"], true, "{task:#}");
        assert!(
            result["outputTail"]
                .as_str()
                .unwrap()
                .contains("wrote agent-was-here.txt"),
            "{task:#}"
        );
        assert_eq!(result["changedFiles"]["created"][0], "agent-was-here.txt");
    }
}

#[test]
fn a_cli_that_prints_nothing_for_the_stall_limit_fails_its_attempt_as_retryable() {
    let q = TestQueue::new();
    let bin = fake_agents(&q);
    bind_presets(&q, "stall = \"2s\"");
    let target = q.scratch.join("t");
    fs::create_dir_all(&target).unwrap();
    let target = target.to_str().unwrap();
    let silent = q.add(&[
        "--type",
        "t-gemini",
        "--target",
        target,
        "--max-attempts",
        "2",
    ]);
    let started = std::time::Instant::now();
    drain_agent(
        &q,
        "p-gemini",
        &bin,
        &q.scratch.join("r1"),
        &[("FAKE_AGENT_SLEEP", "60")],
    );
    assert!(started.elapsed().as_secs() < 30, "{:?}", started.elapsed());
    let task = q.task(&silent);
    assert_eq!(task["status"], "failed", "{task:#}");
    assert_eq!(task["attempts"], 2, "retried once: {task:#}");
    let error = task["error"].as_str().unwrap();
    assert!(
        error.contains("`gemini` printed no event of work for 2s")
            && error.contains("was killed as stalled"),
        "{error}"
    );
    assert_eq!(task["result"]["stalled"], true);

    // Output, however slow the work, keeps a CLI without structured output alive.
    let chatty = q.add(&["--type", "t-aider", "--target", target]);
    let env = [("FAKE_AGENT_SLEEP", "4"), ("FAKE_AGENT_CHATTY", "1")];
    drain_agent(&q, "p-aider", &bin, &q.scratch.join("r2"), &env);
    assert_eq!(q.task(&chatty)["status"], "completed");
}

#[test]
fn a_structured_cli_that_only_retries_stalls_and_one_that_works_slowly_does_not() {
    let q = TestQueue::new();
    let bin = fake_agents(&q);
    bind_presets(&q, "stall = \"2s\"");
    let target = q.scratch.join("t");
    fs::create_dir_all(&target).unwrap();
    let target = target.to_str().unwrap();
    // Codex without network: a retry on stderr and an `error` event, again and again.
    for (n, retry) in [
        "stream error: error sending request; retrying 1/5 in 200ms",
        r#"{"type":"error","message":"Reconnecting... 1/5"}"#,
    ]
    .into_iter()
    .enumerate()
    {
        let id = q.add(&[
            "--type",
            "t-codex",
            "--target",
            target,
            "--max-attempts",
            "1",
        ]);
        let started = std::time::Instant::now();
        let env = [("FAKE_AGENT_SLEEP", "20"), ("FAKE_AGENT_CHATTY", retry)];
        drain_agent(&q, "p-codex", &bin, &q.scratch.join(format!("r{n}")), &env);
        assert!(started.elapsed().as_secs() < 15, "{:?}", started.elapsed());
        let task = q.task(&id);
        assert_eq!(task["status"], "failed", "{retry}: {task:#}");
        assert_eq!(task["result"]["stalled"], true, "{retry}");
        let error = task["error"].as_str().unwrap();
        assert!(error.contains("killed as stalled"), "{error}");
    }
    // Events of work, however slow the work, keep it alive.
    let working = q.add(&["--type", "t-codex", "--target", target]);
    let event =
        r#"{"type":"item.completed","item":{"id":"i","type":"reasoning","text":"thinking"}}"#;
    let env = [("FAKE_AGENT_SLEEP", "4"), ("FAKE_AGENT_CHATTY", event)];
    drain_agent(&q, "p-codex", &bin, &q.scratch.join("r9"), &env);
    assert_eq!(q.task(&working)["status"], "completed");
}

#[test]
fn a_missing_target_folder_is_named() {
    let q = TestQueue::new();
    let bin = fake_agents(&q);
    bind_presets(&q, "");
    let target = q.scratch.join("gone");
    fs::create_dir_all(&target).unwrap();
    let id = q.add(&["--type", "t-claude", "--target", target.to_str().unwrap()]);
    fs::remove_dir(&target).unwrap();
    drain_agent(&q, "p-claude", &bin, &q.scratch.join("r"), &[]);
    let error = q.task(&id)["error"].as_str().unwrap().to_string();
    assert!(
        error.contains(&format!(
            "target folder {} does not exist",
            target.display()
        )),
        "{error}"
    );
    assert!(!error.contains("PATH"), "{error}");
}

#[test]
fn a_role_refuses_a_task_under_its_bound_name() {
    let q = TestQueue::new();
    bind_presets(&q, "");
    let line = q.fails(&["add", "--type", "t-claude"]);
    assert!(line.contains("role p-claude refuses the task"), "{line}");

    // A binding named like a plugin role is one role among those available.
    let mut toml = fs::read_to_string(q.queue.join("host.toml")).unwrap();
    toml.push_str("[roles.writer]\nhandler = \"agent\"\nagent = \"claude\"\n");
    fs::write(q.queue.join("host.toml"), toml).unwrap();
    let line = q.fails(&["--role", "nosuch"]);
    let available = line.split("available roles: ").nth(1).unwrap();
    assert_eq!(available.matches("writer").count(), 1, "{line}");
}

#[test]
fn a_custom_command_beside_a_preset_is_what_the_result_names() {
    let q = TestQueue::new();
    let bin = fake_agents(&q);
    fs::write(
        q.queue.join("host.toml"),
        "[roles.mixed]\nhandler = \"agent\"\ntypes = [\"m\"]\nagent = \"copilot\"\ncommand = [\"claude\", \"--print\", \"{prompt}\"]\n",
    )
    .unwrap();
    let target = q.scratch.join("t");
    fs::create_dir_all(&target).unwrap();
    let id = q.add(&["--type", "m", "--target", target.to_str().unwrap()]);
    let record = q.scratch.join("r");
    drain_agent(&q, "mixed", &bin, &record, &[]);
    let task = q.task(&id);
    assert_eq!(task["result"]["program"], "claude", "{task:#}");
    assert_eq!(task["result"]["agent"], Value::Null, "{task:#}");
    assert_eq!(recorded_argv(&record)[..2], ["claude", "--print"]);
}

/// Starts a worker for `role` that must refuse to start; returns its one line of error.
fn refused_start(q: &TestQueue, role: &str) -> String {
    let output = q
        .host()
        .args(["--role", role, "--drain"])
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    stderr
}

#[test]
fn a_worker_whose_cli_is_missing_or_unset_refuses_to_start_and_fails_nothing() {
    let q = TestQueue::new();
    bind_presets(&q, "");
    let mut toml = fs::read_to_string(q.queue.join("host.toml")).unwrap();
    toml.push_str("[roles.bare]\nhandler = \"agent\"\ntypes = [\"t-bare\"]\n");
    toml.push_str(
        "[roles.typo]\nhandler = \"agent\"\ntypes = [\"t-typo\"]\nagent = \"claude\"\nprompt = \"Do {descripton}\"\n",
    );
    fs::write(q.queue.join("host.toml"), toml).unwrap();
    let target = q.scratch.join("t");
    fs::create_dir_all(&target).unwrap();
    let id = q.add(&["--type", "t-gemini", "--target", target.to_str().unwrap()]);

    let line = refused_start(&q, "p-gemini");
    assert!(line.contains("role p-gemini"), "{line}");
    assert!(line.contains("[roles.p-gemini]"), "{line}");
    assert!(line.contains("program `gemini` is not installed"), "{line}");
    assert_eq!(q.task(&id)["status"], "pending", "nothing was claimed");

    let line = refused_start(&q, "bare");
    assert!(line.contains("[roles.bare]"), "{line}");
    assert!(line.contains("neither `agent`"), "{line}");

    let line = refused_start(&q, "typo");
    assert!(line.contains("unknown placeholder {descripton}"), "{line}");
}

#[test]
fn the_prompt_of_a_task_that_comes_after_another_includes_its_result() {
    let q = TestQueue::new();
    let bin = fake_agents(&q);
    bind_presets(&q, "prompt = \"Do {description} using:\\n{after}\"");
    let first = q.add(&["--type", "noop", "--payload", r#"{"answer": 42}"#]);
    q.drain("noop", &[]);
    let target = q.scratch.join("t");
    fs::create_dir_all(&target).unwrap();
    q.add(&[
        "--type",
        "t-copilot",
        "--target",
        target.to_str().unwrap(),
        "--description",
        "the follow-up",
        "--after",
        &first,
    ]);
    let record = q.scratch.join("record");
    drain_agent(&q, "p-copilot", &bin, &record, &[]);
    let argv = recorded_argv(&record);
    let prompt = &argv[2];
    assert!(prompt.starts_with("Do the follow-up using:"), "{prompt}");
    assert!(prompt.contains(&format!("task {first} (noop)")), "{prompt}");
    assert!(prompt.contains("\"answer\": 42"), "{prompt}");
}

#[test]
fn a_long_after_chain_keeps_its_prompts_bounded_and_completes() {
    let q = TestQueue::new();
    let bin = fake_agents(&q);
    bind_presets(&q, "");
    let target = q.scratch.join("t");
    fs::create_dir_all(&target).unwrap();
    let target = target.to_str().unwrap();
    // Each step's CLI prints a 5 KB line, which its result keeps in its output tail: more than
    // a prerequisite may bring into a prompt.
    let mut previous: Option<String> = None;
    let mut ids = Vec::new();
    for step in 0..15 {
        let mut args = vec![
            "--type".to_string(),
            "t-copilot".into(),
            "--target".into(),
            target.into(),
            "--description".into(),
            format!("step {step}"),
        ];
        if let Some(previous) = &previous {
            args.extend(["--after".into(), previous.clone()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let id = q.add(&args);
        previous = Some(id.clone());
        ids.push(id);
    }
    let noisy = "x".repeat(5000);
    let env = [("FAKE_AGENT_STDERR", noisy.as_str())];
    let record = q.scratch.join("r");
    drain_agent(&q, "p-copilot", &bin, &record, &env);
    for id in &ids {
        let task = q.task(id);
        assert_eq!(task["status"], "completed", "{task:#}");
        assert!(
            task["result"]["prompt"]["bytes"].as_u64().unwrap() < 8_000,
            "{task:#}"
        );
    }
    let last_prompt = &recorded_argv(&record)[2];
    let before_last = &ids[ids.len() - 2];
    assert!(
        last_prompt.contains(&format!(
            "(cut; the whole result: `host show {before_last}`)"
        )),
        "{last_prompt}"
    );

    // Many prerequisites together are bounded too, naming those left out.
    let many: Vec<String> = (0..6)
        .map(|_| q.add(&["--type", "t-copilot", "--target", target]))
        .collect();
    drain_agent(&q, "p-copilot", &bin, &record, &env);
    let mut args = vec!["--type", "t-copilot", "--target", target];
    for id in &many {
        args.extend(["--after", id.as_str()]);
    }
    let fan_in = q.add(&args);
    drain_agent(&q, "p-copilot", &bin, &record, &[]);
    let prompt = &recorded_argv(&record)[2];
    assert!(
        prompt.contains("more; see `host show ID` for each of"),
        "{prompt}"
    );
    let bytes = q.task(&fan_in)["result"]["prompt"]["bytes"]
        .as_u64()
        .unwrap();
    assert!(bytes < 20_000, "{bytes}");
}

#[test]
fn a_command_that_leaves_a_process_holding_its_output_still_finishes() {
    let q = TestQueue::new();
    fs::write(
        q.queue.join("host.toml"),
        "[roles.bg]\nhandler = \"agent\"\ntypes = [\"bg\"]\ncommand = [\"sh\", \"-c\", \"sleep 60 & echo started {id}\"]\n",
    )
    .unwrap();
    let target = q.scratch.join("t");
    fs::create_dir_all(&target).unwrap();
    let id = q.add(&["--type", "bg", "--target", target.to_str().unwrap()]);
    let started = std::time::Instant::now();
    q.drain("bg", &[]);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    let task = q.task(&id);
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(task["result"]["outputTail"], format!("started {id}"));
}

#[test]
fn a_prompt_too_long_for_an_argument_reaches_each_cli_another_way() {
    let q = TestQueue::new();
    let bin = fake_agents(&q);
    bind_presets(&q, "");
    let mut toml = fs::read_to_string(q.queue.join("host.toml")).unwrap();
    toml.push_str(
        "[roles.custom]\nhandler = \"agent\"\ntypes = [\"t-custom\"]\ncommand = [\"claude\", \"{prompt}\"]\n",
    );
    fs::write(q.queue.join("host.toml"), toml).unwrap();
    let target = q.scratch.join("t");
    fs::create_dir_all(&target).unwrap();
    let target = target.to_str().unwrap();
    let long = format!("{}END", "a very long description ".repeat(5_000));
    // Too long for `host add --description` too: added from a file.
    let add_long = |task_type: &str| {
        let file = q.scratch.join("long.jsonl");
        let line = serde_json::json!({"type": task_type, "target": target, "description": long});
        fs::write(&file, line.to_string()).unwrap();
        q.ok(&["add", "--file", file.to_str().unwrap()])
            .trim()
            .to_string()
    };
    for (name, via) in [
        ("copilot", "stdin"),
        ("claude", "stdin"),
        ("codex", "stdin"),
        ("gemini", "stdin"),
        ("aider", "file"),
    ] {
        let id = add_long(&format!("t-{name}"));
        let record = q.scratch.join(format!("r-{name}"));
        drain_agent(&q, &format!("p-{name}"), &bin, &record, &[]);
        let task = q.task(&id);
        assert_eq!(task["status"], "completed", "{name}: {task:#}");
        assert_eq!(task["result"]["prompt"]["via"], via, "{name}");
        let given = fs::read_to_string(record.join(if via == "file" {
            "prompt-file"
        } else {
            "stdin"
        }))
        .unwrap();
        assert!(given.contains(&long), "{name}: the whole prompt arrived");
        let argv = recorded_argv(&record);
        assert!(argv.iter().all(|a| a.len() < 1000), "{name}: {argv:?}");
    }
    // A custom command that takes the prompt as an argument is told what to do instead.
    let id = add_long("t-custom");
    drain_agent(&q, "custom", &bin, &q.scratch.join("r-custom"), &[]);
    let error = q.task(&id)["error"].as_str().unwrap().to_string();
    assert!(error.contains("{prompt_file}"), "{error}");
}

#[test]
fn two_agents_claiming_at_once_never_get_the_same_task() {
    let q = TestQueue::new();
    let file = q.scratch.join("tasks.jsonl");
    fs::write(&file, vec![r#"{"type": "noop"}"#; 30].join("\n")).unwrap();
    q.ok(&["add", "--file", file.to_str().unwrap()]);
    let claimed: Vec<Vec<String>> = std::thread::scope(|scope| {
        let agents: Vec<_> = ["agent-a", "agent-b"]
            .into_iter()
            .map(|name| {
                let q = &q;
                scope.spawn(move || {
                    let mut mine = Vec::new();
                    loop {
                        let output = q
                            .host()
                            .args(["claim", "--role", "noop", "--json", "--name", name])
                            .output()
                            .unwrap();
                        if !output.status.success() {
                            let stderr = String::from_utf8_lossy(&output.stderr);
                            assert!(stderr.contains("no task to claim"), "{stderr}");
                            return mine;
                        }
                        let task: Value = serde_json::from_slice(&output.stdout).unwrap();
                        let id = task["id"].as_str().unwrap().to_string();
                        let token = task["leaseToken"].as_str().unwrap();
                        q.ok(&["heartbeat", &id, "--token", token]);
                        q.ok(&[
                            "complete",
                            &id,
                            "--token",
                            token,
                            "--result",
                            r#"{"by": "me"}"#,
                        ]);
                        mine.push(id);
                    }
                })
            })
            .collect();
        agents.into_iter().map(|a| a.join().unwrap()).collect()
    });
    let all: Vec<&String> = claimed.iter().flatten().collect();
    let unique: HashSet<&String> = all.iter().copied().collect();
    assert_eq!(all.len(), 30, "every task claimed once");
    assert_eq!(unique.len(), 30, "no task claimed twice");
    assert!(
        claimed.iter().all(|c| !c.is_empty()),
        "both agents got work"
    );
    for task in q.results() {
        assert_eq!(task["status"], "completed");
        assert_eq!(task["result"]["by"], "me");
    }
}

#[test]
fn only_the_holder_of_a_lease_may_extend_or_finish_its_task() {
    let q = TestQueue::new();
    // A task a worker runs: nobody else completes it, and the worker records its own outcome.
    let running = q.add(&["--type", "sleep", "--payload", r#"{"ms": 1500}"#]);
    let worker = q.spawn_worker("sleeper", &["--name", "the-worker", "--drain"]);
    q.wait_for("the task to run", Duration::from_secs(20), |q| {
        q.task(&running)["status"] == "running"
    });
    for args in [
        vec![
            "complete",
            &running,
            "--token",
            "0123456789abcdef0123456789abcdef",
        ],
        vec!["fail", &running, "--token", "guess", "--error", "stolen"],
        vec!["heartbeat", &running, "--token", "guess"],
    ] {
        let line = q.fails(&args);
        assert!(line.contains("held by the-worker"), "{line}");
    }
    assert!(worker.wait_with_output().unwrap().status.success());
    let task = q.task(&running);
    assert_eq!(task["status"], "completed");
    assert_eq!(task["result"]["slept_ms"], 1500, "the worker's own result");
    assert_eq!(task["history"][0]["finishedBy"], "the-worker");

    // A task an assistant claimed: only its token acts on it.
    let id = q.add(&["--type", "noop", "--max-attempts", "1"]);
    let claimed: Value =
        serde_json::from_str(&q.ok(&["claim", "--role", "noop", "--name", "me", "--json"]))
            .unwrap();
    assert_eq!(claimed["id"], id.as_str());
    let token = claimed["leaseToken"].as_str().unwrap().to_string();
    assert!(token.len() >= 32, "{token}");
    assert!(
        q.task(&id).get("leaseToken").is_none(),
        "the token is not shown to others"
    );
    let line = q.fails(&["complete", &id, "--token", "not-the-token"]);
    assert!(line.contains("held by me"), "{line}");
    q.ok(&["fail", &id, "--error", "could not do it", "--token", &token]);
    let task = q.task(&id);
    assert_eq!(task["status"], "failed");
    assert!(task["error"].as_str().unwrap().contains("could not do it"));
    assert_eq!(task["history"][0]["finishedBy"], "me");
    let line = q.fails(&["complete", &id, "--token", &token]);
    assert!(line.contains("lost"), "{line}");

    // A heartbeat after the lease expired does not revive it.
    let late = q.add(&["--type", "noop"]);
    let claimed: Value = serde_json::from_str(&q.ok(&[
        "claim", "--role", "noop", "--name", "slow", "--lease", "1s", "--json",
    ]))
    .unwrap();
    let token = claimed["leaseToken"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(1300));
    let line = q.fails(&["heartbeat", &late, "--token", &token]);
    assert!(line.contains("expired"), "{line}");
    let line = q.fails(&["complete", &late, "--token", &token]);
    assert!(line.contains("expired"), "{line}");
}

#[test]
fn a_self_serve_holder_waits_for_work_reports_on_it_and_is_listed_while_it_holds_it() {
    let q = TestQueue::new();
    // Nothing to claim yet: the claim waits, and takes the task added meanwhile.
    let claim = q
        .host()
        .args(["claim", "--role", "noop", "--name", "helper", "--json"])
        .args(["--wait", "20s", "--lease", "5m"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let mut claim = claim;
    assert!(
        claim.try_wait().unwrap().is_none(),
        "the claim waits for work"
    );
    let started = std::time::Instant::now();
    let id = q.add(&["--type", "noop"]);
    let output = claim.wait_with_output().unwrap();
    assert!(output.status.success());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "picked up at once"
    );
    let claimed: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(claimed["id"], id.as_str());
    let token = claimed["leaseToken"].as_str().unwrap().to_string();

    q.ok(&[
        "log",
        &id,
        "--token",
        &token,
        "reading the code",
        "line two",
    ]);
    q.ok(&["progress", &id, "60", "writing tests", "--token", &token]);
    let status = q.status();
    let holder = status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "helper")
        .unwrap_or_else(|| panic!("holder not listed: {status:#}"));
    assert_eq!(holder["alive"], true, "{holder:#}");
    assert_eq!(holder["role"], "noop");
    assert_eq!(holder["tasks"][0]["id"], id.as_str());
    assert_eq!(holder["tasks"][0]["progress"], 60);
    assert_eq!(holder["tasks"][0]["message"], "writing tests");
    let text = q.ok(&["status"]);
    let row = text.lines().find(|l| l.starts_with("helper")).unwrap();
    assert!(
        row.contains("60%") && row.contains("writing tests"),
        "{text}"
    );
    let log = q.ok(&["logs", &id]);
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        ["reading the code", "line two"]
    );
    // `host watch`, not on a terminal, prints the same rows.
    let mut watch = q
        .host()
        .args(["watch", "--interval", "200ms"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    watch.kill().unwrap();
    let seen = String::from_utf8(watch.wait_with_output().unwrap().stdout).unwrap();
    assert!(
        seen.lines()
            .any(|l| l.starts_with("helper") && l.contains("writing tests")),
        "{seen}"
    );

    q.ok(&["complete", &id, "--token", &token]);
    let status = q.status();
    assert!(
        !status["workers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["name"] == "helper"),
        "{status:#}"
    );
    // Waiting runs out with the usual message.
    let line = q.fails(&["claim", "--role", "noop", "--wait", "1s"]);
    assert!(
        line.contains("no task to claim for role noop after waiting 1s"),
        "{line}"
    );
}

/// Events as each CLI writes them in its structured headless mode (Claude Code's taken from a
/// real run of 2.1.197, cut down; Codex's from codex-cli 0.169.0 `exec --json`; Gemini CLI's
/// as its stream-json formatter documents them).
fn events(cli: &str) -> Vec<Value> {
    use serde_json::json;
    match cli {
        "claude" => vec![
            json!({"type": "system", "subtype": "init", "model": "claude-opus", "session_id": "s"}),
            json!({"type": "assistant", "message": {"content": [
                {"type": "text", "text": "I will add the greeting."},
                {"type": "tool_use", "name": "Write", "input": {"file_path": "hello.txt"}}]}}),
            json!({"type": "user", "message": {"content": [{"type": "tool_result", "content": "ok"}]}}),
            json!({"type": "result", "subtype": "success", "is_error": false, "result": "Added hello.txt.",
                   "total_cost_usd": 0.125,
                   "usage": {"input_tokens": 100, "cache_read_input_tokens": 20, "output_tokens": 30}}),
        ],
        "codex" => vec![
            json!({"type": "thread.started", "thread_id": "t"}),
            json!({"type": "turn.started"}),
            json!({"type": "item.completed", "item": {"id": "i0", "type": "command_execution",
                   "command": "ls", "aggregated_output": "", "exit_code": 0, "status": "completed"}}),
            json!({"type": "item.completed", "item": {"id": "i1", "type": "agent_message", "text": "Added hello.txt."}}),
            json!({"type": "turn.completed", "usage": {"input_tokens": 200, "cached_input_tokens": 50, "output_tokens": 40}}),
        ],
        "gemini" => vec![
            json!({"type": "init", "session_id": "s", "model": "gemini-pro"}),
            json!({"type": "message", "role": "user", "content": "the prompt"}),
            json!({"type": "tool_use", "tool_name": "write_file", "tool_id": "w", "parameters": {"file_path": "hello.txt"}}),
            json!({"type": "tool_result", "tool_id": "w", "status": "success"}),
            json!({"type": "message", "role": "assistant", "content": "Added ", "delta": true}),
            json!({"type": "message", "role": "assistant", "content": "hello.txt.", "delta": true}),
            json!({"type": "result", "status": "success", "stats": {"total_tokens": 70, "input_tokens": 50, "output_tokens": 20}}),
        ],
        _ => unreachable!(),
    }
}

#[test]
fn structured_output_is_logged_readably_and_its_answer_and_usage_are_kept_and_summed() {
    let q = TestQueue::new();
    let mut ids = Vec::new();
    for cli in ["claude", "codex", "gemini"] {
        let task = run_events(&q, cli, &events(cli), "0");
        let id = task["id"].as_str().unwrap().to_string();
        assert_eq!(task["status"], "completed", "{task:#}");
        assert_eq!(task["result"]["finalMessage"], "Added hello.txt.", "{cli}");
        let log = q.ok(&["logs", &id]);
        assert!(
            !log.contains("{\"type\""),
            "{cli}: raw events in the log:\n{log}"
        );
        ids.push((cli, id, log));
    }
    let (_, claude, log) = &ids[0];
    assert!(log.contains("assistant: I will add the greeting."), "{log}");
    assert!(
        log.contains("tool Write: {\"file_path\":\"hello.txt\"}"),
        "{log}"
    );
    assert_eq!(
        q.task(claude)["result"]["usage"],
        serde_json::json!({"inputTokens": 120, "outputTokens": 30, "costUsd": 0.125})
    );
    let (_, codex, log) = &ids[1];
    assert!(log.contains("command: ls (exit 0)"), "{log}");
    assert_eq!(
        q.task(codex)["result"]["usage"],
        serde_json::json!({"inputTokens": 200, "outputTokens": 40})
    );
    let (_, gemini, log) = &ids[2];
    assert!(
        log.contains("tool write_file: {\"file_path\":\"hello.txt\"}"),
        "{log}"
    );
    assert_eq!(
        q.task(gemini)["result"]["usage"],
        serde_json::json!({"inputTokens": 50, "outputTokens": 20})
    );

    // Summed per role and per type by `host stats`.
    let stats: Value = serde_json::from_str(&q.ok(&["stats", "--json"])).unwrap();
    assert_eq!(
        stats["byRole"]["p-claude"]["usage"]["costUsd"], 0.125,
        "{stats:#}"
    );
    assert_eq!(stats["byType"]["t-codex"]["usage"]["inputTokens"], 200);
    assert_eq!(stats["all"]["usage"]["tasks"], 3);
    assert_eq!(stats["all"]["usage"]["outputTokens"], 90);
    let human = q.ok(&["stats"]);
    assert!(
        human.contains("$0.12") || human.contains("$0.13"),
        "{human}"
    );
}

/// Runs one task of `cli`'s preset whose fake CLI prints `events` and exits with `exit`;
/// answers the task.
fn run_events(q: &TestQueue, cli: &str, events: &[Value], exit: &str) -> Value {
    let bin = fake_agents(q);
    bind_presets(q, "");
    let lines: Vec<String> = events.iter().map(Value::to_string).collect();
    let file = q.scratch.join(format!("{cli}.jsonl"));
    fs::write(&file, lines.join("\n") + "\n").unwrap();
    let target = q.scratch.join(format!("target-{cli}"));
    fs::create_dir_all(&target).unwrap();
    let id = q.add(&[
        "--type",
        &format!("t-{cli}"),
        "--target",
        target.to_str().unwrap(),
    ]);
    drain_agent(
        q,
        &format!("p-{cli}"),
        &bin,
        &q.scratch.join(format!("record-{cli}")),
        &[
            ("FAKE_AGENT_EVENTS", file.to_str().unwrap()),
            ("FAKE_AGENT_EXIT", exit),
        ],
    );
    q.task(&id)
}

#[test]
fn a_cost_no_cli_reported_is_left_out_of_stats_and_results_show_the_final_message() {
    let q = TestQueue::new();
    let task = run_events(&q, "codex", &events("codex"), "0");
    assert_eq!(task["status"], "completed", "{task:#}");
    let stats: Value = serde_json::from_str(&q.ok(&["stats", "--json"])).unwrap();
    let usage = &stats["byRole"]["p-codex"]["usage"];
    assert_eq!(usage["inputTokens"], 200, "{stats:#}");
    assert!(
        usage.get("costUsd").is_none(),
        "no cost was reported: {usage}"
    );
    assert!(stats["all"]["usage"].get("costUsd").is_none(), "{stats:#}");
    let results = q.ok(&["results"]);
    assert!(results.contains("Added hello.txt."), "{results}");
    assert!(
        !results.contains("{\"finalMessage\""),
        "raw JSON: {results}"
    );
}

#[test]
fn a_final_answer_longer_than_64_kib_keeps_the_answer_its_tokens_and_cost() {
    use serde_json::json;
    let q = TestQueue::new();
    let answer: String = (0..8_000)
        .map(|n| format!("line {n:05}\n"))
        .collect::<String>();
    assert!(answer.len() > 80_000);
    let task = run_events(
        &q,
        "claude",
        &[
            json!({"type": "system", "subtype": "init", "model": "claude-opus"}),
            json!({"type": "result", "subtype": "success", "is_error": false, "result": answer,
                   "total_cost_usd": 0.5,
                   "usage": {"input_tokens": 1000, "output_tokens": 20000}}),
        ],
        "0",
    );
    assert_eq!(task["status"], "completed", "{task:#}");
    let kept = task["result"]["finalMessage"].as_str().unwrap_or_default();
    assert!(
        kept == answer,
        "the answer kept is {} bytes of {}",
        kept.len(),
        answer.len()
    );
    assert_eq!(
        task["result"]["usage"],
        json!({"inputTokens": 1000, "outputTokens": 20000, "costUsd": 0.5})
    );
    let log = q.ok(&["logs", task["id"].as_str().unwrap()]);
    assert!(log.contains("result: success"), "{log}");
    assert!(!log.contains("{\"type\""), "raw events in the log:\n{log}");
}

#[test]
fn the_reasons_a_cli_gives_for_failing_are_in_the_tasks_error() {
    use serde_json::json;
    let q = TestQueue::new();
    let task = run_events(
        &q,
        "gemini",
        &[
            json!({"type": "init", "session_id": "s", "model": "gemini-pro"}),
            json!({"type": "result", "status": "error",
                   "error": {"type": "FatalAuthenticationError",
                             "message": "API key not valid. Please pass a valid API key."},
                   "stats": {"input_tokens": 0, "output_tokens": 0}}),
        ],
        "144",
    );
    assert_eq!(task["status"], "failed", "{task:#}");
    let error = task["error"].as_str().unwrap();
    assert!(
        error.contains("`gemini` exited with code 144: error: API key not valid."),
        "{error}"
    );

    // Claude Code's turn limit and errors during execution give their reasons in `errors`.
    for (subtype, reason) in [
        ("error_max_turns", "Reached maximum number of turns (3)"),
        ("error_during_execution", "Tool Bash failed to start"),
    ] {
        let q = TestQueue::new();
        let task = run_events(
            &q,
            "claude",
            &[
                json!({"type": "result", "subtype": subtype, "is_error": true,
                     "errors": [reason], "total_cost_usd": 0.01,
                     "usage": {"input_tokens": 10, "output_tokens": 1}}),
            ],
            "1",
        );
        assert_eq!(task["status"], "failed", "{task:#}");
        let error = task["error"].as_str().unwrap();
        assert!(
            error.contains(&format!("`claude` exited with code 1: error: {reason}")),
            "{error}"
        );
    }
}

#[test]
fn claude_tokens_count_every_model_call_as_its_cost_does() {
    use serde_json::json;
    let q = TestQueue::new();
    // As a real run reports them: `usage` the main model's last call, `modelUsage` all calls.
    let task = run_events(
        &q,
        "claude",
        &[
            json!({"type": "result", "subtype": "success", "is_error": false, "result": "Done.",
                 "total_cost_usd": 0.03,
                 "usage": {"input_tokens": 2000, "cache_read_input_tokens": 1000,
                           "output_tokens": 100},
                 "modelUsage": {
                     "claude-opus": {"inputTokens": 2000, "cacheReadInputTokens": 1000,
                                     "cacheCreationInputTokens": 500, "outputTokens": 120,
                                     "costUSD": 0.025},
                     "claude-haiku": {"inputTokens": 1000, "cacheReadInputTokens": 0,
                                      "cacheCreationInputTokens": 0, "outputTokens": 30,
                                      "costUSD": 0.005}}}),
        ],
        "0",
    );
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(
        task["result"]["usage"],
        json!({"inputTokens": 4500, "outputTokens": 150, "costUsd": 0.03})
    );
}

/// A worker of `role` with the fake agents first on `PATH`, printing `events` (when there are
/// any) and exiting with `exit`; its stderr is captured. Not started yet.
fn agent_worker(q: &TestQueue, role: &str, events: &[Value], exit: &str) -> Command {
    let bin = fake_agents(q);
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let mut worker = q.host();
    worker
        .args(["--role", role, "--poll", "100ms"])
        .env("PATH", path)
        .env(
            "FAKE_AGENT_RECORD",
            q.scratch.join(format!("record-{role}")),
        )
        .env("FAKE_AGENT_EXIT", exit)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    if !events.is_empty() {
        let lines: Vec<String> = events.iter().map(Value::to_string).collect();
        let file = q.scratch.join(format!("{role}.jsonl"));
        fs::write(&file, lines.join("\n") + "\n").unwrap();
        worker.env("FAKE_AGENT_EVENTS", &file);
    }
    worker
}

/// [`agent_worker`], started.
fn spawn_agent(q: &TestQueue, role: &str, events: &[Value], exit: &str) -> std::process::Child {
    agent_worker(q, role, events, exit).spawn().unwrap()
}

/// Claude Code's events when the five-hour window is spent, resetting at `resets_at`.
fn claude_limit_events(resets_at: i64) -> Vec<Value> {
    use serde_json::json;
    vec![
        json!({"type": "system", "subtype": "init", "model": "claude-opus"}),
        json!({"type": "rate_limit_event", "rate_limit_info": {"status": "rejected",
               "resetsAt": resets_at, "rateLimitType": "five_hour"}}),
        json!({"type": "result", "subtype": "success", "is_error": true,
               "result": "You've hit your limit · resets 2pm (Europe/Paris)",
               "total_cost_usd": 0, "usage": {"input_tokens": 0, "output_tokens": 0}}),
    ]
}

pub(crate) fn stop(worker: std::process::Child) -> String {
    integration_tests::signal(&worker, nix::sys::signal::Signal::SIGTERM);
    let output = worker.wait_with_output().unwrap();
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_usage_limit_snoozes_the_task_without_an_attempt_and_holds_the_role_until_it_resets() {
    let q = TestQueue::new();
    bind_presets(&q, "");
    let resets_at = jiff::Timestamp::now().as_second() + 7200;
    let first = q.add(&[
        "--type",
        "t-claude",
        "--target",
        q.scratch.to_str().unwrap(),
    ]);
    let second = q.add(&[
        "--type",
        "t-claude",
        "--target",
        q.scratch.to_str().unwrap(),
    ]);
    let worker = spawn_agent(&q, "p-claude", &claude_limit_events(resets_at), "1");
    q.wait_for("the limit to be met", Duration::from_secs(30), |q| {
        q.task(&first)["snoozedUntil"].is_string()
    });
    // The account is out: the worker claims nothing more, though a task waits.
    std::thread::sleep(Duration::from_millis(1500));
    let task = q.task(&first);
    let said = stop(worker);
    assert_eq!(task["status"], "pending", "{task:#}");
    assert_eq!(task["attempts"], 0, "no attempt spent: {task:#}");
    let until: jiff::Timestamp = task["snoozedUntil"].as_str().unwrap().parse().unwrap();
    assert_eq!(until.as_second(), resets_at, "{task:#}");
    assert_eq!(task["retryAt"], task["snoozedUntil"]);
    let attempt = task["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(attempt["status"], "snoozed", "{task:#}");
    assert!(
        attempt["error"]
            .as_str()
            .unwrap()
            .contains("usage limit: five-hour limit reached"),
        "{attempt:#}"
    );
    assert_eq!(
        q.task(&second)["attempts"],
        0,
        "claimed after the limit: {said}"
    );
    assert!(said.contains("role p-claude: usage limit until"), "{said}");

    let status = q.ok(&["status"]);
    assert!(status.contains("p-claude: usage limit until"), "{status}");
    let report: Value = serde_json::from_str(&q.ok(&["status", "--json"])).unwrap();
    assert_eq!(report["usageLimits"][0]["role"], "p-claude", "{report:#}");
    assert_eq!(
        report["usageLimits"][0]["types"][0], "t-claude",
        "{report:#}"
    );
    let list = q.ok(&["list"]);
    assert!(list.contains("snoozed until"), "{list}");
    // The inbox lists the role's limit, with the task that met it.
    let inbox: Value = serde_json::from_str(&q.ok(&["inbox", "--json"])).unwrap();
    let limit = inbox
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["kind"] == "usage_limit")
        .unwrap_or_else(|| panic!("{inbox:#}"));
    assert_eq!(limit["task"], task["id"], "{inbox:#}");
    assert!(
        limit["title"]
            .as_str()
            .unwrap()
            .contains("role p-claude is out of quota until"),
        "{inbox:#}"
    );

    // Another worker of the role, started later, reads the limit and claims nothing either.
    let late = spawn_agent(&q, "p-claude", &events("claude"), "0");
    std::thread::sleep(Duration::from_millis(2500));
    let said = stop(late);
    assert_eq!(q.task(&second)["attempts"], 0, "{said}");
}

#[test]
fn a_role_out_of_quota_hands_its_tasks_to_its_fallback_meanwhile() {
    let q = TestQueue::new();
    bind_presets(&q, "");
    let toml = fs::read_to_string(q.queue.join("host.toml"))
        .unwrap()
        .replace(
            "agent = \"claude\"\n",
            "agent = \"claude\"\nfallback = [\"p-codex\"]\n",
        );
    fs::write(q.queue.join("host.toml"), toml).unwrap();
    let resets_at = jiff::Timestamp::now().as_second() + 7200;
    let ids: Vec<String> = (0..2)
        .map(|_| {
            q.add(&[
                "--type",
                "t-claude",
                "--target",
                q.scratch.to_str().unwrap(),
            ])
        })
        .collect();
    let claude = spawn_agent(&q, "p-claude", &claude_limit_events(resets_at), "1");
    let codex = spawn_agent(&q, "p-codex", &events("codex"), "0");
    q.wait_for("codex to take both tasks", Duration::from_secs(30), |q| {
        ids.iter().all(|id| q.task(id)["status"] == "completed")
    });
    let said = format!("{}\n{}", stop(claude), stop(codex));
    for id in &ids {
        let task = q.task(id);
        assert_eq!(task["result"]["agent"], "codex", "{task:#}\n{said}");
        assert_eq!(
            task["attempts"], 1,
            "the snoozed attempt is not counted: {task:#}"
        );
    }
    assert!(
        said.contains("role(s) p-codex take its tasks meanwhile"),
        "{said}"
    );
    // Out of quota with nothing left to do, a draining worker of the role stops at once.
    let mut draining = q
        .host()
        .args(["--role", "p-claude", "--drain", "--poll", "100ms"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while draining.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = draining.kill();
            panic!("a draining worker of a role out of quota waited for the reset");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn codex_gemini_and_copilot_limits_are_read_from_what_each_says() {
    use serde_json::json;
    let codex_said =
        "You've hit your usage limit. Upgrade to Pro or try again in 3 hours 20 minutes.";
    let cases = [
        (
            "codex",
            vec![
                json!({"type": "thread.started"}),
                json!({"type": "error", "message": codex_said}),
                json!({"type": "turn.failed", "error": {"message": codex_said}}),
            ],
            3 * 3600 + 20 * 60,
        ),
        (
            "gemini",
            vec![
                json!({"type": "init", "session_id": "s", "model": "gemini-pro"}),
                json!({"type": "result", "status": "error",
                       "error": {"type": "QuotaError", "message":
                           "RESOURCE_EXHAUSTED: Quota exceeded for quota metric 'Requests per day'. Please retry in 2h."}}),
            ],
            7200,
        ),
        // Copilot says it in plain text; no reset time: an hour, then the role looks again.
        ("copilot", Vec::new(), 3600),
    ];
    for (cli, events, resets_in) in cases {
        let q = TestQueue::new();
        bind_presets(&q, "");
        let id = q.add(&[
            "--type",
            &format!("t-{cli}"),
            "--target",
            q.scratch.to_str().unwrap(),
        ]);
        let mut worker = agent_worker(&q, &format!("p-{cli}"), &events, "1");
        if events.is_empty() {
            worker.env(
                "FAKE_AGENT_STDERR",
                "Error: You have exceeded your premium request allowance for this month.",
            );
        }
        let mut worker = worker.spawn().unwrap();
        let started = jiff::Timestamp::now().as_second();
        q.wait_for(&format!("{cli}'s limit"), Duration::from_secs(30), |q| {
            q.task(&id)["snoozedUntil"].is_string()
        });
        let _ = worker.kill();
        let _ = worker.wait();
        let task = q.task(&id);
        assert_eq!(task["attempts"], 0, "{task:#}");
        let until: jiff::Timestamp = task["snoozedUntil"].as_str().unwrap().parse().unwrap();
        let waits = until.as_second() - started;
        assert!(
            (resets_in - 60..=resets_in + 60).contains(&waits),
            "{cli}: snoozed for {waits}s, not about {resets_in}s: {task:#}"
        );
        let report: Value = serde_json::from_str(&q.ok(&["status", "--json"])).unwrap();
        assert_eq!(
            report["usageLimits"][0]["role"],
            format!("p-{cli}"),
            "{report:#}"
        );
    }
}

#[test]
fn a_rejected_change_resumes_the_agents_session_where_its_cli_can() {
    use serde_json::json;
    for (cli, first_event, resumed) in [
        (
            "claude",
            json!({"type": "system", "subtype": "init", "model": "m", "session_id": "sess-123"}),
            vec!["claude", "--resume", "sess-123", "-p"],
        ),
        (
            "codex",
            json!({"type": "thread.started", "thread_id": "thread-9"}),
            vec!["resume", "thread-9"],
        ),
        (
            "copilot",
            json!({"type": "assistant.message", "data": {"content": "Working."}}),
            vec!["copilot", "--resume", "cop-7", "-p"],
        ),
    ] {
        let q = TestQueue::new();
        let bin = fake_agents(&q);
        bind_presets(&q, "review = \"required\"\nisolation = \"none\"");
        let events = q.scratch.join("events.jsonl");
        let finished = match cli {
            "claude" => json!({"type": "result", "subtype": "success", "result": "Done.",
                               "session_id": "sess-123"}),
            "copilot" => json!({"type": "result", "sessionId": "cop-7", "exitCode": 0}),
            _ => {
                json!({"type": "item.completed", "item": {"type": "agent_message", "text": "Done."}})
            }
        };
        fs::write(&events, format!("{first_event}\n{finished}\n")).unwrap();
        let id = q.add(&[
            "--type",
            &format!("t-{cli}"),
            "--target",
            q.scratch.to_str().unwrap(),
        ]);
        let record = q.scratch.join("record");
        let env = [("FAKE_AGENT_EVENTS", events.to_str().unwrap())];
        drain_agent(&q, &format!("p-{cli}"), &bin, &record, &env);
        let task = q.task(&id);
        assert_eq!(task["status"], "review", "{task:#}");
        let session = match cli {
            "claude" => "sess-123",
            "codex" => "thread-9",
            _ => "cop-7",
        };
        assert_eq!(task["result"]["sessionId"], session, "{task:#}");
        assert_eq!(task["history"][0]["session"], session, "{task:#}");
        assert!(
            !recorded_argv(&record).contains(&"resume".to_string())
                && !recorded_argv(&record).contains(&"--resume".to_string()),
            "a first attempt starts a session"
        );

        q.ok(&["reject", &id, "--reason", "keep the old line"]);
        drain_agent(&q, &format!("p-{cli}"), &bin, &record, &env);
        let argv = recorded_argv(&record);
        let found = argv.windows(resumed.len()).any(|w| w == resumed.as_slice());
        assert!(found, "{cli}: {resumed:?} not in {argv:?}");
        if cli == "codex" {
            // `codex exec [OPTIONS] resume ID PROMPT`: the prompt comes last.
            assert_eq!(argv[argv.len() - 3], "resume", "{argv:?}");
            assert!(
                argv.last().unwrap().contains("keep the old line"),
                "{argv:?}"
            );
        }
        let prompt = argv.last().unwrap();
        let prompt = if cli == "codex" { prompt } else { &argv[4] };
        assert!(
            prompt.contains("session of that attempt, resumed"),
            "{prompt}"
        );
    }
}

#[test]
fn a_fix_after_any_outcome_of_a_failed_test_runs_with_the_test_error_in_its_prompt() {
    let q = TestQueue::new();
    let bin = fake_agents(&q);
    bind_presets(&q, "");
    let target = q.scratch.join("t");
    fs::create_dir_all(&target).unwrap();
    let target = target.to_str().unwrap();
    let test = q.add(&[
        "--type",
        "test",
        "--target",
        target,
        "--max-attempts",
        "1",
        "--payload",
        r#"{"command": ["sh", "-c", "echo 'assertion failed: left 2, right 3'; exit 1"]}"#,
    ]);
    let fix = q.add(&[
        "--type",
        "t-copilot",
        "--target",
        target,
        "--description",
        "fix what the test found",
        "--after-any",
        &test,
    ]);
    let deploy = q.add(&["--type", "noop", "--after", &test]);
    q.drain("tester", &[]);
    let failed = q.task(&test);
    assert_eq!(failed["status"], "failed", "{failed:#}");
    assert_eq!(q.task(&deploy)["status"], "cancelled", "`after` as before");
    assert_eq!(q.task(&fix)["status"], "pending");

    let record = q.scratch.join("record");
    drain_agent(&q, "p-copilot", &bin, &record, &[]);
    assert_eq!(q.task(&fix)["status"], "completed");
    let prompt = &recorded_argv(&record)[2];
    assert!(prompt.contains("fix what the test found"), "{prompt}");
    assert!(prompt.contains(&format!("task {test} (test)")), "{prompt}");
    let error = failed["error"].as_str().unwrap();
    assert!(prompt.contains(&format!(": failed ({error})")), "{prompt}");
    assert!(
        prompt.contains("assertion failed: left 2, right 3"),
        "{prompt}"
    );
    assert!(prompt.contains("whatever its outcome"), "{prompt}");
}

#[test]
fn files_a_cli_keeps_for_itself_stay_off_the_tasks_branch() {
    let q = TestQueue::new();
    let bin = fake_agents(&q);
    bind_presets(&q, "");
    let repo = crate::worktrees::repository(&q);
    let id = q.add(&["--type", "t-aider", "--target", repo.to_str().unwrap()]);
    drain_agent(&q, "p-aider", &bin, &q.scratch.join("record"), &[]);
    let task = q.task(&id);
    assert_eq!(task["status"], "completed", "{task:#}");
    let branch = task["result"]["worktree"]["branch"]
        .as_str()
        .unwrap()
        .to_string();
    let files = crate::worktrees::git(&repo, &["diff", "--name-only", "main", &branch]);
    assert_eq!(
        files, "agent-was-here.txt\n",
        "aider's history is its own: {files}"
    );
}

#[test]
fn a_usage_limit_is_notified_naming_the_role_and_the_reset() {
    let q = TestQueue::new();
    bind_presets(&q, "");
    let hooks = crate::notify::Receiver::start(Some(200));
    let url = hooks.url("/hook");
    crate::notify::append_config(
        &q,
        &format!("\n[notify]\n[[notify.webhook]]\nurl = {url:?}\n"),
    );
    let resets_at = jiff::Timestamp::now().as_second() + 7200;
    let id = q.add(&[
        "--type",
        "t-claude",
        "--target",
        q.scratch.to_str().unwrap(),
    ]);
    let worker = spawn_agent(&q, "p-claude", &claude_limit_events(resets_at), "1");
    q.wait_for("the notification", Duration::from_secs(30), |_| {
        !hooks.at("/hook").is_empty()
    });
    let said = stop(worker);
    let body = hooks.at("/hook")[0].json();
    assert_eq!(body["event"], "usage_limit", "{body:#}\n{said}");
    assert_eq!(body["task"]["id"], id.as_str(), "{body:#}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("p-claude") && message.contains("usage limit"),
        "{message}"
    );
    let reset = jiff::Timestamp::from_second(resets_at).unwrap();
    assert!(message.contains(&format!("until {reset:.0}")), "{message}");
}

#[test]
fn a_session_the_cli_cannot_resume_is_left_and_the_attempt_starts_afresh() {
    use serde_json::json;
    let q = TestQueue::new();
    let bin = fake_agents(&q);
    bind_presets(&q, "review = \"required\"\nisolation = \"none\"");
    let events = q.scratch.join("events.jsonl");
    let init = json!({"type": "system", "subtype": "init", "model": "m", "session_id": "gone"});
    let done = json!({"type": "result", "subtype": "success", "result": "Done."});
    fs::write(&events, format!("{init}\n{done}\n")).unwrap();
    // A folder of its own: the record the fake CLI writes is no change of the task's.
    let target = q.scratch.join("target");
    fs::create_dir_all(&target).unwrap();
    let id = q.add(&["--type", "t-claude", "--target", target.to_str().unwrap()]);
    let record = q.scratch.join("record");
    let env = [
        ("FAKE_AGENT_EVENTS", events.to_str().unwrap()),
        ("FAKE_AGENT_FAIL_IF_ARG", "--resume"),
    ];
    drain_agent(&q, "p-claude", &bin, &record, &env);
    q.ok(&["reject", &id, "--reason", "again"]);
    drain_agent(&q, "p-claude", &bin, &record, &env);
    let task = q.task(&id);
    assert_eq!(task["status"], "review", "{task:#}");
    assert_eq!(task["attempts"], 2, "{task:#}");
    let argv = recorded_argv(&record);
    assert!(
        !argv.contains(&"--resume".to_string()),
        "the last run started afresh: {argv:?}"
    );
    let log = q.ok(&["logs", &id]);
    assert!(log.contains("the session could not be resumed"), "{log}");
}

#[test]
fn slots_that_meet_the_same_limit_together_notify_once() {
    let q = TestQueue::new();
    bind_presets(&q, "");
    let hooks = crate::notify::Receiver::start(Some(200));
    let url = hooks.url("/hook");
    crate::notify::append_config(
        &q,
        &format!("\n[notify]\n[[notify.webhook]]\nurl = {url:?}\nevents = [\"usage_limit\"]\n"),
    );
    let resets_at = jiff::Timestamp::now().as_second() + 7200;
    let ids: Vec<String> = (0..2)
        .map(|_| {
            q.add(&[
                "--type",
                "t-claude",
                "--target",
                q.scratch.to_str().unwrap(),
            ])
        })
        .collect();
    let worker = agent_worker(&q, "p-claude", &claude_limit_events(resets_at), "1")
        .args(["--concurrency", "2"])
        .spawn()
        .unwrap();
    q.wait_for("both snoozed", Duration::from_secs(30), |q| {
        ids.iter().all(|id| q.task(id)["snoozedUntil"].is_string())
    });
    std::thread::sleep(Duration::from_millis(500));
    let said = stop(worker);
    assert_eq!(hooks.at("/hook").len(), 1, "{said}");
    assert_eq!(said.matches("usage limit until").count(), 1, "{said}");
}
