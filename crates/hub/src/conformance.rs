//! The broker conformance suite: the semantics every [`Broker`] and [`PresenceStore`] must have,
//! as async checks that any broker crate runs against its implementation.
//!
//! Each check takes a [`Fixture`]: a fresh broker started with a [`RecordingEvents`], its
//! presence store, and a unique channel prefix (so that runs against a shared Redis or NATS do not
//! see each other). A remote broker delivers events asynchronously, so checks wait for them with a
//! deadline instead of expecting them at once, and wait for expiry the same way: by polling the
//! condition ([`eventually`], [`until_ok`]), never by sleeping a fixed time.
//!
//! The broker crates' own tests use the same helpers: [`RecordingEvents`], [`eventually`],
//! [`until_ok`], [`publication`], [`info`] and [`history_options`].
//!
//! ```no_run
//! # async fn demo() {
//! use switchboard_hub::conformance::{run_all, Fixture};
//! run_all(|| async { Fixture::memory("test") }).await;
//! # }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::value::RawValue;
use switchboard_proto::{ClientInfo, Publication, StreamPosition};

use crate::broker::{
    Broker, BrokerError, BrokerEvents, HistoryFilter, PresenceStore, PublishOptions,
};

/// How long checks wait for asynchronous deliveries.
const DEADLINE: Duration = Duration::from_secs(5);
/// How often [`eventually`] and [`until_ok`] look again.
const POLL: Duration = Duration::from_millis(10);

/// Everything a broker delivered: publications, joins and leaves by channel, gaps and control
/// messages in arrival order. Broker crates use it in their own tests too.
#[derive(Debug, Default)]
pub struct RecordingEvents {
    publications: Mutex<HashMap<String, Vec<Publication>>>,
    joins: Mutex<HashMap<String, Vec<ClientInfo>>>,
    leaves: Mutex<HashMap<String, Vec<ClientInfo>>>,
    gaps: Mutex<Vec<String>>,
    control: Mutex<Vec<Vec<u8>>>,
}

impl RecordingEvents {
    /// Publications delivered for `channel` so far.
    pub fn publications(&self, channel: &str) -> Vec<Publication> {
        self.publications
            .lock()
            .get(channel)
            .cloned()
            .unwrap_or_default()
    }

    /// Offsets of the publications delivered for `channel` so far, in delivery order.
    pub fn offsets(&self, channel: &str) -> Vec<u64> {
        self.publications
            .lock()
            .get(channel)
            .map_or_else(Vec::new, |p| p.iter().map(|p| p.offset).collect())
    }

    /// Joins delivered for `channel` so far.
    pub fn joins(&self, channel: &str) -> usize {
        self.joins.lock().get(channel).map_or(0, Vec::len)
    }

    /// Leaves delivered for `channel` so far.
    pub fn leaves(&self, channel: &str) -> usize {
        self.leaves.lock().get(channel).map_or(0, Vec::len)
    }

    /// Channels reported with [`BrokerEvents::gap`], in order.
    pub fn gaps(&self) -> Vec<String> {
        self.gaps.lock().clone()
    }

    /// Gaps reported for `channel` so far.
    pub fn gap_count(&self, channel: &str) -> usize {
        self.gaps.lock().iter().filter(|c| *c == channel).count()
    }

    /// Control messages delivered, in order.
    pub fn control(&self) -> Vec<Vec<u8>> {
        self.control.lock().clone()
    }
}

/// Appends `item` to `channel`'s list.
fn record<T: Clone>(by_channel: &Mutex<HashMap<String, Vec<T>>>, channel: &str, item: &T) {
    by_channel
        .lock()
        .entry(channel.to_string())
        .or_default()
        .push(item.clone());
}

impl BrokerEvents for RecordingEvents {
    fn publication(&self, channel: &str, publication: &Publication) {
        record(&self.publications, channel, publication);
    }
    fn join(&self, channel: &str, info: &ClientInfo) {
        record(&self.joins, channel, info);
    }
    fn leave(&self, channel: &str, info: &ClientInfo) {
        record(&self.leaves, channel, info);
    }
    fn gap(&self, channel: &str) {
        self.gaps.lock().push(channel.to_string());
    }
    fn control(&self, message: &[u8]) {
        self.control.lock().push(message.to_vec());
    }
}

