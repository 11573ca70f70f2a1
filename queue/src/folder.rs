//! The coordination folder around the database: nobody but its owner reads it, it is on a
//! file system where SQLite's locks work, nothing is written through a symlink in it, and it
//! holds the two small things the database does not: the doorbell that idle workers watch and
//! the tasks' logs.
//!
//! ```text
//! <queue>/                 mode 0700
//!   queue.db               the tasks, leases, pauses, workers and settings (SQLite, WAL)
//!   queue.db-wal, -shm     SQLite's write-ahead log and its index
//!   doorbell               one byte, rewritten when work may have become claimable
//!   damaged                (only after damage was found) what, and where: writes stop
//!   logs/<id>.log          lines a task's handler logged
//!   host.toml              (optional) role bindings, limits, aging, retention
//!   plugins/               (optional) plugins for this queue
//! ```

use std::fs::{self, File};
use std::io;
#[cfg(unix)]
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::StoreError;
use crate::os::{self, private_file};

/// The database's file name in the folder.
pub const DATABASE: &str = "queue.db";
const DOORBELL: &str = "doorbell";
/// Written when damage was found, saying what; every process then stops writing.
const DAMAGED: &str = "damaged";
const LOGS: &str = "logs";
/// What marked a folder of the earlier folder-of-files store.
const OLD_FORMAT_MARKER: &str = "queue.json";

/// Attaches the path to an I/O error.
pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A coordination folder checked to be private and on a local file system.
#[derive(Clone, Debug)]
pub struct QueueFolder {
    root: PathBuf,
}

impl QueueFolder {
    /// Creates the folder (mode 0700) or checks an existing one, tightening it and the files in
    /// it to owner-only. Refuses a folder of the earlier format, one that others can read and
    /// this user cannot tighten, and one on a network file system.
    pub fn create(root: &Path) -> Result<QueueFolder, StoreError> {
        let folder = QueueFolder::create_over_old_format(root)?;
        if !folder.database().exists() && root.join(OLD_FORMAT_MARKER).exists() {
            return Err(StoreError::OldFormat(root.to_path_buf()));
        }
        Ok(folder)
    }

    /// Like [`QueueFolder::create`], in a folder of the earlier format too (to import it).
    pub fn create_over_old_format(root: &Path) -> Result<QueueFolder, StoreError> {
        refuse_network_path(root)?;
        os::create_private_dir_all(root).map_err(io_err(root))?;
        let folder = QueueFolder::checked(root)?;
        folder.tighten_files()?;
        Ok(folder)
    }

