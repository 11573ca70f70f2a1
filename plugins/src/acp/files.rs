//! The client's file system, as ACP offers it to the agent: reads and writes inside the
//! attempt's folder only. A guard against an agent's mistakes, not a sandbox: the agent's own
//! tools and the commands it runs reach whatever its process may.

use std::path::{Path, PathBuf};

use agent_client_protocol_schema::v1 as acp;
use plugin_api::{Value, serde_json};

use super::{REFUSED, Session, canonical, internal, invalid};

impl Session<'_, '_> {
    /// `path` if it lies inside the attempt's folder (links resolved as far as the path
    /// exists), else why not, logged.
    pub(super) fn inside(&self, what: &str, path: &Path) -> Result<PathBuf, (i64, String)> {
        let refuse = |why: &str| {
            self.ctx.log(&format!(
                "refused: {what} {}: {why} (the agent may touch only its folder {})",
                path.display(),
                self.dir.display()
            ));
            (
                REFUSED,
                format!(
                    "{what} {}: {why}; this task may touch only {}",
                    path.display(),
                    self.dir.display()
                ),
            )
        };
        if !path.is_absolute() {
            return Err(refuse("not an absolute path"));
        }
        // The deepest part of the path that exists, resolved; the rest appended as written. A
        // link that leads nowhere would be followed by the write: refused.
        let mut existing = path.to_path_buf();
        let mut rest = Vec::new();
        let resolved = loop {
            match canonical(&existing) {
                Some(found) => break found,
                None if existing.symlink_metadata().is_ok() => {
                    return Err(refuse("a link to a place that does not exist"));
                }
                None => match (existing.file_name(), existing.parent()) {
                    (Some(name), Some(parent)) => {
                        rest.push(name.to_os_string());
                        existing = parent.to_path_buf();
                    }
                    _ => return Err(refuse("outside the task's folder")),
                },
            }
        };
        let full = rest.iter().rev().fold(resolved, |p, part| p.join(part));
        if full.starts_with(&self.root) {
            Ok(full)
        } else {
            Err(refuse("outside the task's folder"))
        }
    }

    /// Serves `fs/read_text_file` inside the folder (`line` and `limit` as ACP defines them).
    pub(super) fn read_file(&mut self, params: Value) -> Result<Value, (i64, String)> {
        let request: acp::ReadTextFileRequest = serde_json::from_value(params).map_err(invalid)?;
        let path = self.inside("read", &request.path)?;
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            // A file not there yet reads as empty: Gemini CLI reads each file before it writes
            // it and cannot tell ACP's "not found" error from any other (its SDK hands it the
            // error as a plain object), so an error here stops it from creating any file.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(err) => {
                return Err((REFUSED, format!("read {}: {err}", request.path.display())));
            }
        };
        let first = request.line.map_or(0, |l| l.saturating_sub(1) as usize);
        let content = match (request.line, request.limit) {
            (None, None) => text,
            (_, limit) => {
                let lines = text.split_inclusive('\n').skip(first);
                match limit {
                    Some(n) => lines.take(n as usize).collect(),
                    None => lines.collect(),
                }
            }
        };
        serde_json::to_value(acp::ReadTextFileResponse::new(content)).map_err(internal)
    }

    /// Serves `fs/write_text_file` inside the folder, making the folders it needs; refused once
    /// the turn is being cancelled.
    pub(super) fn write_file(&mut self, params: Value) -> Result<Value, (i64, String)> {
        let request: acp::WriteTextFileRequest = serde_json::from_value(params).map_err(invalid)?;
        self.refuse_when_cancelled("write", &request.path)?;
        let path = self.inside("write", &request.path)?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|err| (REFUSED, format!("write {}: {err}", request.path.display())))?;
        }
        std::fs::write(&path, request.content.as_bytes())
            .map_err(|err| (REFUSED, format!("write {}: {err}", request.path.display())))?;
        self.ctx.log(&format!(
            "wrote {} ({} bytes)",
            path.strip_prefix(&self.root).unwrap_or(&path).display(),
            request.content.len()
        ));
        serde_json::to_value(acp::WriteTextFileResponse::new()).map_err(internal)
    }

    /// Refuses to act on `path` once the turn is being cancelled, as ACP asks of a client.
    pub(super) fn refuse_when_cancelled(
        &self,
        what: &str,
        path: &Path,
    ) -> Result<(), (i64, String)> {
        if !self.cancelled {
            return Ok(());
        }
        self.ctx.log(&format!(
            "refused: {what} {}: the turn is being cancelled",
            path.display()
        ));
        Err((
            REFUSED,
            format!("{what} {}: the turn is being cancelled", path.display()),
        ))
    }
}
