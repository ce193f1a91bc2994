//! The one owner of openraft's `elect` switch.
//!
//! Two things stop this member's elections: a snapshot being received
//! ([`super::election_pause`]) and a leader transfer's hold (MoveLeader
//! tells the other voters to hold theirs). Each sets its own reason here,
//! and elections run only while neither holds, so lifting one reason never
//! undoes the other.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::types::Raft;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Reasons {
    receiving_snapshot: bool,
    held_until: Option<Instant>,
}

impl Reasons {
    fn allow_elections(&self) -> bool {
        !self.receiving_snapshot && self.held_until.is_none()
    }
}

/// Turns openraft's elections on or off.
type Apply = Arc<dyn Fn(bool) + Send + Sync>;

#[derive(Clone)]
pub struct ElectionSwitch {
    reasons: Arc<Mutex<Reasons>>,
    apply: Apply,
}

impl ElectionSwitch {
    pub fn new(raft: Raft) -> Self {
        Self::with_apply(Arc::new(move |on| raft.runtime_config().elect(on)))
    }

    fn with_apply(apply: Apply) -> Self {
        Self {
            reasons: Arc::default(),
            apply,
        }
    }

    /// Under the lock, so that the switch always ends as the reasons say.
    fn update(&self, change: impl FnOnce(&mut Reasons)) {
        let mut reasons = self.reasons.lock().expect("election switch lock");
        change(&mut reasons);
        (self.apply)(reasons.allow_elections());
    }

    pub fn set_receiving_snapshot(&self, receiving: bool) {
        self.update(|reasons| reasons.receiving_snapshot = receiving);
    }

    /// Holds elections until `until`; `None` lifts the hold.
    pub fn hold_until(&self, until: Option<Instant>) {
        self.update(|reasons| reasons.held_until = until);
    }

    /// Lifts the hold set for `until`, unless a later hold replaced it.
    pub fn release_hold(&self, until: Instant) {
        self.update(|reasons| {
            if reasons.held_until == Some(until) {
                reasons.held_until = None;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// A leader transfer's hold that ends while a snapshot is still being
    /// received leaves elections off (each owner used to switch them on).
    #[test]
    fn elections_run_only_when_no_reason_holds_them() {
        let on = Arc::new(AtomicBool::new(true));
        let seen = on.clone();
        let switch = ElectionSwitch::with_apply(Arc::new(move |v| seen.store(v, Ordering::SeqCst)));
        let until = Instant::now();

        switch.set_receiving_snapshot(true);
        switch.hold_until(Some(until));
        switch.release_hold(until);
        assert!(!on.load(Ordering::SeqCst), "still receiving a snapshot");

        switch.hold_until(Some(until));
        switch.set_receiving_snapshot(false);
        assert!(!on.load(Ordering::SeqCst), "still held for a transfer");

        let later = until + std::time::Duration::from_secs(1);
        switch.hold_until(Some(later));
        switch.release_hold(until);
        assert!(!on.load(Ordering::SeqCst), "a stale release lifts nothing");

        switch.hold_until(None);
        assert!(on.load(Ordering::SeqCst));
    }
}
