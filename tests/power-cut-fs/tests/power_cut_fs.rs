//! The power-cut file system mounted for real: what a cut keeps and drops, shared mappings and
//! locks across processes, SQLite in WAL mode, and injected faults. Each test mounts its own
//! temporary folders; without root or /dev/fuse it says `SKIPPED:` and returns.

mod support;

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use power_cut_fs::{DiskError, Fault, FaultOp};
use rusqlite::ErrorCode;
use support::{
    TestMount, count, create_table, insert, integrity, map_shared, open_db, posix_lock, run_child,
};

fn errno(error: std::io::Error) -> Option<i32> {
    error.raw_os_error()
}

#[test]
fn synced_data_survives_a_cut_and_unsynced_data_is_dropped() {
    let Some(mut mount) = TestMount::new() else {
        return;
    };
    let durable: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
    let mut data = File::create(mount.on_mount("data.bin")).unwrap();
    data.write_all(&durable).unwrap();
    data.sync_all().unwrap();
    data.write_all_at(b"NOT DURABLE", 100).unwrap();
    data.write_all(&[b'z'; 4096]).unwrap();
    assert_eq!(
        fs::read(mount.on_mount("data.bin")).unwrap().len(),
        8192 + 4096
    );
    let mut appended = File::create(mount.on_mount("appended.txt")).unwrap();
    appended.write_all(b"first").unwrap();
    appended.sync_data().unwrap();
    appended.write_all(b" second").unwrap();
    appended.sync_all().unwrap();

    let report = mount.fs().cut().unwrap();
    assert_eq!(report.files_reverted, 1, "{report:?}");
    assert_eq!(report.bytes_restored, 11);
    assert_eq!(report.bytes_truncated, 4096);
    assert!(report.files_removed.is_empty(), "{report:?}");
    let no_power = fs::read(mount.on_mount("data.bin")).unwrap_err();
    assert_eq!(errno(no_power), Some(libc::EIO));
    assert_eq!(errno(data.write(b"more").unwrap_err()), Some(libc::EIO));
    drop((data, appended));

    mount.unmount();
    assert_eq!(fs::read(mount.in_backing("data.bin")).unwrap(), durable);
    assert_eq!(
        fs::read(mount.in_backing("appended.txt")).unwrap(),
        b"first second"
    );
    mount.remount();
    assert_eq!(fs::read(mount.on_mount("data.bin")).unwrap(), durable);

    // A file found at the mount is durable as it was found: a shrink and an overwrite of it are
    // undone.
    let data = File::options()
        .write(true)
        .open(mount.on_mount("data.bin"))
        .unwrap();
    data.set_len(10).unwrap();
    data.write_all_at(b"changed", 0).unwrap();
    let report = mount.fs().cut().unwrap();
    assert_eq!(report.bytes_restored, 8182 + 7, "{report:?}");
    drop(data);
    mount.unmount();
    assert_eq!(fs::read(mount.in_backing("data.bin")).unwrap(), durable);
}

#[test]
fn a_created_file_needs_a_sync_of_it_or_its_folder_to_keep_its_name() {
    let Some(mut mount) = TestMount::new() else {
        return;
    };
    fs::write(mount.on_mount("never-synced.txt"), b"lost").unwrap();
    let mut synced = File::create(mount.on_mount("synced.txt")).unwrap();
    synced.write_all(b"kept").unwrap();
    synced.sync_all().unwrap();
    drop(synced);
    fs::create_dir(mount.on_mount("folder")).unwrap();
    fs::write(mount.on_mount("folder/in-synced-folder.txt"), b"lost").unwrap();
    File::open(mount.on_mount("folder"))
        .unwrap()
        .sync_all()
        .unwrap();
    fs::write(mount.on_mount("tmp"), b"lost").unwrap();
    fs::rename(mount.on_mount("tmp"), mount.on_mount("renamed.txt")).unwrap();

    let report = mount.fs().cut().unwrap();
    assert_eq!(
        report.files_removed,
        [PathBuf::from("never-synced.txt")],
        "{report:?}"
    );
    mount.unmount();
    assert!(!mount.in_backing("never-synced.txt").exists());
    assert_eq!(fs::read(mount.in_backing("synced.txt")).unwrap(), b"kept");
    // The name became durable, the data did not: the file is there, empty.
    assert_eq!(
        fs::read(mount.in_backing("folder/in-synced-folder.txt")).unwrap(),
        b""
    );
    assert_eq!(fs::read(mount.in_backing("renamed.txt")).unwrap(), b"");
    assert!(!mount.in_backing("tmp").exists());
}

