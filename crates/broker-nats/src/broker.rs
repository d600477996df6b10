//! [`NatsBroker`]: the [`Broker`] and [`PresenceStore`](switchboard_hub::PresenceStore) over NATS and JetStream. The design is
//! in the crate README (included in the crate docs).
//!
//! This module holds the public type, the state its clones share ([`Shared`]) and the
//! [`Broker`] implementation, which hands each call to the module that does that job:
//! `connection` (the NATS connection and its events), `store` (the JetStream stream and
//! buckets), `offsets` (per-channel offset allocation), `history` (publishing with history and
//! reading it), `idempotency` (publish-once keys), `pubsub` (channel subscriptions and messages
//! between nodes), `reorder` (putting received publications back in offset order), `presence`
//! (the presence bucket and the `PresenceStore` implementation) and `control` (node-to-node
//! control messages).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::{jetstream, Client, Subscriber};
use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use switchboard_hub::{
    Broker, BrokerError, BrokerEvents, HistoryFilter, HistoryResult, PublishOptions,
};
use switchboard_proto::{ClientInfo, Publication, StreamPosition};
use tokio::task::JoinHandle;

use crate::codec;
use crate::config::{ConfigError, NatsConfig};
use crate::connection::{self, run_events, run_probe};
use crate::offsets::ChannelState;
use crate::pubsub::ChannelSub;
use crate::store::{Names, Store};

/// The NATS broker and presence store. See the crate docs.
///
/// Cheap to clone: clones share one connection. The background tasks stop when the last clone
/// is dropped.
#[derive(Clone)]
pub struct NatsBroker {
    pub(crate) shared: Arc<Shared>,
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

/// What the clones of one [`NatsBroker`] share; each job's module adds its methods.
pub(crate) struct Shared {
    pub(crate) config: NatsConfig,
    pub(crate) names: Names,
    pub(crate) client: Client,
    pub(crate) js: jetstream::Context,
    pub(crate) events: OnceLock<Arc<dyn BrokerEvents>>,
    pub(crate) store: RwLock<Option<Arc<Store>>>,
    pub(crate) setup: tokio::sync::Mutex<()>,
    pub(crate) subscriptions: Mutex<HashMap<String, ChannelSub>>,
    /// Per-channel publish locks: one node's publishes into a channel are serialised.
    pub(crate) channels: Mutex<HashMap<String, Arc<tokio::sync::Mutex<ChannelState>>>>,
    pub(crate) control: Mutex<Option<Subscriber>>,
    pub(crate) tasks: Mutex<Vec<JoinHandle<()>>>,
    /// False while the health probe gets no answer (see `connection::run_probe`).
    pub(crate) answering: AtomicBool,
    pub(crate) warned_presence_ttl: AtomicBool,
    pub(crate) warned_idempotency_ttl: AtomicBool,
    #[cfg(feature = "test-hooks")]
    pub(crate) hooks: crate::hooks::Hooks,
}

impl Drop for Shared {
    fn drop(&mut self) {
        for task in self.tasks.get_mut().drain(..) {
            task.abort();
        }
    }
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
        let (client, event_rx) = connection::connect(&config, node_id).await?;
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
            answering: AtomicBool::new(true),
            warned_presence_ttl: AtomicBool::new(false),
            warned_idempotency_ttl: AtomicBool::new(false),
            #[cfg(feature = "test-hooks")]
            hooks: Default::default(),
        });
        let task = tokio::spawn(run_events(Arc::downgrade(&shared), event_rx));
        shared.tasks.lock().push(task);
        let task = tokio::spawn(run_probe(Arc::downgrade(&shared)));
        shared.tasks.lock().push(task);
        Ok(Self { shared })
    }

    /// Whether the connection to NATS is up right now and the server answered the last health
    /// probe (see [`NatsConfig::health_check_interval`]): false while the server is frozen or
    /// otherwise not answering, even if the client has not noticed a broken connection yet.
    pub fn is_connected(&self) -> bool {
        self.shared.client.connection_state() == State::Connected
            && self.shared.answering.load(Ordering::Acquire)
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
        self.shared.delete_storage().await
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
        self.shared.start_control(events);
    }

    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        self.shared.subscribe(channel).await
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError> {
        self.shared.unsubscribe(channel);
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
        self.shared
            .publish_presence_event(channel, codec::KIND_JOIN, info)
            .await
    }

    async fn publish_leave(&self, channel: &str, info: &ClientInfo) -> Result<(), BrokerError> {
        self.shared
            .publish_presence_event(channel, codec::KIND_LEAVE, info)
            .await
    }

    async fn publish_control(&self, message: &[u8]) -> Result<(), BrokerError> {
        self.shared.publish_control(message).await
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
        self.shared.remove_history(channel).await
    }
}
