//! Decoder behaviour: masking, fragmentation, control frames, every error class, limits,
//! arbitrary input splits.

use bytes::{Bytes, BytesMut};
use switchboard_ws::{
    apply_mask, encode_message, CloseFrame, Decoder, DeflateParams, Message, ProtocolError, Role,
    WsConfig,
};

const MASK: [u8; 4] = [0xa1, 0xb2, 0xc3, 0xd4];

/// A raw frame: `b0` is the first header byte (FIN, RSV, opcode) as is.
fn raw(b0: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut v = vec![b0];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => v.push(m | n as u8),
        n @ 126..=0xFFFF => {
            v.push(m | 126);
            v.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            v.push(m | 127);
            v.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let start = v.len();
    if let Some(key) = mask {
        v.extend_from_slice(&key);
        v.extend_from_slice(payload);
        apply_mask(&mut v[start + 4..], key, 0);
    } else {
        v.extend_from_slice(payload);
    }
    v
}

/// A masked frame as a client sends it.
fn c(b0: u8, payload: &[u8]) -> Vec<u8> {
    raw(b0, payload, Some(MASK))
}

fn server() -> Decoder {
    Decoder::new(Role::Server, &WsConfig::default())
}

fn decode_all(d: &mut Decoder, input: &[u8]) -> Result<Vec<Message>, ProtocolError> {
    let mut out = Vec::new();
    d.decode(input, &mut out).map(|()| out)
}

/// Decodes `input` whole, one byte at a time and in a few other splits; all must agree.
fn decode_every_way(config: &WsConfig, input: &[u8]) -> Result<Vec<Message>, ProtocolError> {
    let whole = decode_all(&mut Decoder::new(Role::Server, config), input);
    for step in [1, 2, 3, 5, 7, 13, 64] {
        let mut d = Decoder::new(Role::Server, config);
        let mut out = Vec::new();
        let mut result = Ok(());
        for piece in input.chunks(step) {
            result = d.decode(piece, &mut out);
            if result.is_err() {
                break;
            }
        }
        let split = result.map(|()| out);
        match (&whole, &split) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "step {step}"),
            (Err(a), Err(b)) => assert_eq!(a, b, "step {step}"),
            _ => panic!("step {step}: whole {whole:?} vs split {split:?}"),
        }
    }
    whole
}

fn text(s: &str) -> Message {
    Message::Text(Bytes::copy_from_slice(s.as_bytes()))
}

#[test]
fn single_masked_text_and_binary() {
    let mut input = c(0x81, b"hello");
    input.extend(c(0x82, &[0, 1, 2, 255]));
    input.extend(c(0x81, b""));
    let out = decode_every_way(&WsConfig::default(), &input).unwrap();
    assert_eq!(
        out,
        [
            text("hello"),
            Message::Binary(Bytes::from_static(&[0, 1, 2, 255])),
            text("")
        ]
    );
}

#[test]
fn extended_lengths() {
    for len in [125, 126, 127, 65535, 65536, 65537] {
        let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let config = WsConfig::default().max_message_size(1 << 20);
        let out = decode_all(&mut Decoder::new(Role::Server, &config), &c(0x82, &payload));
        assert_eq!(out.unwrap(), [Message::Binary(payload.into())], "len {len}");
    }
}

#[test]
fn masking_by_role() {
    assert_eq!(
        decode_all(&mut server(), &raw(0x81, b"x", None)),
        Err(ProtocolError::UnmaskedFrame)
    );
    let mut client = Decoder::new(Role::Client, &WsConfig::default());
    assert_eq!(
        decode_all(&mut client, &raw(0x81, b"x", None)).unwrap(),
        [text("x")]
    );
    let mut client = Decoder::new(Role::Client, &WsConfig::default());
    assert_eq!(
        decode_all(&mut client, &c(0x81, b"x")),
        Err(ProtocolError::MaskedFrame)
    );
}

