//! `host.toml` in the coordination folder (optional): binds roles to handlers and sets limits
//! that every worker of the queue applies.
//!
//! ```toml
//! [roles.reviewer]          # `host --role reviewer` runs ...
//! handler = "agent"         # ... the plugin role named `agent`
//! types = ["review"]        # claiming these types instead of the handler's own
//! agent = "claude"          # settings for the handler: an agent preset, ...
//! # command = ["my-cli", "{prompt}"]   # ... or a custom argv template
//! # prompt = "..."          # ... and a prompt template
//! # stall = "10m"           # ... and how long it may print nothing ("off": no limit)
//! # isolation = "none"      # ... and where: a git worktree per task (the default in git) or not
//! timeout = "10m"           # for tasks that set no timeout
//! # review = "required"     # a success waits for `host approve` / `host reject` (any handler)
//! # fallback = ["writer"]   # roles that claim these types while this one's account is out
//!
//! [limits]
//! deploy = 1                # at most one `deploy` task running at once, queue-wide
//!
//! [queue]
//! aging = "10m"             # a pending task moves up one priority step per 10 minutes waited
//! keep_finished = "30d"     # workers purge tasks that finished longer ago than this
//! branch_prefix = "host"    # worktree tasks' branches: `host/QUEUE-ID/task-ID`
//!
//! [hooks]                   # the task's JSON on stdin, HOST_EVENT=its name, HOST_TASK_ID
//! failed = ["notify-send", "host: a task failed"]     # a task failed for good
//! conflict = ["notify-send", "host: a merge conflicts"] # `host merge` met a conflict
//! review = ["notify-send", "host: a change to review"]  # a task waits for review
//! # input = [...]           # a running task's agent asks a person (`host answer`)
//! # usage_limit = [...]     # a role's agent reached its usage limit
//! # drained = [...]         # nothing is left pending, running or blocked (the last task's JSON)
//!
//! [notify]                  # desktop notifications and webhooks (see `notify`)
//! events = ["failed", "review", "input", "conflict", "usage_limit", "drained"]  # default: all
//! desktop = true
//! [[notify.webhook]]
//! url = "https://ntfy.sh/my-topic"
//! format = "ntfy"           # slack | discord | ntfy | json (the default)
//! ```
//!
//! A role not named here is looked up by name among the plugins. An unknown key or a bad value
//! is an error naming the file, the line and the key. A role's table may also hold settings of
//! its handler's own (`greeting = "hi"`): those are checked against what the handler declares
//! (`Role::settings`) when a worker starts or a task is added, with the same precision.

use std::collections::BTreeMap;
use std::time::Duration;

use queue::Store;
use serde::Deserialize;
use toml::Spanned;

/// What `host.toml` says; all empty when there is no file.
#[derive(Debug, Default)]
pub struct Config {
    /// Where it was read from (a file, or `host.toml` in a database), for messages.
    pub source: String,
    /// Role bindings by role name.
    pub roles: BTreeMap<String, RoleBinding>,
    /// Queue-wide caps on running tasks, by task type.
    pub limits: BTreeMap<String, usize>,
    /// Pending tasks move up one priority step per this much waiting.
    pub aging: Option<Duration>,
    /// Finished tasks are purged this long after they finished.
    pub keep_finished: Option<Duration>,
    /// What worktree tasks' branch names start with (`PREFIX/QUEUE-ID/task-ID`); `host` when
    /// unset (see `branch_names`).
    pub branch_prefix: Option<String>,
    /// Commands run when a task needs someone's attention (`[hooks]`).
    pub hooks: Hooks,
    /// Desktop notifications and webhooks for the same events (`[notify]`).
    pub notify: crate::notify::Notify,
}

/// `[hooks]`: commands (argument vectors, never a shell) run with the task's JSON on stdin,
/// `HOST_EVENT` set to the event's name and `HOST_TASK_ID` to the task's id.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    /// Run by the worker when a task has failed for good (no attempt left).
    pub failed: Option<Vec<String>>,
    /// Run by `host merge` when a task's branch conflicts with its base.
    pub conflict: Option<Vec<String>>,
    /// Run by the worker when a task's change waits for review (`review = "required"`).
    pub review: Option<Vec<String>>,
    /// Run by the worker when a running task's agent asks a person (`host answer`).
    pub input: Option<Vec<String>>,
    /// Run when a role's agent reached its usage limit.
    pub usage_limit: Option<Vec<String>>,
    /// Run when an outcome leaves no task pending, running or blocked (with the last task).
    pub drained: Option<Vec<String>>,
}

