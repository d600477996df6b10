//! [`NatsBroker`]: the [`Broker`] and [`PresenceStore`] over NATS and JetStream. The design is
//! in the crate README (included in the crate docs).

use std::collections::HashMap;
use std::future::{Future, IntoFuture};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use async_nats::connection::State;
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::kv::{self, Operation, UpdateErrorKind};
use async_nats::jetstream::{self, stream};
use async_nats::{Client, ConnectOptions, Event, ServerAddr, Subscriber};
use async_trait::async_trait;
use futures_util::StreamExt as _;
use parking_lot::{Mutex, RwLock};
use switchboard_hub::{
    Broker, BrokerError, BrokerEvents, HistoryFilter, HistoryResult, PresenceStats, PresenceStore,
    PublishOptions, DEFAULT_META_TTL,
};
use switchboard_proto::{ClientInfo, Publication, StreamPosition};
use tokio::task::JoinHandle;

use crate::codec::{self, now_ms, token, Idempotency, Incoming, Meta};
use crate::config::{ConfigError, NatsConfig};

/// How many times a publish retries its compare-and-set of the channel meta when another node
/// moved it in between.
const CAS_ATTEMPTS: usize = 32;
/// How often idle per-channel publish locks are dropped.
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);
/// Lifetime of an idempotency claim whose publisher never wrote the result (it died), in
/// request timeouts.
const CLAIM_TIMEOUTS: u32 = 4;

/// The NATS broker and presence store. See the crate docs.
///
/// Cheap to clone: clones share one connection. The background tasks stop when the last clone
/// is dropped.
#[derive(Clone)]
pub struct NatsBroker {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for NatsBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBroker")
            .field("url", &self.shared.config.url)
            .field("prefix", &self.shared.config.prefix)
            .field("state", &self.shared.client.connection_state())
            .finish_non_exhaustive()
    }
}

/// Subjects, stream and bucket names derived from the prefix.
struct Names {
    /// `<prefix>.c.` + channel token: pub/sub.
    channel: String,
    /// `<prefix>.h.` + channel token: the history stream's subjects.
    history: String,
    /// `<prefix>.control`.
    control: String,
    /// `<prefix>.sync`: nobody subscribes; requests to it are round trips.
    sync: String,
    history_stream: String,
    meta_bucket: String,
    presence_bucket: String,
    idem_bucket: String,
}

impl Names {
    fn new(prefix: &str) -> Self {
        Self {
            channel: format!("{prefix}.c."),
            history: format!("{prefix}.h."),
            control: format!("{prefix}.control"),
            sync: format!("{prefix}.sync"),
            history_stream: format!("{prefix}-history"),
            meta_bucket: format!("{prefix}-meta"),
            presence_bucket: format!("{prefix}-presence"),
            idem_bucket: format!("{prefix}-idem"),
        }
    }
}

/// JetStream handles, created (or looked up) once NATS is reachable.
struct Store {
    history: stream::Stream,
    meta: kv::Store,
    presence: kv::Store,
    idem: kv::Store,
}

/// A local subscription: the task that reads it. Dropping it unsubscribes.
struct ChannelSub(JoinHandle<()>);

