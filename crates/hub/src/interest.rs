//! This node's interest in channels at the broker, kept consistent with local subscribers.
//!
//! Every local subscribe waits until the node's broker subscription for the channel is
//! confirmed (so no subscriber can miss publications made right after its subscribe reply), and
//! the broker subscription is dropped only when the channel has no local subscriber left when the
//! per-channel lock is taken (so a subscribe racing the last unsubscribe cannot be left without
//! a broker subscription). Each channel's changes are serialised by an async lock held across the
//! broker call; different channels proceed independently.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::broker::{Broker, BrokerError};
use crate::registry::Registry;

/// See the module docs.
#[derive(Default)]
pub(crate) struct BrokerInterest {
    channels: Mutex<HashMap<String, Arc<tokio::sync::Mutex<bool>>>>,
}

impl BrokerInterest {
    fn entry(&self, channel: &str) -> Arc<tokio::sync::Mutex<bool>> {
        self.channels
            .lock()
            .entry(channel.to_string())
            .or_default()
            .clone()
    }

    /// Makes sure the node is subscribed to `channel` at the broker.
    pub(crate) async fn acquire(
        &self,
        broker: &dyn Broker,
        channel: &str,
    ) -> Result<(), BrokerError> {
        let entry = self.entry(channel);
        let mut subscribed = entry.lock().await;
        if !*subscribed {
            broker.subscribe(channel).await?;
            *subscribed = true;
        }
        Ok(())
    }

    /// Unsubscribes the node from `channel` at the broker if no local subscriber is left.
    pub(crate) async fn release(&self, broker: &dyn Broker, registry: &Registry, channel: &str) {
        let entry = self.entry(channel);
        let mut subscribed = entry.lock().await;
        if registry.count(channel) > 0 {
            return;
        }
        if *subscribed {
            if let Err(e) = broker.unsubscribe(channel).await {
                tracing::warn!(%channel, error = %e, "broker unsubscribe failed");
            }
            *subscribed = false;
        }
        drop(subscribed);
        // Forget the channel unless someone is using the entry right now.
        let mut channels = self.channels.lock();
        if Arc::strong_count(&entry) == 2 && registry.count(channel) == 0 {
            channels.remove(channel);
        }
    }
}
