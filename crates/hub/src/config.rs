//! Options the hub enforces: client limits and per-namespace channel options.
//!
//! These types are deserialised from the `[client]` and `[channel]` sections of
//! `switchboard.toml`; every field has a documented default (see docs/CONFIG.md). Defaults are
//! the production ones; development mode is applied by the server before deserialising.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;

/// Everything the hub needs to know from the configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct HubConfig {
    /// Client connection options.
    pub client: ClientConfig,
    /// Channel and namespace options.
    pub channel: ChannelConfig,
    /// Backend proxies (`[proxy]`).
    pub proxy: crate::proxy::ProxyConfig,
}

/// `client.write_delay`: adaptive (`"auto"`) or a fixed duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteDelay {
    /// Chosen from the node's load by the [`crate::pacer::Pacer`].
    #[default]
    Auto,
    /// Always this delay (zero: every write at once).
    Fixed(Duration),
}

impl<'de> Deserialize<'de> for WriteDelay {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text.trim().eq_ignore_ascii_case("auto") {
            return Ok(WriteDelay::Auto);
        }
        humantime_serde::re::humantime::parse_duration(text.trim())
            .map(WriteDelay::Fixed)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "write_delay: \"auto\" or a duration such as \"5ms\" ({e})"
                ))
            })
    }
}

impl From<Duration> for WriteDelay {
    fn from(d: Duration) -> Self {
        WriteDelay::Fixed(d)
    }
}

/// Limits and timings for client connections.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Accept connections without a token (anonymous, user id ""). Default false (true in
    /// development mode).
    pub allow_anonymous: bool,
    /// Interval between server pings. Default 25s. 0 disables pings.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// How long the client has to answer a ping before it is disconnected with 3012 "no pong".
    /// Default 8s.
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
    /// How long a new connection may take to send `connect` before it is closed with 3502
    /// "stale". Default 10s.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Maximum channels one connection may be subscribed to (error 106 beyond). Default 128.
    pub max_channels: usize,
    /// Maximum bytes queued for one connection before it is disconnected with 3008 "slow".
    /// Default 1 MiB.
    pub max_queue_bytes: usize,
    /// Maximum size of one incoming message (WebSocket message, HTTP body). Larger messages close
    /// the connection (WebSocket close 1009). Default 64 KiB.
    pub max_message_size: usize,
    /// Minimum time between two writes to one connection while messages keep coming; messages
    /// arriving sooner wait and go out together in one frame. `"auto"` (default) adapts it to
    /// the node's load (zero while the node keeps up, up to 20 ms when it is saturated; see
    /// [`crate::pacer`]); a duration fixes it (`"0s"`: always write at once).
    pub write_delay: WriteDelay,
    /// Maximum simultaneous connections on this node; 0 = unlimited. Default 0. New connections
    /// beyond it are closed with 3504 "connection limit".
    pub max_connections: usize,
    /// Maximum commands per second per connection (token bucket with a burst of the same size);
    /// 0 = unlimited. Default 0. Commands over the limit get error 111; a connection that keeps
    /// going for a whole second beyond it is closed with 3013.
    pub max_commands_per_second: u32,
    /// Maximum simultaneous connections of one (non-anonymous) user on this node; 0 = unlimited.
    /// Default 0. Beyond it `connect` is refused and the connection closed with 3504.
    pub max_connections_per_user: usize,
    /// Grace period after a connection or subscription token expires before the server gives up
    /// waiting for a refresh (close 3005, or an unsubscribe push 2501). Default 25s.
    #[serde(with = "humantime_serde")]
    pub expired_close_delay: Duration,
    /// Origins allowed to open connections from browsers (`Origin` header), as exact values or
    /// globs (`https://*.example.com`, `*`). Empty: only same-origin requests (Origin host equals
    /// the Host header) and requests without `Origin` are allowed. Default empty (`["*"]` in
    /// development mode). Protects against cross-site WebSocket hijacking.
    pub allowed_origins: Vec<String>,
    /// How long a presence entry lives without refresh; connections refresh theirs every
    /// `presence_update_interval`, so entries of a node that dies vanish after this. Default 60s.
    #[serde(with = "humantime_serde")]
    pub presence_ttl: Duration,
    /// How often a connection refreshes its presence entries. Default 25s.
    #[serde(with = "humantime_serde")]
    pub presence_update_interval: Duration,
    /// How long idempotency keys of publications are remembered. Default 5m.
    #[serde(with = "humantime_serde")]
    pub idempotent_result_ttl: Duration,
    /// Connection token verification (`[client.token]`).
    pub token: crate::auth::TokenConfig,
    /// Subscription token verification (`[client.subscription_token]`); when no key is set here
    /// the connection token keys are used.
    pub subscription_token: crate::auth::TokenConfig,
    /// Server-side subscription of every authenticated user to a personal channel
    /// (`[client.subscribe_to_user_personal_channel]`).
    pub subscribe_to_user_personal_channel: PersonalChannelConfig,
}

