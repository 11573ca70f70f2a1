//! What is not durable yet: per changed file, its durable size, the bytes its changes
//! overwrote, and whether its name is durable; and how the cut undoes the rest.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use fuser::INodeNo;

use crate::inodes::{BackingId, InodeTable};

/// What a cut dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CutReport {
    /// How many files had their data or size put back to what their last sync made durable.
    pub files_reverted: usize,
    /// Bytes of durable data written back over changes that were not durable.
    pub bytes_restored: u64,
    /// Bytes cut off the ends of files, beyond their durable sizes.
    pub bytes_truncated: u64,
    /// Files created since the mount whose names were never made durable, now removed (paths
    /// relative to the backing folder).
    pub files_removed: Vec<PathBuf>,
}

/// The files changed since their last sync, by inode number.
#[derive(Debug, Default)]
pub(crate) struct DirtyFiles {
    files: HashMap<u64, DirtyFile>,
}

#[derive(Debug)]
struct DirtyFile {
    /// The backing file, open for reading and writing, to read what changes overwrite and to
    /// revert it at the cut wherever it has moved.
    file: File,
    durable_size: u64,
    /// The bytes that changes overwrote below the durable size, oldest first.
    undo: Vec<Overwritten>,
    name_durable: bool,
}

#[derive(Debug)]
struct Overwritten {
    offset: u64,
    bytes: Vec<u8>,
}

impl DirtyFiles {
    /// `file` (open for reading and writing) was just created as `ino`: it has no durable
    /// name and nothing of it is durable.
    pub(crate) fn created(&mut self, ino: INodeNo, file: File) {
        let dirty = DirtyFile {
            file,
            durable_size: 0,
            undo: Vec::new(),
            name_durable: false,
        };
        self.files.insert(ino.0, dirty);
    }

    /// The bytes `start..end` of `ino`, open as `file` (for reading and writing), are about to
    /// change, or its size is (then `start` is the new size and `end` the old one, or both the
    /// new size when it grows). Keeps what the change overwrites below the durable size.
    pub(crate) fn before_change(
        &mut self,
        ino: INodeNo,
        file: &File,
        start: u64,
        end: u64,
    ) -> io::Result<()> {
        let dirty = match self.files.entry(ino.0) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => entry.insert(DirtyFile {
                durable_size: file.metadata()?.len(),
                file: file.try_clone()?,
                undo: Vec::new(),
                name_durable: true,
            }),
        };
        let end = end.min(dirty.durable_size);
        if start < end {
            let bytes = read_at(file, start, end - start)?;
            if !bytes.is_empty() {
                dirty.undo.push(Overwritten {
                    offset: start,
                    bytes,
                });
            }
        }
        Ok(())
    }

    /// `ino` was synced: all of it, and its name, are durable.
    pub(crate) fn synced(&mut self, ino: INodeNo) {
        self.files.remove(&ino.0);
    }

    /// The name of `ino` is durable (its folder was synced, or it was renamed or linked).
    pub(crate) fn name_made_durable(&mut self, ino: INodeNo) {
        if let Some(dirty) = self.files.get_mut(&ino.0) {
            dirty.name_durable = true;
        }
    }

    /// `ino` lost its last name: at a cut it is gone anyway, so nothing of it is undone.
    pub(crate) fn forget(&mut self, ino: INodeNo) {
        self.files.remove(&ino.0);
    }

    /// Undoes in the backing folder every change that is not durable, and forgets them. Every
    /// file is tried; the first error is returned after that.
    pub(crate) fn cut(&mut self, inodes: &InodeTable, backing: &Path) -> io::Result<CutReport> {
        let mut report = CutReport::default();
        let mut first_error = None;
        for (ino, dirty) in self.files.drain() {
            let path = inodes.path(INodeNo(ino)).ok();
            let result = match path {
                Some(path) if !dirty.name_durable => {
                    remove_created(&dirty.file, &backing.join(path)).map(|removed| {
                        if removed {
                            report.files_removed.push(path.to_owned());
                        }
                    })
                }
                _ => dirty.revert(&mut report),
            };
            if let Err(error) = result {
                first_error.get_or_insert(error);
            }
        }
        report.files_removed.sort();
        first_error.map_or(Ok(report), Err)
    }
}

impl DirtyFile {
    fn revert(&self, report: &mut CutReport) -> io::Result<()> {
        let mut restored = 0;
        for overwritten in self.undo.iter().rev() {
            self.file
                .write_all_at(&overwritten.bytes, overwritten.offset)?;
            restored += overwritten.bytes.len() as u64;
        }
        let size = self.file.metadata()?.len();
        self.file.set_len(self.durable_size)?;
        let truncated = size.saturating_sub(self.durable_size);
        if restored > 0 || truncated > 0 {
            report.files_reverted += 1;
            report.bytes_restored += restored;
            report.bytes_truncated += truncated;
        }
        Ok(())
    }
}

