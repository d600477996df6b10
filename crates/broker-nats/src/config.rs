//! The NATS broker's configuration (`[broker.nats]`).

use std::time::Duration;

use serde::Deserialize;

/// How a node reaches NATS and where it keeps its data there.
///
/// Every field has a default that works against a local `nats-server -js`, so an empty
/// `[broker.nats]` table is valid. Durations are written the human way (`"2s"`, `"7d"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct NatsConfig {
    /// Server URL, or several separated by commas (`nats://a:4222,nats://b:4222`). Credentials
    /// may be given in the URL (`nats://user:pass@host:4222`). Default `nats://127.0.0.1:4222`.
    pub url: String,
    /// Names this deployment's subjects (`<prefix>.…`), JetStream stream (`<prefix>-history`)
    /// and key-value buckets (`<prefix>-meta`, `<prefix>-presence`, `<prefix>-idem`). Nodes that
    /// must behave as one use the same prefix. Letters, digits, `-` and `_` only.
    /// Default `switchboard`.
    pub prefix: String,
    /// Time allowed for one attempt to open the connection. Default 2s. When NATS is down at
    /// startup the broker keeps trying in the background.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Upper bound for every NATS round trip (flush, JetStream request, key-value operation).
    /// A call that needs NATS while it is unreachable fails with a temporary error at once, or
    /// after at most this. Default 2s.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How often the connection is probed with a round trip. A server that does not answer a
    /// probe within `request_timeout` (frozen, overloaded, or a dead link the client has not
    /// noticed yet) makes the broker report itself not connected (`/health` answers 503) until
    /// a probe succeeds again; each change is logged once. Default 1s.
    #[serde(with = "humantime_serde")]
    pub health_check_interval: Duration,
    /// Keep history, stream positions, idempotency keys and presence in JetStream. Default true.
    /// When false the broker only carries publications, joins, leaves and control messages
    /// between nodes: history, positioned publishes, idempotent publishes and presence are
    /// refused as "not available".
    pub history: bool,
    /// Upper bound for the age of any stored publication (the history stream's `max_age`).
    /// Each publication is also filtered by its own namespace `history_ttl` on read; this bound
    /// is what reclaims the storage of channels nobody publishes to any more. Namespaces whose
    /// `history_ttl` is longer lose publications at this age. Default 7 days.
    #[serde(with = "humantime_serde")]
    pub history_max_age: Duration,
    /// Upper bound for the lifetime of a channel's stream position after its last publication
    /// (the meta bucket's `max_age`; the namespace `history_meta_ttl` is applied on top).
    /// Default 30 days.
    #[serde(with = "humantime_serde")]
    pub meta_max_age: Duration,
    /// Upper bound for the lifetime of a presence entry that is not refreshed (the presence
    /// bucket's `max_age`). Entries are filtered by their own TTL (`presence_ttl`) on read;
    /// this must be at least the hub's `presence_ttl`. Default 10 minutes.
    #[serde(with = "humantime_serde")]
    pub presence_max_age: Duration,
    /// Upper bound for how long idempotency keys are kept (the idempotency bucket's `max_age`);
    /// must be at least the hub's `idempotent_result_ttl`. Default 10 minutes.
    #[serde(with = "humantime_serde")]
    pub idempotency_max_age: Duration,
    /// JetStream replicas for the stream and buckets (1 for a single server; 3 for a typical
    /// cluster). Only used when they are created. Default 1.
    pub replicas: usize,
    /// Keep JetStream data in memory instead of on disk (lost when the server restarts).
    /// Default false.
    pub memory_storage: bool,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            prefix: "switchboard".into(),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(2),
            health_check_interval: Duration::from_secs(1),
            history: true,
            history_max_age: Duration::from_secs(7 * 24 * 3600),
            meta_max_age: Duration::from_secs(30 * 24 * 3600),
            presence_max_age: Duration::from_secs(600),
            idempotency_max_age: Duration::from_secs(600),
            replicas: 1,
            memory_storage: false,
        }
    }
}

/// A configuration value that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("invalid [broker.nats] config: {0}")]
pub struct ConfigError(pub(crate) String);

impl NatsConfig {
    /// Checks the values that NATS would refuse later (for `switchboard checkconfig`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.prefix.is_empty()
            || !self
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ConfigError(format!(
                "prefix {:?} must be non-empty letters, digits, '-' or '_'",
                self.prefix
            )));
        }
        if self.url.split(',').all(|u| u.trim().is_empty()) {
            return Err(ConfigError("url is empty".into()));
        }
        for (name, value) in [
            ("connect_timeout", self.connect_timeout),
            ("request_timeout", self.request_timeout),
            ("health_check_interval", self.health_check_interval),
            ("history_max_age", self.history_max_age),
            ("meta_max_age", self.meta_max_age),
            ("presence_max_age", self.presence_max_age),
            ("idempotency_max_age", self.idempotency_max_age),
        ] {
            if value.is_zero() {
                return Err(ConfigError(format!("{name} must be greater than zero")));
            }
        }
        if self.replicas == 0 {
            return Err(ConfigError("replicas must be at least 1".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_unknown_fields_are_refused() {
        NatsConfig::default().validate().unwrap();
        let c: NatsConfig =
            serde_json::from_str(r#"{"prefix":"a-b_c","request_timeout":"500ms"}"#).unwrap();
        assert_eq!(c.request_timeout, Duration::from_millis(500));
        assert!(c.history);
        assert!(serde_json::from_str::<NatsConfig>(r#"{"nope":1}"#).is_err());
        let mut bad = NatsConfig::default();
        bad.prefix = "a.b".into();
        assert!(bad.validate().is_err());
    }
}
