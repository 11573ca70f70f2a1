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
//! # stall = "10m"           # no progress for this long fails the attempt (retryable); "off"
//! #                         # (progress: a line, or for a preset with structured output an
//! #                         # event of work, not a retry or an error)
//! ```
//!
//! Presets, each the tool's documented non-interactive form with flags that let it edit files in
//! the target without stopping to ask, and the form that takes a long prompt (over
//! [`ARGUMENT_LIMIT`] bytes, which one argument cannot carry) on standard input or from a file:
//!
//! | preset    | argv                                                                   | long prompt             |
//! |-----------|------------------------------------------------------------------------|-------------------------|
//! | `copilot` | `copilot -p PROMPT --allow-all-tools --no-ask-user --output-format json --usage-output-file FILE` | stdin (no `-p`) |
//! | `claude`  | `claude -p PROMPT --permission-mode acceptEdits --output-format stream-json --verbose` | stdin (`-p` alone) |
//! | `codex`   | `codex exec --json --skip-git-repo-check --sandbox workspace-write PROMPT` | stdin (`-`)         |
//! | `gemini`  | `gemini -p PROMPT --approval-mode auto_edit --skip-trust --output-format stream-json` | stdin, and a short `-p` |
//! | `aider`   | `aider --message PROMPT --yes-always`                                  | `--message-file FILE`   |
//!
//! Claude Code, Codex, Gemini CLI and Copilot CLI run in their structured headless modes: each
//! event they print becomes a readable log line (`assistant: ...`, `tool Edit: {...}`, `command:
//! ls (exit 0)`), and the result keeps the final message (`finalMessage`) and the tokens and
//! cost they report (`usage`: `inputTokens`, `outputTokens`, `costUsd` where given; see
//! `stream`). Copilot's events carry no tokens: it writes them to the attempt's usage file as it
//! exits.
//!
//! Checked against GitHub Copilot CLI 1.0.102, Claude Code 2.1.197, codex-cli 0.171.0 and Gemini
//! CLI 0.61.0 from the npm registry (their `--help`, and runs without credentials in a folder
//! that is not a git repository, with the prompt as an argument and on stdin), and against the
//! argument parser of aider-chat 0.86.2 (`aider/args.py`, from PyPI).
//!
//! `protocol = "acp"` drives the agent through the Agent Client Protocol instead (see
//! [`crate::acp`]): `copilot --acp`, `gemini --acp`, Claude Code through `claude-agent-acp` and
//! Codex through `codex-acp` (their adapters from npm), or a `command` that speaks ACP; what it
//! asks is answered by the role's `permissions`.
//!
//! A `command` template replaces the preset; in it, and in the prompt template, `{prompt}`,
//! `{prompt_file}` (a file holding the prompt), `{id}`, `{type}`, `{target}`, `{description}`,
//! `{payload}`, `{after}` (the results of the tasks this one comes after) and `{instructions}`
//! (what to do with the task, by its type) are replaced; any other `{name}` is refused when the
//! worker starts. A command with neither `{prompt}` nor `{prompt_file}` gets the prompt on
//! standard input. The command is an argument vector, never a shell.
//!
//! Isolation: when the target is tracked in a git repository (with a commit), each attempt runs
//! in a fresh worktree of it, outside the repository, on the branch `host/QUEUE-ID/task-ID`
//! (crate `worktrees`; the host gives the queue's namespace in the `branchNamespace` setting),
//! so agents on one repository, of one queue or of several, never touch each other's files,
//! branches or the user's checkout. Its base is the role's or the
//! payload's `base` (a commit or branch), else the branches of the tasks it comes after (merged;
//! a conflict between them fails the task, naming the files), else the repository's HEAD. The
//! role's `setup` command runs in the worktree first; the ignored files that its `include`
//! patterns or the repository's `.worktreeinclude` name (`.env`) are copied in. When either
//! fails, the worktree and its branch are removed: the agent never ran. When the attempt
//! ends, what the agent left uncommitted is committed (not what setup created or modified,
//! unless the agent changed it again), the result's `worktree` records the
//! branch, its commits, a diffstat and the changed files, and the worktree is removed (kept
//! with `keep_worktree = true`, its folder in the record); the
//! branch stays for `host diff`, `host merge` and `host discard`. `isolation = "none"` runs in
//! the target itself.
//!
//! The output streams to the task's log (`host logs ID`). Result: `agent`, `program`,
//! `exitCode`, `durationMs`, `timedOut`, `stalled`, `prompt` (`bytes`, `via`), `outputTail` and
//! `changedFiles` (`created`, `modified`, `deleted`, relative to the target). The argv is not
//! kept: it holds the prompt, which holds the results of earlier tasks. A non-zero exit fails
//! the task with the CLI's last meaningful line of output in the error.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use plugin_api::{
    Context, HandlerError, Role, Setting, SettingKind, Task, Value, json, serde_json,
};

use crate::acp::{self, AcpRole};
use crate::command::{self, Limits, shorten};
use crate::limits::{LimitHit, UNKNOWN_RESET, usage_limit_in};
use crate::paths::target;
use crate::stream::{Format, Transcript};

/// Runs an AI coding CLI.
pub struct Agent;

/// The time limit of a task that sets none and whose role sets none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// How long a CLI may make no progress (print nothing; with structured output, print no event
/// of work) before the attempt fails as stalled, unless the role's
/// `stall` says otherwise; Claude Code's `-p` prints nothing until it is done, so its preset
/// has no stall limit by default.
const DEFAULT_STALL: Duration = Duration::from_secs(10 * 60);

/// The longest prompt passed as an argument. Linux refuses a single argument over 128 KiB
/// ("Argument list too long"); longer prompts take the preset's long form.
pub const ARGUMENT_LIMIT: usize = 100 * 1024;