/// A broker under test. See the module docs.
pub struct Fixture {
    /// The broker, already started with `events`.
    pub broker: Arc<dyn Broker>,
    /// Its presence store.
    pub presence: Arc<dyn PresenceStore>,
    /// What the broker delivered.
    pub events: Arc<RecordingEvents>,
    /// Prefix for channel names of this run.
    pub prefix: String,
}

impl std::fmt::Debug for Fixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fixture")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Fixture {
    /// Starts `broker` with a recorder and wraps it with `presence`.
    pub fn new(broker: Arc<dyn Broker>, presence: Arc<dyn PresenceStore>, prefix: &str) -> Self {
        let events = Arc::new(RecordingEvents::default());
        broker.start(events.clone());
        Self {
            broker,
            presence,
            events,
            prefix: format!("{prefix}-{}", uuid::Uuid::new_v4().simple()),
        }
    }

    /// The in-memory broker and presence store.
    pub fn memory(prefix: &str) -> Self {
        let memory = crate::MemoryBroker::shared();
        Self::new(memory.clone(), memory, prefix)
    }

    fn channel(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    /// Offsets of the publications of `channel`'s history that `filter` selects.
    async fn history_offsets(&self, channel: &str, filter: &HistoryFilter) -> Vec<u64> {
        let history = self
            .broker
            .history(channel, filter, Duration::from_secs(3600));
        let publications = history.await.unwrap().publications;
        publications.iter().map(|p| p.offset).collect()
    }
}

/// A publication with `{"n":n}` as data, no publisher info, no tags.
pub fn publication(n: u64) -> Publication {
    Publication {
        data: RawValue::from_string(format!("{{\"n\":{n}}}")).expect("valid JSON"),
        info: None,
        offset: 0,
        tags: HashMap::new(),
    }
}

/// Options for a channel keeping `size` publications for `ttl` (its position for an hour).
pub fn history_options(size: usize, ttl: Duration) -> PublishOptions {
    PublishOptions {
        history_size: size,
        history_ttl: ttl,
        history_meta_ttl: Duration::from_secs(3600),
        ..PublishOptions::default()
    }
}

/// A client's info without connection or channel info.
pub fn info(user: &str, client: &str) -> ClientInfo {
    ClientInfo {
        user: user.into(),
        client: client.into(),
        conn_info: None,
        chan_info: None,
    }
}

/// Waits up to `within` until `check` holds, looking every 10 ms; panics naming `what` when it
/// still does not.
pub async fn eventually(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    until_ok(what, within, || {
        std::future::ready(if check() {
            Ok(())
        } else {
            Err("the condition does not hold")
        })
    })
    .await;
}

