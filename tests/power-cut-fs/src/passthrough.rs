//! The FUSE server: each operation is done on the same path under the backing folder, after
//! the faults have had their say and the durability bookkeeping has kept what it overwrites.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, Metadata, Permissions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite,
    Request, TimeOrNow, WriteFlags,
};
use nix::fcntl::{AT_FDCWD, FallocateFlags};
use nix::libc;
use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::statvfs::Statvfs;
use nix::sys::time::TimeSpec;
use nix::unistd::Whence;

use crate::durability::{CutReport, DirtyFiles, read_at};
use crate::faults::{Change, FaultTable};
use crate::inodes::{BackingId, InodeTable};

/// How long the kernel may keep names and attributes: not at all, so nothing stale is served.
const TTL: Duration = Duration::ZERO;

/// Everything the server knows, shared with the serving process's command loop.
#[derive(Debug)]
pub(crate) struct State {
    backing: PathBuf,
    powered_off: bool,
    inodes: InodeTable,
    handles: Handles,
    dirty: DirtyFiles,
    pub(crate) faults: FaultTable,
}

/// The file system that fuser runs on its thread.
pub(crate) struct Server {
    state: Arc<Mutex<State>>,
}

/// The open files and folders, by file handle.
#[derive(Debug, Default)]
struct Handles {
    files: HashMap<u64, OpenFile>,
    folders: HashMap<u64, Vec<Listed>>,
    next: u64,
}

#[derive(Debug)]
struct OpenFile {
    ino: INodeNo,
    file: File,
}

/// An entry of a folder as listed when it was opened.
#[derive(Debug)]
struct Listed {
    ino: INodeNo,
    kind: FileType,
    name: OsString,
}

/// The attributes a `setattr` changes (`None`: left as they are).
struct AttrChange {
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    size: Option<u64>,
    atime: Option<TimeOrNow>,
    mtime: Option<TimeOrNow>,
}

