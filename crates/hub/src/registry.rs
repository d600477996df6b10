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
use crate::burst;
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
    /// Where a positioned subscriber is in the channel's stream.
    pub(crate) track: Arc<Track>,
}

/// A positioned subscriber's place in the channel's stream, shared with its gate.
///
/// It gets a publication only when the publication's offset follows the last one it has (the
/// subscribe reply's position, then each publication delivered). Anything else (a gap, a repeat
/// of an offset it has, or offsets starting over in a new epoch, which look alike without the
/// epoch) makes it stale: it is told to resubscribe (2500 "insufficient state") and gets no
/// publication of the channel until it does, so its recovery starts from what it really has.
#[derive(Debug)]
pub(crate) struct Track {
    /// Offset of the last publication it has; [`UNKNOWN`] until the subscribe reply sets it
    /// (or, for a subscriber without a gate, until the first publication).
    position: AtomicU64,
    /// Told to resubscribe.
    stale: AtomicBool,
}

/// [`Track::position`] before it is known.
const UNKNOWN: u64 = u64::MAX;

impl Default for Track {
    fn default() -> Self {
        Self {
            position: AtomicU64::new(UNKNOWN),
            stale: AtomicBool::new(false),
        }
    }
}

impl Track {
    fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Relaxed)
    }

    /// Whether the publication at `offset` goes to the subscriber; moves its position when it
    /// does. False means: a gap or a repeat, the subscriber must be told (see [`Track::tell`]).
    fn admit(&self, offset: u64) -> bool {
        let position = self.position.load(Ordering::Relaxed);
        if position == UNKNOWN || offset == position + 1 {
            self.position.store(offset, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// How many of the consecutive publications at `offsets` go to the subscriber, as
    /// [`Track::admit`] for each in turn: all of them, or those before the first that does
    /// not follow (then the subscriber must be told). None once it is stale.
    fn admit_run(&self, offsets: &[u64]) -> usize {
        if self.is_stale() {
            return 0;
        }
        offsets
            .iter()
            .position(|&offset| !self.admit(offset))
            .unwrap_or(offsets.len())
    }

    /// Marks the subscriber stale and queues the 2500 push, once.
    fn tell(&self, out: &Outbound, channel: &str) {
        if !self.stale.swap(true, Ordering::Relaxed) {
            out.push_control(Control::InsufficientState {
                channel: channel.to_string(),
            });
        }
    }
}

/// Holds a new subscriber's messages until its subscribe reply is queued, so that the reply
/// comes first and recovered publications are not delivered twice. What it holds counts toward
/// the subscriber's queue limit ([`Outbound::reserve`]): a subscribe that waits long on a busy
/// channel closes the connection with 3008 like a full queue, instead of growing memory.
#[derive(Debug)]
pub(crate) struct Gate {
    out: Arc<Outbound>,
    /// The subscriber's place in the stream, for positioned subscribers.
    track: Arc<Track>,
    /// The held messages (with their offsets) and their bytes; `None` once open.
    held: parking_lot::Mutex<Option<Held>>,
}

#[derive(Debug, Default)]
struct Held {
    messages: Vec<(u64, Bytes)>,
    bytes: usize,
}

impl Gate {
    /// A closed gate in front of `out`, for a subscriber with `track`.
    pub(crate) fn closed(out: Arc<Outbound>, track: Arc<Track>) -> Arc<Self> {
        Arc::new(Self {
            out,
            track,
            held: parking_lot::Mutex::new(Some(Held::default())),
        })
    }

    /// Holds `message` while closed; otherwise hands it on (`None`: a positioned subscriber's
    /// gap or repeat, see [`Track`]).
    fn offer(&self, offset: u64, message: &Bytes, positioned: bool) -> Option<PushOutcome> {
        let mut held = self.held.lock();
        let Some(buffer) = held.as_mut() else {
            drop(held);
            if positioned && offset != 0 && !self.track.admit(offset) {
                return None;
            }
            return Some(self.out.push(message.clone()));
        };
        let outcome = self.out.reserve(message.len());
        if outcome == PushOutcome::Queued {
            buffer.bytes += message.len();
            buffer.messages.push((offset, message.clone()));
        } else {
            // The queue is closed (now or before): nothing held will ever be sent.
            *buffer = Held::default();
        }
        Some(outcome)
    }

    /// Queues `reply` (if any: the connect reply that carries several server-side
    /// subscriptions is queued before their gates open), then the held messages except
    /// publications at or below `delivered` (already in the reply), and opens the gate. For a
    /// positioned subscriber, `delivered` becomes its position, and held publications must
    /// follow it: at the first that does not, the rest are dropped and the subscriber is told
    /// to resubscribe (on `channel`).
    pub(crate) fn open(
        &self,
        reply: Option<Bytes>,
        delivered: u64,
        positioned: bool,
        channel: &str,
    ) -> PushOutcome {
        let mut held = self.held.lock();
        let Held { messages, bytes } = held.take().unwrap_or_default();
        self.out.release(bytes);
        if positioned {
            self.track.position.store(delivered, Ordering::Relaxed);
        }
        let mut outcome = match reply {
            Some(reply) => self.out.push(reply),
            None => PushOutcome::Queued,
        };
        for (offset, message) in messages {
            if offset == 0 {
                outcome = self.out.push(message);
            } else if offset <= delivered || self.track.is_stale() {
                // Already in the reply, or after a gap.
            } else if !positioned || self.track.admit(offset) {
                outcome = self.out.push(message);
            } else {
                self.track.tell(&self.out, channel);
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

/// A channel's local subscribers.
#[derive(Debug, Default)]
pub(crate) struct Channel {
    subs: HashMap<u64, Subscriber>,
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
        self.deliver(ch, channel, message, offset, filter)
    }

    /// [`Registry::broadcast`] with the channel's shard already locked.
    fn deliver(
        &self,
        ch: &Channel,
        channel: &str,
        message: &Bytes,
        offset: u64,
        filter: impl Fn(&Subscriber) -> bool,
    ) -> usize {
        let mut delivered = 0;
        for sub in ch.subs.values().filter(|s| filter(s)) {
            if offer(sub, channel, message, offset) {
                delivered += 1;
            }
        }
        self.metrics
            .messages_out(delivered as u64, (delivered * message.len()) as u64);
        delivered
    }

    /// [`BrokerEvents::publication`], gathered for delivery with the rest of a burst while the
    /// thread is in a gathering poll (see [`crate::burst`]), delivered at once otherwise.
    ///
    /// Publications with an offset (channels with history) are not gathered here: a broker
    /// delivers them in offset order (the memory broker holds a burst's in the channel's
    /// stream and delivers them together under its lock, see [`crate::burst`]). What was
    /// gathered before them is delivered first, so they keep their place.
    pub(crate) fn publication_or_gather(
        self: &Arc<Self>,
        channel: &str,
        publication: &Publication,
    ) {
        if publication.offset != 0 || !burst::gathering() {
            burst::deliver_gathered();
            self.publication(channel, publication);
            return;
        }
        self.metrics.publication();
        if !self.shard(channel).read().contains_key(channel) {
            return;
        }
        let message = encode_publication_push(channel, publication);
        burst::gather(self, channel, message);
    }

    /// Delivers consecutive publications of `channel` without offsets (encoded pushes, in
    /// order) to its local subscribers, as [`BrokerEvents::publication`] for each would: a
    /// subscriber whose subscribe is done gets them as one shared entry of its queue
    /// ([`Outbound::push_run`]).
    pub(crate) fn deliver_run(&self, channel: &str, messages: Vec<Bytes>) {
        let shard = self.shard(channel).read();
        let Some(ch) = shard.get(channel) else {
            return;
        };
        if let [message] = &messages[..] {
            self.deliver(ch, channel, message, 0, |_| true);
            return;
        }
        self.deliver_shared(ch, channel, messages.into(), None);
    }

    /// Consecutive publications of `channel`, in order (with offsets: held by the memory
    /// broker during a burst, see [`crate::burst`]), delivered as [`BrokerEvents::publication`]
    /// for each would: positioned subscribers get those with offsets only while they follow
    /// what each has.
    pub(crate) fn deliver_publications(&self, channel: &str, publications: &[Publication]) {
        let with_offsets = publications.iter().all(|p| p.offset != 0);
        if !with_offsets && publications.iter().any(|p| p.offset != 0) {
            // Some with offsets, some without (history turned on or off in between): the
            // positions are checked one publication at a time.
            for publication in publications {
                self.publication(channel, publication);
            }
            return;
        }
        for _ in publications {
            self.metrics.publication();
        }
        let shard = self.shard(channel).read();
        let Some(ch) = shard.get(channel) else {
            return;
        };
        if let [publication] = publications {
            let message = encode_publication_push(channel, publication);
            self.deliver(ch, channel, &message, publication.offset, |_| true);
            return;
        }
        let messages: Arc<[Bytes]> = publications
            .iter()
            .map(|p| encode_publication_push(channel, p))
            .collect();
        let offsets: Vec<u64> = publications.iter().map(|p| p.offset).collect();
        let offsets = with_offsets.then_some(&offsets[..]);
        self.deliver_shared(ch, channel, messages, offsets);
    }

    /// Delivers `run` (with its publications' `offsets`, if any) to every subscriber of `ch`,
    /// as one entry shared by their queues where it goes to a subscriber whole.
    fn deliver_shared(
        &self,
        ch: &Channel,
        channel: &str,
        run: Arc<[Bytes]>,
        offsets: Option<&[u64]>,
    ) {
        let run_bytes: usize = run.iter().map(Bytes::len).sum();
        let mut delivered = 0;
        let mut bytes = 0;
        let mut count = |queued: &[Bytes]| {
            delivered += queued.len();
            bytes += if queued.len() == run.len() {
                run_bytes
            } else {
                queued.iter().map(Bytes::len).sum::<usize>()
            };
        };
        for sub in ch.subs.values() {
            if sub.gate.is_some() {
                // Still subscribing: each goes through the gate.
                for (i, message) in run.iter().enumerate() {
                    let offset = offsets.map_or(0, |o| o[i]);
                    if offer(sub, channel, message, offset) {
                        count(std::slice::from_ref(message));
                    }
                }
                continue;
            }
            let admitted = match offsets {
                Some(offsets) if sub.positioned => sub.track.admit_run(offsets),
                // Without an offset, or not positioned: all of them go.
                _ => run.len(),
            };
            if admitted == run.len() {
                let queued = sub.out.push_run(&run, run_bytes);
                count(&run[..queued]);
                continue;
            }
            if admitted > 0 {
                let prefix: Arc<[Bytes]> = run[..admitted].into();
                let prefix_bytes = prefix.iter().map(Bytes::len).sum();
                let queued = sub.out.push_run(&prefix, prefix_bytes);
                count(&prefix[..queued]);
            }
            if !sub.track.is_stale() {
                sub.track.tell(&sub.out, channel);
            }
        }
        self.metrics.messages_out(delivered as u64, bytes as u64);
    }
}

/// Offers one publication (or join/leave push, `offset` 0) to a subscriber: through its gate
/// while it subscribes, checked against its position when it is positioned. Returns whether it
/// was queued.
fn offer(sub: &Subscriber, channel: &str, message: &Bytes, offset: u64) -> bool {
    let tracked = sub.positioned && offset != 0;
    if tracked && sub.track.is_stale() {
        return false;
    }
    let outcome = match &sub.gate {
        Some(gate) => gate.offer(offset, message, sub.positioned),
        None if tracked && !sub.track.admit(offset) => None,
        None => Some(sub.out.push(message.clone())),
    };
    let Some(outcome) = outcome else {
        sub.track.tell(&sub.out, channel);
        return false;
    };
    // An overflow closes the queue with 3008; the connection's transport counts the
    // disconnect when it closes (once, whichever push overflowed).
    outcome == PushOutcome::Queued
}

impl BrokerEvents for Registry {
    fn publication(&self, channel: &str, publication: &Publication) {
        self.metrics.publication();
        let shard = self.shard(channel).read();
        let Some(ch) = shard.get(channel) else {
            return;
        };
        // Positioned subscribers get it only if it follows what each has (see `Track`);
        // the others get everything.
        let message = encode_publication_push(channel, publication);
        self.deliver(ch, channel, &message, publication.offset, |_| true);
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
            tell_positioned(ch, channel);
        }
    }
}

/// Asks the channel's positioned subscribers to resubscribe and recover, and stops delivering
/// the channel's publications to them until they do (see [`Subscriber::stale`]).
fn tell_positioned(ch: &Channel, channel: &str) {
    for sub in ch.subs.values().filter(|s| s.positioned) {
        sub.track.tell(&sub.out, channel);
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
            track: Arc::default(),
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

    /// A gated (subscribing) positioned subscriber with its reply at `delivered`.
    fn subscribed(registry: &Registry, channel: &str, key: u64, delivered: u64) -> Arc<Outbound> {
        let (out, gate) = subscribing(registry, channel, key);
        open(&out, &gate, channel, delivered);
        registry.ungate(channel, key);
        out
    }

    /// A positioned subscriber whose subscribe is under way (its gate closed).
    fn subscribing(registry: &Registry, channel: &str, key: u64) -> (Arc<Outbound>, Arc<Gate>) {
        let out = Arc::new(Outbound::new(1 << 20));
        let track = Arc::new(Track::default());
        let gate = Gate::closed(out.clone(), track.clone());
        let mut sub = subscriber(&out, true);
        sub.gate = Some(gate.clone());
        sub.track = track;
        registry.add(channel, key, sub);
        (out, gate)
    }

    /// Opens `gate` with a reply at `delivered` and takes the reply off the queue.
    fn open(out: &Outbound, gate: &Gate, channel: &str, delivered: u64) {
        let reply = Bytes::from_static(b"{\"id\":1,\"subscribe\":{}}");
        let _ = gate.open(Some(reply), delivered, true, channel);
        let mut cx = Context::from_waker(Waker::noop());
        let _ = out.poll_drain(&mut cx, &mut Vec::new(), 1, false);
    }

    /// A live copy of a publication the subscribe reply already covered (it reached this node
    /// after the reply) is not delivered a second time: the subscriber is told to resubscribe
    /// instead, and gets nothing more until it does.
    #[test]
    fn a_repeat_after_the_reply_is_not_delivered_twice() {
        let registry = Registry::new(Arc::new(Metrics::default()));
        let out = subscribed(&registry, "ch", 1, 5);
        registry.publication("ch", &publication(5));
        registry.publication("ch", &publication(6));
        assert_eq!(queued(&out), (vec![], true));
        // One that follows the reply is delivered.
        let next = subscribed(&registry, "other", 2, 5);
        registry.publication("other", &publication(6));
        registry.publication("other", &publication(7));
        assert_eq!(queued(&next), (vec![6, 7], false));
    }

    /// Publications crossing on their way to the node (7 before 6) are a gap for a subscriber
    /// at 5, never a silent skip of 6.
    #[test]
    fn crossing_publications_are_a_gap_not_a_loss() {
        let registry = Registry::new(Arc::new(Metrics::default()));
        let out = subscribed(&registry, "ch", 1, 5);
        registry.publication("ch", &publication(7));
        registry.publication("ch", &publication(6));
        assert_eq!(queued(&out), (vec![], true));
    }

    /// Publications held during the subscribe must follow the reply's position too.
    #[test]
    fn held_publications_after_a_gap_are_not_delivered() {
        let registry = Registry::new(Arc::new(Metrics::default()));
        let (out, gate) = subscribing(&registry, "ch", 1);
        for offset in [3, 4, 6, 7] {
            registry.publication("ch", &publication(offset));
        }
        open(&out, &gate, "ch", 3);
        assert_eq!(queued(&out), (vec![4], true));
    }
    /// Everything queued for `out` (raw), and whether a control is waiting.
    fn raw_queue(out: &Outbound) -> (Vec<Bytes>, bool) {
        let mut cx = Context::from_waker(Waker::noop());
        let mut batch = Vec::new();
        let _ = out.poll_drain(&mut cx, &mut batch, 1024, false);
        (batch, !out.take_controls().is_empty())
    }

    /// A publication without an offset (no history), told apart by its data `{"n": n}`.
    fn unpositioned(n: u64) -> Publication {
        Publication {
            offset: 0,
            ..publication(n)
        }
    }

    /// `(channel, n)` of every message queued for `out`, where `n` is the publication's offset
    /// or, without one, its data's `n`.
    fn queued_ids(out: &Outbound) -> Vec<(String, u64)> {
        raw_queue(out)
            .0
            .iter()
            .map(|b| {
                let v: serde_json::Value = serde_json::from_slice(b).unwrap();
                let p = &v["push"]["pub"];
                let n = p["offset"]
                    .as_u64()
                    .unwrap_or_else(|| p["data"]["n"].as_u64().unwrap());
                (v["push"]["channel"].as_str().unwrap().to_string(), n)
            })
            .collect()
    }

    /// Subscribers of every kind on `channel`: plain, positioned with no position yet,
    /// positioned at 5, one told about a gap (stale), subscribing (gate closed, opened at 5
    /// after the publications), one whose queue overflows in the middle of a burst.
    fn every_kind(registry: &Registry, channel: &str) -> Vec<(Arc<Outbound>, Option<Arc<Gate>>)> {
        let plain = Arc::new(Outbound::new(1 << 20));
        registry.add(channel, 1, subscriber(&plain, false));
        let unknown = Arc::new(Outbound::new(1 << 20));
        registry.add(channel, 2, subscriber(&unknown, true));
        let at_five = subscribed(registry, channel, 3, 5);
        let stale = subscribed(registry, channel, 4, 5);
        registry.gap(channel);
        let (gated, gate) = subscribing(registry, channel, 5);
        let small = Arc::new(Outbound::new(120));
        registry.add(channel, 6, subscriber(&small, false));
        vec![
            (plain, None),
            (unknown, None),
            (at_five, None),
            (stale, None),
            (gated, Some(gate)),
            (small, None),
        ]
    }

    /// Each subscriber of `got` (from [`every_kind`]) has exactly what the same kind in
    /// `expected` has, once those still subscribing are let in.
    fn assert_same_queues(
        expected: &[(Arc<Outbound>, Option<Arc<Gate>>)],
        got: &[(Arc<Outbound>, Option<Arc<Gate>>)],
        what: &str,
    ) {
        for (i, ((e, e_gate), (g, g_gate))) in expected.iter().zip(got).enumerate() {
            if let (Some(e_gate), Some(g_gate)) = (e_gate, g_gate) {
                open(e, e_gate, "ch", 5);
                open(g, g_gate, "ch", 5);
            }
            assert_eq!(
                (raw_queue(g), g.is_closed()),
                (raw_queue(e), e.is_closed()),
                "subscriber {i}, {what}"
            );
        }
    }

    /// A burst gathered in one poll reaches every kind of subscriber exactly as the same
    /// publications delivered one by one: same messages, same order, same controls, same
    /// overflow.
    #[test]
    fn a_burst_is_delivered_as_each_publication_would_be() {
        for count in [1, 2, 3, 7] {
            let one_by_one = Arc::new(Registry::new(Arc::new(Metrics::default())));
            let burst = Arc::new(Registry::new(Arc::new(Metrics::default())));
            let expected = every_kind(&one_by_one, "ch");
            let got = every_kind(&burst, "ch");
            for n in 1..=count {
                one_by_one.publication("ch", &unpositioned(n));
            }
            let before: Vec<usize> = got.iter().map(|(out, _)| out.queued_bytes()).collect();
            burst::in_one_poll(|| {
                for n in 1..=count {
                    burst.publication_or_gather("ch", &unpositioned(n));
                }
                // Nothing is delivered before the poll ends.
                let during: Vec<usize> = got.iter().map(|(out, _)| out.queued_bytes()).collect();
                assert_eq!(during, before);
            });
            assert_same_queues(&expected, &got, &format!("{count} publications"));
        }
    }

    /// The registry's delivery counters, as exported.
    fn counters(metrics: &Metrics) -> Vec<String> {
        let mut text = String::new();
        metrics.render_prometheus(&mut text);
        text.lines()
            .filter(|l| {
                [
                    "messages_out_total ",
                    "bytes_out_total ",
                    "publications_total ",
                ]
                .iter()
                .any(|name| l.contains(name))
            })
            .map(str::to_string)
            .collect()
    }

    /// Publications with offsets held by the broker for a burst and delivered together reach
    /// every kind of subscriber exactly as one by one, gaps and repeats included: positioned
    /// subscribers take the part that follows what they have and are told at the first
    /// publication that does not.
    #[test]
    fn held_publications_are_delivered_as_each_would_be() {
        let sequences: [&[u64]; 8] = [
            &[6, 7],
            &[6, 7, 8, 9, 10, 11, 12],
            &[6, 7, 9, 10],
            &[4, 5, 6],
            &[1, 2, 3, 4, 5, 6, 7],
            &[9, 10, 11],
            &[0, 0, 0],
            &[6, 0, 7],
        ];
        for offsets in sequences {
            let one_by_one = Arc::new(Registry::new(Arc::new(Metrics::default())));
            let together = Arc::new(Registry::new(Arc::new(Metrics::default())));
            let expected = every_kind(&one_by_one, "ch");
            let got = every_kind(&together, "ch");
            let publications: Vec<Publication> = offsets.iter().map(|&o| publication(o)).collect();
            for p in &publications {
                one_by_one.publication("ch", p);
            }
            together.deliver_publications("ch", &publications);
            assert_same_queues(&expected, &got, &format!("offsets {offsets:?}"));
            assert_eq!(counters(&together.metrics), counters(&one_by_one.metrics));
        }
    }

    /// Gathered publications keep their order across channels (a run ends where another
    /// channel's publication comes between) and with publications that have an offset, which
    /// the registry delivers at once (the memory broker holds those of a burst itself, see
    /// `memory::tests`); long bursts are cut into runs.
    #[test]
    fn a_burst_keeps_the_order_across_channels_and_runs() {
        let registry = Arc::new(Registry::new(Arc::new(Metrics::default())));
        let out = Arc::new(Outbound::new(1 << 24));
        registry.add("a", 1, subscriber(&out, false));
        registry.add("b", 1, subscriber(&out, false));
        registry.add("h", 1, subscriber(&out, true));
        let only_b = Arc::new(Outbound::new(1 << 24));
        registry.add("b", 2, subscriber(&only_b, false));
        // `h` has history: its publications carry offsets.
        let order: Vec<(&str, u64)> = vec![
            ("a", 1),
            ("a", 2),
            ("b", 1),
            ("a", 3),
            ("h", 1),
            ("b", 2),
            ("h", 2),
        ];
        let long: Vec<(&str, u64)> = (1..=burst::MAX_RUN as u64 * 2 + 7)
            .map(|n| ("a", n))
            .collect();
        for sequence in [order, long] {
            let mut seen = Vec::new();
            burst::in_one_poll(|| {
                for (channel, n) in &sequence {
                    let publication = match *channel {
                        "h" => publication(*n),
                        _ => unpositioned(*n),
                    };
                    registry.publication_or_gather(channel, &publication);
                    if *channel == "h" {
                        // Delivered at once, after what was gathered before it.
                        seen.extend(queued_ids(&out));
                        assert_eq!(seen.last(), Some(&("h".to_string(), *n)));
                    }
                }
            });
            seen.extend(queued_ids(&out));
            let want: Vec<(String, u64)> =
                sequence.iter().map(|(c, n)| (c.to_string(), *n)).collect();
            assert_eq!(seen, want);
            let want_b: Vec<(String, u64)> = want.into_iter().filter(|(c, _)| c == "b").collect();
            assert_eq!(queued_ids(&only_b), want_b);
        }
    }

    /// A join or leave push during a gathering poll comes after the publications gathered
    /// before it, as the broker sent them.
    #[test]
    fn join_and_leave_keep_their_place_in_a_burst() {
        let registry = Arc::new(Registry::new(Arc::new(Metrics::default())));
        let events = crate::cluster::HubEvents {
            registry: registry.clone(),
            hub: std::sync::Weak::new(),
        };
        let out = Arc::new(Outbound::new(1 << 20));
        let mut sub = subscriber(&out, false);
        sub.join_leave = true;
        registry.add("ch", 1, sub);
        let info = ClientInfo {
            user: "u".into(),
            client: "c".into(),
            conn_info: None,
            chan_info: None,
        };
        burst::in_one_poll(|| {
            events.publication("ch", &unpositioned(1));
            events.join("ch", &info);
            events.publication("ch", &unpositioned(2));
            events.publication("ch", &unpositioned(3));
            events.leave("ch", &info);
        });
        let kinds: Vec<String> = raw_queue(&out)
            .0
            .iter()
            .map(|b| {
                let v: serde_json::Value = serde_json::from_slice(b).unwrap();
                let push = v["push"].as_object().unwrap();
                match push.get("pub") {
                    Some(p) => format!("pub {}", p["data"]["n"]),
                    None => push.keys().find(|k| *k != "channel").unwrap().clone(),
                }
            })
            .collect();
        assert_eq!(kinds, ["pub 1", "join", "pub 2", "pub 3", "leave"]);
    }

    /// Outside a gathering poll a publication is delivered at once.
    #[test]
    fn outside_a_gathering_poll_delivery_is_immediate() {
        let registry = Arc::new(Registry::new(Arc::new(Metrics::default())));
        let out = Arc::new(Outbound::new(1 << 20));
        registry.add("ch", 1, subscriber(&out, false));
        registry.publication_or_gather("ch", &publication(1));
        assert_eq!(queued(&out), (vec![1], false));
    }
}
