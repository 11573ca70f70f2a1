//! Role `writer` (task type `write`): creates or replaces files under the target.
//!
//! Payload: `{"files": [{"path": "src/lib.rs", "content": "..."}]}`. Paths are relative to the
//! target. Every path is checked before anything is written, each file is written to a
//! temporary file beside it and renamed into place, and a path that leaves the target (`..`, an
//! absolute path, or a link inside the target that points out) is refused.

use std::io::Write;
#[cfg(unix)]
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use plugin_api::{Context, HandlerError, Role, Task, Value, json};

use crate::paths::{check_relative, safe_parent, target};

/// Writes the payload's files under the target.
pub struct Writer;

struct FileSpec {
    rel: PathBuf,
    content: String,
}

fn files(task: &Task) -> Result<Vec<FileSpec>, String> {
    let list = task
        .payload
        .get("files")
        .and_then(Value::as_array)
        .ok_or("payload needs \"files\": [{\"path\": ..., \"content\": ...}]")?;
    if list.is_empty() {
        return Err("payload \"files\" is empty".into());
    }
    list.iter()
        .enumerate()
        .map(|(i, entry)| {
            let path = entry
                .get("path")
                .and_then(Value::as_str)
                .ok_or(format!("files[{i}] needs a string \"path\""))?;
            let content = entry
                .get("content")
                .and_then(Value::as_str)
                .ok_or(format!("files[{i}] needs a string \"content\""))?;
            Ok(FileSpec {
                rel: check_relative(path)?,
                content: content.to_string(),
            })
        })
        .collect()
}

#[cfg(unix)]
/// This process's umask, read without changing it (`/proc/self/status`); 022 when unknown.
fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Umask:"))
                .and_then(|mask| u32::from_str_radix(mask.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

impl Role for Writer {
    fn name(&self) -> &str {
        "writer"
    }

    fn task_types(&self) -> Vec<String> {
        vec!["write".into()]
    }

    fn validate(&self, task: &Task) -> Result<(), String> {
        target(task)?;
        files(task).map(|_| ())
    }

    fn handle(&self, task: &Task, ctx: &Context<'_>) -> Result<Value, HandlerError> {
        let root = target(task)?;
        let specs = files(task)?;
        std::fs::create_dir_all(root).map_err(|err| format!("target {}: {err}", root.display()))?;

        // Stage every file first, so a refused path leaves nothing half written.
        let mut staged = Vec::new();
        for spec in &specs {
            let dir = safe_parent(root, &spec.rel)?;
            let name = spec
                .rel
                .file_name()
                .ok_or(format!("path {} names no file", spec.rel.display()))?;
            let dest = dir.join(name);
            if dest
                .symlink_metadata()
                .is_ok_and(|m| m.file_type().is_symlink())
            {
                return Err(format!(
                    "path {} is a link; the writer replaces only plain files",
                    spec.rel.display()
                )
                .into());
            }
            // Made as any program makes a file: 0666 less the umask (a temporary file would be
            // 0600, and a project's files are not secrets).
            #[allow(unused_mut)] // set on Unix only
            let mut builder = tempfile::Builder::new();
            #[cfg(unix)]
            builder.permissions(std::fs::Permissions::from_mode(0o666 & !umask()));
            let mut tmp = builder.tempfile_in(&dir)?;
            tmp.write_all(spec.content.as_bytes())?;
            tmp.as_file().sync_all()?;
            staged.push((tmp, dest, spec));
        }
        let total = staged.len();
        let mut written = Vec::new();
        for (done, (tmp, dest, spec)) in staged.into_iter().enumerate() {
            let created = !dest.exists();
            tmp.persist(&dest).map_err(|err| err.error)?;
            ctx.log(&format!("wrote {}", spec.rel.display()));
            ctx.progress(
                ((done + 1) * 100 / total) as u8,
                &spec.rel.display().to_string(),
            );
            written.push(json!({
                "path": spec.rel,
                "bytes": spec.content.len(),
                "created": created,
            }));
        }
        Ok(json!({ "target": root, "written": written }))
    }
}

plugin_api::register_role!(Writer);