    /// Opens an existing queue folder, checking it as [`QueueFolder::create`] does (the folder
    /// itself is tightened; its files were made owner-only when created).
    pub fn open(root: &Path) -> Result<QueueFolder, StoreError> {
        let database = root.join(DATABASE);
        match fs::symlink_metadata(&database) {
            Ok(_) => QueueFolder::checked(root),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                if root.join(OLD_FORMAT_MARKER).exists() {
                    return Err(StoreError::OldFormat(root.to_path_buf()));
                }
                if held_a_queue(root) {
                    return Err(StoreError::LostDatabase(database));
                }
                Err(StoreError::NotInitialized(root.to_path_buf()))
            }
            Err(err) => Err(io_err(root)(err)),
        }
    }

    fn checked(root: &Path) -> Result<QueueFolder, StoreError> {
        // Refused before anything is changed there.
        refuse_network_file_system(root)?;
        refuse_other_owner(root)?;
        make_private(root)?;
        Ok(QueueFolder {
            root: root.to_path_buf(),
        })
    }

    /// What was found damaged, as [`QueueFolder::record_damage`] wrote it, if anything.
    pub fn damage(&self) -> Option<StoreError> {
        let mut text = String::new();
        let path = self.root.join(DAMAGED);
        io::Read::read_to_string(&mut os::reading_no_follow().open(&path).ok()?, &mut text).ok()?;
        let (file, reason) = text.trim_end().split_once('\n').unwrap_or(("", &text));
        Some(StoreError::Damaged {
            path: PathBuf::from(file),
            reason: format!(
                "{} (recorded in {}: remove that file to write again, once every worker is \
                 stopped and what the queue holds is checked)",
                reason.trim_end(),
                path.display()
            ),
        })
    }

    /// Records that `file` was found damaged, unless damage is already on record: the first
    /// finding is the one that explains the rest. A failure to record only loses the note.
    pub(crate) fn record_damage(&self, file: &Path, reason: &str) {
        use std::io::Write;
        if let Ok(mut marker) = private_file()
            .create_new(true)
            .write(true)
            .open(self.root.join(DAMAGED))
        {
            let _ =
                writeln!(marker, "{}\n{reason}", file.display()).and_then(|()| marker.sync_all());
        }
    }

    /// Processes that still have one of the queue's SQLite files open after it was deleted,
    /// one line each: they write into a log or index that no other process sees (Linux; read
    /// from `/proc`, where this user sees their own processes).
    pub fn holders_of_removed_files(&self) -> Vec<String> {
        #[cfg(target_os = "linux")]
        {
            fs::read_dir("/proc")
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|process| {
                    let pid: u32 = process.file_name().to_string_lossy().parse().ok()?;
                    let file = self.removed_file_held_by(&process.path())?;
                    Some(format!(
                        "process {pid} still has {}, which was deleted, open: it and the \
                         processes started since no longer share one queue; stop it",
                        file.display()
                    ))
                })
                .collect()
        }
        #[cfg(not(target_os = "linux"))]
        Vec::new()
    }

    /// The first deleted file of this queue's database that the process at `/proc/PID` holds.
    #[cfg(target_os = "linux")]
    fn removed_file_held_by(&self, process: &Path) -> Option<PathBuf> {
        fs::read_dir(process.join("fd"))
            .ok()?
            .flatten()
            .filter_map(|fd| fs::read_link(fd.path()).ok())
            .find_map(|target| {
                let file = PathBuf::from(target.to_string_lossy().strip_suffix(" (deleted)")?);
                let ours = file.parent() == Some(self.root.as_path())
                    && file
                        .file_name()
                        .is_some_and(|name| name.to_string_lossy().starts_with(DATABASE));
                ours.then_some(file)
            })
    }

    /// The error for a database that holds no queue: lost, when the folder has the files a
    /// queue leaves beside its database, or merely empty.
    pub(crate) fn lost_or_empty_database(&self) -> StoreError {
        if held_a_queue(&self.root) {
            StoreError::LostDatabase(self.database())
        } else {
            StoreError::EmptyDatabase(self.database())
        }
    }

    /// Whether `root` holds a queue (of this format or the earlier one), without opening it.
    pub fn holds_queue(root: &Path) -> bool {
        root.join(DATABASE).exists() || root.join(OLD_FORMAT_MARKER).exists()
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The database file.
    pub fn database(&self) -> PathBuf {
        self.root.join(DATABASE)
    }

    /// Creates the database file, owner-only and not through a symlink, if it does not exist,
    /// so that SQLite (which gives its journal files the database's mode) never makes one that
    /// others can read.
    pub(crate) fn create_database_file(&self) -> Result<(), StoreError> {
        let path = self.database();
        match private_file().create_new(true).write(true).open(&path) {
            Ok(_) => Ok(()),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(err) => Err(io_err(&path)(err)),
        }
    }

    /// What writers take an OS lock on, which serialises them and wakes the next waiter at
    /// once instead of leaving it to sleep and retry: the folder itself on Unix (see
    /// [`os::writers_lock`]).
    pub(crate) fn writers_lock(&self) -> Result<File, StoreError> {
        os::writers_lock(&self.root).map_err(io_err(&self.root))
    }

    /// The doorbell: a one-byte file rewritten whenever work may have become claimable. Idle
    /// workers watch it; claims, which only take work away, do not ring it. Created if missing.
    pub fn doorbell(&self) -> PathBuf {
        let path = self.root.join(DOORBELL);
        if !path.exists() {
            self.ring_doorbell();
        }
        path
    }

    /// Rewrites the doorbell in place (no new inode, no rename). A failure only delays pickup
    /// until the workers' next poll, so it is not an error of the operation.
    pub fn ring_doorbell(&self) {
        let path = self.root.join(DOORBELL);
        if let Ok(file) = private_file()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&path)
        {
            let _ = os::write_at(&file, b"1", 0);
        }
    }

    fn log_path(&self, id: &str) -> PathBuf {
        self.root.join(LOGS).join(format!("{id}.log"))
    }

    /// Appends one line to task `id`'s log.
    pub fn append_log(&self, id: &str, line: &str) -> Result<(), StoreError> {
        use std::io::Write;
        let dir = self.root.join(LOGS);
        ensure_private_dir(&dir)?;
        let path = self.log_path(id);
        let mut file = private_file()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        // One write per line, so lines from concurrent writers never interleave.
        file.write_all(format!("{line}\n").as_bytes())
            .map_err(io_err(&path))
    }

    /// The whole lines of task `id`'s log from byte `from`, and the offset after them.
    pub fn read_log(&self, id: &str, from: u64) -> Result<(String, u64), StoreError> {
        use std::io::{Read, Seek};
        let path = self.log_path(id);
        let mut file = match os::reading_no_follow().open(&path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok((String::new(), 0)),
            Err(err) => return Err(io_err(&path)(err)),
        };
        file.seek(io::SeekFrom::Start(from))
            .map_err(io_err(&path))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io_err(&path))?;
        // Only whole lines: a line being written is read next time.
        let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        bytes.truncate(whole);
        let next = from + whole as u64;
        Ok((String::from_utf8_lossy(&bytes).into_owned(), next))
    }

    /// Replaces the file `name` in the folder with `text` (owner-only, all at once), or with
    /// `None` removes it.
    pub fn write_config(&self, name: &str, text: Option<&str>) -> Result<(), StoreError> {
        use std::io::Write;
        let path = self.root.join(name);
        let Some(text) = text else {
            return match fs::remove_file(&path) {
                Err(err) if err.kind() != io::ErrorKind::NotFound => Err(io_err(&path)(err)),
                _ => Ok(()),
            };
        };
        // A new file renamed over the old one: a reader sees the old text or the new, whole.
        let mut builder = tempfile::Builder::new();
        builder.prefix(".host.toml.");
        #[cfg(unix)]
        builder.permissions(fs::Permissions::from_mode(0o600));
        let mut file = builder
            .tempfile_in(&self.root)
            .map_err(io_err(&self.root))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.as_file().sync_all())
            .map_err(io_err(&path))?;
        file.persist(&path)
            .map_err(|err| io_err(&path)(err.error))?;
        Ok(())
    }

    /// Removes task `id`'s log, if it has one.
    pub fn remove_log(&self, id: &str) -> Result<(), StoreError> {
        let path = self.log_path(id);
        match fs::remove_file(&path) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => Err(io_err(&path)(err)),
            _ => Ok(()),
        }
    }

    /// The entries at the top of the folder and in its logs, with what `lstat` says of them.
    fn entries(&self) -> Result<Vec<(PathBuf, fs::Metadata)>, StoreError> {
        let mut found = Vec::new();
        for dir in [self.root.clone(), self.root.join(LOGS)] {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                match fs::symlink_metadata(&path) {
                    Ok(meta) => found.push((path, meta)),
                    // Gone since the listing: SQLite removes its rollback journal as another
                    // process opening the queue lists the folder.
                    Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                    Err(err) => return Err(io_err(&path)(err)),
                }
            }
        }
        Ok(found)
    }

    /// What keeps the folder's files from being owner-only: symlinks, and files that group or
    /// others may read, one line each (for `host doctor`).
    pub fn loose_files(&self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .entries()?
            .into_iter()
            .filter_map(|(path, meta)| {
                if meta.file_type().is_symlink() {
                    return Some(format!("{} is a symlink", path.display()));
                }
                // On Windows the files inherit the folder's access control list.
                #[cfg(unix)]
                if meta.is_file() && meta.mode() & 0o077 != 0 {
                    return Some(format!(
                        "{} has mode {:o} (`host init` makes it 0600)",
                        path.display(),
                        meta.mode() & 0o777
                    ));
                }
                None
            })
            .collect())
    }

    /// Makes the files at the top of the folder and its logs owner-only (0600), as a folder
    /// written by an earlier version, or by hand, may have them readable by others.
    fn tighten_files(&self) -> Result<(), StoreError> {
        #[cfg(unix)]
        for (path, meta) in self.entries()? {
            let loose = meta.mode() & 0o077 != 0;
            if meta.is_file() && loose && meta.uid() == effective_uid() {
                match fs::set_permissions(&path, fs::Permissions::from_mode(0o600)) {
                    Err(err) if err.kind() != io::ErrorKind::NotFound => {
                        return Err(io_err(&path)(err));
                    }
                    _ => {}
                }
            }
        }
        ensure_private_dir(&self.root.join(LOGS))
    }
}

