//! Client-side wire types: what the client sends (commands) and receives (replies, pushes,
//! pings), in the JSON form of the Centrifugo client protocol v2.
//!
//! `switchboard-proto` holds the server's view (commands deserialise, results serialise); the
//! client needs the opposite directions, so it keeps its own small types here. Incoming lines are
//! parsed borrowing from the frame: payloads (`data`, `conn_info`, results) stay slices of the
//! received [`Bytes`], not copies.

use std::collections::HashMap;
use std::io::Write as _;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::subscription::{ClientInfo, Publication};

/// The pong: an empty command without id.
pub(crate) const PONG: &[u8] = b"{}";

/// The lines of one text frame (newline-delimited JSON), blank lines skipped.
pub(crate) fn lines(frame: &Bytes) -> impl Iterator<Item = Bytes> + '_ {
    frame
        .split(|&b| b == b'\n')
        .filter(|l| !l.trim_ascii().is_empty())
        .map(|l| slice_of(frame, l.trim_ascii()))
}

/// `part` as a zero-copy slice of `whole` when it points into it, a copy otherwise.
pub(crate) fn slice_of(whole: &Bytes, part: &[u8]) -> Bytes {
    let base = whole.as_ptr() as usize;
    let p = part.as_ptr() as usize;
    if part.is_empty() {
        Bytes::new()
    } else if p >= base && p + part.len() <= base + whole.len() {
        whole.slice_ref(part)
    } else {
        Bytes::copy_from_slice(part)
    }
}

/// A raw JSON value as a slice of the line it was parsed from.
pub(crate) fn raw_bytes(line: &Bytes, raw: &RawValue) -> Bytes {
    slice_of(line, raw.get().as_bytes())
}

/// One line from the server, classified.
#[derive(Debug)]
pub(crate) enum Incoming<'a> {
    /// `{}`: the server's ping.
    Ping,
    /// A reply to the command with `id`: its result object (the value of the method field;
    /// `None` when the reply carries none) or the error.
    Reply {
        id: u32,
        result: Result<Option<&'a RawValue>, WireError>,
    },
    /// A push (no id).
    Push(Box<WirePush<'a>>),
}

/// Parses one line (one JSON object).
pub(crate) fn parse_line(line: &[u8]) -> Result<Incoming<'_>, serde_json::Error> {
    let m: WireMessage<'_> = serde_json::from_slice(line)?;
    if let Some(push) = m.push {
        return Ok(Incoming::Push(Box::new(push)));
    }
    if let Some(e) = m.error {
        return Ok(Incoming::Reply {
            id: m.id,
            result: Err(e),
        });
    }
    let result = [
        m.connect,
        m.subscribe,
        m.unsubscribe,
        m.publish,
        m.presence,
        m.presence_stats,
        m.history,
        m.ping,
        m.rpc,
        m.refresh,
        m.sub_refresh,
    ]
    .into_iter()
    .flatten()
    .next();
    if m.id == 0 && result.is_none() {
        return Ok(Incoming::Ping);
    }
    Ok(Incoming::Reply {
        id: m.id,
        result: Ok(result),
    })
}

/// Any message from the server: a reply (id > 0), a push or a ping (`{}`).
#[derive(Debug, Deserialize)]
struct WireMessage<'a> {
    #[serde(default)]
    id: u32,
    error: Option<WireError>,
    #[serde(borrow)]
    push: Option<WirePush<'a>>,
    #[serde(borrow)]
    connect: Option<&'a RawValue>,
    #[serde(borrow)]
    subscribe: Option<&'a RawValue>,
    #[serde(borrow)]
    unsubscribe: Option<&'a RawValue>,
    #[serde(borrow)]
    publish: Option<&'a RawValue>,
    #[serde(borrow)]
    presence: Option<&'a RawValue>,
    #[serde(borrow)]
    presence_stats: Option<&'a RawValue>,
    #[serde(borrow)]
    history: Option<&'a RawValue>,
    #[serde(borrow)]
    ping: Option<&'a RawValue>,
    #[serde(borrow)]
    rpc: Option<&'a RawValue>,
    #[serde(borrow)]
    refresh: Option<&'a RawValue>,
    #[serde(borrow)]
    sub_refresh: Option<&'a RawValue>,
}

/// `error` of a reply.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub(crate) struct WireError {
    #[serde(default)]
    pub(crate) code: u32,
    #[serde(default)]
    pub(crate) message: String,
    #[serde(default)]
    pub(crate) temporary: bool,
}

