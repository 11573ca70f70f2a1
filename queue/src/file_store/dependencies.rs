//! `after`: a task stays blocked until every task it comes after has completed; when one of
//! those fails or is cancelled, it is cancelled too, and retrying that task brings it back.
//!
//! Each edge is kept twice: in the dependent's `after` (the truth) and as an empty marker
//! `dependents/<prerequisite>/<dependent>`, so that finishing a task finds the tasks waiting on
//! it without reading any other.

use std::collections::HashMap;
use std::path::PathBuf;

use jiff::Timestamp;

use super::FileStore;
use crate::atomic::{create_marker, list_names, remove_file};
use crate::{Dependency, NewTask, StoreError, Task, TaskStatus};

/// How the notes of [`FileStore::begin_settling`] in `intents/` start; the rest is the task id.
const SETTLE_PREFIX: &str = "settle-";

/// Where the tasks a task comes after stand.
pub(super) enum Prerequisites {
    /// All completed: the task may run.
    Done,
    /// Some still to finish.
    Waiting,
    /// This one failed or was cancelled: the task cannot run until it is retried.
    Broken(String, TaskStatus),
}

impl FileStore {
    /// Where the tasks `task` comes after stand.
    pub(super) fn prerequisites(&self, task: &Task) -> Result<Prerequisites, StoreError> {
        let mut waiting = false;
        for dep in &task.after {
            match self.read_task(dep)?.map(|t| t.status) {
                Some(status @ (TaskStatus::Failed | TaskStatus::Cancelled)) => {
                    return Ok(Prerequisites::Broken(dep.clone(), status));
                }
                Some(TaskStatus::Completed) | None => {}
                Some(_) => waiting = true,
            }
        }
        Ok(if waiting {
            Prerequisites::Waiting
        } else {
            Prerequisites::Done
        })
    }

    fn dependents_dir(&self, id: &str) -> std::path::PathBuf {
        self.root.join("dependents").join(id)
    }

