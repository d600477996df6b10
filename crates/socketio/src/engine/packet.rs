//! Engine.IO v4 packets and the long-polling payload format (sans-I/O).
//!
//! A packet is one type digit followed by its data: `0` open, `1` close, `2` ping, `3` pong,
//! `4` message, `5` upgrade, `6` noop. Over WebSocket a text frame carries one packet and a
//! binary frame is a binary message (no type byte). A polling payload joins packets with the
//! record separator `\x1e`; a binary message in it is `b` followed by its base64 encoding.

use base64::Engine as _;
use bytes::Bytes;

/// The polling payload separator (ASCII record separator).
pub const SEPARATOR: u8 = 0x1e;

/// One Engine.IO packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// `0`: the handshake (JSON object).
    Open(String),
    /// `1`: the session is closed.
    Close,
    /// `2`: heartbeat request (data `probe` during an upgrade).
    Ping(String),
    /// `3`: heartbeat answer (data `probe` during an upgrade).
    Pong(String),
    /// `4`: an application text message.
    Message(String),
    /// `4`: an application text message encoded once and shared by every session it is sent
    /// to (a room publication); the server only sends it, a client's `4` decodes as
    /// [`Packet::Message`].
    Shared(SharedMessage),
    /// A binary application message.
    Binary(Bytes),
    /// `5`: completes an upgrade.
    Upgrade,
    /// `6`: no operation (ends a pending poll).
    Noop,
}

/// A `4` packet's text, type digit included, in a buffer shared by reference counting: one
/// encoding of a room publication goes out to every socket in the room without a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedMessage(Bytes);

impl SharedMessage {
    /// The `4` packet carrying `data`.
    pub fn new(data: &str) -> Self {
        let mut b = Vec::with_capacity(data.len() + 1);
        b.push(b'4');
        b.extend_from_slice(data.as_bytes());
        Self(b.into())
    }

    /// The packet's text (type digit included).
    pub fn as_str(&self) -> &str {
        // Invariant: built from `'4'` and a `&str` in `new`, so always UTF-8.
        std::str::from_utf8(&self.0).expect("SharedMessage holds UTF-8")
    }

    /// The packet's bytes (type digit included), shared.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// This message, a Socket.IO event (`…]`), with one more string argument at the end
    /// (`…,"arg"]`). `arg` is put in as it is: it must need no JSON escaping.
    pub(crate) fn with_string_argument(&self, arg: &str) -> Self {
        debug_assert!(self.0.ends_with(b"]"), "an event's arguments end with ]");
        debug_assert!(!arg.contains(['"', '\\']), "the argument needs no escaping");
        let head = &self.0[..self.0.len().saturating_sub(1)];
        let mut b = Vec::with_capacity(head.len() + arg.len() + 4);
        b.extend_from_slice(head);
        b.extend_from_slice(b",\"");
        b.extend_from_slice(arg.as_bytes());
        b.extend_from_slice(b"\"]");
        Self(b.into())
    }

    /// The packet's bytes (type digit included).
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

/// Why a packet or payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// An empty packet (no type digit).
    #[error("empty packet")]
    Empty,
    /// The first character is not a known packet type.
    #[error("unknown packet type")]
    UnknownType,
    /// A `b` packet whose data is not valid base64.
    #[error("invalid base64 in a binary packet")]
    Base64,
    /// A polling payload that is not UTF-8.
    #[error("payload is not UTF-8")]
    Utf8,
    /// More packets in one payload than allowed.
    #[error("too many packets in one payload")]
    TooManyPackets,
}

impl Packet {
    /// Decodes one text packet (a WebSocket text frame or one segment of a polling payload
    /// without the `b` binary form).
    pub fn decode_text(text: &str) -> Result<Packet, DecodeError> {
        let mut chars = text.chars();
        let ty = chars.next().ok_or(DecodeError::Empty)?;
        let data = chars.as_str();
        Ok(match ty {
            '0' => Packet::Open(data.to_owned()),
            '1' => Packet::Close,
            '2' => Packet::Ping(data.to_owned()),
            '3' => Packet::Pong(data.to_owned()),
            '4' => Packet::Message(data.to_owned()),
            '5' => Packet::Upgrade,
            '6' => Packet::Noop,
            _ => return Err(DecodeError::UnknownType),
        })
    }

    /// Encodes the packet as one WebSocket message: text for every packet but
    /// [`Packet::Binary`], whose bytes go out as a binary frame.
    pub fn to_ws(&self) -> WsFrame {
        match self {
            Packet::Binary(b) => WsFrame::Binary(b.clone()),
            Packet::Shared(m) => WsFrame::SharedText(m.bytes().clone()),
            other => WsFrame::Text(other.to_text()),
        }
    }

