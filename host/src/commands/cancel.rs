//! `host cancel`, `host retry`, `host pause` and `host resume`: steer work by hand.

use queue::{PauseScope, QueueStore, Store, TaskQuery, TaskStatus, lifecycle};

use crate::cli::Settings;
use crate::commands::{open_store, outln};
use crate::config::Config;
use crate::loader::PluginRegistry;

/// The ids of the tasks in `statuses`, of `task_type` when given, oldest first.
fn ids_of(
    store: &dyn QueueStore,
    statuses: &[TaskStatus],
    task_type: Option<&str>,
) -> anyhow::Result<Vec<String>> {
    let tasks = store.list(&TaskQuery {
        statuses: statuses.to_vec(),
        task_type: task_type.map(String::from),
        ..TaskQuery::default()
    })?;
    Ok(tasks.into_iter().map(|t| t.id).collect())
}

/// Refuses a type that no role claims and no task has, as `host add` does: it is most likely a
/// typo, and acting on it would do nothing. `doing` completes "nothing was ...".
pub fn check_type_known(
    settings: &Settings,
    store: &Store,
    task_type: &str,
    doing: &str,
) -> anyhow::Result<()> {
    let config = Config::load(store)?;
    let registry = PluginRegistry::discover(&settings.plugin_path);
    let mut known = registry.task_types();
    known.extend(
        config
            .roles
            .values()
            .flat_map(|b| b.types.clone().unwrap_or_default()),
    );
    let queued = !ids_of(store, &TaskStatus::ALL, Some(task_type))?.is_empty();
    if !known.iter().any(|k| k == task_type) && !queued {
        known.sort();
        known.dedup();
        anyhow::bail!(
            "unknown task type {task_type:?}: no role on the plugin path claims it and no task \
             has it (known types: {}{}); nothing was {doing}",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            },
            registry.refused_note()
        );
    }
    Ok(())
}

/// Checks every id before any is changed, so that a bad one changes nothing: each must name a
/// task that `check` (the store's own state rule, from `lifecycle`) accepts.
pub fn check_all(
    store: &dyn QueueStore,
    ids: &[String],
    doing: &str,
    check: impl Fn(&queue::Task) -> Result<(), queue::StoreError>,
) -> anyhow::Result<()> {
    for id in ids {
        store
            .get(id)
            .and_then(|task| check(&task))
            .map_err(|err| anyhow::anyhow!("nothing was {doing}: {err}"))?;
    }
    Ok(())
}

/// Cancels tasks (`ids`, or every unfinished one of `task_type`): a pending one at once; the
/// worker of a running one is asked to stop it. Ids are checked first: one that names no task
/// or a finished one cancels nothing.
pub fn cancel(settings: &Settings, ids: &[String], task_type: Option<&str>) -> anyhow::Result<()> {
    let store = open_store(settings)?;
    let ids = match task_type {
        Some(task_type) => {
            check_type_known(settings, &store, task_type, "cancelled")?;
            let unfinished = [
                TaskStatus::Pending,
                TaskStatus::Blocked,
                TaskStatus::Running,
                TaskStatus::Review,
            ];
            ids_of(&store, &unfinished, Some(task_type))?
        }
        None => {
            check_all(&store, ids, "cancelled", lifecycle::check_cancellable)?;
            ids.to_vec()
        }
    };
    // Only `--type` can come to nothing: ids are required otherwise.
    if let (true, Some(task_type)) = (ids.is_empty(), task_type) {
        outln!("nothing to cancel: no {task_type} task is unfinished");
    }
    for id in &ids {
        // Cancelling a task cancels the tasks that come after it, which may be further down
        // the list; a worker may finish one meanwhile.
        if task_type.is_some() && store.get(id)?.status.is_finished() {
            continue;
        }
        let task = store.cancel(id)?;
        if task.status == TaskStatus::Running {
            let worker = task.worker.as_deref().unwrap_or("its worker");
            outln!("task {id}: cancel requested; {worker} will stop it");
        } else {
            outln!("task {id}: cancelled");
        }
    }
    Ok(())
}

/// Returns failed or cancelled tasks (`ids`, or with `failed` every failed one, of
/// `task_type` when given) to the queue, blocked if they come after unfinished work.
pub fn retry(
    settings: &Settings,
    ids: &[String],
    failed: bool,
    task_type: Option<&str>,
) -> anyhow::Result<()> {
    let store = open_store(settings)?;
    let ids = if failed {
        if let Some(task_type) = task_type {
            check_type_known(settings, &store, task_type, "retried")?;
        }
        ids_of(&store, &[TaskStatus::Failed], task_type)?
    } else {
        check_all(&store, ids, "retried", lifecycle::check_retryable)?;
        ids.to_vec()
    };
    if ids.is_empty() {
        match task_type {
            Some(task_type) => outln!("nothing to retry: no {task_type} task failed"),
            None => outln!("nothing to retry: no task failed"),
        }
    }
    for id in &ids {
        if failed && store.get(id)?.status != TaskStatus::Failed {
            continue;
        }
        let task = store.retry(id)?;
        outln!(
            "task {id}: {} again (attempt {} of {} next)",
            task.status,
            task.attempts + 1,
            task.max_attempts
        );
    }
    Ok(())
}

/// Stops claims in a scope. A type that no role claims and no task has is refused, as `host
/// add` refuses it: it is most likely a typo, and the pause would stop nothing.
pub fn pause(settings: &Settings, scope: &PauseScope) -> anyhow::Result<()> {
    let store = open_store(settings)?;
    check_pausable(settings, &store, scope)?;
    store.pause(scope)?;
    outln!("paused {scope}: nothing there is claimed until `host resume`");
    Ok(())
}

/// Refuses a pause that would stop nothing: of a type nothing knows, or of a finished task.
pub fn check_pausable(
    settings: &Settings,
    store: &Store,
    scope: &PauseScope,
) -> anyhow::Result<()> {
    match scope {
        PauseScope::Type(task_type) => check_type_known(settings, store, task_type, "paused"),
        PauseScope::Task(id) => {
            let status = store.get(id)?.status;
            if status.is_finished() || status == TaskStatus::Review {
                anyhow::bail!(
                    "task {id} {}: pausing it would stop nothing",
                    status.phrase()
                );
            }
            Ok(())
        }
        PauseScope::Queue => Ok(()),
    }
}

/// Lifts a pause.
pub fn resume(settings: &Settings, scope: &PauseScope) -> anyhow::Result<()> {
    let store = open_store(settings)?;
    if !store.paused()?.contains(scope) {
        anyhow::bail!("{scope} is not paused");
    }
    store.resume(scope)?;
    let left: Vec<String> = store.paused()?.iter().map(ToString::to_string).collect();
    if left.is_empty() {
        outln!("resumed {scope}; nothing is paused now");
    } else {
        outln!("resumed {scope}; still paused: {}", left.join(", "));
    }
    Ok(())
}
