//! Socket.IO v5 packets (sans-I/O).
//!
//! Text form: `<type>[<attachments>-][<namespace>,][<ack id>][<JSON>]`, for example
//! `2["hello",1]`, `2/admin,456["x"]`, `51-["up",{"_placeholder":true,"num":0}]`. A binary
//! packet (types 5 and 6) is followed by its attachments, one Engine.IO binary message each;
//! its JSON holds `{"_placeholder":true,"num":i}` where attachment `i` belongs. Placeholders are
//! kept as they are: attachments travel next to the JSON, so a handler can send them back (or
//! on) unchanged.

use std::fmt::Write as _;

use bytes::Bytes;
use serde_json::Value;

/// Largest acknowledgement id accepted (JavaScript's `Number.MAX_SAFE_INTEGER`).
pub const MAX_ACK_ID: u64 = (1 << 53) - 1;

/// Events a client may not emit (the reference parser refuses them).
pub const RESERVED_EVENTS: [&str; 6] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// The packet types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketType {
    /// `0`: connect to a namespace (client), or the accepted connection (server).
    Connect = 0,
    /// `1`: leave a namespace.
    Disconnect = 1,
    /// `2`: an event.
    Event = 2,
    /// `3`: an acknowledgement.
    Ack = 3,
    /// `4`: a refused connection.
    ConnectError = 4,
    /// `5`: an event with binary attachments.
    BinaryEvent = 5,
    /// `6`: an acknowledgement with binary attachments.
    BinaryAck = 6,
}

impl PacketType {
    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            b'0' => Self::Connect,
            b'1' => Self::Disconnect,
            b'2' => Self::Event,
            b'3' => Self::Ack,
            b'4' => Self::ConnectError,
            b'5' => Self::BinaryEvent,
            b'6' => Self::BinaryAck,
            _ => return None,
        })
    }

    /// Whether attachments follow the packet.
    pub fn is_binary(self) -> bool {
        matches!(self, Self::BinaryEvent | Self::BinaryAck)
    }
}

/// One Socket.IO packet (with its attachments once they have all arrived).
#[derive(Debug, Clone, PartialEq)]
pub struct Packet {
    /// The type.
    pub ty: PacketType,
    /// The namespace (`/` for the main one).
    pub nsp: String,
    /// The acknowledgement id, if any.
    pub id: Option<u64>,
    /// The JSON payload, if any.
    pub data: Option<Value>,
    /// How many attachments follow (binary types).
    pub attachments: usize,
    /// The attachments received so far (complete once `len() == attachments`).
    pub bins: Vec<Bytes>,
}

/// Why a packet was refused (the connection is then closed, like the reference server does).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Empty packet.
    #[error("empty packet")]
    Empty,
    /// The first character is not a packet type.
    #[error("unknown packet type")]
    UnknownType,
    /// The attachment count is malformed or above the limit.
    #[error("illegal attachments")]
    IllegalAttachments,
    /// The ack id does not fit.
    #[error("invalid ack id")]
    InvalidId,
    /// The payload is not JSON, or not what the packet type requires.
    #[error("invalid payload")]
    InvalidPayload,
    /// The namespace is too long.
    #[error("namespace too long")]
    NamespaceTooLong,
    /// A placeholder names an attachment that does not exist.
    #[error("invalid placeholder")]
    InvalidPlaceholder,
}

/// Longest namespace name accepted.
pub const MAX_NAMESPACE_LEN: usize = 256;

impl Packet {
    /// A packet without attachments.
    pub fn new(ty: PacketType, nsp: &str, id: Option<u64>, data: Option<Value>) -> Self {
        Self {
            ty,
            nsp: nsp.to_owned(),
            id,
            data,
            attachments: 0,
            bins: Vec::new(),
        }
    }

    /// An event (`ty` becomes binary when `bins` is not empty). `args` excludes the name.
    pub fn event(
        nsp: &str,
        event: &str,
        args: Vec<Value>,
        bins: Vec<Bytes>,
        id: Option<u64>,
    ) -> Self {
        let mut array = Vec::with_capacity(args.len() + 1);
        array.push(Value::String(event.to_owned()));
        array.extend(args);
        let ty = if bins.is_empty() {
            PacketType::Event
        } else {
            PacketType::BinaryEvent
        };
        Self {
            ty,
            nsp: nsp.to_owned(),
            id,
            data: Some(Value::Array(array)),
            attachments: bins.len(),
            bins,
        }
    }

    /// An acknowledgement carrying `args` (binary when `bins` is not empty).
    pub fn ack(nsp: &str, id: u64, args: Vec<Value>, bins: Vec<Bytes>) -> Self {
        let ty = if bins.is_empty() {
            PacketType::Ack
        } else {
            PacketType::BinaryAck
        };
        Self {
            ty,
            nsp: nsp.to_owned(),
            id: Some(id),
            data: Some(Value::Array(args)),
            attachments: bins.len(),
            bins,
        }
    }

