//! `host plugins`: every library on the plugin path, its roles, or why it was refused.

use queue::QueueStore as _;
use serde_json::{Value, json};

use crate::cli::Settings;
use crate::commands::outln;
use crate::commands::print_json;
use crate::library::host_api_version;
use crate::loader::{LibraryStatus, PluginRegistry};

/// The workers of the queue that are alive now; none when the queue cannot be read (the
/// plugin path is listed without one).
fn live_workers(settings: &Settings) -> Vec<queue::WorkerRecord> {
    let now = jiff::Timestamp::now();
    crate::commands::open_store(settings)
        .and_then(|store| Ok(store.workers()?))
        .unwrap_or_default()
        .into_iter()
        .filter(|w| !w.is_dead(now, crate::commands::status::WORKER_STALE_AFTER))
        // Plugins are local files: only this machine's workers loaded these.
        .filter(|w| w.hostname == crate::worker::hostname())
        .collect()
}

/// The live workers whose library at `path` was replaced or changed since they loaded it, and
/// how. A library changed in place (same file, other bytes) can crash the worker that has it
/// mapped; one renamed over the old is safe until the worker restarts.
fn changed_under(workers: &[queue::WorkerRecord], path: &std::path::Path) -> Vec<Value> {
    let Ok(resolved) = dunce::canonicalize(path) else {
        return Vec::new();
    };
    let now = queue::LibraryFile::of(&resolved);
    workers
        .iter()
        .filter_map(|w| {
            let loaded = w.library.as_ref().filter(|l| l.path == resolved)?;
            let how = match &now {
                Some(now) if now == loaded => return None,
                Some(now) if now.inode == loaded.inode => {
                    "had this file loaded when it was changed in place, which can crash it"
                }
                _ => "loaded an earlier file of this name",
            };
            Some(json!({
                "worker": w.name,
                "pid": w.pid,
                "hostname": w.hostname,
                "how": how,
            }))
        })
        .collect()
}

/// Lists the plugin path, loading every library on it (whatever was remembered of it: this
/// listing shows what the libraries say now).
pub fn run(settings: &Settings, json: bool) -> anyhow::Result<()> {
    let registry = PluginRegistry::discover_afresh(&settings.plugin_path);
    let workers = live_workers(settings);
    let libraries: Vec<Value> = registry
        .reports()
        .iter()
        .map(|report| match &report.status {
            LibraryStatus::Loaded { api_version, roles } => {
                let roles: Vec<Value> = roles
                    .iter()
                    .map(|role| {
                        json!({
                            "name": role.name(),
                            "taskTypes": role.task_types(),
                            "shadowedBy": registry.shadowed_by(role),
                        })
                    })
                    .collect();
                json!({
                    "file": report.path,
                    "status": "loaded",
                    "apiVersion": api_version,
                    "roles": roles,
                    "changedUnder": changed_under(&workers, &report.path),
                })
            }
            LibraryStatus::Refused { reason, detail } => json!({
                "file": report.path,
                "status": "refused",
                "reason": reason,
                "detail": if settings.verbose { detail.clone() } else { None },
            }),
        })
        .collect();
    if json {
        return print_json(&json!({
            "hostApiVersion": host_api_version(),
            "searchPath": registry.search_path(),
            "libraries": libraries,
        }));
    }
    outln!("plugin-api {} (this host)", host_api_version());
    outln!("Plugin path:");
    for dir in registry.search_path() {
        let note = if dir.is_dir() {
            ""
        } else if dir.exists() {
            "  (not a folder)"
        } else {
            // Not an error: the queue's plugin folder is optional, the host's own folder is
            // searched too.
            "  (no such folder)"
        };
        outln!("  {}{note}", dir.display());
    }
    if libraries.is_empty() {
        outln!("\nNo libraries found.");
    }
    for lib in &libraries {
        outln!();
        match lib["status"].as_str() {
            Some("loaded") => {
                outln!(
                    "{}  (plugin-api {})",
                    lib["file"].as_str().unwrap_or_default(),
                    lib["apiVersion"].as_str().unwrap_or("?")
                );
                for changed in lib["changedUnder"].as_array().into_iter().flatten() {
                    outln!(
                        "  warning: worker {} (pid {} on {}) {}; restart it to run the new file",
                        changed["worker"].as_str().unwrap_or_default(),
                        changed["pid"],
                        changed["hostname"].as_str().unwrap_or_default(),
                        changed["how"].as_str().unwrap_or_default()
                    );
                }
                for role in lib["roles"].as_array().into_iter().flatten() {
                    let types: Vec<&str> = role["taskTypes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    let shadow = role["shadowedBy"]
                        .as_str()
                        .map(|by| format!("  (shadowed by {by})"))
                        .unwrap_or_default();
                    outln!(
                        "  role {:<14} claims {}{shadow}",
                        role["name"].as_str().unwrap_or_default(),
                        types.join(", ")
                    );
                }
            }
            _ => {
                outln!(
                    "{}  REFUSED: {}",
                    lib["file"].as_str().unwrap_or_default(),
                    lib["reason"].as_str().unwrap_or_default()
                );
                if let Some(detail) = lib["detail"].as_str() {
                    outln!("{detail}");
                }
            }
        }
    }
    Ok(())
}