/// Every authenticated connection subscribed, server-side, to its user's personal channel:
/// `#<user>`, or `<namespace>:#<user>` with a namespace (Centrifugo's option of the same name).
/// Anonymous connections are not subscribed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct PersonalChannelConfig {
    /// Subscribe authenticated connections to their personal channel. Default false.
    pub enabled: bool,
    /// Namespace of the personal channels; empty (default) uses the default namespace.
    pub personal_channel_namespace: String,
}

impl PersonalChannelConfig {
    /// The personal channel of `user`, or `None` when disabled or for anonymous users.
    pub fn channel_for(&self, user: &str) -> Option<String> {
        if !self.enabled || user.is_empty() {
            return None;
        }
        Some(if self.personal_channel_namespace.is_empty() {
            format!("#{user}")
        } else {
            format!("{}:#{user}", self.personal_channel_namespace)
        })
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            allow_anonymous: false,
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(8),
            handshake_timeout: Duration::from_secs(10),
            max_channels: 128,
            max_queue_bytes: 1024 * 1024,
            max_message_size: 64 * 1024,
            write_delay: WriteDelay::Auto,
            max_connections: 0,
            max_commands_per_second: 0,
            max_connections_per_user: 0,
            expired_close_delay: Duration::from_secs(25),
            allowed_origins: Vec::new(),
            presence_ttl: Duration::from_secs(60),
            presence_update_interval: Duration::from_secs(25),
            idempotent_result_ttl: Duration::from_secs(300),
            token: Default::default(),
            subscription_token: Default::default(),
            subscribe_to_user_personal_channel: Default::default(),
        }
    }
}

/// Channel naming and namespace options.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct ChannelConfig {
    /// Maximum channel name length in bytes. Default 255.
    pub max_length: usize,
    /// Treat channels in namespaces that are not configured as if they were in the default
    /// namespace, instead of refusing them with error 102. Default false (true in development
    /// mode).
    pub allow_unknown_namespaces: bool,
    /// Options of channels without a namespace (no `:` in the name).
    pub default: NamespaceOptions,
    /// Named namespaces: channel `chat:room1` uses the namespace whose `name` is `chat`.
    pub namespaces: Vec<NamespaceOptions>,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        Self {
            max_length: 255,
            allow_unknown_namespaces: false,
            default: NamespaceOptions::default(),
            namespaces: Vec::new(),
        }
    }
}

impl ChannelConfig {
    /// Every channel of a namespace's `subscribe_on_connect`, with its namespace prefix.
    pub(crate) fn connect_channels(&self) -> Vec<String> {
        let sep = crate::channel::NAMESPACE_SEPARATOR;
        let default = self.default.subscribe_on_connect.iter().cloned();
        let named = self.namespaces.iter().flat_map(|ns| {
            ns.subscribe_on_connect
                .iter()
                .map(move |name| format!("{}{sep}{name}", ns.name))
        });
        default.chain(named).collect()
    }

    /// Index of namespaces by name, for lookups per command.
    pub(crate) fn index(&self) -> HashMap<String, NamespaceOptions> {
        self.namespaces
            .iter()
            .map(|ns| (ns.name.clone(), ns.clone()))
            .collect()
    }

    /// Checks names and option combinations; returns one message per problem with its path.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, ns) in self.namespaces.iter().enumerate() {
            let path = format!("channel.namespaces[{i}].name");
            if ns.name.is_empty()
                || ns.name.len() > 64
                || !ns
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
            {
                problems.push(format!(
                    "{path}: {:?} must be 1..=64 characters of [A-Za-z0-9_.-]",
                    ns.name
                ));
            }
            if !seen.insert(ns.name.as_str()) {
                problems.push(format!("{path}: duplicate namespace {:?}", ns.name));
            }
        }
        for (i, ns) in std::iter::once(&self.default)
            .chain(&self.namespaces)
            .enumerate()
        {
            let path = if i == 0 {
                "channel.default".to_string()
            } else {
                format!("channel.namespaces[{}]", i - 1)
            };
            for (j, name) in ns.subscribe_on_connect.iter().enumerate() {
                if name.is_empty()
                    || name.contains(crate::channel::NAMESPACE_SEPARATOR)
                    || name.chars().any(|c| c.is_control() || c.is_whitespace())
                {
                    problems.push(format!(
                        "{path}.subscribe_on_connect[{j}]: {name:?} must be a channel name \
                         without a namespace (no ':', no spaces)"
                    ));
                }
            }
            if ns.history_size > 0 && ns.history_ttl.is_zero() {
                problems.push(format!(
                    "{path}.history_ttl: must be set when history_size > 0"
                ));
            }
        }
        if self.max_length == 0 {
            problems.push("channel.max_length: must be greater than 0".into());
        }
        problems
    }
}

