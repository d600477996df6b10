//! The Socket.IO front door's decoders on arbitrary input: Engine.IO polling payloads and
//! packets (`switchboard_socketio::engine::packet`) and Socket.IO packets
//! (`switchboard_socketio::sio::packet`).
//!
//! Besides "never panics": a payload decodes to at most the allowed number of packets and
//! re-encodes to what was decoded; a Socket.IO packet re-encodes to text that decodes to the same
//! packet, with no more attachments than allowed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_socketio::engine::packet::{decode_payload, encode_payload, Packet as EPacket};
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
        assert_eq!(again, p, "{encoded}");
    }
});
