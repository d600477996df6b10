//! Names and payloads on the wire: subject tokens for channel names, and the JSON bodies of
//! pub/sub messages, stored publications, stream meta, presence and idempotency entries.
//!
//! `ClientInfo` travels in its own serialisation and decodes itself; `switchboard_proto`'s
//! `Publication` only serialises, so decoding it goes through the mirror type here (same field
//! names).

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use switchboard_hub::MemoryBroker;
use switchboard_proto::{ClientInfo, Publication, StreamPosition};

/// A channel name (or client id, or idempotency key) as one subject token / key-value key
/// segment: unpadded base64url, which uses only `A-Z a-z 0-9 - _`. The empty string, which
/// base64 would encode as nothing, becomes `_` (a one-character base64 string never occurs).
pub(crate) fn token(name: &str) -> String {
    if name.is_empty() {
        "_".into()
    } else {
        URL_SAFE_NO_PAD.encode(name)
    }
}

/// Milliseconds since the Unix epoch (wall clock: expiry stamps are compared across nodes, so
/// nodes need roughly synchronised clocks).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A duration in milliseconds (saturating), for expiry stamps.
pub(crate) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Kind bytes that start a pub/sub message.
pub(crate) const KIND_PUBLICATION: u8 = b'p';
pub(crate) const KIND_JOIN: u8 = b'j';
pub(crate) const KIND_LEAVE: u8 = b'l';

/// A publication on its way between nodes, with its stream's epoch (for gap detection).
#[derive(Serialize)]
struct PublicationOut<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    e: &'a str,
    p: &'a Publication,
}

#[derive(Deserialize)]
struct PublicationIn {
    #[serde(default)]
    e: String,
    p: WirePublication,
}

/// Encodes a pub/sub publication message.
pub(crate) fn encode_publication(epoch: &str, publication: &Publication) -> Vec<u8> {
    let mut out = vec![KIND_PUBLICATION];
    // Plain data with string keys and raw JSON values: serialising cannot fail.
    serde_json::to_writer(
        &mut out,
        &PublicationOut {
            e: epoch,
            p: publication,
        },
    )
    .expect("publications serialise");
    out
}

/// Encodes a join or leave message.
pub(crate) fn encode_presence_event(kind: u8, info: &ClientInfo) -> Vec<u8> {
    let mut out = vec![kind];
    serde_json::to_writer(&mut out, info).expect("client info serialises");
    out
}

/// A decoded pub/sub message.
pub(crate) enum Incoming {
    /// A publication and its stream's epoch (empty without history).
    Publication(String, Publication),
    /// A join.
    Join(ClientInfo),
    /// A leave.
    Leave(ClientInfo),
}

/// Decodes a pub/sub message; `None` for anything malformed.
pub(crate) fn decode_incoming(payload: &[u8]) -> Option<Incoming> {
    let (&kind, body) = payload.split_first()?;
    match kind {
        KIND_PUBLICATION => {
            let m: PublicationIn = serde_json::from_slice(body).ok()?;
            Some(Incoming::Publication(m.e, m.p.into()))
        }
        KIND_JOIN => Some(Incoming::Join(serde_json::from_slice(body).ok()?)),
        KIND_LEAVE => Some(Incoming::Leave(serde_json::from_slice(body).ok()?)),
        _ => None,
    }
}

#[derive(Deserialize)]
struct WirePublication {
    data: Box<RawValue>,
    #[serde(default)]
    info: Option<ClientInfo>,
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    tags: HashMap<String, String>,
}

impl From<WirePublication> for Publication {
    fn from(p: WirePublication) -> Self {
        Publication {
            data: p.data,
            info: p.info,
            offset: p.offset,
            tags: p.tags,
        }
    }
}

/// A publication in the history stream: its epoch, its expiry (ms since the Unix epoch) and
/// itself (with its offset).
#[derive(Serialize)]
struct StoredOut<'a> {
    e: &'a str,
    x: u64,
    p: &'a Publication,
}

