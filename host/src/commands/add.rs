//! `host add`: one task from flags, or a file of tasks, all or nothing.
//!
//! Every task is checked before anything is stored: its type must be claimed by a role on the
//! plugin path, and that role's `validate` must accept it.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use jiff::Timestamp;
use queue::{Dependency, NewTask, QueueStore, Store};
use serde::Deserialize;
use serde_json::Value;

use crate::cli::{AddArgs, FanOut, Settings};
use crate::commands::open_store;
use crate::commands::outln;
use crate::config::Config;
use crate::loader::{PluginRegistry, PluginRole};

/// One entry of a task file: the same fields as the flags of `host add`, plus a `key` by which
/// later entries of the same file can name it in their `after` or `afterAny`.
#[derive(Debug, Deserialize)]
#[serde(
    rename_all = "camelCase",
    deny_unknown_fields,
    expecting = "a task: an object with at least \"type\""
)]
struct TaskEntry {
    key: Option<String>,
    #[serde(rename = "type")]
    task_type: String,
    /// Keys of entries of the same file, or ids of tasks already in the queue.
    #[serde(default)]
    after: Vec<AfterRef>,
    /// The same, for the tasks it runs after whatever their outcome.
    #[serde(default)]
    after_any: Vec<AfterRef>,
    target: Option<PathBuf>,
    description: Option<String>,
    priority: Option<u32>,
    payload: Option<Value>,
    max_attempts: Option<u32>,
    /// A duration such as "90s" or "10m".
    timeout: Option<String>,
    timeout_secs: Option<u64>,
    /// Not before this time (as `host add --at`).
    at: Option<String>,
    /// Not before this long from now, such as "10m" (as `host add --in`).
    #[serde(rename = "in")]
    delay: Option<String>,
}

/// Adds the tasks and prints their ids, one per line.
pub fn run(settings: &Settings, args: &AddArgs) -> anyhow::Result<()> {
    let store = open_store(settings)?;
    let tasks = match (&args.file, &args.fanout) {
        (Some(file), _) => read_task_file(file)?,
        (None, None) => vec![task_from_flags(args)?],
        (None, Some(fanout)) => fan_out(settings, &store, task_from_flags(args)?, fanout)?,
    };
    let added = add_checked(settings, &store, tasks, |index, err| match &args.file {
        Some(_) => anyhow!("entry {}: {err:#}", index + 1),
        None => err,
    });
    let added = match &args.file {
        Some(file) => added.with_context(|| file.display().to_string())?,
        None => added?,
    };
    for task in &added {
        if task.status == queue::TaskStatus::Cancelled {
            // Added, but it will never run: say so, where a script's `$(host add ...)` does
            // not swallow it.
            eprintln!(
                "warning: task {} is cancelled already: {}",
                task.id,
                task.error
                    .as_deref()
                    .unwrap_or("a task it comes after did not complete")
            );
        }
    }
    for task in added {
        outln!("{}", task.id);
    }
    Ok(())
}

/// Checks every task against the role that would run it, then adds them all or none.
/// `at_fault` puts an error in context with the index of the task it belongs to.
pub fn add_checked(
    settings: &Settings,
    store: &Store,
    tasks: Vec<NewTask>,
    at_fault: impl Fn(usize, anyhow::Error) -> anyhow::Error,
) -> anyhow::Result<Vec<queue::Task>> {
    let registry = PluginRegistry::discover(&settings.plugin_path);
    let config = Config::load(store)?;
    // Each role validates all of its tasks in one child process.
    let mut by_role: Vec<(String, &PluginRole, Vec<usize>)> = Vec::new();
    for (index, task) in tasks.iter().enumerate() {
        // Before the role sees it: a task over the limit is not sent to a plugin process.
        queue::lifecycle::check_size(task.description.as_deref(), &task.payload)
            .map_err(|err| at_fault(index, err.into()))?;
        let (name, role) =
            role_for(&registry, &config, task).map_err(|err| at_fault(index, err))?;
        match by_role
            .iter_mut()
            .find(|(n, r, _)| *r == role && *n == name)
        {
            Some((_, _, indexes)) => indexes.push(index),
            None => by_role.push((name, role, vec![index])),
        }
    }
    for (name, role, indexes) in by_role {
        config.role_settings(&name, role)?;
        let drafts: Vec<queue::Task> = indexes
            .iter()
            .map(|i| {
                tasks[*i]
                    .clone()
                    .into_task("0".into(), Vec::new(), Timestamp::now())
            })
            .collect();
        let verdicts = role.validate(&drafts).map_err(|err| {
            at_fault(
                indexes[0],
                anyhow!("role {name} could not check the task: {err}"),
            )
        })?;
        for (index, verdict) in indexes.iter().zip(verdicts) {
            verdict.map_err(|reason| {
                at_fault(*index, anyhow!("role {name} refuses the task: {reason}"))
            })?;
        }
    }
    // Said only when it is true: a change made but not flushed says so itself.
    store.add(tasks).map_err(|err| match err {
        queue::StoreError::NotFlushed { .. } => anyhow::Error::new(err),
        err => anyhow::Error::new(err).context("nothing was added"),
    })
}

