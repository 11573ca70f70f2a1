//! Role `deployer` (task type `deploy`): copies the target folder (or file) to the payload's
//! `destination`, replacing what was there in one step.
//!
//! Built the way an outside author builds a role: it depends on plugin-api alone, implements
//! the plain `Role` trait and calls `export_plugin!`. Drop the built library into a plugin folder
//! and run `host --role deployer`.
//!
//! Payload: `{"destination": "site/live"}`. The destination is a path inside the deploy root:
//! the folder named by `DEPLOY_ROOT` in the worker's environment, else the worker's current
//! folder. A relative destination is taken from the root; an absolute one must lie inside it. A
//! destination with `..`, or whose existing folders lead outside the root through a symlink, is
//! refused.
//!
//! The copy is made in a temporary folder beside the destination, then renamed into place; an
//! existing destination is moved aside first and removed once the new one is in place, so readers
//! see the old tree or the new one.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use plugin_api::{Context, HandlerError, Role, Task, Value, json};

struct Deployer;

/// The destination as the payload gives it, checked for `..`.
fn requested_destination(task: &Task) -> Result<PathBuf, String> {
    let dest = task
        .payload
        .get("destination")
        .and_then(Value::as_str)
        .filter(|d| !d.is_empty())
        .ok_or("payload needs \"destination\": a path inside the deploy root")?;
    let dest = PathBuf::from(dest);
    if dest.components().any(|c| c == Component::ParentDir) {
        return Err(format!(
            "destination {} leaves the deploy root (it contains '..')",
            dest.display()
        ));
    }
    Ok(dest)
}

/// The folder deploys may write into, resolved.
fn deploy_root() -> Result<PathBuf, String> {
    let root = match std::env::var_os("DEPLOY_ROOT") {
        Some(root) => PathBuf::from(root),
        None => std::env::current_dir().map_err(|err| format!("current folder: {err}"))?,
    };
    root.canonicalize()
        .map_err(|err| format!("deploy root {}: {err}", root.display()))
}

/// Resolves the destination inside `root`, refusing anything that leaves it, including through a
/// symlink among the folders that already exist.
fn destination(task: &Task, root: &Path) -> Result<PathBuf, String> {
    let requested = requested_destination(task)?;
    let dest = root.join(&requested); // an absolute `requested` replaces the root here
    let name = dest.file_name().ok_or("destination has no name")?;
    let mut existing = dest.parent().ok_or("destination has no parent folder")?;
    let mut missing = Vec::new();
    while !existing.exists() {
        missing.push(
            existing
                .file_name()
                .ok_or("destination has no existing folder")?,
        );
        existing = existing
            .parent()
            .ok_or("destination has no existing folder")?;
    }
    let real = existing
        .canonicalize()
        .map_err(|err| format!("{}: {err}", existing.display()))?;
    if !real.starts_with(root) {
        return Err(format!(
            "destination {} leaves the deploy root {} (set DEPLOY_ROOT on the worker to allow it)",
            requested.display(),
            root.display()
        ));
    }
    let parent = missing.iter().rev().fold(real, |dir, part| dir.join(part));
    Ok(parent.join(name))
}

fn source(task: &Task) -> Result<&Path, String> {
    let source = task
        .target
        .as_deref()
        .ok_or("deploy needs a --target to copy")?;
    if !source.exists() {
        return Err(format!("target {} does not exist", source.display()));
    }
    Ok(source)
}

/// Copies a tree, recreating links as links rather than following them. Returns files, bytes.
fn copy_tree(from: &Path, to: &Path) -> io::Result<(u64, u64)> {
    let meta = fs::symlink_metadata(from)?;
    if meta.file_type().is_symlink() {
        let target = fs::read_link(from)?;
        #[cfg(unix)]
        std::os::unix::fs::symlink(target, to)?;
        // Windows tells links to folders from links to files.
        #[cfg(windows)]
        if fs::metadata(from).is_ok_and(|m| m.is_dir()) {
            std::os::windows::fs::symlink_dir(target, to)?;
        } else {
            std::os::windows::fs::symlink_file(target, to)?;
        }
        return Ok((1, 0));
    }
    if meta.is_file() {
        let bytes = fs::copy(from, to)?;
        fs::File::open(to)?.sync_all()?;
        return Ok((1, bytes));
    }
    fs::create_dir_all(to)?;
    let (mut files, mut bytes) = (0, 0);
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let (f, b) = copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        files += f;
        bytes += b;
    }
    Ok((files, bytes))
}

/// A name beside `dest` that nothing else uses.
fn sibling(dest: &Path, tag: &str, task: &Task) -> PathBuf {
    let name = dest
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("deploy");
    dest.with_file_name(format!(".{name}.{tag}-{}-{}", task.id, task.attempts))
}

impl Role for Deployer {
    fn name(&self) -> &str {
        "deployer"
    }

    fn task_types(&self) -> Vec<String> {
        vec!["deploy".into()]
    }

    // Runs in `host add`, whose folder and environment are not the worker's: only what does not
    // depend on the deploy root is checked here.
    fn validate(&self, task: &Task) -> Result<(), String> {
        source(task)?;
        requested_destination(task).map(drop)
    }

    fn handle(&self, task: &Task, ctx: &Context<'_>) -> Result<Value, HandlerError> {
        let source = source(task)?;
        let dest = destination(task, &deploy_root()?)?;
        if dest.starts_with(source) {
            return Err(format!("destination {} is inside the target", dest.display()).into());
        }
        let parent = dest.parent().expect("destination() gives a parent");
        fs::create_dir_all(parent)?;
        let staging = sibling(&dest, "deploying", task);
        let old = sibling(&dest, "replaced", task);
        let _ = fs::remove_dir_all(&staging);
        ctx.progress(10, "copying");
        let (files, bytes) = copy_tree(source, &staging)?;
        ctx.progress(80, "switching");
        let replaced = dest.exists();
        if replaced {
            fs::rename(&dest, &old)?;
        }
        if let Err(err) = fs::rename(&staging, &dest) {
            if replaced {
                fs::rename(&old, &dest)?;
            }
            return Err(err.into());
        }
        if replaced {
            let _ = fs::remove_dir_all(&old).or_else(|_| fs::remove_file(&old));
        }
        ctx.log(&format!(
            "deployed {files} files ({bytes} bytes) to {}",
            dest.display()
        ));
        Ok(json!({
            "source": source,
            "destination": dest,
            "files": files,
            "bytes": bytes,
            "replaced": replaced,
        }))
    }
}

plugin_api::export_plugin!(Deployer);