    /// Resolves the `after` of tasks about to get ids from `first` on, refusing unknown ids and
    /// cycles. The caller holds the lock.
    pub(super) fn resolve_after(
        &self,
        tasks: &[NewTask],
        first: u64,
    ) -> Result<Vec<Vec<String>>, StoreError> {
        let mut resolved = Vec::with_capacity(tasks.len());
        for (index, task) in tasks.iter().enumerate() {
            let mut ids = Vec::new();
            for dep in &task.after {
                let id = match dep {
                    Dependency::Batch(other) if *other < tasks.len() => {
                        (first + *other as u64).to_string()
                    }
                    Dependency::Batch(other) => {
                        return Err(invalid(index, format!("after: no entry {}", other + 1)));
                    }
                    Dependency::Task(id) => {
                        if self.read_task(id)?.is_none() {
                            return Err(invalid(index, format!("after: no task with id {id}")));
                        }
                        id.clone()
                    }
                };
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
            resolved.push(ids);
        }
        if let Some(cycle) = batch_cycle(tasks) {
            let entries: Vec<String> = cycle.iter().map(|i| (i + 1).to_string()).collect();
            return Err(StoreError::InvalidTask(format!(
                "tasks {} come after each other in a cycle; nothing was added",
                entries.join(" -> ")
            )));
        }
        Ok(resolved)
    }

    /// Sets the status each new task starts in: cancelled if a task it comes after already
    /// failed or was cancelled, blocked while any is unfinished, else pending. `tasks` are in
    /// id order, and a task only comes after earlier ids or tasks already stored.
    pub(super) fn settle_new_tasks(
        &self,
        tasks: &mut [Task],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        // Tasks of the batch may come after later entries of it, so settle in dependency order.
        let mut settled: HashMap<String, TaskStatus> = HashMap::new();
        let mut remaining: Vec<usize> = (0..tasks.len()).collect();
        while !remaining.is_empty() {
            let before = remaining.len();
            let mut index = 0;
            while index < remaining.len() {
                let i = remaining[index];
                let batch_ids: Vec<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
                let waits_on_batch = tasks[i].after.iter().any(|dep| {
                    batch_ids.contains(&dep.as_str()) && !settled.contains_key(dep.as_str())
                });
                if waits_on_batch {
                    index += 1;
                    continue;
                }
                let mut statuses = Vec::new();
                for dep in &tasks[i].after {
                    let status = match settled.get(dep) {
                        Some(status) => *status,
                        None => self
                            .read_task(dep)?
                            .map_or(TaskStatus::Completed, |t| t.status),
                    };
                    statuses.push((dep.clone(), status));
                }
                let task = &mut tasks[i];
                if let Some((dep, status)) = statuses
                    .iter()
                    .find(|(_, s)| matches!(s, TaskStatus::Failed | TaskStatus::Cancelled))
                {
                    cancel_for(task, dep, *status, now);
                } else if statuses.iter().any(|(_, s)| *s != TaskStatus::Completed) {
                    task.status = TaskStatus::Blocked;
                }
                settled.insert(task.id.clone(), task.status);
                remaining.remove(index);
            }
            // `resolve_after` refused cycles, so every round settles at least one task.
            assert!(
                remaining.len() < before,
                "dependency cycle after validation"
            );
        }
        Ok(())
    }

    /// Records the edges of a new task in the dependents index.
    pub(super) fn index_dependencies(&self, task: &Task) -> Result<(), StoreError> {
        for dep in &task.after {
            create_marker(&self.dependents_dir(dep).join(&task.id))?;
        }
        Ok(())
    }

    fn dependents(&self, id: &str) -> Result<Vec<Task>, StoreError> {
        let mut tasks = Vec::new();
        for dependent in list_names(&self.dependents_dir(id))? {
            if let Some(task) = self.read_task(&dependent)? {
                tasks.push(task);
            }
        }
        Ok(tasks)
    }

    /// `id` completed: its blocked dependents whose other prerequisites are complete too
    /// become pending. The caller holds the lock.
    pub(super) fn unblock_dependents(&self, id: &str) -> Result<(), StoreError> {
        for mut task in self.dependents(id)? {
            if task.status != TaskStatus::Blocked {
                continue;
            }
            // `id` itself is written as completed before this runs.
            if matches!(self.prerequisites(&task)?, Prerequisites::Done) {
                let markers = self.markers(&task);
                task.status = TaskStatus::Pending;
                self.index_task(&task)?;
                self.write_task(&task)?;
                self.drop_other_markers(markers, &task)?;
            }
        }
        Ok(())
    }

    /// `prerequisite` failed or was cancelled for good: every task that comes after it,
    /// directly or not, and has not run is cancelled, naming it. The caller holds the lock.
    pub(super) fn cancel_dependents(&self, prerequisite: &Task) -> Result<(), StoreError> {
        let now = Timestamp::now();
        for mut task in self.dependents(&prerequisite.id)? {
            if task.status == TaskStatus::Pending {
                // It may be being claimed right now: let that claim end first.
                self.await_claim(&task.id)?;
                task = self.read_task(&task.id)?.unwrap_or(task);
            }
            // Cancelled for this prerequisite already (a replay after a crash halfway down the
            // chain): its own dependents may still need it.
            let done = task.status == TaskStatus::Cancelled
                && task.cancelled_by.as_deref() == Some(prerequisite.id.as_str());
            if !done {
                if !matches!(task.status, TaskStatus::Blocked | TaskStatus::Pending) {
                    continue;
                }
                let markers = self.markers(&task);
                cancel_for(&mut task, &prerequisite.id, prerequisite.status, now);
                self.index_task(&task)?;
                self.write_task(&task)?;
                self.drop_other_markers(markers, &task)?;
            }
            self.cancel_dependents(&task)?;
        }
        Ok(())
    }

    fn settle_note(&self, id: &str) -> PathBuf {
        self.root
            .join("intents")
            .join(format!("{SETTLE_PREFIX}{id}"))
    }

    /// Called before task `id`'s new state is written: notes that the tasks after it must
    /// follow that state, so that if this process dies before [`Self::settle_dependents`]
    /// has run, the next process to take the lock does it. Returns whether the task has
    /// dependents at all (most have none, and then nothing is written). The caller holds the
    /// lock.
    pub(super) fn begin_settling(&self, id: &str) -> Result<bool, StoreError> {
        if !self.dependents_dir(id).exists() {
            return Ok(false);
        }
        create_marker(&self.settle_note(id))?;
        Ok(true)
    }

    /// Brings the tasks after `task` in line with its state, then drops the note of
    /// [`Self::begin_settling`]: unblocked when it completed, cancelled when it failed or was
    /// cancelled, revived when it is waiting to run again. Safe to repeat. The caller holds the
    /// lock.
    pub(super) fn settle_dependents(&self, task: &Task) -> Result<(), StoreError> {
        match task.status {
            TaskStatus::Completed => self.unblock_dependents(&task.id)?,
            TaskStatus::Failed | TaskStatus::Cancelled => self.cancel_dependents(task)?,
            TaskStatus::Pending | TaskStatus::Blocked => self.revive_dependents(&task.id)?,
            TaskStatus::Running => {}
        }
        remove_file(&self.settle_note(&task.id))
    }

    /// Settles the dependents that notes in `intents/` (listed as `names`) name: left by
    /// processes that died halfway through an operation. The caller holds the lock.
    pub(super) fn replay_settling(&self, names: &[String]) -> Result<(), StoreError> {
        for id in names.iter().filter_map(|n| n.strip_prefix(SETTLE_PREFIX)) {
            match self.read_task(id)? {
                Some(task) => self.settle_dependents(&task)?,
                None => remove_file(&self.settle_note(id))?,
            }
        }
        Ok(())
    }

    /// `prerequisite` is being retried: the tasks its failure cancelled are blocked on it
    /// again, and so on down the chain. The caller holds the lock.
    pub(super) fn revive_dependents(&self, prerequisite: &str) -> Result<(), StoreError> {
        for mut task in self.dependents(prerequisite)? {
            if task.status == TaskStatus::Blocked {
                // Revived already (a replay after a crash halfway down the chain): its own
                // dependents may still need it.
                self.revive_dependents(&task.id)?;
                continue;
            }
            if task.status != TaskStatus::Cancelled
                || task.cancelled_by.as_deref() != Some(prerequisite)
            {
                continue;
            }
            let markers = self.markers(&task);
            task.status = TaskStatus::Blocked;
            task.cancelled_by = None;
            task.error = None;
            task.finished_at = None;
            task.success = None;
            self.index_task(&task)?;
            self.write_task(&task)?;
            self.drop_other_markers(markers, &task)?;
            self.revive_dependents(&task.id)?;
        }
        Ok(())
    }
}

fn invalid(index: usize, message: String) -> StoreError {
    StoreError::InvalidTask(format!("task {}: {message}", index + 1))
}

/// Cancels `task` because `dep`, which it comes after, ended `status`.
pub(super) fn cancel_for(task: &mut Task, dep: &str, status: TaskStatus, now: Timestamp) {
    let what = if status == TaskStatus::Failed {
        "failed"
    } else {
        "was cancelled"
    };
    task.status = TaskStatus::Cancelled;
    task.cancelled_by = Some(dep.to_string());
    task.error = Some(format!(
        "cancelled: it comes after task {dep}, which {what}"
    ));
    task.finished_at = Some(now);
}

/// A cycle among the batch-internal `after` edges, as entry indexes, if there is one.
fn batch_cycle(tasks: &[NewTask]) -> Option<Vec<usize>> {
    // 0 = unvisited, 1 = on the current path, 2 = done.
    fn visit(i: usize, tasks: &[NewTask], state: &mut [u8], path: &mut Vec<usize>) -> bool {
        state[i] = 1;
        path.push(i);
        for dep in &tasks[i].after {
            if let Dependency::Batch(j) = *dep
                && j < tasks.len()
            {
                if state[j] == 1 {
                    let start = path.iter().position(|&p| p == j).unwrap_or(0);
                    path.drain(..start);
                    path.push(j);
                    return true;
                }
                if state[j] == 0 && visit(j, tasks, state, path) {
                    return true;
                }
            }
        }
        path.pop();
        state[i] = 2;
        false
    }
    let mut state = vec![0u8; tasks.len()];
    for i in 0..tasks.len() {
        let mut path = Vec::new();
        if state[i] == 0 && visit(i, tasks, &mut state, &mut path) {
            return Some(path);
        }
    }
    None
}
