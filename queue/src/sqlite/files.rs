//! What SQLite's files beside the database say about a queue that stopped uncleanly.

use std::path::Path;

/// Says what was lost when SQLite's index (`-shm`) records committed changes in a log (`-wal`)
/// that is gone or cut short: the queue stopped uncleanly and the log was deleted or cut since.
/// Opening now would silently drop those changes and give their ids out again. Read from the
/// index's header (SQLite's `WalIndexHdr`: `isInit` at byte 12, the page size at 14 and the last
/// valid frame `mxFrame` at 16, in the machine's byte order; the log's salts at 32), compared
/// with the log's own header (its salts at byte 16). An index that a process is just creating
/// is zeroed, and one older than the log (other salts) is rebuilt by SQLite: neither is a loss.
///
/// Judged only when no other process has the queue open: a connection closing at this moment
/// deletes the index and then the log (SQLite's last close), and a process that read the index
/// just before would find the log gone. So the judgment is dropped when the index read is no
/// longer the file at its path, or when another process holds SQLite's lock of an open
/// connection on it.
pub(super) fn lost_log(database: &Path) -> Option<String> {
    let name = database.file_name()?.to_string_lossy().into_owned();
    let open = |suffix: &str| {
        crate::os::reading_no_follow()
            .open(database.with_file_name(format!("{name}{suffix}")))
            .ok()
    };
    let first_bytes = |file: &mut std::fs::File, buf: &mut [u8]| -> Option<u64> {
        std::io::Read::read_exact(file, buf).ok()?;
        Some(file.metadata().ok()?.len())
    };
    let mut index_file = open("-shm")?;
    let mut index = [0u8; 48];
    first_bytes(&mut index_file, &mut index)?;
    let frames = u64::from(u32::from_ne_bytes(index[16..20].try_into().ok()?));
    if index[12] == 0 || frames == 0 {
        return None;
    }
    let page = match u16::from_ne_bytes(index[14..16].try_into().ok()?) {
        1 => 65_536,
        size => u64::from(size),
    };
    let mut log = [0u8; 32];
    let has = match open("-wal").and_then(|mut file| first_bytes(&mut file, &mut log)) {
        Some(_) if log[16..24] != index[32..40] => return None,
        Some(len) => len,
        None => 0,
    };
    // A log: a 32-byte header, then frames of a 24-byte header and a page each.
    let needed = 32 + frames * (24 + page);
    if has >= needed {
        return None;
    }
    // Looked at after the log: a closing connection deletes the index before the log.
    let still_there = std::fs::symlink_metadata(database.with_file_name(format!("{name}-shm")))
        .ok()
        .zip(index_file.metadata().ok())
        .is_some_and(|(now, read)| crate::os::file_id(&now) == crate::os::file_id(&read));
    if !still_there || crate::os::connected_elsewhere(&index_file) {
        return None;
    }
    Some(format!(
        "{name}-wal holds {has} bytes where {name}-shm records {frames} committed page(s) in \
         it ({needed} bytes): the log of committed changes was deleted or cut after the \
         queue stopped uncleanly, and what it held is lost"
    ))
}
