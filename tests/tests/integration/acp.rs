//! The agent role driven through the Agent Client Protocol (`protocol = "acp"`), against the
//! suite's scripted ACP agent (`tests/src/bin/acp_agent.rs`, written with the protocol crate's
//! own types): each task's description holds the agent's script, `[[acp VERB ARGS]]` steps.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use integration_tests::TestQueue;
use serde_json::Value;

use crate::worktrees::{git, repository, task_branch};

/// The suite's ACP agent.
const AGENT: &str = env!("CARGO_BIN_EXE_acp-agent");

/// Role `supervised` (type `work`): the ACP agent, recording what it receives, with `extra`
/// lines in its table.
pub(crate) fn bind_acp_agent(q: &TestQueue, extra: &str) {
    let toml = format!(
        "[roles.supervised]\nhandler = \"agent\"\ntypes = [\"work\"]\nprotocol = \"acp\"\n\
         command = [{AGENT:?}]\nstall = \"30s\"\n{extra}\n"
    );
    fs::write(q.queue.join("host.toml"), toml).unwrap();
}

/// The file the agent records every message it receives in, one JSON line each.
fn record(q: &TestQueue) -> PathBuf {
    q.scratch.join("acp-record.jsonl")
}

/// Adds a `work` task on the test repository with the agent's script as its description.
pub(crate) fn add_script(q: &TestQueue, repo: &Path, script: &str) -> String {
    q.add(&[
        "--type",
        "work",
        "--target",
        repo.to_str().unwrap(),
        "--description",
        script,
        "--max-attempts",
        "1",
    ])
}

/// Drains role `supervised` with the agent recording into [`record`].
fn drain(q: &TestQueue) {
    let output = q
        .host()
        .args(["--role", "supervised", "--drain"])
        .env("ACP_AGENT_RECORD", record(q))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The messages the agent received, by method.
fn received(q: &TestQueue, method: &str) -> Vec<Value> {
    fs::read_to_string(record(q))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|m| m["method"] == method)
        .collect()
}

fn logs(q: &TestQueue, id: &str) -> String {
    q.ok(&["logs", id])
}

