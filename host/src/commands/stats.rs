//! `host stats`: per role, per type and per worker, how many tasks ended how, how fast they are finishing,
//! and how long they ran and waited (p50 and p95).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use jiff::{SignedDuration, Timestamp};
use queue::{QueueStore, Task, TaskStatus};
use serde::Serialize;

use crate::cli::Settings;
use crate::commands::{human_ms, open_store, out, print_json};
use crate::config::Config;
use crate::loader::PluginRegistry;

/// The figures of one group of tasks.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Figures {
    /// Tasks per state.
    pub counts: BTreeMap<&'static str, usize>,
    /// Tasks finished (completed or failed) per minute over the last hour.
    pub per_minute_last_hour: f64,
    /// Run time of completed tasks, median and 95th percentile, in milliseconds.
    pub run_ms_p50: Option<u64>,
    /// See `run_ms_p50`.
    pub run_ms_p95: Option<u64>,
    /// Time from being added to being claimed, median and 95th percentile, in milliseconds.
    pub wait_ms_p50: Option<u64>,
    /// See `wait_ms_p50`.
    pub wait_ms_p95: Option<u64>,
}

/// `host stats --json`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// Every task.
    pub all: Figures,
    /// By role: the tasks of the types each role on the plugin path (or in `host.toml`) claims.
    pub by_role: BTreeMap<String, Figures>,
    /// By task type.
    pub by_type: BTreeMap<String, Figures>,
    /// By the worker that last ran the task.
    pub by_worker: BTreeMap<String, Figures>,
}

/// Reads every task and computes the figures.
pub fn collect(settings: &Settings) -> anyhow::Result<Stats> {
    let tasks = open_store(settings)?.tasks()?;
    let hour_ago = Timestamp::now().saturating_sub(SignedDuration::from_hours(1))?;
    let figures = |group: &[&Task]| figures(group, hour_ago);
    let all: Vec<&Task> = tasks.iter().collect();
    let mut by_type: BTreeMap<String, Vec<&Task>> = BTreeMap::new();
    let mut by_worker: BTreeMap<String, Vec<&Task>> = BTreeMap::new();
    for task in &tasks {
        by_type
            .entry(task.task_type.clone())
            .or_default()
            .push(task);
        if let Some(worker) = &task.worker {
            by_worker.entry(worker.clone()).or_default().push(task);
        }
    }
    let mut role_types: BTreeMap<String, Vec<String>> =
        PluginRegistry::discover(&settings.plugin_path)
            .roles()
            .iter()
            .map(|role| (role.name().to_string(), role.task_types().to_vec()))
            .collect();
    for (name, binding) in Config::load(&settings.queue)?.roles {
        if let Some(types) = binding.types {
            role_types.insert(name, types);
        }
    }
    let by_role = role_types
        .into_iter()
        .filter_map(|(role, types)| {
            let group: Vec<&Task> = tasks
                .iter()
                .filter(|t| types.contains(&t.task_type))
                .collect();
            (!group.is_empty()).then(|| (role, figures(&group)))
        })
        .collect();
    Ok(Stats {
        all: figures(&all),
        by_role,
        by_type: by_type
            .iter()
            .map(|(k, v)| (k.clone(), figures(v)))
            .collect(),
        by_worker: by_worker
            .iter()
            .map(|(k, v)| (k.clone(), figures(v)))
            .collect(),
    })
}

/// Prints the figures.
pub fn run(settings: &Settings, json: bool) -> anyhow::Result<()> {
    let stats = collect(settings)?;
    if json {
        return print_json(&stats);
    }
    let mut text = String::new();
    let header = |text: &mut String, title: &str| {
        let _ = writeln!(
            text,
            "{title:<28} {:>6} {:>6} {:>6} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "done", "failed", "open", "all", "/min", "run p50", "run p95", "wait p50", "wait p95"
        );
    };
    let row = |text: &mut String, name: &str, f: &Figures| {
        let ms = |v: Option<u64>| v.map(human_ms).unwrap_or_else(|| "-".into());
        let open = f.counts["pending"] + f.counts["blocked"] + f.counts["running"];
        let _ = writeln!(
            text,
            "{name:<28} {:>6} {:>6} {open:>6} {:>6} {:>8.1} {:>8} {:>8} {:>8} {:>8}",
            f.counts["completed"],
            f.counts["failed"],
            f.counts.values().sum::<usize>(),
            f.per_minute_last_hour,
            ms(f.run_ms_p50),
            ms(f.run_ms_p95),
            ms(f.wait_ms_p50),
            ms(f.wait_ms_p95),
        );
    };
    header(&mut text, "ROLE");
    for (name, f) in &stats.by_role {
        row(&mut text, name, f);
    }
    text.push('\n');
    header(&mut text, "TYPE");
    for (name, f) in &stats.by_type {
        row(&mut text, name, f);
    }
    row(&mut text, "(all)", &stats.all);
    text.push('\n');
    header(&mut text, "WORKER");
    for (name, f) in &stats.by_worker {
        row(&mut text, name, f);
    }
    out!("{text}");
    Ok(())
}

fn figures(tasks: &[&Task], hour_ago: Timestamp) -> Figures {
    let mut counts: BTreeMap<&'static str, usize> =
        TaskStatus::ALL.iter().map(|s| (s.as_str(), 0)).collect();
    let mut run = Vec::new();
    let mut wait = Vec::new();
    let mut recent = 0;
    for task in tasks {
        *counts.entry(task.status.as_str()).or_default() += 1;
        if task.status == TaskStatus::Completed {
            run.extend(task.duration_ms);
        }
        wait.extend(task.wait_ms);
        if matches!(task.status, TaskStatus::Completed | TaskStatus::Failed)
            && task.finished_at.is_some_and(|f| f >= hour_ago)
        {
            recent += 1;
        }
    }
    run.sort_unstable();
    wait.sort_unstable();
    Figures {
        counts,
        per_minute_last_hour: f64::from(recent) / 60.0,
        run_ms_p50: percentile(&run, 0.5),
        run_ms_p95: percentile(&run, 0.95),
        wait_ms_p50: percentile(&wait, 0.5),
        wait_ms_p95: percentile(&wait, 0.95),
    }
}

/// The `q` quantile of sorted values (nearest rank).
fn percentile(sorted: &[u64], q: f64) -> Option<u64> {
    let last = sorted.len().checked_sub(1)?;
    sorted.get((last as f64 * q).round() as usize).copied()
}
