//! The hub: the node's connections, channels and the broker behind them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use switchboard_proto::{
    ClientInfo, DisconnectCode, ErrorCode, Publication, RawValue, StreamPosition,
};

use crate::auth::{TokenConfig, TokenVerifier};
use crate::broker::{
    Broker, BrokerError, HistoryFilter, HistoryResult, PresenceStats, PresenceStore, PublishOptions,
};
use crate::channel::Namespaces;
use crate::cluster::{ControlMessage, HubEvents, NodeList, NODE_INFO_INTERVAL};
use crate::config::{HubConfig, NamespaceOptions};
use crate::handlers::Handlers;
use crate::interest::BrokerInterest;
use crate::metrics::Metrics;
use crate::outbound::Control;
use crate::outbound::Outbound;
use crate::proxy::Proxy;
use crate::registry::Registry;
use crate::session::Client;

/// Identity of this node, reported in connect replies and `info`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NodeInfo {
    /// Unique id of this process (a UUID).
    pub id: String,
    /// Human-readable node name from the configuration (defaults to the host name).
    pub name: String,
    /// Server version.
    pub version: &'static str,
}

/// What a transport tells the hub about itself when it accepts a connection.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct TransportInfo {
    /// Transport name for logs and metrics: `websocket`, `http_stream`, `sse`.
    pub name: &'static str,
    /// Whether the client can send commands on the same connection (and so answer pings).
    pub bidirectional: bool,
}

impl TransportInfo {
    /// Describes a transport.
    pub const fn new(name: &'static str, bidirectional: bool) -> Self {
        Self {
            name,
            bidirectional,
        }
    }
}

#[derive(Debug)]
pub(crate) struct ClientEntry {
    pub(crate) id: Arc<str>,
    pub(crate) user: Arc<str>,
    pub(crate) out: Arc<Outbound>,
}

/// Connected clients, by key and by user.
#[derive(Debug, Default)]
pub(crate) struct ClientIndex {
    by_key: HashMap<u64, ClientEntry>,
    /// Connections of each authenticated user. Anonymous connections are not listed here (they
    /// would all share one entry, which 18,000 disconnects at once would scan 18,000 times);
    /// they are only counted.
    by_user: HashMap<Arc<str>, HashSet<u64>>,
    anonymous: usize,
}

impl ClientIndex {
    fn insert(&mut self, key: u64, entry: ClientEntry) {
        if entry.user.is_empty() {
            self.anonymous += 1;
        } else {
            self.by_user
                .entry(entry.user.clone())
                .or_default()
                .insert(key);
        }
        if let Some(old) = self.by_key.insert(key, entry) {
            // Keys are unique per connection; a second insert replaces the first's indexing.
            self.unindex(key, &old);
        }
    }

    fn remove(&mut self, key: u64) {
        if let Some(entry) = self.by_key.remove(&key) {
            self.unindex(key, &entry);
        }
    }

    fn unindex(&mut self, key: u64, entry: &ClientEntry) {
        if entry.user.is_empty() {
            self.anonymous = self.anonymous.saturating_sub(1);
            return;
        }
        if let Some(keys) = self.by_user.get_mut(&entry.user) {
            keys.remove(&key);
            if keys.is_empty() {
                self.by_user.remove(&entry.user);
            }
        }
    }

    /// Number of distinct users (anonymous counts as one).
    fn users(&self) -> usize {
        self.by_user.len() + usize::from(self.anonymous > 0)
    }

    /// Entries of `user`, optionally only the one with client id `client`. For the anonymous
    /// user (`""`) this scans every connection: server API actions name real users.
    fn of_user<'a>(
        &'a self,
        user: &'a str,
        client: Option<&'a str>,
    ) -> Box<dyn Iterator<Item = &'a ClientEntry> + 'a> {
        let matches = move |e: &&ClientEntry| client.is_none_or(|c| &*e.id == c);
        if user.is_empty() {
            return Box::new(
                self.by_key
                    .values()
                    .filter(|e| e.user.is_empty())
                    .filter(matches),
            );
        }
        Box::new(
            self.by_user
                .get(user)
                .into_iter()
                .flatten()
                .filter_map(|k| self.by_key.get(k))
                .filter(matches),
        )
    }
}