/// Removes the created file `file` at `path`, if that is still its name. Says if it did.
fn remove_created(file: &File, path: &Path) -> io::Result<bool> {
    let same_file = match fs::symlink_metadata(path) {
        Ok(found) => BackingId::of(&found) == BackingId::of(&file.metadata()?),
        Err(error) if error.kind() == io::ErrorKind::NotFound => false,
        Err(error) => return Err(error),
    };
    if same_file {
        fs::remove_file(path)?;
    }
    Ok(same_file)
}

/// Reads up to `len` bytes of `file` at `offset`: fewer only at its end.
pub(crate) fn read_at(file: &File, offset: u64, len: u64) -> io::Result<Vec<u8>> {
    let mut bytes = vec![0; usize::try_from(len).map_err(io::Error::other)?];
    let mut filled = 0;
    while filled < bytes.len() {
        match file.read_at(&mut bytes[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    bytes.truncate(filled);
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn backing_with(name: &str, content: &[u8]) -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(name), content).unwrap();
        let file = File::options()
            .read(true)
            .write(true)
            .open(dir.path().join(name))
            .unwrap();
        (dir, file)
    }

    fn table_with(dir: &Path, name: &str) -> (InodeTable, INodeNo) {
        let mut table = InodeTable::new(BackingId::of(&fs::metadata(dir).unwrap()));
        let metadata = fs::metadata(dir.join(name)).unwrap();
        let ino = table.remember(BackingId::of(&metadata), name.into());
        (table, ino)
    }

    #[test]
    fn the_cut_reverts_overwrites_newest_first_and_truncates_to_the_durable_size() {
        let (dir, file) = backing_with("f", b"0123456789");
        let (table, ino) = table_with(dir.path(), "f");
        let mut dirty = DirtyFiles::default();
        dirty.before_change(ino, &file, 2, 5).unwrap();
        file.write_all_at(b"abc", 2).unwrap();
        dirty.before_change(ino, &file, 3, 10).unwrap(); // shrinks to 3
        file.set_len(3).unwrap();
        dirty.before_change(ino, &file, 8, 14).unwrap(); // beyond the current end
        file.write_all_at(b"XXXXXX", 8).unwrap();
        let report = dirty.cut(&table, dir.path()).unwrap();
        assert_eq!(fs::read(dir.path().join("f")).unwrap(), b"0123456789");
        assert_eq!(report.files_reverted, 1);
        assert_eq!(report.bytes_restored, 3 + 7);
        assert_eq!(report.bytes_truncated, 4);
    }

    #[test]
    fn a_synced_file_is_left_alone_and_an_unsynced_created_one_is_removed() {
        let (dir, file) = backing_with("f", b"old");
        let (mut table, ino) = table_with(dir.path(), "f");
        let mut dirty = DirtyFiles::default();
        dirty.before_change(ino, &file, 0, 3).unwrap();
        file.write_all_at(b"new!", 0).unwrap();
        dirty.synced(ino);
        fs::write(dir.path().join("g"), b"created").unwrap();
        let created = File::options()
            .read(true)
            .write(true)
            .open(dir.path().join("g"))
            .unwrap();
        let created_ino = table.remember(BackingId::of(&created.metadata().unwrap()), "g".into());
        dirty.created(created_ino, created);
        let report = dirty.cut(&table, dir.path()).unwrap();
        assert_eq!(fs::read(dir.path().join("f")).unwrap(), b"new!");
        assert!(!dir.path().join("g").exists());
        assert_eq!(report.files_removed, [PathBuf::from("g")]);
        assert_eq!(report.files_reverted, 0);
    }

    #[test]
    fn a_created_file_with_a_durable_name_is_emptied_not_removed() {
        let (dir, file) = backing_with("g", b"");
        let (table, ino) = table_with(dir.path(), "g");
        let mut dirty = DirtyFiles::default();
        dirty.created(ino, file.try_clone().unwrap());
        file.write_all_at(b"data", 0).unwrap();
        dirty.name_made_durable(ino);
        let report = dirty.cut(&table, dir.path()).unwrap();
        assert_eq!(fs::metadata(dir.path().join("g")).unwrap().size(), 0);
        assert_eq!(report.bytes_truncated, 4);
        assert!(report.files_removed.is_empty());
    }
}