/// Whether `root` held a queue, whatever became of its database: `host init` makes the doorbell
/// beside the database, and the queue's processes make it again if it goes.
fn held_a_queue(root: &Path) -> bool {
    root.join(DOORBELL).exists()
}

#[cfg(unix)]
fn effective_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Creates `dir` owner-only if it is missing; refuses one that is a symlink.
fn ensure_private_dir(dir: &Path) -> Result<(), StoreError> {
    match fs::symlink_metadata(dir) {
        Ok(meta) if meta.file_type().is_symlink() => Err(StoreError::Unsafe {
            path: dir.to_path_buf(),
            reason: "is a symlink; the queue writes nothing through one (remove it)".into(),
        }),
        #[cfg(unix)]
        Ok(meta) if meta.mode() & 0o077 != 0 && meta.uid() == effective_uid() => {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))
        }
        Ok(_) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            match os::create_private_dir(dir) {
                // Another process opening the queue made it meanwhile: check that one.
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => ensure_private_dir(dir),
                created => created.map_err(io_err(dir)),
            }
        }
        Err(err) => Err(io_err(dir)(err)),
    }
}

/// The environment variable that lists queue folders owned by another user that this user
/// means to use anyway, as git's `safe.directory` does for repositories (`*`: any).
#[cfg(unix)]
const SAFE_QUEUES: &str = "HOST_SAFE_QUEUES";