pub(crate) struct Inner {
    pub(crate) config: HubConfig,
    pub(crate) connect_tokens: Option<TokenVerifier>,
    pub(crate) proxy: std::sync::OnceLock<Arc<dyn Proxy>>,
    pub(crate) handlers: std::sync::OnceLock<Arc<dyn Handlers>>,
    pub(crate) subscription_tokens: Option<TokenVerifier>,
    pub(crate) namespaces: Namespaces,
    pub(crate) registry: Arc<Registry>,
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) interest: BrokerInterest,
    pub(crate) presence: Arc<dyn PresenceStore>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) clients: Mutex<ClientIndex>,
    /// Queues of connections that have not completed `connect` yet (for shutdown).
    pending: Mutex<HashMap<u64, Arc<Outbound>>>,
    next_key: AtomicU64,
    pub(crate) node: NodeInfo,
    pub(crate) nodes: NodeList,
    /// Sessions of emulated transports held by this node.
    pub(crate) emulation: Arc<crate::emulation::EmulationSessions>,
    /// Handlers of relayed node-to-node messages, by topic.
    pub(crate) relays: crate::relay::Relays,
    shutting_down: AtomicBool,
    started: std::time::Instant,
    /// The write coalescing delay of the node's connections.
    pacer: Arc<crate::pacer::Pacer>,
}

/// Statistics of one node, as reported by the server API's `info`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct NodeStats {
    /// Unique id of the node process.
    pub uid: String,
    /// Node name.
    pub name: String,
    /// Server version.
    pub version: String,
    /// Connections.
    pub num_clients: u64,
    /// Distinct users.
    pub num_users: u64,
    /// Channels with subscribers.
    pub num_channels: u64,
    /// Subscriptions.
    pub num_subs: u64,
    /// Seconds since the node started.
    pub uptime: u64,
}

/// The hub of one node. Cheap to clone (an `Arc`).
///
/// Transports call [`Hub::accept`] for each new connection and feed the returned [`Client`] the
/// frames they read; the server API calls [`Hub::publish`] and friends.
#[derive(Clone)]
pub struct Hub {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("node", &self.inner.node)
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// A hub with `config` over `broker`, which it starts, with presence kept in this process.
    pub fn new(config: HubConfig, broker: Arc<dyn Broker>, node_name: String) -> Self {
        let presence: Arc<dyn PresenceStore> = crate::MemoryBroker::shared();
        Self::with_presence(config, broker, presence, node_name)
    }

    /// A hub with `config` over `broker` (which it starts) and `presence`.
    pub fn with_presence(
        config: HubConfig,
        broker: Arc<dyn Broker>,
        presence: Arc<dyn PresenceStore>,
        node_name: String,
    ) -> Self {
        let metrics = Arc::new(Metrics::default());
        let registry = Arc::new(Registry::new(metrics.clone()));
        let verifier = |c: &TokenConfig| -> Option<TokenVerifier> {
            if !c.is_configured() {
                return None;
            }
            TokenVerifier::new(c)
                .inspect_err(
                    |e| tracing::error!(error = %e, "token keys rejected; token auth disabled"),
                )
                .ok()
        };
        let connect_tokens = verifier(&config.client.token);
        let subscription_tokens = if config.client.subscription_token.is_configured() {
            verifier(&config.client.subscription_token)
        } else {
            verifier(&config.client.token)
        };
        let inner = Arc::new_cyclic(|weak| {
            broker.start(Arc::new(HubEvents {
                registry: registry.clone(),
                hub: weak.clone(),
            }));
            Inner {
                nodes: NodeList::default(),
                emulation: Arc::default(),
                relays: Default::default(),
                proxy: std::sync::OnceLock::new(),
                handlers: std::sync::OnceLock::new(),
                connect_tokens,
                subscription_tokens,
                namespaces: Namespaces::new(&config.channel),
                pacer: Arc::new(crate::pacer::Pacer::new(config.client.write_delay)),
                config,
                registry,
                broker,
                interest: BrokerInterest::default(),
                presence,
                metrics,
                clients: Mutex::new(ClientIndex::default()),
                pending: Mutex::new(HashMap::new()),
                next_key: AtomicU64::new(1),
                node: NodeInfo {
                    id: uuid::Uuid::new_v4().to_string(),
                    name: node_name,
                    version: env!("CARGO_PKG_VERSION"),
                },
                shutting_down: AtomicBool::new(false),
                started: std::time::Instant::now(),
            }
        });
        let hub = Self { inner };
        hub.spawn_node_announcements();
        crate::pacer::Pacer::spawn_monitor(&hub.inner.pacer);
        hub
    }

