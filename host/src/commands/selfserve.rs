//! The self-serve verbs, for an assistant that takes work itself instead of being driven by a
//! worker: `host claim`, `host heartbeat`, `host complete`, `host fail`. They use the same
//! store operations as workers, so leases, attempt fencing, retries and dependencies apply.

use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use queue::{Lease, Outcome, QueueStore, Task, TaskStatus};

use crate::cli::Settings;
use crate::commands::work::{claiming_store, find_role, role_types};
use crate::commands::{open_store, outln, print_json};
use crate::config::Config;

/// Claims the best pending task for a role as `name` (default ROLE-HOSTNAME), holding it for
/// `lease`. `None` when there is nothing to claim.
pub fn claim_task(
    settings: &Settings,
    role_name: &str,
    name: Option<&str>,
    lease: Duration,
) -> anyhow::Result<Option<Task>> {
    let config = Config::load(&settings.queue)?;
    let role = find_role(settings, &config, role_name)?;
    let types = role_types(&config, role_name, &role);
    let store = claiming_store(settings, &config, lease)?;
    let worker = name.map_or_else(
        || format!("{role_name}-{}", crate::worker::hostname()),
        String::from,
    );
    queue::validate_name("worker name", &worker)?;
    Ok(store.claim(&worker, &types)?.map(|claim| claim.task))
}

/// `host claim`: claims the best pending task for a role and prints it.
pub fn claim(
    settings: &Settings,
    role_name: &str,
    name: Option<&str>,
    lease: Duration,
    json: bool,
) -> anyhow::Result<()> {
    let Some(task) = claim_task(settings, role_name, name, lease)? else {
        bail!("no task to claim for role {role_name}");
    };
    if json {
        return print_json(&task);
    }
    outln!("{}", task.id);
    outln!("type         {}", task.task_type);
    if let Some(target) = &task.target {
        outln!("target       {}", target.display());
    }
    if let Some(description) = &task.description {
        outln!("description  {description}");
    }
    if !task.payload.is_null() {
        outln!("payload      {}", task.payload);
    }
    outln!(
        "claimed by {} (attempt {} of {}); keep it with `host heartbeat {id}` at least every {}, \
         finish with `host complete {id}` or `host fail {id} --error TEXT`",
        task.worker.as_deref().unwrap_or_default(),
        task.attempts,
        task.max_attempts,
        humantime::format_duration(lease / 2),
        id = task.id
    );
    Ok(())
}

/// The lease of the task's running attempt, checked against `name` when given.
fn current_lease(store: &dyn QueueStore, id: &str, name: Option<&str>) -> anyhow::Result<Lease> {
    let task: Task = store.get(id)?;
    if task.status != TaskStatus::Running {
        bail!("task {id} is {}, not running: claim it first", task.status);
    }
    let worker = task.worker.clone().unwrap_or_default();
    if let Some(name) = name
        && name != worker
    {
        bail!("task {id} is held by {worker}, not {name}");
    }
    Ok(Lease {
        task_id: task.id,
        attempt: task.attempts,
        worker,
    })
}

/// Extends the lease of a claimed task to `lease` from now; says whether a cancel was requested.
pub fn heartbeat_task(
    settings: &Settings,
    id: &str,
    name: Option<&str>,
    lease: Duration,
) -> anyhow::Result<bool> {
    let store = open_store(settings)?.with_lease(lease);
    let held = current_lease(&store, id, name)?;
    Ok(store.renew(&held)?.cancel_requested)
}

/// `host heartbeat`: extends the lease of a claimed task.
pub fn heartbeat(
    settings: &Settings,
    id: &str,
    name: Option<&str>,
    lease: Duration,
) -> anyhow::Result<()> {
    if heartbeat_task(settings, id, name, lease)? {
        outln!("task {id}: cancel requested; stop and run `host fail {id} --error cancelled`");
    } else {
        outln!(
            "task {id}: lease extended by {}",
            humantime::format_duration(lease)
        );
    }
    Ok(())
}

/// Records how a claimed task ended, as its holder (`name`, when given, must hold it).
pub fn finish_task(
    settings: &Settings,
    id: &str,
    name: Option<&str>,
    outcome: Outcome,
) -> anyhow::Result<Task> {
    let store = open_store(settings)?;
    let held = current_lease(&store, id, name)?;
    store
        .finish(&held, outcome)
        .context("the outcome was not recorded")
}

/// `host complete`: records success, with an optional JSON result.
pub fn complete(
    settings: &Settings,
    id: &str,
    name: Option<&str>,
    result: Option<&str>,
) -> anyhow::Result<()> {
    let result = match result {
        Some(text) => serde_json::from_str(text)
            .map_err(|err| anyhow!("--result is not valid JSON: {err}"))?,
        None => serde_json::Value::Null,
    };
    let task = finish_task(settings, id, name, Outcome::Success(result))?;
    outln!("task {id}: {}", task.status);
    Ok(())
}

/// `host fail`: records a failure; retried later when `retryable` and attempts are left.
pub fn fail(
    settings: &Settings,
    id: &str,
    name: Option<&str>,
    error: &str,
    retryable: bool,
) -> anyhow::Result<()> {
    let outcome = Outcome::Failure {
        error: error.to_string(),
        result: None,
        retryable,
    };
    let task = finish_task(settings, id, name, outcome)?;
    outln!("task {id}: {}", task.status);
    Ok(())
}

/// `host logs`: prints a task's log; with `follow`, keeps printing new lines until the task has
/// finished.
pub fn logs(settings: &Settings, id: &str, follow: bool) -> anyhow::Result<()> {
    let store = open_store(settings)?;
    let mut offset = 0;
    loop {
        let (text, next) = store.read_log(id, offset)?;
        if !text.is_empty() {
            crate::commands::out!("{text}");
        }
        offset = next;
        if !follow {
            if offset == 0 {
                // On stderr, so that `host logs ID > file` still gives an empty file.
                let status = store.get(id)?.status;
                eprintln!("task {id} ({status}) has logged nothing");
            }
            return Ok(());
        }
        if store.get(id)?.status.is_finished() {
            let (rest, _) = store.read_log(id, offset)?;
            crate::commands::out!("{rest}");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
