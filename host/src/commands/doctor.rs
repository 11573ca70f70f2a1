//! `host doctor`: checks the queue and says what it found: the folder (private, local file
//! system, nothing linked away), the database (SQLite's integrity check and the counts the store
//! keeps, or PostgreSQL's schema; every task record), the workers and leases, and this
//! machine's plugin path (every library loads, and some role is there to run tasks).

use jiff::Timestamp;
use queue::{QueueStore, Store, TaskQuery, TaskStatus};

use crate::cli::Settings;
use crate::commands::status::WORKER_STALE_AFTER;
use crate::commands::{open_store, outln};
use crate::loader::PluginRegistry;

/// Runs every check; exits 1 when one found a problem.
pub fn run(settings: &Settings) -> anyhow::Result<()> {
    // Opening checks the folder (owner-only, local file system) and the schema version.
    let store = open_store(settings)?;
    let mut problems = 0;
    let mut report = |ok: bool, line: String| -> std::io::Result<()> {
        if !ok {
            problems += 1;
        }
        outln!("{}  {line}", if ok { "ok     " } else { "PROBLEM" });
        Ok(())
    };
    if let Some(folder) = store.folder() {
        report(
            true,
            format!(
                "folder {}: owner-only (0700), on a local file system",
                folder.root().display()
            ),
        )?;
        if let Some(damage) = folder.damage() {
            report(false, damage.to_string())?;
        }
        for holder in folder.holders_of_removed_files() {
            report(false, holder)?;
        }
        let loose = folder.loose_files()?;
        report(
            loose.is_empty(),
            if loose.is_empty() {
                "files: owner-only, no symlinks".into()
            } else {
                format!("files: {}", loose.join("; "))
            },
        )?;
    } else {
        report(
            true,
            format!("database {}: reachable, schema current", settings.queue),
        )?;
    }
    let found = store.check()?;
    report(
        found.is_empty(),
        if found.is_empty() {
            match store {
                Store::Sqlite(_) => {
                    "database: integrity check passed, counts agree with the tasks, every task reads"
                }
                Store::Postgres(_) => "database: every task reads",
            }
            .into()
        } else {
            format!("database: {}", found.join("; "))
        },
    )?;
    let now = Timestamp::now();
    let workers = store.workers()?;
    let dead = workers
        .iter()
        .filter(|w| w.is_dead(now, WORKER_STALE_AFTER))
        .count();
    report(
        true,
        format!("workers: {} alive, {dead} dead", workers.len() - dead),
    )?;
    let running = store.list(&TaskQuery {
        statuses: vec![TaskStatus::Running],
        ..TaskQuery::default()
    })?;
    let expired = running
        .iter()
        .filter(|t| t.lease_expires_at.is_some_and(|at| at < now))
        .count();
    report(
        true,
        format!(
            "leases: {} running, {expired} expired (the next claim returns them to the queue)",
            running.len()
        ),
    )?;
    // This machine's, not the queue's: a library refused here is a problem to mend here; no
    // plugin at all is only said, as a machine that watches a shared queue needs none.
    let registry = PluginRegistry::discover(&settings.plugin_path);
    for (file, reason) in registry.refusals() {
        report(
            false,
            format!(
                "this machine's plugin {}: refused: {reason}",
                file.display()
            ),
        )?;
    }
    let mut roles: Vec<&str> = registry.roles().iter().map(|r| r.name()).collect();
    roles.sort_unstable();
    if roles.is_empty() {
        outln!(
            "note     this machine's plugin path has no role, so no task can be added or run \
             here (searched: {})",
            registry.searched()
        );
    } else {
        report(
            true,
            format!(
                "this machine's plugins: roles {} (searched: {})",
                roles.join(", "),
                registry.searched()
            ),
        )?;
    }
    if problems > 0 {
        anyhow::bail!("{problems} problem(s) found (the lines marked PROBLEM)");
    }
    Ok(())
}