/// `push`: exactly one of the kind fields is set. Kinds the client does not know (server-side
/// `subscribe`, `connect`, `refresh`) leave them all unset.
#[derive(Debug, Deserialize)]
pub(crate) struct WirePush<'a> {
    #[serde(default)]
    pub(crate) channel: String,
    #[serde(rename = "pub", borrow)]
    pub(crate) publication: Option<WirePublication<'a>>,
    #[serde(borrow)]
    pub(crate) join: Option<WireInfoPush<'a>>,
    #[serde(borrow)]
    pub(crate) leave: Option<WireInfoPush<'a>>,
    pub(crate) unsubscribe: Option<WireUnsubscribe>,
    #[serde(borrow)]
    pub(crate) message: Option<WireMessagePush<'a>>,
    pub(crate) disconnect: Option<WireDisconnect>,
}

/// A publication as it travels.
#[derive(Debug, Deserialize)]
pub(crate) struct WirePublication<'a> {
    #[serde(borrow)]
    pub(crate) data: Option<&'a RawValue>,
    #[serde(default)]
    pub(crate) offset: u64,
    #[serde(borrow)]
    pub(crate) info: Option<WireClientInfo<'a>>,
    #[serde(default)]
    pub(crate) tags: HashMap<String, String>,
}

impl WirePublication<'_> {
    pub(crate) fn to_public(&self, line: &Bytes) -> Publication {
        Publication {
            data: self
                .data
                .map_or_else(|| Bytes::from_static(b"null"), |d| raw_bytes(line, d)),
            offset: self.offset,
            info: self.info.as_ref().map(|i| i.to_public(line)),
            tags: self.tags.clone(),
        }
    }
}

/// Who published, joined or left.
#[derive(Debug, Deserialize)]
pub(crate) struct WireClientInfo<'a> {
    #[serde(default)]
    pub(crate) user: String,
    #[serde(default)]
    pub(crate) client: String,
    #[serde(borrow)]
    pub(crate) conn_info: Option<&'a RawValue>,
    #[serde(borrow)]
    pub(crate) chan_info: Option<&'a RawValue>,
}

impl WireClientInfo<'_> {
    pub(crate) fn to_public(&self, line: &Bytes) -> ClientInfo {
        ClientInfo {
            user: self.user.clone(),
            client: self.client.clone(),
            conn_info: self.conn_info.map(|r| raw_bytes(line, r)),
            chan_info: self.chan_info.map(|r| raw_bytes(line, r)),
        }
    }
}

/// `join` / `leave` push body.
#[derive(Debug, Deserialize)]
pub(crate) struct WireInfoPush<'a> {
    #[serde(borrow)]
    pub(crate) info: WireClientInfo<'a>,
}

/// `unsubscribe` push body.
#[derive(Debug, Deserialize)]
pub(crate) struct WireUnsubscribe {
    #[serde(default)]
    pub(crate) code: u32,
    #[serde(default)]
    pub(crate) reason: String,
}

/// `message` push body.
#[derive(Debug, Deserialize)]
pub(crate) struct WireMessagePush<'a> {
    #[serde(borrow)]
    pub(crate) data: Option<&'a RawValue>,
}

/// `disconnect` push body.
#[derive(Debug, Deserialize)]
pub(crate) struct WireDisconnect {
    #[serde(default)]
    pub(crate) code: u32,
    #[serde(default)]
    pub(crate) reason: String,
    #[serde(default)]
    pub(crate) reconnect: bool,
}

/// Result of `connect`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct WireConnectResult {
    #[serde(default)]
    pub(crate) client: String,
    /// Seconds between server pings; 0: no pings.
    #[serde(default)]
    pub(crate) ping: u32,
    /// Whether pings must be answered.
    #[serde(default)]
    pub(crate) pong: bool,
}

/// Result of `subscribe`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct WireSubscribeResult<'a> {
    #[serde(default)]
    pub(crate) recoverable: bool,
    #[serde(default)]
    pub(crate) epoch: String,
    #[serde(default)]
    pub(crate) offset: u64,
    #[serde(default)]
    pub(crate) recovered: bool,
    #[serde(default)]
    pub(crate) was_recovering: bool,
    #[serde(default, borrow)]
    pub(crate) publications: Vec<WirePublication<'a>>,
}

/// Result of `history`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct WireHistoryResult<'a> {
    #[serde(default, borrow)]
    pub(crate) publications: Vec<WirePublication<'a>>,
    #[serde(default)]
    pub(crate) epoch: String,
    #[serde(default)]
    pub(crate) offset: u64,
}

/// Result of `presence`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct WirePresenceResult<'a> {
    #[serde(default, borrow)]
    pub(crate) presence: HashMap<String, WireClientInfo<'a>>,
}

