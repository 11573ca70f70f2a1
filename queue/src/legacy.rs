//! Reading a queue folder written by the earlier folder-of-files store (`queue.json` format 2:
//! `tasks/<id>.json`, `next-id`, `paused/`, `intents/`, `logs/`), for `host import`. Nothing
//! in the old folder is changed.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::folder::io_err;
use crate::{PauseScope, StoreError, Task};

/// What an old queue folder holds.
#[derive(Debug, Default)]
pub struct OldQueue {
    /// Every task, by id, oldest first: those of `tasks/`, and those of adds that a killed
    /// process left half applied (in `intents/`), which the old store would have finished.
    pub tasks: Vec<Task>,
    /// What was paused.
    pub paused: Vec<PauseScope>,
    /// The id the next task would have got.
    pub next_id: u64,
    /// Each task's log file, by task id.
    pub logs: Vec<(String, PathBuf)>,
}

/// An add the old store had decided but maybe not fully applied.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AddIntent {
    tasks: Vec<Task>,
    next_id: u64,
}

/// Whether `root` looks like a queue of the earlier format.
pub fn is_old_queue(root: &Path) -> bool {
    root.join("queue.json").is_file() && root.join("tasks").is_dir()
}

/// Reads every task, pause and log of the old queue at `root`. Any file that does not parse is
/// an error naming it: an import is all or nothing.
pub fn read(root: &Path) -> Result<OldQueue, StoreError> {
    if !is_old_queue(root) {
        return Err(StoreError::InvalidTask(format!(
            "{} is not a queue folder of the earlier format (no queue.json and tasks/)",
            root.display()
        )));
    }
    let mut old = OldQueue::default();
    let mut by_id = std::collections::BTreeMap::new();
    for path in files(&root.join("tasks"))? {
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let task: Task = parse(&path)?;
        let id: u64 = task
            .id
            .parse()
            .map_err(|_| corrupt(&path, "its id is not a number"))?;
        by_id.insert(id, task);
    }
    for path in files(&root.join("intents"))? {
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let intent: AddIntent = parse(&path)?;
        old.next_id = old.next_id.max(intent.next_id);
        for task in intent.tasks {
            if let Ok(id) = task.id.parse::<u64>() {
                by_id.entry(id).or_insert(task);
            }
        }
    }
    let next_id_file = root.join("next-id");
    match fs::read_to_string(&next_id_file) {
        Ok(text) => {
            let next: u64 = text
                .trim()
                .parse()
                .map_err(|_| corrupt(&next_id_file, "expected a number"))?;
            old.next_id = old.next_id.max(next);
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(io_err(&next_id_file)(err)),
    }
    old.next_id = old
        .next_id
        .max(by_id.keys().next_back().map_or(1, |last| last + 1));
    let paused = root.join("paused");
    if paused.join("queue").exists() {
        old.paused.push(PauseScope::Queue);
    }
    for path in files(&paused.join("type"))? {
        old.paused.push(PauseScope::Type(file_name(&path)));
    }
    for path in files(&paused.join("task"))? {
        old.paused.push(PauseScope::Task(file_name(&path)));
    }
    for path in files(&root.join("logs"))? {
        if let Some(id) = file_name(&path).strip_suffix(".log")
            && by_id.contains_key(&id.parse().unwrap_or(0))
        {
            old.logs.push((id.to_string(), path.clone()));
        }
    }
    old.tasks = by_id.into_values().collect();
    Ok(old)
}

fn files(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(io_err(dir)(err)),
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    paths.sort();
    Ok(paths)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn parse<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, StoreError> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    serde_json::from_slice(&bytes).map_err(|err| corrupt(path, &err.to_string()))
}

fn corrupt(path: &Path, reason: &str) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}