/// `[roles.NAME]`.
#[derive(Debug, Clone)]
pub struct RoleBinding {
    /// The plugin role that handles the tasks.
    pub handler: String,
    /// The task types claimed, instead of the handler's own.
    pub types: Option<Vec<String>>,
    /// The time limit of tasks that set none.
    pub timeout: Option<Duration>,
    /// A success waits for a person's verdict (`review = "required"`) before it completes.
    pub review: bool,
    /// What the handler is told (`agent`, `command`, `prompt`, `stallSecs`), as JSON.
    pub settings: serde_json::Value,
    /// The table's other keys: settings of the handler's own, checked against what it declares
    /// (see [`Config::role_settings`]).
    pub extra: Vec<ExtraSetting>,
    /// The roles that claim this role's task types while its account is out of quota
    /// (`fallback = ["codex"]`).
    pub fallback: Vec<String>,
}

/// A key of a `[roles.NAME]` table that is not one of the host's.
#[derive(Debug, Clone)]
pub struct ExtraSetting {
    /// The key.
    pub key: String,
    /// Its value, as JSON.
    pub value: serde_json::Value,
    /// Its line in the file.
    pub line: usize,
}

/// The keys of a `[roles.NAME]` table that the host reads itself.
const HOST_KEYS: [&str; 9] = [
    "handler", "types", "timeout", "agent", "command", "prompt", "stall", "review", "fallback",
];

/// Every key of every `[roles.NAME]` table, with where it is.
#[derive(Deserialize)]
struct RoleKeys {
    #[serde(default)]
    roles: BTreeMap<String, BTreeMap<String, Spanned<toml::Value>>>,
}

/// The agent presets the `agent` handler knows.
pub const AGENT_PRESETS: [&str; 5] = ["copilot", "claude", "codex", "gemini", "aider"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    roles: BTreeMap<String, RawRole>,
    #[serde(default)]
    limits: BTreeMap<String, Spanned<usize>>,
    #[serde(default)]
    queue: RawQueue,
    hooks: Option<Spanned<Hooks>>,
    notify: Option<crate::notify::RawNotify>,
}

/// A role's table; keys other than these are the handler's own settings.
#[derive(Deserialize)]
struct RawRole {
    handler: String,
    types: Option<Vec<String>>,
    timeout: Option<Spanned<String>>,
    agent: Option<Spanned<String>>,
    command: Option<Spanned<Vec<String>>>,
    prompt: Option<String>,
    stall: Option<Spanned<String>>,
    review: Option<Spanned<String>>,
    fallback: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    aging: Option<Spanned<String>>,
    keep_finished: Option<Spanned<String>>,
    branch_prefix: Option<Spanned<String>>,
}

/// A problem in `host.toml`, with where it is.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}:{line}: {message}")]
pub struct ConfigError {
    source_name: String,
    line: usize,
    message: String,
}

impl Config {
    /// Reads the queue's configuration (`host.toml` in its folder, or kept in its database);
    /// none means the defaults.
    pub fn load(store: &Store) -> anyhow::Result<Config> {
        match store.config()? {
            Some((text, source)) => Ok(Config::parse(&source, &text)?),
            None => Ok(Config::default()),
        }
    }

