//! One shard: a Redis (standalone, found through Sentinel, or a Cluster) with a multiplexed
//! command connection and a pub/sub connection, each kept alive by its own supervisor task.
//!
//! Supervision: a supervisor connects (each attempt bounded by `connect_timeout`), waits
//! between failed attempts with a doubling delay capped at `reconnect_max_delay`, pings every
//! `health_check_interval` and reconnects when a ping fails or a command reports a broken
//! connection. While a shard has no command connection, calls fail at once with
//! `BrokerError::Unavailable`; every command is also bounded by `command_timeout`.
//!
//! The pub/sub supervisor owns the set of subscribed channels. After every (re)connect it
//! subscribes the whole set (and the control topic on shard 0) before it accepts new
//! subscriptions, then reports `gap` for each channel it resubscribed: publications made while
//! the connection was down were not received.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use parking_lot::Mutex;
use redis::aio::{ConnectionLike, MultiplexedConnection, PubSub, PubSubSink, PubSubStream};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::SentinelClient;
use redis::{
    AsyncConnectionConfig, Cmd, FromRedisValue, Pipeline, RedisFuture, RedisResult, Value,
};
use switchboard_hub::{BrokerError, BrokerEvents};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::RedisConfig;
use crate::keys;
use crate::wire::{self, TopicMessage};

/// Channels per SUBSCRIBE command when resubscribing.
const SUBSCRIBE_BATCH: usize = 256;
/// First wait after a failed connection attempt.
const FIRST_RETRY: Duration = Duration::from_millis(50);

pub(crate) type EventsCell = Arc<OnceLock<Arc<dyn BrokerEvents>>>;

/// How a shard reaches its Redis.
pub(crate) enum Target {
    /// One standalone Redis.
    Direct(redis::Client),
    /// The current master of a Sentinel-monitored group, asked for on every connect.
    Sentinel(tokio::sync::Mutex<SentinelClient>),
    /// A Redis Cluster: commands through the cluster client, pub/sub through any seed node
    /// (classic PUBLISH reaches every node of a cluster).
    Cluster {
        client: ClusterClient,
        seeds: Vec<redis::Client>,
    },
}

impl Target {
    async fn command_connection(&self, settings: &Settings) -> RedisResult<Conn> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(settings.connect_timeout))
            .set_response_timeout(Some(settings.command_timeout));
        match self {
            Target::Direct(client) => client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map(Conn::Single),
            Target::Sentinel(sentinel) => {
                let client = sentinel.lock().await.async_get_client().await?;
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map(Conn::Single)
            }
            Target::Cluster { client, .. } => client
                .get_async_connection()
                .await
                .map(|c| Conn::Cluster(Box::new(c))),
        }
    }

    async fn pubsub(&self) -> RedisResult<PubSub> {
        match self {
            Target::Direct(client) => client.get_async_pubsub().await,
            Target::Sentinel(sentinel) => {
                let client = sentinel.lock().await.async_get_client().await?;
                client.get_async_pubsub().await
            }
            Target::Cluster { seeds, .. } => {
                let mut last = None;
                for seed in seeds {
                    match seed.get_async_pubsub().await {
                        Ok(pubsub) => return Ok(pubsub),
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| {
                    redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "no seeds"))
                }))
            }
        }
    }
}

/// A command connection: cheap to clone, shared by all calls of a shard.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(MultiplexedConnection),
    Cluster(Box<ClusterConnection>),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Timeouts and intervals from the config.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) connect_timeout: Duration,
    pub(crate) command_timeout: Duration,
    pub(crate) reconnect_max_delay: Duration,
    pub(crate) health_check_interval: Duration,
}

impl From<&RedisConfig> for Settings {
    fn from(c: &RedisConfig) -> Self {
        Self {
            connect_timeout: c.connect_timeout,
            command_timeout: c.command_timeout,
            reconnect_max_delay: c.reconnect_max_delay,
            health_check_interval: c.health_check_interval,
        }
    }
}

#[derive(Default)]
struct SubState {
    sink: Option<PubSubSink>,
    channels: HashSet<String>,
}

