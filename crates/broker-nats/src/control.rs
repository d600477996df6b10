//! Node-to-node control messages over core NATS: every node subscribes to `<prefix>.control`
//! when it connects (so it hears them from its first connection on) and hands what arrives to
//! the hub once the broker is started; publishing sends to every node, this one included.

use std::sync::Arc;

use futures_util::StreamExt as _;
use switchboard_hub::{BrokerError, BrokerEvents};

use crate::broker::Shared;

impl Shared {
    /// Starts delivering control messages to `events` (once: the subscription is taken).
    pub(crate) fn start_control(&self, events: Arc<dyn BrokerEvents>) {
        let Some(mut control) = self.control.lock().take() else {
            return;
        };
        let task = tokio::spawn(async move {
            while let Some(message) = control.next().await {
                events.control(&message.payload);
            }
        });
        self.tasks.lock().push(task);
    }

    pub(crate) async fn publish_control(&self, message: &[u8]) -> Result<(), BrokerError> {
        self.check_connected()?;
        self.bounded(
            "publish",
            self.client
                .publish(self.names.control.clone(), message.to_vec().into()),
        )
        .await
    }
}