    /// Reads configuration `text`; errors name `source` and the line at fault.
    pub fn parse(source: &str, text: &str) -> Result<Config, ConfigError> {
        let error = |span: Option<std::ops::Range<usize>>, message: String| ConfigError {
            source_name: source.to_string(),
            line: span.map_or(1, |s| {
                text[..s.start.min(text.len())].matches('\n').count() + 1
            }),
            message,
        };
        let raw: RawConfig =
            toml::from_str(text).map_err(|err| error(err.span(), one_line(err.message())))?;
        let mut keys: RoleKeys =
            toml::from_str(text).map_err(|err| error(err.span(), one_line(err.message())))?;
        let duration = |value: &Spanned<String>, key: &str| {
            humantime::parse_duration(value.get_ref())
                .map_err(|err| error(Some(value.span()), format!("{key}: {err}")))
        };
        let mut config = Config {
            source: source.to_string(),
            ..Config::default()
        };
        for (name, role) in raw.roles {
            let timeout = match &role.timeout {
                Some(value) => Some(duration(value, &format!("roles.{name}.timeout"))?),
                None => None,
            };
            let mut settings = serde_json::Map::new();
            if let Some(agent) = &role.agent {
                if !AGENT_PRESETS.contains(&agent.get_ref().as_str()) {
                    let message = format!(
                        "roles.{name}.agent: unknown preset {:?} (known: {}; or give `command`)",
                        agent.get_ref(),
                        AGENT_PRESETS.join(", ")
                    );
                    return Err(error(Some(agent.span()), message));
                }
                settings.insert("agent".into(), agent.get_ref().clone().into());
            }
            if let Some(command) = &role.command {
                if command.get_ref().is_empty() {
                    let message = format!("roles.{name}.command: must name a program");
                    return Err(error(Some(command.span()), message));
                }
                settings.insert("command".into(), command.get_ref().clone().into());
            }
            if let Some(prompt) = role.prompt {
                settings.insert("prompt".into(), prompt.into());
            }
            if let Some(stall) = &role.stall {
                let key = format!("roles.{name}.stall");
                let secs = match stall.get_ref().as_str() {
                    "off" => 0,
                    _ => match duration(stall, &key)?.as_secs() {
                        0 => {
                            let message = format!("{key}: must be at least 1s (or \"off\")");
                            return Err(error(Some(stall.span()), message));
                        }
                        secs => secs,
                    },
                };
                settings.insert("stallSecs".into(), secs.into());
            }
            let review = match role
                .review
                .as_ref()
                .map(|r| (r.get_ref().as_str(), r.span()))
            {
                None | Some(("none", _)) => false,
                Some(("required", _)) => true,
                Some((other, span)) => {
                    let message =
                        format!("roles.{name}.review: {other:?} is not \"required\" or \"none\"");
                    return Err(error(Some(span), message));
                }
            };
            let fallback = role
                .fallback
                .map(|f| {
                    if f.get_ref().contains(&name) {
                        let message =
                            format!("roles.{name}.fallback: a role cannot stand in for itself");
                        return Err(error(Some(f.span()), message));
                    }
                    Ok(f.into_inner())
                })
                .transpose()?
                .unwrap_or_default();
            let extra = keys
                .roles
                .remove(&name)
                .unwrap_or_default()
                .into_iter()
                .filter(|(key, _)| !HOST_KEYS.contains(&key.as_str()))
                .map(|(key, value)| {
                    // A near miss of a host key is a typo, whatever the handler declares.
                    if let Some(meant) = HOST_KEYS.iter().find(|k| near_miss(&key, k)) {
                        let message =
                            format!("roles.{name}.{key}: unknown key; did you mean `{meant}`?");
                        return Err(error(Some(value.span()), message));
                    }
                    Ok(ExtraSetting {
                        line: error(Some(value.span()), String::new()).line,
                        key,
                        value: serde_json::to_value(value.into_inner()).unwrap_or_default(),
                    })
                })
                .collect::<Result<_, _>>()?;
            config.roles.insert(
                name,
                RoleBinding {
                    handler: role.handler,
                    types: role.types,
                    timeout,
                    review,
                    settings: if settings.is_empty() {
                        serde_json::Value::Null
                    } else {
                        settings.into()
                    },
                    extra,
                    fallback,
                },
            );
        }
        for (task_type, limit) in raw.limits {
            if *limit.get_ref() == 0 {
                let message = format!(
                    "limits.{task_type}: must be at least 1 (pause a type with `host pause --type`)"
                );
                return Err(error(Some(limit.span()), message));
            }
            config.limits.insert(task_type, limit.into_inner());
        }
        if let Some(aging) = &raw.queue.aging {
            let aging_for = duration(aging, "queue.aging")?;
            if aging_for.is_zero() {
                return Err(error(
                    Some(aging.span()),
                    "queue.aging: must be more than 0".into(),
                ));
            }
            config.aging = Some(aging_for);
        }
        if let Some(keep) = &raw.queue.keep_finished {
            let keep_for = duration(keep, "queue.keep_finished")?;
            if keep_for.is_zero() {
                return Err(error(
                    Some(keep.span()),
                    "queue.keep_finished: must be more than 0".into(),
                ));
            }
            config.keep_finished = Some(keep_for);
        }
        if let Some(prefix) = &raw.queue.branch_prefix {
            if let Err(why) = check_branch_prefix(prefix.get_ref()) {
                let message = format!("queue.branch_prefix: {:?} {why}", prefix.get_ref());
                return Err(error(Some(prefix.span()), message));
            }
            config.branch_prefix = Some(prefix.get_ref().clone());
        }
        if let Some(hooks) = raw.hooks {
            let span = hooks.span();
            let hooks = hooks.into_inner();
            let named = [
                ("failed", &hooks.failed),
                ("conflict", &hooks.conflict),
                ("review", &hooks.review),
                ("input", &hooks.input),
                ("usage_limit", &hooks.usage_limit),
                ("drained", &hooks.drained),
            ];
            for (name, command) in named {
                if command.as_ref().is_some_and(Vec::is_empty) {
                    let message = format!("hooks.{name}: must name a program");
                    return Err(error(Some(span.clone()), message));
                }
            }
            config.hooks = hooks;
        }
        if let Some(notify) = raw.notify {
            let at = |span: std::ops::Range<usize>, message: String| error(Some(span), message);
            config.notify = crate::notify::Notify::from_raw(notify, &at)?;
        }
        Ok(config)
    }
}