/// Refuses a queue folder, or a database in it, owned by another user, unless
/// [`SAFE_QUEUES`] names it: whoever works a queue runs its tasks' commands as themselves, so
/// a queue that another user planted (in a shared folder above this one) must never be taken
/// up by chance, as git refuses a repository another user owns.
#[cfg(unix)]
fn refuse_other_owner(root: &Path) -> Result<(), StoreError> {
    let me = effective_uid();
    let foreign = [root.to_path_buf(), root.join(DATABASE)]
        .into_iter()
        .filter_map(|path| fs::symlink_metadata(&path).ok().map(|meta| (path, meta)))
        .find(|(_, meta)| meta.uid() != me);
    let Some((path, meta)) = foreign else {
        return Ok(());
    };
    let safe = std::env::var_os(SAFE_QUEUES).is_some_and(|list| {
        std::env::split_paths(&list).any(|entry| {
            entry.as_os_str() == "*" || fs::canonicalize(&entry).ok() == fs::canonicalize(root).ok()
        })
    });
    if safe {
        return Ok(());
    }
    let owner = nix::unistd::User::from_uid(meta.uid().into())
        .ok()
        .flatten()
        .map_or_else(
            || format!("uid {}", meta.uid()),
            |user| format!("user {}", user.name),
        );
    Err(StoreError::Unsafe {
        path,
        reason: format!(
            "is owned by {owner}, not by you: its tasks would run their commands as you, so \
             host does not use another user's queue; if it is meant, name it in {SAFE_QUEUES} \
             ({SAFE_QUEUES}={}), as git's safe.directory",
            root.display()
        ),
    })
}

#[cfg(not(unix))]
fn refuse_other_owner(_root: &Path) -> Result<(), StoreError> {
    // Windows: the folder is made private to this user by its access control list.
    Ok(())
}

/// Makes the folder owner-only (0700), or refuses it when others can get in and this user,
/// not its owner, cannot change that.
#[cfg(unix)]
fn make_private(root: &Path) -> Result<(), StoreError> {
    let meta = folder_metadata(root)?;
    if meta.mode() & 0o077 == 0 {
        return Ok(());
    }
    fs::set_permissions(root, fs::Permissions::from_mode(0o700)).map_err(|err| StoreError::Unsafe {
        path: root.to_path_buf(),
        reason: format!(
            "other users can read this queue folder (mode {:o}) and it cannot be made \
                 private ({err}); its owner (uid {}) must `chmod 700` it",
            meta.mode() & 0o7777,
            meta.uid()
        ),
    })
}

