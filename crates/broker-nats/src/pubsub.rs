//! Channel messages between nodes over core NATS: one subscription (and one task reading it)
//! per channel this node has subscribers for, whose publications go through a [`Reorder`]
//! before they reach the hub; joins and leaves published to the channel's subject.

use std::sync::Arc;
use std::time::Instant;

use async_nats::Subscriber;
use futures_util::{FutureExt as _, StreamExt as _};
use switchboard_hub::{BatchedEvents, BrokerError, BrokerEvents, MAX_BATCH};
use switchboard_proto::ClientInfo;
use tokio::task::JoinHandle;

use crate::broker::Shared;
use crate::codec::{self, token, Incoming};
use crate::reorder::Reorder;

/// A local subscription: the task that reads it. Dropping it unsubscribes.
pub(crate) struct ChannelSub(JoinHandle<()>);

impl Drop for ChannelSub {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Shared {
    pub(crate) async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        let events = self.events()?;
        self.check_connected()?;
        if self.subscriptions.lock().contains_key(channel) {
            return Ok(());
        }
        let subject = format!("{}{}", self.names.channel, token(channel));
        let sub = self
            .bounded("subscribe", self.client.subscribe(subject))
            .await?;
        // After a round trip the server has the subscription: publications made after this
        // returns reach this node.
        self.round_trip().await?;
        let task = ChannelSub(tokio::spawn(run_channel(events, channel.to_string(), sub)));
        self.subscriptions
            .lock()
            .entry(channel.to_string())
            .or_insert(task);
        Ok(())
    }

    pub(crate) fn unsubscribe(&self, channel: &str) {
        // Dropping the task drops its subscription, which unsubscribes (now, or when the
        // connection is back).
        let removed = self.subscriptions.lock().remove(channel);
        drop(removed);
    }

    /// Publishes a join or leave (`kind`) of `info` to the channel's subject.
    pub(crate) async fn publish_presence_event(
        &self,
        channel: &str,
        kind: u8,
        info: &ClientInfo,
    ) -> Result<(), BrokerError> {
        self.check_connected()?;
        let subject = format!("{}{}", self.names.channel, token(channel));
        let payload = codec::encode_presence_event(kind, info);
        self.bounded("publish", self.client.publish(subject, payload.into()))
            .await
    }
}

/// Reads one channel's subscription and delivers its messages through a [`Reorder`].
/// Messages read together are delivered together: consecutive publications as one batch (see
/// `BatchedEvents`).
async fn run_channel(events: Arc<dyn BrokerEvents>, channel: String, mut sub: Subscriber) {
    let mut order = Reorder::default();
    let events = BatchedEvents::new(events);
    loop {
        let message = match order.deadline {
            Some(deadline) => tokio::select! {
                message = sub.next() => message,
                _ = tokio::time::sleep_until(deadline.into()) => {
                    order.expire(&events, &channel);
                    events.flush();
                    continue;
                }
            },
            None => sub.next().await,
        };
        let Some(message) = message else { return };
        receive(&events, &mut order, &channel, &message.payload);
        for _ in 1..MAX_BATCH {
            match sub.next().now_or_never() {
                Some(Some(message)) => receive(&events, &mut order, &channel, &message.payload),
                Some(None) => return,
                None => break,
            }
        }
        events.flush();
    }
}

/// Takes one message of `channel`'s subject.
fn receive(events: &BatchedEvents, order: &mut Reorder, channel: &str, payload: &[u8]) {
    match codec::decode_incoming(payload) {
        Some(Incoming::Publication(epoch, publication)) => {
            order.publication(events, channel, epoch, publication, Instant::now());
        }
        Some(Incoming::Join(info)) => events.join(channel, &info),
        Some(Incoming::Leave(info)) => events.leave(channel, &info),
        None => tracing::warn!(channel, "ignoring malformed message from nats"),
    }
}