impl Config {
    /// Whether a success of a task of `task_type` waits for review: as role `role` says when
    /// it is bound here, else as any role bound to claim the type says.
    pub fn review_for(&self, role: Option<&str>, task_type: &str) -> bool {
        match role.and_then(|name| self.roles.get(name)) {
            Some(binding) => binding.review,
            None => self.roles.values().any(|binding| {
                binding.review
                    && binding
                        .types
                        .as_ref()
                        .is_some_and(|types| types.iter().any(|t| t == task_type))
            }),
        }
    }

    /// Checks every binding's own settings against what its handler declares, for the
    /// handlers found on this machine's plugin path (plugins are local to each machine; a
    /// handler not found here is judged where it runs).
    pub fn check_settings(
        &self,
        registry: &crate::loader::PluginRegistry,
    ) -> Result<(), ConfigError> {
        for (name, binding) in &self.roles {
            if let Some(role) = registry.role(&binding.handler) {
                self.role_settings(name, role)?;
            }
        }
        Ok(())
    }

    /// What role `role_name`'s handler is told: its binding's settings, its own keys checked
    /// against what the handler (`role`) declares, and the declared defaults of what the table
    /// leaves out. Refuses a key the handler does not take, or a value of the wrong kind,
    /// naming the file and line.
    pub fn role_settings(
        &self,
        role_name: &str,
        role: &crate::loader::PluginRole,
    ) -> Result<serde_json::Value, ConfigError> {
        let binding = self.roles.get(role_name);
        let mut settings = match binding.map(|b| &b.settings) {
            Some(serde_json::Value::Object(map)) => map.clone(),
            _ => serde_json::Map::new(),
        };
        for extra in binding.map_or(&[][..], |b| &b.extra[..]) {
            let at_fault = |message: String| ConfigError {
                source_name: self.source.clone(),
                line: extra.line,
                message: format!("roles.{role_name}.{}: {message}", extra.key),
            };
            if extra.key == crate::branch_names::NAMESPACE_SETTING {
                return Err(at_fault(
                    "is set by the host (the queue's branch namespace); `[queue] branch_prefix` \
                     sets how it starts"
                        .to_string(),
                ));
            }
            let Some(declared) = role.settings().iter().find(|s| s.name == extra.key) else {
                let mut takes: Vec<String> =
                    role.settings().iter().map(|s| s.name.clone()).collect();
                takes.extend(HOST_KEYS.iter().map(|k| k.to_string()));
                return Err(at_fault(format!(
                    "role {} takes no setting `{}` (it takes: {})",
                    role.name(),
                    extra.key,
                    takes.join(", ")
                )));
            };
            if !declared.accepts(&extra.value) {
                return Err(at_fault(format!(
                    "must be a {} ({}), not {}",
                    declared.kind, declared.help, extra.value
                )));
            }
            settings.insert(extra.key.clone(), extra.value.clone());
        }
        for declared in role.settings() {
            if let Some(default) = &declared.default {
                settings
                    .entry(declared.name.clone())
                    .or_insert_with(|| default.clone());
            }
        }
        Ok(if settings.is_empty() {
            serde_json::Value::Null
        } else {
            settings.into()
        })
    }
}