/// Makes the folder private to its user (an access control list of the user alone, which the
/// files and folders made in it inherit), or refuses it when that cannot be done.
#[cfg(windows)]
fn make_private(root: &Path) -> Result<(), StoreError> {
    folder_metadata(root)?;
    os::restrict_to_user(root).map_err(|why| StoreError::Unsafe {
        path: root.to_path_buf(),
        reason: format!(
            "the queue folder cannot be made private to this user ({why}); make it so with \
             `icacls FOLDER /inheritance:r /grant:r %USERNAME%:(OI)(CI)F`"
        ),
    })
}

/// The folder's metadata; refuses what is not a folder.
fn folder_metadata(root: &Path) -> Result<fs::Metadata, StoreError> {
    let meta = fs::metadata(root).map_err(io_err(root))?;
    if !meta.is_dir() {
        return Err(StoreError::Unsafe {
            path: root.to_path_buf(),
            reason: "is not a folder".into(),
        });
    }
    Ok(meta)
}

/// What kind of file system a magic number of `statfs` names, when SQLite cannot work on it.
#[cfg(any(target_os = "linux", test))]
fn unsafe_file_system(magic: i64) -> Option<&'static str> {
    match magic {
        0x6969 => Some("NFS"),
        0x517b => Some("SMB"),
        0xff53_4d42 => Some("CIFS"),
        0xfe53_4d42 => Some("SMB2"),
        0x0102_1997 => Some("9p (a WSL 2 mount of a Windows drive, or a VM share)"),
        _ => None,
    }
}

/// Refuses a folder on a network file system: SQLite's locks and its WAL's shared memory do
/// not work there (SQLite's own documentation), so two machines would corrupt the queue.
fn refuse_network_file_system(root: &Path) -> Result<(), StoreError> {
    refuse_network_path(root)?;
    #[cfg(target_os = "linux")]
    {
        let stat = nix::sys::statfs::statfs(root).map_err(|errno| StoreError::Io {
            path: root.to_path_buf(),
            source: errno.into(),
        })?;
        #[allow(clippy::unnecessary_cast)] // the field's type differs between targets
        let magic = stat.filesystem_type().0 as i64;
        if let Some(kind) = unsafe_file_system(magic) {
            return Err(StoreError::Unsafe {
                path: root.to_path_buf(),
                reason: format!(
                    "is on {kind}, where SQLite's locking does not work and two machines (or \
                     Windows and WSL) would corrupt the queue: keep the queue on a local disk, or \
                     use the PostgreSQL store for workers on several machines or systems"
                ),
            });
        }
    }
    Ok(())
}

/// Refuses, before anything is made there, a folder that is on a network share: on Windows a
/// UNC path (`\\server\share`, or `\\wsl$\Ubuntu\...`, a WSL distribution's files seen from
/// Windows over 9p), or a path whose nearest existing folder resolves to one (a drive letter
/// mapped to a share).
fn refuse_network_path(root: &Path) -> Result<(), StoreError> {
    #[cfg(windows)]
    {
        use std::path::{Component, Prefix};
        let is_unc = |path: &Path| {
            matches!(path.components().next(), Some(Component::Prefix(prefix))
                if matches!(prefix.kind(), Prefix::UNC(..) | Prefix::VerbatimUNC(..)))
        };
        let real = root
            .ancestors()
            .find(|folder| folder.exists())
            .and_then(|folder| fs::canonicalize(folder).ok());
        if is_unc(root) || real.as_deref().is_some_and(is_unc) {
            return Err(StoreError::Unsafe {
                path: root.to_path_buf(),
                reason: "is on a network share (or in a WSL distribution seen from Windows), \
                         where SQLite's locking does not work and two machines or systems \
                         would corrupt the queue: keep the queue on a local disk, or use the \
                         PostgreSQL store"
                    .into(),
            });
        }
    }
    #[cfg(not(windows))]
    let _ = root;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_file_systems_are_named() {
        assert_eq!(unsafe_file_system(0x6969), Some("NFS"));
        assert!(unsafe_file_system(0xff53_4d42).is_some());
        assert_eq!(unsafe_file_system(0xef53), None, "ext4 is fine");
        assert_eq!(unsafe_file_system(0x0102_1994), None, "tmpfs is fine");
    }
}
