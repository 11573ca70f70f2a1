//! Injected disk faults: which operations fail, with which error, and how often they did.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

/// A fault of the disk: matching operations fail with `error` instead of being done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// Which operations fail.
    pub op: FaultOp,
    /// Only operations on files (or folders) whose name ends with this fail; "" matches all.
    pub file_suffix: String,
    /// The error the failing operations return.
    pub error: DiskError,
    /// How many matching operations are let through before the first one fails.
    pub after: usize,
    /// How many matching operations fail, after those let through (`None`: every one, until
    /// the faults are healed).
    pub times: Option<usize>,
}

/// The kinds of operation a [`Fault`] can make fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultOp {
    /// `write` of data, including pages written back from a shared mapping.
    Write,
    /// `fsync` or `fdatasync` of a file or of a folder (matched by the folder's name).
    Fsync,
    /// Making a name: create, mknod, mkdir, symlink, link, and rename (matched by the new name).
    Create,
    /// Any operation that changes the disk: all of the above, and truncation, `fallocate`,
    /// changes of mode, owner or times, unlink and rmdir.
    AnyChange,
}

/// The error a failing disk reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskError {
    /// `EIO`: the disk failed.
    Eio,
    /// `ENOSPC`: the disk is full.
    Enospc,
}

impl DiskError {
    fn errno(self) -> fuser::Errno {
        match self {
            DiskError::Eio => fuser::Errno::EIO,
            DiskError::Enospc => fuser::Errno::ENOSPC,
        }
    }
}

/// What an operation changes, as far as faults care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    Write,
    Fsync,
    Create,
    /// A change that only [`FaultOp::AnyChange`] matches.
    Other,
}

impl FaultOp {
    fn matches(self, change: Change) -> bool {
        matches!(
            (self, change),
            (FaultOp::AnyChange, _)
                | (FaultOp::Write, Change::Write)
                | (FaultOp::Fsync, Change::Fsync)
                | (FaultOp::Create, Change::Create)
        )
    }
}

/// The faults in force, with their counts.
#[derive(Debug, Default)]
pub(crate) struct FaultTable {
    active: Vec<ActiveFault>,
    hits: usize,
}

#[derive(Debug)]
struct ActiveFault {
    fault: Fault,
    let_through: usize,
    failed: usize,
}

impl FaultTable {
    pub(crate) fn inject(&mut self, fault: Fault) {
        self.active.push(ActiveFault {
            fault,
            let_through: 0,
            failed: 0,
        });
    }

    pub(crate) fn heal(&mut self) {
        self.active.clear();
    }

    pub(crate) fn hits(&self) -> usize {
        self.hits
    }

    /// Counts a `change` of the file `name` against the faults, and returns the error of the
    /// first fault that makes it fail.
    pub(crate) fn check(&mut self, change: Change, name: &OsStr) -> Result<(), fuser::Errno> {
        for active in &mut self.active {
            let fault = &active.fault;
            if !fault.op.matches(change) || !name.as_bytes().ends_with(fault.file_suffix.as_bytes())
            {
                continue;
            }
            if active.let_through < fault.after {
                active.let_through += 1;
                continue;
            }
            if fault.times.is_some_and(|times| active.failed >= times) {
                continue;
            }
            active.failed += 1;
            self.hits += 1;
            return Err(fault.error.errno());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(op: FaultOp, after: usize, times: Option<usize>) -> Fault {
        Fault {
            op,
            file_suffix: ".db-wal".to_owned(),
            error: DiskError::Enospc,
            after,
            times,
        }
    }

    #[test]
    fn a_fault_lets_after_operations_through_then_fails_times_operations() {
        let mut table = FaultTable::default();
        table.inject(fault(FaultOp::Write, 1, Some(2)));
        let wal = OsStr::new("x.db-wal");
        let results: Vec<bool> = (0..5)
            .map(|_| table.check(Change::Write, wal).is_ok())
            .collect();
        assert_eq!(results, [true, false, false, true, true]);
        assert_eq!(table.hits(), 2);
    }

    #[test]
    fn a_fault_matches_only_its_kind_of_operation_and_its_suffix() {
        let mut table = FaultTable::default();
        table.inject(fault(FaultOp::Fsync, 0, None));
        assert!(table.check(Change::Write, OsStr::new("x.db-wal")).is_ok());
        assert!(table.check(Change::Fsync, OsStr::new("x.db")).is_ok());
        assert_eq!(
            table.check(Change::Fsync, OsStr::new("x.db-wal")),
            Err(fuser::Errno::ENOSPC)
        );
        table.inject(fault(FaultOp::AnyChange, 0, None));
        assert!(table.check(Change::Other, OsStr::new("x.db-wal")).is_err());
        table.heal();
        assert!(table.check(Change::Fsync, OsStr::new("x.db-wal")).is_ok());
        assert_eq!(table.hits(), 2);
    }
}
