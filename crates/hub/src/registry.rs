//! Local subscriptions: which of this node's connections are subscribed to which channel, and
//! the fan-out that delivers one encoded message to all of them.
//!
//! Channels are spread over shards, each behind a std-style `RwLock` that is never held across an
//! `.await`. A publication is encoded once ([`encode_publication_push`]) and every subscriber's
//! queue receives a clone of the same [`Bytes`] (a reference-count increment).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;
use switchboard_proto::{
    encode_join_push, encode_leave_push, encode_publication_push, ClientInfo, Publication,
};

use crate::broker::BrokerEvents;
use crate::metrics::Metrics;
use crate::outbound::Control;
use crate::outbound::{Outbound, PushOutcome};

const SHARDS: usize = 64;

/// A subscriber as the registry sees it.
#[derive(Debug, Clone)]
pub(crate) struct Subscriber {
    pub(crate) out: Arc<Outbound>,
    /// Wants join/leave pushes.
    pub(crate) join_leave: bool,
    /// Recoverable or positioned: told to resubscribe when this node detects a gap.
    pub(crate) positioned: bool,
    /// Present while the subscription is being set up: messages wait in it until the subscribe
    /// reply is queued.
    pub(crate) gate: Option<Arc<Gate>>,
}

/// Holds a new subscriber's messages until its subscribe reply is queued, so that the reply
/// comes first and recovered publications are not delivered twice. What it holds counts toward
/// the subscriber's queue limit ([`Outbound::reserve`]): a subscribe that waits long on a busy
/// channel closes the connection with 3008 like a full queue, instead of growing memory.
#[derive(Debug)]
pub(crate) struct Gate {
    out: Arc<Outbound>,
    /// The held messages (with their offsets) and their bytes; `None` once open.
    held: parking_lot::Mutex<Option<Held>>,
}

#[derive(Debug, Default)]
struct Held {
    messages: Vec<(u64, Bytes)>,
    bytes: usize,
}

impl Gate {
    /// A closed gate in front of `out`.
    pub(crate) fn closed(out: Arc<Outbound>) -> Arc<Self> {
        Arc::new(Self {
            out,
            held: parking_lot::Mutex::new(Some(Held::default())),
        })
    }

    /// Holds `message` while closed; otherwise queues it.
    fn offer(&self, offset: u64, message: &Bytes) -> PushOutcome {
        let mut held = self.held.lock();
        let Some(buffer) = held.as_mut() else {
            return self.out.push(message.clone());
        };
        let outcome = self.out.reserve(message.len());
        if outcome == PushOutcome::Queued {
            buffer.bytes += message.len();
            buffer.messages.push((offset, message.clone()));
        } else {
            // The queue is closed (now or before): nothing held will ever be sent.
            *buffer = Held::default();
        }
        outcome
    }

    /// Queues `reply`, then the held messages except publications at or below `delivered`
    /// (already in the reply), and opens the gate.
    pub(crate) fn open(&self, reply: Bytes, delivered: u64) -> PushOutcome {
        let mut held = self.held.lock();
        let Held { messages, bytes } = held.take().unwrap_or_default();
        self.out.release(bytes);
        let mut outcome = self.out.push(reply);
        for (offset, message) in messages {
            if offset == 0 || offset > delivered {
                outcome = self.out.push(message);
            }
        }
        outcome
    }
}

impl Drop for Gate {
    /// A gate dropped closed (the subscribe was refused) gives its bytes back.
    fn drop(&mut self) {
        if let Some(held) = self.held.get_mut().take() {
            self.out.release(held.bytes);
        }
    }
}

/// A channel's local subscribers and the last offset this node delivered.
#[derive(Debug, Default)]
pub(crate) struct Channel {
    subs: HashMap<u64, Subscriber>,
    /// Offset of the last publication seen (0 before any, or without history): a publication
    /// that does not follow it means this node missed something.
    last_offset: AtomicU64,
}

type Shard = RwLock<HashMap<Box<str>, Channel>>;

/// See the module docs.
pub(crate) struct Registry {
    shards: Box<[Shard]>,
    hasher: std::collections::hash_map::RandomState,
    metrics: Arc<Metrics>,
}

