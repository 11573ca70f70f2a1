//! The self-serve verbs, for an assistant that takes work itself instead of being driven by a
//! worker: `host claim`, `host heartbeat`, `host complete`, `host fail`. They use the same
//! store operations as workers, so leases, attempt fencing, retries and dependencies apply.
//!
//! A claim hands out the lease's secret token; every later call on the task must show it, so
//! that only the holder extends or finishes a task (another assistant, or a slip of the task
//! id, is refused, naming the holder).

use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use queue::{Claim, Lease, Outcome, QueueStore, Task};
use serde_json::Value;

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
) -> anyhow::Result<Option<Claim>> {
    let store = open_store(settings)?;
    let config = Config::load(&store)?;
    let role = find_role(settings, &config, role_name)?;
    let types = role_types(&config, role_name, &role);
    let store = claiming_store(store, &config, lease);
    let worker = name.map_or_else(
        || format!("{role_name}-{}", crate::worker::hostname()),
        String::from,
    );
    queue::validate_name("worker name", &worker)?;
    Ok(store.claim(&worker, &types)?)
}

/// The task's JSON with the lease's token added as `leaseToken`: what `host claim --json` and
/// the MCP `claim_task` tool answer.
pub fn claimed_json(claim: &Claim) -> Value {
    let mut json = serde_json::to_value(&claim.task).expect("task serializes");
    json["leaseToken"] = claim.lease.token.clone().into();
    json
}

/// `host claim`: claims the best pending task for a role and prints it with its lease token.
pub fn claim(
    settings: &Settings,
    role_name: &str,
    name: Option<&str>,
    lease: Duration,
    json: bool,
) -> anyhow::Result<()> {
    let Some(claim) = claim_task(settings, role_name, name, lease)? else {
        bail!("no task to claim for role {role_name}");
    };
    if json {
        return print_json(&claimed_json(&claim));
    }
    let task = &claim.task;
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
    outln!("lease token  {}", claim.lease.token);
    outln!(
        "claimed by {} (attempt {} of {}); keep it with `host heartbeat {id} --token TOKEN` at \
         least every {}, finish with `host complete {id} --token TOKEN` or `host fail {id} \
         --token TOKEN --error TEXT`",
        claim.lease.worker,
        task.attempts,
        task.max_attempts,
        humantime::format_duration(lease / 2),
        id = task.id
    );
    Ok(())
}

/// The lease that `token` claims on task `id`: checked by the store, which refuses anyone but
/// the holder.
fn lease_of(store: &dyn QueueStore, id: &str, token: &str) -> anyhow::Result<Lease> {
    let task: Task = store.get(id)?;
    Ok(Lease {
        task_id: task.id,
        attempt: task.attempts,
        worker: task.worker.unwrap_or_default(),
        token: token.to_string(),
    })
}

/// Extends the lease of a claimed task to `lease` from now, as the holder of `token`; says
/// whether a cancel was requested.
pub fn heartbeat_task(
    settings: &Settings,
    id: &str,
    token: &str,
    lease: Duration,
) -> anyhow::Result<bool> {
    let store = open_store(settings)?.with_lease(lease);
    let held = lease_of(&store, id, token)?;
    Ok(store.renew(&held)?.cancel_requested)
}

/// `host heartbeat`: extends the lease of a claimed task.
pub fn heartbeat(
    settings: &Settings,
    id: &str,
    token: &str,
    lease: Duration,
) -> anyhow::Result<()> {
    if heartbeat_task(settings, id, token, lease)? {
        outln!(
            "task {id}: cancel requested; stop and run `host fail {id} --token TOKEN --error cancelled`"
        );
    } else {
        outln!(
            "task {id}: lease extended by {}",
            humantime::format_duration(lease)
        );
    }
    Ok(())
}

/// Records how a claimed task ended, as the holder of `token`.
pub fn finish_task(
    settings: &Settings,
    id: &str,
    token: &str,
    outcome: Outcome,
) -> anyhow::Result<Task> {
    let store = open_store(settings)?;
    let held = lease_of(&store, id, token)?;
    store
        .finish(&held, outcome)
        .context("the outcome was not recorded")
}

/// `host complete`: records success, with an optional JSON result.
pub fn complete(
    settings: &Settings,
    id: &str,
    token: &str,
    result: Option<&str>,
) -> anyhow::Result<()> {
    let result = match result {
        Some(text) => serde_json::from_str(text)
            .map_err(|err| anyhow!("--result is not valid JSON: {err}"))?,
        None => Value::Null,
    };
    let task = finish_task(settings, id, token, Outcome::Success(result))?;
    outln!("task {id}: {}", task.status);
    Ok(())
}

/// `host fail`: records a failure; retried later when `retryable` and attempts are left.
pub fn fail(
    settings: &Settings,
    id: &str,
    token: &str,
    error: &str,
    retryable: bool,
) -> anyhow::Result<()> {
    let outcome = Outcome::Failure {
        error: error.to_string(),
        result: None,
        retryable,
    };
    let task = finish_task(settings, id, token, outcome)?;
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
