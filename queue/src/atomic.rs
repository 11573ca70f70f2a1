//! Crash-safe file operations: a reader sees a file whole or not at all, whatever process is
//! killed when. Surviving a power loss is the job of [`sync_file_system`], called once at the end
//! of each operation that must be durable.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use crate::StoreError;

/// Attaches the path to an I/O error.
pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `dest` through a temporary file in `tmp_dir` (same file system) and
/// renames it over `dest`, so that readers see the old file or the new one, whole. With
/// `sync_data` the temporary file is fsynced first, so that the rename can only ever expose
/// complete contents; the rename itself is made durable by the caller's [`sync_file_system`].
pub(crate) fn write_file(
    tmp_dir: &Path,
    dest: &Path,
    bytes: &[u8],
    sync_data: bool,
) -> Result<(), StoreError> {
    install_file(prepare_file(tmp_dir, bytes, sync_data)?, dest)
}

/// The first half of [`write_file`]: `bytes` in a new temporary file in `tmp_dir`, fsynced when
/// `sync_data`. The file is removed if it is dropped without [`install_file`].
pub(crate) fn prepare_file(
    tmp_dir: &Path,
    bytes: &[u8],
    sync_data: bool,
) -> Result<tempfile::NamedTempFile, StoreError> {
    let mut tmp = tempfile::NamedTempFile::new_in(tmp_dir).map_err(io_err(tmp_dir))?;
    tmp.write_all(bytes).map_err(io_err(tmp.path()))?;
    if sync_data {
        tmp.as_file().sync_all().map_err(io_err(tmp.path()))?;
    }
    Ok(tmp)
}

/// The second half of [`write_file`]: renames a prepared file over `dest`.
pub(crate) fn install_file(tmp: tempfile::NamedTempFile, dest: &Path) -> Result<(), StoreError> {
    tmp.persist(dest).map_err(|err| io_err(dest)(err.error))?;
    Ok(())
}

/// Creates an empty marker file (no error if it exists), and its folder if that is missing.
pub(crate) fn create_marker(path: &Path) -> Result<(), StoreError> {
    match File::create(path) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            let dir = path.parent().expect("markers live in a folder");
            fs::create_dir_all(dir).map_err(io_err(dir))?;
            File::create(path).map_err(io_err(path))?;
        }
        created => drop(created.map_err(io_err(path))?),
    }
    Ok(())
}

/// Moves a marker to the path of a task's new state in one step, making the destination folder
/// when missing. A rename keeps the marker's inode, which is much cheaper than creating one file
/// and removing another. A missing source (healed away meanwhile) still leaves the destination.
pub(crate) fn move_marker(from: &Path, to: &Path) -> Result<(), StoreError> {
    match fs::rename(from, to) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            let dir = to.parent().expect("markers live in a folder");
            fs::create_dir_all(dir).map_err(io_err(dir))?;
            match fs::rename(from, to) {
                Err(err) if err.kind() == io::ErrorKind::NotFound => create_marker(to),
                moved => moved.map_err(io_err(to)),
            }
        }
        moved => moved.map_err(io_err(to)),
    }
}

/// Removes a file if it exists.
pub(crate) fn remove_file(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(io_err(path)(err)),
    }
}

/// Makes every change made so far on the file system holding `root` durable: one `syncfs`,
/// which commits the creations, renames and removals of a whole operation (and those of other
/// processes meanwhile) at the cost of about one fsync.
pub(crate) fn sync_file_system(root: &Path) -> Result<(), StoreError> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let dir = File::open(root).map_err(io_err(root))?;
        nix::unistd::syncfs(&dir).map_err(|errno| io_err(root)(io::Error::from(errno)))
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = root;
        nix::unistd::sync();
        Ok(())
    }
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