#[test]
fn ordinary_operations_pass_through_to_the_backing_folder() {
    let Some(mount) = TestMount::new() else {
        return;
    };
    let at = |name: &str| mount.on_mount(name);
    fs::create_dir_all(at("a/b")).unwrap();
    fs::write(at("a/b/f"), b"hello world").unwrap();
    fs::set_permissions(at("a/b/f"), fs::Permissions::from_mode(0o640)).unwrap();
    symlink("b/f", at("a/link")).unwrap();
    fs::hard_link(at("a/b/f"), at("a/hard")).unwrap();
    assert_eq!(fs::read_link(at("a/link")).unwrap(), Path::new("b/f"));
    assert_eq!(fs::read(at("a/link")).unwrap(), b"hello world");
    let file = fs::metadata(at("a/b/f")).unwrap();
    let hard = fs::metadata(at("a/hard")).unwrap();
    assert_eq!(
        (hard.ino(), hard.nlink(), hard.mode() & 0o777),
        (file.ino(), 2, 0o640)
    );

    fs::rename(at("a"), at("c")).unwrap();
    let exists = nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        &at("c/hard"),
        nix::fcntl::AT_FDCWD,
        &at("c/link"),
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    );
    assert_eq!(exists, Err(nix::errno::Errno::EEXIST));
    let mut names: Vec<_> = fs::read_dir(at("c"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["b", "hard", "link"]);

    let open = File::options()
        .read(true)
        .write(true)
        .open(at("c/b/f"))
        .unwrap();
    let punch = nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
        | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE;
    nix::fcntl::fallocate(&open, punch, 0, 5).unwrap();
    open.set_len(8).unwrap();
    assert_eq!(fs::read(at("c/hard")).unwrap(), b"\0\0\0\0\0 wo");
    // A file open without a name any more still answers.
    fs::remove_file(at("c/b/f")).unwrap();
    fs::remove_file(at("c/hard")).unwrap();
    assert_eq!(open.metadata().unwrap().nlink(), 0);
    open.write_all_at(b"!", 8).unwrap();
    open.set_len(10).unwrap();
    assert_eq!(open.metadata().unwrap().len(), 10);
    drop(open);

    fs::remove_file(at("c/link")).unwrap();
    fs::remove_dir(at("c/b")).unwrap();
    fs::remove_dir(at("c")).unwrap();
    assert_eq!(fs::read_dir(mount.in_backing("")).unwrap().count(), 0);
    nix::sys::statvfs::statvfs(&at("")).unwrap();
}

#[test]
fn processes_sharing_a_mapping_see_each_others_writes() {
    let Some(mount) = TestMount::new() else {
        return;
    };
    let path = mount.on_mount("shared.bin");
    let file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    file.set_len(4096).unwrap();
    let mut map = map_shared(&file);
    map[..6].copy_from_slice(b"parent");

    assert_eq!(run_child("mmap", &path), ["saw parent"]);
    assert_eq!(&map[100..106], b"child!");
    // Pages written back from a mapping reach the disk as writes.
    map.flush().unwrap();
    let on_disk = fs::read(mount.in_backing("shared.bin")).unwrap();
    assert_eq!(
        (&on_disk[..6], &on_disk[100..106]),
        (&b"parent"[..], &b"child!"[..])
    );
}

#[test]
fn posix_locks_hold_across_processes_and_flocks_across_opens() {
    let Some(mount) = TestMount::new() else {
        return;
    };
    let path = mount.on_mount("lock");
    let file = File::create(&path).unwrap();
    posix_lock(&file, libc::F_WRLCK).unwrap();
    assert_eq!(run_child("lock", &path), ["byte 0 busy"]);
    posix_lock(&file, libc::F_UNLCK).unwrap();
    assert_eq!(run_child("lock", &path), ["byte 0 locked"]);

    let first = File::open(&path).unwrap();
    let second = File::open(&path).unwrap();
    first.lock().unwrap();
    assert!(matches!(
        second.try_lock(),
        Err(std::fs::TryLockError::WouldBlock)
    ));
    first.unlock().unwrap();
    second.try_lock().unwrap();
}