#[test]
fn fragmentation_with_interleaved_control_frames() {
    let mut input = c(0x01, b"Hel");
    input.extend(c(0x89, b"ping!"));
    input.extend(c(0x00, b""));
    input.extend(c(0x8A, b""));
    input.extend(c(0x80, b"lo"));
    input.extend(c(0x02, &[1]));
    input.extend(c(0x80, &[2]));
    let out = decode_every_way(&WsConfig::default(), &input).unwrap();
    assert_eq!(
        out,
        [
            Message::Ping(Bytes::from_static(b"ping!")),
            Message::Pong(Bytes::new()),
            text("Hello"),
            Message::Binary(Bytes::from_static(&[1, 2])),
        ]
    );
}

#[test]
fn utf8_code_point_split_across_fragments() {
    let s = "κόσμε — 𝄞";
    let bytes = s.as_bytes();
    for cut in 1..bytes.len() {
        let mut input = c(0x01, &bytes[..cut]);
        input.extend(c(0x80, &bytes[cut..]));
        assert_eq!(
            decode_every_way(&WsConfig::default(), &input).unwrap(),
            [text(s)],
            "cut {cut}"
        );
    }
}

#[test]
fn invalid_utf8_fails_fast() {
    // The first fragment is already hopeless: fail without waiting for the rest.
    let mut d = server();
    assert_eq!(
        decode_all(&mut d, &c(0x01, &[b'a', 0xF4, 0x90, 0x80, 0x80])),
        Err(ProtocolError::InvalidUtf8)
    );
    // Even inside one frame whose tail has not arrived yet.
    let frame = c(0x81, &[b'a', b'b', 0xC0, 0xAF, b'c', b'd', b'e', b'f']);
    let mut d = server();
    assert_eq!(
        decode_all(&mut d, &frame[..frame.len() - 3]),
        Err(ProtocolError::InvalidUtf8)
    );
    // A truncated code point at the very end of the message.
    assert_eq!(
        decode_every_way(&WsConfig::default(), &c(0x81, &[b'a', 0xE2, 0x82])),
        Err(ProtocolError::InvalidUtf8)
    );
    assert_eq!(ProtocolError::InvalidUtf8.close_code(), 1007);
}

#[test]
fn protocol_errors() {
    let cases: Vec<(Vec<u8>, ProtocolError)> = vec![
        (c(0x81 | 0x20, b"x"), ProtocolError::ReservedBits),
        (c(0x81 | 0x10, b"x"), ProtocolError::ReservedBits),
        (c(0x81 | 0x40, b"x"), ProtocolError::ReservedBits), // RSV1 without deflate
        (c(0x89 | 0x40, b"x"), ProtocolError::ReservedBits),
        (c(0x83, b""), ProtocolError::ReservedOpcode(3)),
        (c(0x87, b""), ProtocolError::ReservedOpcode(7)),
        (c(0x8B, b""), ProtocolError::ReservedOpcode(0xB)),
        (c(0x8F, b""), ProtocolError::ReservedOpcode(0xF)),
        (c(0x89, &[0; 126]), ProtocolError::ControlFrameTooLong),
        (c(0x09, b""), ProtocolError::FragmentedControlFrame),
        (c(0x08, b""), ProtocolError::FragmentedControlFrame),
        (c(0x80, b"x"), ProtocolError::UnexpectedContinuation),
        (c(0x00, b"x"), ProtocolError::UnexpectedContinuation),
        (
            [c(0x01, b"a"), c(0x81, b"b")].concat(),
            ProtocolError::ExpectedContinuation,
        ),
        (
            [c(0x01, b"a"), c(0x82, b"b")].concat(),
            ProtocolError::ExpectedContinuation,
        ),
        (c(0x88, &[3]), ProtocolError::InvalidClosePayload),
        (
            c(0x88, &[0x03, 0xed]),
            ProtocolError::InvalidCloseCode(1005),
        ),
        (c(0x88, &[0x03, 0xe7]), ProtocolError::InvalidCloseCode(999)),
        (
            c(0x88, &[0x03, 0xec]),
            ProtocolError::InvalidCloseCode(1004),
        ),
        (
            c(0x88, &[0x03, 0xee]),
            ProtocolError::InvalidCloseCode(1006),
        ),
        (
            c(0x88, &[0x03, 0xf7]),
            ProtocolError::InvalidCloseCode(1015),
        ),
        (
            c(0x88, &[0x07, 0xd0]),
            ProtocolError::InvalidCloseCode(2000),
        ),
        (
            c(0x88, &[0x13, 0x88]),
            ProtocolError::InvalidCloseCode(5000),
        ),
        (c(0x88, &[0x03, 0xe8, 0xff]), ProtocolError::InvalidUtf8),
        (c(0x81, &[0xff]), ProtocolError::InvalidUtf8),
        (
            vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4],
            ProtocolError::InvalidLength,
        ),
    ];
    for (input, expected) in cases {
        let got = decode_every_way(&WsConfig::default(), &input);
        assert_eq!(got, Err(expected.clone()), "input {input:02x?}");
        let code = expected.close_code();
        assert!(code == 1002 || code == 1007, "{expected:?}");
    }
}

