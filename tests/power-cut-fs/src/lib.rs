//! A FUSE pass-through file system for tests that simulates power cuts and failing disks, in the
//! spirit of Jepsen's LazyFS.
//!
//! [`mount`] shows a backing folder at a mount point. Every operation on the mount is done at
//! once on the same path under the backing folder, so reads, `mmap` and every process see the
//! current data, exactly as on a disk whose cache never loses anything. What a real disk could
//! still lose is remembered on the side, and [`PowerCutFs::cut`] loses it:
//!
//! - **Data.** For each file changed since its last `fsync`/`fdatasync`, the file system keeps
//!   its *durable size* (its size at that sync, or when first changed since the mount) and an
//!   undo log: before each `write`, truncation or `fallocate` that punches or zeroes a range,
//!   the bytes it overwrites below the durable size are read and kept. An `fsync` or
//!   `fdatasync` of the file drops the log: all of the file is durable. At the cut, each log is
//!   applied newest first and the file is truncated back to its durable size.
//! - **Names of new files.** A regular file created since the mount has no durable name until
//!   the file itself is synced, its folder is synced (`fsyncdir`), or it is renamed or linked.
//!   At the cut, a created file without a durable name is removed; one with a durable name keeps
//!   it, with its data reverted as above (so a file written and renamed without an `fsync` is
//!   left empty: the classic zero-length file after a crash).
//!
//! After the cut every operation that reaches the file system fails with `EIO`, and nothing
//! reaches the backing folder any more, so it holds what the disk would hold after the crash:
//! unmount, then inspect the folder or mount it again.
//!
//! Not modelled: folders, symbolic links, device nodes, renames, links, unlinks and changes of
//! mode, owner or times are durable at once. A file synced while its folder was not keeps its
//! name (as on ext4, where the file's `fsync` commits the journal that holds the name). Pages
//! that the kernel already holds in its page cache or in a process's mapping stay readable from
//! memory after the cut (only what reaches this file system fails); they are gone with the
//! mount. An `fsync` is not passed on to the backing disk: the cut is the only crash simulated.
//! The backing folder must not be changed except through the mount while it is mounted.
//!
//! The mount is made for SQLite's write-ahead log and its shared-memory index (`-shm`), which
//! several processes map with `mmap(MAP_SHARED)` and lock with `fcntl`:
//! - no `direct_io` and no kernel writeback cache, so shared writable mappings work through the
//!   page cache and every `write` reaches this file system synchronously and in order; pages
//!   written back from a mapping arrive as ordinary writes and go through the undo log too;
//! - POSIX (`fcntl`) and `flock` locks are left to the kernel, which keeps them locally; that is
//!   correct because every process reaches the files through this one mount.
//!
//! Faults ([`PowerCutFs::inject`]) make chosen operations fail with `EIO` or `ENOSPC` before
//! they touch the backing folder, for tests of how a program copes with a failing disk.
//!
//! The file system is served by a process of its own, the `power-cut-fs-server` binary of
//! this package, which [`mount`] starts and commands through its stdin and stdout. It cannot be a
//! thread of the process that uses the mount: a process that unmaps a dirty shared mapping of a
//! FUSE file holds its memory-map lock while the kernel waits for the server to write the pages
//! back, and a server thread of the same process that merely grows its heap (`mprotect`) needs
//! that lock: both wait forever. [`mount`] looks for the binary in `POWER_CUT_FS_SERVER`, else
//! beside the running executable or in its parent folder (`target/debug/` for a test in
//! `target/debug/deps/`); cargo builds it for this package's tests, others build it with
//! `cargo build -p power-cut-fs`. The serving process runs in its own process group, so a
//! Ctrl-C reaches only the tests; when its controlling process ends, it unmounts and ends.
//!
//! Mounting needs `/dev/fuse`, and either root (which mounts with `mount(2)`) or the
//! `fusermount3` helper (Debian's `fuse3` package).
#![forbid(unsafe_code)]

mod durability;
mod faults;
mod inodes;
mod passthrough;
mod protocol;
mod service;

use std::env;
use std::ffi::OsStr;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::sync::{Mutex, PoisonError};

pub use durability::CutReport;
pub use faults::{DiskError, Fault, FaultOp};
pub use service::serve;

use protocol::Command;

/// The environment variable that names the `power-cut-fs-server` binary, where [`mount`] would
/// not find it by itself.
pub const SERVER_BINARY_VARIABLE: &str = "POWER_CUT_FS_SERVER";

/// Mounts a pass-through view of `backing` at `mountpoint` (both existing folders), served by a
/// process of its own, until the returned handle is unmounted or dropped.
pub fn mount(backing: &Path, mountpoint: &Path) -> io::Result<PowerCutFs> {
    let mut child = std::process::Command::new(server_binary()?)
        .arg(backing)
        .arg(mountpoint)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()?;
    let mut server = ServerProcess {
        commands: child.stdin.take().expect("stdin is piped"),
        replies: BufReader::new(child.stdout.take().expect("stdout is piped")),
        child,
    };
    if let Err(error) = server.read_reply() {
        let _ = server.end();
        return Err(error);
    }
    Ok(PowerCutFs {
        server: Mutex::new(Some(server)),
        mountpoint: mountpoint.canonicalize()?,
    })
}

