//! When to leave the consumer group and join again because no partition came.
//!
//! tansu 0.6 (the development broker) has no session-timeout timer: a member is dropped
//! only when another member's request notices it missed its heartbeats. A consumer that
//! joins while the member of a process killed with kill -9 still holds its place can end up
//! with the group Stable, itself its only member, and no partition assigned, for good
//! (docs/events.md, "Restarts"). Leaving and joining again with a fresh member id fixes
//! that. The same check is harmless with a broker that has no such bug: a consumer with
//! no partition for that long is either in this state or one of more instances than
//! partitions, and the backoff bounds how often the latter rejoin.

use std::time::{Duration, Instant};

/// The longest wait between two rejoins of a consumer that stays without partitions.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Plain state machine (tested without a broker): fed "has partitions?" now and then, says
/// when to rejoin.
#[derive(Debug)]
pub struct RejoinWatchdog {
    after: Duration,
    backoff: Duration,
    unassigned_since: Option<Instant>,
}

impl RejoinWatchdog {
    /// Rejoin after `after` without partitions; `Duration::ZERO` = never.
    pub fn new(after: Duration) -> Self {
        RejoinWatchdog {
            after,
            backoff: after,
            unassigned_since: None,
        }
    }

    /// True when the consumer should leave and join again now. After a rejoin the clock
    /// starts over and the next wait is twice as long (up to 5 minutes), until partitions
    /// come.
    pub fn observe(&mut self, assigned: bool, now: Instant) -> bool {
        if self.after.is_zero() {
            return false;
        }
        if assigned {
            self.unassigned_since = None;
            self.backoff = self.after;
            return false;
        }
        let since = *self.unassigned_since.get_or_insert(now);
        if now.saturating_duration_since(since) < self.backoff {
            return false;
        }
        self.unassigned_since = Some(now);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF.max(self.after));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejoins_after_the_wait_then_backs_off_until_partitions_come() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut dog = RejoinWatchdog::new(s(12));
        assert!(!dog.observe(false, t0));
        assert!(!dog.observe(false, t0 + s(11)));
        assert!(dog.observe(false, t0 + s(12)));
        // Next after 24 s more, then 48 s.
        assert!(!dog.observe(false, t0 + s(35)));
        assert!(dog.observe(false, t0 + s(36)));
        assert!(!dog.observe(false, t0 + s(83)));
        assert!(dog.observe(false, t0 + s(84)));
        // Partitions came: back to the first wait.
        assert!(!dog.observe(true, t0 + s(90)));
        assert!(!dog.observe(false, t0 + s(100)));
        assert!(dog.observe(false, t0 + s(112)));
    }

    #[test]
    fn backoff_is_capped_and_zero_means_never() {
        let t0 = Instant::now();
        let mut dog = RejoinWatchdog::new(Duration::from_secs(200));
        assert!(!dog.observe(false, t0));
        assert!(dog.observe(false, t0 + Duration::from_secs(200)));
        // 400 s would be next; the cap makes it 300.
        assert!(!dog.observe(false, t0 + Duration::from_secs(499)));
        assert!(dog.observe(false, t0 + Duration::from_secs(500)));
        assert!(dog.observe(false, t0 + Duration::from_secs(800)));
        let mut never = RejoinWatchdog::new(Duration::ZERO);
        assert!(!never.observe(false, t0 + Duration::from_secs(10_000)));
    }
}