    /// The text part.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        out.push((b'0' + self.ty as u8) as char);
        if self.ty.is_binary() {
            let _ = write!(out, "{}-", self.attachments);
        }
        if self.nsp != "/" {
            out.push_str(&self.nsp);
            out.push(',');
        }
        if let Some(id) = self.id {
            let _ = write!(out, "{id}");
        }
        if let Some(data) = &self.data {
            out.push_str(&data.to_string());
        }
        out
    }

    /// Decodes the text part; for binary types `attachments` says how many binary messages
    /// must follow. At most `max_attachments` are accepted.
    pub fn decode(text: &str, max_attachments: usize) -> Result<Packet, ParseError> {
        let bytes = text.as_bytes();
        let ty = PacketType::from_byte(*bytes.first().ok_or(ParseError::Empty)?)
            .ok_or(ParseError::UnknownType)?;
        let mut i = 1;
        let mut attachments = 0;
        if ty.is_binary() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            if i == start || i - start > 6 || bytes.get(i) != Some(&b'-') {
                return Err(ParseError::IllegalAttachments);
            }
            attachments = text[start..i]
                .parse::<usize>()
                .map_err(|_| ParseError::IllegalAttachments)?;
            if attachments > max_attachments {
                return Err(ParseError::IllegalAttachments);
            }
            i += 1;
        }
        let mut nsp = "/";
        if bytes.get(i) == Some(&b'/') {
            let start = i;
            while i < bytes.len() && bytes[i] != b',' {
                i += 1;
            }
            nsp = &text[start..i];
            if nsp.len() > MAX_NAMESPACE_LEN {
                return Err(ParseError::NamespaceTooLong);
            }
            if i < bytes.len() {
                i += 1; // the comma
            }
        }
        let mut id = None;
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if i > start {
            let n = text[start..i]
                .parse::<u64>()
                .map_err(|_| ParseError::InvalidId)?;
            if n > MAX_ACK_ID {
                return Err(ParseError::InvalidId);
            }
            id = Some(n);
        }
        let data = if i < bytes.len() {
            Some(
                serde_json::from_str::<Value>(&text[i..])
                    .map_err(|_| ParseError::InvalidPayload)?,
            )
        } else {
            None
        };
        if !payload_valid(ty, data.as_ref()) {
            return Err(ParseError::InvalidPayload);
        }
        Ok(Packet {
            ty,
            nsp: nsp.to_owned(),
            id,
            data,
            attachments,
            bins: Vec::new(),
        })
    }

    /// Whether every attachment has arrived.
    pub fn is_complete(&self) -> bool {
        self.bins.len() >= self.attachments
    }

    /// Checks that every placeholder names an attachment (after all have arrived).
    pub fn check_placeholders(&self) -> Result<(), ParseError> {
        fn walk(v: &Value, n: usize) -> bool {
            match v {
                Value::Array(a) => a.iter().all(|v| walk(v, n)),
                Value::Object(o) => {
                    if o.get("_placeholder") == Some(&Value::Bool(true)) {
                        return o
                            .get("num")
                            .and_then(Value::as_u64)
                            .is_some_and(|i| (i as usize) < n);
                    }
                    o.values().all(|v| walk(v, n))
                }
                _ => true,
            }
        }
        match &self.data {
            Some(d) if !walk(d, self.bins.len()) => Err(ParseError::InvalidPlaceholder),
            _ => Ok(()),
        }
    }
}

