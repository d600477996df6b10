//! The Socket.IO front door's decoders on arbitrary input: Engine.IO polling payloads and
//! packets (`switchboard_socketio::engine::packet`) and Socket.IO packets
//! (`switchboard_socketio::sio::packet`).
//!
//! Besides "never panics": a payload decodes to at most the allowed number of packets and
//! re-encodes to what was decoded; a Socket.IO packet re-encodes to text that decodes to the same
//! packet, with no more attachments than allowed. (Numbers are compared within a relative 1e-12:
//! serde_json's default float parsing may land one unit in the last place away from the value
//! it printed.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_socketio::engine::packet::{decode_payload, encode_payload, Packet as EPacket};
use serde_json::Value;
use switchboard_socketio::sio::packet::Packet;

const MAX_PACKETS: usize = 64;
const MAX_ATTACHMENTS: usize = 8;

fuzz_target!(|data: &[u8]| {
    if let Ok(packets) = decode_payload(data, MAX_PACKETS) {
        assert!(packets.len() <= MAX_PACKETS);
        let again = encode_payload(&packets);
        assert_eq!(decode_payload(again.as_bytes(), MAX_PACKETS).ok(), Some(packets));
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = EPacket::decode_text(text) {
        assert_eq!(EPacket::decode_text(&p.to_text()).ok(), Some(p));
    }
    if let Ok(p) = Packet::decode(text, MAX_ATTACHMENTS) {
        assert!(p.attachments <= MAX_ATTACHMENTS);
        let encoded = p.encode();
        let again = Packet::decode(&encoded, MAX_ATTACHMENTS).expect("re-encoded packet decodes");
        assert_eq!(
            (again.ty, &again.nsp, again.id, again.attachments, &again.bins),
            (p.ty, &p.nsp, p.id, p.attachments, &p.bins),
            "{encoded}"
        );
        match (&again.data, &p.data) {
            (Some(a), Some(b)) => assert!(same_json(a, b), "{encoded}"),
            (a, b) => assert_eq!(a, b, "{encoded}"),
        }
    }
});

/// JSON equality with numbers compared within a relative 1e-12.
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            _ if x == y => true,
            (Some(x), Some(y)) => (x - y).abs() <= 1e-12 * x.abs().max(y.abs()),
            _ => false,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}