impl Registry {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            hasher: Default::default(),
            metrics,
        }
    }

    fn shard(&self, channel: &str) -> &Shard {
        &self.shards[(self.hasher.hash_one(channel) as usize) % SHARDS]
    }

    /// Adds a subscriber; returns true when it is the channel's first local subscriber.
    pub(crate) fn add(&self, channel: &str, key: u64, sub: Subscriber) -> bool {
        let mut shard = self.shard(channel).write();
        let first = !shard.contains_key(channel);
        shard
            .entry(channel.into())
            .or_default()
            .subs
            .insert(key, sub);
        drop(shard);
        self.metrics.subscriptions_changed(1);
        if first {
            self.metrics.channels_changed(1);
        }
        first
    }

    /// Removes a subscriber; returns true when the channel has no local subscriber left.
    pub(crate) fn remove(&self, channel: &str, key: u64) -> bool {
        let mut shard = self.shard(channel).write();
        let Some(Channel { subs, .. }) = shard.get_mut(channel) else {
            return false;
        };
        if subs.remove(&key).is_none() {
            return false;
        }
        let last = subs.is_empty();
        if last {
            shard.remove(channel);
        } else if subs.capacity() > 4 * subs.len() + 16 {
            subs.shrink_to_fit();
        }
        drop(shard);
        self.metrics.subscriptions_changed(-1);
        if last {
            self.metrics.channels_changed(-1);
        }
        last
    }

    /// Replaces a subscriber's gate with none once it is open (keeps fan-out lock-free).
    pub(crate) fn ungate(&self, channel: &str, key: u64) {
        if let Some(sub) = self
            .shard(channel)
            .write()
            .get_mut(channel)
            .and_then(|ch| ch.subs.get_mut(&key))
        {
            sub.gate = None;
        }
    }

    /// Number of local subscribers of `channel`.
    pub(crate) fn count(&self, channel: &str) -> usize {
        self.shard(channel)
            .read()
            .get(channel)
            .map_or(0, |ch| ch.subs.len())
    }

    /// Names of channels with local subscribers.
    pub(crate) fn channels(&self) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            out.extend(
                shard
                    .read()
                    .iter()
                    .map(|(k, ch)| (k.to_string(), ch.subs.len())),
            );
        }
        out
    }

    /// Queues `message` for every local subscriber of `channel` that `filter` accepts.
    /// Returns the number of queues that received it.
    pub(crate) fn broadcast(
        &self,
        channel: &str,
        message: &Bytes,
        offset: u64,
        filter: impl Fn(&Subscriber) -> bool,
    ) -> usize {
        let shard = self.shard(channel).read();
        let Some(ch) = shard.get(channel) else {
            return 0;
        };
        self.deliver(ch, message, offset, filter)
    }

    /// [`Registry::broadcast`] with the channel's shard already locked.
    fn deliver(
        &self,
        ch: &Channel,
        message: &Bytes,
        offset: u64,
        filter: impl Fn(&Subscriber) -> bool,
    ) -> usize {
        let mut delivered = 0;
        for sub in ch.subs.values().filter(|s| filter(s)) {
            let outcome = match &sub.gate {
                Some(gate) => gate.offer(offset, message),
                None => sub.out.push(message.clone()),
            };
            // An overflow closes the queue with 3008; the connection's transport counts the
            // disconnect when it closes (once, whichever push overflowed).
            if let PushOutcome::Queued = outcome {
                delivered += 1;
            }
        }
        self.metrics
            .messages_out(delivered as u64, (delivered * message.len()) as u64);
        delivered
    }
}

impl BrokerEvents for Registry {
    fn publication(&self, channel: &str, publication: &Publication) {
        self.metrics.publication();
        let shard = self.shard(channel).read();
        let Some(ch) = shard.get(channel) else {
            return;
        };
        let offset = publication.offset;
        let in_sequence = offset == 0 || {
            let previous = ch.last_offset.swap(offset, Ordering::Relaxed);
            previous == 0 || offset == previous + 1
        };
        let message = encode_publication_push(channel, publication);
        if in_sequence {
            self.deliver(ch, &message, offset, |_| true);
            return;
        }
        // A gap, a repeat or a new epoch: positioned subscribers must not see this publication
        // (their next recovery would start after it); they resubscribe and recover instead.
        self.deliver(ch, &message, offset, |s| !s.positioned);
        tell_positioned(ch, channel);
    }

    fn join(&self, channel: &str, info: &ClientInfo) {
        let message = encode_join_push(channel, info);
        self.broadcast(channel, &message, 0, |s| s.join_leave);
    }

    fn leave(&self, channel: &str, info: &ClientInfo) {
        let message = encode_leave_push(channel, info);
        self.broadcast(channel, &message, 0, |s| s.join_leave);
    }

    fn gap(&self, channel: &str) {
        let shard = self.shard(channel).read();
        if let Some(ch) = shard.get(channel) {
            ch.last_offset.store(0, Ordering::Relaxed);
            tell_positioned(ch, channel);
        }
    }
}

/// Asks the channel's positioned subscribers to resubscribe and recover.
fn tell_positioned(ch: &Channel, channel: &str) {
    for sub in ch.subs.values().filter(|s| s.positioned) {
        sub.out.push_control(Control::InsufficientState {
            channel: channel.to_string(),
        });
    }
}
