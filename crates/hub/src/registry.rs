//! Local subscriptions: which of this node's connections are subscribed to which channel, and
//! the fan-out that delivers one encoded message to all of them.
//!
//! Channels are spread over shards, each behind a std-style `RwLock` that is never held across an
//! `.await`. A publication is encoded once ([`encode_publication_push`]) and every subscriber's
//! queue receives a clone of the same [`Bytes`] (a reference-count increment).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
#[derive(Debug)]
pub(crate) struct Subscriber {
    pub(crate) out: Arc<Outbound>,
    /// Wants join/leave pushes.
    pub(crate) join_leave: bool,
    /// Recoverable or positioned: told to resubscribe when this node detects a gap.
    pub(crate) positioned: bool,
    /// Present while the subscription is being set up: messages wait in it until the subscribe
    /// reply is queued.
    pub(crate) gate: Option<Arc<Gate>>,
    /// Set once a positioned subscriber was told to resubscribe (2500 "insufficient state"):
    /// from then on it gets no publication of the channel, so that nothing after the gap
    /// reaches it before the push, which would move its recovery position past the gap.
    pub(crate) stale: AtomicBool,
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
            self.deliver(ch, &message, offset, |s| !s.stale.load(Ordering::Relaxed));
            return;
        }
        // A gap, a repeat or a new epoch: positioned subscribers must not see this publication
        // nor any later one (their next recovery would start after it); they resubscribe and
        // recover instead.
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

/// Asks the channel's positioned subscribers to resubscribe and recover, and stops delivering
/// the channel's publications to them until they do (see [`Subscriber::stale`]).
fn tell_positioned(ch: &Channel, channel: &str) {
    for sub in ch.subs.values().filter(|s| s.positioned) {
        if sub.stale.swap(true, Ordering::Relaxed) {
            continue; // already told
        }
        sub.out.push_control(Control::InsufficientState {
            channel: channel.to_string(),
        });
    }
}

#[cfg(test)]
mod tests {
    use std::task::{Context, Poll, Waker};

    use serde_json::value::RawValue;

    use super::*;

    fn publication(offset: u64) -> Publication {
        Publication {
            data: RawValue::from_string(format!("{{\"n\":{offset}}}")).unwrap(),
            info: None,
            offset,
            tags: HashMap::new(),
        }
    }

    fn subscriber(out: &Arc<Outbound>, positioned: bool) -> Subscriber {
        Subscriber {
            out: out.clone(),
            join_leave: false,
            positioned,
            gate: None,
            stale: AtomicBool::new(false),
        }
    }

    /// Offsets of the publications queued for `out`, and whether a control is waiting.
    fn queued(out: &Outbound) -> (Vec<u64>, bool) {
        let mut cx = Context::from_waker(Waker::noop());
        let mut batch = Vec::new();
        let _ = out.poll_drain(&mut cx, &mut batch, 1024, false);
        let offsets = batch
            .iter()
            .map(|b| {
                let v: serde_json::Value = serde_json::from_slice(b).unwrap();
                v["push"]["pub"]["offset"].as_u64().unwrap()
            })
            .collect();
        let controls = !out.take_controls().is_empty();
        (offsets, controls)
    }

    /// A positioned subscriber told about a gap gets nothing more of the channel until it
    /// resubscribes: a later in-sequence publication would otherwise reach it before the 2500
    /// push and move its recovery position past the gap.
    #[test]
    fn nothing_after_a_gap_reaches_a_positioned_subscriber() {
        let registry = Registry::new(Arc::new(Metrics::default()));
        let positioned = Arc::new(Outbound::new(1 << 20));
        let plain = Arc::new(Outbound::new(1 << 20));
        registry.add("ch", 1, subscriber(&positioned, true));
        registry.add("ch", 2, subscriber(&plain, false));
        for offset in [1, 2, 5, 6, 7] {
            registry.publication("ch", &publication(offset));
        }
        assert_eq!(queued(&positioned), (vec![1, 2], true));
        assert_eq!(queued(&plain), (vec![1, 2, 5, 6, 7], false));

        // The broker reports a gap (e.g. its connection came back): the same holds.
        let fresh = Arc::new(Outbound::new(1 << 20));
        registry.add("other", 3, subscriber(&fresh, true));
        registry.publication("other", &publication(1));
        registry.gap("other");
        registry.publication("other", &publication(2));
        registry.gap("other");
        assert_eq!(queued(&fresh), (vec![1], true));
        // Told once: the second gap queued no second control.
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(
            fresh.poll_drain(&mut cx, &mut Vec::new(), 1, true),
            Poll::Pending
        );
    }
}