impl State {
    pub(crate) fn new(backing: &Path) -> io::Result<Self> {
        let root = fs::metadata(backing)?;
        if !root.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is not a folder", backing.display()),
            ));
        }
        Ok(State {
            backing: backing.to_owned(),
            powered_off: false,
            inodes: InodeTable::new(BackingId::of(&root)),
            handles: Handles::default(),
            dirty: DirtyFiles::default(),
            faults: FaultTable::default(),
        })
    }

    /// Cuts the power: see [`crate::PowerCutFs::cut`].
    pub(crate) fn cut(&mut self) -> io::Result<CutReport> {
        self.powered_off = true;
        self.dirty.cut(&self.inodes, &self.backing)
    }

    fn real(&self, path: &Path) -> PathBuf {
        self.backing.join(path)
    }

    /// The attributes of the backing file at `path`, under its inode number.
    fn entry(&mut self, path: PathBuf) -> Result<FileAttr, Errno> {
        let metadata = fs::symlink_metadata(self.real(&path))?;
        let ino = self.inodes.remember(BackingId::of(&metadata), path);
        Ok(attr(ino, &metadata))
    }

    /// The backing file `id` lost its last name.
    fn lost_last_name(&mut self, id: BackingId) {
        if let Some(ino) = self.inodes.forget(id) {
            self.dirty.forget(ino);
        }
    }

    fn lookup(&mut self, parent: INodeNo, name: &OsStr) -> Result<FileAttr, Errno> {
        let path = self.inodes.child(parent, name)?;
        self.entry(path)
    }

    fn getattr(&self, ino: INodeNo, fh: Option<FileHandle>) -> Result<FileAttr, Errno> {
        let metadata = match (fh, self.inodes.path(ino)) {
            (None, Ok(path)) => fs::symlink_metadata(self.real(path))?,
            // An open file, possibly without a name any more.
            _ => self.handles.file_of(ino, fh)?.metadata()?,
        };
        Ok(attr(ino, &metadata))
    }

    fn setattr(
        &mut self,
        ino: INodeNo,
        fh: Option<FileHandle>,
        change: AttrChange,
    ) -> Result<FileAttr, Errno> {
        self.faults.check(Change::Other, self.inodes.name(ino))?;
        if let Some(size) = change.size {
            self.resize(ino, fh, size)?;
        }
        let times = change.atime.is_some() || change.mtime.is_some();
        if change.mode.is_some() || change.uid.is_some() || change.gid.is_some() || times {
            let target = match self.inodes.path(ino) {
                Ok(path) => AttrTarget::Named(self.real(path)),
                Err(_) => AttrTarget::Open(self.handles.file_of(ino, fh)?),
            };
            if let Some(mode) = change.mode {
                target.set_mode(mode)?;
            }
            if change.uid.is_some() || change.gid.is_some() {
                target.set_owner(change.uid, change.gid)?;
            }
            if times {
                target.set_times(timespec(change.atime), timespec(change.mtime))?;
            }
        }
        self.getattr(ino, fh)
    }

    fn resize(&mut self, ino: INodeNo, fh: Option<FileHandle>, size: u64) -> Result<(), Errno> {
        let opened;
        let file = match fh {
            Some(fh) => self.handles.file(fh)?,
            None => {
                let path = self.real(self.inodes.path(ino)?);
                opened = File::options().read(true).write(true).open(path)?;
                &opened
            }
        };
        let old_size = file.metadata()?.len();
        self.dirty
            .before_change(ino, file, size, old_size.max(size))?;
        file.set_len(size)?;
        Ok(())
    }

    fn readlink(&self, ino: INodeNo) -> Result<Vec<u8>, Errno> {
        let target = fs::read_link(self.real(self.inodes.path(ino)?))?;
        Ok(target.into_os_string().into_encoded_bytes())
    }

    fn mknod(
        &mut self,
        owner: Owner,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        rdev: u32,
    ) -> Result<FileAttr, Errno> {
        self.faults.check(Change::Create, name)?;
        let path = self.inodes.child(parent, name)?;
        let real = self.real(&path);
        let kind = SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits());
        let permissions = Mode::from_bits_truncate(mode & 0o7777);
        nix::sys::stat::mknod(&real, kind, permissions, rdev.into()).map_err(sys)?;
        adopt(&real, Some(mode), owner)?;
        let attr = self.entry(path)?;
        if kind == SFlag::S_IFREG {
            let file = File::options().read(true).write(true).open(&real)?;
            self.dirty.created(attr.ino, file);
        }
        Ok(attr)
    }

    fn mkdir(
        &mut self,
        owner: Owner,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
    ) -> Result<FileAttr, Errno> {
        self.faults.check(Change::Create, name)?;
        let path = self.inodes.child(parent, name)?;
        let real = self.real(&path);
        fs::create_dir(&real)?;
        adopt(&real, Some(mode), owner)?;
        self.entry(path)
    }

    fn symlink(
        &mut self,
        owner: Owner,
        parent: INodeNo,
        name: &OsStr,
        target: &Path,
    ) -> Result<FileAttr, Errno> {
        self.faults.check(Change::Create, name)?;
        let path = self.inodes.child(parent, name)?;
        let real = self.real(&path);
        std::os::unix::fs::symlink(target, &real)?;
        adopt(&real, None, owner)?;
        self.entry(path)
    }

    fn link(
        &mut self,
        ino: INodeNo,
        new_parent: INodeNo,
        new_name: &OsStr,
    ) -> Result<FileAttr, Errno> {
        self.faults.check(Change::Create, new_name)?;
        let new_path = self.inodes.child(new_parent, new_name)?;
        fs::hard_link(self.real(self.inodes.path(ino)?), self.real(&new_path))?;
        self.dirty.name_made_durable(ino);
        self.entry(new_path)
    }

    fn unlink(&mut self, parent: INodeNo, name: &OsStr) -> Result<(), Errno> {
        self.faults.check(Change::Other, name)?;
        let real = self.real(&self.inodes.child(parent, name)?);
        let metadata = fs::symlink_metadata(&real)?;
        fs::remove_file(&real)?;
        if metadata.nlink() <= 1 {
            self.lost_last_name(BackingId::of(&metadata));
        }
        Ok(())
    }

    fn rmdir(&mut self, parent: INodeNo, name: &OsStr) -> Result<(), Errno> {
        self.faults.check(Change::Other, name)?;
        let real = self.real(&self.inodes.child(parent, name)?);
        let metadata = fs::symlink_metadata(&real)?;
        fs::remove_dir(&real)?;
        self.lost_last_name(BackingId::of(&metadata));
        Ok(())
    }

    fn rename(
        &mut self,
        parent: INodeNo,
        name: &OsStr,
        new_parent: INodeNo,
        new_name: &OsStr,
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        self.faults.check(Change::Create, new_name)?;
        if !flags.difference(RenameFlags::RENAME_NOREPLACE).is_empty() {
            return Err(Errno::EINVAL);
        }
        let from = self.inodes.child(parent, name)?;
        let to = self.inodes.child(new_parent, new_name)?;
        let (real_from, real_to) = (self.real(&from), self.real(&to));
        let moved = BackingId::of(&fs::symlink_metadata(&real_from)?);
        let replaced = fs::symlink_metadata(&real_to).ok();
        let nix_flags = nix::fcntl::RenameFlags::from_bits_truncate(flags.bits());
        nix::fcntl::renameat2(AT_FDCWD, &real_from, AT_FDCWD, &real_to, nix_flags).map_err(sys)?;
        if let Some(replaced) = replaced
            && BackingId::of(&replaced) != moved
            && (replaced.is_dir() || replaced.nlink() <= 1)
        {
            self.lost_last_name(BackingId::of(&replaced));
        }
        self.inodes.renamed(&from, &to);
        if let Some(ino) = self.inodes.ino(moved) {
            self.dirty.name_made_durable(ino);
        }
        Ok(())
    }

    fn open(&mut self, ino: INodeNo, flags: OpenFlags) -> Result<FileHandle, Errno> {
        // A file opened for writing is opened for reading too, so that the undo log can read
        // what a write overwrites; never with O_APPEND, under which positioned writes append
        // (the kernel already turned appends into positions).
        let writable = flags.acc_mode() != OpenAccMode::O_RDONLY;
        let path = self.real(self.inodes.path(ino)?);
        let file = File::options().read(true).write(writable).open(path)?;
        Ok(self.handles.open_file(ino, file))
    }

    fn create(
        &mut self,
        owner: Owner,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
    ) -> Result<(FileAttr, FileHandle), Errno> {
        self.faults.check(Change::Create, name)?;
        let path = self.inodes.child(parent, name)?;
        let real = self.real(&path);
        // The kernel asks to create only a name that its lookup just found missing, holding
        // the folder's lock; so the file is always new.
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&real)?;
        adopt(&real, Some(mode), owner)?;
        let attr = self.entry(path)?;
        self.dirty.created(attr.ino, file.try_clone()?);
        Ok((attr, self.handles.open_file(attr.ino, file)))
    }

    fn read(&self, fh: FileHandle, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        Ok(read_at(self.handles.file(fh)?, offset, size.into())?)
    }

    fn write(
        &mut self,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
    ) -> Result<u32, Errno> {
        self.faults.check(Change::Write, self.inodes.name(ino))?;
        let file = self.handles.file(fh)?;
        let end = offset + data.len() as u64;
        self.dirty.before_change(ino, file, offset, end)?;
        file.write_all_at(data, offset)?;
        u32::try_from(data.len()).map_err(|_| Errno::EINVAL)
    }

    fn fsync(&mut self, ino: INodeNo) -> Result<(), Errno> {
        self.faults.check(Change::Fsync, self.inodes.name(ino))?;
        self.dirty.synced(ino);
        Ok(())
    }

    fn fsyncdir(&mut self, ino: INodeNo) -> Result<(), Errno> {
        self.faults.check(Change::Fsync, self.inodes.name(ino))?;
        let folder = self.inodes.path(ino)?;
        for child in self.inodes.children_of(folder) {
            self.dirty.name_made_durable(child);
        }
        Ok(())
    }

    fn opendir(&mut self, ino: INodeNo) -> Result<FileHandle, Errno> {
        let path = self.inodes.path(ino)?.to_owned();
        let parent = match path.parent() {
            Some(parent) => self.entry(parent.to_owned())?.ino,
            None => ino,
        };
        let mut listing = vec![Listed::folder(ino, "."), Listed::folder(parent, "..")];
        for entry in fs::read_dir(self.real(&path))? {
            let entry = entry?;
            // An entry removed since the listing began is left out.
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            let name = entry.file_name();
            let ino = self
                .inodes
                .remember(BackingId::of(&metadata), path.join(&name));
            listing.push(Listed {
                ino,
                kind: kind(&metadata),
                name,
            });
        }
        Ok(self.handles.open_folder(listing))
    }

    fn readdir(
        &self,
        fh: FileHandle,
        offset: u64,
        reply: &mut ReplyDirectory,
    ) -> Result<(), Errno> {
        let listing = self.handles.folder(fh)?;
        let start = usize::try_from(offset).map_err(|_| Errno::EINVAL)?;
        for (index, entry) in listing.iter().enumerate().skip(start) {
            let next_offset = index as u64 + 1;
            if reply.add(entry.ino, next_offset, entry.kind, &entry.name) {
                break;
            }
        }
        Ok(())
    }

    fn statfs(&self) -> Result<Statvfs, Errno> {
        nix::sys::statvfs::statvfs(&self.backing).map_err(sys)
    }

    fn access(&self, ino: INodeNo, mask: AccessFlags) -> Result<(), Errno> {
        let mask = nix::unistd::AccessFlags::from_bits_truncate(mask.bits());
        nix::unistd::access(&self.real(self.inodes.path(ino)?), mask).map_err(sys)
    }

    fn fallocate(
        &mut self,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> Result<(), Errno> {
        self.faults.check(Change::Other, self.inodes.name(ino))?;
        let zeroing = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_ZERO_RANGE;
        let modelled = zeroing | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        // Collapsing or inserting ranges moves data, which the undo log does not model.
        let flags = FallocateFlags::from_bits(mode)
            .filter(|flags| modelled.contains(*flags))
            .ok_or(Errno::EOPNOTSUPP)?;
        let file = self.handles.file(fh)?;
        let changed_end = if flags.intersects(zeroing) {
            offset + length
        } else {
            offset
        };
        self.dirty.before_change(ino, file, offset, changed_end)?;
        nix::fcntl::fallocate(file, flags, off_t(offset)?, off_t(length)?).map_err(sys)
    }

    /// Finds data or holes (the kernel answers every other kind of seek itself).
    fn lseek(&self, fh: FileHandle, offset: i64, whence: i32) -> Result<i64, Errno> {
        let whence = match whence {
            libc::SEEK_DATA => Whence::SeekData,
            libc::SEEK_HOLE => Whence::SeekHole,
            _ => return Err(Errno::EINVAL),
        };
        nix::unistd::lseek(self.handles.file(fh)?, offset, whence).map_err(sys)
    }
}

