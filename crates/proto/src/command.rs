//! Commands sent by clients, decoded from newline-delimited JSON.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::codes::ProtoError;

/// Upper bound on commands decoded from one frame; larger batches are refused as malformed input.
pub const MAX_COMMANDS_PER_FRAME: usize = 1024;

/// One command from a client. Exactly one method field is set, except for the empty `{}` pong.
///
/// Unknown fields are ignored so that newer SDKs keep working.
#[derive(Debug, Default, Deserialize)]
#[non_exhaustive]
pub struct Command {
    /// Command id, echoed in the reply. Zero only for the pong `{}` and for `send`.
    #[serde(default)]
    pub id: u32,
    /// Authenticate and start the session.
    pub connect: Option<ConnectRequest>,
    /// Subscribe to a channel.
    pub subscribe: Option<SubscribeRequest>,
    /// Unsubscribe from a channel.
    pub unsubscribe: Option<UnsubscribeRequest>,
    /// Publish into a channel.
    pub publish: Option<PublishRequest>,
    /// Ask who is in a channel.
    pub presence: Option<PresenceRequest>,
    /// Ask how many clients and users are in a channel.
    pub presence_stats: Option<PresenceStatsRequest>,
    /// Read a channel's history.
    pub history: Option<HistoryRequest>,
    /// Explicit ping from the client (answered with an empty result).
    pub ping: Option<IgnoredAny>,
    /// Asynchronous message to the server (no reply).
    pub send: Option<SendRequest>,
    /// Remote procedure call.
    pub rpc: Option<RpcRequest>,
    /// Refresh the connection token.
    pub refresh: Option<RefreshRequest>,
    /// Refresh a subscription token.
    pub sub_refresh: Option<SubRefreshRequest>,
}

/// Placeholder for request objects whose content is not used.
#[derive(Debug, Default, Deserialize)]
pub struct IgnoredAny {}