/// A mounted power-cut file system: cut its power, inject faults, unmount it.
///
/// Dropping it unmounts, like [`PowerCutFs::unmount`] but ignoring errors. The methods other
/// than [`PowerCutFs::cut`] and [`PowerCutFs::unmount`] panic if the serving process is gone.
#[derive(Debug)]
pub struct PowerCutFs {
    server: Mutex<Option<ServerProcess>>,
    mountpoint: PathBuf,
}

impl PowerCutFs {
    /// The folder where the file system is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The power goes out now: every later operation on the mount fails with EIO, and every
    /// change not made durable by an fsync/fdatasync (of the file, or for a created file's name,
    /// of it or its folder) is undone in the backing folder. Returns what was dropped.
    ///
    /// An error means the backing folder could not be fully reverted (every file is still
    /// tried); the power is out all the same. A second cut finds nothing left to drop.
    pub fn cut(&self) -> io::Result<CutReport> {
        protocol::words_report(&self.ask(&Command::Cut)?)
    }

    /// Adds a fault: operations of `fault.op` on files whose name ends with `fault.file_suffix`
    /// fail with `fault.error`, after letting `fault.after` matching operations through, for
    /// `fault.times` operations (`None`: until [`PowerCutFs::heal`]).
    pub fn inject(&self, fault: Fault) {
        self.obey(&Command::Inject(fault));
    }

    /// Removes every fault; the disk works again.
    pub fn heal(&self) {
        self.obey(&Command::Heal);
    }

    /// How many operations the faults have failed since the mount, all faults together
    /// (healed ones included), so a test can prove that a fault was hit.
    pub fn faults_hit(&self) -> usize {
        let words = self.obey(&Command::FaultsHit);
        match words.as_slice() {
            [hits] => hits.parse().ok(),
            _ => None,
        }
        .unwrap_or_else(|| panic!("the power-cut-fs server answered {words:?}"))
    }

    /// Unmounts (after a cut or not) and waits until the serving process has ended.
    ///
    /// If a file on the mount is still open, the mount is detached lazily instead, and an error
    /// of kind `ResourceBusy` says so; files still open on it fail from then on.
    pub fn unmount(self) -> io::Result<()> {
        let server = self.take_server();
        let Some(server) = server else {
            return Ok(());
        };
        server.unmount().map_err(|error| {
            if error.kind() == io::ErrorKind::ResourceBusy {
                let mountpoint = self.mountpoint.display();
                let message =
                    format!("{mountpoint} was busy (a file on it is still open): detached lazily");
                io::Error::new(io::ErrorKind::ResourceBusy, message)
            } else {
                error
            }
        })
    }

    fn take_server(&self) -> Option<ServerProcess> {
        self.server
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    fn ask(&self, command: &Command) -> io::Result<Vec<String>> {
        let mut server = self.server.lock().unwrap_or_else(PoisonError::into_inner);
        let server = server
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "unmounted"))?;
        server.ask(command)
    }

    fn obey(&self, command: &Command) -> Vec<String> {
        self.ask(command).unwrap_or_else(|error| {
            panic!(
                "the power-cut-fs server failed to {}: {error}",
                command.encode()
            )
        })
    }
}

impl Drop for PowerCutFs {
    fn drop(&mut self) {
        if let Some(server) = self.take_server() {
            let _ = server.unmount();
        }
    }
}

/// The serving process and the pipes that command it.
#[derive(Debug)]
struct ServerProcess {
    child: Child,
    commands: ChildStdin,
    replies: BufReader<ChildStdout>,
}

impl ServerProcess {
    fn ask(&mut self, command: &Command) -> io::Result<Vec<String>> {
        writeln!(self.commands, "{}", command.encode())?;
        self.commands.flush()?;
        self.read_reply()
    }

    fn read_reply(&mut self) -> io::Result<Vec<String>> {
        let mut line = String::new();
        if self.replies.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the power-cut-fs server process ended",
            ));
        }
        protocol::decode_reply(line.trim_end())
    }

    fn unmount(mut self) -> io::Result<()> {
        let answer = self.ask(&Command::Unmount);
        let ended = self.end();
        answer.and(ended)
    }

    /// Closes its stdin, which makes it unmount if it has not, and waits for it to end.
    fn end(self) -> io::Result<()> {
        let ServerProcess {
            mut child,
            commands,
            replies,
        } = self;
        drop((commands, replies));
        let status = child.wait()?;
        if status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "the power-cut-fs server process ended with {status}"
            )))
        }
    }
}

/// Where the `power-cut-fs-server` binary is: see the crate's documentation.
fn server_binary() -> io::Result<PathBuf> {
    if let Some(path) = env::var_os(SERVER_BINARY_VARIABLE) {
        return Ok(path.into());
    }
    let executable = env::current_exe()?;
    let name = OsStr::new("power-cut-fs-server");
    executable
        .ancestors()
        .skip(1)
        .take(2)
        .map(|folder| folder.join(name))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            let message = format!(
                "no power-cut-fs-server beside {} or in its parent folder: build it \
                 (cargo build -p power-cut-fs) or name it in {SERVER_BINARY_VARIABLE}",
                executable.display()
            );
            io::Error::new(io::ErrorKind::NotFound, message)
        })
}
