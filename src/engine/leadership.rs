//! Whether this instance holds the supervisor lease, as of its last renewal: one shared
//! value that the renewal timer writes and the leader-only jobs (expiry, sweep, scheduled
//! reconciliation) read between their batches, so that a job stops when the lease is lost
//! instead of running on after another instance took over.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use crate::engine::now_ms;

#[derive(Clone, Default)]
pub struct Leadership {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// The fencing token of the lease held; 0 when none is.
    token: AtomicI64,
    /// Until when (ms since the epoch) the lease is held for sure.
    valid_until_ms: AtomicI64,
}

impl Leadership {
    /// Records the answer to a renewal sent at `sent_at_ms`. Redis counts the lease from
    /// when it ran the script, after the request left; counting from the send, less a
    /// tenth for clock drift, keeps this side's deadline before Redis' own.
    pub fn renewed(&self, token: Option<i64>, sent_at_ms: i64, lease_ms: u64) {
        match token {
            Some(token) => {
                let lease_ms = i64::try_from(lease_ms).unwrap_or(i64::MAX);
                let until = sent_at_ms.saturating_add(lease_ms - lease_ms / 10);
                // Deadline first: a reader that sees the new token sees its deadline too.
                self.inner.valid_until_ms.store(until, Ordering::SeqCst);
                self.inner.token.store(token, Ordering::SeqCst);
            }
            None => self.lost(),
        }
    }

    /// The lease is gone (renewal refused or failed, shutdown).
    pub fn lost(&self) {
        self.inner.token.store(0, Ordering::SeqCst);
        self.inner.valid_until_ms.store(0, Ordering::SeqCst);
    }

    /// The token of the lease held now, if one is (and has not run out since its last
    /// renewal).
    pub fn current(&self) -> Option<i64> {
        let token = self.inner.token.load(Ordering::SeqCst);
        (token != 0 && now_ms() < self.inner.valid_until_ms.load(Ordering::SeqCst)).then_some(token)
    }

    /// The token last recorded, even if its deadline has passed (0: none): a renewal that
    /// answers another token is a new lease, whose fences must be raised first.
    pub fn last_token(&self) -> i64 {
        self.inner.token.load(Ordering::SeqCst)
    }

    /// Whether the lease that `token` names is still held: what a job asks between batches.
    pub fn holds(&self, token: i64) -> bool {
        self.current() == Some(token)
    }
}

/// What a leader-only job checks between its batches: the lease it started under.
#[derive(Clone)]
pub struct LeaseGuard {
    pub leadership: Leadership,
    pub token: i64,
}

impl LeaseGuard {
    pub fn holds(&self) -> bool {
        self.leadership.holds(self.token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_held_until_its_local_deadline() {
        let l = Leadership::default();
        assert_eq!(l.current(), None);
        l.renewed(Some(7), now_ms(), 10_000);
        assert_eq!(l.current(), Some(7));
        assert!(l.holds(7));
        assert!(!l.holds(6), "another token is another lease");
        // A renewal sent long ago has run out, whatever Redis said then.
        l.renewed(Some(8), now_ms() - 20_000, 10_000);
        assert_eq!(l.current(), None);
        l.renewed(Some(8), now_ms(), 10_000);
        l.renewed(None, now_ms(), 10_000);
        assert_eq!(l.current(), None);
    }

    #[test]
    fn the_deadline_keeps_a_margin_before_redis_own() {
        let l = Leadership::default();
        // Sent 950 ms ago with a 1 s lease: Redis may still hold it, this side no longer
        // counts on it (a tenth is kept for drift).
        l.renewed(Some(1), now_ms() - 950, 1_000);
        assert_eq!(l.current(), None);
        l.renewed(Some(1), now_ms() - 800, 1_000);
        assert_eq!(l.current(), Some(1));
    }
}
