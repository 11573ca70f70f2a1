//! Path checks shared by the roles that touch the file system.

use std::path::{Component, Path, PathBuf};

use plugin_api::{Setting, SettingKind, Task, Value};

/// The setting the host fills with where the queue's task branches go (`host/QUEUE-ID`); a
/// role that makes worktrees declares it (see [`branch_setting`]).
pub const BRANCH_NAMESPACE: &str = "branchNamespace";

/// The declaration of [`BRANCH_NAMESPACE`], for the roles that make worktrees.
pub fn branch_setting() -> Setting {
    Setting::new(
        BRANCH_NAMESPACE,
        SettingKind::String,
        "set by the host, not in host.toml: where this queue's task branches go \
         (`[queue] branch_prefix`, then the queue's id)",
    )
}

/// The branch of `task` in a worktree: `NAMESPACE/task-ID`, in the namespace the host gave (the
/// queue's), else in the one every queue shared before queues had ids.
pub fn task_branch(task: &Task, settings: &Value) -> String {
    let namespace = settings
        .get(BRANCH_NAMESPACE)
        .and_then(Value::as_str)
        .unwrap_or(worktrees::LEGACY_NAMESPACE);
    worktrees::branch_of(namespace, &task.id)
}

/// The task's target, which these roles require.
pub fn target(task: &Task) -> Result<&Path, String> {
    task.target
        .as_deref()
        .ok_or_else(|| format!("task type {} needs a --target", task.task_type))
}

/// Checks that `rel` is a relative path that stays below the folder it is joined to: no root,
/// no drive prefix, no `..`.
pub fn check_relative(rel: &str) -> Result<PathBuf, String> {
    let path = Path::new(rel);
    if rel.is_empty() {
        return Err("empty path".into());
    }
    for component in path.components() {
        match component {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => {
                return Err(format!("path {rel:?} leaves the target (it contains '..')"));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("path {rel:?} leaves the target (it is absolute)"));
            }
        }
    }
    Ok(path.to_path_buf())
}

/// Creates the folders of `rel` under `root` one by one, refusing any existing component that
/// resolves outside `root` (a symlink pointing out). Returns the folder that will hold the file.
pub fn safe_parent(root: &Path, rel: &Path) -> Result<PathBuf, String> {
    let root = root
        .canonicalize()
        .map_err(|err| format!("target {}: {err}", root.display()))?;
    let mut dir = root.clone();
    let parent = rel.parent().unwrap_or(Path::new(""));
    for component in parent.components() {
        let Component::Normal(name) = component else {
            continue;
        };
        let next = dir.join(name);
        match next.symlink_metadata() {
            Ok(_) => {
                let real = next
                    .canonicalize()
                    .map_err(|err| format!("{}: {err}", next.display()))?;
                if !real.starts_with(&root) {
                    return Err(format!(
                        "path {} leaves the target (through a link to {})",
                        rel.display(),
                        real.display()
                    ));
                }
                if !real.is_dir() {
                    return Err(format!("{} is not a folder", next.display()));
                }
                dir = real;
            }
            Err(_) => {
                std::fs::create_dir(&next).map_err(|err| format!("{}: {err}", next.display()))?;
                dir = next;
            }
        }
    }
    Ok(dir)
}

/// The branches that `prerequisites` left in `repo` and that are still there (not merged or
/// discarded yet), in their order: an agent task's own branch, and the branches a test or
/// inspect task worked on (its result's `branches`), so that a plan of write, test, fix
/// builds on the write through the test.
pub fn prerequisite_branches(repo: &worktrees::Repo, prerequisites: &[Task]) -> Vec<String> {
    use plugin_api::serde_json::from_value;
    let mut branches: Vec<String> = Vec::new();
    for result in prerequisites.iter().filter_map(|t| t.result.as_ref()) {
        let found: Vec<String> = match result.get("worktree") {
            Some(record) => from_value::<worktrees::Record>(record.clone())
                .ok()
                .filter(|w| w.repository == repo.root)
                .map(|w| w.branch)
                .into_iter()
                .collect(),
            None => result
                .get("branches")
                .and_then(|b| from_value::<Vec<String>>(b.clone()).ok())
                .unwrap_or_default(),
        };
        for branch in found {
            if repo.has_branch(&branch) && !branches.contains(&branch) {
                branches.push(branch);
            }
        }
    }
    branches
}

/// Whether a task's result names branches it left (see [`prerequisite_branches`]).
fn left_branches(task: &Task) -> bool {
    task.result
        .as_ref()
        .is_some_and(|result| result.get("worktree").is_some() || result.get("branches").is_some())
}

/// Where a role that reads or runs the target without changing it (the tester, the inspector)
/// works: the target itself, or, when tasks it comes after left their changes on worktree
/// branches of the target's repository (agent tasks not merged yet), a throwaway worktree with
/// those branches merged, so that a plan's `test` step tests the writer's change before anyone
/// merges it. The worktree and its branch are removed when this is dropped.
pub struct Workplace {
    dir: PathBuf,
    checkout: Option<worktrees::Checkout>,
    branches: Vec<String>,
}

impl Workplace {
    /// The place for `task`, whose target is `target`, coming after `prerequisites`.
    pub fn for_task(
        task: &Task,
        target: &Path,
        prerequisites: &[Task],
        ctx: &plugin_api::Context<'_>,
    ) -> Result<Workplace, String> {
        let in_place = || Workplace {
            dir: target.to_path_buf(),
            checkout: None,
            branches: Vec::new(),
        };
        // Only a task after others that left branches can need a worktree: the rest (most
        // tasks) need not ask git where the target's repository is, which costs a process.
        if !prerequisites.iter().any(left_branches) {
            return Ok(in_place());
        }
        let Some(repo) = worktrees::Repo::containing(target) else {
            return Ok(in_place());
        };
        let branches = prerequisite_branches(&repo, prerequisites);
        if branches.is_empty() {
            return Ok(in_place());
        }
        let base = worktrees::Base {
            named: None,
            after: branches.clone(),
        };
        let branch = task_branch(task, &ctx.settings());
        let checkout = worktrees::start(&repo, &branch, &base)
            .map_err(|err| format!("worktree of task {}: {err}", task.id))?;
        let workplace = Workplace {
            dir: checkout.folder_for(target),
            checkout: Some(checkout),
            branches,
        };
        if let Some(checkout) = &workplace.checkout {
            checkout
                .copy_included(&[])
                .map_err(|err| format!("worktree of task {}: {err}", task.id))?;
        }
        ctx.log(&format!(
            "working on {} as the tasks it comes after left it, in a throwaway worktree",
            workplace.branches.join(" + ")
        ));
        Ok(workplace)
    }

    /// The folder to work in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The branches whose changes the folder holds (none: it is the target itself).
    pub fn branches(&self) -> &[String] {
        &self.branches
    }
}

impl Drop for Workplace {
    fn drop(&mut self) {
        if let Some(checkout) = self.checkout.take() {
            checkout.abandon();
        }
    }
}