/// Result of `rpc`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct WireRpcResult<'a> {
    #[serde(borrow)]
    pub(crate) data: Option<&'a RawValue>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// `connect` request.
#[derive(Debug, Serialize)]
pub(crate) struct ConnectRequest<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    pub(crate) token: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub(crate) name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub(crate) version: &'a str,
}

/// `subscribe` request.
#[derive(Debug, Serialize)]
pub(crate) struct SubscribeRequest<'a> {
    pub(crate) channel: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub(crate) token: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "is_false")]
    pub(crate) recover: bool,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub(crate) epoch: &'a str,
    #[serde(skip_serializing_if = "is_zero")]
    pub(crate) offset: u64,
    #[serde(skip_serializing_if = "is_false")]
    pub(crate) positioned: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub(crate) recoverable: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub(crate) join_leave: bool,
}

/// Encodes `{"id":<id>,"<method>":<params>}`; `params` is a JSON object. An `id` of 0 is left
/// out (the `send` command carries none).
pub(crate) fn encode_command(id: u32, method: &str, params: &str) -> Bytes {
    let mut buf = Vec::with_capacity(24 + method.len() + params.len());
    buf.push(b'{');
    if id != 0 {
        // Writing into a Vec cannot fail.
        let _ = write!(buf, "\"id\":{id},");
    }
    write_json(&mut buf, method);
    buf.push(b':');
    buf.extend_from_slice(params.as_bytes());
    buf.push(b'}');
    buf.into()
}

/// Serialises `value` into `buf`.
fn write_json<T: Serialize + ?Sized>(buf: &mut Vec<u8>, value: &T) {
    // A str (or our request structs: no maps with non-string keys) always serialises.
    let _ = serde_json::to_writer(&mut *buf, value);
}

