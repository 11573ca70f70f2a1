//! Role `deployer` (task type `deploy`): copies the target folder (or file) to the payload's
//! `destination`, replacing what was there in one step.
//!
//! Built the way an outside author builds a role: it depends on plugin-api alone, implements
//! the plain `Role` trait and calls `export_plugin!`. Drop the built library into a plugin folder
//! and run `host --role deployer`.
//!
//! Payload: `{"destination": "/srv/site"}` (absolute). The copy is made in a temporary folder
//! beside the destination, then renamed into place; an existing destination is moved aside first
//! and removed once the new one is in place, so readers see the old tree or the new one.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use plugin_api::{Context, HandlerError, Role, Task, Value, json};

struct Deployer;

fn destination(task: &Task) -> Result<PathBuf, String> {
    let dest = task
        .payload
        .get("destination")
        .and_then(Value::as_str)
        .ok_or("payload needs \"destination\": an absolute path")?;
    let dest = PathBuf::from(dest);
    if !dest.is_absolute() || dest.parent().is_none() {
        return Err(format!(
            "destination {} must be an absolute path below /",
            dest.display()
        ));
    }
    Ok(dest)
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
        std::os::unix::fs::symlink(fs::read_link(from)?, to)?;
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

    fn validate(&self, task: &Task) -> Result<(), String> {
        let (source, dest) = (source(task)?, destination(task)?);
        if dest.starts_with(source) {
            return Err(format!(
                "destination {} is inside the target",
                dest.display()
            ));
        }
        Ok(())
    }

    fn handle(&self, task: &Task, ctx: &Context<'_>) -> Result<Value, HandlerError> {
        self.validate(task)?;
        let (source, dest) = (source(task)?, destination(task)?);
        let parent = dest.parent().expect("checked by destination()");
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