/// Refuses a branch prefix git would refuse, or that would read as something else: empty
/// parts, `..`, a part starting with `.` or ending with `.lock`, characters other than letters,
/// digits, `-`, `_`, `.` and `/`.
fn check_branch_prefix(prefix: &str) -> Result<(), &'static str> {
    if prefix.is_empty() {
        return Err("is empty");
    }
    for part in prefix.split('/') {
        if part.is_empty() {
            return Err("has an empty part (a leading, trailing or doubled `/`)");
        }
        if part.starts_with('.') || part.ends_with(".lock") || part.contains("..") {
            return Err("has a part git refuses (starting with `.`, ending with `.lock`, or `..`)");
        }
        if !part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err("may hold only letters, digits, `-`, `_`, `.` and `/`");
        }
    }
    Ok(())
}

/// Whether `key` is one or two edits away from `meant` (and long enough for that to mean a
/// typo).
fn near_miss(key: &str, meant: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (key.chars().collect(), meant.chars().collect());
    if a.len() < 4 || a == b {
        return false;
    }
    // Levenshtein distance, one row at a time.
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous + usize::from(ca != cb);
            previous = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()] <= 2
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse("q/host.toml", text).map_err(|e| e.to_string())
    }

    #[test]
    fn reads_roles_limits_and_aging() {
        let config = parse(
            "[roles.reviewer]\nhandler = \"inspector\"\ntypes = [\"review\"]\ntimeout = \"10m\"\n\n[limits]\ndeploy = 1\n\n[queue]\naging = \"30s\"\nkeep_finished = \"30d\"\n",
        )
        .unwrap();
        let role = &config.roles["reviewer"];
        assert_eq!(role.handler, "inspector");
        assert_eq!(role.types.as_deref(), Some(&["review".to_string()][..]));
        assert_eq!(role.timeout, Some(Duration::from_secs(600)));
        assert_eq!(config.limits["deploy"], 1);
        assert_eq!(config.aging, Some(Duration::from_secs(30)));
        assert_eq!(config.keep_finished, Some(Duration::from_secs(30 * 86400)));
    }

    #[test]
    fn names_the_file_line_and_key_at_fault() {
        let config =
            parse("[limits]\ndeploy = 1\n\n[roles.x]\nhandler = \"a\"\ncolour = \"red\"\n")
                .unwrap();
        let extra = &config.roles["x"].extra[0];
        assert_eq!((extra.key.as_str(), extra.line), ("colour", 6));
        let err = parse("[queue]\naging = \"soon\"\n").unwrap_err();
        assert!(err.starts_with("q/host.toml:2: queue.aging:"), "{err}");
        let err = parse("[roles.a]\nhandler = \"agent\"\ntyeps = [\"x\"]\n").unwrap_err();
        assert!(
            err.contains("q/host.toml:3: roles.a.tyeps: unknown key; did you mean `types`?"),
            "{err}"
        );
        let err = parse("[roles.a]\nhandler = \"agent\"\nstall = \"0s\"\n").unwrap_err();
        assert!(err.starts_with("q/host.toml:3: roles.a.stall"), "{err}");
        let err = parse("[limits]\n\ndeploy = 0\n").unwrap_err();
        assert!(err.starts_with("q/host.toml:3: limits.deploy"), "{err}");
        assert!(!err.contains('\n'));
    }
}
