//! `host --role ROLE`: run a worker for one role until Ctrl+C (or until drained).

use std::sync::Arc;

use anyhow::{Context as _, bail};
use queue::QueueStore;

use crate::cli::{Settings, WorkerArgs};
use crate::commands::open_store;
use crate::loader::PluginRegistry;
use crate::wakeup::Wakeup;
use crate::worker::{ClaimLoop, WorkerExit, WorkerOptions, hostname};

/// Finds the role on the plugin path and runs its claim loop.
pub fn run(settings: &Settings, role_name: &str, args: &WorkerArgs) -> anyhow::Result<()> {
    let store = Arc::into_inner(open_store(settings)?)
        .expect("a fresh store is not shared")
        .with_lease(args.lease)
        .with_backoff(args.backoff);
    // Checks the claim index against the task count, and rebuilds it if a crash or power loss
    // left it behind, before anything is claimed from it.
    store.summary().context("cannot check the queue")?;
    let registry = PluginRegistry::discover(&settings.plugin_path);
    let Some(role) = registry.role(role_name) else {
        let searched: Vec<String> = registry
            .search_path()
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        let mut available: Vec<&str> = registry.roles().iter().map(|r| r.name()).collect();
        available.sort_unstable();
        bail!(
            "no plugin provides role {role_name:?} (searched: {}; available roles: {})",
            searched.join(", "),
            if available.is_empty() {
                "none".to_string()
            } else {
                available.join(", ")
            }
        );
    };
    let options = WorkerOptions {
        name: args
            .name
            .clone()
            .unwrap_or_else(|| format!("{role_name}-{}-{}", hostname(), std::process::id())),
        concurrency: usize::from(args.concurrency),
        drain: args.drain,
        poll: args.poll,
        grace: args.grace,
        default_timeout: args.timeout,
    };
    let store: Arc<dyn QueueStore> = Arc::new(store);
    let (wakeup, unavailable) = Wakeup::watch(&settings.queue);
    if let Some(why) = unavailable {
        eprintln!(
            "warning: {why}; polling every {}",
            humantime::format_duration(args.poll)
        );
    }
    match ClaimLoop::new(store, role, options, wakeup)?.run()? {
        WorkerExit::Drained | WorkerExit::Stopped => Ok(()),
    }
}
