//! Room publications converted once per publication, not once per socket.
//!
//! The hub encodes a publication once and queues the same frame (one [`Bytes`]) for every
//! subscriber. Without this module every socket's session task would parse that frame and
//! encode the Socket.IO event again. Here the first socket (of a namespace) that meets a frame
//! converts it into the Engine.IO message `42[event,...args]` ([`SharedMessage`]), and the
//! others find it in a small per-thread cache keyed by the frame's address and length (no
//! scan of the frame at all); the cache holds a reference to the frame, so that address cannot
//! be reused by another frame while the entry lives. The event's name and arguments are sliced out of the frame as raw
//! JSON, so they reach the client byte for byte as the publisher sent them.
//!
//! Only frames that are one plain publication are converted: any other frame (a reply, a
//! join, leave or disconnect push, several lines, a publication with binary attachments) gives
//! `None` and the caller takes its general path. With connection state recovery every event
//! carries the socket's own offset as its last argument: the caller then adds it to the shared
//! event (one copy of the encoded event per socket, no parsing), moving the socket's position
//! in the room from [`RoomEvent::channel`] and [`RoomEvent::offset`].

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::engine::SharedMessage;

/// Frames remembered per thread (the newest ones; a burst of publications interleaves its
/// frames across the sockets' tasks, so one entry would not do).
const CACHE_ENTRIES: usize = 256;

/// A publication as the sockets of one namespace receive it.
#[derive(Debug, Clone)]
pub(super) struct RoomEvent {
    /// `42[event,...args]` (with the namespace for other namespaces than `/`).
    pub(super) message: SharedMessage,
    /// The hub client that published it (its own socket does not get it back).
    pub(super) from: Option<Arc<str>>,
    /// The room's channel.
    pub(super) channel: Option<Arc<str>>,
    /// The publication's position in the channel's stream (with history).
    pub(super) offset: Option<u64>,
}

/// The room event of `frame` (a hub frame) for namespace `ns`, or `None` when the frame is
/// not one plain publication push.
pub(super) fn room_event(frame: &Bytes, ns: &str) -> Option<RoomEvent> {
    let key = (frame.as_ptr() as usize, frame.len());
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some(e) = cache.map.get(&key) {
            if *e.ns == *ns {
                return e.event.clone();
            }
        }
        let event = convert(frame, ns);
        cache.insert(
            key,
            Entry {
                _frame: frame.clone(),
                ns: ns.into(),
                event: event.clone(),
            },
        );
        event
    })
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
}

#[derive(Default)]
struct Cache {
    map: HashMap<(usize, usize), Entry, BuildHasherDefault<AddressHasher>>,
    order: VecDeque<(usize, usize)>,
}

/// Hashes the (address, length) keys: addresses of live heap blocks are distinct, so a
/// multiplicative mix is enough (SipHash showed up in profiles).
#[derive(Default)]
struct AddressHasher(u64);

impl Hasher for AddressHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

struct Entry {
    /// Keeps the frame (and so the key's address) alive.
    _frame: Bytes,
    ns: Box<str>,
    event: Option<RoomEvent>,
}

impl Cache {
    fn insert(&mut self, key: (usize, usize), entry: Entry) {
        if self.map.insert(key, entry).is_none() {
            self.order.push_back(key);
            if self.order.len() > CACHE_ENTRIES {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }
}

#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    push: Push<'a>,
}

#[derive(Deserialize)]
struct Push<'a> {
    #[serde(borrow)]
    channel: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, rename = "pub")]
    publication: Option<Publication<'a>>,
}

#[derive(Deserialize)]
struct Publication<'a> {
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    info: Option<Info<'a>>,
    offset: Option<u64>,
}

#[derive(Deserialize)]
struct Info<'a> {
    #[serde(borrow)]
    client: Option<std::borrow::Cow<'a, str>>,
}

/// The shape the bridge publishes room events in: `{"event", "args"}` (and `bins` when
/// there are attachments).
#[derive(Deserialize)]
struct EventData<'a> {
    #[serde(borrow)]
    event: Option<&'a RawValue>,
    #[serde(borrow)]
    args: Option<&'a RawValue>,
    #[serde(borrow)]
    bins: Option<&'a RawValue>,
}