/// How much of one prerequisite's result goes into a prompt, and of all of them together, so
/// that a long `after` chain cannot grow its prompts step by step.
const PREREQUISITE_LIMIT: usize = 4_000;
const PREREQUISITES_LIMIT: usize = 16_000;

/// The default prompt template.
pub const DEFAULT_PROMPT: &str = "You are one of several coding assistants sharing a task queue. \
Work only inside {target}.\n\nTask {id} ({type}): {description}\n\nInput:\n{payload}\n\n\
Results of the tasks this one comes after:\n{after}\n\n{instructions}";

/// The placeholders a template may use.
const PLACEHOLDERS: [&str; 9] = [
    "prompt",
    "prompt_file",
    "id",
    "type",
    "target",
    "description",
    "payload",
    "after",
    "instructions",
];

/// An agent CLI this role knows how to run.
pub struct Preset {
    /// The name used in `agent = "..."`.
    pub name: &'static str,
    /// The argv, with `{prompt}` where the prompt goes.
    pub argv: &'static [&'static str],
    /// The argv for a prompt too long for one argument.
    long: LongPrompt,
    /// The structured events its argv asks for, where it has them.
    stream: Option<Format>,
    /// The flag naming a file where it writes its tokens as it exits, for a CLI whose events
    /// carry none (Copilot): given a file of the attempt's.
    usage_file: Option<&'static str>,
    /// How it is told to go on with an earlier session.
    resume: Resume,
    /// Whether it finds a session by its id from any folder (Codex keeps its sessions in one
    /// place; Claude Code per folder), so that a task may go on with a prerequisite's session.
    resume_elsewhere: bool,
    /// Files it writes in its folder for itself (a history, a cache): never committed.
    own_files: &'static [&'static str],
    /// The argv that runs it as an ACP agent (`protocol = "acp"`): natively, or through its
    /// adapter from npm.
    acp: Option<&'static [&'static str]>,
    /// The ACP session mode it is put in unless the role names one: the mode in which it asks
    /// before it acts, so that the role's `permissions` decide.
    acp_mode: Option<&'static str>,
}

/// How a CLI resumes an earlier session (see [`earlier_session`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Resume {
    /// It cannot be told which one: Gemini CLI resumes by an index within a folder, aider
    /// names no session.
    Unable,
    /// `PROGRAM --resume ID ...` (Claude Code, whose sessions are kept per folder: an attempt
    /// again of the same task works in the same folder; Copilot CLI).
    Flag,
    /// `... resume ID PROMPT`: Codex's `codex exec [OPTIONS] resume ID PROMPT`.
    BeforePrompt,
}

/// How a CLI takes a prompt too long for its argument.
enum LongPrompt {
    /// This argv, with the prompt on standard input.
    Stdin(&'static [&'static str]),
    /// This argv, with `{prompt_file}` naming a file that holds the prompt.
    File(&'static [&'static str]),
}

/// The presets.
pub const PRESETS: [Preset; 5] = [
    Preset {
        name: "copilot",
        argv: &[
            "copilot",
            "-p",
            "{prompt}",
            "--allow-all-tools",
            "--no-ask-user",
            "--output-format",
            "json",
        ],
        // Without `-p`, the prompt is read from stdin (`-p -` would be the prompt "-").
        long: LongPrompt::Stdin(&[
            "copilot",
            "--allow-all-tools",
            "--no-ask-user",
            "--output-format",
            "json",
        ]),
        stream: Some(Format::Copilot),
        usage_file: Some("--usage-output-file"),
        resume: Resume::Flag,
        resume_elsewhere: false,
        own_files: &[],
        acp: Some(&["copilot", "--acp"]),
        acp_mode: None,
    },
    Preset {
        name: "claude",
        // stream-json with -p needs --verbose (Claude Code says so and stops otherwise).
        argv: &[
            "claude",
            "-p",
            "{prompt}",
            "--permission-mode",
            "acceptEdits",
            "--output-format",
            "stream-json",
            "--verbose",
        ],
        long: LongPrompt::Stdin(&[
            "claude",
            "-p",
            "--permission-mode",
            "acceptEdits",
            "--output-format",
            "stream-json",
            "--verbose",
        ]),
        stream: Some(Format::Claude),
        usage_file: None,
        resume: Resume::Flag,
        resume_elsewhere: false,
        own_files: &[],
        acp: Some(&["claude-agent-acp"]),
        acp_mode: Some("default"),
    },
    Preset {
        name: "codex",
        argv: &[
            "codex",
            "exec",
            "--json",
            "--skip-git-repo-check",
            "--sandbox",
            "workspace-write",
            "{prompt}",
        ],
        long: LongPrompt::Stdin(&[
            "codex",
            "exec",
            "--json",
            "--skip-git-repo-check",
            "--sandbox",
            "workspace-write",
            "-",
        ]),
        stream: Some(Format::Codex),
        usage_file: None,
        resume: Resume::BeforePrompt,
        resume_elsewhere: true,
        own_files: &[],
        acp: Some(&["codex-acp"]),
        acp_mode: None,
    },
    Preset {
        name: "gemini",
        argv: &[
            "gemini",
            "-p",
            "{prompt}",
            "--approval-mode",
            "auto_edit",
            "--skip-trust",
            "--output-format",
            "stream-json",
        ],
        long: LongPrompt::Stdin(&[
            "gemini",
            "-p",
            "Do the task given on standard input.",
            "--approval-mode",
            "auto_edit",
            "--skip-trust",
            "--output-format",
            "stream-json",
        ]),
        stream: Some(Format::Gemini),
        usage_file: None,
        resume: Resume::Unable,
        resume_elsewhere: false,
        own_files: &[],
        acp: Some(&["gemini", "--acp"]),
        acp_mode: None,
    },
    Preset {
        name: "aider",
        // Without `--no-gitignore` it adds `.aider*` to the repository's .gitignore, which
        // would land on the task's branch; its `.aider*` files are left out instead.
        argv: &[
            "aider",
            "--message",
            "{prompt}",
            "--yes-always",
            "--no-gitignore",
        ],
        long: LongPrompt::File(&[
            "aider",
            "--message-file",
            "{prompt_file}",
            "--yes-always",
            "--no-gitignore",
        ]),
        stream: None,
        usage_file: None,
        resume: Resume::Unable,
        resume_elsewhere: false,
        own_files: &[".aider*"],
        acp: None,
        acp_mode: None,
    },
];