/// Serialises a request's parameters.
pub(crate) fn to_params<T: Serialize + ?Sized>(value: &T) -> String {
    let mut buf = Vec::with_capacity(64);
    write_json(&mut buf, value);
    // serde_json writes UTF-8 only.
    String::from_utf8(buf).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn batched_frame_splits_into_lines() {
        let f = frame(
            "{\"id\":1,\"connect\":{\"client\":\"c1\",\"ping\":25,\"pong\":true}}\n\
             {}\n\n{\"push\":{\"channel\":\"a\",\"pub\":{\"data\":{\"x\":1},\"offset\":3}}}\n",
        );
        let ls: Vec<Bytes> = lines(&f).collect();
        assert_eq!(ls.len(), 3);
        // Lines are slices of the frame, not copies.
        assert!(ls.iter().all(|l| {
            let p = l.as_ptr() as usize;
            p >= f.as_ptr() as usize && p + l.len() <= f.as_ptr() as usize + f.len()
        }));
        match parse_line(&ls[0]).unwrap() {
            Incoming::Reply { id, result } => {
                assert_eq!(id, 1);
                let r: WireConnectResult =
                    serde_json::from_str(result.unwrap().unwrap().get()).unwrap();
                assert_eq!(r.client, "c1");
                assert_eq!(r.ping, 25);
                assert!(r.pong);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse_line(&ls[1]).unwrap(), Incoming::Ping));
        match parse_line(&ls[2]).unwrap() {
            Incoming::Push(p) => {
                assert_eq!(p.channel, "a");
                let publ = p.publication.as_ref().unwrap().to_public(&ls[2]);
                assert_eq!(&publ.data[..], b"{\"x\":1}");
                assert_eq!(publ.offset, 3);
                assert_eq!(publ.json::<serde_json::Value>().unwrap()["x"], 1);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ping_detection() {
        assert!(matches!(parse_line(b"{}").unwrap(), Incoming::Ping));
        assert!(matches!(parse_line(b" { } ").unwrap(), Incoming::Ping));
        // An empty result is still a reply, not a ping.
        assert!(matches!(
            parse_line(b"{\"id\":2,\"publish\":{}}").unwrap(),
            Incoming::Reply {
                id: 2,
                result: Ok(Some(_))
            }
        ));
        // A reply without a result field.
        assert!(matches!(
            parse_line(b"{\"id\":3}").unwrap(),
            Incoming::Reply {
                id: 3,
                result: Ok(None)
            }
        ));
        assert!(parse_line(b"{oops").is_err());
        assert!(parse_line(b"[]").is_err());
    }

    #[test]
    fn error_reply() {
        match parse_line(
            b"{\"id\":4,\"error\":{\"code\":100,\"message\":\"internal\",\"temporary\":true}}",
        )
        .unwrap()
        {
            Incoming::Reply { id, result } => {
                assert_eq!(id, 4);
                assert_eq!(
                    result.unwrap_err(),
                    WireError {
                        code: 100,
                        message: "internal".into(),
                        temporary: true
                    }
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn push_kinds() {
        let line = frame(
            r#"{"push":{"channel":"c","join":{"info":{"user":"u","client":"k","conn_info":{"n":1}}}}}"#,
        );
        let Incoming::Push(p) = parse_line(&line).unwrap() else {
            panic!()
        };
        let info = p.join.as_ref().unwrap().info.to_public(&line);
        assert_eq!((info.user.as_str(), info.client.as_str()), ("u", "k"));
        assert_eq!(&info.conn_info.unwrap()[..], b"{\"n\":1}");

        let Incoming::Push(p) =
            parse_line(br#"{"push":{"channel":"c","leave":{"info":{"client":"k"}}}}"#).unwrap()
        else {
            panic!()
        };
        assert!(p.leave.is_some() && p.join.is_none());

        let Incoming::Push(p) = parse_line(
            br#"{"push":{"channel":"c","unsubscribe":{"code":2500,"reason":"resubscribe"}}}"#,
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(p.unsubscribe.as_ref().unwrap().code, 2500);

        let Incoming::Push(p) = parse_line(
            br#"{"push":{"disconnect":{"code":3001,"reason":"shutdown","reconnect":true}}}"#,
        )
        .unwrap() else {
            panic!()
        };
        let d = p.disconnect.unwrap();
        assert_eq!(
            (d.code, d.reason.as_str(), d.reconnect),
            (3001, "shutdown", true)
        );

        let Incoming::Push(p) = parse_line(br#"{"push":{"message":{"data":[1,2]}}}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(p.message.unwrap().data.unwrap().get(), "[1,2]");

        // Unknown push kinds parse, with every known kind unset.
        let Incoming::Push(p) =
            parse_line(br#"{"push":{"channel":"s","subscribe":{"recoverable":true}}}"#).unwrap()
        else {
            panic!()
        };
        assert!(p.publication.is_none() && p.join.is_none() && p.disconnect.is_none());
    }

    #[test]
    fn escaped_strings_parse() {
        let line = frame(r#"{"push":{"channel":"chat:\"x\"","pub":{"data":"a\nb"}}}"#);
        let Incoming::Push(p) = parse_line(&line).unwrap() else {
            panic!()
        };
        assert_eq!(p.channel, "chat:\"x\"");
        let publ = p.publication.as_ref().unwrap().to_public(&line);
        assert_eq!(publ.json::<String>().unwrap(), "a\nb");
    }

    #[test]
    fn subscribe_result_with_recovered_publications() {
        let raw = br#"{"recoverable":true,"epoch":"e1","offset":7,"recovered":true,"was_recovering":true,"publications":[{"data":1,"offset":6},{"data":2,"offset":7}]}"#;
        let r: WireSubscribeResult<'_> = serde_json::from_slice(raw).unwrap();
        assert!(r.recoverable && r.recovered && r.was_recovering);
        assert_eq!(r.epoch, "e1");
        assert_eq!(r.offset, 7);
        assert_eq!(r.publications.len(), 2);
        assert_eq!(r.publications[1].offset, 7);
    }

    #[test]
    fn commands_encode() {
        let params = to_params(&SubscribeRequest {
            channel: "news",
            token: "",
            data: None,
            recover: true,
            epoch: "e",
            offset: 5,
            positioned: false,
            recoverable: true,
            join_leave: false,
        });
        let cmd = encode_command(3, "subscribe", &params);
        let v: serde_json::Value = serde_json::from_slice(&cmd).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id":3,"subscribe":{"channel":"news","recover":true,"epoch":"e","offset":5,"recoverable":true}})
        );
        let cmd = encode_command(0, "send", "{\"data\":1}");
        assert_eq!(&cmd[..], b"{\"send\":{\"data\":1}}");
        // The server's decoder accepts what we send.
        let cmds = switchboard_proto::decode_commands(&cmd).unwrap();
        assert!(matches!(
            cmds[0].method(),
            Ok(switchboard_proto::Method::Send(_))
        ));
        let connect = encode_command(
            1,
            "connect",
            &to_params(&ConnectRequest {
                token: "t",
                data: None,
                name: "rust",
                version: "",
            }),
        );
        let cmds = switchboard_proto::decode_commands(&connect).unwrap();
        match cmds[0].method() {
            Ok(switchboard_proto::Method::Connect(c)) => {
                assert_eq!(c.token, "t");
                assert_eq!(c.name, "rust");
            }
            other => panic!("{other:?}"),
        }
    }
}
