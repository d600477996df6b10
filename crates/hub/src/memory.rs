//! The in-memory broker and presence store: one node, no external service.
//!
//! Each channel with history has a stream: a random epoch, the last offset, and up to
//! `history_size` publications, each kept for `history_ttl`. The stream itself (epoch and offset)
//! lives for `history_meta_ttl` after its last publication; after that it is reclaimed and a new
//! stream starts with a new epoch, so clients holding old positions learn that recovery is not
//! possible. [`MemoryBroker::sweep`] reclaims expired publications, streams, idempotency keys and
//! presence entries; `start` runs it periodically.
//!
//! A channel's publish (offset assignment, history append and local fan-out) happens under the
//! channel's stream lock, so subscribers see one channel's publications in offset order even with
//! concurrent publishers. A publication made while its task gathers a burst (see
//! [`crate::burst`]) is held in the stream instead and delivered, with the others held there,
//! under the same lock when the first of their publishers' polls ends.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use switchboard_proto::{ClientInfo, Publication, StreamPosition};

use crate::broker::{
    Broker, BrokerError, BrokerEvents, HistoryFilter, HistoryResult, PresenceStats, PresenceStore,
    PublishOptions,
};
use crate::burst;

const SHARDS: usize = 32;

/// Default lifetime of a stream position after its last publication when the namespace does not
/// set `history_meta_ttl`.
pub const DEFAULT_META_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// How often the background sweep runs.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Stream {
    epoch: String,
    top: u64,
    publications: VecDeque<(Publication, Instant)>,
    meta_expires: Instant,
    idempotency: HashMap<String, (StreamPosition, Instant)>,
    /// Publications not delivered yet (in offset order): made during gathering polls that
    /// have not ended (see [`crate::burst`]).
    held: Vec<Publication>,
}

impl Stream {
    fn new(now: Instant, meta_ttl: Duration) -> Self {
        Self {
            epoch: MemoryBroker::new_epoch(),
            top: 0,
            publications: VecDeque::new(),
            meta_expires: now + meta_ttl,
            idempotency: HashMap::new(),
            held: Vec::new(),
        }
    }

    fn drop_expired(&mut self, now: Instant) {
        while self
            .publications
            .front()
            .is_some_and(|(_, exp)| *exp <= now)
        {
            self.publications.pop_front();
        }
        self.idempotency.retain(|_, (_, exp)| *exp > now);
        if self.publications.is_empty() && self.publications.capacity() > 0 {
            self.publications = VecDeque::new();
        }
    }

    /// Delivers the held publications (under the stream's lock, which `&mut self` is). Safe
    /// at any time: whatever their publishers gathered before them was delivered before they
    /// were held (see [`crate::burst`]). Called before anything reads the stream's position,
    /// so that a subscriber positioned there never gets them again afterwards.
    fn deliver_held(&mut self, events: Option<&dyn BrokerEvents>, channel: &str) {
        if let (false, Some(events)) = (self.held.is_empty(), events) {
            events.publications(channel, &std::mem::take(&mut self.held));
        }
    }

    fn position(&self) -> StreamPosition {
        StreamPosition {
            offset: self.top,
            epoch: self.epoch.clone(),
        }
    }
}

/// Delivers what `stream` holds (see [`Stream::held`]), under its lock.
fn deliver_held(stream: &Mutex<Stream>, events: &dyn BrokerEvents, channel: &str) {
    stream.lock().deliver_held(Some(events), channel);
}

fn meta_ttl_or_default(ttl: Duration) -> Duration {
    if ttl.is_zero() {
        DEFAULT_META_TTL
    } else {
        ttl
    }
}

type StreamShard = Mutex<HashMap<String, Arc<Mutex<Stream>>>>;
type PresenceShard = Mutex<HashMap<String, HashMap<String, (ClientInfo, Instant)>>>;

/// A broker and presence store for a single node. See the module docs.
pub struct MemoryBroker {
    events: OnceLock<Arc<dyn BrokerEvents>>,
    streams: Box<[StreamShard]>,
    presence: Box<[PresenceShard]>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self {
            events: OnceLock::new(),
            streams: (0..SHARDS).map(|_| Mutex::default()).collect(),
            presence: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: Default::default(),
        }
    }
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("streams", &self.stream_count())
            .finish_non_exhaustive()
    }
}

