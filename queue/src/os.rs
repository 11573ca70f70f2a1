//! What differs between operating systems for a queue folder and its files: how a file is made
//! owner-only and opened without following a link, how the folder is kept private, what the
//! writers lock, and what names the user. Unix uses modes, `O_NOFOLLOW` and a lock on the
//! folder itself; Windows uses the folder's access control list (inherited by its files), opens
//! reparse points rather than their targets, and locks a file in the folder.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::Path;

pub use imp::*;

/// Creates `path` and its parents; the new folders are owner-only where the system says so at
/// creation (Unix modes; on Windows [`make_private`] restricts the folder afterwards).
pub fn create_private_dir_all(path: &Path) -> io::Result<()> {
    private_dir_builder().recursive(true).create(path)
}

/// Creates the folder `path` (its parent must exist), owner-only as
/// [`create_private_dir_all`] makes them.
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    private_dir_builder().create(path)
}

#[cfg(unix)]
mod imp {
    use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};

    use super::*;

    pub(super) fn private_dir_builder() -> fs::DirBuilder {
        let mut builder = fs::DirBuilder::new();
        builder.mode(0o700);
        builder
    }

    /// Options that create a file owner-only (0600) and never open one through a symlink.
    pub fn private_file() -> OpenOptions {
        let mut options = File::options();
        options.mode(0o600).custom_flags(nix::libc::O_NOFOLLOW);
        options
    }

    /// Options that open a file for reading, never through a symlink.
    pub fn reading_no_follow() -> OpenOptions {
        let mut options = File::options();
        options.read(true).custom_flags(nix::libc::O_NOFOLLOW);
        options
    }

    /// Options that open a file to flush it to the disk (read access is enough), never
    /// through a symlink.
    pub fn for_flushing() -> OpenOptions {
        reading_no_follow()
    }

    /// Writes `bytes` at `offset` of `file`, in place.
    pub fn write_at(file: &File, bytes: &[u8], offset: u64) -> io::Result<()> {
        file.write_all_at(bytes, offset)
    }

    /// What the writers of a queue lock: the folder itself, which cannot be deleted from under
    /// the workers as a lock file could.
    pub fn writers_lock(root: &Path) -> io::Result<File> {
        File::open(root)
    }

    /// The file's identity on its disk: a new file renamed over the old one has another.
    pub fn file_id(meta: &fs::Metadata) -> u64 {
        meta.ino()
    }

    /// Whether another process has the SQLite database of `index` (its `-shm` file) open: every
    /// connection holds a shared lock on the index's byte 128 (SQLite's unix VFS, `UNIX_SHM_DMS`)
    /// while it is open. Locks of this process are not seen (POSIX locks never conflict with
    /// their own process's).
    #[cfg(target_os = "linux")]
    pub fn connected_elsewhere(index: &File) -> bool {
        use std::os::fd::AsFd;
        let mut lock = nix::libc::flock {
            l_type: nix::libc::F_WRLCK as nix::libc::c_short,
            l_whence: nix::libc::SEEK_SET as nix::libc::c_short,
            l_start: 128,
            l_len: 1,
            l_pid: 0,
        };
        nix::fcntl::fcntl(index.as_fd(), nix::fcntl::FcntlArg::F_GETLK(&mut lock))
            .is_ok_and(|_| lock.l_type != nix::libc::F_UNLCK as nix::libc::c_short)
    }

    /// Whether another process has the database of `index` open: not told on this system (its
    /// `struct flock` differs), so never.
    #[cfg(not(target_os = "linux"))]
    pub fn connected_elsewhere(_index: &File) -> bool {
        false
    }

    /// Who holds the flock on `path`, in words (`process 1234 (host), stopped`), from the
    /// kernel's list of locks; `None` where that cannot be told.
    pub fn lock_holder(path: &Path) -> Option<String> {
        #[cfg(target_os = "linux")]
        {
            let meta = fs::metadata(path).ok()?;
            let (major, minor) = (
                nix::sys::stat::major(meta.dev()),
                nix::sys::stat::minor(meta.dev()),
            );
            let device = format!("{major:02x}:{minor:02x}:{}", meta.ino());
            let locks = fs::read_to_string("/proc/locks").ok()?;
            let pid = locks.lines().find_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                // `1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF`; waiters are marked `->`.
                (fields.get(1) == Some(&"FLOCK") && fields.get(5) == Some(&device.as_str()))
                    .then(|| fields.get(4).copied())
                    .flatten()
            })?;
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (name, rest) = stat.split_once(" (")?.1.rsplit_once(')')?;
            let state = match rest.split_whitespace().next()? {
                "T" | "t" => "stopped",
                "R" => "running",
                "D" => "waiting for the disk",
                "Z" => "exited",
                _ => "sleeping",
            };
            Some(format!("process {pid} ({name}), {state}"))
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = path;
            None
        }
    }

    /// Whether only the file's owner may read it (a password file).
    pub fn owner_only(meta: &fs::Metadata) -> bool {
        meta.mode() & 0o077 == 0
    }

    /// The name of the user running this process.
    pub fn user_name() -> Option<String> {
        nix::unistd::User::from_uid(nix::unistd::getuid())
            .ok()
            .flatten()
            .map(|u| u.name)
    }
}

#[cfg(windows)]
mod imp {
    use std::os::windows::fs::{FileExt, OpenOptionsExt};
    use std::process::Command;

    use super::*;