#[test]
fn an_acp_agent_works_in_its_worktree_its_updates_are_logged_and_its_plan_kept() {
    let q = TestQueue::new();
    let repo = repository(&q);
    bind_acp_agent(&q, "");
    let id = add_script(
        &q,
        &repo,
        "[[acp plan completed:read the code; in_progress:write the notes]] \
         [[acp think about the notes]] [[acp say I will write the notes.]] \
         [[acp write notes.txt hello from acp]] [[acp read notes.txt]] \
         [[acp plan completed:read the code; completed:write the notes]] [[acp say All done.]]",
    );
    drain(&q);
    let task = q.task(&id);
    assert_eq!(task["status"], "completed", "{task:#}");
    let result = &task["result"];
    assert_eq!(result["protocol"], "acp");
    assert_eq!(result["stopReason"], "end_turn");
    // The final message is what the agent said after its last step.
    assert_eq!(result["finalMessage"], "All done.");
    let plan = result["plan"].as_array().unwrap();
    assert_eq!(plan.len(), 2, "{plan:?}");
    assert!(plan.iter().all(|e| e["status"] == "completed"), "{plan:?}");

    // The session was opened in the task's worktree, never in the user's checkout, with the
    // client's file system and terminals offered.
    let initialize = &received(&q, "initialize")[0]["params"];
    assert_eq!(
        initialize["clientCapabilities"]["fs"]["writeTextFile"],
        true
    );
    assert_eq!(initialize["clientCapabilities"]["terminal"], true);
    let cwd = received(&q, "session/new")[0]["params"]["cwd"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(Path::new(&cwd), repo, "the agent ran in the checkout");
    assert!(!repo.join("notes.txt").exists());
    let branch = task_branch(&q, &id);
    assert_eq!(
        git(&repo, &["show", &format!("{branch}:notes.txt")]),
        "hello from acp"
    );

    let log = logs(&q, &id);
    for expected in [
        "acp: session",
        "thinking: about the notes",
        "assistant: I will write the notes.",
        "tool Write notes.txt (edit): pending",
        "permission for Write notes.txt (edit): allowed by the role's permissions (option allow_once)",
        "wrote notes.txt",
        "assistant: read notes.txt: hello from acp",
        "[>] write the notes",
        "[x] write the notes",
        "acp: turn ended: end_turn",
    ] {
        assert!(log.contains(expected), "no {expected:?} in the log:\n{log}");
    }
    let shown = q.ok(&["show", &id]);
    assert!(
        shown.contains("plan\n  [x] read the code\n  [x] write the notes"),
        "{shown}"
    );
}

#[test]
fn denied_requests_and_paths_outside_the_worktree_are_refused_and_logged() {
    let q = TestQueue::new();
    let repo = repository(&q);
    bind_acp_agent(&q, "permissions = { read = \"allow\", edit = \"allow\" }\n");
    let outside = q.scratch.join("outside.txt");
    fs::write(&outside, "secret\n").unwrap();
    // A link in the repository to a file that does not exist, outside it: writing through it
    // would create that file.
    let nowhere = q.scratch.join("created-through-a-link.txt");
    std::os::unix::fs::symlink(&nowhere, repo.join("link")).unwrap();
    git(&repo, &["add", "link"]);
    git(&repo, &["commit", "--quiet", "-m", "a link"]);
    let id = add_script(
        &q,
        &repo,
        &format!(
            "[[acp run touch ran.txt]] [[acp read {}]] [[acp write ../escaped.txt out]] \
             [[acp write {} overwritten]] [[acp write link through]] [[acp write inside.txt fine]]",
            outside.display(),
            outside.display()
        ),
    );
    drain(&q);
    let task = q.task(&id);
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(fs::read_to_string(&outside).unwrap(), "secret\n");
    assert!(!q.scratch.join("escaped.txt").exists());
    assert!(
        !nowhere.exists(),
        "written through a link out of the worktree"
    );
    assert!(!repo.parent().unwrap().join("escaped.txt").exists());
    let branch = task_branch(&q, &id);
    let files = git(&repo, &["ls-tree", "--name-only", &branch]);
    assert!(files.contains("inside.txt"), "{files}");
    assert!(!files.contains("ran.txt"), "{files}");
    // The agent got its own reject option back.
    let answers: Vec<Value> = fs::read_to_string(record(&q))
        .unwrap()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|m| m["result"]["outcome"]["outcome"] == "selected")
        .collect();
    assert_eq!(answers.len(), 5, "{answers:?}");
    assert_eq!(answers[0]["result"]["outcome"]["optionId"], "reject_once");

    let log = logs(&q, &id);
    for expected in [
        "(execute): denied by the role's permissions (option reject_once)",
        // What the agent was told: its own words about each refusal.
        "assistant: permission rejected for run touch ran.txt",
        "assistant: read refused: ",
        "assistant: write refused: ",
        &format!(
            "refused: read {}: outside the task's folder",
            outside.display()
        ),
        &format!(
            "refused: write {}: outside the task's folder",
            outside.display()
        ),
        "escaped.txt: outside the task's folder",
        "link: a link to a place that does not exist",
    ] {
        assert!(log.contains(expected), "no {expected:?} in the log:\n{log}");
    }
}

