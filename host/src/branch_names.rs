//! How a queue names the branches and worktrees of its tasks: `PREFIX/QUEUE-ID/task-ID`, where
//! the queue's id is made once, by `host init` (or by the first worker of a queue made before
//! queues had one), and kept in the queue's settings. Task ids start at 1 in every queue, so
//! two queues on one repository (or a queue folder made again) would otherwise share
//! `host/task-1`, and one queue's worker would rename or remove the other's work.
//!
//! The prefix is `host` unless `[queue] branch_prefix` in `host.toml` says otherwise. Handlers
//! that make worktrees declare the setting `branchNamespace`, which the worker fills with
//! `PREFIX/QUEUE-ID`.

use std::hash::{BuildHasher, Hasher};

use queue::{Store, StoreError};

use crate::config::Config;

/// The handler setting the worker fills with the queue's branch namespace.
pub const NAMESPACE_SETTING: &str = "branchNamespace";

/// The prefix of branch names when `host.toml` sets none.
pub const DEFAULT_PREFIX: &str = "host";

/// The queue's id, if it has one yet (a queue made before queues had ids has none until a
/// worker or `host init` gives it one).
pub fn queue_id(store: &Store) -> Result<Option<String>, StoreError> {
    store.known_queue_id()
}

/// The queue's id, made and kept now if it has none; processes doing this at once all get the
/// one that was kept first.
pub fn ensure_queue_id(store: &Store) -> Result<String, StoreError> {
    store.queue_id(fresh_id)
}

/// Where the queue's task branches go, `PREFIX/QUEUE-ID`, giving the queue an id if it has none.
pub fn namespace(store: &Store, config: &Config) -> Result<String, StoreError> {
    let prefix = config.branch_prefix.as_deref().unwrap_or(DEFAULT_PREFIX);
    Ok(worktrees::namespace(prefix, &ensure_queue_id(store)?))
}

/// Eight hexadecimal digits, different in every process and at every call: the standard
/// library's hasher is seeded randomly per process, and the time and process id are mixed in.
fn fresh_id() -> String {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(now);
    hasher.write_u32(std::process::id());
    format!("{:08x}", hasher.finish() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_ids_are_eight_hex_digits_and_differ() {
        let (a, b) = (fresh_id(), fresh_id());
        assert_eq!(a.len(), 8);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
        assert_ne!(a, b);
    }
}
