//! `host stats`: per role, per type and per worker, how many tasks ended how, how fast they are
//! finishing, and how long they ran and waited (p50 and p95).
//!
//! Counts per state come from the counts the store keeps (all time). Throughput and times are
//! over the tasks that finished in the last hour, at most the newest [`SAMPLE`] of them, so the
//! cost does not grow with the history; per worker, every figure is over that window.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use jiff::{SignedDuration, Timestamp};
use queue::{QueueStore, Store, Task, TaskQuery, TaskStatus};
use serde::Serialize;

use crate::cli::Settings;
use crate::commands::results::FINISHED;
use crate::commands::{human_ms, open_store, out, print_json};
use crate::config::Config;
use crate::loader::PluginRegistry;

/// The most finished tasks the windowed figures read.
pub const SAMPLE: usize = 10_000;

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
    /// What agents reported using, summed (over the last hour's finished tasks).
    pub usage: Usage,
}

/// Tokens and cost as agent CLIs report them in a task's `result.usage`.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// Tasks whose result reported usage.
    pub tasks: usize,
    /// Input tokens (cached ones included).
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cost in US dollars, summed over the tasks whose CLI reported one (Claude Code does);
    /// absent when none did: a cost not reported is not a cost of zero.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
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
    /// By the worker that last ran the task (over the last hour only).
    pub by_worker: BTreeMap<String, Figures>,
}

/// Reads the counts and the last hour's finished tasks and computes the figures.
pub fn collect(settings: &Settings) -> anyhow::Result<Stats> {
    collect_from(settings, &open_store(settings)?)
}

