//! `host --role ROLE`: run a worker for one role until Ctrl+C (or until drained).

use std::sync::Arc;

use anyhow::bail;
use queue::lifecycle::Policy;
use queue::{QueueStore, Store};

use crate::cli::{Settings, WorkerArgs};
use crate::commands::open_store;
use crate::config::Config;
use crate::loader::{PluginRegistry, PluginRole};
use crate::wakeup::Wakeup;
use crate::worker::{ClaimLoop, WorkerExit, WorkerOptions, hostname};

/// Finds the role (through `host.toml`, else by name on the plugin path) and runs its claim
/// loop.
pub fn run(settings: &Settings, role_name: &str, args: &WorkerArgs) -> anyhow::Result<()> {
    let store = open_store(settings)?;
    let config = Config::load(&store)?;
    let binding = config.roles.get(role_name);
    let mut policy = policy(&config, args.lease);
    policy.backoff = args.backoff;
    let store = store.with_policy(policy);
    let role = find_role(settings, &config, role_name)?;
    let mut role_settings = config.role_settings(role_name, &role)?;
    // A handler that makes worktrees is told where this queue's branches go.
    if role
        .settings()
        .iter()
        .any(|s| s.name == crate::branch_names::NAMESPACE_SETTING)
    {
        let namespace = crate::branch_names::namespace(&store, &config)?;
        if !role_settings.is_object() {
            role_settings = serde_json::json!({});
        }
        role_settings[crate::branch_names::NAMESPACE_SETTING] = namespace.into();
    }
    let options = WorkerOptions {
        name: args
            .name
            .clone()
            .unwrap_or_else(|| format!("{role_name}-{}-{}", hostname(), std::process::id())),
        concurrency: usize::from(args.concurrency),
        drain: args.drain,
        poll: args.poll,
        grace: args.grace,
        default_timeout: args.timeout.or(binding.and_then(|b| b.timeout)),
        role: role_name.to_string(),
        types: role_types(&config, role_name, &role),
        settings: role_settings,
        binding: binding.map(|_| format!("{} [roles.{role_name}]", config.source)),
        keep_finished: config.keep_finished,
        review: binding.is_some_and(|b| b.review),
        attention: crate::attention::Attention::new(&config),
        fallback: binding.map(|b| b.fallback.clone()).unwrap_or_default(),
        stands_in_for: config
            .roles
            .iter()
            .filter(|(_, b)| b.fallback.iter().any(|f| f == role_name))
            .map(|(name, _)| name.clone())
            .collect(),
    };
    let (wakeup, unavailable) = Wakeup::start(store.work_signal());
    let store: Arc<dyn QueueStore> = Arc::new(store);
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

/// The rules of `host.toml` (limits, aging) with leases of `lease`.
pub fn policy(config: &Config, lease: std::time::Duration) -> Policy {
    Policy {
        lease,
        limits: config.limits.clone(),
        aging: config.aging,
        ..Policy::default()
    }
}

/// The queue, set up to claim by the rules of its configuration with leases of `lease`.
pub fn claiming_store(store: Store, config: &Config, lease: std::time::Duration) -> Store {
    store.with_policy(policy(config, lease))
}

/// The plugin role that handles `role_name`: its `host.toml` binding's handler, else the role of
/// that name on the plugin path. The error names the role, the folders searched and the roles
/// available.
pub fn find_role(
    settings: &Settings,
    config: &Config,
    role_name: &str,
) -> anyhow::Result<PluginRole> {
    let binding = config.roles.get(role_name);
    let registry = PluginRegistry::discover(&settings.plugin_path);
    let handler = binding.map_or(role_name, |b| b.handler.as_str());
    if let Some(role) = registry.role(handler) {
        return Ok(role.clone());
    }
    let refused = registry.refused_note();
    if let Some(binding) = binding {
        bail!(
            "{}: role {role_name:?} is bound to handler {:?}, which no plugin provides (searched: {}{refused})",
            config.source,
            binding.handler,
            registry.searched()
        );
    }
    let mut available: Vec<&str> = registry.roles().iter().map(|r| r.name()).collect();
    available.extend(config.roles.keys().map(String::as_str));
    available.sort_unstable();
    available.dedup();
    bail!(
        "no plugin provides role {role_name:?} (searched: {}; available roles: {}{refused})",
        registry.searched(),
        if available.is_empty() {
            "none".to_string()
        } else {
            available.join(", ")
        }
    );
}

/// The task types `role_name` claims: its binding's `types`, else its handler's own.
pub fn role_types(config: &Config, role_name: &str, role: &PluginRole) -> Vec<String> {
    config
        .roles
        .get(role_name)
        .and_then(|b| b.types.clone())
        .unwrap_or_else(|| role.task_types().to_vec())
}
