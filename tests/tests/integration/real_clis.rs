//! The real agent CLIs (from npm, at the versions `integration_tests::AGENT_CLIS` names) run by
//! their presets against a stand-in for their model APIs on 127.0.0.1
//! (`integration_tests::model_standin`): the file the model asks for is written on the task's
//! branch, the answer and the tokens the CLI reports reach the result, and each API's usage
//! limit snoozes the task. A CLI release that changes its flags, its events or its limit
//! message fails here.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use integration_tests::model_standin::{Api, ModelStandIn, Script};
use integration_tests::{TestQueue, agent_clis};
use serde_json::Value;

use crate::worktrees::{git, repository, task_branch};

/// What the stand-in has the model do: write `hello.txt`, then say so.
fn script() -> Script {
    Script {
        file: "hello.txt".into(),
        content: "Hello from the stand-in model.\n".into(),
        answer: "I wrote hello.txt as asked.".into(),
        limit: None,
    }
}

/// Binds role `r-CLI` (type `write`) to the preset `cli`.
fn bind(q: &TestQueue, cli: &str) -> String {
    bind_with(q, cli, "")
}

/// [`bind`], with `extra` lines in the role's table.
fn bind_with(q: &TestQueue, cli: &str, extra: &str) -> String {
    let role = format!("r-{cli}");
    fs::write(
        q.queue.join("host.toml"),
        format!(
            "[roles.{role}]\nhandler = \"agent\"\ntypes = [\"write\"]\nagent = \"{cli}\"\n{extra}"
        ),
    )
    .unwrap();
    role
}