impl MemoryBroker {
    /// A new broker; [`crate::Hub::new`] starts it.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new stream epoch: eight hex digits of a v4 UUID, unique enough to tell the streams of
    /// one channel apart. The Redis and NATS brokers use it too, so every broker's epochs look
    /// alike.
    pub fn new_epoch() -> String {
        uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
    }

    fn shard_index(&self, channel: &str) -> usize {
        (self.hasher.hash_one(channel) as usize) % SHARDS
    }

    fn events(&self) -> Result<&Arc<dyn BrokerEvents>, BrokerError> {
        self.events
            .get()
            .ok_or_else(|| BrokerError::Unavailable("broker not started".into()))
    }

    /// The channel's stream, created (with a new epoch) when missing or expired.
    fn stream(&self, channel: &str, now: Instant, meta_ttl: Duration) -> Arc<Mutex<Stream>> {
        let mut shard = self.streams[self.shard_index(channel)].lock();
        let entry = shard
            .entry(channel.to_string())
            .or_insert_with(|| Arc::new(Mutex::new(Stream::new(now, meta_ttl))));
        if entry.lock().meta_expires <= now {
            *entry = Arc::new(Mutex::new(Stream::new(now, meta_ttl)));
        }
        entry.clone()
    }

    /// Number of channel streams held (for tests and metrics).
    pub fn stream_count(&self) -> usize {
        self.streams.iter().map(|s| s.lock().len()).sum()
    }

    /// Number of publications held in all histories (for tests and metrics).
    pub fn publication_count(&self) -> usize {
        self.streams
            .iter()
            .map(|s| {
                s.lock()
                    .values()
                    .map(|st| st.lock().publications.len())
                    .sum::<usize>()
            })
            .sum()
    }

    /// Number of channels with presence entries.
    pub fn presence_channel_count(&self) -> usize {
        self.presence.iter().map(|s| s.lock().len()).sum()
    }

    /// Reclaims everything that expired at `now`: publications past their TTL, streams past
    /// their meta TTL, idempotency keys and presence entries.
    pub fn sweep(&self, now: Instant) {
        for shard in self.streams.iter() {
            shard.lock().retain(|channel, stream| {
                let mut s = stream.lock();
                // Normally empty: a gathering poll delivers what it held when it ends.
                s.deliver_held(self.events.get().map(|e| &**e), channel);
                s.drop_expired(now);
                s.meta_expires > now
            });
        }
        for shard in self.presence.iter() {
            shard.lock().retain(|_, entries| {
                entries.retain(|_, (_, exp)| *exp > now);
                !entries.is_empty()
            });
        }
    }

    /// [`Broker::publish`] at a given time (tests use it to control expiry).
    pub fn publish_at(
        &self,
        channel: &str,
        mut publication: Publication,
        options: &PublishOptions,
        now: Instant,
    ) -> Result<StreamPosition, BrokerError> {
        let events = self.events()?.clone();
        if !options.uses_channel_state() {
            events.publication(channel, &publication);
            return Ok(StreamPosition::default());
        }
        let meta_ttl = meta_ttl_or_default(options.history_meta_ttl);
        let stream = self.stream(channel, now, meta_ttl);
        // While its task gathers a burst, a publication with an offset is held in the stream
        // (see the module docs); what the task gathered before goes first.
        let hold = options.uses_history() && burst::gathering();
        let key = Arc::as_ptr(&stream) as usize;
        let registered = hold && burst::before_hold(key);
        let mut s = stream.lock();
        s.drop_expired(now);
        let idempotency = options.idempotency();
        if let Some(key) = idempotency {
            if let Some((position, _)) = s.idempotency.get(key) {
                return Ok(position.clone());
            }
        }
        let position = if options.uses_history() {
            s.top += 1;
            publication.offset = s.top;
            s.publications
                .push_back((publication.clone(), now + options.history_ttl));
            while s.publications.len() > options.history_size {
                s.publications.pop_front();
            }
            s.meta_expires = now + meta_ttl;
            s.position()
        } else {
            StreamPosition::default()
        };
        if let Some(key) = idempotency {
            s.idempotency.insert(
                key.to_string(),
                (position.clone(), now + options.idempotent_result_ttl),
            );
        }
        // Fan out under the stream lock: one channel's publications reach subscribers in
        // offset order, those held before this one first.
        if hold {
            s.held.push(publication);
            if s.held.len() >= burst::MAX_RUN {
                events.publications(channel, &std::mem::take(&mut s.held));
            }
            drop(s);
            if !registered {
                let events = events.clone();
                let channel = channel.to_string();
                burst::hold(key, move || deliver_held(&stream, &*events, &channel));
            }
        } else {
            // Publications held by gathering polls on other threads come first.
            s.deliver_held(Some(&*events), channel);
            events.publication(channel, &publication);
        }
        Ok(position)
    }

