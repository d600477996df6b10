//! The seams between the hub and the machinery that carries publications between nodes and keeps
//! channel state.
//!
//! A [`Broker`] moves publications (and joins/leaves) to every node that has subscribers for a
//! channel, and owns each channel's stream: its epoch, its offsets and its history. A
//! [`PresenceStore`] keeps who is in each channel. The hub calls them; the broker calls the hub
//! back through [`BrokerEvents`] for everything that must reach local subscribers. The in-memory
//! implementations ([`crate::MemoryBroker`]) serve one node; Redis and NATS brokers live in their
//! own crates and implement the same traits, checked by the same conformance suite
//! (`switchboard_hub::conformance`, behind the `conformance` feature).
//!
//! Ordering: a broker delivers the publications of one channel to [`BrokerEvents::publication`]
//! in offset order, one at a time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use switchboard_proto::{ClientInfo, Publication, StreamPosition};

/// Errors a broker or presence store returns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The broker cannot do this (for example history on a broker without history). Clients get
    /// error 108 "not available".
    #[error("not available")]
    NotAvailable,
    /// The requested position is not in the stream any more (or the epoch changed). Clients get
    /// error 112 "unrecoverable position".
    #[error("unrecoverable position")]
    UnrecoverablePosition,
    /// The broker's backend is unreachable or failed; retrying later may work. Clients get
    /// error 100 with `temporary: true`.
    #[error("broker temporarily unavailable: {0}")]
    Unavailable(String),
    /// A write reached the broker, or may have, but no answer came (a timeout, or the
    /// connection broke after the command was sent): it may have taken effect. Retrying is
    /// safe only for idempotent writes (a publish with an idempotency key). A publish gets
    /// error 100 "internal server error: outcome unknown" (`temporary: true`); other calls
    /// get plain error 100.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
}

/// Per-publication options derived from the channel's namespace and the request.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct PublishOptions {
    /// Keep up to this many publications in the channel's history (0 = no history).
    pub history_size: usize,
    /// Keep history for this long.
    pub history_ttl: Duration,
    /// Keep the stream position (epoch and offset) this long after the last publication.
    pub history_meta_ttl: Duration,
    /// When set, a second publish with the same key into the same channel within
    /// `idempotent_result_ttl` is not published again; the first result is returned.
    pub idempotency_key: Option<String>,
    /// How long idempotency keys are remembered.
    pub idempotent_result_ttl: Duration,
}

impl PublishOptions {
    /// Whether the publication goes into history (and so gets an offset).
    pub fn uses_history(&self) -> bool {
        self.history_size > 0 && !self.history_ttl.is_zero()
    }

    /// The idempotency key, when the publish is idempotent: a non-empty `idempotency_key` with a
    /// non-zero `idempotent_result_ttl`. Every broker keys its publish-once filter on this: a
    /// publish whose key already has an unexpired result in the channel returns that result
    /// and publishes nothing.
    pub fn idempotency(&self) -> Option<&str> {
        self.idempotency_key
            .as_deref()
            .filter(|k| !k.is_empty() && !self.idempotent_result_ttl.is_zero())
    }

    /// Whether the publish needs the channel's stored state: history (an offset) or an
    /// idempotency key (a remembered result). When not, a broker only delivers the publication
    /// and answers the empty position.
    pub fn uses_channel_state(&self) -> bool {
        self.uses_history() || self.idempotency().is_some()
    }
}

/// What to read from a channel's history.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct HistoryFilter {
    /// Only publications after this position (or before it, with `reverse`). The epoch must
    /// match the stream's, else [`BrokerError::UnrecoverablePosition`].
    pub since: Option<StreamPosition>,
    /// Maximum publications: `None` = all that are kept, `Some(0)` = only the stream position.
    pub limit: Option<usize>,
    /// Newest first.
    pub reverse: bool,
}

/// Publications read from history and the stream's current position.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct HistoryResult {
    /// Publications, oldest first unless `reverse` was asked.
    pub publications: Vec<Publication>,
    /// The stream's current top: the offset of the last publication and the epoch.
    pub position: StreamPosition,
}