/// The preset of this name.
pub fn preset(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

/// What the role's settings say to run.
struct Setup {
    /// The preset, when no `command` replaces it.
    preset: Option<&'static Preset>,
    /// The argv template.
    command: Vec<String>,
    /// The prompt template.
    prompt: String,
    stall: Option<Duration>,
    /// With `protocol = "acp"`: the agent is driven through ACP, as the role's table says.
    acp: Option<AcpRole>,
}

impl Setup {
    /// Reads the settings, refusing what cannot run: no preset or command, an unknown preset,
    /// an unknown placeholder.
    fn read(settings: &Value) -> Result<Setup, String> {
        let preset_name = settings.get("agent").and_then(Value::as_str);
        let acp = match settings.get("protocol").and_then(Value::as_str) {
            None | Some("print") => None,
            Some("acp") => Some(AcpRole::read(
                settings,
                preset_name.and_then(preset).and_then(|p| p.acp_mode),
            )?),
            Some(other) => {
                return Err(format!(
                    "protocol {other:?}: must be \"acp\" (the Agent Client Protocol) or \"print\" \
                     (the CLI's headless mode, the default)"
                ));
            }
        };
        if let Some(key) = ["permissions", "mode", "ask_timeout"]
            .into_iter()
            .find(|key| acp.is_none() && settings.get(*key).is_some())
        {
            return Err(format!(
                "`{key}` applies to agents driven through ACP: add protocol = \"acp\""
            ));
        }
        let (preset, command) = match (settings.get("command"), preset_name) {
            (Some(command), _) => {
                let command: Vec<String> = serde_json::from_value(command.clone())
                    .map_err(|_| "`command` must be an array of strings".to_string())?;
                if command.is_empty() {
                    return Err("`command` must name a program".into());
                }
                (None, command)
            }
            (None, Some(name)) => {
                let preset = preset(name).ok_or_else(|| {
                    let known: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
                    format!(
                        "unknown agent preset {name:?} (known: {})",
                        known.join(", ")
                    )
                })?;
                let argv = match (&acp, preset.acp) {
                    (None, _) => preset.argv,
                    (Some(_), Some(argv)) => argv,
                    (Some(_), None) => {
                        return Err(format!(
                            "agent preset {name} speaks no ACP: drop protocol = \"acp\", or \
                             give the `command` of an ACP adapter"
                        ));
                    }
                };
                (Some(preset), argv.iter().map(|s| s.to_string()).collect())
            }
            (None, None) => {
                return Err(
                    "the role has neither `agent` (a preset: copilot, claude, codex, \
                            gemini, aider) nor `command` in its host.toml table"
                        .into(),
                );
            }
        };
        let prompt = settings
            .get("prompt")
            .and_then(Value::as_str)
            .unwrap_or(DEFAULT_PROMPT)
            .to_string();
        for (key, template) in command
            .iter()
            .map(|arg| ("command", arg.as_str()))
            .chain([("prompt", prompt.as_str())])
        {
            if let Some(unknown) = placeholders(template).find(|p| !PLACEHOLDERS.contains(p)) {
                return Err(format!(
                    "`{key}` uses the unknown placeholder {{{unknown}}} (known: {})",
                    PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(", ")
                ));
            }
        }
        let stall = match settings.get("stallSecs").and_then(Value::as_u64) {
            Some(0) => None,
            Some(secs) => Some(Duration::from_secs(secs)),
            None if preset.is_some_and(|p| p.name == "claude") => None,
            None => Some(DEFAULT_STALL),
        };
        Ok(Setup {
            preset,
            command,
            prompt,
            stall,
            acp,
        })
    }

    /// How errors name what runs: "agent preset copilot" or "custom command".
    fn describe(&self) -> String {
        self.preset.map_or_else(
            || "custom command".to_string(),
            |p| format!("agent preset {}", p.name),
        )
    }
}

/// The `{name}`s in a template: braces around a lower-case identifier (so JSON in a prompt
/// is not taken for one).
fn placeholders(template: &str) -> impl Iterator<Item = &str> {
    template.match_indices('{').filter_map(|(start, _)| {
        let rest = &template[start + 1..];
        let end = rest.find('}')?;
        let name = &rest[..end];
        let identifier = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        identifier.then_some(name)
    })
}

/// Whether `program` can be started: a path to an executable file, or a name found on `PATH`.
fn runnable(program: &str) -> bool {
    #[cfg(unix)]
    let executable = |path: &Path| {
        use std::os::unix::fs::PermissionsExt;
        path.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    // Windows runs `claude` as claude.exe or claude.com (not .cmd or .bat, which need a shell).
    #[cfg(windows)]
    let executable = |path: &Path| {
        path.is_file()
            || [".exe", ".com"].iter().any(|ext| {
                let mut named = path.as_os_str().to_os_string();
                named.push(ext);
                Path::new(&named).is_file()
            })
    };
    if program.contains('/') || program.contains(std::path::MAIN_SEPARATOR) {
        // A relative path is resolved in each task's target; it cannot be judged here.
        return !Path::new(program).is_absolute() || executable(Path::new(program));
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| executable(&dir.join(program))))
}

/// What to tell the agent to do with a task of this type.
fn instructions(task_type: &str) -> &'static str {
    let is = |words: &[&str]| words.iter().any(|w| task_type.contains(w));
    if is(&["review", "inspect", "audit"]) {
        "Review the target and report what you find in your answer. Do not change any file."
    } else if is(&["plan", "design"]) {
        "Plan the work and give the plan in your answer. Do not change any file."
    } else if is(&["test"]) {
        "Run the relevant tests and report the outcome in your answer. Change files only if the \
         task asks for it."
    } else {
        "Make the change, then stop."
    }
}