#[test]
fn a_terminal_runs_in_the_worktree_and_its_output_and_exit_code_reach_the_agent() {
    let q = TestQueue::new();
    let repo = repository(&q);
    bind_acp_agent(&q, "permissions = \"allow\"\n");
    // A command that leaves a process behind in the background, which ends with the attempt.
    fs::write(repo.join("bg.sh"), "sleep 1000 &\necho $! > bg.pid\n").unwrap();
    git(&repo, &["add", "bg.sh"]);
    git(&repo, &["commit", "--quiet", "-m", "bg"]);
    let id = add_script(
        &q,
        &repo,
        "[[acp run sh bg.sh]] [[acp sleep 4000]] [[acp run sh -c pwd;false]]",
    );
    let worker = q
        .host()
        .args(["--role", "supervised", "--drain"])
        .env("ACP_AGENT_RECORD", record(&q))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Released by the agent, the terminal took its background process with it, while the
    // agent still works.
    let mut pid = None;
    q.wait_for("the background sleep's pid", Duration::from_secs(30), |q| {
        pid = received(q, "session/new")
            .first()
            .and_then(|m| m["params"]["cwd"].as_str().map(PathBuf::from))
            .and_then(|cwd| fs::read_to_string(cwd.join("bg.pid")).ok())
            .and_then(|text| text.trim().parse::<u32>().ok());
        pid.is_some()
    });
    q.wait_for(
        "the background sleep to end",
        Duration::from_secs(2),
        |_| !integration_tests::alive(pid.unwrap()),
    );
    assert_eq!(
        q.task(&id)["status"],
        "running",
        "ended with the task, not the terminal"
    );
    exits_well(worker);
    let task = q.task(&id);
    assert_eq!(task["status"], "completed", "{task:#}");
    let cwd = received(&q, "session/new")[0]["params"]["cwd"]
        .as_str()
        .unwrap()
        .to_string();
    let message = task["result"]["finalMessage"].as_str().unwrap();
    assert!(message.contains("exit 1"), "{message}");
    assert!(message.contains(&cwd), "not run in {cwd}: {message}");
    assert!(logs(&q, &id).contains("exited with code 1"));
}