#[test]
fn valid_close_frames() {
    for code in [
        1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
    ] {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice("bye ✓".as_bytes());
        let out = decode_every_way(&WsConfig::default(), &c(0x88, &payload)).unwrap();
        assert_eq!(out, [Message::Close(Some(CloseFrame::new(code, "bye ✓")))]);
    }
    assert_eq!(
        decode_all(&mut server(), &c(0x88, b"")).unwrap(),
        [Message::Close(None)]
    );
}

#[test]
fn nothing_after_close() {
    let mut d = server();
    let mut input = c(0x88, &[0x03, 0xe8]);
    input.extend(c(0x81, b"ignored"));
    input.extend([0xff, 0xff, 0xff]);
    assert_eq!(
        decode_all(&mut d, &input).unwrap(),
        [Message::Close(Some(CloseFrame::new(1000, "")))]
    );
    assert!(d.is_closed());
    assert_eq!(decode_all(&mut d, &c(0x81, b"more")).unwrap(), []);
}

#[test]
fn input_ignored_after_error() {
    let mut d = server();
    assert!(decode_all(&mut d, &c(0x83, b"")).is_err());
    assert!(d.is_failed());
    assert_eq!(decode_all(&mut d, &c(0x81, b"x")).unwrap(), []);
}

#[test]
fn messages_before_an_error_are_delivered() {
    let mut d = server();
    let mut out = Vec::new();
    let input = [c(0x81, b"ok"), c(0x83, b"")].concat();
    assert_eq!(
        d.decode(&input, &mut out),
        Err(ProtocolError::ReservedOpcode(3))
    );
    assert_eq!(out, [text("ok")]);
}

#[test]
fn size_limits() {
    let config = WsConfig::default().max_message_size(10);
    // One frame over the limit fails on its header, before any payload arrives.
    let frame = c(0x82, &[0; 11]);
    let mut d = Decoder::new(Role::Server, &config);
    assert_eq!(
        decode_all(&mut d, &frame[..6]),
        Err(ProtocolError::MessageTooBig { limit: 10 })
    );
    // Exactly at the limit is fine.
    assert_eq!(
        decode_every_way(&config, &c(0x82, &[7; 10])).unwrap(),
        [Message::Binary(vec![7; 10].into())]
    );
    // Fragments adding up past the limit.
    let input = [c(0x02, &[0; 6]), c(0x80, &[0; 5])].concat();
    assert_eq!(
        decode_every_way(&config, &input),
        Err(ProtocolError::MessageTooBig { limit: 10 })
    );
    // Frame limit below the message limit.
    let config = WsConfig::default().max_message_size(100).max_frame_size(4);
    let input = [c(0x02, &[0; 4]), c(0x80, &[0; 4])].concat();
    assert_eq!(decode_every_way(&config, &input).unwrap().len(), 1);
    assert_eq!(
        decode_every_way(&config, &c(0x82, &[0; 5])),
        Err(ProtocolError::MessageTooBig { limit: 4 })
    );
    assert_eq!(ProtocolError::MessageTooBig { limit: 4 }.close_code(), 1009);
    // A huge declared length is refused without allocating it.
    let mut d = server();
    let header = [0x82, 0xFF, 0, 0, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4];
    assert!(matches!(
        decode_all(&mut d, &header),
        Err(ProtocolError::MessageTooBig { .. })
    ));
}

