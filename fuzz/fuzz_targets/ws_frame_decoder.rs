//! The WebSocket frame decoder (`switchboard_ws::Decoder`) on arbitrary bytes from the peer.
//!
//! Input: one flags byte, one split byte, then the byte stream.
//! - flags bit 0: role (server decodes masked client frames, client decodes unmasked ones);
//!   bit 1: small message limit (300 bytes) instead of the 64 KiB default; bit 2: frame limit of
//!   100 bytes; bit 3: permessage-deflate negotiated; bits 4 and 5: the peer's
//!   `*_no_context_takeover` parameters.
//! - split byte: the stream is also fed in pieces of `split % 23 + 1` bytes.
//!
//! Besides "never panics", it checks what the decoder promises: the same messages and the same
//! outcome whatever the split; data messages within `max_message_size`, control payloads within
//! 125 bytes, text valid UTF-8; an idle decoder holds nothing; and every decoded message
//! survives a re-encode/decode round trip.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use switchboard_ws::{
    encode_message, Decoder, DeflateParams, Message, ProtocolError, Role, WsConfig,
    MAX_CONTROL_PAYLOAD,
};

struct Outcome {
    messages: Vec<Message>,
    /// The error, if the stream failed.
    error: Option<ProtocolError>,
    closed: bool,
}

fn run(
    role: Role,
    config: &WsConfig,
    deflate: Option<DeflateParams>,
    stream: &[u8],
    piece: usize,
) -> Outcome {
    let mut decoder = Decoder::with_deflate(role, config, deflate);
    let mut messages = Vec::new();
    let mut error = None;
    for chunk in stream.chunks(piece.max(1)) {
        match decoder.decode(chunk, &mut messages) {
            Ok(()) => {}
            Err(e) => {
                check_close_code(&e);
                error = Some(e);
                assert!(decoder.is_failed());
                // Input after an error is ignored.
                let before = messages.len();
                assert!(decoder.decode(b"\x81\x00", &mut messages).is_ok());
                assert_eq!(messages.len(), before);
                break;
            }
        }
        if decoder.is_idle() {
            assert_eq!(decoder.buffered_len(), 0);
        }
    }
    Outcome {
        messages,
        error,
        closed: decoder.is_closed(),
    }
}

/// The decoder has no clock, so it never reports the control frame flood (1008).
fn check_close_code(e: &ProtocolError) {
    let code = e.close_code();
    assert!(
        matches!(code, 1002 | 1007 | 1009),
        "unexpected close code {code} for {e:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    let [flags, split, stream @ ..] = data else {
        return;
    };
    let role = if flags & 1 == 0 {
        Role::Server
    } else {
        Role::Client
    };
    let mut config = WsConfig::default();
    if flags & 2 != 0 {
        config = config.max_message_size(300);
    }
    if flags & 4 != 0 {
        config = config.max_frame_size(100);
    }
    let deflate = (flags & 8 != 0).then(|| DeflateParams {
        server_no_context_takeover: flags & 16 != 0,
        client_no_context_takeover: flags & 32 != 0,
        ..DeflateParams::default()
    });

    let whole = run(role, &config, deflate, stream, stream.len());
    let pieces = run(role, &config, deflate, stream, usize::from(*split) % 23 + 1);
    assert_eq!(
        whole.messages, pieces.messages,
        "messages depend on the split"
    );
    assert_eq!(whole.error, pieces.error, "outcome depends on the split");
    assert_eq!(whole.closed, pieces.closed);

    for msg in &whole.messages {
        match msg {
            Message::Text(b) => {
                assert!(b.len() <= config.max_message_size);
                assert!(std::str::from_utf8(b).is_ok(), "text message is not UTF-8");
            }
            Message::Binary(b) => assert!(b.len() <= config.max_message_size),
            Message::Ping(b) | Message::Pong(b) => assert!(b.len() <= MAX_CONTROL_PAYLOAD),
            Message::Close(_) => {}
        }
    }
    // Nothing is decoded after a Close.
    if let Some(pos) = whole
        .messages
        .iter()
        .position(|m| matches!(m, Message::Close(_)))
    {
        assert_eq!(pos + 1, whole.messages.len(), "message after a Close");
    }

    // What we decoded, the other side can send again and we decode the same (no extension:
    // a close with a valid status round-trips, and so does everything else).
    let peer = match role {
        Role::Server => Role::Client,
        Role::Client => Role::Server,
    };
    let mut wire = BytesMut::new();
    for msg in &whole.messages {
        encode_message(msg, peer, &mut wire);
    }
    let again = run(role, &WsConfig::default(), None, &wire, wire.len());
    assert_eq!(again.error, None, "re-encoded messages do not decode");
    assert_eq!(again.messages, whole.messages, "re-encoded messages differ");
});