    /// The write coalescing delay of this node's connections (`client.write_delay`; see
    /// [`crate::pacer`]).
    pub fn pacer(&self) -> &Arc<crate::pacer::Pacer> {
        &self.inner.pacer
    }

    /// Announces this node to the cluster every [`NODE_INFO_INTERVAL`] while the hub lives
    /// (needs a tokio runtime; without one nothing is announced).
    fn spawn_node_announcements(&self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(&self.inner);
        rt.spawn(async move {
            let mut tick = tokio::time::interval(NODE_INFO_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let hub = Hub { inner };
                if hub.is_shutting_down() {
                    return;
                }
                let message = ControlMessage::Node(hub.stats()).encode();
                if let Err(e) = hub.inner.broker.publish_control(&message).await {
                    tracing::debug!(error = %e, "node announcement failed");
                }
            }
        });
    }

    /// Statistics of every live node: this one (fresh) and those heard from recently.
    pub fn nodes(&self) -> Vec<NodeStats> {
        let mut nodes = vec![self.stats()];
        nodes.extend(
            self.inner
                .nodes
                .live(&self.inner.node.id, std::time::Instant::now()),
        );
        nodes
    }

    /// Sends a server API action to every node (including this one), which applies it to its
    /// own connections.
    async fn broadcast_control(&self, message: ControlMessage) -> Result<(), ErrorCode> {
        self.inner
            .broker
            .publish_control(&message.encode())
            .await
            .map_err(broker_error)
    }

    /// Cluster-wide [`Hub::disconnect_user`].
    pub async fn disconnect_everywhere(
        &self,
        user: &str,
        client: Option<&str>,
        whitelist: &[String],
        code: DisconnectCode,
    ) -> Result<(), ErrorCode> {
        self.broadcast_control(ControlMessage::Disconnect {
            user: user.into(),
            client: client.map(Into::into),
            whitelist: whitelist.to_vec(),
            code: code.code,
            reason: code.reason.into(),
        })
        .await
    }

    /// Cluster-wide [`Hub::subscribe_user`].
    pub async fn subscribe_everywhere(
        &self,
        user: &str,
        client: Option<&str>,
        channel: &str,
        info: Option<Box<RawValue>>,
    ) -> Result<(), ErrorCode> {
        self.broadcast_control(ControlMessage::Subscribe {
            user: user.into(),
            client: client.map(Into::into),
            channel: channel.into(),
            info: info.map(|raw| raw.get().to_string()),
        })
        .await
    }

    /// Cluster-wide [`Hub::unsubscribe_user`].
    pub async fn unsubscribe_everywhere(
        &self,
        user: &str,
        client: Option<&str>,
        channel: &str,
    ) -> Result<(), ErrorCode> {
        self.broadcast_control(ControlMessage::Unsubscribe {
            user: user.into(),
            client: client.map(Into::into),
            channel: channel.into(),
        })
        .await
    }

    /// Cluster-wide refresh: new expiry (`None` = never), or `expired` to disconnect with 3005.
    pub async fn refresh_everywhere(
        &self,
        user: &str,
        client: Option<&str>,
        expire_at: Option<u64>,
        expired: bool,
    ) -> Result<(), ErrorCode> {
        self.broadcast_control(ControlMessage::Refresh {
            user: user.into(),
            client: client.map(Into::into),
            expire_at,
            expired,
        })
        .await
    }

    /// The configuration the hub enforces.
    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// This node's identity.
    pub fn node(&self) -> &NodeInfo {
        &self.inner.node
    }

    /// The sessions of emulated transports (HTTP-streaming, SSE) this node holds.
    pub fn emulation_sessions(&self) -> &Arc<crate::emulation::EmulationSessions> {
        &self.inner.emulation
    }