fn payload_valid(ty: PacketType, data: Option<&Value>) -> bool {
    match ty {
        PacketType::Connect => data.is_none_or(Value::is_object),
        PacketType::Disconnect => data.is_none(),
        PacketType::ConnectError => data.is_some_and(|d| d.is_object() || d.is_string()),
        PacketType::Event | PacketType::BinaryEvent => match data {
            Some(Value::Array(a)) => match a.first() {
                Some(Value::Number(_)) => true,
                Some(Value::String(s)) => !RESERVED_EVENTS.contains(&s.as_str()),
                _ => false,
            },
            _ => false,
        },
        PacketType::Ack | PacketType::BinaryAck => matches!(data, Some(Value::Array(_))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn d(t: &str) -> Result<Packet, ParseError> {
        Packet::decode(t, 10)
    }

    #[test]
    fn decodes_the_suite_packets() {
        let p = d("0").unwrap();
        assert_eq!(
            (p.ty, p.nsp.as_str(), p.data),
            (PacketType::Connect, "/", None)
        );
        let p = d("0{\"token\":\"123\"}").unwrap();
        assert_eq!(p.data, Some(json!({"token":"123"})));
        let p = d("0/custom,").unwrap();
        assert_eq!(p.nsp, "/custom");
        let p = d("0/custom").unwrap();
        assert_eq!(p.nsp, "/custom");
        let p = d("0/custom,{\"token\":\"abc\"}").unwrap();
        assert_eq!(
            (p.nsp.as_str(), p.data),
            ("/custom", Some(json!({"token":"abc"})))
        );
        let p = d("2456[\"message-with-ack\",1,\"2\",{\"3\":[false]}]").unwrap();
        assert_eq!(p.id, Some(456));
        let p =
            d("52-789[\"m\",{\"_placeholder\":true,\"num\":0},{\"_placeholder\":true,\"num\":1}]")
                .unwrap();
        assert_eq!(
            (p.ty, p.attachments, p.id),
            (PacketType::BinaryEvent, 2, Some(789))
        );
        let p = d("1/custom,").unwrap();
        assert_eq!((p.ty, p.nsp.as_str()), (PacketType::Disconnect, "/custom"));
    }

    #[test]
    fn encodes_like_the_reference() {
        let p = Packet::new(PacketType::Connect, "/", None, Some(json!({"sid":"x"})));
        assert_eq!(p.encode(), "0{\"sid\":\"x\"}");
        let p = Packet::event("/custom", "auth", vec![json!({})], vec![], None);
        assert_eq!(p.encode(), "2/custom,[\"auth\",{}]");
        let p = Packet::ack("/", 789, vec![json!(1)], vec![Bytes::from_static(b"a")]);
        assert_eq!(p.encode(), "61-789[1]");
        let p = Packet::new(
            PacketType::ConnectError,
            "/random",
            None,
            Some(json!({"message":"Invalid namespace"})),
        );
        assert_eq!(p.encode(), "4/random,{\"message\":\"Invalid namespace\"}");
    }

    #[test]
    fn refuses_malformed_packets() {
        assert_eq!(d(""), Err(ParseError::Empty));
        assert_eq!(d("abc"), Err(ParseError::UnknownType));
        assert_eq!(d("9"), Err(ParseError::UnknownType));
        assert_eq!(d("2{}"), Err(ParseError::InvalidPayload));
        assert_eq!(d("2abc[\"x\"]"), Err(ParseError::InvalidPayload));
        assert_eq!(d("2"), Err(ParseError::InvalidPayload));
        assert_eq!(d("2[]"), Err(ParseError::InvalidPayload));
        assert_eq!(d("2[\"connect\"]"), Err(ParseError::InvalidPayload));
        assert_eq!(d("2[{}]"), Err(ParseError::InvalidPayload));
        assert_eq!(d("0[1]"), Err(ParseError::InvalidPayload));
        assert_eq!(d("1{}"), Err(ParseError::InvalidPayload));
        assert_eq!(d("3{}"), Err(ParseError::InvalidPayload));
        assert_eq!(d("5[\"x\"]"), Err(ParseError::IllegalAttachments));
        assert_eq!(d("5-[\"x\"]"), Err(ParseError::IllegalAttachments));
        assert_eq!(d("511-[\"x\"]"), Err(ParseError::IllegalAttachments));
        assert_eq!(
            d("599999999999999999999-[\"x\"]"),
            Err(ParseError::IllegalAttachments)
        );
        assert_eq!(
            d("299999999999999999999[\"x\"]"),
            Err(ParseError::InvalidId)
        );
        assert_eq!(d("29007199254740992[\"x\"]"), Err(ParseError::InvalidId));
        let long = format!("0/{}", "a".repeat(300));
        assert_eq!(d(&long), Err(ParseError::NamespaceTooLong));
        let deep = format!("2[\"x\",{}{}]", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(d(&deep), Err(ParseError::InvalidPayload));
    }

    #[test]
    fn placeholders_must_name_attachments() {
        let mut p = d("51-[\"m\",{\"_placeholder\":true,\"num\":1}]").unwrap();
        p.bins.push(Bytes::from_static(b"x"));
        assert_eq!(p.check_placeholders(), Err(ParseError::InvalidPlaceholder));
        let mut p = d("51-[\"m\",{\"_placeholder\":true,\"num\":0}]").unwrap();
        p.bins.push(Bytes::from_static(b"x"));
        assert_eq!(p.check_placeholders(), Ok(()));
    }

    #[test]
    fn never_panics_on_prefixes_of_valid_packets() {
        let valid = "52-/custom,789[\"m\",{\"_placeholder\":true,\"num\":0},\"é\"]";
        for (i, _) in valid.char_indices() {
            let _ = d(&valid[..i]);
        }
    }
}
