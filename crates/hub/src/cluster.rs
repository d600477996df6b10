//! Node-to-node control: server API actions that must reach whichever node holds a connection,
//! and the list of live nodes.
//!
//! Control messages travel through [`Broker::publish_control`](crate::Broker::publish_control)
//! to every node, this one included, and are applied by each node to its own connections. Every
//! node announces itself (with its statistics) every [`NODE_INFO_INTERVAL`]; a node not heard
//! from for [`NODE_EXPIRY`] is dropped from the list, so a killed node disappears from `info`.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use switchboard_proto::{ClientInfo, DisconnectCode, Publication};

use crate::broker::BrokerEvents;
use crate::burst;
use crate::hub::{Inner, NodeStats};
use crate::registry::Registry;

/// How often a node announces itself.
pub const NODE_INFO_INTERVAL: Duration = Duration::from_secs(3);
/// How long a node stays listed without an announcement.
pub const NODE_EXPIRY: Duration = Duration::from_secs(10);

/// The node of a [`ControlMessage::Relay`] for every node.
pub(crate) const EVERY_NODE: &str = "*";

/// A control message between nodes.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
///
/// Raw JSON values are carried as strings: serde's internally tagged enums cannot hold
/// `RawValue`.
pub(crate) enum ControlMessage {
    /// A node's announcement.
    Node(NodeStats),
    /// Disconnect a user's connections (or one client).
    Disconnect {
        user: String,
        client: Option<String>,
        #[serde(default)]
        whitelist: Vec<String>,
        code: u16,
        reason: String,
    },
    /// Subscribe a user's connections to a channel.
    Subscribe {
        user: String,
        client: Option<String>,
        channel: String,
        /// Channel info as JSON text (raw values do not survive internally tagged enums).
        info: Option<String>,
    },
    /// Unsubscribe a user's connections from a channel.
    Unsubscribe {
        user: String,
        client: Option<String>,
        channel: String,
    },
    /// A batch of commands for an emulated session held by `node` (see [`crate::emulation`]).
    Emulation {
        node: String,
        session: String,
        data: String,
    },
    /// A message for the relay handler of `topic` on `node` (see [`crate::relay`]), or on
    /// every node when `node` is [`EVERY_NODE`].
    Relay {
        node: String,
        topic: String,
        data: String,
    },
    /// Set a user's connections' expiry, or expire them now.
    Refresh {
        user: String,
        client: Option<String>,
        expire_at: Option<u64>,
        expired: bool,
    },
}

impl ControlMessage {
    pub(crate) fn encode(&self) -> Vec<u8> {
        // Plain data with string keys: serialising cannot fail.
        serde_json::to_vec(self).expect("control messages serialise")
    }
}

/// Nodes heard from recently.
#[derive(Debug, Default)]
pub(crate) struct NodeList {
    nodes: Mutex<HashMap<String, (NodeStats, Instant)>>,
}

impl NodeList {
    fn seen(&self, stats: NodeStats, now: Instant) {
        self.nodes.lock().insert(stats.uid.clone(), (stats, now));
    }

    /// Live nodes other than `except`, dropping those not heard from within [`NODE_EXPIRY`].
    pub(crate) fn live(&self, except: &str, now: Instant) -> Vec<NodeStats> {
        let mut nodes = self.nodes.lock();
        nodes.retain(|_, (_, seen)| now.duration_since(*seen) < NODE_EXPIRY);
        nodes
            .values()
            .filter(|(s, _)| s.uid != except)
            .map(|(s, _)| s.clone())
            .collect()
    }
}

/// What the hub gives its broker: local fan-out plus control handling.
pub(crate) struct HubEvents {
    pub(crate) registry: Arc<Registry>,
    pub(crate) hub: Weak<Inner>,
}

impl BrokerEvents for HubEvents {
    fn publication(&self, channel: &str, publication: &Publication) {
        self.registry.publication_or_gather(channel, publication);
    }

    fn publications(&self, channel: &str, publications: &[Publication]) {
        // Held by the memory broker for a burst (see `crate::burst`; what their publisher
        // gathered before them was delivered first), or read together by a broker's receive
        // task (`BatchedEvents`). Never deliver what this thread gathered from here: the
        // memory broker calls this under a stream's lock, which a held entry would take again.
        self.registry.deliver_publications(channel, publications);
    }

    // The other events first deliver the publications gathered before them (see
    // `crate::burst`), so that they keep their place.

    fn join(&self, channel: &str, info: &ClientInfo) {
        burst::deliver_gathered();
        self.registry.join(channel, info);
    }

    fn leave(&self, channel: &str, info: &ClientInfo) {
        burst::deliver_gathered();
        self.registry.leave(channel, info);
    }

    fn gap(&self, channel: &str) {
        burst::deliver_gathered();
        self.registry.gap(channel);
    }

    fn control(&self, message: &[u8]) {
        burst::deliver_gathered();
        let Some(inner) = self.hub.upgrade() else {
            return;
        };
        let hub = crate::Hub { inner };
        match serde_json::from_slice::<ControlMessage>(message) {
            Ok(m) => apply(&hub, m),
            Err(e) => tracing::warn!(error = %e, "ignoring malformed control message"),
        }
    }
}

fn apply(hub: &crate::Hub, message: ControlMessage) {
    match message {
        ControlMessage::Node(stats) => hub.inner.nodes.seen(stats, Instant::now()),
        ControlMessage::Emulation {
            node,
            session,
            data,
        } => {
            if node == hub.inner.node.id {
                let delivery = hub.inner.emulation.deliver(&session, data.into());
                if delivery != crate::emulation::Delivery::Queued {
                    tracing::debug!(%session, ?delivery, "forwarded emulation batch not taken");
                }
            }
        }
        ControlMessage::Relay { node, topic, data } => {
            if node == hub.inner.node.id || node == EVERY_NODE {
                hub.inner.relays.deliver(&topic, data);
            }
        }
        ControlMessage::Disconnect {
            user,
            client,
            whitelist,
            code,
            reason,
        } => {
            let code = DisconnectCode::ALL
                .iter()
                .find(|d| d.code == code)
                .copied()
                .unwrap_or_else(|| DisconnectCode::custom(code, &reason));
            hub.disconnect_user(&user, client.as_deref(), &whitelist, code);
        }
        ControlMessage::Subscribe {
            user,
            client,
            channel,
            info,
        } => {
            let info = info.and_then(|text| RawValue::from_string(text).ok());
            hub.subscribe_user(&user, client.as_deref(), &channel, info);
        }
        ControlMessage::Unsubscribe {
            user,
            client,
            channel,
        } => {
            hub.unsubscribe_user(&user, client.as_deref(), &channel);
        }
        ControlMessage::Refresh {
            user,
            client,
            expire_at,
            expired,
        } => {
            if expired {
                hub.disconnect_user(&user, client.as_deref(), &[], DisconnectCode::EXPIRED);
            } else {
                hub.refresh_user(&user, client.as_deref(), expire_at);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_round_trip() {
        let messages = [
            ControlMessage::Relay {
                node: "n".into(),
                topic: "socketio/socket.io/".into(),
                data: "{}".into(),
            },
            ControlMessage::Subscribe {
                user: "u".into(),
                client: None,
                channel: "c".into(),
                info: Some("{\"k\":1}".into()),
            },
            ControlMessage::Disconnect {
                user: "u".into(),
                client: Some("id".into()),
                whitelist: vec![],
                code: 4100,
                reason: "bye".into(),
            },
        ];
        for m in messages {
            let bytes = m.encode();
            let back: ControlMessage = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(back.encode(), bytes);
        }
    }
}