/// A worker of `role` whose environment is only what it needs: the queue, the installed CLIs
/// first on `PATH`, a fresh `HOME` under the scratch folder (nothing of the user's is read or
/// written), no telemetry or updates, the stand-in as the proxy for any other server, and `env`
/// (the CLI's base URL and key).
fn worker(q: &TestQueue, role: &str, standin: &ModelStandIn, env: &[(&str, String)]) -> Command {
    let home = q.scratch.join("home");
    fs::create_dir_all(&home).unwrap();
    // Where the CLIs leave their error reports and scratch files.
    let tmp = q.scratch.join("tmp");
    fs::create_dir_all(&tmp).unwrap();
    let mut cmd = q.host();
    cmd.env_clear()
        .env("HOST_QUEUE_DIR", &q.address)
        .env("HOST_PLUGIN_PATH", &q.plugins)
        .env("XDG_CACHE_HOME", &q.cache)
        .env(
            "PATH",
            format!("{}:/usr/local/bin:/usr/bin:/bin", agent_clis().display()),
        )
        .env("HOME", &home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("TMPDIR", &tmp)
        .env("LANG", "C.UTF-8")
        .env("NO_COLOR", "1")
        .env("DISABLE_TELEMETRY", "1")
        .env("DISABLE_AUTOUPDATER", "1")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .args(["--role", role]);
    for (name, value) in standin.proxy_env().iter().chain(env) {
        cmd.env(name, value);
    }
    cmd
}

/// What a `write` task on a fresh repository came to, drained by one worker.
struct WriteRun {
    repo: std::path::PathBuf,
    id: String,
    task: Value,
    log: String,
    /// Everything to show when a check fails: the task, the worker's output, the log and what
    /// the stand-in was asked.
    context: String,
}

/// Adds a `write` task ("Write hello.txt saying hello", `extra` arguments to `host add`) on a
/// fresh repository and drains `role` with `env`, insisting that the worker exits 0 within a
/// minute.
fn run_write_task(
    q: &TestQueue,
    role: &str,
    standin: &ModelStandIn,
    env: &[(&str, String)],
    extra: &[&str],
) -> WriteRun {
    let repo = repository(q);
    let mut args = vec![
        "--type",
        "write",
        "--target",
        repo.to_str().unwrap(),
        "--description",
        "Write hello.txt saying hello",
    ];
    args.extend_from_slice(extra);
    let id = q.add(&args);
    let started = Instant::now();
    let output = worker(q, role, standin, env)
        .arg("--drain")
        .output()
        .unwrap();
    let took = started.elapsed();
    let task = q.task(&id);
    let log = q.ok(&["logs", &id]);
    let context = format!(
        "{task:#}\nworker: {}\nlog:\n{log}\nrequests:\n{}",
        String::from_utf8_lossy(&output.stderr),
        standin.summary()
    );
    assert!(output.status.success(), "{context}");
    assert!(took < Duration::from_secs(60), "took {took:?}: {context}");
    WriteRun {
        repo,
        id,
        task,
        log,
        context,
    }
}

/// Adds a `write` task on a fresh repository, drains `role` with `env`, and checks what every
/// CLI must do: the task completed, the file the model asked for is on the task's branch with
/// its content, the final message is the model's answer, and the log reads as lines. Returns
/// the task.
fn writes_the_file(
    q: &TestQueue,
    role: &str,
    standin: &ModelStandIn,
    env: &[(&str, String)],
) -> Value {
    let WriteRun {
        repo,
        id,
        task,
        log,
        context,
    } = run_write_task(q, role, standin, env, &[]);
    assert_eq!(task["status"], "completed", "{context}");
    let written = git(
        &repo,
        &["show", &format!("{}:hello.txt", task_branch(q, &id))],
    );
    assert_eq!(written, script().content, "{context}");
    assert!(
        !repo.join("hello.txt").exists(),
        "written in the task's worktree, not the checkout"
    );
    assert_eq!(task["result"]["finalMessage"], script().answer, "{context}");
    assert_eq!(standin.elsewhere(), Vec::<String>::new(), "{context}");
    assert!(log.lines().count() >= 3, "{context}");
    assert!(
        !log.contains("{\"type\""),
        "raw events in the log: {context}"
    );
    task
}

/// When a snoozed task waits until, and the error its snoozed attempt keeps.
fn snoozed(task: &Value) -> (jiff::Timestamp, String) {
    let until = task["snoozedUntil"].as_str().unwrap().parse().unwrap();
    let attempt = task["history"].as_array().unwrap().last().unwrap();
    (until, attempt["error"].as_str().unwrap().to_string())
}

/// Starts a worker of `role` with `env` against a stand-in that answers with its API's usage
/// limit, waits for the task to be snoozed, stops the worker, and checks the snooze: no
/// attempt spent, the role held in `status --json`. Returns the task.
fn the_limit_snoozes(
    q: &TestQueue,
    role: &str,
    standin: &ModelStandIn,
    env: &[(&str, String)],
) -> Value {
    let target = q.scratch.join("target");
    fs::create_dir_all(&target).unwrap();
    let id = q.add(&["--type", "write", "--target", target.to_str().unwrap()]);
    let mut child = worker(q, role, standin, env)
        .args(["--poll", "100ms"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !q.task(&id)["snoozedUntil"].is_string() {
        if started.elapsed() > Duration::from_secs(60) || child.try_wait().unwrap().is_some() {
            integration_tests::signal(&child, nix::sys::signal::Signal::SIGTERM);
            let output = child.wait_with_output().unwrap();
            panic!(
                "not snoozed after {:?}: {:#}\nworker: {}\nlog:\n{}\nrequests:\n{}",
                started.elapsed(),
                q.task(&id),
                String::from_utf8_lossy(&output.stderr),
                q.ok(&["logs", &id]),
                standin.summary()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    integration_tests::signal(&child, nix::sys::signal::Signal::SIGTERM);
    let said = String::from_utf8_lossy(&child.wait_with_output().unwrap().stderr).into_owned();
    let task = q.task(&id);
    assert_eq!(task["status"], "pending", "{task:#}");
    assert_eq!(task["attempts"], 0, "no attempt spent: {task:#}");
    assert!(
        said.contains(&format!("role {role}: usage limit until")),
        "{said}"
    );
    let report = q.status();
    assert_eq!(report["usageLimits"][0]["role"], role, "{report:#}");
    assert_eq!(standin.elsewhere(), Vec::<String>::new());
    task
}

fn claude_env(standin: &ModelStandIn, home: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("ANTHROPIC_BASE_URL", standin.url()),
        (
            "CLAUDE_CONFIG_DIR",
            home.join(".claude").display().to_string(),
        ),
    ]
}

#[test]
fn claude_code_writes_the_file_and_reports_its_answer_tokens_and_cost() {
    let q = TestQueue::new();
    let role = bind(&q, "claude");
    let standin = ModelStandIn::start(Api::Anthropic, script());
    let mut env = claude_env(&standin, &q.scratch.join("home"));
    env.push(("ANTHROPIC_API_KEY", "sk-ant-api03-standin".into()));
    let task = writes_the_file(&q, &role, &standin, &env);
    let sent = standin.usage();
    assert!(sent.calls >= 2, "{}", standin.summary());
    // Claude Code prices the tokens itself: Opus 4.8, its default for an API key, at $5 and
    // $25 per million input and output tokens.
    let models: Vec<Value> = standin
        .requests()
        .iter()
        .map(|r| r.json()["model"].clone())
        .filter(|m| !m.is_null())
        .collect();
    assert!(models.iter().all(|m| m == "claude-opus-4-8"), "{models:?}");
    let cost = (sent.input * 5 + sent.output * 25) as f64 / 1e6;
    let usage = &task["result"]["usage"];
    assert_eq!(usage["inputTokens"], sent.input, "{task:#}");
    assert_eq!(usage["outputTokens"], sent.output, "{task:#}");
    let reported = usage["costUsd"].as_f64().unwrap();
    assert!((reported - cost).abs() < 1e-9, "{reported} for {sent:?}");
    let log = q.ok(&["logs", task["id"].as_str().unwrap()]);
    for line in [
        "session started (model claude-opus-4-8",
        "tool Write: {",
        "assistant: I wrote hello.txt",
        "result: success",
    ] {
        assert!(log.contains(line), "{line:?} in:\n{log}");
    }
}

#[test]
fn claude_codes_five_hour_limit_snoozes_the_task_until_the_api_says_it_resets() {
    let q = TestQueue::new();
    let role = bind(&q, "claude");
    let resets = jiff::Timestamp::now().as_second() + 7200;
    let standin = ModelStandIn::start(
        Api::Anthropic,
        Script {
            limit: Some(resets),
            ..script()
        },
    );
    // A subscription (the limits are a subscription's): Claude Code does not retry a 429 then.
    let mut env = claude_env(&standin, &q.scratch.join("home"));
    env.push(("CLAUDE_CODE_OAUTH_TOKEN", "sk-ant-oat01-standin".into()));
    let task = the_limit_snoozes(&q, &role, &standin, &env);
    let (until, error) = snoozed(&task);
    assert_eq!(until.as_second(), resets, "{task:#}");
    assert!(
        error.contains("usage limit: five-hour limit reached"),
        "{task:#}"
    );
}

/// Codex's `CODEX_HOME` with a model provider at the stand-in (the Responses API, the one
/// Codex speaks), its key from `STANDIN_API_KEY`, no update check, no analytics, and no plugins
/// (it would fetch its curated plugins from github.com and chatgpt.com at every start).
fn codex_env(q: &TestQueue, standin: &ModelStandIn) -> Vec<(&'static str, String)> {
    let codex_home = q.scratch.join("home/.codex");
    fs::create_dir_all(&codex_home).unwrap();
    fs::write(
        codex_home.join("config.toml"),
        format!(
            "model = \"gpt-5.5\"\nmodel_provider = \"standin\"\n\
             check_for_update_on_startup = false\n\n\
             [model_providers.standin]\nname = \"Stand-in\"\nbase_url = \"{}/v1\"\n\
             env_key = \"STANDIN_API_KEY\"\nwire_api = \"responses\"\n\
             request_max_retries = 0\nstream_max_retries = 0\n\n\
             [analytics]\nenabled = false\n\n[features]\nplugins = false\n",
            standin.url()
        ),
    )
    .unwrap();
    vec![
        ("CODEX_HOME", codex_home.display().to_string()),
        ("STANDIN_API_KEY", "sk-standin".into()),
    ]
}

#[test]
fn codex_applies_the_patch_and_reports_its_answer_and_tokens() {
    let q = TestQueue::new();
    let role = bind(&q, "codex");
    let standin = ModelStandIn::start(Api::OpenAiResponses, script());
    let env = codex_env(&q, &standin);
    let task = writes_the_file(&q, &role, &standin, &env);
    let sent = standin.usage();
    let usage = &task["result"]["usage"];
    assert_eq!(
        usage["inputTokens"],
        sent.input,
        "{task:#}\n{}",
        standin.summary()
    );
    assert_eq!(usage["outputTokens"], sent.output, "{task:#}");
    assert!(
        usage.get("costUsd").is_none(),
        "Codex reports no cost: {usage}"
    );
    let log = q.ok(&["logs", task["id"].as_str().unwrap()]);
    for line in ["edited: ", "assistant: I wrote hello.txt"] {
        assert!(log.contains(line), "{line:?} in:\n{log}");
    }
}

/// Runs Codex (its role's table with `extra` lines) against a stand-in answering with its usage
/// limit, and checks that the task is snoozed until the reset the API gave; the snoozed
/// attempt's error.
fn codex_limit_snoozes(extra: &str) -> String {
    let q = TestQueue::new();
    let role = bind_with(&q, "codex", extra);
    let resets = jiff::Timestamp::now().as_second() + 3 * 3600;
    let standin = ModelStandIn::start(
        Api::OpenAiResponses,
        Script {
            limit: Some(resets),
            ..script()
        },
    );
    let env = codex_env(&q, &standin);
    let task = the_limit_snoozes(&q, &role, &standin, &env);
    let (until, error) = snoozed(&task);
    assert!(
        (until.as_second() - resets).abs() <= 60,
        "snoozed until {until}, the API said {resets}: {task:#}"
    );
    error
}

#[test]
fn codexs_usage_limit_snoozes_the_task_until_the_api_says_it_resets() {
    let error = codex_limit_snoozes("");
    assert!(
        error.contains("usage limit: You’ve hit your usage limit"),
        "{error}"
    );
}

/// Gemini CLI's settings: the API-key auth type (with `GOOGLE_GEMINI_BASE_URL` set it would
/// otherwise take the gateway type, which a non-interactive run refuses), a fixed model (no
/// routing call), no usage statistics, telemetry or update check.
fn gemini_env(q: &TestQueue, standin: &ModelStandIn) -> Vec<(&'static str, String)> {
    let settings = q.scratch.join("home/.gemini");
    fs::create_dir_all(&settings).unwrap();
    let json = serde_json::json!({
        "security": {"auth": {"selectedType": "gemini-api-key"}},
        "model": {"name": "gemini-2.5-pro"},
        "privacy": {"usageStatisticsEnabled": false},
        "telemetry": {"enabled": false},
        "general": {"disableAutoUpdate": true, "disableUpdateNag": true},
    });
    fs::write(settings.join("settings.json"), json.to_string()).unwrap();
    vec![
        ("GOOGLE_GEMINI_BASE_URL", standin.url()),
        ("GEMINI_API_KEY", "standin-key".into()),
    ]
}

#[test]
fn gemini_cli_writes_the_file_and_reports_its_answer_and_tokens() {
    let q = TestQueue::new();
    let role = bind(&q, "gemini");
    let standin = ModelStandIn::start(Api::Gemini, script());
    let env = gemini_env(&q, &standin);
    let task = writes_the_file(&q, &role, &standin, &env);
    let sent = standin.usage();
    let usage = &task["result"]["usage"];
    assert_eq!(
        usage["inputTokens"],
        sent.input,
        "{task:#}\n{}",
        standin.summary()
    );
    assert_eq!(usage["outputTokens"], sent.output, "{task:#}");
    let log = q.ok(&["logs", task["id"].as_str().unwrap()]);
    for line in [
        "session started (model gemini-2.5-pro)",
        "tool write_file: {",
        "assistant: I wrote hello.txt",
        "result: success",
    ] {
        assert!(log.contains(line), "{line:?} in:\n{log}");
    }
}

#[test]
fn gemini_clis_exhausted_quota_snoozes_the_task_until_the_api_says_to_retry() {
    let q = TestQueue::new();
    let role = bind(&q, "gemini");
    let resets = jiff::Timestamp::now().as_second() + 2 * 3600;
    let standin = ModelStandIn::start(
        Api::Gemini,
        Script {
            limit: Some(resets),
            ..script()
        },
    );
    let env = gemini_env(&q, &standin);
    let task = the_limit_snoozes(&q, &role, &standin, &env);
    let (until, error) = snoozed(&task);
    assert!(
        (until.as_second() - resets).abs() <= 60,
        "snoozed until {until}, the API said {resets}: {task:#}"
    );
    assert!(
        error.contains("usage limit:") && error.contains("exhausted your daily quota"),
        "{error}"
    );
}

/// Copilot CLI in its own-key mode (BYOK): an OpenAI-compatible provider at the stand-in
/// (Chat Completions, its default wire API), offline (no GitHub sign-in, telemetry or update).
fn copilot_env(standin: &ModelStandIn) -> Vec<(&'static str, String)> {
    vec![
        ("COPILOT_PROVIDER_BASE_URL", format!("{}/v1", standin.url())),
        ("COPILOT_PROVIDER_API_KEY", "sk-standin".into()),
        ("COPILOT_MODEL", "gpt-4.1".into()),
        ("COPILOT_OFFLINE", "true".into()),
    ]
}

#[test]
fn copilot_cli_creates_the_file_and_reports_its_answer_and_tokens() {
    let q = TestQueue::new();
    let role = bind(&q, "copilot");
    let standin = ModelStandIn::start(Api::OpenAiChat, script());
    let env = copilot_env(&standin);
    let task = writes_the_file(&q, &role, &standin, &env);
    let sent = standin.usage();
    let usage = &task["result"]["usage"];
    assert_eq!(
        usage["inputTokens"],
        sent.input,
        "{task:#}\n{}",
        standin.summary()
    );
    assert_eq!(usage["outputTokens"], sent.output, "{task:#}");
    let log = q.ok(&["logs", task["id"].as_str().unwrap()]);
    for line in [
        "tool create: {",
        "tool result: success",
        "assistant: I wrote hello.txt",
        "result: success",
    ] {
        assert!(log.contains(line), "{line:?} in:\n{log}");
    }
}

#[test]
fn copilot_clis_exhausted_quota_snoozes_the_task_for_an_hour() {
    let q = TestQueue::new();
    let role = bind(&q, "copilot");
    // OpenAI's answer names no reset time.
    let standin = ModelStandIn::start(
        Api::OpenAiChat,
        Script {
            limit: Some(0),
            ..script()
        },
    );
    let env = copilot_env(&standin);
    let started = jiff::Timestamp::now().as_second();
    let task = the_limit_snoozes(&q, &role, &standin, &env);
    let (until, error) = snoozed(&task);
    let waits = until.as_second() - started;
    assert!(
        (3540..=3660).contains(&waits),
        "snoozed for {waits}s: {task:#}"
    );
    assert!(
        error.contains("usage limit:") && error.contains("exceeded your current quota"),
        "{error}"
    );
}

/// Whether the first model call after the first `before` requests carries earlier tool
/// output: the conversation went on from an earlier session rather than starting afresh.
fn went_on_from_a_session(standin: &ModelStandIn, before: usize) -> bool {
    let first = standin
        .requests()
        .into_iter()
        .skip(before)
        .find(|r| r.path.ends_with("/responses") || r.path.contains("/v1/messages"))
        .expect("a model call");
    first.body.contains("_call_output") || first.body.contains("\"tool_result\"")
}

#[test]
fn claude_code_goes_on_with_its_session_after_a_rejection() {
    let q = TestQueue::new();
    fs::write(
        q.queue.join("host.toml"),
        "[roles.r-claude]\nhandler = \"agent\"\ntypes = [\"write\"]\nagent = \"claude\"\n\
         review = \"required\"\n",
    )
    .unwrap();
    let standin = ModelStandIn::start(Api::Anthropic, script());
    let mut env = claude_env(&standin, &q.scratch.join("home"));
    env.push(("ANTHROPIC_API_KEY", "sk-ant-api03-standin".into()));
    let repo = repository(&q);
    let id = q.add(&["--type", "write", "--target", repo.to_str().unwrap()]);
    let drain = || {
        let output = worker(&q, "r-claude", &standin, &env)
            .arg("--drain")
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", standin.summary());
    };
    drain();
    let task = q.task(&id);
    assert_eq!(task["status"], "review", "{task:#}");
    let session = task["result"]["sessionId"].as_str().expect("a session id");
    assert!(
        !went_on_from_a_session(&standin, 0),
        "a first attempt starts afresh"
    );
    q.ok(&["reject", &id, "--reason", "say hello twice"]);
    let before = standin.requests().len();
    drain();
    let task = q.task(&id);
    assert_eq!(task["status"], "review", "{task:#}\n{}", standin.summary());
    assert!(
        went_on_from_a_session(&standin, before),
        "resumed {session}: {}",
        standin.summary()
    );
}

#[test]
fn codex_goes_on_with_its_session_after_a_rejection_and_in_a_fix_after_the_task() {
    let q = TestQueue::new();
    fs::write(
        q.queue.join("host.toml"),
        "[roles.r-codex]\nhandler = \"agent\"\ntypes = [\"write\"]\nagent = \"codex\"\n\
         review = \"required\"\n\n[roles.fixer]\nhandler = \"agent\"\ntypes = [\"fix\"]\n\
         agent = \"codex\"\n",
    )
    .unwrap();
    let standin = ModelStandIn::start(Api::OpenAiResponses, script());
    let env = codex_env(&q, &standin);
    let repo = repository(&q);
    let target = repo.to_str().unwrap();
    let id = q.add(&[
        "--type",
        "write",
        "--target",
        target,
        "--description",
        "Write hello.txt",
    ]);
    let drain = |role: &str| {
        let output = worker(&q, role, &standin, &env)
            .arg("--drain")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&output.stderr),
            standin.summary()
        );
    };
    drain("r-codex");
    let task = q.task(&id);
    assert_eq!(task["status"], "review", "{task:#}");
    let session = task["result"]["sessionId"]
        .as_str()
        .expect("codex names its thread");
    assert!(
        !went_on_from_a_session(&standin, 0),
        "a first attempt starts afresh"
    );

    // Rejected: the next attempt goes on in the same session.
    q.ok(&["reject", &id, "--reason", "say hello twice"]);
    let before = standin.requests().len();
    drain("r-codex");
    assert_eq!(q.task(&id)["status"], "review");
    assert!(
        went_on_from_a_session(&standin, before),
        "resumed {session}: {}",
        standin.summary()
    );
    assert!(
        q.ok(&["logs", &id])
            .contains(&format!("resuming session {session}"))
    );

    // A fix after it goes on with the session of its latest attempt, from another worktree.
    q.ok(&["approve", &id]);
    let fix = q.add(&["--type", "fix", "--target", target, "--after", &id]);
    let before = standin.requests().len();
    drain("fixer");
    let task = q.task(&fix);
    assert_eq!(
        task["status"],
        "completed",
        "{task:#}\n{}",
        standin.summary()
    );
    assert!(
        went_on_from_a_session(&standin, before),
        "{}",
        standin.summary()
    );
    assert!(q.ok(&["logs", &fix]).contains(&format!("of task {id}")));
}

/// Adds a `write` task on a fresh repository and drains `role` with `env`, through ACP with
/// every write denied: the CLI asked before it wrote, was refused, and wrote nothing.
fn is_refused_the_write(q: &TestQueue, role: &str, standin: &ModelStandIn, env: &[(&str, String)]) {
    let WriteRun {
        repo,
        id,
        task,
        log,
        context,
    } = run_write_task(q, role, standin, env, &["--max-attempts", "1"]);
    assert_eq!(task["result"]["protocol"], "acp", "{context}");
    assert!(
        log.contains("denied by the role's permissions (option "),
        "{context}"
    );
    let files = git(&repo, &["ls-tree", "--name-only", &task_branch(q, &id)]);
    assert!(!files.contains("hello.txt"), "{files}\n{context}");
}

/// The environment a CLI needs to reach the stand-in, for a queue.
type CliEnv = fn(&TestQueue, &ModelStandIn) -> Vec<(&'static str, String)>;

/// Answers each question the queue's agents ask, as `host inbox --json` lists them, with
/// `host answer` and the option of kind `kind` (`allow_once`), until `done`; how many it
/// answered.
fn answer_from_inbox(q: &TestQueue, kind: &str, done: &std::sync::atomic::AtomicBool) -> usize {
    let mut answered = 0;
    while !done.load(std::sync::atomic::Ordering::SeqCst) {
        let inbox: Value = serde_json::from_str(&q.ok(&["inbox", "--json"])).unwrap();
        for item in inbox
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["kind"] == "input")
        {
            let option = item["input"]["options"]
                .as_array()
                .unwrap()
                .iter()
                .find(|o| o["kind"] == kind)
                .and_then(|o| o["id"].as_str())
                .expect("the agent offers the option");
            // Answered already, its worker taking it: refused, tried no more.
            if q.run(&["answer", item["task"].as_str().unwrap(), option])
                .status
                .success()
            {
                answered += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    answered
}

/// Runs preset `cli` through ACP against a stand-in of `api` twice: with `permissions =
/// "ask"`, a person allows its permission request with `host answer` and it writes the file as
/// in print mode; with `permissions = "deny"`, it asks before the write, is refused, and writes
/// nothing. Returns the allowed run's task and log.
fn through_acp_allowed_then_denied(cli: &str, api: Api, env: CliEnv) -> (Value, String) {
    let q = TestQueue::new();
    let role = bind_with(&q, cli, "protocol = \"acp\"\npermissions = \"ask\"\n");
    let standin = ModelStandIn::start(api, script());
    let done = std::sync::atomic::AtomicBool::new(false);
    let (task, answered) = std::thread::scope(|scope| {
        let answerer = scope.spawn(|| answer_from_inbox(&q, "allow_once", &done));
        let task = writes_the_file(&q, &role, &standin, &env(&q, &standin));
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        (task, answerer.join().unwrap())
    });
    assert_eq!(task["result"]["protocol"], "acp", "{task:#}");
    assert_eq!(task["result"]["stopReason"], "end_turn", "{task:#}");
    let log = q.ok(&["logs", task["id"].as_str().unwrap()]);
    assert!(answered >= 1, "nothing was asked: {log}");
    assert!(log.contains("input: asks a person: "), "{log}");
    assert!(log.contains(" chosen by "), "{log}");

    let q = TestQueue::new();
    let role = bind_with(&q, cli, "protocol = \"acp\"\npermissions = \"deny\"\n");
    let standin = ModelStandIn::start(api, script());
    is_refused_the_write(&q, &role, &standin, &env(&q, &standin));
    (task, log)
}

#[test]
fn copilot_cli_through_acp_asks_before_it_writes_and_the_roles_permissions_answer() {
    let (task, _) = through_acp_allowed_then_denied("copilot", Api::OpenAiChat, |_, standin| {
        copilot_env(standin)
    });
    // Its answer to the prompt carries the turn's tokens, kept as the stream modes keep them.
    let usage = &task["result"]["usage"];
    assert!(
        usage["inputTokens"].as_u64().is_some_and(|n| n > 0)
            && usage["outputTokens"].as_u64().is_some_and(|n| n > 0),
        "{task:#}"
    );
}

#[test]
fn gemini_cli_through_acp_asks_before_it_writes_and_the_roles_permissions_answer() {
    through_acp_allowed_then_denied("gemini", Api::Gemini, gemini_env);
}

#[test]
fn codex_through_its_acp_adapter_asks_before_it_writes_and_the_roles_permissions_answer() {
    let (task, _) = through_acp_allowed_then_denied("codex", Api::OpenAiResponses, codex_env);
    assert_eq!(task["result"]["program"], "codex-acp", "{task:#}");
}

#[test]
fn claude_code_through_its_acp_adapter_asks_before_it_writes_and_the_roles_permissions_answer() {
    let (task, log) = through_acp_allowed_then_denied("claude", Api::Anthropic, |q, standin| {
        let mut env = claude_env(standin, &q.scratch.join("home"));
        env.push(("ANTHROPIC_API_KEY", "sk-ant-api03-standin".into()));
        env
    });
    assert_eq!(task["result"]["program"], "claude-agent-acp", "{task:#}");
    // Its own first mode decides alone; the preset's asks.
    assert!(log.contains("acp: switching to mode default"), "{log}");
}

#[test]
fn usage_limits_through_acp_snooze_the_task_as_in_print_mode() {
    // Codex's adapter passes on the reset the API gave, as a clock time in its error.
    let error = codex_limit_snoozes("protocol = \"acp\"\n");
    assert!(error.contains("You've hit your usage limit"), "{error}");
}