/// An `after` reference in a task file: a key of the file, or an id as a string or a number.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum AfterRef {
    Id(u64),
    Text(String),
}

fn task_from_flags(args: &AddArgs) -> anyhow::Result<NewTask> {
    let payload = match &args.payload {
        Some(text) => serde_json::from_str(text)
            .map_err(|err| anyhow!("--payload is not valid JSON: {err}"))?,
        None => Value::Null,
    };
    Ok(NewTask {
        task_type: args.task_type.clone().unwrap_or_default(),
        target: args.target.as_deref().map(absolute).transpose()?,
        description: args.description.clone(),
        priority: args.priority,
        payload,
        max_attempts: args.max_attempts,
        timeout_secs: args.timeout.map(|t| t.as_secs()),
        after: args.after.iter().cloned().map(Dependency::Task).collect(),
        after_any: args
            .after_any
            .iter()
            .cloned()
            .map(Dependency::Task)
            .collect(),
        not_before: not_before(args.at.as_deref(), args.delay)?,
        siblings: Vec::new(),
    })
}

/// The copies of `task` that `--fanout` asks for, naming each other as siblings: of its type,
/// or one per role, each of the first type that role claims and no other role of the list does.
fn fan_out(
    settings: &Settings,
    store: &Store,
    task: NewTask,
    fanout: &FanOut,
) -> anyhow::Result<Vec<NewTask>> {
    let types =
        match fanout {
            FanOut::Copies(n) if task.task_type.is_empty() => {
                bail!("--fanout {n} copies a task: give its --type (or a list of roles instead)")
            }
            FanOut::Copies(n) => vec![task.task_type.clone(); *n],
            FanOut::Roles(roles) => {
                if !task.task_type.is_empty() {
                    bail!(
                        "--type and --fanout with roles: the roles decide the types; drop --type"
                    );
                }
                let config = Config::load(store)?;
                let claimed: Vec<Vec<String>> = roles
                    .iter()
                    .map(|name| {
                        let role = crate::commands::work::find_role(settings, &config, name)?;
                        Ok(crate::commands::work::role_types(&config, name, &role))
                    })
                    .collect::<anyhow::Result<_>>()?;
                roles
                    .iter()
                    .enumerate()
                    .map(|(i, name)| {
                        let others = |t: &String| {
                            claimed
                                .iter()
                                .enumerate()
                                .any(|(j, types)| j != i && types.contains(t))
                        };
                        claimed[i].iter().find(|t| !others(t)).cloned().ok_or_else(|| {
                        anyhow!(
                            "--fanout: role {name} claims no type that the other roles of the \
                             list do not (it claims {}); give it one of its own in host.toml",
                            claimed[i].join(", ")
                        )
                    })
                    })
                    .collect::<anyhow::Result<_>>()?
            }
        };
    let all: Vec<usize> = (0..types.len()).collect();
    Ok(types
        .into_iter()
        .map(|task_type| NewTask {
            task_type,
            siblings: all.clone(),
            ..task.clone()
        })
        .collect())
}