/// Fills the placeholders of a template from the task.
fn fill(template: &str, task: &Task, after: &str, prompt: &str, prompt_file: &str) -> String {
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
    let value = |name: &str| -> Option<&str> {
        Some(match name {
            "id" => &task.id,
            "type" => &task.task_type,
            "target" => &target,
            "description" => task.description.as_deref().unwrap_or("(none)"),
            "payload" => &payload,
            "after" => after,
            "instructions" => instructions(&task.task_type),
            "prompt_file" => prompt_file,
            "prompt" => prompt,
            _ => return None,
        })
    };
    // One pass over the template: a value that holds `{payload}` (a description quoting a
    // template, a result) is not expanded again.
    let mut filled = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        filled.push_str(&rest[..start]);
        let after_brace = &rest[start + 1..];
        match after_brace
            .find('}')
            .and_then(|end| Some((end, value(&after_brace[..end])?)))
        {
            Some((end, text)) => {
                filled.push_str(text);
                rest = &after_brace[end + 1..];
            }
            None => {
                filled.push('{');
                rest = after_brace;
            }
        }
    }
    filled.push_str(rest);
    filled
}

/// What reviewers said of the task's earlier attempts when they rejected them (`host reject
/// --reason`), for the end of the prompt; `None` when nobody did.
fn review_notes(task: &Task) -> Option<String> {
    let rejections: Vec<String> = task
        .reviews
        .iter()
        .filter(|r| r.verdict == plugin_api::Verdict::Rejected)
        .map(|r| {
            format!(
                "- attempt {}: {}",
                r.attempt,
                // A reason of several lines stays one item of the list.
                r.reason
                    .as_deref()
                    .unwrap_or("(no reason given)")
                    .replace('\n', "\n  ")
            )
        })
        .collect();
    if rejections.is_empty() {
        return None;
    }
    Some(format!(
        "A reviewer rejected the change of an earlier attempt at this task. What they said, \
         oldest first:\n{}\nThis attempt starts afresh: address every point.",
        rejections.join("\n")
    ))
}

/// What the prompt adds when the rejected attempt's session goes on.
const RESUMED_REJECTED: &str =
    " This is the session of that attempt, resumed; its files are back as they were before it.";

/// An earlier session a task goes on with.
struct EarlierSession<'t> {
    /// The CLI's id of it.
    id: &'t str,
    /// The prerequisite that ran it; `None`: the task's own rejected attempt.
    of: Option<&'t str>,
}

/// The session to resume, the queue keeping each attempt's (from the result's `sessionId`):
/// that of the attempt just before this one, when a reviewer rejected its change, so that the
/// agent keeps what it learned; else, where the CLI finds a session from any folder, that of
/// the latest prerequisite the same CLI ran (a fix after a test goes on with the writer's).
fn earlier_session<'t>(
    task: &'t Task,
    prerequisites: &'t [Task],
    preset: &Preset,
) -> Option<EarlierSession<'t>> {
    if preset.resume == Resume::Unable {
        return None;
    }
    if let Some(id) = rejected_session(task) {
        return Some(EarlierSession { id, of: None });
    }
    if !preset.resume_elsewhere {
        return None;
    }
    prerequisites
        .iter()
        .filter(|p| p.result.as_ref().and_then(|r| r["agent"].as_str()) == Some(preset.name))
        .max_by_key(|p| p.finished_at)
        .and_then(|p| {
            Some(EarlierSession {
                id: session_of(p, p.attempts)?,
                of: Some(&p.id),
            })
        })
}

/// The session of attempt `attempt` of `task`, as its result named it.
fn session_of(task: &Task, attempt: u32) -> Option<&str> {
    task.history
        .iter()
        .rev()
        .find(|a| a.attempt == attempt)?
        .session
        .as_deref()
}

/// The session of the attempt just before this one, when a reviewer rejected its change.
fn rejected_session(task: &Task) -> Option<&str> {
    let previous = task.attempts.saturating_sub(1);
    let rejected = task
        .reviews
        .last()
        .is_some_and(|r| r.attempt == previous && r.verdict == plugin_api::Verdict::Rejected);
    rejected.then(|| session_of(task, previous)).flatten()
}

