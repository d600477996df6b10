//! Node-to-node messages for transports outside the hub (the Socket.IO front door routes the
//! polling requests of a session to the node that holds it): a payload addressed to one node
//! under a topic, carried by the broker's control channel and handed to the handler that node
//! registered for the topic.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

/// Receives the payloads sent to this node under one topic. Runs on the broker's delivery
/// path: it must not block (spawn for real work).
pub type RelayHandler = Arc<dyn Fn(String) + Send + Sync>;

/// The relay handlers of a node, by topic.
#[derive(Default)]
pub(crate) struct Relays {
    handlers: Mutex<HashMap<String, RelayHandler>>,
}

impl std::fmt::Debug for Relays {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relays").finish_non_exhaustive()
    }
}

impl Relays {
    pub(crate) fn set(&self, topic: &str, handler: RelayHandler) {
        self.handlers.lock().insert(topic.to_owned(), handler);
    }

    pub(crate) fn deliver(&self, topic: &str, data: String) {
        let handler = self.handlers.lock().get(topic).cloned();
        match handler {
            Some(h) => h(data),
            None => tracing::debug!(%topic, "relay message without a handler"),
        }
    }
}
