//! Path checks shared by the roles that touch the file system.

use std::path::{Component, Path, PathBuf};

use plugin_api::Task;

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
