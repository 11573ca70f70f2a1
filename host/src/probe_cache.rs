//! What the plugin probes said of each library, remembered between runs, so that `host add`
//! and the other commands that look the plugin path over start a probe only for a library
//! they have not seen as it is now.
//!
//! A library's answer (its plugin-api version and roles) is kept under its resolved path and
//! its file's identity: device, inode, size, and the times it was last modified and last
//! changed (the latter cannot be set back by anyone, so a file put in place with an old
//! modification time is still seen as new). Any difference, and the library is probed again.
//! Only answers of libraries that loaded are kept: a refusal may come from something outside
//! the file (a missing dependency, a crash, a time limit under load) and is asked again each
//! time. The host's own executable is part of the identity too, since the probe's checks are
//! its own: another build of the host asks again.
//!
//! The judgement of a library ([`crate::loader::judge`]: who owns it, who may write it and
//! every folder on its way) is not cached: it runs every time, before the cache is consulted.
//!
//! The cache is one file, `host/plugins.json` under the user's cache folder
//! (`$XDG_CACHE_HOME`, else `~/.cache`); the folder is made only the user's (0700). A file
//! that is not the user's, or that others could write, is not read (and is replaced); so is
//! one that cannot be read as a cache. On Windows nothing is cached.

use std::path::Path;
#[cfg(unix)]
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The identity of a file: when any part differs, it is not the file that was probed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileId {
    /// The identity of the file at `path` (links followed); `None` when it cannot be read.
    #[cfg(unix)]
    pub fn of(path: &Path) -> Option<FileId> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).ok()?;
        let ns = |secs: i64, nanos: i64| i128::from(secs) * 1_000_000_000 + i128::from(nanos);
        Some(FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        })
    }

    /// Nothing is cached on Windows.
    #[cfg(not(unix))]
    pub fn of(_path: &Path) -> Option<FileId> {
        None
    }
}

/// The cache file's contents.
#[cfg(unix)]
#[derive(Default, Serialize, Deserialize)]
struct CacheFile {
    /// The host executable whose probes gave these answers.
    host: Option<FileId>,
    libraries: Vec<Entry>,
}

/// One library's answer.
#[derive(Clone, Serialize, Deserialize)]
struct Entry {
    /// Its resolved path.
    path: std::path::PathBuf,
    id: FileId,
    /// What its listing probe printed.
    answer: Value,
}

/// At most this many libraries are remembered; the least recently stored are forgotten.
const MAX_ENTRIES: usize = 256;

/// The remembered answers, read once per command.
pub struct ProbeCache {
    /// Where the cache file is; `None` when there is no safe place for it.
    #[cfg(unix)]
    file: Option<PathBuf>,
    /// The identity of this host executable, which made the answers.
    #[cfg(unix)]
    host: Option<FileId>,
    entries: Vec<Entry>,
    /// Whether something was stored since it was read.
    changed: bool,
}

impl ProbeCache {
    /// The cache as the file holds it: empty when there is none, it is not safe to read, or
    /// it was made by another host executable.
    pub fn load() -> ProbeCache {
        #[cfg(unix)]
        let host = std::env::current_exe()
            .ok()
            .and_then(|exe| FileId::of(&exe));
        #[cfg(unix)]
        let file = cache_folder().map(|dir| dir.join("plugins.json"));
        #[cfg(unix)]
        let entries = file
            .as_deref()
            .and_then(read_own_file)
            .and_then(|text| serde_json::from_slice::<CacheFile>(&text).ok())
            .filter(|cache| host.is_some() && cache.host == host)
            .map(|cache| cache.libraries)
            .unwrap_or_default();
        #[cfg(not(unix))]
        let entries = Vec::new();
        ProbeCache {
            #[cfg(unix)]
            file,
            #[cfg(unix)]
            host,
            entries,
            changed: false,
        }
    }

    /// The answer the library at `path` (resolved) gave when it was the file `id` says.
    pub fn get(&self, path: &Path, id: &FileId) -> Option<&Value> {
        self.entries
            .iter()
            .find(|e| e.path == path && e.id == *id)
            .map(|e| &e.answer)
    }

    /// Remembers the answer of a library that loaded.
    pub fn put(&mut self, path: &Path, id: FileId, answer: Value) {
        self.entries.retain(|e| e.path != path);
        self.entries.push(Entry {
            path: path.to_path_buf(),
            id,
            answer,
        });
        self.changed = true;
    }

    /// Writes the cache back when something was stored, forgetting libraries that are gone
    /// or changed. A cache that cannot be written is no error: the next command probes.
    pub fn save(mut self) {
        if !self.changed {
            return;
        }
        self.entries
            .retain(|e| FileId::of(&e.path).is_some_and(|now| now == e.id));
        let drop = self.entries.len().saturating_sub(MAX_ENTRIES);
        self.entries.drain(..drop);
        #[cfg(unix)]
        if let Some(file) = &self.file {
            let cache = CacheFile {
                host: self.host.clone(),
                libraries: std::mem::take(&mut self.entries),
            };
            let _ = write_own_file(file, &serde_json::to_vec(&cache).expect("cache serializes"));
        }
    }
}

/// The folder of the cache, made if missing, only the user's: `$XDG_CACHE_HOME/host` (when
/// that is an absolute path), else `~/.cache/host`. `None` when there is no such folder that
/// only the user can write to: then nothing is cached.
#[cfg(unix)]
fn cache_folder() -> Option<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|dir| dir.is_absolute())
        .or_else(|| {
            let home = PathBuf::from(std::env::var_os("HOME")?);
            home.is_absolute().then(|| home.join(".cache"))
        })?;
    let dir = base.join("host");
    let _ = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir);
    let meta = std::fs::symlink_metadata(&dir).ok()?;
    if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() {
        return None;
    }
    // Ours, but others may write to it (made by hand, or by an older host): made private.
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).ok()?;
    }
    Some(dir)
}

/// The contents of `file` when it is a regular file of this user's that nobody else may write
/// (judged on the file opened, never through a link); `None` otherwise.
#[cfg(unix)]
fn read_own_file(file: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let mut opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(file)
        .ok()?;
    let meta = opened.metadata().ok()?;
    if !meta.is_file() || meta.uid() != nix::unistd::geteuid().as_raw() || meta.mode() & 0o022 != 0
    {
        return None;
    }
    let mut text = Vec::new();
    opened.read_to_end(&mut text).ok()?;
    Some(text)
}

/// Replaces `file` with `text`, readable and writable by this user only: written beside it,
/// then renamed over it, so that a reader sees the old cache or the new, whole.
#[cfg(unix)]
fn write_own_file(file: &Path, text: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let temporary = file.with_extension(format!("{}.tmp", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)
        .and_then(|mut out| out.write_all(text));
    match written.and_then(|()| std::fs::rename(&temporary, file)) {
        Ok(()) => Ok(()),
        Err(err) => {
            let _ = std::fs::remove_file(&temporary);
            Err(err)
        }
    }
}