/// Converts one publication push (see [`room_event`]).
fn convert(frame: &[u8], ns: &str) -> Option<RoomEvent> {
    if !frame.starts_with(b"{\"push\":") {
        return None;
    }
    // Several lines (or trailing data) do not parse as one `Line`.
    let line: Line<'_> = serde_json::from_slice(frame).ok()?;
    let channel = line.push.channel.map(|c| Arc::from(c.as_ref()));
    let publication = line.push.publication?;
    let data = publication.data?;
    let mut text = String::with_capacity(data.get().len() + ns.len() + 16);
    text.push('2');
    if ns != "/" {
        text.push_str(ns);
        text.push(',');
    }
    text.push('[');
    // `{"event": "name", "args": [...]}` becomes `name(...args)`; any other data becomes
    // `message(data)`, as the bridge's general path does.
    // An object that does not parse into `EventData` (a duplicate key, say) is left to the
    // general path, which reads it the way serde_json's `Value` does.
    let shaped = if data.get().starts_with('{') {
        Some(serde_json::from_str::<EventData<'_>>(data.get()).ok()?)
    } else {
        None
    };
    match shaped {
        Some(d) if d.bins.is_some() => return None,
        Some(EventData {
            event: Some(event),
            args: Some(args),
            ..
        }) if event.get().starts_with('"') && args.get().starts_with('[') => {
            let args: Vec<&RawValue> = serde_json::from_str(args.get()).ok()?;
            text.push_str(event.get());
            for a in args {
                text.push(',');
                text.push_str(a.get());
            }
        }
        _ => {
            text.push_str("\"message\",");
            text.push_str(data.get());
        }
    }
    text.push(']');
    let from = match publication.info {
        Some(Info {
            client: Some(client),
        }) => Some(Arc::from(client.as_ref())),
        _ => None,
    };
    Some(RoomEvent {
        message: SharedMessage::new(&text),
        from,
        channel,
        offset: publication.offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(line: &str, ns: &str) -> Option<(String, Option<String>)> {
        let frame = Bytes::copy_from_slice(line.as_bytes());
        room_event(&frame, ns)
            .map(|e| (e.message.as_str().to_owned(), e.from.map(|f| f.to_string())))
    }

    #[test]
    fn events_keep_their_arguments_byte_for_byte() {
        let line = r#"{"push":{"channel":"bench","pub":{"data":{"event":"bench","args":[{"s":1,"t":2,"p":"x"},1.50,"\u00e9"]},"info":{"user":"","client":"c1"},"offset":3}}}"#;
        assert_eq!(
            event(line, "/"),
            Some((
                r#"42["bench",{"s":1,"t":2,"p":"x"},1.50,"\u00e9"]"#.to_owned(),
                Some("c1".to_owned())
            ))
        );
        assert_eq!(
            event(line, "/chat").unwrap().0,
            r#"42/chat,["bench",{"s":1,"t":2,"p":"x"},1.50,"\u00e9"]"#
        );
    }

    /// What a socket with recovery needs to move its position: the room's channel and the
    /// publication's offset; and its event with the offset as the last argument.
    #[test]
    fn events_carry_their_channel_and_offset() {
        let line = r#"{"push":{"channel":"r\u0031","pub":{"data":{"event":"e","args":[1.50]},"offset":7}}}"#;
        let frame = Bytes::copy_from_slice(line.as_bytes());
        let e = room_event(&frame, "/").unwrap();
        assert_eq!(e.channel.as_deref(), Some("r1"));
        assert_eq!(e.offset, Some(7));
        assert_eq!(
            e.message.with_string_argument("b2Zm").as_str(),
            r#"42["e",1.50,"b2Zm"]"#
        );
        let line = r#"{"push":{"channel":"a","pub":{"data":{"event":"e","args":[]}}}}"#;
        let e = room_event(&Bytes::copy_from_slice(line.as_bytes()), "/x").unwrap();
        assert_eq!(e.offset, None);
        assert_eq!(
            e.message.with_string_argument("o").as_str(),
            r#"42/x,["e","o"]"#
        );
    }

    #[test]
    fn other_data_is_a_message_event() {
        let line = r#"{"push":{"channel":"a","pub":{"data":{"text":"hi","event":1}}}}"#;
        assert_eq!(
            event(line, "/"),
            Some((r#"42["message",{"text":"hi","event":1}]"#.to_owned(), None))
        );
        let line = r#"{"push":{"channel":"a","pub":{"data":[1,2]}}}"#;
        assert_eq!(event(line, "/").unwrap().0, r#"42["message",[1,2]]"#);
    }

    #[test]
    fn anything_else_takes_the_general_path() {
        for line in [
            r#"{"push":{"channel":"a","join":{"info":{"client":"c"}}}}"#,
            r#"{"push":{"channel":"a","pub":{"data":{"event":"e","args":[],"bins":["AQ=="]}}}}"#,
            r#"{"push":{"disconnect":{"code":3000,"reason":"x"}}}"#,
            r#"{"push":{"channel":"a","pub":{"data":{"event":"e","args":[]},"info":{"client":7}}}}"#,
            r#"{"push":{"channel":"a","pub":{"data":{"event":"e","args":[],"event":"f"}}}}"#,
            "not json",
            "{\"push\":{\"channel\":\"a\",\"pub\":{\"data\":1}}}\n{}",
            r#"{"id":1,"subscribe":{}}"#,
        ] {
            assert_eq!(event(line, "/"), None, "{line}");
        }
    }

    #[test]
    fn a_frame_is_converted_once_per_namespace() {
        let frame = Bytes::from_static(
            br#"{"push":{"channel":"a","pub":{"data":{"event":"e","args":[1]}}}}"#,
        );
        let a = room_event(&frame, "/").unwrap();
        let b = room_event(&frame.clone(), "/").unwrap();
        // The same shared buffer, not an equal copy.
        assert_eq!(a.message.bytes().as_ptr(), b.message.bytes().as_ptr());
        let c = room_event(&frame, "/x").unwrap();
        assert_eq!(c.message.as_str(), r#"42/x,["e",1]"#);
    }
}
