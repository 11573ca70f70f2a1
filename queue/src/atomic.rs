//! Crash-safe file operations: a reader sees a file whole or not at all, and after a successful
//! call the change survives a power loss.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::StoreError;

/// Attaches the path to an I/O error.
pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `dest` through a temporary file in `tmp_dir` (same file system), fsyncs it,
/// renames it over `dest` and, when `durable`, fsyncs the destination folder.
pub(crate) fn write_file(
    tmp_dir: &Path,
    dest: &Path,
    bytes: &[u8],
    durable: bool,
) -> Result<(), StoreError> {
    let mut tmp = tempfile::NamedTempFile::new_in(tmp_dir).map_err(io_err(tmp_dir))?;
    tmp.write_all(bytes).map_err(io_err(tmp.path()))?;
    if durable {
        tmp.as_file().sync_all().map_err(io_err(tmp.path()))?;
    }
    tmp.persist(dest).map_err(|err| io_err(dest)(err.error))?;
    sync_parent(durable, dest)
}

/// Creates an empty marker file (no error if it exists) and, when `durable`, makes its name
/// durable.
pub(crate) fn create_marker(durable: bool, path: &Path) -> Result<(), StoreError> {
    File::create(path).map_err(io_err(path))?;
    sync_parent(durable, path)
}

/// Removes a file if it exists and, when `durable`, makes the removal durable.
pub(crate) fn remove_file(durable: bool, path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Ok(()) => sync_parent(durable, path),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(io_err(path)(err)),
    }
}

/// Fsyncs the folder holding `path`, so that a create, rename or unlink in it is on disk; does
/// nothing unless `durable`.
pub(crate) fn sync_parent(durable: bool, path: &Path) -> Result<(), StoreError> {
    if !durable {
        return Ok(());
    }
    let dir: PathBuf = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(&dir))
}

/// Lists a folder's file names; a missing folder is empty.
pub(crate) fn list_names(dir: &Path) -> Result<Vec<String>, StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(io_err(dir)(err)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(dir))?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_string());
        }
    }
    Ok(names)
}
