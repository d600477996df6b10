//! Test hooks (feature `test-hooks`, enabled for this crate's own tests only): hold publishes
//! between their offset allocation and their append, and make appends fail (refused, dropped
//! unanswered, or stored with the answer lost), so that tests can interleave a publish with a
//! history read, or fail a publish after its offset was given out, deterministically.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use switchboard_hub::BrokerError;
use tokio::sync::{OwnedRwLockWriteGuard, RwLock};

use crate::NatsBroker;

#[derive(Default)]
pub(crate) struct Hooks {
    gate: Arc<RwLock<()>>,
    waiting: AtomicUsize,
    fail: AtomicUsize,
    drop_unanswered: AtomicUsize,
    lose_answer: AtomicUsize,
}

/// Takes one from `counter` if it is not zero.
fn take_one(counter: &AtomicUsize) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

impl Hooks {
    /// Called by a publish after its offset was allocated, right before its append.
    pub(crate) async fn before_append(&self) -> Result<(), BrokerError> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        drop(self.gate.read().await);
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        if take_one(&self.fail) {
            return Err(BrokerError::Unavailable(
                "nats history append: refused by test hook".into(),
            ));
        }
        if take_one(&self.drop_unanswered) {
            return Err(BrokerError::OutcomeUnknown(
                "nats history append: dropped unanswered by test hook".into(),
            ));
        }
        Ok(())
    }

    /// Called by a publish after its append was stored and acknowledged.
    pub(crate) fn after_append(&self) -> Result<(), BrokerError> {
        if take_one(&self.lose_answer) {
            return Err(BrokerError::OutcomeUnknown(
                "nats history append: answer lost by test hook".into(),
            ));
        }
        Ok(())
    }
}

impl NatsBroker {
    /// While the returned guard lives, publishes with history stop after their offset was
    /// allocated, before their append.
    #[doc(hidden)]
    pub async fn hold_appends(&self) -> OwnedRwLockWriteGuard<()> {
        self.shared.hooks.gate.clone().write_owned().await
    }

    /// How many publishes wait in front of their append (see [`Self::hold_appends`]).
    #[doc(hidden)]
    pub fn appends_waiting(&self) -> usize {
        self.shared.hooks.waiting.load(Ordering::SeqCst)
    }

    /// The next `n` appends fail (after their offset was allocated) as a JetStream error would.
    #[doc(hidden)]
    pub fn fail_appends(&self, n: usize) {
        self.shared.hooks.fail.store(n, Ordering::SeqCst);
    }

    /// The next `n` appends are never sent and answer `OutcomeUnknown`, as an append lost on the
    /// way with its answer would.
    #[doc(hidden)]
    pub fn drop_appends_unanswered(&self, n: usize) {
        self.shared.hooks.drop_unanswered.store(n, Ordering::SeqCst);
    }

    /// The next `n` appends are stored but answer `OutcomeUnknown`, as an append whose
    /// acknowledgement was lost would.
    #[doc(hidden)]
    pub fn lose_append_answers(&self, n: usize) {
        self.shared.hooks.lose_answer.store(n, Ordering::SeqCst);
    }
}
