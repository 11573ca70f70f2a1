//! The inode table: which path under the backing folder each inode number of the mount names.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use fuser::{Errno, INodeNo};

/// A backing file's identity: its device and inode numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct BackingId {
    dev: u64,
    ino: u64,
}

impl BackingId {
    pub(crate) fn of(metadata: &Metadata) -> Self {
        BackingId {
            dev: metadata.dev(),
            ino: metadata.ino(),
        }
    }
}

/// Maps inode numbers of the mount to backing files and their paths (relative to the backing
/// folder; the root is the empty path). A backing file keeps its inode number while it has a
/// name, so hard links share one; an inode whose last name is gone has no path.
#[derive(Debug)]
pub(crate) struct InodeTable {
    paths: HashMap<u64, PathBuf>,
    by_backing: HashMap<BackingId, u64>,
    next: u64,
}

impl InodeTable {
    pub(crate) fn new(root: BackingId) -> Self {
        let root_ino = INodeNo::ROOT.0;
        InodeTable {
            paths: HashMap::from([(root_ino, PathBuf::new())]),
            by_backing: HashMap::from([(root, root_ino)]),
            next: root_ino + 1,
        }
    }

    /// The path of `ino`, or `ENOENT` if it has none (any more).
    pub(crate) fn path(&self, ino: INodeNo) -> Result<&Path, Errno> {
        self.paths
            .get(&ino.0)
            .map(PathBuf::as_path)
            .ok_or(Errno::ENOENT)
    }

    /// The path of the entry `name` in the folder `parent`.
    pub(crate) fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(self.path(parent)?.join(name))
    }

    /// The file name of `ino` (empty for the root or an inode without a name).
    pub(crate) fn name(&self, ino: INodeNo) -> &OsStr {
        self.path(ino)
            .ok()
            .and_then(Path::file_name)
            .unwrap_or_default()
    }

    /// The inode number of the backing file `id`, if it has one.
    pub(crate) fn ino(&self, id: BackingId) -> Option<INodeNo> {
        self.by_backing.get(&id).copied().map(INodeNo)
    }

    /// The inode number of the backing file `id` found at `path`, new if it had none.
    pub(crate) fn remember(&mut self, id: BackingId, path: PathBuf) -> INodeNo {
        let ino = *self.by_backing.entry(id).or_insert_with(|| {
            self.next += 1;
            self.next - 1
        });
        self.paths.insert(ino, path);
        INodeNo(ino)
    }

    /// The backing file `id` lost its last name: its inode number keeps no path, and a new
    /// file that reuses its backing inode number gets a new one.
    pub(crate) fn forget(&mut self, id: BackingId) -> Option<INodeNo> {
        let ino = self.by_backing.remove(&id)?;
        self.paths.remove(&ino);
        Some(INodeNo(ino))
    }

    /// `from` was renamed to `to`: it and everything under it have new paths.
    pub(crate) fn renamed(&mut self, from: &Path, to: &Path) {
        for path in self.paths.values_mut() {
            if let Ok(rest) = path.strip_prefix(from) {
                *path = if rest.as_os_str().is_empty() {
                    to.to_owned()
                } else {
                    to.join(rest)
                };
            }
        }
    }

    /// The inodes whose path is directly in the folder `dir`.
    pub(crate) fn children_of<'a>(&'a self, dir: &'a Path) -> impl Iterator<Item = INodeNo> + 'a {
        self.paths
            .iter()
            .filter(move |(_, path)| path.parent() == Some(dir))
            .map(|(&ino, _)| INodeNo(ino))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ino: u64) -> BackingId {
        BackingId { dev: 1, ino }
    }

    #[test]
    fn a_renamed_folder_moves_everything_under_it_and_nothing_else() {
        let mut table = InodeTable::new(id(100));
        let dir = table.remember(id(101), "a".into());
        let file = table.remember(id(102), "a/f".into());
        let sibling = table.remember(id(103), "ab".into());
        table.renamed(Path::new("a"), Path::new("b/c"));
        assert_eq!(table.path(dir), Ok(Path::new("b/c")));
        assert_eq!(table.path(file), Ok(Path::new("b/c/f")));
        assert_eq!(table.path(sibling), Ok(Path::new("ab")));
        assert_eq!(table.path(INodeNo::ROOT), Ok(Path::new("")));
    }

    #[test]
    fn a_forgotten_backing_file_has_no_path_and_a_reused_one_gets_a_new_number() {
        let mut table = InodeTable::new(id(100));
        let first = table.remember(id(7), "x".into());
        assert_eq!(table.remember(id(7), "y".into()), first);
        assert_eq!(table.forget(id(7)), Some(first));
        assert_eq!(table.path(first), Err(Errno::ENOENT));
        assert_ne!(table.remember(id(7), "x".into()), first);
    }

    #[test]
    fn children_of_a_folder_are_its_direct_entries() {
        let mut table = InodeTable::new(id(100));
        let top = table.remember(id(1), "f".into());
        let dir = table.remember(id(2), "d".into());
        table.remember(id(3), "d/g".into());
        let mut children: Vec<_> = table.children_of(Path::new("")).collect();
        children.sort_by_key(|ino| ino.0);
        assert_eq!(children, [top, dir]);
    }
}