#[test]
fn cancel_asks_the_agent_to_end_its_turn_and_nothing_it_started_is_left_running() {
    let q = TestQueue::new();
    let repo = repository(&q);
    bind_acp_agent(&q, "");
    let id = add_script(&q, &repo, "[[acp spawn-sleeper]] [[acp wait-cancel]]");
    let worker = q
        .host()
        .args(["--role", "supervised", "--poll", "100ms"])
        .env("ACP_AGENT_RECORD", record(&q))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut sleeper = None;
    q.wait_for("the agent's sleeper", Duration::from_secs(30), |q| {
        sleeper = logs(q, &id)
            .lines()
            .find_map(|l| l.split("sleeper ").nth(1)?.trim().parse::<u32>().ok());
        sleeper.is_some()
    });
    let sleeper = sleeper.unwrap();
    assert!(integration_tests::alive(sleeper));
    q.ok(&["cancel", &id]);
    q.wait_for("the task to be cancelled", Duration::from_secs(30), |q| {
        q.task(&id)["status"] == "cancelled"
    });
    assert_eq!(received(&q, "session/cancel").len(), 1);
    let log = logs(&q, &id);
    assert!(log.contains("cancelling the turn"), "{log}");
    assert!(log.contains("turn ended: cancelled"), "{log}");
    q.wait_for("the sleeper to end", Duration::from_secs(10), |_| {
        !integration_tests::alive(sleeper)
    });
    let stderr = crate::agents::stop(worker);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_turn_that_ends_early_an_error_answer_and_an_agent_that_exits_fail_the_task_saying_why() {
    let q = TestQueue::new();
    let repo = repository(&q);
    bind_acp_agent(&q, "");
    let refused = add_script(&q, &repo, "[[acp stop refusal]]");
    let error = add_script(&q, &repo, "[[acp error the model is unavailable]]");
    let exited = add_script(&q, &repo, "[[acp exit 3]]");
    drain(&q);
    let failed = |id: &str| {
        let task = q.task(id);
        assert_eq!(task["status"], "failed", "{task:#}");
        task["error"].as_str().unwrap().to_string()
    };
    let why = failed(&refused);
    assert!(why.contains("ended its turn early: refusal"), "{why}");
    let why = failed(&error);
    assert!(
        why.contains("answered session/prompt with an error: the model is unavailable"),
        "{why}"
    );
    let why = failed(&exited);
    assert!(
        why.contains("exited with code 3 before ending its turn"),
        "{why}"
    );
}

#[test]
fn acp_settings_that_cannot_work_are_refused_when_the_worker_starts() {
    let q = TestQueue::new();
    for (table, expected) in [
        (
            "agent = \"aider\"\nprotocol = \"acp\"\n",
            "agent preset aider speaks no ACP",
        ),
        (
            "agent = \"copilot\"\nprotocol = \"acp\"\npermissions = \"sometimes\"\n",
            "`permissions` must be \"allow\", \"deny\" or \"ask\"",
        ),
        (
            "agent = \"copilot\"\nprotocol = \"acp\"\nask_timeout = \"soon\"\n",
            "`ask_timeout` must be a length of time",
        ),
        (
            "agent = \"copilot\"\nask_timeout = \"1h\"\n",
            "`ask_timeout` applies to agents driven through ACP",
        ),
        (
            "agent = \"copilot\"\nprotocol = \"acp\"\npermissions = { exec = \"allow\" }\n",
            "`permissions.exec`: unknown tool kind",
        ),
        (
            "agent = \"copilot\"\npermissions = \"allow\"\n",
            "add protocol = \"acp\"",
        ),
        (
            "agent = \"copilot\"\nprotocol = \"rpc\"\n",
            "protocol \"rpc\"",
        ),
    ] {
        fs::write(
            q.queue.join("host.toml"),
            format!("[roles.supervised]\nhandler = \"agent\"\ntypes = [\"work\"]\n{table}"),
        )
        .unwrap();
        let line = q.fails(&["--role", "supervised", "--drain"]);
        assert!(line.contains(expected), "{table}: {line}");
    }
}

/// Starts a worker of role `supervised` that drains the queue, the agent recording.
pub(crate) fn spawn_drain(q: &TestQueue) -> std::process::Child {
    q.host()
        .args(["--role", "supervised", "--drain"])
        .env("ACP_AGENT_RECORD", record(q))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a worker to exit, insisting that it exits 0.
pub(crate) fn exits_well(worker: std::process::Child) {
    let output = worker.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Waits until task `id` waits for an answer to a question titled `title`.
pub(crate) fn wait_for_question(q: &TestQueue, id: &str, title: &str) {
    q.wait_for(
        &format!("task {id} to ask {title:?}"),
        Duration::from_secs(30),
        |q| {
            let task = q.task(id);
            task["input"]["title"] == title && task["input"]["answer"].is_null()
        },
    );
}

#[test]
fn a_person_answers_an_agents_permission_requests_from_the_inbox_and_the_agent_resumes() {
    let q = TestQueue::new();
    let repo = repository(&q);
    bind_acp_agent(&q, "permissions = { edit = \"ask\", default = \"allow\" }");
    // Whoever listens for `input` hears of each question.
    let hooks = crate::notify::Receiver::start(None);
    crate::notify::append_config(
        &q,
        &format!(
            "\n[notify]\nevents = [\"input\"]\n[[notify.webhook]]\nurl = {:?}\n",
            hooks.url("/hook")
        ),
    );
    let id = add_script(
        &q,
        &repo,
        "[[acp write notes.txt allowed by a person]] [[acp write second.txt refused]] \
         [[acp say All done.]]",
    );
    let worker = spawn_drain(&q);
    wait_for_question(&q, &id, "Write notes.txt");

    // The task waits as `input`, its lease held, with the agent's own options on record.
    let task = q.task(&id);
    assert_eq!(task["status"], "running", "{task:#}");
    assert_eq!(task["input"]["tool"], "edit");
    let options: Vec<&str> = task["input"]["options"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        options,
        ["allow_once", "allow_always", "reject_once", "reject_always"]
    );
    let listed = q.ok(&["list"]);
    let row = listed.lines().find(|l| l.starts_with(&id)).unwrap();
    assert!(
        row.contains("input") && row.contains("an answer"),
        "{listed}"
    );
    let inputs: Value =
        serde_json::from_str(&q.ok(&["list", "--status", "input", "--json"])).unwrap();
    assert_eq!(inputs.as_array().unwrap().len(), 1, "{inputs:#}");
    let inbox = q.ok(&["inbox"]);
    assert!(
        inbox.contains("Write notes.txt (edit)")
            && inbox.contains(&format!(
                "host answer {id} allow_once|allow_always|reject_once|reject_always"
            )),
        "{inbox}"
    );
    let inbox: Value = serde_json::from_str(&q.ok(&["inbox", "--json"])).unwrap();
    assert_eq!(inbox[0]["kind"], "input");
    assert_eq!(inbox[0]["task"], id.as_str());
    let shown = q.ok(&["show", &id]);
    assert!(
        shown.contains("input") && shown.contains("asks         Write notes.txt (edit)"),
        "{shown}"
    );
    let status = q.status();
    assert_eq!(status["input"][0]["id"], id.as_str(), "{status:#}");
    // `host wait` says what it waits for, once, rather than waiting in silence.
    let waited = q.run(&["wait", &id, "--timeout", "1s"]);
    let said = String::from_utf8_lossy(&waited.stderr);
    assert_eq!(waited.status.code(), Some(1), "{said}");
    assert_eq!(
        said.matches(&format!(
            "task {id} waits for your answer: Write notes.txt (host answer {id} allow_once|"
        ))
        .count(),
        1,
        "{said}"
    );

    q.wait_for("the notification", Duration::from_secs(10), |_| {
        !hooks.at("/hook").is_empty()
    });
    let told = hooks.at("/hook")[0].json();
    assert_eq!(told["event"], "input", "{told:#}");
    assert_eq!(told["task"]["id"], id.as_str(), "{told:#}");
    assert!(
        told["message"].as_str().unwrap().contains(&format!(
            "asks a person: Write notes.txt (host answer {id} allow_once|"
        )),
        "{told:#}"
    );

    // An option the agent did not offer is refused, naming those it did.
    let err = q.fails(&["answer", &id, "yes"]);
    assert!(
        err.contains("\"yes\" is not one of the options offered: allow_once, allow_always"),
        "{err}"
    );
    let said = q.ok(&["answer", &id, "allow_once"]);
    assert!(
        said.contains(&format!("task {id}: answered allow_once")),
        "{said}"
    );

    wait_for_question(&q, &id, "Write second.txt");
    q.ok(&["answer", &id, "reject_once"]);
    exits_well(worker);

    let task = q.task(&id);
    assert_eq!(task["status"], "completed", "{task:#}");
    assert!(task["input"].is_null(), "{task:#}");
    let branch = task_branch(&q, &id);
    assert_eq!(
        git(&repo, &["show", &format!("{branch}:notes.txt")]),
        "allowed by a person"
    );
    assert!(git_fails(&repo, &format!("{branch}:second.txt")));
    let log = logs(&q, &id);
    for expected in [
        "input: asks a person: Write notes.txt",
        "input: answered allow_once by ",
        "permission for Write notes.txt (edit): option allow_once chosen by ",
        "permission for Write second.txt (edit): option reject_once chosen by ",
        "assistant: permission rejected for write second.txt",
    ] {
        assert!(log.contains(expected), "no {expected:?} in the log:\n{log}");
    }
    // Nothing waits any more, and a finished task takes no answer.
    assert_eq!(q.ok(&["inbox"]).trim(), "Nothing waits for a person.");
    let err = q.fails(&["answer", &id, "allow_once"]);
    assert!(err.contains("waits for no answer"), "{err}");
}

/// Whether `git show SPEC` fails in `repo` (the file is not in that commit).
fn git_fails(repo: &Path, spec: &str) -> bool {
    !std::process::Command::new("git")
        .args(["show", spec])
        .current_dir(repo)
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn an_unanswered_request_is_refused_after_ask_timeout_and_a_cancel_withdraws_one() {
    let q = TestQueue::new();
    let repo = repository(&q);
    bind_acp_agent(&q, "permissions = \"ask\"\nask_timeout = \"1s\"");
    let id = add_script(&q, &repo, "[[acp write notes.txt nobody said yes]]");
    drain(&q);
    let task = q.task(&id);
    // The agent was refused and went on: its turn ended well.
    assert_eq!(task["status"], "completed", "{task:#}");
    let log = logs(&q, &id);
    for expected in [
        "input: nobody answered in time",
        "permission for Write notes.txt (edit): denied as nobody answered within 1s (option \
         reject_once)",
        "assistant: permission rejected for write notes.txt",
    ] {
        assert!(log.contains(expected), "no {expected:?} in the log:\n{log}");
    }

    // A cancel while the task waits for a person ends it, the question withdrawn.
    bind_acp_agent(&q, "permissions = \"ask\"");
    let id = add_script(&q, &repo, "[[acp write notes.txt never]]");
    let mut worker = spawn_drain(&q);
    wait_for_question(&q, &id, "Write notes.txt");
    q.ok(&["cancel", &id]);
    assert!(worker.wait().unwrap().success());
    let task = q.task(&id);
    assert_eq!(task["status"], "cancelled", "{task:#}");
    assert!(task["input"].is_null(), "{task:#}");
    let log = logs(&q, &id);
    assert!(
        log.contains("answered cancelled (the task is stopping)"),
        "{log}"
    );
}

#[test]
fn an_agents_question_is_answered_from_the_inbox_with_the_fields_its_form_asks_for() {
    let q = TestQueue::new();
    let repo = repository(&q);
    bind_acp_agent(
        &q,
        "permissions = { execute = \"ask\", default = \"allow\" }",
    );
    let id = add_script(
        &q,
        &repo,
        "[[acp elicit Which branch should I use?]] [[acp elicit Anything else?]]",
    );
    let worker = spawn_drain(&q);
    wait_for_question(&q, &id, "Which branch should I use?");
    let fields = q.task(&id)["input"]["fields"].clone();
    assert_eq!(fields[0]["name"], "answer", "{fields:#}");
    assert_eq!(fields[0]["required"], true, "{fields:#}");
    assert_eq!(fields[1]["type"], "integer", "{fields:#}");
    let shown = q.ok(&["show", &id]);
    assert!(shown.contains("--field NAME=VALUE"), "{shown}");

    // Values that do not fit the form are refused, saying why.
    let err = q.fails(&["answer", &id, "--field", "count=lots", "--text", "main"]);
    assert!(
        err.contains("field \"count\" takes a whole number"),
        "{err}"
    );
    let err = q.fails(&["answer", &id, "--field", "count=2"]);
    assert!(err.contains("field \"answer\" is required"), "{err}");
    q.ok(&["answer", &id, "--text", "main", "--field", "count=3"]);

    // The second question is declined.
    wait_for_question(&q, &id, "Anything else?");
    q.ok(&["answer", &id, "decline"]);
    exits_well(worker);
    assert_eq!(q.task(&id)["status"], "completed");
    let log = logs(&q, &id);
    for expected in [
        "question \"Which branch should I use?\": answered by ",
        "assistant: elicited: accept answer=\"main\",count=3",
        "question \"Anything else?\": declined by ",
        "assistant: elicited: decline",
    ] {
        assert!(log.contains(expected), "no {expected:?} in the log:\n{log}");
    }

    // A role that asks no person declines the agent's questions at once.
    bind_acp_agent(&q, "permissions = \"allow\"");
    let id = add_script(&q, &repo, "[[acp elicit Which branch?]]");
    drain(&q);
    let log = logs(&q, &id);
    assert!(
        log.contains("declined (the role asks no person") && log.contains("elicited: decline"),
        "{log}"
    );
}

#[test]
fn a_worker_killed_while_its_agent_waits_for_an_answer_gives_the_task_back_and_leaves_nothing_running()
 {
    let q = TestQueue::new();
    let repo = repository(&q);
    bind_acp_agent(&q, "permissions = \"ask\"");
    let id = q.add(&[
        "--type",
        "work",
        "--target",
        repo.to_str().unwrap(),
        "--description",
        "[[acp spawn-sleeper]] [[acp plan in_progress:ask first; pending:write the notes]] \
         [[acp write notes.txt written on the second attempt]]",
        "--max-attempts",
        "2",
    ]);
    let worker = q
        .host()
        .args(["--role", "supervised", "--lease", "2s", "--name", "victim"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_question(&q, &id, "Write notes.txt");
    // While it runs, the plan the agent follows is shown as it stands.
    q.wait_for("the live plan", Duration::from_secs(10), |q| {
        q.ok(&["show", &id])
            .contains("plan (as the agent follows it now)\n  [>] ask first\n  [ ] write the notes")
    });
    let sleeper = logs(&q, &id)
        .lines()
        .find_map(|l| l.split("sleeper ").nth(1)?.trim().parse::<u32>().ok())
        .unwrap();
    assert!(integration_tests::alive(sleeper));

    integration_tests::signal(&worker, nix::sys::signal::Signal::SIGKILL);
    let _ = worker.wait_with_output();
    q.wait_for(
        "the agent's sleeper to end",
        Duration::from_secs(10),
        |_| !integration_tests::alive(sleeper),
    );

    // The lease runs out and the next worker takes the task again, the question gone with
    // the attempt that asked it.
    std::thread::sleep(Duration::from_millis(2500));
    bind_acp_agent(&q, "");
    drain(&q);
    let task = q.task(&id);
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(task["attempts"], 2, "{task:#}");
    assert_eq!(task["history"][0]["status"], "expired", "{task:#}");
    assert!(task["input"].is_null(), "{task:#}");
    assert_eq!(q.ok(&["inbox"]).trim(), "Nothing waits for a person.");
}

#[test]
fn supervised_agents_fanned_out_are_answered_reviewed_and_one_change_merged() {
    let q = TestQueue::new();
    let repo = repository(&q);
    bind_acp_agent(
        &q,
        "permissions = { edit = \"ask\", default = \"allow\" }\nreview = \"required\"",
    );
    let ids: Vec<String> = q
        .ok(&[
            "add",
            "--type",
            "work",
            "--target",
            repo.to_str().unwrap(),
            "--description",
            "[[acp write notes.txt from a supervised agent]] [[acp say wrote the notes]]",
            "--fanout",
            "2",
        ])
        .lines()
        .map(String::from)
        .collect();
    let drain_both = || {
        q.host()
            .args(["--role", "supervised", "--drain", "--concurrency", "2"])
            .env("ACP_AGENT_RECORD", record(&q))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let worker = drain_both();
    // Both copies ask at once, side by side, each in its own worktree.
    for id in &ids {
        wait_for_question(&q, id, "Write notes.txt");
    }
    let inbox: Value = serde_json::from_str(&q.ok(&["inbox", "--json"])).unwrap();
    assert_eq!(inbox.as_array().unwrap().len(), 2, "{inbox:#}");
    for id in &ids {
        q.ok(&["answer", id, "allow_once"]);
    }
    exits_well(worker);
    for id in &ids {
        assert_eq!(q.task(id)["status"], "review", "{:#}", q.task(id));
    }
    let inbox: Value = serde_json::from_str(&q.ok(&["inbox", "--json"])).unwrap();
    assert!(
        inbox
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["kind"] == "review"),
        "{inbox:#}"
    );

    // A rejected copy runs again, told why, and asks again.
    q.ok(&["reject", &ids[1], "--reason", "write less"]);
    let worker = drain_both();
    wait_for_question(&q, &ids[1], "Write notes.txt");
    q.ok(&["answer", &ids[1], "reject_once"]);
    exits_well(worker);
    let prompts = received(&q, "session/prompt");
    assert!(
        prompts.last().unwrap().to_string().contains("write less"),
        "the reason reached the agent: {prompts:?}"
    );
    assert_eq!(q.task(&ids[1])["status"], "review");

    // The other copy is approved and merged; the rejected one is discarded with it.
    q.ok(&["approve", &ids[0]]);
    let said = q.ok(&["merge", &ids[0]]);
    assert!(said.contains("the other copies (--fanout)"), "{said}");
    assert_eq!(
        fs::read_to_string(repo.join("notes.txt")).unwrap(),
        "from a supervised agent"
    );
}

#[test]
fn a_rejected_attempt_goes_on_with_its_acp_session_where_the_agent_can_load_it() {
    let q = TestQueue::new();
    let repo = repository(&q);
    bind_acp_agent(&q, "review = \"required\"");
    let id = q.add(&[
        "--type",
        "work",
        "--target",
        repo.to_str().unwrap(),
        "--description",
        "[[acp say first try]]",
    ]);
    drain(&q);
    assert_eq!(q.task(&id)["status"], "review");
    assert_eq!(q.task(&id)["history"][0]["session"], "acp-session-1");
    q.ok(&["reject", &id, "--reason", "say more"]);
    drain(&q);
    assert_eq!(q.task(&id)["status"], "review");

    // The second attempt loaded the first's session in its own worktree, and its prompt says so.
    let loads = received(&q, "session/load");
    assert_eq!(loads.len(), 1, "{loads:?}");
    assert_eq!(loads[0]["params"]["sessionId"], "acp-session-1");
    assert_eq!(received(&q, "session/new").len(), 1);
    let prompt = received(&q, "session/prompt").last().unwrap().to_string();
    assert!(
        prompt.contains("This is the session of that attempt, resumed")
            && prompt.contains("say more"),
        "{prompt}"
    );
    let log = logs(&q, &id);
    assert!(
        log.contains("acp: session acp-session-1 resumed (that of the rejected attempt)"),
        "{log}"
    );
    assert!(!log.contains("(replayed)"), "the replay is not news: {log}");

    // An agent that cannot find it starts a new session with the fresh prompt.
    q.ok(&["reject", &id, "--reason", "say even more"]);
    let output = q
        .host()
        .args(["--role", "supervised", "--drain"])
        .env("ACP_AGENT_RECORD", record(&q))
        .env("ACP_AGENT_REFUSE_LOAD", "1")
        .output()
        .unwrap();
    assert!(output.status.success());
    assert_eq!(received(&q, "session/load").len(), 2);
    assert_eq!(received(&q, "session/new").len(), 2);
    let prompt = received(&q, "session/prompt").last().unwrap().to_string();
    assert!(
        !prompt.contains("resumed") && prompt.contains("say even more"),
        "{prompt}"
    );
    let log = logs(&q, &id);
    assert!(
        log.contains("acp: session acp-session-1 could not be resumed (")
            && log.contains("): a new session"),
        "{log}"
    );
}

#[test]
fn waiting_for_an_answer_counts_neither_against_the_timeout_nor_as_a_stall() {
    let q = TestQueue::new();
    let repo = repository(&q);
    // A 2 s limit and a 2 s stall limit, and a person who takes 4 s to answer.
    let toml = format!(
        "[roles.supervised]\nhandler = \"agent\"\ntypes = [\"work\"]\nprotocol = \"acp\"\n\
         command = [{AGENT:?}]\nstall = \"2s\"\ntimeout = \"2s\"\npermissions = \"ask\"\n"
    );
    fs::write(q.queue.join("host.toml"), toml).unwrap();
    let id = add_script(&q, &repo, "[[acp write notes.txt answered late]]");
    let worker = spawn_drain(&q);
    wait_for_question(&q, &id, "Write notes.txt");
    std::thread::sleep(Duration::from_secs(4));
    q.ok(&["answer", &id, "allow_once"]);
    exits_well(worker);
    let task = q.task(&id);
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(
        git(
            &repo,
            &["show", &format!("{}:notes.txt", task_branch(&q, &id))]
        ),
        "answered late"
    );
}