    /// Registers the handler of relayed messages under `topic` (replacing any earlier one).
    pub fn on_relay(&self, topic: &str, handler: crate::relay::RelayHandler) {
        self.inner.relays.set(topic, handler);
    }

    /// Sends `data` to the relay handler of `topic` on node `node` (its [`NodeInfo::id`]):
    /// directly when `node` is this node, else through the broker's control channel. Error 100
    /// when the broker could not take it.
    pub async fn relay(&self, node: &str, topic: &str, data: String) -> Result<(), ErrorCode> {
        if node == self.inner.node.id {
            self.inner.relays.deliver(topic, data);
            return Ok(());
        }
        self.broadcast_control(ControlMessage::Relay {
            node: node.to_owned(),
            topic: topic.to_owned(),
            data,
        })
        .await
    }

    /// Sends `data` to the relay handler of `topic` on every node, this one included, through
    /// the broker's control channel: each node gets it once, and the messages one node sends
    /// arrive everywhere in the order it sent them (when it awaits each call before the next).
    /// Error 100 when the broker could not take it.
    pub async fn relay_all(&self, topic: &str, data: String) -> Result<(), ErrorCode> {
        self.broadcast_control(ControlMessage::Relay {
            node: crate::cluster::EVERY_NODE.to_owned(),
            topic: topic.to_owned(),
            data,
        })
        .await
    }

    /// Hands a batch of commands from `POST /emulation` to session `session` on node `node`:
    /// here when `node` is this node (or empty), else through the broker to every node, where
    /// the one holding the session takes it. Returns what happened here; a forwarded batch is
    /// [`Delivery::Queued`](crate::emulation::Delivery::Queued) once the broker took it (an
    /// unknown session on the other node drops it: that session's stream has ended, and its
    /// client reconnects). A batch for a node that is gone (not heard from within
    /// [`NODE_EXPIRY`](crate::cluster::NODE_EXPIRY), by a node up for at least that long) is
    /// [`Delivery::Unknown`](crate::emulation::Delivery::Unknown) at once. Error 100 when the
    /// broker could not forward it.
    pub async fn route_emulation(
        &self,
        node: &str,
        session: &str,
        data: Bytes,
    ) -> Result<crate::emulation::Delivery, ErrorCode> {
        if node.is_empty() || node == self.inner.node.id {
            return Ok(self.inner.emulation.deliver(session, data));
        }
        if !self.may_be_alive(node) {
            return Ok(crate::emulation::Delivery::Unknown);
        }
        let data = String::from_utf8(data.to_vec()).map_err(|_| ErrorCode::BAD_REQUEST)?;
        self.broadcast_control(ControlMessage::Emulation {
            node: node.to_owned(),
            session: session.to_owned(),
            data,
        })
        .await?;
        Ok(crate::emulation::Delivery::Queued)
    }

    /// Whether node `uid` may hold sessions: it was heard from recently, or this node has not
    /// been up long enough to have heard from every live node.
    fn may_be_alive(&self, uid: &str) -> bool {
        let now = std::time::Instant::now();
        now.duration_since(self.inner.started) < crate::cluster::NODE_EXPIRY
            || self
                .inner
                .nodes
                .live(&self.inner.node.id, now)
                .iter()
                .any(|n| n.uid == uid)
    }

    /// Installs the backend proxy (the server's HTTP implementation). Only the first call has
    /// an effect.
    pub fn set_proxy(&self, proxy: Arc<dyn Proxy>) {
        let _ = self.inner.proxy.set(proxy);
    }

    /// Installs the application's handlers (see [`crate::handlers`]). Only the first call has an
    /// effect; install them before accepting connections.
    pub fn set_handlers(&self, handlers: Arc<dyn Handlers>) {
        let _ = self.inner.handlers.set(handlers);
    }