#[derive(Deserialize)]
struct StoredIn {
    e: String,
    x: u64,
    p: WirePublication,
}

/// Encodes a publication for the history stream.
pub(crate) fn encode_stored(epoch: &str, expires_ms: u64, publication: &Publication) -> Vec<u8> {
    serde_json::to_vec(&StoredOut {
        e: epoch,
        x: expires_ms,
        p: publication,
    })
    .expect("publications serialise")
}

/// Decodes a stored publication: `(epoch, expires_ms, publication)`.
pub(crate) fn decode_stored(payload: &[u8]) -> Option<(String, u64, Publication)> {
    let s: StoredIn = serde_json::from_slice(payload).ok()?;
    Some((s.e, s.x, s.p.into()))
}

/// A channel's stream meta in the meta bucket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Meta {
    /// The stream's epoch.
    pub(crate) epoch: String,
    /// The last offset given out.
    pub(crate) top: u64,
    /// When the stream position expires (ms since the Unix epoch).
    pub(crate) expires: u64,
    /// The history size of the last publication: reads return only offsets above
    /// `top - size`, whatever the lazily trimmed stream still holds.
    #[serde(default)]
    pub(crate) size: u64,
    /// Offsets given out whose append may still be under way: readers do not report a
    /// position that includes one of them before it is readable (see `history`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) pending: Vec<Pending>,
}

/// An offset given out and the time (ms since the Unix epoch) by which its publisher has
/// either appended it or given up.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Pending {
    /// The offset.
    pub(crate) o: u64,
    /// Its deadline.
    pub(crate) d: u64,
}

impl Meta {
    /// A new stream with a fresh epoch.
    pub(crate) fn fresh(now: u64, ttl_ms: u64) -> Self {
        Self {
            epoch: MemoryBroker::new_epoch(),
            top: 0,
            expires: now.saturating_add(ttl_ms),
            size: 0,
            pending: Vec::new(),
        }
    }

    pub(crate) fn position(&self) -> StreamPosition {
        StreamPosition {
            offset: self.top,
            epoch: self.epoch.clone(),
        }
    }
}

/// A presence entry: the client and when the entry expires.
#[derive(Serialize)]
struct PresenceOut<'a> {
    x: u64,
    i: &'a ClientInfo,
}

#[derive(Deserialize)]
struct PresenceIn {
    x: u64,
    i: ClientInfo,
}

pub(crate) fn encode_presence(expires_ms: u64, info: &ClientInfo) -> Vec<u8> {
    serde_json::to_vec(&PresenceOut {
        x: expires_ms,
        i: info,
    })
    .expect("client info serialises")
}

pub(crate) fn decode_presence(payload: &[u8]) -> Option<(u64, ClientInfo)> {
    let p: PresenceIn = serde_json::from_slice(payload).ok()?;
    Some((p.x, p.i))
}

/// An idempotency entry: claimed by a publisher (no position yet), done (the result), or
/// unsettled (an attempt whose append outcome is unknown).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Idempotency {
    /// Expiry (ms since the Unix epoch) of the claim, of the result or of the unsettled attempt.
    pub(crate) x: u64,
    /// The result, once published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) r: Option<StreamPosition>,
    /// An earlier attempt whose append was sent without an answer: a retry settles it at the
    /// same offset instead of publishing again (see `idempotency`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) u: Option<Unsettled>,
}