/// Events a broker delivers to the hub for local fan-out.
pub trait BrokerEvents: Send + Sync + 'static {
    /// A publication for `channel`; deliver it to local subscribers. Its `offset` is set when the
    /// channel keeps history.
    fn publication(&self, channel: &str, publication: &Publication);
    /// Consecutive publications of `channel`, in order, to be delivered as
    /// [`BrokerEvents::publication`] would deliver each (which this does unless implemented);
    /// an implementation may deliver them together. Brokers call it for what they received or
    /// held together (see [`crate::BatchedEvents`]).
    fn publications(&self, channel: &str, publications: &[Publication]) {
        for publication in publications {
            self.publication(channel, publication);
        }
    }
    /// A client joined `channel` (somewhere in the cluster).
    fn join(&self, channel: &str, info: &ClientInfo);
    /// A client left `channel` (somewhere in the cluster).
    fn leave(&self, channel: &str, info: &ClientInfo);
    /// This node may have missed publications of `channel` (for example the broker connection
    /// was lost). Recoverable subscribers are told to resubscribe and recover.
    fn gap(&self, channel: &str) {
        let _ = channel;
    }
    /// A node-to-node control message (published by some node with
    /// [`Broker::publish_control`]).
    fn control(&self, message: &[u8]) {
        let _ = message;
    }
}

/// Moves publications between nodes and keeps channel streams. See the module docs.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Starts the broker; events for channels this node subscribed to go to `events`.
    /// Called once, by [`crate::Hub::new`].
    fn start(&self, events: Arc<dyn BrokerEvents>);

    /// Whether the broker's backend is reachable right now (reported by `/health`). In-process
    /// brokers are always connected.
    fn is_connected(&self) -> bool {
        true
    }

    /// This node has its first local subscriber on `channel`: start receiving its events.
    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError>;

    /// This node's last local subscriber on `channel` left: stop receiving its events.
    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError>;

    /// Publishes into `channel`; returns the publication's stream position (offset 0 and an
    /// empty epoch when the channel keeps no history).
    async fn publish(
        &self,
        channel: &str,
        publication: Publication,
        options: &PublishOptions,
    ) -> Result<StreamPosition, BrokerError>;

    /// Announces that `info` joined `channel`.
    async fn publish_join(&self, channel: &str, info: &ClientInfo) -> Result<(), BrokerError>;

    /// Announces that `info` left `channel`.
    async fn publish_leave(&self, channel: &str, info: &ClientInfo) -> Result<(), BrokerError>;

    /// Sends a control message to every node, this one included.
    async fn publish_control(&self, message: &[u8]) -> Result<(), BrokerError>;

    /// Reads `channel`'s history. `meta_ttl` is the stream position's lifetime, used when the
    /// read creates the stream (a channel that never had a publication still gets an epoch, so
    /// recovery from its "offset 0" works).
    async fn history(
        &self,
        channel: &str,
        filter: &HistoryFilter,
        meta_ttl: Duration,
    ) -> Result<HistoryResult, BrokerError>;

    /// Removes `channel`'s publications (the stream position stays, so recovery across the
    /// removal reports a gap).
    async fn remove_history(&self, channel: &str) -> Result<(), BrokerError>;
}

/// Who is in each channel. Entries expire unless refreshed, so the entries of a node that dies
/// disappear by themselves.
#[async_trait]
pub trait PresenceStore: Send + Sync + 'static {
    /// Adds or refreshes `info` (keyed by its client id) in `channel` for `ttl`.
    async fn add_presence(
        &self,
        channel: &str,
        info: &ClientInfo,
        ttl: Duration,
    ) -> Result<(), BrokerError>;

    /// Removes client `client` from `channel`.
    async fn remove_presence(&self, channel: &str, client: &str) -> Result<(), BrokerError>;

    /// Everyone in `channel`, by client id.
    async fn presence(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, BrokerError>;

    /// Connections and distinct users in `channel`.
    async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, BrokerError>;
}

/// Counts of a channel's presence.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PresenceStats {
    /// Connections.
    pub num_clients: u32,
    /// Distinct user ids.
    pub num_users: u32,
}

impl PresenceStats {
    /// Counts from a presence map.
    pub fn of(presence: &HashMap<String, ClientInfo>) -> Self {
        let users: std::collections::HashSet<&str> =
            presence.values().map(|i| i.user.as_str()).collect();
        Self {
            num_clients: presence.len() as u32,
            num_users: users.len() as u32,
        }
    }
}