    /// [`Broker::history`] at a given time.
    pub fn history_at(
        &self,
        channel: &str,
        filter: &HistoryFilter,
        meta_ttl: Duration,
        now: Instant,
    ) -> Result<HistoryResult, BrokerError> {
        let stream = self.stream(channel, now, meta_ttl_or_default(meta_ttl));
        let mut s = stream.lock();
        s.deliver_held(self.events.get().map(|e| &**e), channel);
        s.drop_expired(now);
        let position = s.position();
        if let Some(since) = &filter.since {
            if since.epoch != s.epoch || since.offset > s.top {
                return Err(BrokerError::UnrecoverablePosition);
            }
        }
        let limit = filter.limit.unwrap_or(usize::MAX);
        let publications: Vec<Publication> = if limit == 0 {
            Vec::new()
        } else if filter.reverse {
            let before = filter.since.as_ref().map_or(u64::MAX, |p| p.offset);
            s.publications
                .iter()
                .rev()
                .map(|(p, _)| p)
                .filter(|p| p.offset < before)
                .take(limit)
                .cloned()
                .collect()
        } else {
            let after = filter.since.as_ref().map_or(0, |p| p.offset);
            s.publications
                .iter()
                .map(|(p, _)| p)
                .filter(|p| p.offset > after)
                .take(limit)
                .cloned()
                .collect()
        };
        Ok(HistoryResult {
            publications,
            position,
        })
    }

    /// [`PresenceStore::add_presence`] at a given time.
    pub fn add_presence_at(&self, channel: &str, info: &ClientInfo, ttl: Duration, now: Instant) {
        self.presence[self.shard_index(channel)]
            .lock()
            .entry(channel.to_string())
            .or_default()
            .insert(info.client.clone(), (info.clone(), now + ttl));
    }

