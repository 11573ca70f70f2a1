//! What the tests share: a mount on temporary folders that unmounts when dropped (and skips,
//! saying so, where FUSE cannot run), a second process, and SQLite helpers.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use memmap2::MmapMut;
use power_cut_fs::PowerCutFs;
use rusqlite::Connection;
use tempfile::TempDir;

/// A power-cut file system mounted on a temporary mount point over a temporary backing folder;
/// dropping it unmounts, even when an assertion failed.
pub struct TestMount {
    fs: Option<PowerCutFs>,
    backing: TempDir,
    mountpoint: TempDir,
}

impl TestMount {
    /// Mounts, or says `SKIPPED:` on stderr and gives `None` where this machine cannot.
    pub fn new() -> Option<Self> {
        if let Some(reason) = why_fuse_cannot_run() {
            let test = std::thread::current().name().unwrap_or("?").to_owned();
            eprintln!("SKIPPED: {test}: {reason}");
            return None;
        }
        let backing = tempfile::tempdir().expect("a backing folder");
        let mountpoint = tempfile::tempdir().expect("a mount point");
        let fs = power_cut_fs::mount(backing.path(), mountpoint.path()).expect("mount");
        Some(TestMount {
            fs: Some(fs),
            backing,
            mountpoint,
        })
    }

    pub fn fs(&self) -> &PowerCutFs {
        self.fs.as_ref().expect("mounted")
    }

    /// `name` seen through the mount.
    pub fn on_mount(&self, name: &str) -> PathBuf {
        self.mountpoint.path().join(name)
    }

    /// `name` in the backing folder, as the disk holds it.
    pub fn in_backing(&self, name: &str) -> PathBuf {
        self.backing.path().join(name)
    }

    pub fn unmount(&mut self) {
        let fs = self.fs.take().expect("mounted");
        fs.unmount().expect("unmount");
    }

    /// Unmounts (if mounted) and mounts the same backing folder again: the machine restarts.
    pub fn remount(&mut self) {
        if self.fs.is_some() {
            self.unmount();
        }
        let fs = power_cut_fs::mount(self.backing.path(), self.mountpoint.path()).expect("mount");
        self.fs = Some(fs);
    }
}

impl Drop for TestMount {
    fn drop(&mut self) {
        if let Some(fs) = self.fs.take()
            && let Err(error) = fs.unmount()
        {
            eprintln!("unmounting {}: {error}", self.mountpoint.path().display());
        }
    }
}

fn why_fuse_cannot_run() -> Option<&'static str> {
    if !nix::unistd::geteuid().is_root() {
        Some("mounting FUSE here needs root")
    } else if !Path::new("/dev/fuse").exists() {
        Some("there is no /dev/fuse")
    } else {
        None
    }
}

/// What the second process does in each role, in Python (a client of its own, as SQLite's and
/// the kernel's other users are): it prints its findings after `CHILD: `.
fn child_script(role: &str) -> &'static str {
    match role {
        // Maps the file shared, reads what the parent wrote through its own mapping, writes
        // through its mapping, and unmaps with the page still dirty.
        "mmap" => {
            "import mmap, sys\n\
             f = open(sys.argv[1], 'r+b')\n\
             m = mmap.mmap(f.fileno(), 0)\n\
             assert m[:6] == b'parent', m[:6]\n\
             m[100:106] = b'child!'\n\
             print('CHILD: saw parent')\n\
             m.close()\n"
        }
        // Tries a POSIX lock (fcntl F_SETLK) on the file's first byte, without waiting.
        "lock" => {
            "import errno, fcntl, sys\n\
             f = open(sys.argv[1], 'r+b')\n\
             try:\n\
             \x20   fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)\n\
             \x20   print('CHILD: byte 0 locked')\n\
             except OSError as e:\n\
             \x20   if e.errno not in (errno.EAGAIN, errno.EACCES):\n\
             \x20       raise\n\
             \x20   print('CHILD: byte 0 busy')\n"
        }
        // A second SQLite connection in WAL mode: counts the rows, then adds 20.
        "sqlite" => {
            "import sqlite3, sys\n\
             db = sqlite3.connect(sys.argv[1], timeout=10, isolation_level=None)\n\
             assert db.execute('PRAGMA journal_mode=WAL').fetchone()[0] == 'wal'\n\
             db.execute('PRAGMA synchronous=FULL')\n\
             before = db.execute('SELECT count(*) FROM task').fetchone()[0]\n\
             for _ in range(20):\n\
             \x20   db.execute(\"INSERT INTO task(writer, body) VALUES ('child', zeroblob(2000))\")\n\
             print(f'CHILD: saw {before} rows, wrote 20')\n"
        }
        other => panic!("no role {other}"),
    }
}

/// Runs a second process (Python) in `role` on `file`, and returns the lines it printed after
/// `CHILD: `.
pub fn run_child(role: &str, file: &Path) -> Vec<String> {
    let output = Command::new("python3")
        .arg("-c")
        .arg(child_script(role))
        .arg(file)
        .output()
        .expect("python3 runs (the second process of these tests)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the second process ({role}) failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .filter_map(|line| line.strip_prefix("CHILD: "))
        .map(str::to_owned)
        .collect()
}

/// Maps all of `file` shared and writable.
pub fn map_shared(file: &File) -> MmapMut {
    // SAFETY: the mapped file belongs to the test, and other processes change it only as the
    // test expects; the bytes are plain data.
    unsafe { MmapMut::map_mut(file) }.expect("mmap")
}

/// Takes (`F_WRLCK`) or releases (`F_UNLCK`) a POSIX lock on the first byte of `file`,
/// without waiting.
pub fn posix_lock(file: &File, kind: i32) -> nix::Result<()> {
    let lock = libc::flock {
        l_type: kind as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: 0,
        l_len: 1,
        l_pid: 0,
    };
    nix::fcntl::fcntl(file, nix::fcntl::FcntlArg::F_SETLK(&lock)).map(drop)
}

/// Opens the database at `path` in WAL mode with `PRAGMA synchronous=<synchronous>`.
pub fn open_db(path: &Path, synchronous: &str) -> Connection {
    let db = Connection::open(path).expect("open the database");
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    let mode: String = db
        .query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    db.pragma_update(None, "synchronous", synchronous).unwrap();
    db
}

pub fn create_table(db: &Connection) {
    db.execute_batch("CREATE TABLE task(id INTEGER PRIMARY KEY, writer TEXT, body BLOB)")
        .unwrap();
}

pub fn insert(db: &Connection, writer: &str) -> rusqlite::Result<usize> {
    db.execute(
        "INSERT INTO task(writer, body) VALUES (?1, zeroblob(2000))",
        [writer],
    )
}

pub fn count(db: &Connection) -> i64 {
    db.query_row("SELECT count(*) FROM task", [], |row| row.get(0))
        .unwrap()
}

pub fn integrity(db: &Connection) -> String {
    db.query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap()
}