    /// Registers a new connection with the request headers to forward to proxies and handlers
    /// (only those `proxy` forwards are kept, and only when a proxy or handlers are configured).
    pub fn accept_with_headers<'a>(
        &self,
        transport: TransportInfo,
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Client, DisconnectCode> {
        let mut client = self.accept(transport)?;
        let proxy = &self.inner.config.proxy;
        if proxy.any() || self.inner.handlers.get().is_some() {
            client.set_forwarded_headers(
                headers
                    .into_iter()
                    .filter(|(name, _)| proxy.forwards(&name.to_ascii_lowercase()))
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect(),
            );
        }
        Ok(client)
    }

    /// Registers a new connection. Fails with 3504 "connection limit" when the node is full and
    /// with 3001 "shutdown" while shutting down.
    pub fn accept(&self, transport: TransportInfo) -> Result<Client, DisconnectCode> {
        if self.is_shutting_down() {
            return Err(DisconnectCode::SHUTDOWN);
        }
        let max = self.inner.config.client.max_connections;
        if max > 0 && self.inner.metrics.connections() >= max as i64 {
            self.inner
                .metrics
                .disconnect(DisconnectCode::CONNECTION_LIMIT);
            return Err(DisconnectCode::CONNECTION_LIMIT);
        }
        let key = self.inner.next_key.fetch_add(1, Ordering::Relaxed);
        self.inner.metrics.connection_opened(transport.name);
        let client = Client::new(self.clone(), key, transport);
        self.inner
            .pending
            .lock()
            .insert(key, client.outbound().clone());
        Ok(client)
    }

    pub(crate) fn register_client(&self, key: u64, entry: ClientEntry) {
        self.inner.pending.lock().remove(&key);
        self.inner.clients.lock().insert(key, entry);
    }

    /// This node's statistics.
    pub fn stats(&self) -> NodeStats {
        let m = &self.inner.metrics;
        NodeStats {
            uid: self.inner.node.id.clone(),
            name: self.inner.node.name.clone(),
            version: self.inner.node.version.to_string(),
            num_clients: m.connections().max(0) as u64,
            num_users: self.user_count() as u64,
            num_channels: m.channels().max(0) as u64,
            num_subs: m.subscriptions().max(0) as u64,
            uptime: self.inner.started.elapsed().as_secs(),
        }
    }

    /// Connections of `user` on this node.
    pub fn user_connections(&self, user: &str) -> usize {
        self.inner.clients.lock().of_user(user, None).count()
    }

    /// Number of distinct users connected to this node (anonymous counts as one).
    pub fn user_count(&self) -> usize {
        self.inner.clients.lock().users()
    }

    /// The verifier for connection tokens, when keys are configured (the server feeds it JWKS).
    pub fn connect_tokens(&self) -> Option<&TokenVerifier> {
        self.inner.connect_tokens.as_ref()
    }

    /// The verifier for subscription tokens, when keys are configured.
    pub fn subscription_tokens(&self) -> Option<&TokenVerifier> {
        self.inner.subscription_tokens.as_ref()
    }

    /// Sends `control` to the connections of `user` (only `client` when given); returns how
    /// many were found on this node.
    fn control_user(
        &self,
        user: &str,
        client: Option<&str>,
        control: impl Fn() -> Control,
    ) -> usize {
        let targets: Vec<Arc<Outbound>> = self
            .inner
            .clients
            .lock()
            .of_user(user, client)
            .map(|e| e.out.clone())
            .collect();
        targets
            .iter()
            .filter(|out| out.push_control(control()))
            .count()
    }

    /// Subscribes the connections of `user` (or only `client`) to `channel` without permission
    /// checks; they get a `subscribe` push. Returns how many connections were found.
    pub fn subscribe_user(
        &self,
        user: &str,
        client: Option<&str>,
        channel: &str,
        info: Option<Box<RawValue>>,
    ) -> usize {
        self.control_user(user, client, || Control::Subscribe {
            channel: channel.to_string(),
            info: info.clone(),
        })
    }

    /// Unsubscribes the connections of `user` (or only `client`) from `channel`; they get an
    /// `unsubscribe` push with code 2000. Returns how many connections were found.
    pub fn unsubscribe_user(&self, user: &str, client: Option<&str>, channel: &str) -> usize {
        self.control_user(user, client, || Control::Unsubscribe {
            channel: channel.to_string(),
        })
    }

