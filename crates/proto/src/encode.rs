//! Encoding of replies and pushes into JSON bytes, once per message.
//!
//! Publication pushes are the hot path: the hub encodes each one once and shares the resulting
//! [`Bytes`] with every local subscriber, so these functions write directly into a buffer instead
//! of building intermediate values.

use std::collections::HashMap;
use std::io::Write;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::codes::{DisconnectCode, ErrorCode};
use crate::reply::ReplyResult;

/// The server's ping: an empty JSON object. The client answers with `{}` when asked to.
pub const PING_FRAME: &[u8] = b"{}";

/// Who published or joined: user and client ids with optional connection and channel info.
///
/// Deserialises from its own serialisation (brokers store and forward it between nodes); the
/// info fields stay raw JSON.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientInfo {
    /// User id; empty for anonymous connections.
    pub user: String,
    /// Client (connection) id.
    pub client: String,
    /// Connection info from the token or connect proxy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conn_info: Option<Box<RawValue>>,
    /// Channel info from the subscription token or subscribe proxy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chan_info: Option<Box<RawValue>>,
}

/// A publication as clients see it.
#[derive(Debug, Clone, Serialize)]
pub struct Publication {
    /// The JSON payload.
    pub data: Box<RawValue>,
    /// The publisher, when it was a client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<ClientInfo>,
    /// Offset in the channel's stream; 0 when the channel keeps no history.
    #[serde(skip_serializing_if = "is_zero")]
    pub offset: u64,
    /// String tags attached by the publisher.
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub tags: HashMap<String, String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// How a push names its channel: by name, or by the numeric id agreed at subscribe time
/// (channel compaction).
#[derive(Debug, Clone, Copy)]
pub enum ChannelRef<'a> {
    /// The channel's name.
    Name(&'a str),
    /// The channel's compact id.
    Id(u64),
}

fn write_push_head(buf: &mut Vec<u8>, channel: ChannelRef<'_>) {
    match channel {
        ChannelRef::Name(name) => {
            buf.extend_from_slice(b"{\"push\":{\"channel\":");
            write_json_str(buf, name);
        }
        ChannelRef::Id(id) => {
            buf.extend_from_slice(b"{\"push\":{\"id\":");
            buf.extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
        }
    }
}

fn write_json_str(buf: &mut Vec<u8>, s: &str) {
    // Writing to a Vec cannot fail and a &str always serialises.
    serde_json::to_writer(&mut *buf, s).expect("serialising a str into a Vec cannot fail");
}

fn write_json<T: Serialize + ?Sized>(buf: &mut Vec<u8>, value: &T) {
    // Our types serialise infallibly: no maps with non-string keys, no failing Serialize impls.
    serde_json::to_writer(&mut *buf, value).expect("protocol types serialise infallibly");
}

/// Encodes `{"push":{"channel":..,"pub":{..}}}` for a publication.
pub fn encode_publication_push(channel: &str, publication: &Publication) -> Bytes {
    let mut buf = Vec::with_capacity(48 + channel.len() + publication.data.get().len());
    write_push_head(&mut buf, ChannelRef::Name(channel));
    buf.extend_from_slice(b",\"pub\":");
    write_json(&mut buf, publication);
    buf.extend_from_slice(b"}}");
    buf.into()
}

/// Encodes a `join` push.
pub fn encode_join_push(channel: &str, info: &ClientInfo) -> Bytes {
    encode_info_push(channel, "join", info)
}

/// Encodes a `leave` push.
pub fn encode_leave_push(channel: &str, info: &ClientInfo) -> Bytes {
    encode_info_push(channel, "leave", info)
}

fn encode_info_push(channel: &str, kind: &str, info: &ClientInfo) -> Bytes {
    let mut buf = Vec::with_capacity(64 + channel.len());
    write_push_head(&mut buf, ChannelRef::Name(channel));
    let _ = write!(buf, ",\"{kind}\":{{\"info\":");
    write_json(&mut buf, info);
    buf.extend_from_slice(b"}}}");
    buf.into()
}

/// Encodes an `unsubscribe` push: the server ended the client's subscription to `channel`.
///
/// Codes below 2500 mean "unsubscribed, do not resubscribe"; 2500 and above ask the client to
/// resubscribe.
pub fn encode_unsubscribe_push(channel: &str, code: u32, reason: &str) -> Bytes {
    let mut buf = Vec::with_capacity(64 + channel.len());
    write_push_head(&mut buf, ChannelRef::Name(channel));
    let _ = write!(buf, ",\"unsubscribe\":{{\"code\":{code},\"reason\":");
    write_json_str(&mut buf, reason);
    buf.extend_from_slice(b"}}}");
    buf.into()
}

/// Encodes a `subscribe` push: the server subscribed the client to `channel` (server-side
/// subscription).
pub fn encode_subscribe_push(channel: &str) -> Bytes {
    let mut buf = Vec::with_capacity(48 + channel.len());
    write_push_head(&mut buf, ChannelRef::Name(channel));
    buf.extend_from_slice(b",\"subscribe\":{}}}");
    buf.into()
}

/// Encodes a `message` push (asynchronous data to one client, outside channels).
pub fn encode_message_push(data: &RawValue) -> Bytes {
    let mut buf = Vec::with_capacity(32 + data.get().len());
    buf.extend_from_slice(b"{\"push\":{\"message\":{\"data\":");
    buf.extend_from_slice(data.get().as_bytes());
    buf.extend_from_slice(b"}}}");
    buf.into()
}

/// Encodes a `disconnect` push, used by one-way and emulated transports where no close frame
/// exists.
pub fn encode_disconnect_push(code: DisconnectCode) -> Bytes {
    let mut buf = Vec::with_capacity(96);
    let _ = write!(
        buf,
        "{{\"push\":{{\"disconnect\":{{\"code\":{},\"reason\":",
        code.code
    );
    write_json_str(&mut buf, code.reason);
    let _ = write!(buf, ",\"reconnect\":{}}}}}}}", code.reconnect());
    buf.into()
}

/// Encodes a successful reply `{"id":..,"<method>":{..}}`.
pub fn encode_reply(id: u32, result: &ReplyResult) -> Bytes {
    let mut buf = Vec::with_capacity(64);
    buf.extend_from_slice(b"{\"id\":");
    buf.extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
    buf.push(b',');
    // `ReplyResult` serialises as `{"<method>":{..}}`; splice its body after the id.
    let start = buf.len();
    write_json(&mut buf, result);
    buf.remove(start);
    buf.into()
}

/// Encodes an error reply `{"id":..,"error":{"code":..,"message":".."}}`.
pub fn encode_error_reply(id: u32, error: ErrorCode) -> Bytes {
    encode_custom_error_reply(id, error.code, error.message, error.temporary)
}

/// Encodes an error reply with a custom code and message (for example from a proxy).
pub fn encode_custom_error_reply(id: u32, code: u32, message: &str, temporary: bool) -> Bytes {
    let mut buf = Vec::with_capacity(64 + message.len());
    let _ = write!(
        buf,
        "{{\"id\":{id},\"error\":{{\"code\":{code},\"message\":"
    );
    write_json_str(&mut buf, message);
    if temporary {
        buf.extend_from_slice(b",\"temporary\":true");
    }
    buf.extend_from_slice(b"}}");
    buf.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply::{ConnectResult, SubscribeResult};

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    fn parse(b: &Bytes) -> serde_json::Value {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn client_info_round_trips_with_info_verbatim() {
        let info = ClientInfo {
            user: "u".into(),
            client: "c".into(),
            conn_info: Some(raw(r#"{"z":1,"a":2.50}"#)),
            chan_info: None,
        };
        let text = serde_json::to_string(&info).unwrap();
        let back: ClientInfo = serde_json::from_str(&text).unwrap();
        assert_eq!(back.user, "u");
        assert_eq!(back.client, "c");
        assert_eq!(back.conn_info.unwrap().get(), r#"{"z":1,"a":2.50}"#);
        assert!(back.chan_info.is_none());
        let minimal: ClientInfo = serde_json::from_str(r#"{"client":"x"}"#).unwrap();
        assert_eq!((minimal.user.as_str(), minimal.client.as_str()), ("", "x"));
    }

    #[test]
    fn publication_push_shape() {
        let p = Publication {
            data: raw(r#"{"text":"hi \"there\""}"#),
            info: None,
            offset: 5,
            tags: HashMap::new(),
        };
        let b = encode_publication_push("chat:\"x\"", &p);
        let v = parse(&b);
        assert_eq!(v["push"]["channel"], "chat:\"x\"");
        assert_eq!(v["push"]["pub"]["data"]["text"], "hi \"there\"");
        assert_eq!(v["push"]["pub"]["offset"], 5);
    }

    #[test]
    fn reply_shapes() {
        let mut r = ConnectResult::new("c1".into());
        r.ping = 25;
        r.pong = true;
        let v = parse(&encode_reply(1, &ReplyResult::Connect(r)));
        assert_eq!(v["id"], 1);
        assert_eq!(v["connect"]["client"], "c1");
        assert_eq!(v["connect"]["ping"], 25);
        assert_eq!(v["connect"]["pong"], true);
        let v = parse(&encode_reply(
            9,
            &ReplyResult::Subscribe(SubscribeResult::default()),
        ));
        assert_eq!(v, serde_json::json!({"id": 9, "subscribe": {}}));
        let v = parse(&encode_reply(2, &ReplyResult::publish()));
        assert_eq!(v, serde_json::json!({"id": 2, "publish": {}}));
    }

    #[test]
    fn error_and_disconnect_shapes() {
        let v = parse(&encode_error_reply(4, ErrorCode::PERMISSION_DENIED));
        assert_eq!(
            v,
            serde_json::json!({"id":4,"error":{"code":103,"message":"permission denied"}})
        );
        let v = parse(&encode_error_reply(4, ErrorCode::INTERNAL));
        assert_eq!(v["error"]["temporary"], true);
        let v = parse(&encode_disconnect_push(DisconnectCode::SHUTDOWN));
        assert_eq!(
            v,
            serde_json::json!({"push":{"disconnect":{"code":3001,"reason":"shutdown","reconnect":true}}})
        );
    }

    #[test]
    fn join_leave_unsubscribe_message() {
        let info = ClientInfo {
            user: "u".into(),
            client: "c".into(),
            conn_info: Some(raw("{\"n\":1}")),
            chan_info: None,
        };
        let v = parse(&encode_join_push("a", &info));
        assert_eq!(v["push"]["join"]["info"]["conn_info"]["n"], 1);
        let v = parse(&encode_leave_push("a", &info));
        assert_eq!(v["push"]["leave"]["info"]["user"], "u");
        let v = parse(&encode_unsubscribe_push("a", 2000, "server unsubscribe"));
        assert_eq!(v["push"]["unsubscribe"]["code"], 2000);
        let v = parse(&encode_subscribe_push("a"));
        assert_eq!(
            v,
            serde_json::json!({"push":{"channel":"a","subscribe":{}}})
        );
        let v = parse(&encode_message_push(&raw("[1]")));
        assert_eq!(v["push"]["message"]["data"][0], 1);
    }
}