/// Reads a JSON array or JSON Lines of task entries; any bad entry fails the whole file.
fn read_task_file(file: &Path) -> anyhow::Result<Vec<NewTask>> {
    let name = file.display();
    let text = if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read tasks from stdin")?;
        text
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read task file {name}"))?
    };
    let entries: Vec<(String, Value)> = if text.trim_start().starts_with('[') {
        let values: Vec<Value> = serde_json::from_str(&text)
            .map_err(|err| anyhow!("{name}: not a JSON array of tasks: {err}"))?;
        values
            .into_iter()
            .enumerate()
            .map(|(i, v)| (format!("entry {}", i + 1), v))
            .collect()
    } else {
        text.lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(i, line)| {
                serde_json::from_str(line)
                    .map(|v| (format!("line {}", i + 1), v))
                    .map_err(|err| {
                        // One position: serde_json's own counts lines within this one.
                        let text = err.to_string();
                        let why = text
                            .strip_suffix(&format!(" at line 1 column {}", err.column()))
                            .unwrap_or(&text);
                        anyhow!("{name}: line {}, column {}: {why}", i + 1, err.column())
                    })
            })
            .collect::<anyhow::Result<_>>()?
    };
    if entries.is_empty() {
        bail!("{name}: no tasks in the file");
    }
    tasks_from_entries(&name.to_string(), entries)
}