    /// Sets the expiry (unix seconds, `None` = never) of the connections of `user` (or only
    /// `client`). Returns how many connections were found.
    pub fn refresh_user(&self, user: &str, client: Option<&str>, expire_at: Option<u64>) -> usize {
        self.control_user(user, client, || Control::Refresh { expire_at })
    }

    /// Tells the broker that this node no longer has subscribers on `channels`, in the
    /// background (used where no `.await` is possible, such as `Drop`).
    pub(crate) fn spawn_broker_unsubscribe(&self, channels: Vec<String>) {
        if channels.is_empty() {
            return;
        }
        let inner = self.inner.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                for channel in channels {
                    inner
                        .interest
                        .release(&*inner.broker, &inner.registry, &channel)
                        .await;
                }
            });
        }
    }

    pub(crate) fn unregister_client(&self, key: u64) {
        self.inner.pending.lock().remove(&key);
        self.inner.clients.lock().remove(key);
    }

    /// Publishes `data` into `channel` with the channel's namespace options (server API path:
    /// no permission checks). Returns the publication's stream position.
    pub async fn publish(
        &self,
        channel: &str,
        data: Box<RawValue>,
        info: Option<ClientInfo>,
    ) -> Result<StreamPosition, ErrorCode> {
        let options = self.inner.namespaces.resolve(channel)?;
        self.publish_with(channel, data, info, options).await
    }

    /// Publishes `data` into `channel` with `params` (server API path: no permission checks).
    pub async fn publish_with_params(
        &self,
        channel: &str,
        data: Box<RawValue>,
        params: PublishParams,
    ) -> Result<StreamPosition, ErrorCode> {
        let options = self.inner.namespaces.resolve(channel)?.clone();
        self.publish_full(channel, data, params, &options).await
    }

    pub(crate) async fn publish_with(
        &self,
        channel: &str,
        data: Box<RawValue>,
        info: Option<ClientInfo>,
        options: &NamespaceOptions,
    ) -> Result<StreamPosition, ErrorCode> {
        let params = PublishParams {
            info,
            ..PublishParams::default()
        };
        self.publish_full(channel, data, params, options).await
    }

    async fn publish_full(
        &self,
        channel: &str,
        data: Box<RawValue>,
        params: PublishParams,
        options: &NamespaceOptions,
    ) -> Result<StreamPosition, ErrorCode> {
        let publication = Publication {
            data,
            info: params.info,
            offset: 0,
            tags: params.tags,
        };
        let keep = !params.skip_history;
        let publish_options = PublishOptions {
            history_size: if keep { options.history_size } else { 0 },
            history_ttl: if keep {
                options.history_ttl
            } else {
                Duration::ZERO
            },
            history_meta_ttl: options.history_meta_ttl,
            idempotency_key: params.idempotency_key,
            idempotent_result_ttl: self.inner.config.client.idempotent_result_ttl,
        };
        self.inner
            .broker
            .publish(channel, publication, &publish_options)
            .await
            .map_err(publish_error)
    }

    /// Checks that `channel` is a valid name in a known namespace (error 102 otherwise).
    pub fn check_channel(&self, channel: &str) -> Result<(), ErrorCode> {
        self.inner.namespaces.resolve(channel).map(|_| ())
    }

    /// Who is in `channel` (error 108 when the namespace has no presence).
    pub async fn presence(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, ErrorCode> {
        if !self.inner.namespaces.resolve(channel)?.presence {
            return Err(ErrorCode::NOT_AVAILABLE);
        }
        self.inner
            .presence
            .presence(channel)
            .await
            .map_err(broker_error)
    }

    /// Connection and user counts of `channel` (error 108 when the namespace has no presence).
    pub async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, ErrorCode> {
        if !self.inner.namespaces.resolve(channel)?.presence {
            return Err(ErrorCode::NOT_AVAILABLE);
        }
        self.inner
            .presence
            .presence_stats(channel)
            .await
            .map_err(broker_error)
    }

    /// Reads `channel`'s history (error 108 when the namespace keeps none).
    pub async fn history(
        &self,
        channel: &str,
        filter: &HistoryFilter,
    ) -> Result<HistoryResult, ErrorCode> {
        let options = self.inner.namespaces.resolve(channel)?;
        if options.history_size == 0 || options.history_ttl.is_zero() {
            return Err(ErrorCode::NOT_AVAILABLE);
        }
        self.inner
            .broker
            .history(channel, filter, options.history_meta_ttl)
            .await
            .map_err(broker_error)
    }

    /// Removes `channel`'s publications from history.
    pub async fn remove_history(&self, channel: &str) -> Result<(), ErrorCode> {
        self.inner.namespaces.resolve(channel)?;
        self.inner
            .broker
            .remove_history(channel)
            .await
            .map_err(broker_error)
    }

    /// Disconnects every connection of `user` (or only `client`) with `code`, except client ids
    /// in `keep`; returns how many were disconnected.
    pub fn disconnect_user(
        &self,
        user: &str,
        client: Option<&str>,
        keep: &[String],
        code: DisconnectCode,
    ) -> usize {
        let targets: Vec<Arc<Outbound>> = self
            .inner
            .clients
            .lock()
            .of_user(user, client)
            .filter(|e| !keep.iter().any(|k| **k == *e.id))
            .map(|e| e.out.clone())
            .collect();
        for out in &targets {
            out.close(code);
        }
        targets.len()
    }

    /// Disconnects the connection with client id `client` with `code`; returns whether it was
    /// found on this node.
    pub fn disconnect_client(&self, client: &str, code: DisconnectCode) -> bool {
        self.close_matching(code, |e| &*e.id == client) > 0
    }

    fn close_matching(&self, code: DisconnectCode, pred: impl Fn(&ClientEntry) -> bool) -> usize {
        let targets: Vec<Arc<Outbound>> = self
            .inner
            .clients
            .lock()
            .by_key
            .values()
            .filter(|e| pred(e))
            .map(|e| e.out.clone())
            .collect();
        for out in &targets {
            out.close(code);
        }
        targets.len()
    }

    /// Starts a graceful shutdown: refuses new connections and closes every connection with
    /// `code` (normally 3001 "shutdown", which advises reconnecting). Returns how many
    /// connections were told.
    pub fn shutdown(&self, code: DisconnectCode) -> usize {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        let pending: Vec<Arc<Outbound>> = self.inner.pending.lock().values().cloned().collect();
        for out in &pending {
            out.close(code);
        }
        pending.len() + self.close_matching(code, |_| true)
    }

    /// Whether the broker's backend is reachable.
    pub fn broker_connected(&self) -> bool {
        self.inner.broker.is_connected()
    }

    /// Whether [`Hub::shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::SeqCst)
    }

    /// Channels with local subscribers and their local subscriber counts.
    pub fn channels(&self) -> Vec<(String, usize)> {
        self.inner.registry.channels()
    }

    /// Number of local subscribers of `channel`.
    pub fn subscriber_count(&self, channel: &str) -> usize {
        self.inner.registry.count(channel)
    }
}

/// Options of a server-side publish.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct PublishParams {
    /// Publisher info attached to the publication.
    pub info: Option<ClientInfo>,
    /// String tags attached to the publication.
    pub tags: HashMap<String, String>,
    /// Do not keep this publication in history.
    pub skip_history: bool,
    /// Deduplicates retried publishes within `client.idempotent_result_ttl`.
    pub idempotency_key: Option<String>,
}

pub(crate) fn broker_error(e: BrokerError) -> ErrorCode {
    match e {
        BrokerError::NotAvailable => ErrorCode::NOT_AVAILABLE,
        BrokerError::UnrecoverablePosition => ErrorCode::UNRECOVERABLE_POSITION,
        BrokerError::Unavailable(reason) | BrokerError::OutcomeUnknown(reason) => {
            tracing::warn!(%reason, "broker unavailable");
            ErrorCode::INTERNAL
        }
    }
}

/// [`broker_error`] for a publish, which says when the publication may have been made.
pub(crate) fn publish_error(e: BrokerError) -> ErrorCode {
    match e {
        BrokerError::OutcomeUnknown(reason) => {
            tracing::warn!(%reason, "publish outcome unknown");
            ErrorCode::OUTCOME_UNKNOWN
        }
        e => broker_error(e),
    }
}
