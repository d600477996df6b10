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
//!
//! The two connections fail together (a Redis restart or failover closes both), but each is
//! noticed by its own task. So the pub/sub side, which sees a closed socket at once, checks the
//! command connection too: when it loses its connection, and again when it has a new one,
//! before the shard reports itself connected. See [`Shard::verify_commands`].
//!
//! A command that fails because its connection broke is retried once on a fresh connection
//! when running it twice is harmless ([`Replay::Safe`]); see [`Shard::run`].

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use redis::aio::{ConnectionLike, MultiplexedConnection, PubSub, PubSubSink, PubSubStream};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::SentinelClient;
use redis::{
    AsyncConnectionConfig, Cmd, FromRedisValue, Pipeline, RedisFuture, RedisResult, Value,
};
use switchboard_hub::{BatchedEvents, BrokerError, BrokerEvents, MAX_BATCH};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
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

/// Whether a command may run a second time after its connection broke under it.
///
/// A connection-level error (broken pipe, reset, EOF) does not say whether Redis received and
/// ran the command before the connection went: redis-rs reports a request that never left the
/// client and one whose reply was lost the same way (`BrokenPipe`). Only commands whose second
/// run changes nothing are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Replay {
    /// Running it twice has the effect of running it once: reads, overwrites, deletes, and a
    /// publish script with an idempotency key (a second run returns the stored result).
    Safe,
    /// It may have been applied before the connection broke and a second run would apply it
    /// again (a `PUBLISH`, a publish script without an idempotency key): never retried, the
    /// caller gets `Unavailable` and decides.
    Unsafe,
}

/// The command connection as the supervisor last left it; waiters watch it change.
#[derive(Clone, Default)]
struct CommandState {
    /// The connection in use and its generation; `None` while (re)connecting.
    conn: Option<(u64, Conn)>,
    /// Connect attempts finished so far, successful or not.
    attempts: u64,
}

/// How a command attempt failed.
struct Failed {
    error: BrokerError,
    /// The connection broke (and was dropped).
    broke: bool,
    /// Redis may have run the command: true unless Redis refused it (`READONLY`: the server
    /// is no longer a master, and a replica runs no writes; a script fails at its first write,
    /// before our scripts publish anything).
    maybe_applied: bool,
    /// No answer came: the command timed out, or the connection broke after it was sent.
    unanswered: bool,
}

impl Failed {
    /// The error for the caller: [`BrokerError::OutcomeUnknown`] when Redis may have run the
    /// command without our hearing back, else the error as it is.
    fn into_error(self) -> BrokerError {
        match self.error {
            BrokerError::Unavailable(reason) if self.unanswered && self.maybe_applied => {
                BrokerError::OutcomeUnknown(reason)
            }
            e => e,
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
    commands: watch::Sender<CommandState>,
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
            commands: watch::Sender::new(CommandState::default()),
            generation: AtomicU64::new(0),
            conn_broken: Notify::new(),
            sub: tokio::sync::Mutex::default(),
            sub_connected: AtomicBool::new(false),
        }
    }

    /// Whether both connections are up. The command connection has answered since the pub/sub
    /// connection was (re)made (see [`Shard::verify_commands`]), so right after a reconnect this
    /// never reports a connection that died with the old Redis.
    pub(crate) fn connected(&self) -> bool {
        self.commands.borrow().conn.is_some() && self.sub_connected.load(Ordering::Acquire)
    }

    /// Starts the two supervisors; they stop when `cancel` fires.
    pub(crate) fn spawn(self: &Arc<Self>, cancel: &CancellationToken) {
        tokio::spawn(self.clone().supervise_commands(cancel.clone()));
        tokio::spawn(self.clone().supervise_pubsub(cancel.clone()));
    }

    fn unavailable(&self, what: impl std::fmt::Display) -> BrokerError {
        BrokerError::Unavailable(format!("redis shard {}: {what}", self.index))
    }