impl Drop for ChannelSub {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What one node remembers about a channel it publishes into: the meta it last wrote and its
/// revision (so the next publish needs no read unless another node wrote in between).
#[derive(Default)]
struct ChannelState {
    meta: Option<(u64, Meta)>,
}

struct Shared {
    config: NatsConfig,
    names: Names,
    client: Client,
    js: jetstream::Context,
    events: OnceLock<Arc<dyn BrokerEvents>>,
    store: RwLock<Option<Arc<Store>>>,
    setup: tokio::sync::Mutex<()>,
    subscriptions: Mutex<HashMap<String, ChannelSub>>,
    /// Per-channel publish locks: one node's publishes into a channel are serialised.
    channels: Mutex<HashMap<String, Arc<tokio::sync::Mutex<ChannelState>>>>,
    control: Mutex<Option<Subscriber>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    warned_presence_ttl: AtomicBool,
    warned_idempotency_ttl: AtomicBool,
}

impl Drop for Shared {
    fn drop(&mut self) {
        for task in self.tasks.get_mut().drain(..) {
            task.abort();
        }
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(format!("nats {what}: {e}"))
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl NatsBroker {
    /// Connects to NATS for node `node_id` (used as the connection name).
    ///
    /// Returns at once even when NATS is unreachable: the connection is retried in the
    /// background (and after every loss, forever), and calls that need NATS answer
    /// [`BrokerError::Unavailable`] meanwhile. Fails only for an invalid configuration. Needs a
    /// tokio runtime.
    pub async fn connect(config: NatsConfig, node_id: &str) -> Result<Self, ConfigError> {
        config.validate()?;
        let addrs = config
            .url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| {
                u.parse::<ServerAddr>()
                    .map_err(|e| ConfigError(format!("url {u:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (event_tx, event_rx) = tokio::sync::mpsc::unbounded_channel();
        let options = ConnectOptions::new()
            .name(format!("switchboard {node_id}"))
            .connection_timeout(config.connect_timeout)
            .request_timeout(Some(config.request_timeout))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((attempts as u64).saturating_mul(100).min(2000))
            })
            .event_callback(move |event| {
                let tx = event_tx.clone();
                async move {
                    let _ = tx.send(event);
                }
            });
        let client = options
            .connect(addrs)
            .await
            .map_err(|e| ConfigError(format!("url: {e}")))?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(config.request_timeout);
        let names = Names::new(&config.prefix);
        // Registered locally now and sent whenever the connection is up: this node receives
        // control messages from its first connection on.
        let control = client
            .subscribe(names.control.clone())
            .await
            .map_err(|e| ConfigError(format!("control subscription: {e}")))?;
        let shared = Arc::new(Shared {
            config,
            names,
            client,
            js,
            events: OnceLock::new(),
            store: RwLock::new(None),
            setup: tokio::sync::Mutex::new(()),
            subscriptions: Mutex::new(HashMap::new()),
            channels: Mutex::new(HashMap::new()),
            control: Mutex::new(Some(control)),
            tasks: Mutex::new(Vec::new()),
            warned_presence_ttl: AtomicBool::new(false),
            warned_idempotency_ttl: AtomicBool::new(false),
        });
        let task = tokio::spawn(run_events(Arc::downgrade(&shared), event_rx));
        shared.tasks.lock().push(task);
        Ok(Self { shared })
    }

    /// Whether the connection to NATS is up right now.
    pub fn is_connected(&self) -> bool {
        self.shared.client.connection_state() == State::Connected
    }

    /// Waits up to `within` until NATS is connected and (with `history`) the JetStream stream
    /// and buckets exist; otherwise returns the last reason it was not. Not needed before use:
    /// calls made earlier answer [`BrokerError::Unavailable`].
    pub async fn ready(&self, within: Duration) -> Result<(), BrokerError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            // The round trip also makes sure the control subscription reached the server.
            let result = match self.shared.round_trip().await {
                Ok(()) if !self.shared.config.history => return Ok(()),
                Ok(()) => self.shared.store().await.map(drop),
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => return Ok(()),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// Deletes this prefix's JetStream stream and buckets: all history, stream positions,
    /// idempotency keys and presence of the deployment. For tests and decommissioning.
    pub async fn delete_storage(&self) -> Result<(), BrokerError> {
        let s = &self.shared;
        s.check_connected()?;
        *s.store.write() = None;
        let n = &s.names;
        let mut result = Ok(());
        if let Err(e) = s
            .bounded("delete", s.js.delete_stream(&n.history_stream))
            .await
        {
            result = Err(e);
        }
        for bucket in [&n.meta_bucket, &n.presence_bucket, &n.idem_bucket] {
            if let Err(e) = s.bounded("delete", s.js.delete_key_value(bucket)).await {
                result = Err(e);
            }
        }
        result
    }
}

impl Shared {
    fn events(&self) -> Result<Arc<dyn BrokerEvents>, BrokerError> {
        self.events
            .get()
            .cloned()
            .ok_or_else(|| BrokerError::Unavailable("broker not started".into()))
    }

    fn check_connected(&self) -> Result<(), BrokerError> {
        match self.client.connection_state() {
            State::Connected => Ok(()),
            State::Pending => Err(BrokerError::Unavailable("nats: not connected yet".into())),
            State::Disconnected => Err(BrokerError::Unavailable("nats: disconnected".into())),
        }
    }

    /// A round trip to the server: once it returns, the server has processed everything this
    /// connection sent before (a flush only writes the socket). A request to a subject nobody
    /// serves comes back at once with "no responders".
    async fn round_trip(&self) -> Result<(), BrokerError> {
        self.check_connected()?;
        let request = self
            .client
            .request(self.names.sync.clone(), bytes::Bytes::new());
        match tokio::time::timeout(self.config.request_timeout, request).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => Ok(()),
            Ok(Err(e)) => Err(unavailable("round trip", e)),
            Err(_) => Err(unavailable("round trip", "timed out")),
        }
    }

    /// Runs one NATS operation with the request timeout; errors become
    /// [`BrokerError::Unavailable`].
    async fn bounded<T, E: std::fmt::Display>(
        &self,
        what: &str,
        op: impl Future<Output = Result<T, E>>,
    ) -> Result<T, BrokerError> {
        match tokio::time::timeout(self.config.request_timeout, op).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(unavailable(what, e)),
            Err(_) => Err(unavailable(what, "timed out")),
        }
    }

    /// Like [`Self::bounded`] for JetStream operations: a failure also forgets the JetStream
    /// handles, so the next call looks the stream and buckets up again (and recreates them if
    /// the server lost them).
    async fn js<T, E: std::fmt::Display>(
        &self,
        what: &str,
        op: impl Future<Output = Result<T, E>>,
    ) -> Result<T, BrokerError> {
        let result = self.bounded(what, op).await;
        if result.is_err() {
            *self.store.write() = None;
        }
        result
    }

    /// The JetStream handles; sets the stream and buckets up on first use after a connect.
    async fn store(&self) -> Result<Arc<Store>, BrokerError> {
        if !self.config.history {
            return Err(BrokerError::NotAvailable);
        }
        self.check_connected()?;
        if let Some(store) = self.store.read().clone() {
            return Ok(store);
        }
        let _setup = tokio::time::timeout(self.config.request_timeout, self.setup.lock())
            .await
            .map_err(|_| unavailable("setup", "timed out"))?;
        if let Some(store) = self.store.read().clone() {
            return Ok(store);
        }
        let store = Arc::new(self.create_store().await?);
        *self.store.write() = Some(store.clone());
        Ok(store)
    }

    async fn create_store(&self) -> Result<Store, BrokerError> {
        let c = &self.config;
        let n = &self.names;
        let storage = if c.memory_storage {
            stream::StorageType::Memory
        } else {
            stream::StorageType::File
        };
        let history = self
            .bounded(
                "history stream",
                self.js.get_or_create_stream(stream::Config {
                    name: n.history_stream.clone(),
                    description: Some("switchboard channel history".into()),
                    subjects: vec![format!("{}*", n.history)],
                    max_age: c.history_max_age,
                    storage,
                    num_replicas: c.replicas,
                    allow_direct: true,
                    discard: stream::DiscardPolicy::Old,
                    ..Default::default()
                }),
            )
            .await?;
        // The stream behind a key-value bucket, as async-nats would create it (its own
        // `create_key_value` first reads account info in a shape NATS 2.9 does not send).
        let bucket = |name: &str, max_age: Duration, what: &str| stream::Config {
            name: format!("KV_{name}"),
            description: Some(format!("switchboard {what}")),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: 1,
            max_age,
            storage,
            num_replicas: c.replicas,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        };
        let meta = self
            .key_value(bucket(&n.meta_bucket, c.meta_max_age, "stream positions"))
            .await?;
        let presence = self
            .key_value(bucket(&n.presence_bucket, c.presence_max_age, "presence"))
            .await?;
        let idem = self
            .key_value(bucket(
                &n.idem_bucket,
                c.idempotency_max_age,
                "idempotency keys",
            ))
            .await?;
        Ok(Store {
            history,
            meta,
            presence,
            idem,
        })
    }

    async fn key_value(&self, config: stream::Config) -> Result<kv::Store, BrokerError> {
        let bucket = config.name.trim_start_matches("KV_").to_string();
        if let Ok(Ok(store)) = tokio::time::timeout(
            self.config.request_timeout,
            self.js.get_key_value(bucket.clone()),
        )
        .await
        {
            return Ok(store);
        }
        // Creating is idempotent for an identical config (another node may have been first).
        self.bounded("bucket", self.js.get_or_create_stream(config))
            .await?;
        self.bounded("bucket", self.js.get_key_value(bucket)).await
    }

    fn channel_lock(&self, channel: &str) -> Arc<tokio::sync::Mutex<ChannelState>> {
        self.channels
            .lock()
            .entry(channel.to_string())
            .or_default()
            .clone()
    }

    /// Reads a channel's meta: its revision (0 when missing) and value (None when missing,
    /// deleted or unreadable).
    async fn read_meta(
        &self,
        store: &Store,
        key: &str,
    ) -> Result<(u64, Option<Meta>), BrokerError> {
        let entry = self.js("meta read", store.meta.entry(key)).await?;
        Ok(match entry {
            Some(e) if e.operation == Operation::Put => {
                (e.revision, serde_json::from_slice(&e.value).ok())
            }
            Some(e) => (e.revision, None),
            None => (0, None),
        })
    }

    /// Writes `meta` if the key is still at `revision`: `Ok(None)` when another writer won.
    async fn write_meta(
        &self,
        store: &Store,
        key: &str,
        meta: &Meta,
        revision: u64,
    ) -> Result<Option<u64>, BrokerError> {
        let value = serde_json::to_vec(meta).expect("meta serialises");
        match tokio::time::timeout(
            self.config.request_timeout,
            store.meta.update(key, value.into(), revision),
        )
        .await
        {
            Ok(Ok(revision)) => Ok(Some(revision)),
            Ok(Err(e)) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(None),
            Ok(Err(e)) => {
                *self.store.write() = None;
                Err(unavailable("meta write", e))
            }
            Err(_) => Err(unavailable("meta write", "timed out")),
        }
    }

    /// Gives out the channel's next offset: compare-and-set of `{epoch, top}` in the meta
    /// bucket, starting a new epoch when the stream position expired.
    async fn allocate(
        &self,
        store: &Store,
        key: &str,
        state: &mut ChannelState,
        options: &PublishOptions,
    ) -> Result<Meta, BrokerError> {
        let ttl = ms(meta_ttl_or_default(options.history_meta_ttl));
        for _ in 0..CAS_ATTEMPTS {
            let (revision, current) = match state.meta.take() {
                Some((revision, meta)) => (revision, Some(meta)),
                None => self.read_meta(store, key).await?,
            };
            let now = now_ms();
            let mut next = match current {
                Some(meta) if meta.expires > now => meta,
                _ => Meta::fresh(now, ttl),
            };
            next.top += 1;
            next.expires = now.saturating_add(ttl);
            next.size = options.history_size as u64;
            if let Some(revision) = self.write_meta(store, key, &next, revision).await? {
                state.meta = Some((revision, next.clone()));
                return Ok(next);
            }
        }
        Err(BrokerError::Unavailable(
            "nats: too many concurrent publishers on one channel".into(),
        ))
    }

    /// The channel's current meta, created (with a new epoch) when missing or expired.
    async fn current_meta(
        &self,
        store: &Store,
        key: &str,
        meta_ttl: Duration,
    ) -> Result<Meta, BrokerError> {
        let ttl = ms(meta_ttl_or_default(meta_ttl));
        for _ in 0..CAS_ATTEMPTS {
            let (revision, current) = self.read_meta(store, key).await?;
            let now = now_ms();
            match current {
                Some(meta) if meta.expires > now => return Ok(meta),
                _ => {
                    let fresh = Meta::fresh(now, ttl);
                    if self
                        .write_meta(store, key, &fresh, revision)
                        .await?
                        .is_some()
                    {
                        return Ok(fresh);
                    }
                }
            }
        }
        Err(BrokerError::Unavailable(
            "nats: too many concurrent writers on one channel".into(),
        ))
    }

    /// Reads the messages of `filter` in `stream` that exist now, through a short-lived
    /// ephemeral pull consumer.
    async fn read_subject(
        &self,
        stream: &stream::Stream,
        filter: String,
        deliver_policy: DeliverPolicy,
    ) -> Result<Vec<jetstream::Message>, BrokerError> {
        let consumer: jetstream::consumer::PullConsumer = self
            .js(
                "consumer",
                stream.create_consumer(pull::Config {
                    filter_subject: filter,
                    deliver_policy,
                    ack_policy: AckPolicy::None,
                    inactive_threshold: Duration::from_secs(30),
                    memory_storage: true,
                    ..Default::default()
                }),
            )
            .await?;
        let info = consumer.cached_info();
        let pending = usize::try_from(info.num_pending).unwrap_or(usize::MAX);
        let name = info.name.clone();
        let mut messages = Vec::with_capacity(pending.min(4096));
        let read = async {
            if pending == 0 {
                return Ok(());
            }
            let mut batch = consumer
                .fetch()
                .max_messages(pending)
                .messages()
                .await
                .map_err(|e| unavailable("fetch", e))?;
            while let Some(message) = batch.next().await {
                messages.push(message.map_err(|e| unavailable("fetch", e))?);
                if messages.len() >= pending {
                    break;
                }
            }
            Ok(())
        };
        let result = match tokio::time::timeout(self.config.request_timeout, read).await {
            Ok(r) => r,
            Err(_) => Err(unavailable("fetch", "timed out")),
        };
        // The consumer would go away after its inactivity threshold; deleting it now keeps the
        // server's consumer count low.
        let stream = stream.clone();
        tokio::spawn(async move {
            let _ = stream.delete_consumer(&name).await;
        });
        result.map(|()| messages)
    }

    /// Claims an idempotency key. `Ok(Err(position))` when the key was already used (its
    /// result); `Ok(Ok(revision))` when this publisher owns it now.
    async fn claim(
        &self,
        store: &Store,
        key: &str,
    ) -> Result<Result<u64, StreamPosition>, BrokerError> {
        let claim_ms = ms(self.config.request_timeout) * u64::from(CLAIM_TIMEOUTS);
        let deadline = tokio::time::Instant::now() + self.config.request_timeout;
        loop {
            let entry = self.js("idempotency read", store.idem.entry(key)).await?;
            let now = now_ms();
            let claim = serde_json::to_vec(&Idempotency {
                x: now + claim_ms,
                r: None,
            })
            .expect("idempotency entries serialise");
            let revision = match entry {
                Some(e) if e.operation == Operation::Put => {
                    match serde_json::from_slice::<Idempotency>(&e.value) {
                        Ok(i) if i.x > now => match i.r {
                            Some(position) => return Ok(Err(position)),
                            None => None,
                        },
                        _ => Some(e.revision),
                    }
                }
                Some(e) => Some(e.revision),
                None => Some(0),
            };
            if let Some(revision) = revision {
                match tokio::time::timeout(
                    self.config.request_timeout,
                    store.idem.update(key, claim.into(), revision),
                )
                .await
                {
                    Ok(Ok(revision)) => return Ok(Ok(revision)),
                    Ok(Err(e)) if e.kind() == UpdateErrorKind::WrongLastRevision => {}
                    Ok(Err(e)) => return Err(unavailable("idempotency claim", e)),
                    Err(_) => return Err(unavailable("idempotency claim", "timed out")),
                }
            }
            // Claimed by a publisher on another node that has not finished yet.
            if tokio::time::Instant::now() >= deadline {
                return Err(BrokerError::Unavailable(
                    "nats: a publish with the same idempotency key is in progress".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn publish(
        &self,
        channel: &str,
        mut publication: Publication,
        options: &PublishOptions,
    ) -> Result<StreamPosition, BrokerError> {
        self.events()?;
        let idempotency = options
            .idempotency_key
            .as_ref()
            .filter(|k| !k.is_empty() && !options.idempotent_result_ttl.is_zero());
        let subject = format!("{}{}", self.names.channel, token(channel));
        if !options.uses_history() && idempotency.is_none() {
            self.check_connected()?;
            let payload = codec::encode_publication("", &publication);
            self.bounded("publish", self.client.publish(subject, payload.into()))
                .await?;
            return Ok(StreamPosition::default());
        }
        let store = self.store().await?;
        let key = token(channel);
        let lock = self.channel_lock(channel);
        let mut state = tokio::time::timeout(self.config.request_timeout, lock.lock())
            .await
            .map_err(|_| unavailable("publish", "timed out waiting for earlier publishes"))?;

        let idem_key = idempotency.map(|k| format!("{key}.{}", token(k)));
        if let Some(idem_key) = &idem_key {
            if options.idempotent_result_ttl > self.config.idempotency_max_age
                && !self.warned_idempotency_ttl.swap(true, Ordering::Relaxed)
            {
                tracing::warn!(
                    ttl = ?options.idempotent_result_ttl,
                    max_age = ?self.config.idempotency_max_age,
                    "idempotent_result_ttl exceeds [broker.nats] idempotency_max_age; keys are forgotten earlier"
                );
            }
            if let Err(position) = self.claim(&store, idem_key).await? {
                return Ok(position);
            }
        }

        let result = self
            .append_and_publish(&store, &key, &mut state, subject, &mut publication, options)
            .await;

        if let Some(idem_key) = &idem_key {
            match &result {
                Ok(position) => {
                    let done = serde_json::to_vec(&Idempotency {
                        x: now_ms() + ms(options.idempotent_result_ttl),
                        r: Some(position.clone()),
                    })
                    .expect("idempotency entries serialise");
                    if let Err(e) = self
                        .bounded("idempotency write", store.idem.put(idem_key, done.into()))
                        .await
                    {
                        // Published already: report success; a retry within the claim's
                        // lifetime is refused as in progress, later it publishes again.
                        tracing::warn!(channel, error = %e, "idempotency result not stored");
                    }
                }
                Err(_) => {
                    let _ = self
                        .bounded("idempotency release", store.idem.delete(idem_key))
                        .await;
                }
            }
        }
        result
    }

    /// With the channel's publish lock held: gives the publication its offset, stores it in the
    /// history stream, trims, and publishes it to subscribed nodes.
    async fn append_and_publish(
        &self,
        store: &Store,
        key: &str,
        state: &mut ChannelState,
        subject: String,
        publication: &mut Publication,
        options: &PublishOptions,
    ) -> Result<StreamPosition, BrokerError> {
        if !options.uses_history() {
            let payload = codec::encode_publication("", publication);
            self.bounded("publish", self.client.publish(subject, payload.into()))
                .await?;
            return Ok(StreamPosition::default());
        }
        let meta = self.allocate(store, key, state, options).await?;
        publication.offset = meta.top;
        let expires = now_ms().saturating_add(ms(options.history_ttl));
        let stored = codec::encode_stored(&meta.epoch, expires, publication);
        let history_subject = format!("{}{key}", self.names.history);
        let ack = self
            .js(
                "history append",
                self.js.publish(history_subject.clone(), stored.into()),
            )
            .await?;
        self.js("history append", ack.into_future()).await?;
        let payload = codec::encode_publication(&meta.epoch, publication);
        self.bounded("publish", self.client.publish(subject, payload.into()))
            .await?;
        // Trim lazily (reads only return the newest `size` offsets anyway): at most `size`
        // extra publications stay stored.
        let size = options.history_size as u64;
        if meta.top % size.clamp(1, 100) == 0 {
            let purge = store.history.purge().filter(history_subject).keep(size);
            if let Err(e) = self.bounded("history trim", purge.into_future()).await {
                tracing::debug!(error = %e, "history trim failed; the next one catches up");
            }
        }
        Ok(meta.position())
    }

    async fn history(
        &self,
        channel: &str,
        filter: &HistoryFilter,
        meta_ttl: Duration,
    ) -> Result<HistoryResult, BrokerError> {
        let store = self.store().await?;
        let key = token(channel);
        let meta = self.current_meta(&store, &key, meta_ttl).await?;
        let position = meta.position();
        if let Some(since) = &filter.since {
            if since.epoch != meta.epoch || since.offset > meta.top {
                return Err(BrokerError::UnrecoverablePosition);
            }
        }
        let limit = filter.limit.unwrap_or(usize::MAX);
        if limit == 0 || meta.top == 0 {
            let mut result = HistoryResult::default();
            result.position = position;
            return Ok(result);
        }
        let messages = self
            .read_subject(
                &store.history,
                format!("{}{key}", self.names.history),
                DeliverPolicy::All,
            )
            .await?;
        let now = now_ms();
        let oldest = meta.top.saturating_sub(meta.size);
        let mut kept: Vec<Publication> = messages
            .iter()
            .filter_map(|m| codec::decode_stored(&m.payload))
            .filter(|(epoch, expires, p)| {
                *epoch == meta.epoch && *expires > now && p.offset > oldest && p.offset <= meta.top
            })
            .map(|(_, _, p)| p)
            .collect();
        kept.sort_by_key(|p| p.offset);
        kept.dedup_by_key(|p| p.offset);
        let publications = if filter.reverse {
            let before = filter.since.as_ref().map_or(u64::MAX, |p| p.offset);
            kept.into_iter()
                .rev()
                .filter(|p| p.offset < before)
                .take(limit)
                .collect()
        } else {
            let after = filter.since.as_ref().map_or(0, |p| p.offset);
            kept.into_iter()
                .filter(|p| p.offset > after)
                .take(limit)
                .collect()
        };
        let mut result = HistoryResult::default();
        result.publications = publications;
        result.position = position;
        Ok(result)
    }

    fn presence_key(channel: &str, client: &str) -> String {
        format!("{}.{}", token(channel), token(client))
    }

    async fn presence(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, BrokerError> {
        let store = self.store().await?;
        let filter = format!("{}{}.*", store.presence.prefix, token(channel));
        let messages = self
            .read_subject(
                &store.presence.stream,
                filter,
                DeliverPolicy::LastPerSubject,
            )
            .await?;
        let now = now_ms();
        Ok(messages
            .iter()
            .filter(|m| !m.payload.is_empty())
            .filter_map(|m| codec::decode_presence(&m.payload))
            .filter(|(expires, _)| *expires > now)
            .map(|(_, info)| (info.client.clone(), info))
            .collect())
    }

    /// Drops publish locks nobody holds or waits for.
    fn sweep(&self) {
        self.channels
            .lock()
            .retain(|_, lock| Arc::strong_count(lock) > 1);
    }
}

fn meta_ttl_or_default(ttl: Duration) -> Duration {
    if ttl.is_zero() {
        DEFAULT_META_TTL
    } else {
        ttl
    }
}

/// Handles connection events: after every (re)connect, tells subscribers of every channel this
/// node is subscribed to that they may have missed publications, and makes sure the JetStream
/// stream and buckets exist. Also sweeps idle publish locks.
async fn run_events(shared: Weak<Shared>, mut events: tokio::sync::mpsc::UnboundedReceiver<Event>) {
    // Gaps are possible only after a connection was lost (not after the first connect).
    let mut lost = false;
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = sweep.tick() => {
                match shared.upgrade() {
                    Some(shared) => shared.sweep(),
                    None => return,
                }
                continue;
            }
        };
        let Some(event) = event else { return };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        match event {
            Event::Connected => {
                tracing::info!(url = %shared.config.url, "nats connected");
                // The client queued its resubscriptions before reporting the connection:
                // after a round trip, publications reach this node again.
                let _ = shared.round_trip().await;
                if shared.config.history {
                    if let Err(e) = shared.store().await {
                        tracing::warn!(error = %e, "nats jetstream setup failed; retried on use");
                    }
                }
                if std::mem::take(&mut lost) {
                    let channels: Vec<String> =
                        shared.subscriptions.lock().keys().cloned().collect();
                    if let Some(events) = shared.events.get() {
                        for channel in &channels {
                            events.gap(channel);
                        }
                    }
                }
            }
            Event::Disconnected => {
                lost = true;
                tracing::warn!(url = %shared.config.url, "nats disconnected");
            }
            other => tracing::debug!(event = %other, "nats event"),
        }
    }
}

/// Reads one channel's subscription and delivers its messages through a [`Reorder`].
async fn run_channel(events: Arc<dyn BrokerEvents>, channel: String, mut sub: Subscriber) {
    let mut order = Reorder::default();
    loop {
        let message = match order.deadline {
            Some(deadline) => tokio::select! {
                message = sub.next() => message,
                _ = tokio::time::sleep_until(deadline.into()) => {
                    order.expire(&*events, &channel);
                    continue;
                }
            },
            None => sub.next().await,
        };
        let Some(message) = message else { return };
        match codec::decode_incoming(&message.payload) {
            Some(Incoming::Publication(epoch, publication)) => {
                order.publication(&*events, &channel, epoch, publication, Instant::now());
            }
            Some(Incoming::Join(info)) => events.join(&channel, &info),
            Some(Incoming::Leave(info)) => events.leave(&channel, &info),
            None => tracing::warn!(channel, "ignoring malformed message from nats"),
        }
    }
}

/// How long a publication that arrived ahead of a missing offset waits for it.
const REORDER_WINDOW: Duration = Duration::from_millis(100);
/// How many publications may wait; beyond, the missing ones are given up at once.
const REORDER_MAX: usize = 1024;

/// Puts one channel's publications back in offset order. Publishers on several nodes get
/// consecutive offsets but their messages may cross on the way: a publication that arrives
/// ahead of a missing offset is held for up to [`REORDER_WINDOW`]; when the missing one
/// arrives, both are delivered in order; when the window passes, a gap is reported (subscribers
/// recover from history) and the held ones are delivered. A publication older than one already
/// delivered is dropped (the gap reported covers it). A new epoch is a gap too.
#[derive(Default)]
struct Reorder {
    /// Epoch and offset of the last delivered publication.
    last: Option<(String, u64)>,
    /// Publications of the current epoch waiting for a missing offset.
    held: std::collections::BTreeMap<u64, Publication>,
    /// When the oldest held publication stops waiting.
    deadline: Option<Instant>,
}

impl Reorder {
    fn publication(
        &mut self,
        events: &dyn BrokerEvents,
        channel: &str,
        epoch: String,
        publication: Publication,
        now: Instant,
    ) {
        let offset = publication.offset;
        if offset == 0 {
            events.publication(channel, &publication);
            return;
        }
        let Some((last_epoch, last)) = &mut self.last else {
            self.last = Some((epoch, offset));
            events.publication(channel, &publication);
            return;
        };
        if *last_epoch != epoch {
            self.expire(events, channel);
            events.gap(channel);
            self.last = Some((epoch, offset));
            events.publication(channel, &publication);
            return;
        }
        if offset <= *last || self.held.contains_key(&offset) {
            tracing::debug!(channel, offset, "dropping late publication");
            return;
        }
        if offset == *last + 1 {
            *last = offset;
            events.publication(channel, &publication);
            self.release(events, channel);
            return;
        }
        self.held.insert(offset, publication);
        if self.held.len() > REORDER_MAX {
            self.expire(events, channel);
        } else if self.deadline.is_none() {
            self.deadline = Some(now + REORDER_WINDOW);
        }
    }

    /// Delivers held publications that follow the last delivered one.
    fn release(&mut self, events: &dyn BrokerEvents, channel: &str) {
        let Some((_, last)) = &mut self.last else {
            return;
        };
        while let Some(entry) = self.held.first_entry() {
            if *entry.key() != *last + 1 {
                break;
            }
            *last += 1;
            events.publication(channel, &entry.remove());
        }
        if self.held.is_empty() {
            self.deadline = None;
        }
    }

    /// The missing offsets are given up: reports the gap and delivers what is held.
    fn expire(&mut self, events: &dyn BrokerEvents, channel: &str) {
        self.deadline = None;
        if self.held.is_empty() {
            return;
        }
        events.gap(channel);
        for (offset, publication) in std::mem::take(&mut self.held) {
            if let Some((_, last)) = &mut self.last {
                *last = offset;
            }
            events.publication(channel, &publication);
        }
    }
}

#[async_trait]
impl Broker for NatsBroker {
    fn is_connected(&self) -> bool {
        NatsBroker::is_connected(self)
    }

    fn start(&self, events: Arc<dyn BrokerEvents>) {
        if self.shared.events.set(events.clone()).is_err() {
            return;
        }
        let Some(mut control) = self.shared.control.lock().take() else {
            return;
        };
        let task = tokio::spawn(async move {
            while let Some(message) = control.next().await {
                events.control(&message.payload);
            }
        });
        self.shared.tasks.lock().push(task);
    }

    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        let s = &self.shared;
        let events = s.events()?;
        s.check_connected()?;
        if s.subscriptions.lock().contains_key(channel) {
            return Ok(());
        }
        let subject = format!("{}{}", s.names.channel, token(channel));
        let sub = s.bounded("subscribe", s.client.subscribe(subject)).await?;
        // After a round trip the server has the subscription: publications made after this
        // returns reach this node.
        s.round_trip().await?;
        let task = ChannelSub(tokio::spawn(run_channel(events, channel.to_string(), sub)));
        s.subscriptions
            .lock()
            .entry(channel.to_string())
            .or_insert(task);
        Ok(())
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError> {
        // Dropping the task drops its subscription, which unsubscribes (now, or when the
        // connection is back).
        let removed = self.shared.subscriptions.lock().remove(channel);
        drop(removed);
        Ok(())
    }

    async fn publish(
        &self,
        channel: &str,
        publication: Publication,
        options: &PublishOptions,
    ) -> Result<StreamPosition, BrokerError> {
        self.shared.publish(channel, publication, options).await
    }

    async fn publish_join(&self, channel: &str, info: &ClientInfo) -> Result<(), BrokerError> {
        self.publish_presence_event(channel, codec::KIND_JOIN, info)
            .await
    }

    async fn publish_leave(&self, channel: &str, info: &ClientInfo) -> Result<(), BrokerError> {
        self.publish_presence_event(channel, codec::KIND_LEAVE, info)
            .await
    }

    async fn publish_control(&self, message: &[u8]) -> Result<(), BrokerError> {
        let s = &self.shared;
        s.check_connected()?;
        s.bounded(
            "publish",
            s.client
                .publish(s.names.control.clone(), message.to_vec().into()),
        )
        .await
    }

    async fn history(
        &self,
        channel: &str,
        filter: &HistoryFilter,
        meta_ttl: Duration,
    ) -> Result<HistoryResult, BrokerError> {
        self.shared.history(channel, filter, meta_ttl).await
    }

    async fn remove_history(&self, channel: &str) -> Result<(), BrokerError> {
        let s = &self.shared;
        let store = s.store().await?;
        let subject = format!("{}{}", s.names.history, token(channel));
        s.js(
            "history remove",
            store.history.purge().filter(subject).into_future(),
        )
        .await?;
        Ok(())
    }
}

impl NatsBroker {
    async fn publish_presence_event(
        &self,
        channel: &str,
        kind: u8,
        info: &ClientInfo,
    ) -> Result<(), BrokerError> {
        let s = &self.shared;
        s.check_connected()?;
        let subject = format!("{}{}", s.names.channel, token(channel));
        let payload = codec::encode_presence_event(kind, info);
        s.bounded("publish", s.client.publish(subject, payload.into()))
            .await
    }
}

#[async_trait]
impl PresenceStore for NatsBroker {
    async fn add_presence(
        &self,
        channel: &str,
        info: &ClientInfo,
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        let s = &self.shared;
        let store = s.store().await?;
        if ttl > s.config.presence_max_age && !s.warned_presence_ttl.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                ?ttl,
                max_age = ?s.config.presence_max_age,
                "presence_ttl exceeds [broker.nats] presence_max_age; entries vanish earlier"
            );
        }
        let value = codec::encode_presence(now_ms().saturating_add(ms(ttl)), info);
        s.js(
            "presence add",
            store
                .presence
                .put(Shared::presence_key(channel, &info.client), value.into()),
        )
        .await?;
        Ok(())
    }

    async fn remove_presence(&self, channel: &str, client: &str) -> Result<(), BrokerError> {
        let s = &self.shared;
        let store = s.store().await?;
        s.js(
            "presence remove",
            store.presence.delete(Shared::presence_key(channel, client)),
        )
        .await
    }

    async fn presence(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, BrokerError> {
        self.shared.presence(channel).await
    }

    async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, BrokerError> {
        Ok(PresenceStats::of(&self.shared.presence(channel).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        log: Mutex<Vec<String>>,
    }

    impl BrokerEvents for Recorder {
        fn publication(&self, _channel: &str, p: &Publication) {
            self.log.lock().push(format!("p{}", p.offset));
        }
        fn join(&self, _channel: &str, _info: &ClientInfo) {}
        fn leave(&self, _channel: &str, _info: &ClientInfo) {}
        fn gap(&self, _channel: &str) {
            self.log.lock().push("gap".into());
        }
    }

    fn publication(offset: u64) -> Publication {
        Publication {
            data: serde_json::value::RawValue::from_string("1".into()).unwrap(),
            info: None,
            offset,
            tags: HashMap::new(),
        }
    }

    fn feed(order: &mut Reorder, events: &Recorder, items: &[(&str, u64)], now: Instant) {
        for (epoch, offset) in items {
            order.publication(events, "ch", epoch.to_string(), publication(*offset), now);
        }
    }

    #[test]
    fn crossed_publications_are_put_back_in_order() {
        let events = Recorder::default();
        let mut order = Reorder::default();
        let now = Instant::now();
        feed(
            &mut order,
            &events,
            &[("a", 3), ("a", 5), ("a", 6), ("a", 4), ("a", 7)],
            now,
        );
        assert_eq!(events.log.lock().join(" "), "p3 p4 p5 p6 p7");
        assert!(order.deadline.is_none());
    }

    #[test]
    fn missing_offsets_become_gaps_after_the_window_and_late_ones_are_dropped() {
        let events = Recorder::default();
        let mut order = Reorder::default();
        let now = Instant::now();
        feed(&mut order, &events, &[("a", 3), ("a", 5), ("a", 7)], now);
        assert_eq!(order.deadline, Some(now + REORDER_WINDOW));
        order.expire(&events, "ch");
        feed(
            &mut order,
            &events,
            &[("a", 4), ("a", 8), ("b", 1), ("", 0)],
            now,
        );
        assert_eq!(events.log.lock().join(" "), "p3 gap p5 p7 p8 gap p1 p0");
    }
}
