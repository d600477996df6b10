//! Results carried in replies to commands.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::encode::{ClientInfo, Publication};

fn is_false(b: &bool) -> bool {
    !*b
}
fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}
fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}
fn is_zero_i64(n: &i64) -> bool {
    *n == 0
}

/// A reply's result, one variant per method. Serialised as the method's field of the reply.
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ReplyResult {
    /// Result of `connect`.
    Connect(ConnectResult),
    /// Result of `subscribe`.
    Subscribe(SubscribeResult),
    /// Result of `unsubscribe`.
    Unsubscribe(Empty),
    /// Result of `publish`.
    Publish(Empty),
    /// Result of `presence`.
    Presence(PresenceResult),
    /// Result of `presence_stats`.
    PresenceStats(PresenceStatsResult),
    /// Result of `history`.
    History(HistoryResult),
    /// Result of `ping`.
    Ping(Empty),
    /// Result of `rpc`.
    Rpc(RpcResult),
    /// Result of `refresh`.
    Refresh(RefreshResult),
    /// Result of `sub_refresh`.
    SubRefresh(SubRefreshResult),
}

impl ReplyResult {
    /// The empty result of `unsubscribe`.
    pub fn unsubscribe() -> Self {
        Self::Unsubscribe(Empty {})
    }
    /// The empty result of `publish`.
    pub fn publish() -> Self {
        Self::Publish(Empty {})
    }
    /// The empty result of `ping`.
    pub fn ping() -> Self {
        Self::Ping(Empty {})
    }
}

/// An empty result object `{}`.
#[derive(Debug, Default, Serialize)]
pub struct Empty {}

/// Result of `connect`.
#[derive(Debug, Default, Serialize)]
#[non_exhaustive]
pub struct ConnectResult {
    /// The client id the server assigned.
    pub client: String,
    /// Server version.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// Whether the connection expires and must be refreshed.
    #[serde(skip_serializing_if = "is_false")]
    pub expires: bool,
    /// Seconds until expiry.
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
    /// Custom data for the client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Box<RawValue>>,
    /// Server-side subscriptions made at connect.
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub subs: HashMap<String, SubscribeResult>,
    /// Seconds between server pings; 0 disables them.
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ping: u32,
    /// Whether the client must answer pings with `{}`.
    #[serde(skip_serializing_if = "is_false")]
    pub pong: bool,
    /// Session id for emulated transports.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub session: String,
    /// Node id for emulated transports.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub node: String,
    /// Server time in milliseconds since the Unix epoch.
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub time: i64,
}

impl ConnectResult {
    /// A result for the given client id; set the other fields as needed.
    pub fn new(client: String) -> Self {
        Self {
            client,
            ..Self::default()
        }
    }
}

/// Result of `subscribe`.
#[derive(Debug, Default, Serialize)]
#[non_exhaustive]
pub struct SubscribeResult {
    /// Whether the subscription expires.
    #[serde(skip_serializing_if = "is_false")]
    pub expires: bool,
    /// Seconds until expiry.
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
    /// Whether the channel keeps history that recovery can use.
    #[serde(skip_serializing_if = "is_false")]
    pub recoverable: bool,
    /// Current stream epoch.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub epoch: String,
    /// Recovered publications, oldest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub publications: Vec<Publication>,
    /// Whether every missed publication was recovered.
    #[serde(skip_serializing_if = "is_false")]
    pub recovered: bool,
    /// Current stream offset.
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub offset: u64,
    /// Whether the server tells the client when it falls behind the stream.
    #[serde(skip_serializing_if = "is_false")]
    pub positioned: bool,
    /// Custom data for the client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Box<RawValue>>,
    /// Whether the client asked to recover.
    #[serde(skip_serializing_if = "is_false")]
    pub was_recovering: bool,
    /// Numeric channel id when channel compaction is on; pushes then carry `id` not `channel`.
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub id: i64,
}

/// Result of `presence`: client id to client info.
#[derive(Debug, Default, Serialize)]
pub struct PresenceResult {
    /// Who is in the channel.
    pub presence: HashMap<String, ClientInfo>,
}

/// Result of `presence_stats`.
#[derive(Debug, Default, Serialize)]
pub struct PresenceStatsResult {
    /// Number of connections in the channel.
    pub num_clients: u32,
    /// Number of distinct users in the channel.
    pub num_users: u32,
}

/// Result of `history`.
#[derive(Debug, Default, Serialize)]
pub struct HistoryResult {
    /// The publications asked for.
    pub publications: Vec<Publication>,
    /// Current stream epoch.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub epoch: String,
    /// Current stream offset.
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub offset: u64,
}

/// Result of `rpc`.
#[derive(Debug, Default, Serialize)]
pub struct RpcResult {
    /// Payload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Box<RawValue>>,
}

/// Result of `refresh`.
#[derive(Debug, Default, Serialize)]
pub struct RefreshResult {
    /// Client id.
    pub client: String,
    /// Server version.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// Whether the connection still expires.
    #[serde(skip_serializing_if = "is_false")]
    pub expires: bool,
    /// Seconds until expiry.
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
}

/// Result of `sub_refresh`.
#[derive(Debug, Default, Serialize)]
pub struct SubRefreshResult {
    /// Whether the subscription still expires.
    #[serde(skip_serializing_if = "is_false")]
    pub expires: bool,
    /// Seconds until expiry.
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
}