/// Waits until every thread of process `pid` is stopped (`T` in `/proc`), for tests that freeze a
/// broker with `kill -STOP`: the signal is only sent when `kill` returns, and a thread running on
/// another core (a loaded machine) may still answer a request that arrives in between. Panics
/// after 10 s.
pub fn wait_stopped(pid: u32) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stopped = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|tasks| {
                tasks.flatten().all(|task| {
                    std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
                        stat.rsplit_once(')')
                            .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
                    })
                })
            })
            .unwrap_or(false);
        if stopped {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "process {pid} did not stop"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Calls `call` until it returns `Ok`, every 10 ms for up to `within`, and returns its value;
/// panics naming `what` and the last error when the time is up. For conditions that need an
/// async call, such as a read from the broker.
pub async fn until_ok<T, E, F>(what: &str, within: Duration, mut call: impl FnMut() -> F) -> T
where
    E: std::fmt::Debug,
    F: Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match call().await {
            Ok(value) => return value,
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {e:?}"
            ),
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Runs every check, each with a fresh fixture from `make`.
pub async fn run_all<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Fixture>,
{
    publications_reach_subscribed_nodes(make().await).await;
    offsets_grow_by_one_in_order(make().await).await;
    history_limit_since_and_reverse(make().await).await;
    history_is_bounded_by_size(make().await).await;
    history_expires_by_ttl(make().await).await;
    wrong_epoch_is_unrecoverable(make().await).await;
    channels_without_history_have_no_offsets(make().await).await;
    idempotent_publish_is_published_once(make().await).await;
    remove_history_keeps_the_position(make().await).await;
    presence_add_remove_and_stats(make().await).await;
    presence_entries_expire(make().await).await;
    joins_and_leaves_are_delivered(make().await).await;
    concurrent_publishers_keep_offset_order(make().await).await;
}

/// A subscribed node receives publications; after unsubscribing it stops.
pub async fn publications_reach_subscribed_nodes(f: Fixture) {
    let ch = f.channel("deliver");
    f.broker.subscribe(&ch).await.unwrap();
    f.broker
        .publish(&ch, publication(1), &PublishOptions::default())
        .await
        .unwrap();
    eventually("a publication", DEADLINE, || {
        f.events.publications(&ch).len() == 1
    })
    .await;
    assert_eq!(f.events.publications(&ch)[0].data.get(), "{\"n\":1}");
}

/// Offsets start at 1, grow by one and arrive in order; the epoch stays the same.
pub async fn offsets_grow_by_one_in_order(f: Fixture) {
    let ch = f.channel("offsets");
    f.broker.subscribe(&ch).await.unwrap();
    let opts = history_options(100, Duration::from_secs(60));
    let mut epoch = None;
    for n in 1..=20 {
        let pos = f.broker.publish(&ch, publication(n), &opts).await.unwrap();
        assert_eq!(pos.offset, n);
        assert!(!pos.epoch.is_empty());
        assert_eq!(epoch.get_or_insert_with(|| pos.epoch.clone()), &pos.epoch);
    }
    eventually("20 publications", DEADLINE, || {
        f.events.publications(&ch).len() == 20
    })
    .await;
    assert_eq!(f.events.offsets(&ch), (1..=20).collect::<Vec<u64>>());
}

/// History answers with limit, since and reverse, and reports the top position.
pub async fn history_limit_since_and_reverse(f: Fixture) {
    let ch = f.channel("history");
    let opts = history_options(100, Duration::from_secs(60));
    let mut last = StreamPosition::default();
    for n in 1..=10 {
        last = f.broker.publish(&ch, publication(n), &opts).await.unwrap();
    }
    let meta = Duration::from_secs(3600);
    let all = f
        .broker
        .history(&ch, &HistoryFilter::default(), meta)
        .await
        .unwrap();
    assert_eq!(all.publications.len(), 10);
    assert_eq!(all.position, last);
    let only_position = HistoryFilter {
        limit: Some(0),
        ..HistoryFilter::default()
    };
    let top = f.broker.history(&ch, &only_position, meta).await.unwrap();
    assert!(top.publications.is_empty());
    assert_eq!(top.position.offset, 10);
    let since = HistoryFilter {
        since: Some(StreamPosition {
            offset: 7,
            epoch: last.epoch.clone(),
        }),
        ..HistoryFilter::default()
    };
    assert_eq!(f.history_offsets(&ch, &since).await, vec![8, 9, 10]);
    let newest_two = HistoryFilter {
        limit: Some(2),
        reverse: true,
        ..HistoryFilter::default()
    };
    assert_eq!(f.history_offsets(&ch, &newest_two).await, vec![10, 9]);
    let first_three = HistoryFilter {
        limit: Some(3),
        ..HistoryFilter::default()
    };
    assert_eq!(f.history_offsets(&ch, &first_three).await, vec![1, 2, 3]);
}

/// Only the newest `history_size` publications are kept.
pub async fn history_is_bounded_by_size(f: Fixture) {
    let ch = f.channel("size");
    let opts = history_options(5, Duration::from_secs(60));
    for n in 1..=12 {
        f.broker.publish(&ch, publication(n), &opts).await.unwrap();
    }
    let h = f
        .broker
        .history(&ch, &HistoryFilter::default(), Duration::from_secs(3600))
        .await
        .unwrap();
    let offsets: Vec<u64> = h.publications.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, vec![8, 9, 10, 11, 12]);
    assert_eq!(h.position.offset, 12);
}