/// The method a [`Command`] carries, borrowed from it.
#[derive(Debug)]
pub enum Method<'a> {
    /// The empty command `{}`: the client's answer to a server ping.
    Pong,
    /// `connect`.
    Connect(&'a ConnectRequest),
    /// `subscribe`.
    Subscribe(&'a SubscribeRequest),
    /// `unsubscribe`.
    Unsubscribe(&'a UnsubscribeRequest),
    /// `publish`.
    Publish(&'a PublishRequest),
    /// `presence`.
    Presence(&'a PresenceRequest),
    /// `presence_stats`.
    PresenceStats(&'a PresenceStatsRequest),
    /// `history`.
    History(&'a HistoryRequest),
    /// `ping`.
    Ping,
    /// `send`.
    Send(&'a SendRequest),
    /// `rpc`.
    Rpc(&'a RpcRequest),
    /// `refresh`.
    Refresh(&'a RefreshRequest),
    /// `sub_refresh`.
    SubRefresh(&'a SubRefreshRequest),
}

impl Method<'_> {
    /// The method's name as used in metrics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Method::Pong => "pong",
            Method::Connect(_) => "connect",
            Method::Subscribe(_) => "subscribe",
            Method::Unsubscribe(_) => "unsubscribe",
            Method::Publish(_) => "publish",
            Method::Presence(_) => "presence",
            Method::PresenceStats(_) => "presence_stats",
            Method::History(_) => "history",
            Method::Ping => "ping",
            Method::Send(_) => "send",
            Method::Rpc(_) => "rpc",
            Method::Refresh(_) => "refresh",
            Method::SubRefresh(_) => "sub_refresh",
        }
    }
}

/// Why a [`Command`] has no usable method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodError {
    /// The command has an id but no known method field.
    Unknown,
    /// The command sets more than one method field.
    Ambiguous,
}

impl Command {
    /// The single method this command carries.
    pub fn method<'a>(&'a self) -> Result<Method<'a>, MethodError> {
        let mut found: Option<Method<'a>> = None;
        let mut count = 0;
        let mut take = |m: Method<'a>| {
            count += 1;
            found.get_or_insert(m);
        };
        if let Some(r) = &self.connect {
            take(Method::Connect(r));
        }
        if let Some(r) = &self.subscribe {
            take(Method::Subscribe(r));
        }
        if let Some(r) = &self.unsubscribe {
            take(Method::Unsubscribe(r));
        }
        if let Some(r) = &self.publish {
            take(Method::Publish(r));
        }
        if let Some(r) = &self.presence {
            take(Method::Presence(r));
        }
        if let Some(r) = &self.presence_stats {
            take(Method::PresenceStats(r));
        }
        if let Some(r) = &self.history {
            take(Method::History(r));
        }
        if self.ping.is_some() {
            take(Method::Ping);
        }
        if let Some(r) = &self.send {
            take(Method::Send(r));
        }
        if let Some(r) = &self.rpc {
            take(Method::Rpc(r));
        }
        if let Some(r) = &self.refresh {
            take(Method::Refresh(r));
        }
        if let Some(r) = &self.sub_refresh {
            take(Method::SubRefresh(r));
        }
        match (found, count) {
            (Some(m), 1) => Ok(m),
            (Some(_), _) => Err(MethodError::Ambiguous),
            (None, _) if self.id == 0 => Ok(Method::Pong),
            (None, _) => Err(MethodError::Unknown),
        }
    }
}

/// `connect` request.
#[derive(Debug, Default, Deserialize)]
#[non_exhaustive]
pub struct ConnectRequest {
    /// Connection token (JWT); empty when the client connects anonymously.
    #[serde(default)]
    pub token: String,
    /// Custom data for a connect proxy.
    pub data: Option<Box<RawValue>>,
    /// Subscriptions the client wants to restore (server-side subscriptions with recovery).
    #[serde(default)]
    pub subs: HashMap<String, SubscribeRequest>,
    /// Client SDK name, for example `js`.
    #[serde(default)]
    pub name: String,
    /// Client SDK version.
    #[serde(default)]
    pub version: String,
    /// Headers the client wants forwarded to proxies (emulated transports).
    #[serde(default)]
    pub headers: HashMap<String, String>,
}

/// A position in a channel's stream: the publication offset and the stream's epoch.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct StreamPosition {
    /// Offset of the last publication seen.
    #[serde(default)]
    pub offset: u64,
    /// Epoch of the stream; a different epoch means the stream was reset.
    #[serde(default)]
    pub epoch: String,
}

/// `subscribe` request.
#[derive(Debug, Default, Deserialize)]
#[non_exhaustive]
pub struct SubscribeRequest {
    /// Channel name.
    #[serde(default)]
    pub channel: String,
    /// Subscription token for private channels.
    #[serde(default)]
    pub token: String,
    /// Whether the client asks to recover missed publications from `offset`/`epoch`.
    #[serde(default)]
    pub recover: bool,
    /// Epoch the client saw last.
    #[serde(default)]
    pub epoch: String,
    /// Offset the client saw last.
    #[serde(default)]
    pub offset: u64,
    /// Custom data for a subscribe proxy.
    pub data: Option<Box<RawValue>>,
    /// The client wants positioning (to be told when it falls behind the stream).
    #[serde(default)]
    pub positioned: bool,
    /// The client wants recoverable semantics.
    #[serde(default)]
    pub recoverable: bool,
    /// The client wants join and leave pushes.
    #[serde(default)]
    pub join_leave: bool,
    /// Delta compression format the client asks for (not supported; ignored).
    #[serde(default)]
    pub delta: String,
    /// Bit flags: 1 asks for channel compaction (pushes then carry a numeric `id` instead of
    /// the channel name), 2 asks for an error instead of `recovered: false`.
    #[serde(default)]
    pub flag: i64,
}

/// `unsubscribe` request.
#[derive(Debug, Default, Deserialize)]
#[non_exhaustive]
pub struct UnsubscribeRequest {
    /// Channel name.
    #[serde(default)]
    pub channel: String,
}

/// `publish` request.
#[derive(Debug, Deserialize)]
#[non_exhaustive]
pub struct PublishRequest {
    /// Channel name.
    #[serde(default)]
    pub channel: String,
    /// The publication's JSON payload.
    pub data: Option<Box<RawValue>>,
}

/// `presence` request.
#[derive(Debug, Default, Deserialize)]
#[non_exhaustive]
pub struct PresenceRequest {
    /// Channel name.
    #[serde(default)]
    pub channel: String,
}

/// `presence_stats` request.
#[derive(Debug, Default, Deserialize)]
#[non_exhaustive]
pub struct PresenceStatsRequest {
    /// Channel name.
    #[serde(default)]
    pub channel: String,
}

/// `history` request.
#[derive(Debug, Default, Deserialize)]
#[non_exhaustive]
pub struct HistoryRequest {
    /// Channel name.
    #[serde(default)]
    pub channel: String,
    /// Maximum number of publications to return; 0 returns only the stream position.
    #[serde(default)]
    pub limit: i32,
    /// Return publications after this position.
    pub since: Option<StreamPosition>,
    /// Return newest first.
    #[serde(default)]
    pub reverse: bool,
}

/// `send` request: an asynchronous message without reply.
#[derive(Debug, Deserialize)]
#[non_exhaustive]
pub struct SendRequest {
    /// Payload.
    pub data: Option<Box<RawValue>>,
}

/// `rpc` request.
#[derive(Debug, Deserialize)]
#[non_exhaustive]
pub struct RpcRequest {
    /// Payload.
    pub data: Option<Box<RawValue>>,
    /// Method name.
    #[serde(default)]
    pub method: String,
}

/// `refresh` request: a new connection token.
#[derive(Debug, Default, Deserialize)]
#[non_exhaustive]
pub struct RefreshRequest {
    /// The new token.
    #[serde(default)]
    pub token: String,
}

/// `sub_refresh` request: a new subscription token.
#[derive(Debug, Default, Deserialize)]
#[non_exhaustive]
pub struct SubRefreshRequest {
    /// Channel name.
    #[serde(default)]
    pub channel: String,
    /// The new token.
    #[serde(default)]
    pub token: String,
}

/// Decodes the commands in one frame: JSON objects separated by `\n` (blank lines are skipped).
///
/// Any malformed line fails the whole frame; callers close the connection with
/// [`crate::DisconnectCode::BAD_REQUEST`].
pub fn decode_commands(frame: &[u8]) -> Result<Vec<Command>, ProtoError> {
    let mut commands = Vec::new();
    for line in frame.split(|&b| b == b'\n') {
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        if commands.len() == MAX_COMMANDS_PER_FRAME {
            return Err(ProtoError::TooManyCommands);
        }
        commands.push(serde_json::from_slice(line)?);
    }
    Ok(commands)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_batch_and_pong() {
        let frame = b"{}\n{\"id\":3,\"publish\":{\"channel\":\"a\",\"data\":{\"x\":[1,2]}}}\n";
        let cmds = decode_commands(frame).unwrap();
        assert_eq!(cmds.len(), 2);
        assert!(matches!(cmds[0].method(), Ok(Method::Pong)));
        match cmds[1].method() {
            Ok(Method::Publish(p)) => {
                assert_eq!(p.channel, "a");
                assert_eq!(p.data.as_ref().unwrap().get(), "{\"x\":[1,2]}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn unknown_and_ambiguous_methods() {
        let cmds = decode_commands(b"{\"id\":1,\"frobnicate\":{}}").unwrap();
        assert_eq!(cmds[0].method().unwrap_err(), MethodError::Unknown);
        let cmds =
            decode_commands(b"{\"id\":1,\"ping\":{},\"unsubscribe\":{\"channel\":\"x\"}}").unwrap();
        assert_eq!(cmds[0].method().unwrap_err(), MethodError::Ambiguous);
    }

    #[test]
    fn malformed_lines_fail_the_frame() {
        assert!(decode_commands(b"{\"id\":1}\n{oops").is_err());
        assert!(decode_commands(b"[1,2]").is_err());
        assert!(decode_commands(b"{\"id\":-1}").is_err());
        assert!(decode_commands(b"{\"id\":1,\"subscribe\":{\"channel\":5}}").is_err());
    }

    #[test]
    fn subscribe_with_recovery_fields() {
        let cmds = decode_commands(
            br#"{"id":7,"subscribe":{"channel":"news:1","recover":true,"offset":42,"epoch":"ab"}}"#,
        )
        .unwrap();
        let Ok(Method::Subscribe(s)) = cmds[0].method() else {
            panic!()
        };
        assert!(s.recover);
        assert_eq!(s.offset, 42);
        assert_eq!(s.epoch, "ab");
    }

    #[test]
    fn too_many_commands() {
        let frame = "{}\n".repeat(MAX_COMMANDS_PER_FRAME + 1);
        assert!(matches!(
            decode_commands(frame.as_bytes()),
            Err(ProtoError::TooManyCommands)
        ));
    }
}