    /// The text form (for polling, binary messages are `b` + base64).
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        self.write_text(&mut out);
        out
    }

    fn write_text(&self, out: &mut String) {
        match self {
            Packet::Open(d) => {
                out.push('0');
                out.push_str(d);
            }
            Packet::Close => out.push('1'),
            Packet::Ping(d) => {
                out.push('2');
                out.push_str(d);
            }
            Packet::Pong(d) => {
                out.push('3');
                out.push_str(d);
            }
            Packet::Message(d) => {
                out.push('4');
                out.push_str(d);
            }
            Packet::Shared(m) => out.push_str(m.as_str()),
            Packet::Binary(b) => {
                out.push('b');
                base64::engine::general_purpose::STANDARD.encode_string(b, out);
            }
            Packet::Upgrade => out.push('5'),
            Packet::Noop => out.push('6'),
        }
    }

    /// Bytes this packet takes in a polling payload (an estimate for base64).
    pub fn wire_len(&self) -> usize {
        match self {
            Packet::Open(d) | Packet::Ping(d) | Packet::Pong(d) | Packet::Message(d) => d.len() + 1,
            Packet::Binary(b) => 1 + b.len().div_ceil(3) * 4,
            Packet::Shared(m) => m.bytes().len(),
            _ => 1,
        }
    }
}

/// A packet as one WebSocket message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsFrame {
    /// A text frame.
    Text(String),
    /// A text frame whose UTF-8 bytes are shared with other sessions.
    SharedText(Bytes),
    /// A binary frame.
    Binary(Bytes),
}

/// Encodes packets as one polling payload (`\x1e`-separated).
pub fn encode_payload(packets: &[Packet]) -> String {
    let mut out = String::with_capacity(packets.iter().map(|p| p.wire_len() + 1).sum());
    for (i, p) in packets.iter().enumerate() {
        if i > 0 {
            out.push(SEPARATOR as char);
        }
        p.write_text(&mut out);
    }
    out
}

/// Decodes a polling payload (the body of a POST) into at most `max_packets` packets.
pub fn decode_payload(body: &[u8], max_packets: usize) -> Result<Vec<Packet>, DecodeError> {
    let text = std::str::from_utf8(body).map_err(|_| DecodeError::Utf8)?;
    let mut packets = Vec::new();
    for segment in text.split(SEPARATOR as char) {
        if packets.len() == max_packets {
            return Err(DecodeError::TooManyPackets);
        }
        packets.push(match segment.strip_prefix('b') {
            Some(b64) => Packet::Binary(
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|_| DecodeError::Base64)?
                    .into(),
            ),
            None => Packet::decode_text(segment)?,
        });
    }
    Ok(packets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_packets_round_trip() {
        for text in [
            "0{\"sid\":\"x\"}",
            "1",
            "2",
            "2probe",
            "3probe",
            "4hello",
            "5",
            "6",
            "4",
        ] {
            let p = Packet::decode_text(text).unwrap();
            assert_eq!(p.to_text(), text);
        }
        assert_eq!(
            Packet::decode_text("4héllo").unwrap(),
            Packet::Message("héllo".into())
        );
    }

    #[test]
    fn shared_messages_encode_like_messages() {
        let shared = Packet::Shared(SharedMessage::new("2[\"é\"]"));
        let plain = Packet::Message("2[\"é\"]".into());
        assert_eq!(shared.to_text(), plain.to_text());
        assert_eq!(shared.wire_len(), plain.wire_len());
        assert_eq!(
            encode_payload(&[shared.clone(), plain.clone()]),
            encode_payload(&[plain.clone(), plain])
        );
        match shared.to_ws() {
            WsFrame::SharedText(b) => assert_eq!(&b[..], "42[\"é\"]".as_bytes()),
            other => panic!("not shared: {other:?}"),
        }
    }

    #[test]
    fn bad_packets_are_errors() {
        assert_eq!(Packet::decode_text(""), Err(DecodeError::Empty));
        assert_eq!(Packet::decode_text("abc"), Err(DecodeError::UnknownType));
        assert_eq!(Packet::decode_text("7"), Err(DecodeError::UnknownType));
        assert_eq!(Packet::decode_text("é"), Err(DecodeError::UnknownType));
    }

    #[test]
    fn payloads_round_trip_with_binary() {
        let packets = vec![
            Packet::Message("hello".into()),
            Packet::Binary(Bytes::from_static(&[1, 2, 3, 4])),
        ];
        let text = encode_payload(&packets);
        assert_eq!(text, "4hello\x1ebAQIDBA==");
        assert_eq!(decode_payload(text.as_bytes(), 10).unwrap(), packets);
        assert_eq!(
            decode_payload(b"4test1\x1e4test2\x1e4test3", 10)
                .unwrap()
                .len(),
            3
        );
    }

    #[test]
    fn hostile_payloads_are_refused() {
        assert_eq!(decode_payload(b"abc", 10), Err(DecodeError::UnknownType));
        assert_eq!(decode_payload(b"", 10), Err(DecodeError::Empty));
        assert_eq!(decode_payload(b"4a\x1e", 10), Err(DecodeError::Empty));
        assert_eq!(decode_payload(b"b!!!", 10), Err(DecodeError::Base64));
        assert_eq!(decode_payload(&[0x34, 0xff], 10), Err(DecodeError::Utf8));
        assert_eq!(
            decode_payload(b"6\x1e6\x1e6", 2),
            Err(DecodeError::TooManyPackets)
        );
    }
}