/// Tasks from the JSON entries of a task file (or of the MCP `add_tasks` tool), each with its
/// position in `source` for errors: entries may name others by `key` in their `after`.
pub fn tasks_from_entries(
    source: &str,
    entries: Vec<(String, Value)>,
) -> anyhow::Result<Vec<NewTask>> {
    // Errors say where: "plan.json: entry 2", or "task 2" for MCP, which has no file.
    let from = if source.is_empty() {
        String::new()
    } else {
        format!("{source}: ")
    };
    let entries: Vec<(String, TaskEntry)> = entries
        .into_iter()
        .map(|(position, value)| {
            serde_json::from_value(value)
                .map(|entry| (position.clone(), entry))
                .map_err(|err| anyhow!("{from}{position}: {err}"))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut keys = HashMap::new();
    for (index, (position, entry)) in entries.iter().enumerate() {
        if let Some(key) = &entry.key {
            if key.is_empty() || key.bytes().all(|b| b.is_ascii_digit()) {
                bail!("{from}{position}: key {key:?} must contain a character other than a digit");
            }
            if keys.insert(key.clone(), index).is_some() {
                bail!("{from}{position}: key {key:?} is used twice");
            }
        }
    }
    // The entries as their author wrote them, for a cycle: by key, where they sit.
    let named: Vec<String> = entries
        .iter()
        .map(|(position, entry)| match &entry.key {
            Some(key) => format!("{key:?} ({position})"),
            None => position.clone(),
        })
        .collect();
    let tasks: Vec<NewTask> = entries
        .into_iter()
        .map(|(position, entry)| {
            new_task(entry, &keys).map_err(|err| anyhow!("{from}{position}: {err:#}"))
        })
        .collect::<anyhow::Result<_>>()?;
    if let Some(cycle) = queue::lifecycle::batch_cycle(&tasks) {
        let cycle: Vec<&str> = cycle.iter().map(|&i| named[i].as_str()).collect();
        bail!(
            "{from}nothing was added: {} come after each other in a cycle",
            cycle.join(" -> ")
        );
    }
    Ok(tasks)
}

/// A task from the JSON of one task-file entry (its `after` may only name ids).
pub fn task_from_json(entry: Value) -> anyhow::Result<NewTask> {
    let entry: TaskEntry = serde_json::from_value(entry)?;
    new_task(entry, &HashMap::new())
}

/// The tasks a task-file entry names in its `field` (`refs`): keys of entries of the same file,
/// or ids of tasks in the queue.
fn dependencies(
    field: &str,
    refs: &[AfterRef],
    keys: &HashMap<String, usize>,
) -> anyhow::Result<Vec<Dependency>> {
    refs.iter()
        .map(|dep| match dep {
            AfterRef::Id(id) => Ok(Dependency::Task(id.to_string())),
            AfterRef::Text(text) => match keys.get(text) {
                Some(index) => Ok(Dependency::Batch(*index)),
                None if text.bytes().all(|b| b.is_ascii_digit()) && !text.is_empty() => {
                    Ok(Dependency::Task(text.clone()))
                }
                None => Err(anyhow!(
                    "{field}: no entry with key {text:?} among these tasks"
                )),
            },
        })
        .collect()
}

fn new_task(entry: TaskEntry, keys: &HashMap<String, usize>) -> anyhow::Result<NewTask> {
    let after = dependencies("after", &entry.after, keys)?;
    let after_any = dependencies("afterAny", &entry.after_any, keys)?;
    let delay = match &entry.delay {
        Some(text) => {
            Some(humantime::parse_duration(text).map_err(|err| anyhow!("in {text:?}: {err}"))?)
        }
        None => None,
    };
    if entry.at.is_some() && delay.is_some() {
        bail!("give at or in, not both");
    }
    let timeout_secs = match (entry.timeout, entry.timeout_secs) {
        (Some(_), Some(_)) => bail!("give timeout or timeoutSecs, not both"),
        (Some(text), None) => Some(
            crate::cli::time_limit(&text)
                .map_err(|err| anyhow!("timeout {err}"))?
                .as_secs(),
        ),
        (None, Some(0)) => bail!("timeoutSecs: a time limit must be at least 1"),
        (None, secs) => secs,
    };
    Ok(NewTask {
        task_type: entry.task_type,
        target: entry.target.as_deref().map(absolute).transpose()?,
        description: entry.description,
        priority: entry.priority,
        payload: entry.payload.unwrap_or(Value::Null),
        max_attempts: entry.max_attempts,
        timeout_secs,
        after,
        after_any,
        not_before: not_before(entry.at.as_deref(), delay)?,
        siblings: Vec::new(),
    })
}

/// When a task may start, from `--at TIME` or `--in DURATION`. A time without a date is the
/// next time the clock shows it; one without an offset is local time.
pub fn not_before(at: Option<&str>, delay: Option<Duration>) -> anyhow::Result<Option<Timestamp>> {
    let now = Timestamp::now();
    if let Some(delay) = delay {
        return Ok(Some(queue::lifecycle::later(now, delay)));
    }
    let Some(text) = at else {
        return Ok(None);
    };
    if let Ok(instant) = text.parse::<Timestamp>() {
        return Ok(Some(instant));
    }
    let zone = jiff::tz::TimeZone::system();
    let bad = |err: jiff::Error| {
        anyhow!(
            "{text:?} is not a time ({err}); give 2026-12-01T09:00:00Z, \"2026-12-01 09:00\" \
             or 18:30"
        )
    };
    if let Ok(civil) = text.parse::<jiff::civil::DateTime>() {
        return Ok(Some(civil.to_zoned(zone).map_err(bad)?.timestamp()));
    }
    let time: jiff::civil::Time = text.parse().map_err(bad)?;
    let today = now.to_zoned(zone.clone()).date();
    let mut start = today
        .to_datetime(time)
        .to_zoned(zone.clone())
        .map_err(bad)?;
    if start.timestamp() <= now {
        let tomorrow = today.tomorrow().map_err(bad)?;
        start = tomorrow.to_datetime(time).to_zoned(zone).map_err(bad)?;
    }
    Ok(Some(start.timestamp()))
}

/// Makes a target absolute (relative to the current folder), resolving links when it exists, so
/// that a worker started elsewhere finds the same path.
fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    queue::normal_path(path).with_context(|| format!("target {}", path.display()))
}

/// The role that would run the task, by name and plugin role: the `host.toml` binding that
/// claims its type (run by its handler), else the plugin role that claims it. Refuses a task
/// whose type no role claims.
fn role_for<'r>(
    registry: &'r PluginRegistry,
    config: &Config,
    task: &NewTask,
) -> anyhow::Result<(String, &'r PluginRole)> {
    queue::validate_name("task type", &task.task_type)?;
    let bound = config.roles.iter().find(|(_, binding)| {
        binding
            .types
            .as_ref()
            .is_some_and(|types| types.contains(&task.task_type))
    });
    if let Some((name, binding)) = bound
        && registry.role(&binding.handler).is_none()
    {
        bail!(
            "{}: role {name} claims type {:?} but is bound to handler {:?}, which no plugin \
             provides (searched: {}{})",
            config.source,
            task.task_type,
            binding.handler,
            registry.searched(),
            registry.refused_note()
        );
    }
    let role = match bound {
        Some((name, binding)) => registry.role(&binding.handler).map(|r| (name.clone(), r)),
        None => registry
            .role_for_type(&task.task_type)
            .map(|r| (r.name().to_string(), r)),
    };
    let Some(role) = role else {
        let mut known = registry.task_types();
        known.extend(
            config
                .roles
                .values()
                .flat_map(|b| b.types.clone().unwrap_or_default()),
        );
        known.sort();
        known.dedup();
        bail!(
            "unknown task type {:?}: no role on the plugin path claims it (known types: {}; searched: {}{})",
            task.task_type,
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            },
            registry.searched(),
            registry.refused_note()
        );
    };
    Ok(role)
}
