//! `host workers`: every worker record, alive or dead, and `--prune` to drop the dead.

use std::time::Duration;

use jiff::Timestamp;
use queue::{QueueStore, WorkerRecord};
use serde_json::json;

use crate::cli::Settings;
use crate::commands::status::WORKER_STALE_AFTER;
use crate::commands::{ago, open_store, outln, paint, print_json};

/// A dead worker's record is dropped by the next worker that starts once it is this old.
pub const DEAD_WORKER_KEPT: Duration = Duration::from_secs(24 * 3600);

/// Removes the records of workers dead for longer than `kept` (zero: every dead one); returns
/// their names.
pub fn prune(store: &dyn QueueStore, kept: Duration) -> Result<Vec<String>, queue::StoreError> {
    let now = Timestamp::now();
    let mut pruned = Vec::new();
    for record in store.workers()? {
        let since = record.alive_until.unwrap_or(record.heartbeat_at);
        let dead_for = now.duration_since(since).as_secs_f64();
        if record.is_dead(now, WORKER_STALE_AFTER) && dead_for >= kept.as_secs_f64() {
            store.remove_worker(&record.name)?;
            pruned.push(record.name);
        }
    }
    Ok(pruned)
}

/// Lists the worker records; with `prune`, first removes those of dead workers.
pub fn run(settings: &Settings, prune_dead: bool, json_out: bool) -> anyhow::Result<()> {
    let store = open_store(settings)?;
    if prune_dead {
        let pruned = prune(&store, Duration::ZERO)?;
        if !json_out {
            outln!("removed {} dead worker record(s)", pruned.len());
        }
    }
    let now = Timestamp::now();
    let workers: Vec<(WorkerRecord, bool)> = store
        .workers()?
        .into_iter()
        .map(|w| {
            let alive = !w.is_dead(now, WORKER_STALE_AFTER);
            (w, alive)
        })
        .collect();
    if json_out {
        let listed: Vec<_> = workers
            .iter()
            .map(|(w, alive)| {
                let mut value = serde_json::to_value(w).expect("worker record serializes");
                value["alive"] = json!(alive);
                value
            })
            .collect();
        return print_json(&listed);
    }
    if workers.is_empty() {
        outln!("No workers. Start one with `host --role ROLE`.");
        return Ok(());
    }
    let header = format!(
        "{:<28} {:<16} {:<12} {:<6} {:>8}  LAST SEEN",
        "WORKER", "HOST", "ROLE", "STATE", "PID"
    );
    outln!("{}", paint::heading(&header));
    for (w, alive) in &workers {
        let state = if *alive {
            format!("{:<6}", "alive")
        } else {
            paint::bad(&format!("{:<6}", "dead"))
        };
        outln!(
            "{:<28} {:<16} {:<12} {state} {:>8}  {}",
            w.name,
            w.hostname,
            w.role,
            w.pid,
            ago(w.heartbeat_at, now)
        );
    }
    Ok(())
}
