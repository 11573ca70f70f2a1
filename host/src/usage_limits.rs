//! Usage limits: a subscription CLI that stops at its account's usage window (Claude's five-hour
//! window, Codex's, Gemini's quota) fails every task the same way until the window resets, so
//! the worker that meets one records it in the queue, and every worker of that role claims
//! nothing until then. Roles that name it in their `fallback` claim its task types meanwhile.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use queue::{QueueStore, StoreError, UsageLimit};

/// How stale a worker's view of the queue's usage limits may get: a worker of a limited role on
/// another machine may start one more task in this time, which meets the limit and is snoozed
/// with its attempt not spent.
const REFRESH: Duration = Duration::from_secs(2);

/// What one worker knows of the usage limits that concern it: its own role's, and those of the
/// roles it stands in for.
pub struct LimitWatch {
    role: String,
    /// The roles whose `fallback` names this worker's role.
    stands_in_for: Vec<String>,
    known: Mutex<Known>,
}

struct Known {
    limits: Vec<UsageLimit>,
    read_at: Option<Instant>,
}

impl LimitWatch {
    /// The watch of a worker of `role`, standing in for the roles in `stands_in_for`.
    pub fn new(role: &str, stands_in_for: Vec<String>) -> LimitWatch {
        LimitWatch {
            role: role.to_string(),
            stands_in_for,
            known: Mutex::new(Known {
                limits: Vec::new(),
                read_at: None,
            }),
        }
    }

    /// Reads the queue's usage limits again unless they were read less than [`REFRESH`] ago.
    pub fn refresh(&self, store: &dyn QueueStore) -> Result<(), StoreError> {
        let due = self
            .known()
            .read_at
            .is_none_or(|at| at.elapsed() >= REFRESH);
        if due {
            // Tried again after REFRESH, not at once: a failing read is said once per try.
            self.known().read_at = Some(Instant::now());
            let limits = store.usage_limits()?;
            self.known().limits = limits;
        }
        Ok(())
    }

    /// The limit this worker's role is held by at `now`, if any.
    pub fn holding(&self, now: Timestamp) -> Option<UsageLimit> {
        self.known()
            .limits
            .iter()
            .find(|limit| limit.role == self.role && limit.until > now)
            .cloned()
    }

    /// The task types of the roles this worker stands in for that are held by a limit at
    /// `now`.
    pub fn standing_in_for(&self, now: Timestamp) -> Vec<String> {
        let mut types: Vec<String> = self
            .known()
            .limits
            .iter()
            .filter(|limit| limit.until > now && self.stands_in_for.contains(&limit.role))
            .flat_map(|limit| limit.types.iter().cloned())
            .collect();
        types.sort();
        types.dedup();
        types
    }

    /// Records a limit this worker met, here at once and in the queue for the role's other
    /// workers; answers whether it is news (no limit known of the role lasts as long), so that
    /// slots meeting the same limit together say it once.
    pub fn met(&self, store: &dyn QueueStore, limit: UsageLimit) -> Result<bool, StoreError> {
        {
            let mut known = self.known();
            let news = !known
                .limits
                .iter()
                .any(|kept| kept.role == limit.role && kept.until >= limit.until);
            if !news {
                return Ok(false);
            }
            known.limits.retain(|kept| kept.role != limit.role);
            known.limits.push(limit.clone());
        }
        store.set_usage_limit(&limit).map(|()| true)
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The limits in force at `now`, for `host status` and the dashboard.
pub fn in_force(store: &dyn QueueStore, now: Timestamp) -> Result<Vec<UsageLimit>, StoreError> {
    let mut limits: Vec<UsageLimit> = store
        .usage_limits()?
        .into_iter()
        .filter(|limit| limit.until > now)
        .collect();
    limits.sort_by(|a, b| a.role.cmp(&b.role));
    Ok(limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(role: &str, types: &[&str], until: Timestamp) -> UsageLimit {
        UsageLimit {
            role: role.into(),
            types: types.iter().map(|t| t.to_string()).collect(),
            until,
            reason: "limit".into(),
            task: "1".into(),
            worker: "w".into(),
        }
    }

    #[test]
    fn a_role_is_held_until_its_limit_resets_and_its_fallback_takes_its_types_meanwhile() {
        let now = Timestamp::now();
        let later = now + jiff::SignedDuration::from_secs(3600);
        let claude = LimitWatch::new("claude", Vec::new());
        let codex = LimitWatch::new("codex", vec!["claude".into()]);
        for watch in [&claude, &codex] {
            watch.known().limits = vec![
                limit("claude", &["write", "fix"], later),
                limit("gemini", &["review"], later),
            ];
        }
        assert!(claude.holding(now).is_some());
        assert!(claude.holding(later).is_none(), "reset at `until`");
        assert!(codex.holding(now).is_none());
        assert_eq!(codex.standing_in_for(now), ["fix", "write"]);
        assert!(codex.standing_in_for(later).is_empty());
        assert!(claude.standing_in_for(now).is_empty());
    }
}