/// Publications disappear after `history_ttl`; the position stays.
pub async fn history_expires_by_ttl(f: Fixture) {
    let ch = f.channel("ttl");
    let ttl = Duration::from_secs(1);
    let opts = history_options(10, ttl);
    let all = HistoryFilter::default();
    let meta = Duration::from_secs(3600);
    let published = tokio::time::Instant::now();
    f.broker.publish(&ch, publication(1), &opts).await.unwrap();
    let fresh = f.broker.history(&ch, &all, meta).await.unwrap();
    // Only a read that surely came before the TTL ran out (on a slow machine it may not have)
    // must still find the publication.
    if published.elapsed() < ttl / 2 {
        assert_eq!(fresh.publications.len(), 1, "kept until its TTL");
    }
    // Every broker drops expired publications on read at the latest: wait for that (bounded)
    // instead of sleeping past the TTL.
    let expired = until_ok("the publication to expire", ttl + DEADLINE, || async {
        let h = f
            .broker
            .history(&ch, &all, meta)
            .await
            .map_err(|e| e.to_string())?;
        if h.publications.is_empty() {
            Ok(h)
        } else {
            Err(format!("{} publications left", h.publications.len()))
        }
    })
    .await;
    assert_eq!(
        expired.position.offset, 1,
        "the position outlives the publications"
    );
}

/// A position from another epoch cannot be recovered.
pub async fn wrong_epoch_is_unrecoverable(f: Fixture) {
    let ch = f.channel("epoch");
    let opts = history_options(10, Duration::from_secs(60));
    f.broker.publish(&ch, publication(1), &opts).await.unwrap();
    let filter = HistoryFilter {
        since: Some(StreamPosition {
            offset: 0,
            epoch: "not-the-epoch".into(),
        }),
        ..HistoryFilter::default()
    };
    let err = f
        .broker
        .history(&ch, &filter, Duration::from_secs(3600))
        .await
        .unwrap_err();
    assert!(matches!(err, BrokerError::UnrecoverablePosition), "{err:?}");
}

/// Without history, publications carry no offset.
pub async fn channels_without_history_have_no_offsets(f: Fixture) {
    let ch = f.channel("plain");
    f.broker.subscribe(&ch).await.unwrap();
    let pos = f
        .broker
        .publish(&ch, publication(1), &PublishOptions::default())
        .await
        .unwrap();
    assert_eq!(pos, StreamPosition::default());
    eventually("a publication", DEADLINE, || {
        f.events.publications(&ch).len() == 1
    })
    .await;
    assert_eq!(f.events.publications(&ch)[0].offset, 0);
}

/// A retried publish with the same idempotency key is not published again.
pub async fn idempotent_publish_is_published_once(f: Fixture) {
    let ch = f.channel("idem");
    f.broker.subscribe(&ch).await.unwrap();
    let mut opts = history_options(10, Duration::from_secs(60));
    opts.idempotency_key = Some("key-1".into());
    opts.idempotent_result_ttl = Duration::from_secs(60);
    let first = f.broker.publish(&ch, publication(1), &opts).await.unwrap();
    let second = f.broker.publish(&ch, publication(1), &opts).await.unwrap();
    assert_eq!(first, second);
    opts.idempotency_key = Some("key-2".into());
    let third = f.broker.publish(&ch, publication(2), &opts).await.unwrap();
    assert_eq!(third.offset, first.offset + 1);
    // That nothing more arrives needs no sleep: had the retry been published, it would have been
    // published before the third publication, by the same publisher into the same channel, and
    // such publications are delivered in order. Once the third one is here, so would the retry
    // be.
    eventually("the third publication", DEADLINE, || {
        f.events.offsets(&ch).contains(&third.offset)
    })
    .await;
    assert_eq!(f.events.offsets(&ch), [first.offset, third.offset]);
}