/// One shard. See the module docs.
pub(crate) struct Shard {
    pub(crate) index: usize,
    target: Target,
    settings: Settings,
    prefix: String,
    channel_topic_prefix: String,
    /// The control topic, on shard 0 only.
    control_topic: Option<String>,
    events: EventsCell,
    conn: Mutex<Option<(u64, Conn)>>,
    generation: AtomicU64,
    conn_broken: Notify,
    sub: tokio::sync::Mutex<SubState>,
    sub_connected: AtomicBool,
}

impl Shard {
    pub(crate) fn new(
        index: usize,
        target: Target,
        settings: Settings,
        prefix: &str,
        events: EventsCell,
    ) -> Self {
        Self {
            index,
            target,
            settings,
            prefix: prefix.to_string(),
            channel_topic_prefix: keys::channel_topic_prefix(prefix),
            control_topic: (index == 0).then(|| keys::control_topic(prefix)),
            events,
            conn: Mutex::new(None),
            generation: AtomicU64::new(0),
            conn_broken: Notify::new(),
            sub: tokio::sync::Mutex::default(),
            sub_connected: AtomicBool::new(false),
        }
    }

    /// Whether both connections are up.
    pub(crate) fn connected(&self) -> bool {
        self.conn.lock().is_some() && self.sub_connected.load(Ordering::Acquire)
    }

    /// Starts the two supervisors; they stop when `cancel` fires.
    pub(crate) fn spawn(self: &Arc<Self>, cancel: &CancellationToken) {
        tokio::spawn(self.clone().supervise_commands(cancel.clone()));
        tokio::spawn(self.clone().supervise_pubsub(cancel.clone()));
    }

    fn unavailable(&self, what: impl std::fmt::Display) -> BrokerError {
        BrokerError::Unavailable(format!("redis shard {}: {what}", self.index))
    }

    fn current(&self) -> Result<(u64, Conn), BrokerError> {
        self.conn
            .lock()
            .clone()
            .ok_or_else(|| self.unavailable("not connected"))
    }

    fn is_current(&self, generation: u64) -> bool {
        matches!(&*self.conn.lock(), Some((current, _)) if *current == generation)
    }

    /// Drops the command connection of generation `generation` (if still current) and wakes
    /// its supervisor.
    fn mark_broken(&self, generation: Option<u64>) {
        let mut conn = self.conn.lock();
        let matches = match (&*conn, generation) {
            (Some((current, _)), Some(g)) => *current == g,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if matches {
            *conn = None;
            drop(conn);
            self.conn_broken.notify_one();
        }
    }

    async fn guard<T>(
        &self,
        generation: u64,
        fut: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, BrokerError> {
        match tokio::time::timeout(self.settings.command_timeout, fut).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                if breaks_connection(&e) {
                    self.mark_broken(Some(generation));
                }
                Err(self.unavailable(e))
            }
            Err(_) => Err(self.unavailable("command timed out")),
        }
    }

    /// Runs one command.
    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, BrokerError> {
        let (generation, mut conn) = self.current()?;
        self.guard(generation, cmd.query_async(&mut conn)).await
    }

    /// Runs a pipeline (atomic when built so).
    pub(crate) async fn pipeline<T: FromRedisValue>(
        &self,
        pipe: &Pipeline,
    ) -> Result<T, BrokerError> {
        let (generation, mut conn) = self.current()?;
        self.guard(generation, pipe.query_async(&mut conn)).await
    }

    /// Runs a script (EVALSHA, loading it on NOSCRIPT).
    pub(crate) async fn invoke<T: FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, BrokerError> {
        let (generation, mut conn) = self.current()?;
        self.guard(generation, invocation.invoke_async(&mut conn))
            .await
    }