/// What `setattr` changes the mode, owner or times of: the file at a path (not following a
/// symbolic link), or an open file without a name any more.
enum AttrTarget<'a> {
    Named(PathBuf),
    Open(&'a File),
}

impl AttrTarget<'_> {
    fn set_mode(&self, mode: u32) -> io::Result<()> {
        let permissions = Permissions::from_mode(mode & 0o7777);
        match self {
            AttrTarget::Named(path) => fs::set_permissions(path, permissions),
            AttrTarget::Open(file) => file.set_permissions(permissions),
        }
    }

    fn set_owner(&self, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
        match self {
            AttrTarget::Named(path) => std::os::unix::fs::lchown(path, uid, gid),
            AttrTarget::Open(file) => std::os::unix::fs::fchown(file, uid, gid),
        }
    }

    fn set_times(&self, atime: TimeSpec, mtime: TimeSpec) -> Result<(), Errno> {
        match self {
            AttrTarget::Named(path) => nix::sys::stat::utimensat(
                AT_FDCWD,
                path,
                &atime,
                &mtime,
                UtimensatFlags::NoFollowSymlink,
            ),
            AttrTarget::Open(file) => nix::sys::stat::futimens(file, &atime, &mtime),
        }
        .map_err(sys)
    }
}

impl Listed {
    fn folder(ino: INodeNo, name: &str) -> Self {
        Listed {
            ino,
            kind: FileType::Directory,
            name: name.into(),
        }
    }
}

