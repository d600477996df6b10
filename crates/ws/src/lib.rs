//! Switchboard's own RFC 6455 WebSocket stack.
//!
//! Two layers:
//! - [`codec`] (always available, no runtime): frame encoding and masking, a [`Decoder`]
//!   that assembles messages and enforces every rule of RFC 6455, close codes, the opening
//!   handshake for servers ([`validate_upgrade`]) and clients ([`ClientHandshake`]), and
//!   permessage-deflate (RFC 7692).
//! - `socket` (feature `tokio`, on by default): [`WsSocket`], a connection over any
//!   `AsyncRead + AsyncWrite` built for many mostly-idle connections.
//!
//! # Why not tungstenite
//! Two requirements: an idle connection holds **no buffers** (reads go through a thread-local
//! scratch buffer, writes through another; per-connection buffers exist only while a partial
//! frame or an unwritten tail is pending), and one encoded payload is **shared by every
//! subscriber** (`queue_text_batch` takes `Bytes` and writes them without per-connection
//! re-encoding). Neither fits an API built around owned per-connection read/write buffers.
//!
//! # What it deliberately does not do
//! - TLS, HTTP parsing beyond the handshake, routing: use hyper/axum (server) or a raw
//!   `TcpStream` (client).
//! - Automatic pings or timeouts: the application protocol has its own heartbeats.
//! - Context takeover for what *we* compress: every message is compressed on its own, so
//!   compressors are shared per thread (see [`DeflateParams`]).
//!
//! # Example (sans-I/O)
//! ```
//! use bytes::BytesMut;
//! use switchboard_ws::{encode_message, Decoder, Message, Role, WsConfig};
//!
//! // What a client sends...
//! let mut wire = BytesMut::new();
//! encode_message(&Message::text("hello"), Role::Client, &mut wire);
//! encode_message(&Message::Ping("p".into()), Role::Client, &mut wire);
//!
//! // ...arrives at the server in arbitrary pieces.
//! let mut decoder = Decoder::new(Role::Server, &WsConfig::default());
//! let mut out = Vec::new();
//! for piece in wire.chunks(3) {
//!     decoder.decode(piece, &mut out).unwrap();
//! }
//! assert_eq!(out, [Message::text("hello"), Message::Ping("p".into())]);
//! assert!(decoder.is_idle());
//! ```

pub mod codec;
#[cfg(feature = "tokio")]
pub mod socket;

pub use codec::{
    accept_key, apply_mask, compress_payload, encode_close_payload, encode_frame, encode_header,
    encode_header_rsv1, encode_message, header_len, is_valid_close_code, random_mask,
    validate_upgrade, ClientHandshake, ClientResponse, CloseFrame, Decoder, DeflateParams,
    HandshakeError, Message, OpCode, ProtocolError, Role, UpgradeInfo, WsConfig,
    MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN,
};
#[cfg(feature = "tokio")]
pub use socket::{WsError, WsSocket, MAX_QUEUED_PONGS};