/// What clients may do in a namespace's channels, and which features the channels have.
///
/// Presence, join/leave, history and recovery options are accepted and validated now; they take
/// effect with the history and presence release (see docs/CONFIG.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct NamespaceOptions {
    /// Namespace name (entries of `channel.namespaces` only): the part of a channel name before
    /// the first `:`. Empty for the default namespace.
    pub name: String,
    /// Any connected client may subscribe (without a subscription token). Default false.
    pub allow_subscribe_for_client: bool,
    /// Anonymous clients may subscribe too (with `allow_subscribe_for_client`). Default false.
    pub allow_subscribe_for_anonymous: bool,
    /// Clients subscribed to the channel may publish into it. Default false.
    pub allow_publish_for_subscriber: bool,
    /// Any connected client may publish, subscribed or not. Default false.
    pub allow_publish_for_client: bool,
    /// Anonymous clients may publish too (with one of the two above). Default false.
    pub allow_publish_for_anonymous: bool,
    /// Subscribers may ask for presence. Default false.
    pub allow_presence_for_subscriber: bool,
    /// Any client may ask for presence. Default false.
    pub allow_presence_for_client: bool,
    /// Anonymous clients may ask for presence (with one of the two above). Default false.
    pub allow_presence_for_anonymous: bool,
    /// Subscribers may read history. Default false.
    pub allow_history_for_subscriber: bool,
    /// Any client may read history. Default false.
    pub allow_history_for_client: bool,
    /// Anonymous clients may read history (with one of the two above). Default false.
    pub allow_history_for_anonymous: bool,
    /// Channels like `name#42,43` are limited to the listed user ids. Default false.
    pub allow_user_limited_channels: bool,
    /// Keep presence information for channels. Default false.
    pub presence: bool,
    /// Send join and leave pushes to subscribers that ask for them. Default false.
    pub join_leave: bool,
    /// Send join and leave pushes to every subscriber. Default false.
    pub force_push_join_leave: bool,
    /// Publications kept per channel for history and recovery; 0 disables history. Default 0.
    pub history_size: usize,
    /// How long publications stay in history. Default 0 (history disabled).
    #[serde(with = "humantime_serde")]
    pub history_ttl: std::time::Duration,
    /// How long a stream's position (offset and epoch) is kept after its last publication.
    /// Default 0 (use the server default of 30 days).
    #[serde(with = "humantime_serde")]
    pub history_meta_ttl: std::time::Duration,
    /// Recover missed publications on resubscribe even if the client did not ask. Default false.
    pub force_recovery: bool,
    /// Tell subscribers when they fall behind the stream even if they did not ask. Default false.
    pub force_positioning: bool,
    /// Maximum size of one client publication's data in bytes; 0 = only the message size limit.
    pub max_publish_size: usize,
    /// Ask the subscribe proxy whether a client may subscribe (instead of the allow_* options).
    pub proxy_subscribe: bool,
    /// Ask the publish proxy whether a client may publish (instead of the allow_* options).
    pub proxy_publish: bool,
    /// Ask the sub_refresh proxy to extend expiring subscriptions.
    pub proxy_sub_refresh: bool,
    /// Subscribe proxy URL for this namespace; empty = `proxy.subscribe_endpoint`.
    pub subscribe_proxy_endpoint: String,
    /// Publish proxy URL for this namespace; empty = `proxy.publish_endpoint`.
    pub publish_proxy_endpoint: String,
    /// Sub-refresh proxy URL for this namespace; empty = `proxy.sub_refresh_endpoint`.
    pub sub_refresh_proxy_endpoint: String,
    /// Channels of this namespace that every client is subscribed to by the server when it
    /// connects (server-side subscriptions, as with a token's `channels` claim), named without
    /// the namespace: `["global"]` in namespace `news` is `news:global`. Default empty.
    pub subscribe_on_connect: Vec<String>,
}

impl Default for NamespaceOptions {
    fn default() -> Self {
        Self {
            name: String::new(),
            allow_subscribe_for_client: false,
            allow_subscribe_for_anonymous: false,
            allow_publish_for_subscriber: false,
            allow_publish_for_client: false,
            allow_publish_for_anonymous: false,
            allow_presence_for_subscriber: false,
            allow_presence_for_client: false,
            allow_presence_for_anonymous: false,
            allow_history_for_subscriber: false,
            allow_history_for_client: false,
            allow_history_for_anonymous: false,
            allow_user_limited_channels: false,
            presence: false,
            join_leave: false,
            force_push_join_leave: false,
            history_size: 0,
            history_ttl: std::time::Duration::ZERO,
            history_meta_ttl: std::time::Duration::ZERO,
            force_recovery: false,
            force_positioning: false,
            max_publish_size: 0,
            proxy_subscribe: false,
            proxy_publish: false,
            proxy_sub_refresh: false,
            subscribe_proxy_endpoint: String::new(),
            publish_proxy_endpoint: String::new(),
            sub_refresh_proxy_endpoint: String::new(),
            subscribe_on_connect: Vec::new(),
        }
    }
}