#[test]
fn idle_decoder_holds_no_memory() {
    let mut d = server();
    assert!(d.is_idle());
    let frame = c(0x81, b"hello world");
    let mut out = Vec::new();
    d.decode(&frame[..1], &mut out).unwrap();
    assert!(!d.is_idle());
    d.decode(&frame[1..9], &mut out).unwrap();
    assert!(!d.is_idle());
    assert!(d.buffered_len() > 0);
    d.decode(&frame[9..], &mut out).unwrap();
    assert_eq!(out, [text("hello world")]);
    assert!(d.is_idle());
    assert_eq!(d.buffered_len(), 0);
    // Across a fragmented message with a control frame in the middle.
    let input = [c(0x01, b"ab"), c(0x89, b"p"), c(0x80, b"c")].concat();
    d.decode(&input[..10], &mut out).unwrap();
    assert!(!d.is_idle());
    d.decode(&input[10..], &mut out).unwrap();
    assert!(d.is_idle());
}

#[test]
fn roundtrip_all_message_kinds_both_directions() {
    let msgs = vec![
        text("hello"),
        Message::Binary(Bytes::from(vec![9u8; 70_000])),
        Message::Ping(Bytes::from_static(b"p")),
        Message::Pong(Bytes::new()),
        text(""),
        Message::Close(Some(CloseFrame::new(4000, "bye"))),
    ];
    let config = WsConfig::default().max_message_size(1 << 20);
    for (sender, receiver) in [(Role::Client, Role::Server), (Role::Server, Role::Client)] {
        let mut wire = BytesMut::new();
        for m in &msgs {
            encode_message(m, sender, &mut wire);
        }
        let mut d = Decoder::new(receiver, &config);
        let mut out = Vec::new();
        for piece in wire.chunks(1000) {
            d.decode(piece, &mut out).unwrap();
        }
        assert_eq!(out, msgs);
    }
}

#[test]
fn compressed_messages() {
    // "Hello" compressed without context (RFC 7692 §7.2.3.1), trailer stripped.
    let hello = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
    let params = DeflateParams {
        server_no_context_takeover: true,
        client_no_context_takeover: true,
        ..DeflateParams::default()
    };
    let config = WsConfig::default().compression(true);
    let mut d = Decoder::with_deflate(Role::Server, &config, Some(params));
    let mut input = c(0xC1, &hello);
    // Fragmented compressed message: RSV1 on the first frame only.
    input.extend(c(0x41, &hello[..3]));
    input.extend(c(0x89, b""));
    input.extend(c(0x80, &hello[3..]));
    // Uncompressed message on the same connection.
    input.extend(c(0x81, b"plain"));
    let out = decode_all(&mut d, &input).unwrap();
    assert_eq!(
        out,
        [
            text("Hello"),
            Message::Ping(Bytes::new()),
            text("Hello"),
            text("plain")
        ]
    );
    // RSV1 on a continuation frame is an error.
    let mut d = Decoder::with_deflate(Role::Server, &config, Some(params));
    let input = [c(0x41, &hello[..3]), c(0xC0, &hello[3..])].concat();
    assert_eq!(decode_all(&mut d, &input), Err(ProtocolError::ReservedBits));
    // The inflated size is limited too.
    let small = WsConfig::default().max_message_size(4);
    let mut d = Decoder::with_deflate(Role::Server, &small, Some(params));
    assert_eq!(
        decode_all(&mut d, &c(0xC1, &hello)),
        Err(ProtocolError::MessageTooBig { limit: 4 })
    );
    // Garbage.
    let mut d = Decoder::with_deflate(Role::Server, &config, Some(params));
    assert_eq!(
        decode_all(&mut d, &c(0xC1, &[0xff, 0xff, 0xff, 0xff])),
        Err(ProtocolError::InvalidCompressedData)
    );
}

