//! A Redis [`Broker`] and [`PresenceStore`] for Switchboard: several nodes share channels,
//! history, stream positions and presence through Redis.
//!
//! - Publications travel over Redis pub/sub (one topic per channel, subscribed only by nodes
//!   with local subscribers); a publish with history is one Lua script that assigns the offset,
//!   appends to the channel's stream, sets expiries, records the idempotency key and publishes,
//!   atomically and in one round trip.
//! - History is a Redis Stream per channel whose entry ids are the offsets; the stream position
//!   (epoch and top offset) is a small hash beside it.
//! - Presence is a hash of entries plus a sorted set of expiry times, cleaned on read, and both
//!   keys expire, so the entries of a dead node vanish within their TTL.
//! - Standalone Redis, several independent Redis instances (channels sharded by consistent
//!   hashing), Sentinel and Cluster are supported; see [`RedisConfig`].
//! - When Redis is unreachable, calls that need it fail fast with
//!   [`BrokerError::Unavailable`]; the broker reconnects with backoff, resubscribes its
//!   channels and reports [`BrokerEvents::gap`] for each, so subscribers recover what they
//!   missed.
//!
//! The crate's README describes keys, scripts, topics and failure behaviour in full.
//!
//! What it deliberately does not do: TLS to Redis, Redis Cluster sharded pub/sub (SSUBSCRIBE),
//! per-publication history expiry (history expires as a whole, `history_ttl` after the last
//! publication, as in Centrifugo).
//!
//! ```no_run
//! use switchboard_broker_redis::{RedisBroker, RedisConfig};
//! use switchboard_hub::{Hub, HubConfig};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = RedisBroker::connect(RedisConfig::default(), "node-1").await?;
//! // The broker is also the presence store: `Hub::new` would keep presence in memory.
//! let hub = Hub::with_presence(HubConfig::default(), broker.clone(), broker, "node-1".into());
//! # drop(hub);
//! # Ok(())
//! # }
//! ```

mod config;
mod keys;
mod scripts;
mod shard;
mod wire;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use switchboard_hub::{
    Broker, BrokerError, BrokerEvents, HistoryFilter, HistoryResult, MemoryBroker, PresenceStats,
    PresenceStore, PublishOptions, DEFAULT_META_TTL,
};
use switchboard_proto::{ClientInfo, Publication, StreamPosition};
use tokio_util::sync::CancellationToken;

pub use config::{ConfigError, RedisConfig};
use keys::ChannelKeys;
use shard::{EventsCell, Replay, Settings, Shard, Target};

