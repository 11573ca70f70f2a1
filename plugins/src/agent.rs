//! Role `agent` (task type `agent`): runs an AI coding CLI non-interactively on each task, in the
//! task's target folder.
//!
//! It is meant to be bound under other names in the queue's `host.toml`, one binding per
//! assistant:
//!
//! ```toml
//! [roles.writer]
//! handler = "agent"
//! types = ["write"]
//! agent = "copilot"          # a preset, or:
//! # command = ["my-cli", "--prompt", "{prompt}"]
//! # prompt = "..."          # the prompt template
//! ```
//!
//! Presets, each the tool's documented non-interactive form with flags that let it edit files in
//! the target without stopping to ask:
//!
//! | preset    | argv                                                         |
//! |-----------|--------------------------------------------------------------|
//! | `copilot` | `copilot -p PROMPT --allow-all-tools --no-ask-user`          |
//! | `claude`  | `claude -p PROMPT --permission-mode acceptEdits`             |
//! | `codex`   | `codex exec --sandbox workspace-write PROMPT`                |
//! | `gemini`  | `gemini -p PROMPT --approval-mode auto_edit`                 |
//! | `aider`   | `aider --message PROMPT --yes-always`                        |
//!
//! Checked against `--help` of GitHub Copilot CLI 1.0.102, Claude Code 2.1.197, codex-cli 0.169.0
//! and Gemini CLI 0.61.0 (from the npm registry, 2026-11-25), and against the argument parser of
//! aider-chat 0.86.2 (`aider/args.py`, from PyPI).
//!
//! A `command` template replaces the preset; in it, and in the prompt template, `{prompt}`,
//! `{id}`, `{type}`, `{target}`, `{description}`, `{payload}` and `{after}` (the results of the
//! tasks this one comes after) are replaced. The command is an argument vector, never a shell.
//!
//! The output streams to the task's log (`host logs ID`). Result: `agent`, `command`,
//! `exitCode`, `durationMs`, `timedOut`, `outputTail` and `changedFiles` (`created`,
//! `modified`, `deleted`, relative to the target). A non-zero exit fails the task.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use plugin_api::{Context, HandlerError, Role, Task, Value, json, serde_json};

use crate::command;
use crate::paths::target;

/// Runs an AI coding CLI.
pub struct Agent;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The default prompt template.
pub const DEFAULT_PROMPT: &str = "You are one of several coding assistants sharing a task queue. \
Work only inside {target}.\n\nTask {id} ({type}): {description}\n\nInput:\n{payload}\n\n\
Results of the tasks this one comes after:\n{after}\n\nMake the change, then stop.";

/// The argv of a preset, with `{prompt}` where the prompt goes.
pub fn preset(name: &str) -> Option<&'static [&'static str]> {
    Some(match name {
        "copilot" => &[
            "copilot",
            "-p",
            "{prompt}",
            "--allow-all-tools",
            "--no-ask-user",
        ],
        "claude" => &[
            "claude",
            "-p",
            "{prompt}",
            "--permission-mode",
            "acceptEdits",
        ],
        "codex" => &["codex", "exec", "--sandbox", "workspace-write", "{prompt}"],
        "gemini" => &["gemini", "-p", "{prompt}", "--approval-mode", "auto_edit"],
        "aider" => &["aider", "--message", "{prompt}", "--yes-always"],
        _ => return None,
    })
}

/// Fills the placeholders of a template from the task.
fn fill(template: &str, task: &Task, after: &str, prompt: &str) -> String {
    let payload = if task.payload.is_null() {
        "(none)".to_string()
    } else {
        serde_json::to_string_pretty(&task.payload).unwrap_or_default()
    };
    let target = task
        .target
        .as_ref()
        .map(|t| t.display().to_string())
        .unwrap_or_default();
    template
        .replace("{id}", &task.id)
        .replace("{type}", &task.task_type)
        .replace("{target}", &target)
        .replace(
            "{description}",
            task.description.as_deref().unwrap_or("(none)"),
        )
        .replace("{payload}", &payload)
        .replace("{after}", after)
        .replace("{prompt}", prompt)
}