#[test]
fn public_types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Decoder>();
    check::<Message>();
    check::<WsConfig>();
    check::<ProtocolError>();
    check::<switchboard_ws::HandshakeError>();
    check::<switchboard_ws::UpgradeInfo>();
    check::<switchboard_ws::ClientHandshake>();
    check::<DeflateParams>();
}

/// Random messages, randomly fragmented, with pings in between, fed in random pieces.
#[test]
fn randomized_fragmentation_roundtrip() {
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let alphabet = ['a', 'é', '€', '𝄞', '\n', '{', '"'];
    let config = WsConfig::default().max_message_size(1 << 20);
    for _round in 0..200 {
        let mut wire = Vec::new();
        let mut expected = Vec::new();
        for _ in 0..rng.usize(1..8) {
            let is_text = rng.bool();
            let payload: Vec<u8> = if is_text {
                (0..rng.usize(0..300))
                    .map(|_| alphabet[rng.usize(..alphabet.len())])
                    .collect::<String>()
                    .into_bytes()
            } else {
                (0..rng.usize(0..3000)).map(|_| rng.u8(..)).collect()
            };
            // Split into fragments at arbitrary byte offsets (also inside code points).
            let mut cuts: Vec<usize> = (0..rng.usize(0..4))
                .map(|_| rng.usize(0..=payload.len()))
                .collect();
            cuts.sort_unstable();
            let mut bounds = vec![0];
            bounds.extend(cuts);
            bounds.push(payload.len());
            let n = bounds.len() - 1;
            for i in 0..n {
                let fin = if i == n - 1 { 0x80 } else { 0 };
                let op = if i > 0 {
                    0
                } else if is_text {
                    1
                } else {
                    2
                };
                let key = [rng.u8(..), rng.u8(..), rng.u8(..), rng.u8(..)];
                wire.extend(raw(fin | op, &payload[bounds[i]..bounds[i + 1]], Some(key)));
                if rng.u8(..4) == 0 {
                    wire.extend(c(0x89, b"p"));
                    expected.push(Message::Ping(Bytes::from_static(b"p")));
                }
            }
            expected.push(if is_text {
                Message::Text(payload.into())
            } else {
                Message::Binary(payload.into())
            });
        }
        // Pings inside a message are reported before it: reorder `expected` accordingly by
        // decoding whole first, then check every random split against it.
        let whole = decode_all(&mut Decoder::new(Role::Server, &config), &wire).unwrap();
        let mut sorted_whole = whole.clone();
        let mut sorted_expected = expected.clone();
        let key = |m: &Message| format!("{m:?}");
        sorted_whole.sort_by_key(key);
        sorted_expected.sort_by_key(key);
        assert_eq!(sorted_whole, sorted_expected);
        let mut d = Decoder::new(Role::Server, &config);
        let mut out = Vec::new();
        let mut rest = &wire[..];
        while !rest.is_empty() {
            let n = rng.usize(1..=rest.len().min(700));
            d.decode(&rest[..n], &mut out).unwrap();
            rest = &rest[n..];
        }
        assert_eq!(out, whole);
        assert!(d.is_idle());
    }
}
