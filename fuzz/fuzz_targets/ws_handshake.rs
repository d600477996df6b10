//! The opening handshake of `switchboard_ws` on arbitrary bytes, both sides.
//!
//! Input: one flags byte, then an HTTP/1.1 message.
//! - flags bit 0 clear (server side): the bytes are an upgrade request. It is parsed the way a
//!   server's HTTP layer would (httparse, the header map hyper hands to axum) and checked with
//!   `validate_upgrade`; bit 1 allows permessage-deflate.
//! - flags bit 0 set (client side): the bytes are the server's answer, checked with
//!   `ClientHandshake::parse_response`; bit 1 offers permessage-deflate, bit 2 offers the
//!   subprotocols `centrifuge-json` and `centrifuge-protobuf`, and bit 3 puts a status line and
//!   the correct `Sec-WebSocket-Accept` for the (seeded, so fixed) key before the bytes, so the
//!   fuzzer gets past the accept check to the extension and subprotocol parsing.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use switchboard_ws::{accept_key, validate_upgrade, ClientHandshake, WsConfig};

fn server(request: &[u8], compression: bool) {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = req.parse(request) else {
        return;
    };
    let Some(Ok(method)) = req.method.map(|m| Method::from_bytes(m.as_bytes())) else {
        return;
    };
    let mut map = HeaderMap::new();
    for h in req.headers.iter() {
        // hyper refuses requests with such headers before any handler sees them.
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return;
        };
        map.append(name, value);
    }
    let config = WsConfig::default().compression(compression);
    match validate_upgrade(&map, &method, &config) {
        Ok(info) => {
            assert_eq!(method, Method::GET);
            assert_eq!(
                info.accept_key.len(),
                28,
                "SHA-1 in base64 is 28 characters"
            );
            assert!(compression || info.deflate.is_none());
            // The answer is made of valid header values.
            let answer = info.response_headers();
            assert!(answer.contains_key(http::header::SEC_WEBSOCKET_ACCEPT));
            assert_eq!(
                answer.contains_key(http::header::SEC_WEBSOCKET_EXTENSIONS),
                info.deflate.is_some()
            );
            let _ = info.offers_protocol("centrifuge-json");
        }
        Err(e) => {
            let status = e.status_code();
            assert!(status.is_client_error(), "{e:?} answers {status}");
        }
    }
}

fn client(answer: &[u8], flags: u8) {
    // The key is random: seed the thread's generator so that it is the same on every run.
    fastrand::seed(0x5eed);
    let config = WsConfig::default().compression(flags & 2 != 0);
    let mut hs = ClientHandshake::new("127.0.0.1:8000", "/connection/websocket", &config);
    if flags & 4 != 0 {
        hs = hs
            .protocol("centrifuge-json")
            .protocol("centrifuge-protobuf");
    }
    let mut buf = Vec::with_capacity(answer.len() + 96);
    if flags & 8 != 0 {
        buf.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: ");
        buf.extend_from_slice(accept_key(hs.key().as_bytes()).as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
    buf.extend_from_slice(answer);
    if let Ok(Some(resp)) = hs.parse_response(&buf) {
        assert!(resp.consumed <= buf.len());
        assert!(
            flags & 2 != 0 || resp.deflate.is_none(),
            "deflate not offered"
        );
        if let Some(p) = &resp.protocol {
            assert!(flags & 4 != 0, "subprotocol {p:?} not offered");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    if flags & 1 == 0 {
        server(rest, flags & 2 != 0);
    } else {
        client(rest, flags);
    }
});