    /// `FILE_FLAG_OPEN_REPARSE_POINT`: open a symbolic link or junction itself, not what it
    /// points to.
    const OPEN_REPARSE_POINT: u32 = 0x0020_0000;

    /// `FILE_SHARE_READ | FILE_SHARE_WRITE`: others may open the file, not delete or rename it
    /// (the standard library's default also shares deletion).
    const SHARE_READ_WRITE: u32 = 0x1 | 0x2;

    pub(super) fn private_dir_builder() -> fs::DirBuilder {
        fs::DirBuilder::new()
    }

    /// Options that never open a file through a symbolic link; the file gets the folder's
    /// access control list, which [`make_private`] made owner-only.
    pub fn private_file() -> OpenOptions {
        let mut options = File::options();
        options.custom_flags(OPEN_REPARSE_POINT);
        options
    }

    /// Options that open a file for reading, never through a symbolic link.
    pub fn reading_no_follow() -> OpenOptions {
        let mut options = File::options();
        options.read(true).custom_flags(OPEN_REPARSE_POINT);
        options
    }

    /// Options that open a file to flush it to the disk (which takes write access on Windows),
    /// never through a symbolic link.
    pub fn for_flushing() -> OpenOptions {
        let mut options = reading_no_follow();
        options.write(true);
        options
    }

    /// Writes `bytes` at `offset` of `file`, in place.
    pub fn write_at(file: &File, mut bytes: &[u8], mut offset: u64) -> io::Result<()> {
        while !bytes.is_empty() {
            let written = file.seek_write(bytes, offset)?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            bytes = &bytes[written..];
            offset += written as u64;
        }
        Ok(())
    }

    /// What the writers of a queue lock: a file in the folder (Windows opens no folder as a
    /// file), which cannot be deleted or renamed while a process has it open. SQLite's own
    /// locks keep the data safe whatever happens to it.
    pub fn writers_lock(root: &Path) -> io::Result<File> {
        private_file()
            .share_mode(SHARE_READ_WRITE)
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(root.join("writers.lock"))
    }

    /// Whether another process has the database of `index` open: not told here (SQLite's
    /// Windows locks are not read), so never.
    pub fn connected_elsewhere(_index: &File) -> bool {
        false
    }

    /// Windows does not say who holds a lock.
    pub fn lock_holder(_path: &Path) -> Option<String> {
        None
    }

    /// Windows gives no stable file identity through the standard library: none is compared.
    pub fn file_id(_meta: &fs::Metadata) -> u64 {
        0
    }

    /// A password file's access is judged by the folder it is in (the user's profile).
    pub fn owner_only(_meta: &fs::Metadata) -> bool {
        true
    }

    /// The name of the user running this process.
    pub fn user_name() -> Option<String> {
        std::env::var("USERNAME").ok().filter(|u| !u.is_empty())
    }

    /// Restricts the folder to its user: inherited entries removed, full control for the user
    /// alone, passed on to every file and folder made in it. Done with `icacls`, which every
    /// Windows has, rather than the security API by hand. The user is named by their security
    /// identifier, which also holds for domain and Microsoft accounts.
    pub fn restrict_to_user(root: &Path) -> Result<(), String> {
        let user = match user_sid() {
            Some(sid) => format!("*{sid}"),
            None => qualified_user_name().ok_or("USERNAME is not set")?,
        };
        let output = Command::new(system_program("icacls.exe"))
            .arg(root)
            .args(["/inheritance:r", "/grant:r"])
            .arg(format!("{user}:(OI)(CI)F"))
            .output()
            .map_err(|err| format!("icacls could not run: {err}"))?;
        if output.status.success() {
            return Ok(());
        }
        let mut said = String::from_utf8_lossy(&output.stdout).trim().to_string();
        let errors = String::from_utf8_lossy(&output.stderr);
        if !errors.trim().is_empty() {
            said = format!("{said} {}", errors.trim()).trim().to_string();
        }
        Err(format!("icacls refused ({}): {said}", output.status))
    }

    /// The security identifier of the user running this process (`S-1-5-21-...`), as
    /// `whoami /user` gives it, asked once per process; `None` where it does not (Wine's
    /// `whoami`).
    fn user_sid() -> Option<String> {
        static SID: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
        SID.get_or_init(|| {
            let output = Command::new(system_program("whoami.exe"))
                .args(["/user", "/fo", "csv", "/nh"])
                .output()
                .ok()
                .filter(|output| output.status.success())?;
            // `"DOMAIN\\user","S-1-5-21-..."`: the last quoted field.
            let text = String::from_utf8_lossy(&output.stdout);
            let sid = text.trim().rsplit(',').next()?.trim_matches('"');
            (sid.starts_with("S-1-") && sid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
                .then(|| sid.to_string())
        })
        .clone()
    }

    /// Windows's own program `name`, by its full path: never one of that name found first on
    /// the search path or beside `host.exe`.
    fn system_program(name: &str) -> std::path::PathBuf {
        let root = std::env::var_os("SystemRoot").unwrap_or_else(|| "C:\\Windows".into());
        Path::new(&root).join("System32").join(name)
    }

    /// `DOMAIN\user` (or the bare user name when no domain is set).
    fn qualified_user_name() -> Option<String> {
        let user = user_name()?;
        Some(match std::env::var("USERDOMAIN") {
            Ok(domain) if !domain.is_empty() => format!("{domain}\\{user}"),
            _ => user,
        })
    }
}
