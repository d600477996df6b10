//! Test hooks (feature `test-hooks`, enabled for this crate's own tests only): hold publishes
//! between their offset allocation and their append, and make appends fail, so that tests can
//! interleave a publish with a history read, or fail a publish after its offset was given out,
//! deterministically.

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
}

impl Hooks {
    /// Called by a publish after its offset was allocated, right before its append.
    pub(crate) async fn before_append(&self) -> Result<(), BrokerError> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        drop(self.gate.read().await);
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        let failed = self
            .fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failed {
            return Err(BrokerError::Unavailable(
                "nats history append: refused by test hook".into(),
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
}