/// The Redis broker and presence store. See the crate docs.
///
/// Dropping the last reference stops its background tasks and closes its connections.
pub struct RedisBroker {
    shards: Vec<Arc<Shard>>,
    prefix: String,
    node_id: String,
    events: EventsCell,
    cancel: CancellationToken,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("node_id", &self.node_id)
            .field("prefix", &self.prefix)
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl RedisBroker {
    /// Validates `config`, starts connecting to every shard in the background and returns the
    /// broker, waiting at most `connect_timeout` for the connections to come up.
    ///
    /// It fails only for an invalid configuration: when Redis is down at startup the broker is
    /// returned anyway, keeps connecting with backoff, and answers calls that need Redis with
    /// [`BrokerError::Unavailable`] until it is up. `node_id` names this node in logs.
    ///
    /// Must be called within a tokio runtime.
    pub async fn connect(
        config: RedisConfig,
        node_id: impl Into<String>,
    ) -> Result<Arc<Self>, ConfigError> {
        config.validate()?;
        let settings = Settings::from(&config);
        let events: EventsCell = Arc::new(OnceLock::new());
        let targets = targets(&config, &settings)?;
        let shards: Vec<Arc<Shard>> = targets
            .into_iter()
            .enumerate()
            .map(|(i, target)| {
                Arc::new(Shard::new(
                    i,
                    target,
                    settings,
                    &config.prefix,
                    events.clone(),
                ))
            })
            .collect();
        let cancel = CancellationToken::new();
        for shard in &shards {
            shard.spawn(&cancel);
        }
        let broker = Arc::new(Self {
            shards,
            prefix: config.prefix,
            node_id: node_id.into(),
            events,
            cancel,
        });
        let deadline = tokio::time::Instant::now() + settings.connect_timeout;
        while !broker.connected() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if !broker.connected() {
            tracing::warn!(
                node = %broker.node_id,
                "redis not reachable yet; the broker keeps connecting in the background"
            );
        }
        Ok(broker)
    }

    /// Whether every shard currently has its command and pub/sub connections.
    pub fn connected(&self) -> bool {
        self.shards.iter().all(|s| s.connected())
    }

    /// Number of shards (independent Redis instances, or 1 for Sentinel and Cluster).
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The shard `channel` lives on (0-based). All nodes agree: the choice is a consistent
    /// hash of the channel name over the configured address list.
    pub fn shard_of(&self, channel: &str) -> usize {
        keys::shard_of(channel, self.shards.len())
    }

    /// Channels this node is subscribed to, over all shards.
    pub async fn subscribed_channels(&self) -> Vec<String> {
        let mut all = Vec::new();
        for shard in &self.shards {
            all.extend(shard.subscribed().await);
        }
        all
    }

    /// Stops background tasks and closes connections (dropping the broker does the same).
    pub fn shutdown(&self) {
        self.cancel.cancel();
    }

    fn shard(&self, channel: &str) -> &Shard {
        &self.shards[self.shard_of(channel)]
    }

    fn keys(&self, channel: &str) -> ChannelKeys {
        ChannelKeys::new(&self.prefix, channel)
    }

    fn events(&self) -> Result<&Arc<dyn BrokerEvents>, BrokerError> {
        self.events
            .get()
            .ok_or_else(|| BrokerError::Unavailable("broker not started".into()))
    }

    /// Runs the presence script for `channel`, which drops expired entries and returns the
    /// others: `what` is `all` (client id and info pairs) or `values` (infos).
    async fn read_presence<T: redis::FromRedisValue>(
        &self,
        channel: &str,
        what: &str,
    ) -> Result<T, BrokerError> {
        let keys = self.keys(channel);
        let mut invocation = scripts::PRESENCE.prepare_invoke();
        invocation
            .key(keys.presence())
            .key(keys.presence_expiry())
            .arg(what);
        // Reads (and drops expired entries): safe to run twice.
        self.shard(channel).invoke(Replay::Safe, &invocation).await
    }

    /// Publishes a join or leave (`kind`) of `info` on the channel's topic.
    async fn publish_info(
        &self,
        channel: &str,
        kind: u8,
        info: &ClientInfo,
    ) -> Result<(), BrokerError> {
        let message = wire::encode_info(kind, info);
        self.shard(channel)
            .query::<i64>(
                Replay::Unsafe,
                redis::cmd("PUBLISH")
                    .arg(keys::channel_topic(&self.prefix, channel))
                    .arg(message),
            )
            .await?;
        Ok(())
    }
}

fn targets(config: &RedisConfig, settings: &Settings) -> Result<Vec<Target>, ConfigError> {
    let invalid = |address: &str, e: redis::RedisError| ConfigError::InvalidAddress {
        address: address.to_string(),
        reason: e.to_string(),
    };
    if !config.sentinel_addresses.is_empty() {
        let infos = config
            .sentinel_addresses
            .iter()
            .map(|a| config::parse_address(a))
            .collect::<Result<Vec<_>, _>>()?;
        let sentinel = redis::sentinel::SentinelClient::build(
            infos,
            config.sentinel_master_name.clone(),
            None,
            redis::sentinel::SentinelServerType::Master,
        )
        .map_err(|e| invalid(&config.sentinel_addresses.join(","), e))?;
        return Ok(vec![Target::Sentinel(tokio::sync::Mutex::new(sentinel))]);
    }
    let clients = config
        .addresses
        .iter()
        .map(|a| redis::Client::open(config::parse_address(a)?).map_err(|e| invalid(a, e)))
        .collect::<Result<Vec<_>, _>>()?;
    if config.cluster {
        let infos = config
            .addresses
            .iter()
            .map(|a| config::parse_address(a))
            .collect::<Result<Vec<_>, _>>()?;
        let client = redis::cluster::ClusterClient::builder(infos)
            .connection_timeout(settings.connect_timeout)
            .response_timeout(settings.command_timeout)
            .retries(2)
            .build()
            .map_err(|e| invalid(&config.addresses.join(","), e))?;
        return Ok(vec![Target::Cluster {
            client,
            seeds: clients,
        }]);
    }
    Ok(clients.into_iter().map(Target::Direct).collect())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn bad_reply(what: &str) -> BrokerError {
    BrokerError::Unavailable(format!("redis: unexpected reply to {what}"))
}

#[async_trait]
impl Broker for RedisBroker {
    fn start(&self, events: Arc<dyn BrokerEvents>) {
        let _ = self.events.set(events);
    }

    fn is_connected(&self) -> bool {
        self.connected()
    }

    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        self.shard(channel).subscribe(channel).await
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError> {
        self.shard(channel).unsubscribe(channel).await;
        Ok(())
    }

    async fn publish(
        &self,
        channel: &str,
        publication: Publication,
        options: &PublishOptions,
    ) -> Result<StreamPosition, BrokerError> {
        let shard = self.shard(channel);
        let topic = keys::channel_topic(&self.prefix, channel);
        if !options.uses_channel_state() {
            let message = wire::encode_publication(&publication, Some(wire::PUBLICATION));
            shard
                .query::<i64>(
                    Replay::Unsafe,
                    redis::cmd("PUBLISH").arg(&topic).arg(message),
                )
                .await?;
            return Ok(StreamPosition::default());
        }
        let idempotency = options.idempotency();
        let keys = self.keys(channel);
        let body = wire::encode_publication(&publication, None);
        let history_size = if options.uses_history() {
            options.history_size
        } else {
            0
        };
        let meta_ttl = if options.history_meta_ttl.is_zero() {
            DEFAULT_META_TTL
        } else {
            options.history_meta_ttl
        };
        let mut invocation = scripts::PUBLISH.prepare_invoke();
        invocation
            .key(keys.meta())
            .key(keys.history())
            .key(keys.idempotency(idempotency.unwrap_or("")))
            .arg(topic)
            .arg(body)
            .arg(history_size)
            .arg(millis(options.history_ttl))
            .arg(millis(meta_ttl))
            .arg(MemoryBroker::new_epoch())
            .arg(idempotency.map_or(0, |_| millis(options.idempotent_result_ttl)));
        // With an idempotency key the script answers a second run with the first one's result
        // (the key is stored atomically with the publication), so a retry cannot publish twice.
        let replay = if idempotency.is_some() {
            Replay::Safe
        } else {
            Replay::Unsafe
        };
        let (offset, epoch): (u64, String) = shard.invoke(replay, &invocation).await?;
        Ok(StreamPosition { offset, epoch })
    }

    async fn publish_join(&self, channel: &str, info: &ClientInfo) -> Result<(), BrokerError> {
        self.publish_info(channel, wire::JOIN, info).await
    }

    async fn publish_leave(&self, channel: &str, info: &ClientInfo) -> Result<(), BrokerError> {
        self.publish_info(channel, wire::LEAVE, info).await
    }

    async fn publish_control(&self, message: &[u8]) -> Result<(), BrokerError> {
        self.events()?;
        self.shards[0]
            .query::<i64>(
                Replay::Unsafe,
                redis::cmd("PUBLISH")
                    .arg(keys::control_topic(&self.prefix))
                    .arg(message),
            )
            .await?;
        Ok(())
    }

    async fn history(
        &self,
        channel: &str,
        filter: &HistoryFilter,
        meta_ttl: Duration,
    ) -> Result<HistoryResult, BrokerError> {
        let keys = self.keys(channel);
        let meta_ttl = if meta_ttl.is_zero() {
            DEFAULT_META_TTL
        } else {
            meta_ttl
        };
        let since = filter
            .since
            .as_ref()
            .map_or(-1, |p| i64::try_from(p.offset).unwrap_or(i64::MAX));
        let limit = filter
            .limit
            .map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
        let mut invocation = scripts::HISTORY.prepare_invoke();
        invocation
            .key(keys.meta())
            .key(keys.history())
            .arg(millis(meta_ttl))
            .arg(MemoryBroker::new_epoch())
            .arg(since)
            .arg(limit)
            .arg(if filter.reverse { 1 } else { 0 });
        // Creates the position only if missing: a second run reads what the first created.
        let reply: Vec<redis::Value> = self
            .shard(channel)
            .invoke(Replay::Safe, &invocation)
            .await?;
        let mut items = reply.into_iter();
        let top: u64 = items
            .next()
            .and_then(|v| redis::from_redis_value(v).ok())
            .ok_or_else(|| bad_reply("history"))?;
        let epoch: String = items
            .next()
            .and_then(|v| redis::from_redis_value(v).ok())
            .ok_or_else(|| bad_reply("history"))?;
        if let Some(since) = &filter.since {
            if since.epoch != epoch || since.offset > top {
                return Err(BrokerError::UnrecoverablePosition);
            }
        }
        let mut publications = Vec::with_capacity(items.len());
        for item in items {
            let redis::Value::BulkString(bytes) = item else {
                return Err(bad_reply("history"));
            };
            match wire::decode_publication(&bytes) {
                Ok(p) => publications.push(p),
                Err(e) => tracing::warn!(channel, error = %e, "skipping malformed history entry"),
            }
        }
        let mut result = HistoryResult::default();
        result.publications = publications;
        result.position = StreamPosition { offset: top, epoch };
        Ok(result)
    }

    async fn remove_history(&self, channel: &str) -> Result<(), BrokerError> {
        self.shard(channel)
            .query::<i64>(
                Replay::Safe,
                redis::cmd("DEL").arg(self.keys(channel).history()),
            )
            .await?;
        Ok(())
    }
}

/// Only the user of a stored info, for counting.
#[derive(Deserialize)]
struct StoredUser {
    #[serde(default)]
    user: String,
}

#[async_trait]
impl PresenceStore for RedisBroker {
    async fn add_presence(
        &self,
        channel: &str,
        info: &ClientInfo,
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        let keys = self.keys(channel);
        let encoded = serde_json::to_vec(info)
            .map_err(|e| BrokerError::Unavailable(format!("encoding presence: {e}")))?;
        let mut invocation = scripts::ADD_PRESENCE.prepare_invoke();
        invocation
            .key(keys.presence())
            .key(keys.presence_expiry())
            .arg(&info.client)
            .arg(encoded)
            .arg(millis(ttl));
        // Overwrites the entry and its expiry: a second run only moves the expiry a little.
        self.shard(channel)
            .invoke::<i64>(Replay::Safe, &invocation)
            .await?;
        Ok(())
    }

    async fn remove_presence(&self, channel: &str, client: &str) -> Result<(), BrokerError> {
        let keys = self.keys(channel);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hdel(keys.presence(), client)
            .ignore()
            .zrem(keys.presence_expiry(), client)
            .ignore();
        self.shard(channel)
            .pipeline::<()>(Replay::Safe, &pipe)
            .await
    }

    async fn presence(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, BrokerError> {
        let entries: Vec<(String, Vec<u8>)> = self.read_presence(channel, "all").await?;
        let mut presence = HashMap::with_capacity(entries.len());
        for (client, encoded) in entries {
            match serde_json::from_slice::<ClientInfo>(&encoded) {
                Ok(info) => {
                    presence.insert(client, info);
                }
                Err(e) => tracing::warn!(channel, error = %e, "skipping malformed presence entry"),
            }
        }
        Ok(presence)
    }

    async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, BrokerError> {
        let values: Vec<Vec<u8>> = self.read_presence(channel, "values").await?;
        let users: HashSet<String> = values
            .iter()
            .filter_map(|v| serde_json::from_slice::<StoredUser>(v).ok())
            .map(|u| u.user)
            .collect();
        let mut stats = PresenceStats::default();
        stats.num_clients = u32::try_from(values.len()).unwrap_or(u32::MAX);
        stats.num_users = u32::try_from(users.len()).unwrap_or(u32::MAX);
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn public_types_are_send_and_sync() {
        assert_send_sync::<RedisBroker>();
        assert_send_sync::<RedisConfig>();
        assert_send_sync::<ConfigError>();
    }
}