impl Handles {
    fn new_handle(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    fn open_file(&mut self, ino: INodeNo, file: File) -> FileHandle {
        let fh = self.new_handle();
        self.files.insert(fh, OpenFile { ino, file });
        FileHandle(fh)
    }

    fn open_folder(&mut self, listing: Vec<Listed>) -> FileHandle {
        let fh = self.new_handle();
        self.folders.insert(fh, listing);
        FileHandle(fh)
    }

    fn file(&self, fh: FileHandle) -> Result<&File, Errno> {
        self.files
            .get(&fh.0)
            .map(|open| &open.file)
            .ok_or(Errno::EBADF)
    }

    /// The open file `fh` if given, else any open file of `ino`.
    fn file_of(&self, ino: INodeNo, fh: Option<FileHandle>) -> Result<&File, Errno> {
        match fh {
            Some(fh) => self.file(fh),
            None => self
                .files
                .values()
                .find(|open| open.ino == ino)
                .map(|open| &open.file)
                .ok_or(Errno::ENOENT),
        }
    }

    fn folder(&self, fh: FileHandle) -> Result<&[Listed], Errno> {
        self.folders
            .get(&fh.0)
            .map(Vec::as_slice)
            .ok_or(Errno::EBADF)
    }

    fn close(&mut self, fh: FileHandle) {
        self.files.remove(&fh.0);
        self.folders.remove(&fh.0);
    }
}

/// Who made a request: the owner of what it creates.
#[derive(Clone, Copy)]
struct Owner {
    uid: u32,
    gid: u32,
}

impl Owner {
    fn of(req: &Request) -> Self {
        Owner {
            uid: req.uid(),
            gid: req.gid(),
        }
    }
}

/// Gives the new backing file at `real` the mode asked for (this process's umask must not
/// apply; the kernel applied the caller's) and the caller as owner.
fn adopt(real: &Path, mode: Option<u32>, owner: Owner) -> io::Result<()> {
    if let Some(mode) = mode {
        fs::set_permissions(real, Permissions::from_mode(mode & 0o7777))?;
    }
    std::os::unix::fs::lchown(real, Some(owner.uid), Some(owner.gid))
}

fn attr(ino: INodeNo, metadata: &Metadata) -> FileAttr {
    FileAttr {
        ino,
        size: metadata.size(),
        blocks: metadata.blocks(),
        atime: system_time(metadata.atime(), metadata.atime_nsec()),
        mtime: system_time(metadata.mtime(), metadata.mtime_nsec()),
        ctime: system_time(metadata.ctime(), metadata.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind: kind(metadata),
        perm: (metadata.mode() & 0o7777) as u16,
        nlink: metadata.nlink() as u32,
        uid: metadata.uid(),
        gid: metadata.gid(),
        rdev: metadata.rdev() as u32,
        blksize: metadata.blksize() as u32,
        flags: 0,
    }
}

fn kind(metadata: &Metadata) -> FileType {
    FileType::from_std(metadata.file_type()).unwrap_or(FileType::RegularFile)
}

fn system_time(seconds: i64, nanoseconds: i64) -> SystemTime {
    let since_epoch = Duration::from_secs(seconds.unsigned_abs());
    let time = if seconds >= 0 {
        UNIX_EPOCH + since_epoch
    } else {
        UNIX_EPOCH - since_epoch
    };
    time + Duration::from_nanos(nanoseconds.unsigned_abs())
}

fn timespec(time: Option<TimeOrNow>) -> TimeSpec {
    match time {
        None => TimeSpec::UTIME_OMIT,
        Some(TimeOrNow::Now) => TimeSpec::UTIME_NOW,
        Some(TimeOrNow::SpecificTime(time)) => match time.duration_since(UNIX_EPOCH) {
            Ok(since_epoch) => TimeSpec::from(since_epoch),
            Err(before_epoch) => -TimeSpec::from(before_epoch.duration()),
        },
    }
}

fn off_t(n: u64) -> Result<i64, Errno> {
    i64::try_from(n).map_err(|_| Errno::EINVAL)
}

fn sys(error: nix::errno::Errno) -> Errno {
    Errno::from_i32(error as i32)
}

impl Server {
    pub(crate) fn new(state: Arc<Mutex<State>>) -> Self {
        Server { state }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `op` on the state, unless the power is out: then fails with `EIO`.
    fn powered<T>(&self, op: impl FnOnce(&mut State) -> Result<T, Errno>) -> Result<T, Errno> {
        let mut state = self.lock();
        if state.powered_off {
            return Err(Errno::EIO);
        }
        op(&mut state)
    }
}

/// Sends an operation's result as the reply of its kind.
trait Answer<T> {
    fn answer(self, result: Result<T, Errno>);
}

macro_rules! answer {
    ($reply:ty, $value:ty, |$this:ident, $ok:pat_param| $send:expr) => {
        impl Answer<$value> for $reply {
            fn answer(self, result: Result<$value, Errno>) {
                let $this = self;
                match result {
                    Ok($ok) => $send,
                    Err(error) => $this.error(error),
                }
            }
        }
    };
}

answer!(ReplyEntry, FileAttr, |reply, attr| reply.entry(
    &TTL,
    &attr,
    Generation(0)
));
answer!(ReplyAttr, FileAttr, |reply, attr| reply.attr(&TTL, &attr));
answer!(ReplyEmpty, (), |reply, ()| reply.ok());
answer!(ReplyData, Vec<u8>, |reply, data| reply.data(&data));
answer!(ReplyWrite, u32, |reply, written| reply.written(written));
answer!(ReplyLseek, i64, |reply, offset| reply.offset(offset));
answer!(ReplyOpen, FileHandle, |reply, fh| reply
    .opened(fh, FopenFlags::empty()));
answer!(ReplyCreate, (FileAttr, FileHandle), |reply, (attr, fh)| {
    reply.created(&TTL, &attr, Generation(0), fh, FopenFlags::empty())
});
answer!(ReplyStatfs, Statvfs, |reply, stat| reply.statfs(
    stat.blocks(),
    stat.blocks_free(),
    stat.blocks_available(),
    stat.files(),
    stat.files_free(),
    stat.block_size() as u32,
    stat.name_max() as u32,
    stat.fragment_size() as u32,
));

/// Locks (`getlk`, `setlk`) are left out on purpose: the kernel then keeps POSIX and `flock`
/// locks itself, for all the processes that use this mount. Extended attributes are left out.
impl Filesystem for Server {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        reply.answer(self.powered(|state| state.lookup(parent, name)));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        reply.answer(self.powered(|state| state.getattr(ino, fh)));
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let change = AttrChange {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
        };
        reply.answer(self.powered(|state| state.setattr(ino, fh, change)));
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        reply.answer(self.powered(|state| state.readlink(ino)));
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let owner = Owner::of(req);
        reply.answer(self.powered(|state| state.mknod(owner, parent, name, mode, rdev)));
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let owner = Owner::of(req);
        reply.answer(self.powered(|state| state.mkdir(owner, parent, name, mode)));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply.answer(self.powered(|state| state.unlink(parent, name)));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply.answer(self.powered(|state| state.rmdir(parent, name)));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let owner = Owner::of(req);
        reply.answer(self.powered(|state| state.symlink(owner, parent, link_name, target)));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.answer(self.powered(|state| state.rename(parent, name, newparent, newname, flags)));
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.answer(self.powered(|state| state.link(ino, newparent, newname)));
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        reply.answer(self.powered(|state| state.open(ino, flags)));
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        reply.answer(self.powered(|state| state.read(fh, offset, size)));
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.answer(self.powered(|state| state.write(ino, fh, offset, data)));
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.answer(self.powered(|_| Ok(())));
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // Even without power: closing the backing file changes nothing on the disk.
        self.lock().handles.close(fh);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.answer(self.powered(|state| state.fsync(ino)));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.answer(self.powered(|state| state.opendir(ino)));
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.powered(|state| state.readdir(fh, offset, &mut reply)) {
            Ok(()) => reply.ok(),
            Err(error) => reply.error(error),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.lock().handles.close(fh);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.answer(self.powered(|state| state.fsyncdir(ino)));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.answer(self.powered(|state| state.statfs()));
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        reply.answer(self.powered(|state| state.access(ino, mask)));
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let owner = Owner::of(req);
        reply.answer(self.powered(|state| state.create(owner, parent, name, mode)));
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.answer(self.powered(|state| state.fallocate(ino, fh, offset, length, mode)));
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        reply.answer(self.powered(|state| state.lseek(fh, offset, whence)));
    }
}
