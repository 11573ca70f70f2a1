//! Moving tasks in and out: `host export` prints every task as JSON, `host import DIR` brings
//! in a queue folder written by an earlier version (a folder of JSON files), and `host purge`
//! removes finished tasks past an age.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use jiff::{SignedDuration, Timestamp};
use queue::{QueueStore, SqliteStore, TaskQuery, TaskStatus};

use crate::cli::Settings;
use crate::commands::{open_store, out, outln, unreadable_records};

/// How many tasks `export` reads at a time.
const PAGE: usize = 1000;

/// `host export`: every task, oldest first, as a JSON array or JSON Lines; read a page at a
/// time, so a long history is never held in memory at once.
pub fn export(settings: &Settings, jsonl: bool) -> anyhow::Result<()> {
    let store = open_store(settings)?;
    let mut after = None;
    let mut first = true;
    if !jsonl {
        out!("[");
    }
    loop {
        let page = store.list(&TaskQuery {
            after_id: after,
            limit: Some(PAGE),
            ..TaskQuery::default()
        })?;
        let Some(last) = page.last() else { break };
        after = last.id.parse().ok();
        for task in &page {
            let json = serde_json::to_string(task)?;
            if jsonl {
                outln!("{json}");
            } else {
                out!("{}\n  {json}", if first { "" } else { "," });
            }
            first = false;
        }
    }
    if !jsonl {
        outln!("{}]", if first { "" } else { "\n" });
    }
    unreadable_records(&store)
}

/// `host import DIR`: reads the old queue in DIR whole, then adds its tasks (ids, history and
/// state kept), pauses and logs to this queue in one transaction; refused, with nothing
/// changed, when an id is taken. DIR may be this queue's own folder.
pub fn import(settings: &Settings, dir: &Path) -> anyhow::Result<()> {
    let Some(folder) = settings.queue.folder() else {
        anyhow::bail!(
            "{}: import brings an old queue folder into a queue folder; import it into a new \
             folder, then `host export --jsonl` and add the tasks to this queue",
            settings.queue
        );
    };
    let old = queue::legacy::read(dir).context("nothing was imported")?;
    let store = SqliteStore::init_for_import(folder).context("cannot open the queue")?;
    let in_place = dir.canonicalize().ok() == folder.canonicalize().ok();
    let running = old
        .tasks
        .iter()
        .filter(|t| t.status == TaskStatus::Running)
        .count();
    let pauses = old.paused.len();
    let count = store
        .import(old.tasks, old.paused, old.next_id)
        .context("nothing was imported")?;
    let mut logs = 0;
    if !in_place {
        for (id, path) in &old.logs {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the log {}", path.display()))?;
            for line in text.lines() {
                store.append_log(id, line)?;
            }
            logs += 1;
        }
    }
    outln!(
        "imported {count} task(s), {pauses} pause(s) and {logs} log(s) from {}",
        dir.display()
    );
    if running > 0 {
        outln!(
            "{running} task(s) were running: they run again once their lease expires (their \
             old workers cannot finish them)"
        );
    }
    if in_place {
        outln!(
            "the old files (queue.json, tasks/, pending/, ...) are no longer read; remove them \
             when you are satisfied"
        );
    }
    Ok(())
}

/// `host purge`: removes finished tasks that finished longer ago than `age`, with their logs.
pub fn purge(settings: &Settings, age: Duration, statuses: &[String]) -> anyhow::Result<()> {
    let statuses: Vec<TaskStatus> = statuses
        .iter()
        .map(|s| s.parse().map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<_>>()?;
    let age = SignedDuration::try_from(age).unwrap_or(SignedDuration::MAX);
    let before = Timestamp::now()
        .saturating_sub(age)
        .unwrap_or(Timestamp::UNIX_EPOCH);
    let purged = open_store(settings)?.purge(before, &statuses)?;
    outln!("purged {purged} task(s) that finished before {before}");
    Ok(())
}

/// `host rm`: removes finished tasks, all the ids given or none, saying how many left a branch
/// behind (their branches outlive them; merged or discarded ones are gone already).
pub fn rm(settings: &Settings, ids: &[String]) -> anyhow::Result<()> {
    let store = open_store(settings)?;
    let unsettled = ids
        .iter()
        .filter_map(|id| store.get(id).ok())
        .filter(|task| super::branch::live_branch(&store, task, "").is_ok())
        .count();
    store.remove(ids)?;
    outln!("removed {} task(s)", ids.len());
    if unsettled > 0 {
        outln!(
            "{unsettled} of them left a branch neither merged nor discarded: `host branches` \
             lists it, `host branches --prune` deletes it"
        );
    }
    Ok(())
}
