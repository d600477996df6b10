//! Configuration of the Redis broker: where Redis is, how keys are named, how long to wait.

use std::time::Duration;

use serde::Deserialize;

/// Where the Redis broker connects and how it names its keys. Deserialised from the server's
/// `[broker.redis]` table; every field has a default, so an empty table connects to a local
/// Redis.
///
/// Topologies (exactly one applies):
/// - **Standalone / sharded** (the default): every entry of [`addresses`](Self::addresses) is
///   an independent Redis; channels are spread over them by consistent hashing of the channel
///   name, control traffic goes to the first.
/// - **Sentinel**: [`sentinel_addresses`](Self::sentinel_addresses) is not empty; the broker
///   asks the sentinels for the master named [`sentinel_master_name`](Self::sentinel_master_name)
///   on every (re)connect. `addresses` is ignored.
/// - **Cluster**: [`cluster`](Self::cluster) is true; `addresses` are seed nodes of one Redis
///   Cluster. All keys of a channel share the hash tag `{channel}`, so the scripts work.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct RedisConfig {
    /// Redis URLs (`redis://[user:password@]host:port[/db]`, `rediss://` is not built in).
    /// Default `["redis://127.0.0.1:6379"]`.
    pub addresses: Vec<String>,
    /// Prefix of every key and pub/sub topic, so several deployments can share one Redis.
    /// Must not contain `{` or `}`. Default `"switchboard"`.
    pub prefix: String,
    /// Sentinel URLs; when not empty, the master is found through them. Default empty.
    pub sentinel_addresses: Vec<String>,
    /// Name of the master the sentinels monitor. Default `"mymaster"`.
    pub sentinel_master_name: String,
    /// Treat `addresses` as the seed nodes of a Redis Cluster. Default false.
    pub cluster: bool,
    /// How long one connection attempt may take. Default 1s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long one command (or script) may take before the call fails with
    /// `BrokerError::Unavailable`. Default 1s.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Longest wait between reconnect attempts (the wait starts at 50ms and doubles). Default 2s.
    #[serde(with = "humantime_serde")]
    pub reconnect_max_delay: Duration,
    /// How often idle connections are pinged, so a silently dead Redis is noticed within
    /// `health_check_interval + command_timeout`. Default 1s.
    #[serde(with = "humantime_serde")]
    pub health_check_interval: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            addresses: vec!["redis://127.0.0.1:6379".into()],
            prefix: "switchboard".into(),
            sentinel_addresses: Vec::new(),
            sentinel_master_name: "mymaster".into(),
            cluster: false,
            connect_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_secs(1),
            reconnect_max_delay: Duration::from_secs(2),
            health_check_interval: Duration::from_secs(1),
        }
    }
}

/// A [`RedisConfig`] that cannot work. Returned by [`crate::RedisBroker::connect`] and
/// [`RedisConfig::validate`]; fix the configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Neither `addresses` nor `sentinel_addresses` names a server.
    #[error("redis: no addresses configured")]
    NoAddresses,
    /// An address is not a valid Redis URL.
    #[error("redis: invalid address {address:?}: {reason}")]
    InvalidAddress {
        /// The address as configured.
        address: String,
        /// Why it was refused.
        reason: String,
    },
    /// `prefix` contains a brace, which would break Redis Cluster hash tags.
    #[error("redis: prefix {0:?} must not contain '{{' or '}}'")]
    InvalidPrefix(String),
    /// `cluster` and `sentinel_addresses` were both set.
    #[error("redis: cluster and sentinel cannot be combined")]
    ClusterAndSentinel,
    /// A timeout or interval is zero.
    #[error("redis: {0} must be greater than zero")]
    ZeroDuration(&'static str),
}

impl RedisConfig {
    /// Checks the configuration without connecting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.prefix.contains(['{', '}']) {
            return Err(ConfigError::InvalidPrefix(self.prefix.clone()));
        }
        if self.cluster && !self.sentinel_addresses.is_empty() {
            return Err(ConfigError::ClusterAndSentinel);
        }
        let servers = if self.sentinel_addresses.is_empty() {
            &self.addresses
        } else {
            &self.sentinel_addresses
        };
        if servers.is_empty() {
            return Err(ConfigError::NoAddresses);
        }
        for address in servers {
            parse_address(address)?;
        }
        for (name, value) in [
            ("connect_timeout", self.connect_timeout),
            ("command_timeout", self.command_timeout),
            ("reconnect_max_delay", self.reconnect_max_delay),
            ("health_check_interval", self.health_check_interval),
        ] {
            if value.is_zero() {
                return Err(ConfigError::ZeroDuration(name));
            }
        }
        Ok(())
    }
}

pub(crate) fn parse_address(address: &str) -> Result<redis::ConnectionInfo, ConfigError> {
    use redis::IntoConnectionInfo;
    address
        .into_connection_info()
        .map_err(|e| ConfigError::InvalidAddress {
            address: address.to_string(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_empty_table_deserialises() {
        let config: RedisConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(config, RedisConfig::default());
        config.validate().unwrap();
    }

    #[test]
    fn refuses_bad_configs() {
        let mut c = RedisConfig::default();
        c.prefix = "a{b".into();
        assert!(matches!(c.validate(), Err(ConfigError::InvalidPrefix(_))));
        let mut c = RedisConfig::default();
        c.addresses = vec!["nonsense://x".into()];
        assert!(matches!(
            c.validate(),
            Err(ConfigError::InvalidAddress { .. })
        ));
        let mut c = RedisConfig::default();
        c.addresses.clear();
        assert!(matches!(c.validate(), Err(ConfigError::NoAddresses)));
        let mut c = RedisConfig::default();
        c.cluster = true;
        c.sentinel_addresses = vec!["redis://127.0.0.1:26379".into()];
        assert!(matches!(c.validate(), Err(ConfigError::ClusterAndSentinel)));
        assert!(serde_json::from_str::<RedisConfig>("{\"nope\":1}").is_err());
        let c: RedisConfig = serde_json::from_str("{\"command_timeout\":\"250ms\"}").unwrap();
        assert_eq!(c.command_timeout, Duration::from_millis(250));
    }
}