    /// [`PresenceStore::presence`] at a given time.
    pub fn presence_at(&self, channel: &str, now: Instant) -> HashMap<String, ClientInfo> {
        self.presence[self.shard_index(channel)]
            .lock()
            .get(channel)
            .map(|entries| {
                entries
                    .iter()
                    .filter(|(_, (_, exp))| *exp > now)
                    .map(|(k, (info, _))| (k.clone(), info.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn spawn_sweeper(self: &Arc<Self>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak: Weak<Self> = Arc::downgrade(self);
        rt.spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(broker) = weak.upgrade() else { return };
                broker.sweep(Instant::now());
            }
        });
    }
}

/// Starts the periodic sweep for a shared memory broker. [`crate::Hub::new`] calls
/// [`Broker::start`], which cannot reach the `Arc`; [`MemoryBroker::shared`] does both.
impl MemoryBroker {
    /// A new broker in an `Arc`, with its background sweep running (needs a tokio runtime; without
    /// one, call [`MemoryBroker::sweep`] yourself).
    pub fn shared() -> Arc<Self> {
        let broker = Arc::new(Self::new());
        broker.spawn_sweeper();
        broker
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    fn start(&self, events: Arc<dyn BrokerEvents>) {
        let _ = self.events.set(events);
    }

    async fn subscribe(&self, _channel: &str) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn unsubscribe(&self, _channel: &str) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn publish(
        &self,
        channel: &str,
        publication: Publication,
        options: &PublishOptions,
    ) -> Result<StreamPosition, BrokerError> {
        self.publish_at(channel, publication, options, Instant::now())
    }

    async fn publish_join(&self, channel: &str, info: &ClientInfo) -> Result<(), BrokerError> {
        self.events()?.join(channel, info);
        Ok(())
    }

    async fn publish_leave(&self, channel: &str, info: &ClientInfo) -> Result<(), BrokerError> {
        self.events()?.leave(channel, info);
        Ok(())
    }

    async fn publish_control(&self, message: &[u8]) -> Result<(), BrokerError> {
        self.events()?.control(message);
        Ok(())
    }

    async fn history(
        &self,
        channel: &str,
        filter: &HistoryFilter,
        meta_ttl: Duration,
    ) -> Result<HistoryResult, BrokerError> {
        self.history_at(channel, filter, meta_ttl, Instant::now())
    }

    async fn remove_history(&self, channel: &str) -> Result<(), BrokerError> {
        let stream = self.streams[self.shard_index(channel)]
            .lock()
            .get(channel)
            .cloned();
        if let Some(stream) = stream {
            stream.lock().publications = VecDeque::new();
        }
        Ok(())
    }
}

#[async_trait]
impl PresenceStore for MemoryBroker {
    async fn add_presence(
        &self,
        channel: &str,
        info: &ClientInfo,
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        self.add_presence_at(channel, info, ttl, Instant::now());
        Ok(())
    }

    async fn remove_presence(&self, channel: &str, client: &str) -> Result<(), BrokerError> {
        let mut shard = self.presence[self.shard_index(channel)].lock();
        if let Some(entries) = shard.get_mut(channel) {
            entries.remove(client);
            if entries.is_empty() {
                shard.remove(channel);
            }
        }
        Ok(())
    }

    async fn presence(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, BrokerError> {
        Ok(self.presence_at(channel, Instant::now()))
    }

    async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, BrokerError> {
        Ok(PresenceStats::of(
            &self.presence_at(channel, Instant::now()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    struct Nothing;
    impl BrokerEvents for Nothing {
        fn publication(&self, _: &str, _: &Publication) {}
        fn join(&self, _: &str, _: &ClientInfo) {}
        fn leave(&self, _: &str, _: &ClientInfo) {}
    }

    fn publication() -> Publication {
        Publication {
            data: RawValue::from_string("1".into()).unwrap(),
            info: None,
            offset: 0,
            tags: HashMap::new(),
        }
    }

    /// Records what the broker delivers: `(channel, offset)` in order, and the size of each
    /// delivery (1 for `publication`, the batch's length for `publications`).
    #[derive(Default)]
    struct Recorder {
        seen: parking_lot::Mutex<Vec<(String, u64)>>,
        deliveries: parking_lot::Mutex<Vec<usize>>,
    }

    impl BrokerEvents for Recorder {
        fn publication(&self, channel: &str, publication: &Publication) {
            self.publications(channel, std::slice::from_ref(publication));
        }
        fn publications(&self, channel: &str, publications: &[Publication]) {
            let mut seen = self.seen.lock();
            seen.extend(publications.iter().map(|p| (channel.to_string(), p.offset)));
            self.deliveries.lock().push(publications.len());
        }
        fn join(&self, _: &str, _: &ClientInfo) {}
        fn leave(&self, _: &str, _: &ClientInfo) {}
    }

    /// A broker started with a [`Recorder`].
    fn recorded() -> (MemoryBroker, Arc<Recorder>) {
        let broker = MemoryBroker::new();
        let recorder = Arc::new(Recorder::default());
        broker.start(recorder.clone());
        (broker, recorder)
    }

    fn with_history() -> PublishOptions {
        PublishOptions {
            history_size: 1000,
            history_ttl: Duration::from_secs(60),
            ..PublishOptions::default()
        }
    }

    /// During a gathering poll a channel's publications with offsets are held and delivered
    /// together when the poll ends; one of another stream delivers the held ones first, and a
    /// publication outside a gathering poll is delivered at once.
    #[test]
    fn publications_with_offsets_are_held_until_the_poll_ends() {
        let (broker, recorder) = recorded();
        let options = with_history();
        let publish = |channel: &str| {
            publish_now(&broker, channel, &options);
        };
        burst::in_one_poll(|| {
            for _ in 0..3 {
                publish("a");
            }
            assert!(recorder.seen.lock().is_empty(), "held during the poll");
            publish("b");
            assert_eq!(recorder.seen.lock().len(), 3, "a's go first");
            publish("b");
            publish("a");
        });
        let a = |n: u64| ("a".to_string(), n);
        let b = |n: u64| ("b".to_string(), n);
        assert_eq!(*recorder.seen.lock(), [a(1), a(2), a(3), b(1), b(2), a(4)]);
        assert_eq!(*recorder.deliveries.lock(), [3, 2, 1]);
        publish("a");
        assert_eq!(recorder.seen.lock().last(), Some(&a(5)));
        // A long burst is delivered in runs of at most MAX_RUN.
        recorder.deliveries.lock().clear();
        burst::in_one_poll(|| {
            for _ in 0..burst::MAX_RUN * 2 + 1 {
                publish("a");
            }
        });
        assert_eq!(
            *recorder.deliveries.lock(),
            [burst::MAX_RUN, burst::MAX_RUN, 1]
        );
    }

    /// Reading a stream's position (a subscribe, a recovery, `history`) delivers what is held
    /// first: a subscriber positioned at the top must never get a publication below it later.
    #[test]
    fn reading_the_position_delivers_the_held_publications_first() {
        let (broker, recorder) = recorded();
        let options = with_history();
        burst::in_one_poll(|| {
            publish_now(&broker, "a", &options);
            publish_now(&broker, "a", &options);
            assert!(recorder.seen.lock().is_empty());
            let filter = HistoryFilter {
                limit: Some(0),
                ..HistoryFilter::default()
            };
            let read = broker
                .history_at("a", &filter, Duration::ZERO, Instant::now())
                .unwrap();
            assert_eq!(read.position.offset, 2);
            assert_eq!(
                *recorder.seen.lock(),
                [("a".to_string(), 1), ("a".to_string(), 2)],
                "delivered before the position was read"
            );
            publish_now(&broker, "a", &options);
        });
        assert_eq!(recorder.seen.lock().len(), 3, "each once");
    }

    /// Publishes a publication into `channel` now.
    fn publish_now(broker: &MemoryBroker, channel: &str, options: &PublishOptions) {
        broker
            .publish_at(channel, publication(), options, Instant::now())
            .unwrap();
    }

    /// Publishers on several threads, each publishing in gathering polls (and one outside
    /// them), into the same channels: every channel's publications are delivered exactly once
    /// each, in offset order, whoever delivers them.
    #[test]
    fn concurrent_gathering_publishers_keep_offset_order() {
        const THREADS: usize = 4;
        const POLLS: usize = 300;
        let (broker, recorder) = recorded();
        let broker = Arc::new(broker);
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let broker = broker.clone();
                std::thread::spawn(move || {
                    let options = with_history();
                    let publish = |channel: &str| {
                        publish_now(&broker, channel, &options);
                    };
                    for i in 0..POLLS {
                        let burst = || {
                            for k in 0..(i + t) % 7 {
                                publish(if k % 3 == 2 { "y" } else { "x" });
                            }
                        };
                        if t == 0 {
                            burst();
                        } else {
                            burst::in_one_poll(burst);
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let seen = recorder.seen.lock();
        for channel in ["x", "y"] {
            let offsets: Vec<u64> = seen
                .iter()
                .filter(|(c, _)| c == channel)
                .map(|(_, o)| *o)
                .collect();
            let want: Vec<u64> = (1..=offsets.len() as u64).collect();
            assert_eq!(offsets, want, "{channel}");
        }
        let total: usize = (0..THREADS)
            .flat_map(|t| (0..POLLS).map(move |i| (i + t) % 7))
            .sum();
        assert_eq!(seen.len(), total);
    }

    /// Memory stays bounded: expired publications, streams and presence are reclaimed.
    #[test]
    fn sweep_reclaims_expired_streams_and_presence() {
        let broker = MemoryBroker::new();
        broker.start(Arc::new(Nothing));
        let now = Instant::now();
        let options = PublishOptions {
            history_size: 10,
            history_ttl: Duration::from_secs(5),
            history_meta_ttl: Duration::from_secs(60),
            ..PublishOptions::default()
        };
        for n in 0..100 {
            let channel = format!("ch{n}");
            for _ in 0..20 {
                broker
                    .publish_at(&channel, publication(), &options, now)
                    .unwrap();
            }
        }
        assert_eq!(broker.stream_count(), 100);
        assert_eq!(
            broker.publication_count(),
            100 * 10,
            "history_size bounds each stream"
        );
        let info = ClientInfo {
            user: "u".into(),
            client: "c".into(),
            conn_info: None,
            chan_info: None,
        };
        broker.add_presence_at("ch0", &info, Duration::from_secs(30), now);

        broker.sweep(now + Duration::from_secs(6));
        assert_eq!(broker.publication_count(), 0, "history_ttl passed");
        assert_eq!(broker.stream_count(), 100, "positions outlive publications");
        assert_eq!(broker.presence_channel_count(), 1);

        broker.sweep(now + Duration::from_secs(61));
        assert_eq!(broker.stream_count(), 0, "history_meta_ttl passed");
        assert_eq!(broker.presence_channel_count(), 0, "presence_ttl passed");

        // A stream created again after expiry has a new epoch.
        let later = now + Duration::from_secs(62);
        let position = broker
            .publish_at("ch0", publication(), &options, later)
            .unwrap();
        assert_eq!(position.offset, 1);
    }
}
