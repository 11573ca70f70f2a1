//! Agent-backed roles (a fake agent CLI stands in for each preset) and the self-serve verbs.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
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
        std::os::unix::fs::symlink(&fake, bin.join(name)).unwrap();
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
            ],
            "claude" => vec!["claude", "-p", &prompt, "--permission-mode", "acceptEdits"],
            "codex" => vec!["codex", "exec", "--sandbox", "workspace-write", &prompt],
            "gemini" => vec!["gemini", "-p", &prompt, "--approval-mode", "auto_edit"],
            "aider" => vec!["aider", "--message", &prompt, "--yes-always"],
            _ => unreachable!(),
        };
        assert_eq!(argv, want);
        let cwd = fs::read_to_string(record.join("cwd")).unwrap();
        assert_eq!(
            Path::new(cwd.trim()).canonicalize().unwrap(),
            target.canonicalize().unwrap()
        );
        assert_eq!(
            task["result"]["changedFiles"]["created"][0],
            "agent-was-here.txt"
        );
        let log = q.ok(&["logs", &id]);
        assert!(
            log.contains("fake agent: wrote agent-was-here.txt"),
            "{log}"
        );
    }
}

#[test]
fn a_failing_agent_fails_its_task_and_a_slow_one_is_killed_at_the_timeout() {
    let q = TestQueue::new();
    let bin = fake_agents(&q);
    bind_presets(&q, "");
    let target = q.scratch.join("t");
    fs::create_dir_all(&target).unwrap();
    let target = target.to_str().unwrap();
    let record = q.scratch.join("record");

    let failing = q.add(&["--type", "t-claude", "--target", target]);
    drain_agent(&q, "p-claude", &bin, &record, &[("FAKE_AGENT_EXIT", "3")]);
    let task = q.task(&failing);
    assert_eq!(task["status"], "failed", "{task:#}");
    assert!(
        task["error"]
            .as_str()
            .unwrap()
            .contains("`claude` exited with code 3"),
        "{task:#}"
    );
    assert_eq!(task["result"]["exitCode"], 3);

    let slow = q.add(&["--type", "t-codex", "--target", target, "--timeout", "1s"]);
    let started = std::time::Instant::now();
    drain_agent(&q, "p-codex", &bin, &record, &[("FAKE_AGENT_SLEEP", "60")]);
    assert!(started.elapsed().as_secs() < 20, "{:?}", started.elapsed());
    let task = q.task(&slow);
    assert_eq!(task["status"], "failed", "{task:#}");
    assert!(
        task["error"].as_str().unwrap().contains("timed out"),
        "{task:#}"
    );
}

#[test]
fn a_missing_cli_fails_the_task_naming_the_program_and_the_preset() {
    let q = TestQueue::new();
    bind_presets(&q, "");
    let target = q.scratch.join("t");
    fs::create_dir_all(&target).unwrap();
    let id = q.add(&["--type", "t-gemini", "--target", target.to_str().unwrap()]);
    let output = q
        .host()
        .args(["--role", "p-gemini", "--drain"])
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    assert!(output.status.success());
    let task = q.task(&id);
    assert_eq!(task["status"], "failed");
    let error = task["error"].as_str().unwrap();
    assert!(
        error.contains("agent preset gemini") && error.contains("`gemini` not found on PATH"),
        "{error}"
    );
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