/// A publish attempt with an unknown outcome: the epoch and offset its append was sent with, the
/// offset's pending deadline, and until when a retry is working on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Unsettled {
    /// The epoch of the attempt.
    pub(crate) e: String,
    /// Its offset.
    pub(crate) o: u64,
    /// The offset's pending deadline (ms since the Unix epoch): until then readers wait for it,
    /// so the offset may still be stored; after it, readers count it as a hole.
    pub(crate) d: u64,
    /// Until when a retry holds it (ms since the Unix epoch; 0: nobody).
    #[serde(default)]
    pub(crate) b: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publication() -> Publication {
        Publication {
            data: RawValue::from_string("{\"a\":[1,2]}".into()).unwrap(),
            info: Some(ClientInfo {
                user: "u".into(),
                client: "c".into(),
                conn_info: Some(RawValue::from_string("\"x\"".into()).unwrap()),
                chan_info: None,
            }),
            offset: 7,
            tags: HashMap::from([("k".to_string(), "v".to_string())]),
        }
    }

    #[test]
    fn tokens_are_subject_and_key_safe() {
        for name in ["", "a", "ns:chan.with.dots", "*", ">", "a b", "ü#user,2"] {
            let t = token(name);
            assert!(!t.is_empty());
            assert!(t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        }
        assert_ne!(token(""), token("_"));
        assert_ne!(token("a.b"), token("a_b"));
    }

    #[test]
    fn publications_round_trip() {
        let p = publication();
        let Some(Incoming::Publication(epoch, back)) =
            decode_incoming(&encode_publication("ep", &p))
        else {
            panic!("not a publication");
        };
        assert_eq!(epoch, "ep");
        assert_eq!(
            serde_json::to_string(&back).unwrap(),
            serde_json::to_string(&p).unwrap()
        );
        let (e, x, back) = decode_stored(&encode_stored("ep", 42, &p)).unwrap();
        assert_eq!((e.as_str(), x), ("ep", 42));
        assert_eq!(
            serde_json::to_string(&back).unwrap(),
            serde_json::to_string(&p).unwrap()
        );
    }

    #[test]
    fn joins_leaves_and_presence_round_trip() {
        let info = publication().info.unwrap();
        let Some(Incoming::Join(j)) = decode_incoming(&encode_presence_event(KIND_JOIN, &info))
        else {
            panic!("not a join");
        };
        assert_eq!(j.client, "c");
        assert!(matches!(
            decode_incoming(&encode_presence_event(KIND_LEAVE, &info)),
            Some(Incoming::Leave(_))
        ));
        let (x, back) = decode_presence(&encode_presence(9, &info)).unwrap();
        assert_eq!((x, back.user.as_str()), (9, "u"));
        assert!(decode_incoming(b"").is_none());
        assert!(decode_incoming(b"x{}").is_none());
    }

    /// Client info travels in `ClientInfo`'s own field names, as before it decoded itself:
    /// what this node sends and stores is unchanged, and what older (or newer) nodes send and
    /// stored still decodes, missing and unknown fields included.
    #[test]
    fn client_info_wire_format_is_unchanged() {
        let info = publication().info.unwrap();
        assert_eq!(
            encode_presence_event(KIND_JOIN, &info),
            br#"j{"user":"u","client":"c","conn_info":"x"}"#
        );
        assert_eq!(
            encode_presence(9, &info),
            br#"{"x":9,"i":{"user":"u","client":"c","conn_info":"x"}}"#
        );
        let Some(Incoming::Leave(old)) =
            decode_incoming(br#"l{"client":"c","chan_info":{"a":1},"later":true}"#)
        else {
            panic!("not a leave");
        };
        assert_eq!((old.user.as_str(), old.client.as_str()), ("", "c"));
        assert_eq!(old.chan_info.unwrap().get(), r#"{"a":1}"#);
        let (_, info) = decode_presence(br#"{"x":1,"i":{"user":"u","client":"c"}}"#).unwrap();
        assert!(info.conn_info.is_none() && info.chan_info.is_none());
        let (_, _, p) = decode_stored(
            br#"{"e":"ep","x":5,"p":{"data":1,"info":{"user":"u","client":"c","conn_info":null},"offset":3}}"#,
        )
        .unwrap();
        let info = p.info.unwrap();
        assert_eq!((info.user.as_str(), p.offset), ("u", 3));
        assert!(info.conn_info.is_none());
    }
}