    async fn supervise_commands(self: Arc<Self>, cancel: CancellationToken) {
        let mut backoff = Backoff::new(self.settings.reconnect_max_delay);
        loop {
            let attempt = tokio::time::timeout(
                self.settings.connect_timeout,
                self.target.command_connection(&self.settings),
            )
            .await;
            match attempt {
                Ok(Ok(conn)) => {
                    backoff.reset();
                    let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
                    *self.conn.lock() = Some((generation, conn.clone()));
                    tracing::info!(shard = self.index, "redis command connection up");
                    if !self.watch_commands(generation, conn, &cancel).await {
                        return;
                    }
                    self.mark_broken(Some(generation));
                    tracing::warn!(shard = self.index, "redis command connection lost");
                }
                Ok(Err(e)) => {
                    tracing::debug!(shard = self.index, error = %e, "redis connect failed")
                }
                Err(_) => tracing::debug!(shard = self.index, "redis connect timed out"),
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff.next()) => {}
            }
        }
    }

    /// Pings until the connection of `generation` breaks (true) or the broker stops (false).
    async fn watch_commands(
        &self,
        generation: u64,
        mut conn: Conn,
        cancel: &CancellationToken,
    ) -> bool {
        let mut tick = tokio::time::interval(self.settings.health_check_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return false,
                // A wake-up can be a permit left over from an older connection (marked
                // broken after its watcher had already returned): only a change of the
                // current connection counts.
                _ = self.conn_broken.notified() => {
                    if !self.is_current(generation) {
                        return true;
                    }
                }
                _ = tick.tick() => {
                    let ping = redis::cmd("PING");
                    let ok = tokio::time::timeout(
                        self.settings.command_timeout,
                        ping.query_async::<Value>(&mut conn),
                    )
                    .await;
                    match ok {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) if !breaks_connection(&e) => {}
                        _ => return true,
                    }
                }
            }
        }
    }

    /// Tells the hub about possible gaps in `channels` once the command connection is up as
    /// well: subscribers resubscribe at once, and their recovery needs the command connection.
    fn report_gaps_when_ready(self: &Arc<Self>, channels: Vec<String>, cancel: &CancellationToken) {
        if channels.is_empty() {
            return;
        }
        let shard = self.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let limit = tokio::time::Instant::now()
                + shard.settings.connect_timeout
                + 2 * shard.settings.reconnect_max_delay;
            while shard.conn.lock().is_none() && tokio::time::Instant::now() < limit {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                }
            }
            if let Some(events) = shard.events.get() {
                for channel in &channels {
                    events.gap(channel);
                }
            }
        });
    }

    async fn supervise_pubsub(self: Arc<Self>, cancel: CancellationToken) {
        let mut backoff = Backoff::new(self.settings.reconnect_max_delay);
        loop {
            let attempt =
                tokio::time::timeout(self.settings.connect_timeout, self.target.pubsub()).await;
            match attempt {
                Ok(Ok(pubsub)) => {
                    let (sink, stream) = pubsub.split();
                    match self.resubscribe(sink.clone()).await {
                        Ok(resubscribed) => {
                            backoff.reset();
                            self.sub_connected.store(true, Ordering::Release);
                            // The command connection in use while this pub/sub connection is up.
                            let command_generation =
                                self.conn.lock().as_ref().map(|(generation, _)| *generation);
                            tracing::info!(
                                shard = self.index,
                                channels = resubscribed.len(),
                                "redis pub/sub connection up"
                            );
                            self.report_gaps_when_ready(resubscribed, &cancel);
                            let stopped = !self.read(sink, stream, &cancel).await;
                            self.sub_connected.store(false, Ordering::Release);
                            self.sub.lock().await.sink = None;
                            if stopped {
                                return;
                            }
                            tracing::warn!(shard = self.index, "redis pub/sub connection lost");
                            // The command connection of that time most likely went with it:
                            // reconnect it now rather than failing the next call. One made
                            // since (after a freeze, say) is newer than the loss and is kept.
                            if let Some(generation) = command_generation {
                                self.mark_broken(Some(generation));
                            }
                        }
                        Err(e) => {
                            tracing::debug!(shard = self.index, error = %e, "redis resubscribe failed")
                        }
                    }
                }
                Ok(Err(e)) => {
                    tracing::debug!(shard = self.index, error = %e, "redis pub/sub connect failed")
                }
                Err(_) => tracing::debug!(shard = self.index, "redis pub/sub connect timed out"),
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff.next()) => {}
            }
        }
    }

    /// Subscribes every known channel on a new connection, then makes it the current one.
    /// Returns the channels resubscribed.
    async fn resubscribe(&self, mut sink: PubSubSink) -> Result<Vec<String>, BrokerError> {
        let mut state = self.sub.lock().await;
        let channels: Vec<String> = state.channels.iter().cloned().collect();
        let mut topics: Vec<String> = channels
            .iter()
            .map(|c| keys::channel_topic(&self.prefix, c))
            .collect();
        topics.extend(self.control_topic.clone());
        for batch in topics.chunks(SUBSCRIBE_BATCH) {
            match tokio::time::timeout(self.settings.command_timeout, sink.subscribe(batch)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(self.unavailable(e)),
                Err(_) => return Err(self.unavailable("subscribe timed out")),
            }
        }
        state.sink = Some(sink);
        Ok(channels)
    }

    /// Delivers messages until the connection is lost (true) or the broker stops (false).
    async fn read(
        &self,
        mut sink: PubSubSink,
        mut stream: PubSubStream,
        cancel: &CancellationToken,
    ) -> bool {
        let mut tick = tokio::time::interval(self.settings.health_check_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return false,
                message = stream.next() => match message {
                    Some(message) => self.dispatch(message.get_channel_name(), message.get_payload_bytes()),
                    None => return true,
                },
                _ = tick.tick() => {
                    let ping = tokio::time::timeout(self.settings.command_timeout, sink.ping::<Value>()).await;
                    if !matches!(ping, Ok(Ok(_))) {
                        return true;
                    }
                }
            }
        }
    }

    fn dispatch(&self, topic: &str, payload: &[u8]) {
        let Some(events) = self.events.get() else {
            return;
        };
        if let Some(channel) = topic.strip_prefix(self.channel_topic_prefix.as_str()) {
            match wire::decode_topic_message(payload) {
                Ok(TopicMessage::Publication(p)) => events.publication(channel, &p),
                Ok(TopicMessage::Join(info)) => events.join(channel, &info),
                Ok(TopicMessage::Leave(info)) => events.leave(channel, &info),
                Err(e) => tracing::warn!(channel, error = %e, "dropping malformed message"),
            }
        } else if self.control_topic.as_deref() == Some(topic) {
            events.control(payload);
        }
    }

    /// Starts receiving `channel`'s topic. Idempotent.
    pub(crate) async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        let mut state = self.sub.lock().await;
        if state.channels.contains(channel) {
            return Ok(());
        }
        let Some(sink) = state.sink.as_mut() else {
            return Err(self.unavailable("pub/sub not connected"));
        };
        let topic = keys::channel_topic(&self.prefix, channel);
        match tokio::time::timeout(self.settings.command_timeout, sink.subscribe(&topic)).await {
            Ok(Ok(())) => {
                state.channels.insert(channel.to_string());
                Ok(())
            }
            Ok(Err(e)) => Err(self.unavailable(e)),
            Err(_) => Err(self.unavailable("subscribe timed out")),
        }
    }

    /// Stops receiving `channel`'s topic. Never fails: without a connection there is nothing
    /// to stop, and the next connection will not subscribe it.
    pub(crate) async fn unsubscribe(&self, channel: &str) {
        let mut state = self.sub.lock().await;
        if !state.channels.remove(channel) {
            return;
        }
        if let Some(sink) = state.sink.as_mut() {
            let topic = keys::channel_topic(&self.prefix, channel);
            let result =
                tokio::time::timeout(self.settings.command_timeout, sink.unsubscribe(&topic)).await;
            if !matches!(result, Ok(Ok(()))) {
                tracing::debug!(shard = self.index, channel, "redis unsubscribe failed");
            }
        }
    }

    /// Channels currently subscribed on this shard.
    pub(crate) async fn subscribed(&self) -> Vec<String> {
        self.sub.lock().await.channels.iter().cloned().collect()
    }
}

/// Whether an error means the connection is unusable (as opposed to a failed command).
fn breaks_connection(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
        // A Sentinel failover demoted our master: find the new one.
        || e.code() == Some("READONLY")
}

/// Doubling delay between reconnect attempts.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Self {
        Self {
            next: FIRST_RETRY.min(max),
            max,
        }
    }

    fn reset(&mut self) {
        self.next = FIRST_RETRY.min(self.max);
    }

    fn next(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(self.max);
        now
    }
}