/// The results of the prerequisites, one paragraph each.
fn describe_prerequisites(tasks: &[Task]) -> String {
    if tasks.is_empty() {
        return "(none)".into();
    }
    tasks
        .iter()
        .map(|t| {
            let result = t
                .result
                .as_ref()
                .map(|r| serde_json::to_string_pretty(r).unwrap_or_default())
                .unwrap_or_else(|| "(no result)".into());
            let description = t.description.as_deref().unwrap_or("");
            format!(
                "- task {} ({}) {description}: {}\n{result}",
                t.id, t.task_type, t.status
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Size and modification time of every file under `dir` (`.git` and `.gitignore`d files left
/// out), by relative path.
fn snapshot(dir: &Path) -> BTreeMap<String, (u64, SystemTime)> {
    let mut files = BTreeMap::new();
    let walker = ignore::WalkBuilder::new(dir)
        .hidden(false)
        .require_git(false)
        .filter_entry(|e| e.file_name() != ".git")
        .build();
    for entry in walker.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        if let Ok(rel) = entry.path().strip_prefix(dir) {
            let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            files.insert(rel.display().to_string(), (meta.len(), modified));
        }
    }
    files
}

fn changes(
    before: &BTreeMap<String, (u64, SystemTime)>,
    after: &BTreeMap<String, (u64, SystemTime)>,
) -> Value {
    let created: Vec<&String> = after.keys().filter(|p| !before.contains_key(*p)).collect();
    let deleted: Vec<&String> = before.keys().filter(|p| !after.contains_key(*p)).collect();
    let modified: Vec<&String> = after
        .iter()
        .filter(|(p, v)| before.get(*p).is_some_and(|old| old != *v))
        .map(|(p, _)| p)
        .collect();
    json!({ "created": created, "modified": modified, "deleted": deleted })
}

impl Role for Agent {
    fn name(&self) -> &str {
        "agent"
    }

    fn task_types(&self) -> Vec<String> {
        vec!["agent".into()]
    }

    fn validate(&self, task: &Task) -> Result<(), String> {
        target(task).map(drop)
    }

    fn handle(&self, task: &Task, ctx: &Context<'_>) -> Result<Value, HandlerError> {
        let dir = target(task)?;
        let settings = ctx.settings();
        let preset_name = settings.get("agent").and_then(Value::as_str);
        let template: Vec<String> = match (settings.get("command"), preset_name) {
            (Some(command), _) => serde_json::from_value(command.clone())
                .map_err(|_| "setting `command` must be an array of strings".to_string())?,
            (None, Some(name)) => preset(name)
                .ok_or_else(|| format!("unknown agent preset {name:?}"))?
                .iter()
                .map(|s| s.to_string())
                .collect(),
            (None, None) => {
                return Err(HandlerError::new(
                    "role has no `agent` preset or `command` in host.toml",
                ));
            }
        };
        let after = describe_prerequisites(&ctx.prerequisites());
        let prompt_template = settings
            .get("prompt")
            .and_then(Value::as_str)
            .unwrap_or(DEFAULT_PROMPT);
        let prompt = fill(prompt_template, task, &after, "");
        let argv: Vec<String> = template
            .iter()
            .map(|arg| fill(arg, task, &after, &prompt))
            .collect();
        let which = preset_name.map_or_else(
            || "custom command".to_string(),
            |p| format!("agent preset {p}"),
        );
        let timeout = task
            .timeout_secs
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TIMEOUT);

        let before = snapshot(dir);
        ctx.progress(0, &format!("running {}", argv[0]));
        let run = command::run(&argv, dir, None, timeout, ctx)
            .map_err(|err| format!("{which}: {err}"))?;
        let result = json!({
            "agent": preset_name,
            "command": argv,
            "exitCode": run.status.code(),
            "durationMs": run.duration.as_millis() as u64,
            "timedOut": run.timed_out,
            "outputTail": run.tail,
            "changedFiles": changes(&before, &snapshot(dir)),
        });
        ctx.progress(100, &format!("{} finished", argv[0]));
        match run.status.code() {
            Some(0) => Ok(result),
            _ if run.timed_out => Err(HandlerError::new(format!(
                "{which}: `{}` timed out after {}s and was killed",
                argv[0],
                timeout.as_secs()
            ))
            .with_result(result)),
            _ if run.stopped => Err(HandlerError::new(format!(
                "{which}: `{}` was stopped",
                argv[0]
            ))
            .with_result(result)),
            Some(code) => Err(HandlerError::new(format!(
                "{which}: `{}` exited with code {code}",
                argv[0]
            ))
            .with_result(result)),
            None => Err(HandlerError::new(format!(
                "{which}: `{}` was killed by a signal",
                argv[0]
            ))
            .with_result(result)),
        }
    }
}

plugin_api::register_role!(Agent);