#[test]
fn sqlite_with_full_sync_keeps_every_committed_row_through_a_cut() {
    let Some(mut mount) = TestMount::new() else {
        return;
    };
    let path = mount.on_mount("queue.db");
    let first = open_db(&path, "FULL");
    create_table(&first);
    let second = open_db(&path, "FULL");
    for round in 0..40 {
        insert(&first, "first").unwrap();
        insert(&second, "second").unwrap();
        if round == 20 {
            // Copies the log into the database file, which then changes in place.
            first
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .unwrap();
        }
    }
    assert_eq!((count(&first), count(&second)), (80, 80));
    assert_eq!(run_child("sqlite", &path), ["saw 80 rows, wrote 20"]);
    assert_eq!(count(&second), 100);
    // Rows of a transaction still open at the cut were never committed.
    second.execute_batch("BEGIN").unwrap();
    for _ in 0..200 {
        insert(&second, "uncommitted").unwrap();
    }

    let report = mount.fs().cut().unwrap();
    eprintln!("cut with every commit synced: {report:?}");
    drop((first, second));
    mount.remount();
    let reopened = open_db(&path, "FULL");
    assert_eq!(integrity(&reopened), "ok");
    assert_eq!(count(&reopened), 100);
}

#[test]
fn sqlite_without_sync_loses_rows_at_a_cut_but_stays_intact() {
    let Some(mut mount) = TestMount::new() else {
        return;
    };
    let path = mount.on_mount("queue.db");
    let db = open_db(&path, "FULL");
    create_table(&db);
    db.pragma_update(None, "synchronous", "OFF").unwrap();
    for _ in 0..50 {
        insert(&db, "unsynced").unwrap();
    }
    assert_eq!(count(&db), 50);

    let report = mount.fs().cut().unwrap();
    assert!(report.bytes_truncated > 0, "{report:?}");
    drop(db);
    mount.remount();
    let reopened = open_db(&path, "FULL");
    assert_eq!(integrity(&reopened), "ok");
    let left = count(&reopened);
    assert!(left < 50, "all {left} rows written without a sync survived");
}

fn fault(op: FaultOp, file_suffix: &str, error: DiskError) -> Fault {
    Fault {
        op,
        file_suffix: file_suffix.to_owned(),
        error,
        after: 0,
        times: None,
    }
}

#[test]
fn an_enospc_fault_fails_writes_to_its_files_until_healed() {
    let Some(mount) = TestMount::new() else {
        return;
    };
    let full = fault(FaultOp::Write, ".db-wal", DiskError::Enospc);
    mount.fs().inject(full);
    let mut wal = File::create(mount.on_mount("x.db-wal")).unwrap();
    assert_eq!(
        errno(wal.write_all(b"frame").unwrap_err()),
        Some(libc::ENOSPC)
    );
    fs::write(mount.on_mount("x.db"), b"other files take writes").unwrap();
    assert_eq!(mount.fs().faults_hit(), 1);

    mount.fs().heal();
    wal.write_all(b"frame").unwrap();
    assert_eq!(fs::read(mount.on_mount("x.db-wal")).unwrap(), b"frame");
    assert_eq!(mount.fs().faults_hit(), 1);
}

#[test]
fn an_fsync_fault_fails_sync_all_with_eio_after_and_for_its_counts() {
    let Some(mount) = TestMount::new() else {
        return;
    };
    mount.fs().inject(Fault {
        after: 1,
        times: Some(1),
        ..fault(FaultOp::Fsync, "data.bin", DiskError::Eio)
    });
    let mut file = File::create(mount.on_mount("data.bin")).unwrap();
    file.write_all(b"data").unwrap();
    file.sync_all().unwrap();
    assert_eq!(errno(file.sync_all().unwrap_err()), Some(libc::EIO));
    file.sync_all().unwrap();
    assert_eq!(mount.fs().faults_hit(), 1);
}

#[test]
fn sqlite_reports_a_full_disk_and_works_again_once_healed() {
    let Some(mount) = TestMount::new() else {
        return;
    };
    let db = open_db(&mount.on_mount("queue.db"), "FULL");
    create_table(&db);
    insert(&db, "before").unwrap();
    mount
        .fs()
        .inject(fault(FaultOp::Write, ".db-wal", DiskError::Enospc));
    let error = insert(&db, "while full").unwrap_err();
    assert_eq!(
        error.sqlite_error_code(),
        Some(ErrorCode::DiskFull),
        "{error}"
    );
    assert!(mount.fs().faults_hit() > 0);

    mount.fs().heal();
    insert(&db, "after").unwrap();
    assert_eq!(count(&db), 2);
    assert_eq!(integrity(&db), "ok");
}