    fn is_current(&self, generation: u64) -> bool {
        matches!(&self.commands.borrow().conn, Some((current, _)) if *current == generation)
    }

    /// Drops the command connection of generation `generation` (if still current) and wakes
    /// its supervisor.
    fn mark_broken(&self, generation: u64) {
        let dropped = self.commands.send_if_modified(|state| match &state.conn {
            Some((current, _)) if *current == generation => {
                state.conn = None;
                true
            }
            _ => false,
        });
        if dropped {
            self.conn_broken.notify_one();
        }
    }

    /// One attempt of a command on the connection of `generation`, bounded by
    /// `command_timeout`. A connection-level error drops that connection.
    async fn attempt<T>(
        &self,
        generation: u64,
        fut: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, Failed> {
        match tokio::time::timeout(self.settings.command_timeout, fut).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                let broke = breaks_connection(&e);
                if broke {
                    self.mark_broken(generation);
                }
                Err(Failed {
                    maybe_applied: e.code() != Some("READONLY"),
                    error: self.unavailable(e),
                    unanswered: broke,
                    broke,
                })
            }
            // A slow reply is not a broken connection: the health ping decides that.
            Err(_) => Err(Failed {
                error: self.unavailable("command timed out"),
                broke: false,
                maybe_applied: true,
                unanswered: true,
            }),
        }
    }

    /// Runs `call` on the current command connection; `call` gets its own clone of it.
    ///
    /// When the connection breaks under a [`Replay::Safe`] command, the command runs once more
    /// on the connection the supervisor makes next (it reconnects at once after losing a
    /// connection that had been working). If that first reconnect attempt fails, or takes
    /// longer than `command_timeout`, the call fails with the original error: a Redis that is
    /// really down is still reported within a few milliseconds. A [`Replay::Unsafe`] command
    /// is retried the same way only when Redis provably did not run it (it answered
    /// `READONLY` after a failover); after a broken pipe or reset it is not: the error may
    /// hide a command Redis ran whose reply was lost, and a second `PUBLISH` (or publish
    /// script without an idempotency key) would deliver the publication twice.
    async fn run<T, Fut>(
        &self,
        replay: Replay,
        call: impl Fn(Conn) -> Fut,
    ) -> Result<T, BrokerError>
    where
        Fut: Future<Output = RedisResult<T>>,
    {
        let mut watcher = self.commands.subscribe();
        let (generation, conn, attempts) = {
            let state = watcher.borrow_and_update();
            let Some((generation, conn)) = state.conn.clone() else {
                return Err(self.unavailable("not connected"));
            };
            (generation, conn, state.attempts)
        };
        let failed = match self.attempt(generation, call(conn)).await {
            Ok(value) => return Ok(value),
            Err(failed) => failed,
        };
        if !failed.broke || (replay == Replay::Unsafe && failed.maybe_applied) {
            return Err(failed.into_error());
        }
        match self
            .next_connection(&mut watcher, generation, attempts)
            .await
        {
            Some((generation, conn)) => {
                tracing::debug!(shard = self.index, "retrying a command on a new connection");
                self.attempt(generation, call(conn))
                    .await
                    .map_err(Failed::into_error)
            }
            None => Err(failed.into_error()),
        }
    }

    /// Waits at most `command_timeout` for a connection newer than `broken`. Gives up as soon
    /// as a connect attempt finished (`attempts` were finished when the broken one was in use,
    /// so any later one started after it broke) without producing one.
    async fn next_connection(
        &self,
        watcher: &mut watch::Receiver<CommandState>,
        broken: u64,
        attempts: u64,
    ) -> Option<(u64, Conn)> {
        let deadline = Instant::now() + self.settings.command_timeout;
        loop {
            {
                let state = watcher.borrow_and_update();
                match &state.conn {
                    Some((generation, conn)) if *generation > broken => {
                        return Some((*generation, conn.clone()))
                    }
                    _ if state.attempts > attempts => return None,
                    _ => {}
                }
            }
            match tokio::time::timeout_at(deadline, watcher.changed()).await {
                Ok(Ok(())) => {}
                // Timed out, or the shard is gone.
                _ => return None,
            }
        }
    }

    /// Runs one command.
    pub(crate) async fn query<T: FromRedisValue>(
        &self,
        replay: Replay,
        cmd: &Cmd,
    ) -> Result<T, BrokerError> {
        self.run(replay, |mut conn| async move {
            cmd.query_async(&mut conn).await
        })
        .await
    }

    /// Runs a pipeline (atomic when built so).
    pub(crate) async fn pipeline<T: FromRedisValue>(
        &self,
        replay: Replay,
        pipe: &Pipeline,
    ) -> Result<T, BrokerError> {
        self.run(replay, |mut conn| async move {
            pipe.query_async(&mut conn).await
        })
        .await
    }

    /// Runs a script (EVALSHA, loading it on NOSCRIPT).
    pub(crate) async fn invoke<T: FromRedisValue>(
        &self,
        replay: Replay,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, BrokerError> {
        self.run(replay, |mut conn| async move {
            invocation.invoke_async(&mut conn).await
        })
        .await
    }

    /// PINGs the current command connection and drops it unless it answers (any reply, even
    /// an error such as `LOADING`, proves the connection alive). Returns whether it answered.
    ///
    /// This is what ties the command connection to the pub/sub connection's view of Redis.
    /// Nothing else notices a dead multiplexed connection before it is used: its own
    /// supervisor pings only every `health_check_interval`, and a restarted or failed-over
    /// Redis is back (and the pub/sub connection with it) much sooner than that. Without this
    /// check the shard could report itself connected on a new pub/sub connection while the
    /// command connection was still the one to the dead server, and the next publish failed
    /// with "broken pipe". A reply to a PING sent now can only come from a live server, so a
    /// connection that answers is one calls may use.
    async fn verify_commands(&self) -> bool {
        let Some((generation, mut conn)) = self.commands.borrow().conn.clone() else {
            return false;
        };
        if ping(&mut conn, self.settings.command_timeout).await {
            true
        } else {
            self.mark_broken(generation);
            false
        }
    }

    /// After the pub/sub connection came up: waits until a command connection answers a PING
    /// sent from now on (the old one, if it survived, else the supervisor's next one), at most
    /// `connect_timeout + 2 * reconnect_max_delay`. Returns false if that did not happen (or
    /// the broker stopped).
    async fn await_live_commands(&self, cancel: &CancellationToken) -> bool {
        let deadline =
            Instant::now() + self.settings.connect_timeout + 2 * self.settings.reconnect_max_delay;
        let mut watcher = self.commands.subscribe();
        loop {
            watcher.borrow_and_update();
            if self.verify_commands().await {
                return true;
            }
            // No connection, or it did not answer and was just dropped: wait for the
            // supervisor's next connection (or failed attempt) and check again.
            tokio::select! {
                _ = cancel.cancelled() => return false,
                changed = tokio::time::timeout_at(deadline, watcher.changed()) => {
                    if !matches!(changed, Ok(Ok(()))) {
                        return false;
                    }
                }
            }
        }
    }

    async fn supervise_commands(self: Arc<Self>, cancel: CancellationToken) {
        let mut backoff = Backoff::new(self.settings.reconnect_max_delay);
        loop {
            let attempt = tokio::time::timeout(
                self.settings.connect_timeout,
                self.target.command_connection(&self.settings),
            )
            .await;
            let wait = match attempt {
                Ok(Ok(conn)) => {
                    let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
                    self.commands.send_modify(|state| {
                        state.conn = Some((generation, conn.clone()));
                        state.attempts += 1;
                    });
                    tracing::info!(shard = self.index, "redis command connection up");
                    let up = Instant::now();
                    if !self.watch_commands(generation, conn, &cancel).await {
                        return;
                    }
                    self.mark_broken(generation);
                    tracing::warn!(shard = self.index, "redis command connection lost");
                    // A connection that had been working broke (Redis restarted or failed
                    // over, or the connection was killed): try again at once, calls waiting to
                    // retry (`run`) wait for this attempt. One that broke soon after it was
                    // made counts as a failed attempt, so a Redis that accepts and then drops
                    // connections is not reconnected to in a tight loop.
                    if up.elapsed() >= self.settings.reconnect_max_delay {
                        backoff.reset();
                        None
                    } else {
                        Some(backoff.next())
                    }
                }
                Ok(Err(e)) => {
                    tracing::debug!(shard = self.index, error = %e, "redis connect failed");
                    self.commands.send_modify(|state| state.attempts += 1);
                    Some(backoff.next())
                }
                Err(_) => {
                    tracing::debug!(shard = self.index, "redis connect timed out");
                    self.commands.send_modify(|state| state.attempts += 1);
                    Some(backoff.next())
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait.unwrap_or(Duration::ZERO)) => {}
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
                    if !ping(&mut conn, self.settings.command_timeout).await {
                        return true;
                    }
                }
            }
        }
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
                            // Redis may have restarted since the command connection was made,
                            // whichever of the two connections came up first: only report
                            // the shard connected, and tell subscribers to recover (which
                            // needs commands), once the command connection is known to be
                            // alive. Messages arriving meanwhile wait in the stream.
                            if !self.await_live_commands(&cancel).await {
                                if cancel.is_cancelled() {
                                    return;
                                }
                                tracing::warn!(
                                    shard = self.index,
                                    "redis pub/sub connection up, command connection not yet"
                                );
                            }
                            self.sub_connected.store(true, Ordering::Release);
                            tracing::info!(
                                shard = self.index,
                                channels = resubscribed.len(),
                                "redis pub/sub connection up"
                            );
                            if let Some(events) = self.events.get() {
                                for channel in &resubscribed {
                                    events.gap(channel);
                                }
                            }
                            let stopped = !self.read(sink, stream, &cancel).await;
                            self.sub_connected.store(false, Ordering::Release);
                            self.sub.lock().await.sink = None;
                            if stopped {
                                return;
                            }
                            tracing::warn!(shard = self.index, "redis pub/sub connection lost");
                            // The command connection most likely went with it: find out now
                            // (a dead one fails the PING at once) rather than failing the next
                            // call. One that still answers is kept.
                            self.verify_commands().await;
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
        // Messages read together are delivered together: a channel's consecutive publications
        // as one batch (see `BatchedEvents`). Until the hub has started the broker there is
        // no one to deliver to.
        let mut batched: Option<BatchedEvents> = None;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return false,
                message = stream.next() => match message {
                    Some(message) => {
                        if batched.is_none() {
                            batched = self.events.get().map(|e| BatchedEvents::new(e.clone()));
                        }
                        let Some(events) = &batched else { continue };
                        self.dispatch(events, message.get_channel_name(), message.get_payload_bytes());
                        for _ in 1..MAX_BATCH {
                            match stream.next().now_or_never() {
                                Some(Some(message)) => self.dispatch(events, message.get_channel_name(), message.get_payload_bytes()),
                                Some(None) => return true,
                                None => break,
                            }
                        }
                        events.flush();
                    }
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

    fn dispatch(&self, events: &BatchedEvents, topic: &str, payload: &[u8]) {
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

/// Whether `conn` answers a PING within `timeout`. Any reply counts, even an error such as
/// `LOADING`: only a live server sends one.
async fn ping(conn: &mut Conn, timeout: Duration) -> bool {
    let ping = redis::cmd("PING");
    match tokio::time::timeout(timeout, ping.query_async::<Value>(conn)).await {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => !breaks_connection(&e),
        Err(_) => false,
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
