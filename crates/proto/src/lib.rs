//! The Switchboard native wire protocol: the Centrifugo client protocol v2 in its JSON form.
//!
//! This crate is sans-I/O: it turns bytes into [`Command`]s and replies and pushes into bytes, and
//! defines the error and disconnect codes clients see. It knows nothing about sockets, tasks,
//! clocks, channels' state or brokers; the `switchboard-hub` crate drives it.
//!
//! A WebSocket text frame carries one or more JSON objects separated by `\n`. Clients send
//! [`Command`]s (each with an `id` > 0, except the empty `{}` pong); the server answers each with a
//! reply carrying the same `id`, and sends pushes (no `id`) for publications, joins, leaves and
//! disconnects.
//!
//! ```
//! use switchboard_proto::{decode_commands, Method};
//!
//! let frame = b"{\"id\":1,\"connect\":{\"name\":\"js\"}}\n{\"id\":2,\"subscribe\":{\"channel\":\"chat:index\"}}";
//! let commands = decode_commands(frame).unwrap();
//! assert_eq!(commands.len(), 2);
//! assert!(matches!(commands[1].method(), Ok(Method::Subscribe(_))));
//! ```
//!
//! What it deliberately does not do: the binary Protobuf form (planned), channel semantics
//! (namespaces, permissions) and any I/O.

mod codes;
mod command;
mod encode;
pub mod reply;

pub use codes::{DisconnectCode, ErrorCode, ProtoError, MAX_CUSTOM_REASONS};
pub use command::{
    decode_commands, Command, ConnectRequest, HistoryRequest, Method, MethodError, PresenceRequest,
    PresenceStatsRequest, PublishRequest, RefreshRequest, RpcRequest, SendRequest, StreamPosition,
    SubRefreshRequest, SubscribeRequest, UnsubscribeRequest, MAX_COMMANDS_PER_FRAME,
};
pub use encode::{
    encode_custom_error_reply, encode_disconnect_push, encode_error_reply, encode_join_push,
    encode_leave_push, encode_message_push, encode_publication_push, encode_reply,
    encode_subscribe_push, encode_unsubscribe_push, ChannelRef, ClientInfo, Publication,
    PING_FRAME,
};
pub use reply::{
    ConnectResult, HistoryResult, PresenceResult, PresenceStatsResult, RefreshResult, ReplyResult,
    RpcResult, SubRefreshResult, SubscribeResult,
};
pub use serde_json::value::RawValue;
