//! [`Subscription`]: a handle to one channel subscription, and what it delivers.

use std::collections::HashMap;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use switchboard_proto::StreamPosition;
use tokio::sync::{mpsc, oneshot};

use crate::client::{closed_error, Shared};
use crate::driver::Op;
use crate::error::ClientError;

/// A publication in a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Publication {
    /// The JSON payload exactly as it travelled (a zero-copy slice of the received frame).
    pub data: Bytes,
    /// Offset in the channel's stream; 0 when the channel keeps no history.
    pub offset: u64,
    /// The publisher, when it was a client and the server includes it.
    pub info: Option<ClientInfo>,
    /// Tags attached by the publisher.
    pub tags: HashMap<String, String>,
}

impl Publication {
    /// The payload deserialised into `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.data)
    }

    /// The payload as a [`serde_json::Value`] (`Null` if it is not valid JSON, which a
    /// conforming server never sends).
    pub fn value(&self) -> serde_json::Value {
        self.json().unwrap_or_default()
    }
}

/// Who published, joined or left.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientInfo {
    /// User id; empty for anonymous connections.
    pub user: String,
    /// Client (connection) id.
    pub client: String,
    /// Connection info (raw JSON) from the token or connect proxy.
    pub conn_info: Option<Bytes>,
    /// Channel info (raw JSON) from the subscription token or subscribe proxy.
    pub chan_info: Option<Bytes>,
}

/// What a [`Subscription`] receives, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubscriptionEvent {
    /// The subscription became active: after the first subscribe and after every
    /// resubscribe following a reconnect (or a server `unsubscribe` push asking to
    /// resubscribe). Publications recovered by that subscribe follow this event.
    Subscribed {
        /// Whether the client asked to recover missed publications.
        was_recovering: bool,
        /// Whether every missed publication was recovered (meaningful when `was_recovering`).
        recovered: bool,
        /// The stream position after the subscribe, when the channel is recoverable.
        position: Option<StreamPosition>,
    },
    /// A publication.
    Publication(Publication),
    /// Someone subscribed (channels with join/leave enabled, subscribed with
    /// [`SubscribeOptions::join_leave`]).
    Join(ClientInfo),
    /// Someone unsubscribed.
    Leave(ClientInfo),
    /// The subscription ended: the server unsubscribed the client, a resubscribe failed, or
    /// [`Client::unsubscribe`](crate::Client::unsubscribe) was called. Nothing follows.
    Unsubscribed {
        /// The server's unsubscribe code or the resubscribe error code; 0 for a local unsubscribe.
        code: u32,
        /// Reason or error message.
        reason: String,
    },
}

/// Options of a subscribe request. `Default` is a plain subscription.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct SubscribeOptions {
    /// Subscription token for private channels.
    pub token: String,
    /// Custom data for a subscribe proxy (raw JSON).
    pub data: Option<Box<serde_json::value::RawValue>>,
    /// Recover from this position on the first subscribe (publications after it are
    /// delivered right after [`SubscriptionEvent::Subscribed`]).
    pub since: Option<StreamPosition>,
    /// Ask for recoverable semantics (the server keeps positions for recovery on reconnect).
    pub recoverable: bool,
    /// Ask for positioning.
    pub positioned: bool,
    /// Ask for join and leave pushes.
    pub join_leave: bool,
}

impl SubscribeOptions {
    /// Sets the subscription token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = token.into();
        self
    }

    /// Sets custom data for a subscribe proxy.
    pub fn data(mut self, data: &impl Serialize) -> Result<Self, ClientError> {
        let s = serde_json::to_string(data).map_err(ClientError::protocol)?;
        self.data =
            Some(serde_json::value::RawValue::from_string(s).map_err(ClientError::protocol)?);
        Ok(self)
    }

    /// Recovers from `position` on the first subscribe.
    pub fn since(mut self, position: StreamPosition) -> Self {
        self.since = Some(position);
        self
    }

    /// Asks for recoverable semantics.
    pub fn recoverable(mut self, on: bool) -> Self {
        self.recoverable = on;
        self
    }

    /// Asks for positioning.
    pub fn positioned(mut self, on: bool) -> Self {
        self.positioned = on;
        self
    }

    /// Asks for join and leave pushes.
    pub fn join_leave(mut self, on: bool) -> Self {
        self.join_leave = on;
        self
    }
}

/// An active subscription to one channel.
///
/// It survives reconnects: the client resubscribes (recovering from the last seen position
/// when the channel is recoverable) and the stream of events simply continues. Dropping it
/// unsubscribes; [`Subscription::recv`] returns `None` once the subscription ended (see
/// [`SubscriptionEvent::Unsubscribed`]) or the client closed.
///
/// Events are buffered up to [`ClientBuilder::subscription_buffer`](crate::ClientBuilder::subscription_buffer);
/// when the buffer is full the client stops reading the socket until there is room again
/// (back-pressure, which the server eventually answers by disconnecting a slow client).
#[derive(Debug)]
pub struct Subscription {
    channel: String,
    generation: u64,
    events: mpsc::Receiver<SubscriptionEvent>,
    ops: mpsc::Sender<Op>,
    shared: std::sync::Arc<Shared>,
    unsubscribed: bool,
}

impl Subscription {
    pub(crate) fn new(
        channel: String,
        generation: u64,
        events: mpsc::Receiver<SubscriptionEvent>,
        ops: mpsc::Sender<Op>,
        shared: std::sync::Arc<Shared>,
    ) -> Self {
        Self {
            channel,
            generation,
            events,
            ops,
            shared,
            unsubscribed: false,
        }
    }

    /// The channel's name.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The next publication, skipping other events; `None` once the subscription ended.
    pub async fn recv(&mut self) -> Option<Publication> {
        loop {
            match self.events.recv().await? {
                SubscriptionEvent::Publication(p) => return Some(p),
                _ => continue,
            }
        }
    }

    /// The next event of any kind; `None` once the subscription ended.
    pub async fn recv_event(&mut self) -> Option<SubscriptionEvent> {
        self.events.recv().await
    }

    /// The next event if one is buffered, without waiting.
    pub fn try_recv_event(&mut self) -> Option<SubscriptionEvent> {
        self.events.try_recv().ok()
    }

    /// Unsubscribes and waits for the server's reply.
    pub async fn unsubscribe(mut self) -> Result<(), ClientError> {
        self.unsubscribed = true;
        let (tx, rx) = oneshot::channel();
        let op = Op::Unsubscribe {
            channel: self.channel.clone(),
            generation: Some(self.generation),
            reply: Some(tx),
        };
        if self.ops.send(op).await.is_err() {
            return Err(closed_error(&self.shared));
        }
        match tokio::time::timeout(self.shared.timeout, rx).await {
            Ok(Ok(r)) => r.map(drop),
            Ok(Err(_)) => Err(closed_error(&self.shared)),
            Err(_) => Err(ClientError::Timeout),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.unsubscribed {
            return;
        }
        // Best effort: when the queue is full the client notices the dropped receiver on the
        // next delivery and unsubscribes then.
        let _ = self.ops.try_send(Op::Unsubscribe {
            channel: std::mem::take(&mut self.channel),
            generation: Some(self.generation),
            reply: None,
        });
    }
}