/// The results of the prerequisites of `task`, one paragraph each with its status and error,
/// each cut to [`PREREQUISITE_LIMIT`] characters and all together to [`PREREQUISITES_LIMIT`]:
/// the whole results stay in the queue (`host show ID`). One that `task` runs after whatever
/// its outcome (`afterAny`: a fix after a test) says so, and its final message comes first.
fn describe_prerequisites(task: &Task, tasks: &[Task]) -> String {
    if tasks.is_empty() {
        return "(none)".into();
    }
    let mut text = String::new();
    for (shown, t) in tasks.iter().enumerate() {
        let result = match &t.result {
            Some(result) => serde_json::to_string_pretty(result).unwrap_or_default(),
            None => "(no result)".into(),
        };
        let result = if result.chars().count() > PREREQUISITE_LIMIT {
            format!(
                "{}\n(cut; the whole result: `host show {}`)",
                shorten(&result, PREREQUISITE_LIMIT),
                t.id
            )
        } else {
            result
        };
        let mut paragraph = format!(
            "- task {} ({}) {}: {}",
            t.id,
            t.task_type,
            t.description.as_deref().unwrap_or(""),
            t.status
        );
        if let Some(error) = &t.error {
            paragraph.push_str(&format!(" ({error})"));
        }
        let any_outcome = task.after_any.contains(&t.id);
        if any_outcome {
            paragraph.push_str(
                "\n  This task runs after it whatever its outcome: if it failed, what it found \
                 is this task's to fix.",
            );
        }
        paragraph.push('\n');
        if let Some(message) = t
            .result
            .as_ref()
            .and_then(|r| r.get("finalMessage"))
            .and_then(|m| m.as_str())
            .filter(|_| any_outcome)
        {
            paragraph.push_str(&format!(
                "Its final message: {}\n",
                shorten(message, PREREQUISITE_LIMIT / 2)
            ));
        }
        paragraph.push_str(&result);
        paragraph.push('\n');
        if text.len() + paragraph.len() > PREREQUISITES_LIMIT {
            text.push_str(&format!(
                "({} more; see `host show ID` for each of: {})\n",
                tasks.len() - shown,
                tasks[shown..]
                    .iter()
                    .map(|t| t.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            break;
        }
        text.push_str(&paragraph);
    }
    text.trim_end().to_string()
}

/// Size and modification time of every file under `dir` (`.git` and `.gitignore`d files left
/// out), by relative path; `None` when the walk is not done by `deadline`.
fn snapshot(dir: &Path, deadline: Option<Instant>) -> Option<BTreeMap<String, (u64, SystemTime)>> {
    let mut files = BTreeMap::new();
    let walker = ignore::WalkBuilder::new(dir)
        .hidden(false)
        .require_git(false)
        .filter_entry(|e| e.file_name() != ".git")
        .build();
    for entry in walker.flatten() {
        if deadline.is_some_and(|d| Instant::now() > d) {
            return None;
        }
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        if let Ok(rel) = entry.path().strip_prefix(dir) {
            let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            files.insert(rel.display().to_string(), (meta.len(), modified));
        }
    }
    Some(files)
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

/// The argv to run and what goes on its standard input, for this prompt.
struct Invocation {
    argv: Vec<String>,
    stdin: Option<String>,
    /// How the prompt reaches the CLI: `argument`, `stdin` or `file`.
    via: &'static str,
    /// The prompt's file, removed when the invocation is dropped.
    _file: Option<tempfile::NamedTempFile>,
}

impl Invocation {
    fn new(
        setup: &Setup,
        task: &Task,
        after: &str,
        prompt: &str,
        session: Option<&str>,
    ) -> Result<Invocation, String> {
        let long = prompt.len() > ARGUMENT_LIMIT;
        let template: Vec<String> = match (long, setup.preset) {
            (true, Some(preset)) => match preset.long {
                LongPrompt::Stdin(argv) | LongPrompt::File(argv) => {
                    argv.iter().map(|s| s.to_string()).collect()
                }
            },
            _ => setup.command.clone(),
        };
        let uses = |name: &str| template.iter().any(|arg| arg.contains(name));
        let file = if uses("{prompt_file}") {
            let mut file = tempfile::Builder::new()
                .prefix("host-prompt-")
                .suffix(".md")
                .tempfile()
                .map_err(|err| format!("cannot write the prompt to a file: {err}"))?;
            file.write_all(prompt.as_bytes())
                .map_err(|err| format!("cannot write the prompt to a file: {err}"))?;
            Some(file)
        } else {
            None
        };
        let file_name = file
            .as_ref()
            .map(|f| f.path().display().to_string())
            .unwrap_or_default();
        let (via, stdin) = if uses("{prompt}") {
            if long {
                return Err(format!(
                    "the prompt is {} KiB, more than one argument can carry ({} KiB): give it \
                     to the command as {{prompt_file}}, or on standard input (a command \
                     without {{prompt}})",
                    prompt.len() / 1024,
                    ARGUMENT_LIMIT / 1024
                ));
            }
            ("argument", None)
        } else if file.is_some() {
            ("file", None)
        } else {
            ("stdin", Some(prompt.to_string()))
        };
        let mut argv: Vec<String> = template
            .iter()
            .map(|arg| fill(arg, task, after, prompt, &file_name))
            .collect();
        if let (Some(preset), Some(session)) = (setup.preset, session) {
            let resume = [String::from("--resume"), session.to_string()];
            match preset.resume {
                Resume::Unable => {}
                Resume::Flag => drop(argv.splice(1..1, resume)),
                Resume::BeforePrompt => {
                    let prompt_at = argv.len() - 1;
                    drop(argv.splice(prompt_at..prompt_at, ["resume".into(), session.into()]));
                }
            }
        }
        Ok(Invocation {
            argv,
            stdin,
            via,
            _file: file,
        })
    }
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

    fn settings(&self) -> Vec<Setting> {
        vec![
            Setting::new(
                "isolation",
                SettingKind::String,
                "\"worktree\" (the default where the target is tracked in git) or \"none\"",
            ),
            Setting::new(
                "base",
                SettingKind::String,
                "the commit or branch each task's worktree starts from (default: HEAD)",
            ),
            Setting::new(
                "setup",
                SettingKind::List,
                "a command run in each new worktree before the agent, e.g. [\"npm\", \"ci\"]",
            ),
            Setting::new(
                "include",
                SettingKind::List,
                "ignored files copied into each worktree (gitignore patterns, e.g. \".env\")",
            ),
            Setting::new(
                "keep_worktree",
                SettingKind::Boolean,
                "keep each task's worktree folder after its attempt (its path is in the result)",
            ),
            Setting::new(
                "protocol",
                SettingKind::String,
                "\"print\" (the CLI's headless mode, the default) or \"acp\" (driven through the \
                 Agent Client Protocol)",
            ),
            Setting::new(
                "mode",
                SettingKind::String,
                "with protocol = \"acp\": the agent's session mode to work in (one of its own mode \
                 ids; claude: \"default\", asking before it acts)",
            ),
            Setting::new(
                "permissions",
                SettingKind::Any,
                "with protocol = \"acp\": \"allow\", \"deny\" or \"ask\" (a person answers: host \
                 answer) what the agent asks, or a table by tool kind (read, edit, execute, ..., \
                 default)",
            ),
            Setting::new(
                "ask_timeout",
                SettingKind::String,
                "with permissions \"ask\": how long a question waits for a person before the \
                 agent is refused (default \"1h\")",
            ),
            crate::paths::branch_setting(),
        ]
    }

    fn check_settings(&self, settings: &Value) -> Result<(), String> {
        Isolation::read(settings)?;
        let setup = Setup::read(settings)?;
        let program = &setup.command[0];
        if !runnable(program) {
            return Err(format!(
                "{}: program `{program}` is not installed (not found on PATH: {})",
                setup.describe(),
                std::env::var("PATH").unwrap_or_default()
            ));
        }
        Ok(())
    }

    fn handle(&self, task: &Task, ctx: &Context<'_>) -> Result<Value, HandlerError> {
        let target = target(task)?;
        let settings = ctx.settings();
        let setup = Setup::read(&settings)?;
        let prerequisites = ctx.prerequisites();
        let checkout = match Isolation::read(&settings)?.repo(target)? {
            Some(repo) => Some(open_worktree(&repo, task, &settings, &prerequisites, ctx)?),
            None => None,
        };
        let checkout = checkout.map(|mut checkout| {
            if let Some(preset) = setup.preset {
                checkout.leave_out(preset.own_files);
            }
            checkout
        });
        let dir = checkout
            .as_ref()
            .map_or_else(|| target.to_path_buf(), |c| c.folder_for(target));
        // The prompt's {target} is where the agent works: its worktree, not the checkout.
        let mut moved = task.clone();
        moved.target = Some(dir.clone());
        let outcome = self.run_agent(&moved, ctx, &setup, &prerequisites, &dir);
        let Some(checkout) = checkout else {
            return outcome;
        };
        let message = format!(
            "host task {}: {}",
            task.id,
            task.description.as_deref().unwrap_or(&task.task_type)
        );
        let record = checkout
            .finish(&message)
            .map_err(|err| format!("worktree of task {}: {err}", task.id))?;
        let record = serde_json::to_value(record).expect("a record serializes");
        match outcome {
            Ok(mut result) => {
                result["worktree"] = record;
                Ok(result)
            }
            Err(mut err) => {
                let mut result = err.result.take().unwrap_or_else(|| json!({}));
                result["worktree"] = record;
                Err(err.with_result(result))
            }
        }
    }
}

impl Agent {
    /// Runs the CLI on the task in `dir`: the target, or its worktree.
    fn run_agent(
        &self,
        task: &Task,
        ctx: &Context<'_>,
        setup: &Setup,
        prerequisites: &[Task],
        dir: &Path,
    ) -> Result<Value, HandlerError> {
        let after = describe_prerequisites(task, prerequisites);
        let mut prompt = fill(&setup.prompt, task, &after, "", "");
        if let Some(notes) = review_notes(task) {
            prompt.push_str("\n\n");
            prompt.push_str(&notes);
        }
        let mut resumed = prompt.clone();
        if let Some(role) = &setup.acp {
            // An agent that can load sessions goes on with the rejected attempt's; one that
            // cannot, or does not find it, starts a new one with the fresh prompt.
            resumed.push_str(RESUMED_REJECTED);
            let resume = rejected_session(task).map(|session| acp::Resumption {
                session,
                prompt: &resumed,
            });
            return self.run_acp(task, ctx, setup, role, dir, &after, &prompt, resume);
        }
        let session = setup
            .preset
            .and_then(|preset| earlier_session(task, prerequisites, preset));
        match &session {
            Some(EarlierSession { id, of: None }) => {
                resumed.push_str(RESUMED_REJECTED);
                ctx.log(&format!("resuming session {id} of the rejected attempt"));
            }
            Some(EarlierSession {
                id,
                of: Some(other),
            }) => {
                resumed.push_str(&format!(
                    "\n\nThis session is task {other}'s, resumed: what you did there is the \
                     work the tasks above were about."
                ));
                ctx.log(&format!("resuming session {id} of task {other}"));
            }
            None => return self.run_once(task, ctx, setup, dir, &after, &prompt, None),
        }
        let id = session.as_ref().map(|s| s.id);
        let outcome = self.run_once(task, ctx, setup, dir, &after, &resumed, id);
        // A session the CLI cannot go on with (another CLI's, after a fallback role ran the
        // attempt; another machine's) fails at once with nothing done: start afresh instead.
        match &outcome {
            Err(err) if err.snooze.is_none() && did_nothing(err.result.as_ref()) => {
                ctx.log(&format!(
                    "the session could not be resumed ({}); starting afresh",
                    err.message
                ));
                self.run_once(task, ctx, setup, dir, &after, &prompt, None)
            }
            _ => outcome,
        }
    }

    /// Runs the CLI once with `prompt`, going on with session `session` where given.
    #[allow(clippy::too_many_arguments)]
    fn run_once(
        &self,
        task: &Task,
        ctx: &Context<'_>,
        setup: &Setup,
        dir: &Path,
        after: &str,
        prompt: &str,
        session: Option<&str>,
    ) -> Result<Value, HandlerError> {
        let which = setup.describe();
        let mut invocation = Invocation::new(setup, task, after, prompt, session)
            .map_err(|err| format!("{which}: {err}"))?;
        let usage_file = match setup.preset.and_then(|p| p.usage_file) {
            Some(flag) => {
                let file = tempfile::Builder::new()
                    .prefix("host-usage-")
                    .suffix(".json")
                    .tempfile()
                    .map_err(|err| format!("{which}: cannot make the usage file: {err}"))?;
                invocation.argv.push(flag.to_string());
                invocation.argv.push(file.path().display().to_string());
                Some(file)
            }
            None => None,
        };
        let program = invocation.argv[0].clone();
        let mut limits = Limits::for_task(task, DEFAULT_TIMEOUT, setup.stall);
        // With structured output, the stall limit measures events of work, not any line.
        limits.progress = setup.preset.and_then(|p| p.stream);

        let before = snapshot(dir, None).unwrap_or_default();
        ctx.progress(0, &format!("running {program}"));
        // A preset with structured output: its events become readable log lines, and its
        // answer and usage go into the result.
        let mut transcript = setup.preset.and_then(|p| p.stream).map(Transcript::new);
        let run = command::run_rendered(
            &invocation.argv,
            dir,
            invocation.stdin.as_deref(),
            limits,
            ctx,
            &mut |line| match &mut transcript {
                Some(transcript) => transcript.line(line),
                None => Some(line),
            },
        )
        .map_err(|err| format!("{which}: {err}"))?;
        let mut result = json!({
            "agent": setup.preset.map(|p| p.name),
            "program": program,
            "exitCode": run.status.code(),
            "durationMs": run.duration.as_millis() as u64,
            "timedOut": run.timed_out || run.stop == Some(plugin_api::StopReason::TimedOut),
            "stalled": run.stalled,
            "prompt": { "bytes": prompt.len(), "via": invocation.via },
            "outputTail": run.tail,
            // A stopped handler has seconds before it is killed: the walk gets one of them.
            "changedFiles": snapshot(dir, run.stop.map(|_| Instant::now() + Duration::from_secs(1)))
                .map(|after| changes(&before, &after)),
        });
        if let (Some(transcript), Some(file)) = (&mut transcript, &usage_file)
            && let Ok(report) = std::fs::read_to_string(file.path())
            && let Ok(report) = serde_json::from_str::<Value>(&report)
        {
            transcript.usage_report(&report);
        }
        if let Some(transcript) = &transcript {
            if let Some(session) = transcript.session() {
                result["sessionId"] = json!(session);
            }
            result["finalMessage"] = json!(transcript.final_message());
            result["usage"] = transcript.usage();
        }
        ctx.progress(100, &format!("{program} finished"));
        let failure = run.failure(&format!("{which}: `{program}`"), limits);
        // The account is out, not the task: the task waits for the reset, its attempt not
        // spent, and the role's workers stop claiming (a custom command's words are its own).
        if let Some(why) = &failure
            && setup.preset.is_some()
        {
            let now = plugin_api::Timestamp::now();
            let hit = transcript
                .as_ref()
                .and_then(|t| t.limit().cloned())
                .filter(|hit| hit.resets_at.is_some())
                .or_else(|| {
                    // With events, what the CLI said itself; else its output.
                    let said = transcript
                        .as_ref()
                        .map_or_else(|| run.tail.clone(), Transcript::said);
                    usage_limit_in(&said, now)
                })
                .or_else(|| transcript.as_ref().and_then(|t| t.limit().cloned()));
            if let Some(hit) = hit {
                return Err(usage_limit(why, &hit, result, now));
            }
        }
        match failure {
            None => Ok(result),
            // A stalled CLI (waiting on a network, a prompt) may well run on another attempt.
            Some(why) if run.stalled => Err(HandlerError::new(why).with_result(result).retryable()),
            Some(why) => Err(HandlerError::new(why).with_result(result)),
        }
    }

    /// Runs the agent once through ACP on `prompt` (see [`crate::acp`]).
    #[allow(clippy::too_many_arguments)]
    fn run_acp(
        &self,
        task: &Task,
        ctx: &Context<'_>,
        setup: &Setup,
        role: &AcpRole,
        dir: &Path,
        after: &str,
        prompt: &str,
        resume: Option<acp::Resumption<'_>>,
    ) -> Result<Value, HandlerError> {
        let which = setup.describe();
        let argv: Vec<String> = setup
            .command
            .iter()
            .map(|arg| fill(arg, task, after, prompt, ""))
            .collect();
        let program = argv[0].clone();
        let limits = Limits::for_task(task, DEFAULT_TIMEOUT, setup.stall);
        let before = snapshot(dir, None).unwrap_or_default();
        ctx.progress(0, &format!("running {program} (ACP)"));
        let run = acp::run(&argv, dir, prompt, resume, role, limits, ctx)
            .map_err(|err| format!("{which}: {err}"))?;
        let mut result = json!({
            "agent": setup.preset.map(|p| p.name),
            "program": program,
            "protocol": "acp",
            "stopReason": run.stop_reason.as_ref().map(|r| serde_json::to_value(r).unwrap_or_default()),
            "durationMs": run.duration.as_millis() as u64,
            "timedOut": run.timed_out || run.stop == Some(plugin_api::StopReason::TimedOut),
            "stalled": run.stalled,
            "prompt": { "bytes": prompt.len(), "via": "acp" },
            "finalMessage": run.final_message,
            "usage": run.usage,
            "outputTail": run.tail,
            "changedFiles": snapshot(dir, run.stop.map(|_| Instant::now() + Duration::from_secs(1)))
                .map(|after| changes(&before, &after)),
        });
        if !run.plan.is_empty() {
            result["plan"] = json!(run.plan);
        }
        if let Some(session) = &run.session {
            result["sessionId"] = json!(session);
        }
        ctx.progress(100, &format!("{program} finished"));
        let Some(why) = run.failure(&format!("{which}: `{program}`"), limits) else {
            return Ok(result);
        };
        let now = plugin_api::Timestamp::now();
        let said = format!("{}\n{}", run.error.as_deref().unwrap_or(""), run.tail);
        if setup.preset.is_some()
            && let Some(hit) = usage_limit_in(&said, now)
        {
            return Err(usage_limit(&why, &hit, result, now));
        }
        if run.stalled {
            return Err(HandlerError::new(why).with_result(result).retryable());
        }
        Err(HandlerError::new(why).with_result(result))
    }
}

/// The error of an attempt that met its account's usage limit: the task waits for the reset
/// (an hour when the CLI named none), its attempt not spent.
fn usage_limit(
    why: &str,
    hit: &LimitHit,
    result: Value,
    now: plugin_api::Timestamp,
) -> HandlerError {
    let until = hit
        .resets_at
        .filter(|at| *at > now)
        .unwrap_or_else(|| now + UNKNOWN_RESET);
    HandlerError::new(format!("{why}: usage limit: {}", hit.said))
        .with_result(result)
        .usage_limit(until)
}

/// Whether a failed run did nothing: it neither timed out nor stalled, and changed no file.
fn did_nothing(result: Option<&Value>) -> bool {
    let Some(result) = result else {
        return false;
    };
    let untouched = ["created", "modified", "deleted"].iter().all(|kind| {
        result["changedFiles"][kind]
            .as_array()
            .is_none_or(Vec::is_empty)
    });
    result["timedOut"] != true && result["stalled"] != true && untouched
}

/// Where an attempt runs: a worktree or the target itself (`isolation`).
enum Isolation {
    /// A worktree where the target is tracked in git, else the target.
    Auto,
    Worktree,
    None,
}

impl Isolation {
    fn read(settings: &Value) -> Result<Isolation, String> {
        match settings.get("isolation").and_then(Value::as_str) {
            None => Ok(Isolation::Auto),
            Some("worktree") => Ok(Isolation::Worktree),
            Some("none") => Ok(Isolation::None),
            Some(other) => Err(format!(
                "isolation {other:?}: must be \"worktree\" or \"none\""
            )),
        }
    }

    /// The repository to make the attempt's worktree of, if any; `worktree` insists on one.
    fn repo(&self, target: &Path) -> Result<Option<worktrees::Repo>, String> {
        match self {
            Isolation::None => Ok(None),
            Isolation::Auto => Ok(worktrees::Repo::containing(target)),
            Isolation::Worktree => worktrees::Repo::containing(target)
                .map(Some)
                .ok_or_else(|| {
                    format!(
                        "isolation = \"worktree\" but {} is tracked in no git repository",
                        target.display()
                    )
                }),
        }
    }
}

/// Makes the attempt's worktree: from its base, with the included files copied in and the
/// role's `setup` run.
fn open_worktree(
    repo: &worktrees::Repo,
    task: &Task,
    settings: &Value,
    prerequisites: &[Task],
    ctx: &Context<'_>,
) -> Result<worktrees::Checkout, String> {
    let strings = |key: &str| -> Vec<String> {
        settings
            .get(key)
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default()
    };
    let named = task
        .payload
        .get("base")
        .or_else(|| settings.get("base"))
        .and_then(Value::as_str)
        .map(String::from);
    let after = crate::paths::prerequisite_branches(repo, prerequisites);
    let base = worktrees::Base { named, after };
    let branch = crate::paths::task_branch(task, settings);
    let mut checkout = worktrees::start(repo, &branch, &base)
        .map_err(|err| format!("worktree of task {}: {err}", task.id))?;
    if settings.get("keep_worktree").and_then(Value::as_bool) == Some(true) {
        checkout.keep();
    }
    ctx.log(&format!(
        "working in a worktree of {} on {branch}",
        repo.root.display()
    ));
    let prepared = (|| {
        let included = checkout
            .copy_included(&strings("include"))
            .map_err(|err| format!("worktree of task {}: {err}", task.id))?;
        for pattern in &included.unmatched {
            ctx.log(&format!(
                "include pattern {pattern:?} matched no untracked or ignored file: nothing copied for it"
            ));
        }
        let setup = strings("setup");
        if !setup.is_empty() {
            let dir = checkout.folder_for(&repo.root);
            let limits = Limits::for_task(task, DEFAULT_TIMEOUT, None);
            let run = command::run(&setup, &dir, None, limits, ctx)
                .map_err(|err| format!("setup: {err}"))?;
            if let Some(why) = run.failure(&format!("setup `{}`", setup[0]), limits) {
                return Err(why);
            }
        }
        Ok(())
    })();
    // What setup left is not the task's change: committed only if the agent changes it.
    let prepared = prepared.and_then(|()| {
        checkout
            .note_prepared()
            .map_err(|err| format!("worktree of task {}: {err}", task.id))
    });
    match prepared {
        Ok(()) => Ok(checkout),
        // The agent never ran: nothing in the worktree is anyone's work, and the branch holds
        // nothing but its base.
        Err(why) => {
            checkout.abandon();
            Err(why)
        }
    }
}

plugin_api::register_role!(Agent);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_identifiers_in_braces_and_json_is_not_one() {
        let found: Vec<&str> =
            placeholders("do {description} with {\"a\": 1} {prompt_file}").collect();
        assert_eq!(found, ["description", "prompt_file"]);
    }

    #[test]
    fn an_unknown_placeholder_a_missing_cli_setting_and_an_unknown_preset_are_refused() {
        let err = Setup::read(&json!({"agent": "claude", "prompt": "{descripton}"})).err();
        assert!(err.unwrap().contains("{descripton}"));
        assert!(
            Setup::read(&Value::Null)
                .err()
                .unwrap()
                .contains("neither `agent`")
        );
        assert!(
            Setup::read(&json!({"agent": "clippy"}))
                .err()
                .unwrap()
                .contains("clippy")
        );
    }

    #[test]
    fn a_value_holding_a_placeholder_is_not_expanded_again() {
        let task: Task = serde_json::from_value(json!({
            "id": "7", "type": "write", "status": "running", "priority": 5,
            "description": "quote {payload} and {prompt}", "payload": {"a": 1},
            "createdAt": "2026-01-01T00:00:00Z", "attempts": 1, "maxAttempts": 3
        }))
        .unwrap();
        let filled = fill("{id}: {description} {nope}", &task, "", "P", "");
        assert_eq!(filled, "7: quote {payload} and {prompt} {nope}");
    }

    #[test]
    fn review_tasks_are_not_told_to_make_a_change() {
        assert!(instructions("review").contains("Do not change"));
        assert!(instructions("write").starts_with("Make the change"));
    }
}