/// [`collect`] from a store already open (a server keeps one).
pub fn collect_from(settings: &Settings, store: &Store) -> anyhow::Result<Stats> {
    let summary = store.summary()?;
    let now = Timestamp::now();
    let hour_ago = now.saturating_sub(SignedDuration::from_hours(1))?;
    let recent = store.list(&TaskQuery {
        statuses: FINISHED.to_vec(),
        finished_since: Some(hour_ago),
        newest_first: true,
        limit: Some(SAMPLE),
        ..TaskQuery::default()
    })?;
    // With more than the sample in the hour, the rate is over the time the sample covers.
    let window_minutes = if recent.len() == SAMPLE {
        let oldest = recent
            .iter()
            .filter_map(|t| t.finished_at)
            .min()
            .unwrap_or(hour_ago);
        (now.duration_since(oldest).as_secs_f64() / 60.0).max(1.0 / 60.0)
    } else {
        60.0
    };
    let counts = |types: &[&String]| -> BTreeMap<&'static str, usize> {
        TaskStatus::ALL
            .iter()
            .map(|status| {
                let n = types
                    .iter()
                    .filter_map(|t| summary.by_type.get(*t))
                    .filter_map(|by_status| by_status.get(status))
                    .sum();
                (status.as_str(), n)
            })
            .collect()
    };
    let timed = |group: &[&Task]| figures(group, window_minutes);
    let with_counts = |mut figures: Figures, types: &[&String]| {
        figures.counts = counts(types);
        figures
    };
    let mut role_types: BTreeMap<String, Vec<String>> =
        PluginRegistry::discover(&settings.plugin_path)
            .roles()
            .iter()
            .map(|role| (role.name().to_string(), role.task_types().to_vec()))
            .collect();
    for (name, binding) in Config::load(store)?.roles {
        if let Some(types) = binding.types {
            role_types.insert(name, types);
        }
    }
    let in_types = |types: &[&String]| -> Vec<&Task> {
        recent
            .iter()
            .filter(|t| types.contains(&&t.task_type))
            .collect()
    };
    let all_types: Vec<&String> = summary.by_type.keys().collect();
    let by_type = summary
        .by_type
        .keys()
        .map(|t| (t.clone(), with_counts(timed(&in_types(&[t])), &[t])))
        .collect();
    let by_role = role_types
        .iter()
        .filter_map(|(role, types)| {
            let types: Vec<&String> = types
                .iter()
                .filter(|t| summary.by_type.contains_key(*t))
                .collect();
            (!types.is_empty())
                .then(|| (role.clone(), with_counts(timed(&in_types(&types)), &types)))
        })
        .collect();
    let mut by_worker: BTreeMap<String, Vec<&Task>> = BTreeMap::new();
    for task in &recent {
        if let Some(worker) = &task.worker {
            by_worker.entry(worker.clone()).or_default().push(task);
        }
    }
    let by_worker = by_worker
        .into_iter()
        .map(|(worker, tasks)| {
            let mut f = timed(&tasks);
            for task in &tasks {
                *f.counts.entry(task.status.as_str()).or_default() += 1;
            }
            (worker, f)
        })
        .collect();
    let everything: Vec<&Task> = recent.iter().collect();
    Ok(Stats {
        all: with_counts(timed(&everything), &all_types),
        by_role,
        by_type,
        by_worker,
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
            "{title:<28} {:>6} {:>6} {:>6} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8}",
            "done",
            "failed",
            "open",
            "all",
            "/min 1h",
            "run p50",
            "run p95",
            "wait p50",
            "wait p95",
            "tokens",
            "cost"
        );
    };
    let row = |text: &mut String, name: &str, f: &Figures| {
        let ms = |v: Option<u64>| v.map(human_ms).unwrap_or_else(|| "-".into());
        let open = f.counts["pending"] + f.counts["blocked"] + f.counts["running"];
        let _ = writeln!(
            text,
            "{name:<28} {:>6} {:>6} {open:>6} {:>6} {:>8.1} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8}",
            f.counts["completed"],
            f.counts["failed"],
            f.counts.values().sum::<usize>(),
            f.per_minute_last_hour,
            ms(f.run_ms_p50),
            ms(f.run_ms_p95),
            ms(f.wait_ms_p50),
            ms(f.wait_ms_p95),
            match f.usage.tasks {
                0 => "-".to_string(),
                _ => (f.usage.input_tokens + f.usage.output_tokens).to_string(),
            },
            match f.usage.cost_usd {
                None => "-".to_string(),
                Some(cost) => format!("${cost:.2}"),
            },
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
    let _ = writeln!(
        text,
        "\nCounts are of all time (per worker: the last hour). /min 1h is tasks finished \
         (completed or failed) per minute over the last hour; run and wait times, and the \
         tokens and cost agents reported, are over the tasks that finished in the last hour (at \
         most the newest {SAMPLE})."
    );
    out!("{text}");
    Ok(())
}

/// The figures over finished `tasks` that span `window_minutes`; counts all zero (the caller
/// fills them in).
fn figures(tasks: &[&Task], window_minutes: f64) -> Figures {
    let counts: BTreeMap<&'static str, usize> =
        TaskStatus::ALL.iter().map(|s| (s.as_str(), 0)).collect();
    let mut run = Vec::new();
    let mut wait = Vec::new();
    let mut done = 0;
    let mut usage = Usage::default();
    for task in tasks {
        if let Some(used) = task
            .result
            .as_ref()
            .map(|r| &r["usage"])
            .filter(|u| u.is_object())
        {
            usage.tasks += 1;
            usage.input_tokens += used["inputTokens"].as_u64().unwrap_or(0);
            usage.output_tokens += used["outputTokens"].as_u64().unwrap_or(0);
            if let Some(cost) = used["costUsd"].as_f64() {
                usage.cost_usd = Some(usage.cost_usd.unwrap_or(0.0) + cost);
            }
        }
        if task.status == TaskStatus::Completed {
            run.extend(task.duration_ms);
        }
        wait.extend(task.wait_ms);
        if matches!(task.status, TaskStatus::Completed | TaskStatus::Failed) {
            done += 1;
        }
    }
    run.sort_unstable();
    wait.sort_unstable();
    Figures {
        counts,
        per_minute_last_hour: f64::from(done) / window_minutes,
        run_ms_p50: percentile(&run, 0.5),
        run_ms_p95: percentile(&run, 0.95),
        wait_ms_p50: percentile(&wait, 0.5),
        wait_ms_p95: percentile(&wait, 0.95),
        usage,
    }
}

/// The `q` quantile of sorted values (nearest rank).
fn percentile(sorted: &[u64], q: f64) -> Option<u64> {
    let last = sorted.len().checked_sub(1)?;
    sorted.get((last as f64 * q).round() as usize).copied()
}
