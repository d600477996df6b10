//! How publications, joins and leaves travel between nodes and sit in history.
//!
//! A publication is one JSON object with short keys: `{"o":OFFSET,"d":DATA,"i":INFO,"t":TAGS}`.
//! `d` is the publisher's JSON copied verbatim (and read back as a [`RawValue`], never parsed
//! into a tree); `i` and `t` are left out when empty; `o` is added by the publish script, which
//! alone knows the offset, by splicing `{"o":N,` in front of the rest, and is absent for channels
//! without history. History entries hold exactly this object.
//!
//! On a channel's pub/sub topic each message starts with one byte saying what follows:
//! `p` a publication, `j` a join, `l` a leave (the latter two followed by the client info as
//! JSON, in the field names of [`ClientInfo`]'s serialisation).

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::value::RawValue;
use switchboard_proto::{ClientInfo, Publication};

/// Marks a publication on a channel topic.
pub(crate) const PUBLICATION: u8 = b'p';
/// Marks a join on a channel topic.
pub(crate) const JOIN: u8 = b'j';
/// Marks a leave on a channel topic.
pub(crate) const LEAVE: u8 = b'l';

/// A message read from a channel topic.
#[derive(Debug)]
pub(crate) enum TopicMessage {
    Publication(Publication),
    Join(ClientInfo),
    Leave(ClientInfo),
}

/// Decoding failed: the message did not come from a compatible node.
#[derive(Debug, thiserror::Error)]
#[error("malformed broker message: {0}")]
pub(crate) struct DecodeError(String);

#[derive(Deserialize)]
struct WirePublication {
    #[serde(default)]
    o: u64,
    d: Box<RawValue>,
    #[serde(default)]
    i: Option<ClientInfo>,
    #[serde(default)]
    t: HashMap<String, String>,
}

/// `publication` without its offset: `{"d":..,"i":..,"t":..}`, prefixed by `kind` when given.
pub(crate) fn encode_publication(publication: &Publication, kind: Option<u8>) -> Vec<u8> {
    let data = publication.data.get();
    let mut out = Vec::with_capacity(data.len() + 16);
    if let Some(kind) = kind {
        out.push(kind);
    }
    out.extend_from_slice(b"{\"d\":");
    out.extend_from_slice(data.as_bytes());
    if let Some(info) = &publication.info {
        out.extend_from_slice(b",\"i\":");
        write_json(&mut out, info);
    }
    if !publication.tags.is_empty() {
        out.extend_from_slice(b",\"t\":");
        write_json(&mut out, &publication.tags);
    }
    out.push(b'}');
    out
}

/// A join or leave message: `kind` then the client info.
pub(crate) fn encode_info(kind: u8, info: &ClientInfo) -> Vec<u8> {
    let mut out = vec![kind];
    write_json(&mut out, info);
    out
}

fn write_json<T: serde::Serialize>(out: &mut Vec<u8>, value: &T) {
    // Strings, maps with string keys and raw JSON: serialising into a Vec cannot fail.
    serde_json::to_writer(out, value).expect("serialising plain data into a Vec cannot fail");
}

/// Decodes a publication as published (without the kind byte) or read from history.
pub(crate) fn decode_publication(bytes: &[u8]) -> Result<Publication, DecodeError> {
    let w: WirePublication =
        serde_json::from_slice(bytes).map_err(|e| DecodeError(e.to_string()))?;
    Ok(Publication {
        data: w.d,
        info: w.i,
        offset: w.o,
        tags: w.t,
    })
}

/// Decodes a message from a channel topic.
pub(crate) fn decode_topic_message(bytes: &[u8]) -> Result<TopicMessage, DecodeError> {
    let Some((kind, rest)) = bytes.split_first() else {
        return Err(DecodeError("empty message".into()));
    };
    let info = |rest: &[u8]| {
        serde_json::from_slice::<ClientInfo>(rest).map_err(|e| DecodeError(e.to_string()))
    };
    match *kind {
        PUBLICATION => decode_publication(rest).map(TopicMessage::Publication),
        JOIN => info(rest).map(TopicMessage::Join),
        LEAVE => info(rest).map(TopicMessage::Leave),
        other => Err(DecodeError(format!("unknown message kind {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Publication {
        Publication {
            data: RawValue::from_string("{\"a\": [1, 2]}".into()).unwrap(),
            info: Some(ClientInfo {
                user: "u".into(),
                client: "c".into(),
                conn_info: Some(RawValue::from_string("{\"x\":1}".into()).unwrap()),
                chan_info: None,
            }),
            offset: 0,
            tags: HashMap::from([("k".to_string(), "v".to_string())]),
        }
    }

    #[test]
    fn publications_round_trip_with_data_verbatim() {
        let bytes = encode_publication(&sample(), Some(PUBLICATION));
        let TopicMessage::Publication(p) = decode_topic_message(&bytes).unwrap() else {
            panic!("not a publication");
        };
        assert_eq!(p.data.get(), "{\"a\": [1, 2]}");
        let info = p.info.unwrap();
        assert_eq!((info.user.as_str(), info.client.as_str()), ("u", "c"));
        assert_eq!(info.conn_info.unwrap().get(), "{\"x\":1}");
        assert_eq!(p.tags["k"], "v");
        assert_eq!(p.offset, 0);
    }

    #[test]
    fn the_scripts_offset_splice_decodes() {
        let body = encode_publication(&sample(), None);
        let mut spliced = b"{\"o\":42,".to_vec();
        spliced.extend_from_slice(&body[1..]);
        assert_eq!(decode_publication(&spliced).unwrap().offset, 42);
        let minimal = Publication {
            data: RawValue::from_string("1".into()).unwrap(),
            info: None,
            offset: 0,
            tags: HashMap::new(),
        };
        assert_eq!(encode_publication(&minimal, None), b"{\"d\":1}");
    }

    #[test]
    fn joins_leaves_and_garbage() {
        let info = ClientInfo {
            user: "u".into(),
            client: "c".into(),
            conn_info: None,
            chan_info: None,
        };
        assert!(matches!(
            decode_topic_message(&encode_info(JOIN, &info)).unwrap(),
            TopicMessage::Join(i) if i.client == "c"
        ));
        assert!(matches!(
            decode_topic_message(&encode_info(LEAVE, &info)).unwrap(),
            TopicMessage::Leave(i) if i.user == "u"
        ));
        assert!(decode_topic_message(b"").is_err());
        assert!(decode_topic_message(b"x{}").is_err());
        assert!(decode_topic_message(b"p{").is_err());
    }

    /// Client info travels in `ClientInfo`'s own field names, as before it decoded itself:
    /// what this node sends is unchanged, and what older (or newer) nodes send and stored in
    /// history still decodes, missing and unknown fields included.
    #[test]
    fn client_info_wire_format_is_unchanged() {
        assert_eq!(
            encode_info(JOIN, &sample().info.unwrap()),
            br#"j{"user":"u","client":"c","conn_info":{"x":1}}"#
        );
        let TopicMessage::Leave(old) =
            decode_topic_message(br#"l{"client":"c","chan_info":[1],"later":true}"#).unwrap()
        else {
            panic!("not a leave");
        };
        assert_eq!((old.user.as_str(), old.client.as_str()), ("", "c"));
        assert_eq!(old.chan_info.unwrap().get(), "[1]");
        let stored =
            decode_publication(br#"{"o":3,"d":1,"i":{"user":"u","client":"c","conn_info":null}}"#)
                .unwrap();
        let info = stored.info.unwrap();
        assert_eq!((info.user.as_str(), stored.offset), ("u", 3));
        assert!(info.conn_info.is_none());
    }
}