/// Removing history drops publications but not the stream position.
pub async fn remove_history_keeps_the_position(f: Fixture) {
    let ch = f.channel("remove");
    let opts = history_options(10, Duration::from_secs(60));
    for n in 1..=3 {
        f.broker.publish(&ch, publication(n), &opts).await.unwrap();
    }
    f.broker.remove_history(&ch).await.unwrap();
    let h = f
        .broker
        .history(&ch, &HistoryFilter::default(), Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(h.publications.is_empty());
    assert_eq!(h.position.offset, 3);
}

/// Presence entries are added, counted per client and user, and removed.
pub async fn presence_add_remove_and_stats(f: Fixture) {
    let ch = f.channel("presence");
    let ttl = Duration::from_secs(60);
    f.presence
        .add_presence(&ch, &info("u1", "c1"), ttl)
        .await
        .unwrap();
    f.presence
        .add_presence(&ch, &info("u1", "c2"), ttl)
        .await
        .unwrap();
    f.presence
        .add_presence(&ch, &info("u2", "c3"), ttl)
        .await
        .unwrap();
    let p = f.presence.presence(&ch).await.unwrap();
    assert_eq!(p.len(), 3);
    assert_eq!(p["c3"].user, "u2");
    let stats = f.presence.presence_stats(&ch).await.unwrap();
    assert_eq!((stats.num_clients, stats.num_users), (3, 2));
    f.presence.remove_presence(&ch, "c1").await.unwrap();
    let stats = f.presence.presence_stats(&ch).await.unwrap();
    assert_eq!((stats.num_clients, stats.num_users), (2, 2));
}

/// Entries that are not refreshed disappear after their TTL (a dead node's clients).
pub async fn presence_entries_expire(f: Fixture) {
    let ch = f.channel("presence-ttl");
    let ttl = Duration::from_secs(1);
    let added = tokio::time::Instant::now();
    f.presence
        .add_presence(&ch, &info("u1", "c1"), ttl)
        .await
        .unwrap();
    f.presence
        .add_presence(&ch, &info("u2", "c2"), Duration::from_secs(60))
        .await
        .unwrap();
    let clients = |p: HashMap<String, ClientInfo>| {
        let mut clients: Vec<String> = p.into_keys().collect();
        clients.sort();
        clients
    };
    let fresh = clients(f.presence.presence(&ch).await.unwrap());
    // As with history: only a read that surely came before the TTL ran out must see both.
    if added.elapsed() < ttl / 2 {
        assert_eq!(fresh, ["c1", "c2"], "kept until its TTL");
    }
    // Every store drops expired entries on read at the latest: wait for that (bounded).
    until_ok("c1's entry to expire", ttl + DEADLINE, || async {
        let present = clients(f.presence.presence(&ch).await.map_err(|e| e.to_string())?);
        if present == ["c2"] {
            Ok(())
        } else {
            Err(format!("present: {present:?}"))
        }
    })
    .await;
}

/// Joins and leaves reach subscribed nodes.
pub async fn joins_and_leaves_are_delivered(f: Fixture) {
    let ch = f.channel("joinleave");
    f.broker.subscribe(&ch).await.unwrap();
    f.broker.publish_join(&ch, &info("u", "c")).await.unwrap();
    f.broker.publish_leave(&ch, &info("u", "c")).await.unwrap();
    eventually("a join and a leave", DEADLINE, || {
        f.events.joins(&ch) == 1 && f.events.leaves(&ch) == 1
    })
    .await;
}

/// Concurrent publishers into one channel: deliveries still come in offset order.
pub async fn concurrent_publishers_keep_offset_order(f: Fixture) {
    let ch = f.channel("concurrent");
    f.broker.subscribe(&ch).await.unwrap();
    let opts = history_options(1000, Duration::from_secs(60));
    let mut tasks = Vec::new();
    for t in 0..4 {
        let broker = f.broker.clone();
        let ch = ch.clone();
        let opts = opts.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..50 {
                broker
                    .publish(&ch, publication(t * 100 + n), &opts)
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    eventually("200 publications", DEADLINE, || {
        f.events.publications(&ch).len() == 200
    })
    .await;
    assert_eq!(f.events.offsets(&ch), (1..=200).collect::<Vec<u64>>());
}
