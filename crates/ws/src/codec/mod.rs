//! The sans-I/O half: frames, message assembly, close frames, handshakes and
//! permessage-deflate. Bytes in, [`Message`]s out, and back; nothing here touches a socket,
//! a clock or a runtime.
//!
//! Modules, bottom up:
//! - frame header encoding and masking ([`encode_header`], [`apply_mask`], [`encode_frame`]);
//! - message assembly with every RFC 6455 rule enforced ([`Decoder`]);
//! - close frames and codes ([`CloseFrame`], [`is_valid_close_code`]);
//! - the opening handshake for both roles ([`validate_upgrade`], [`ClientHandshake`]);
//! - permessage-deflate (RFC 7692) negotiation and (de)compression ([`DeflateParams`]).

mod close;
mod decoder;
mod deflate;
mod error;
mod frame;
mod handshake;
mod message;
mod utf8;

use std::time::Duration;

pub use close::{is_valid_close_code, CloseFrame};
pub use decoder::Decoder;
pub use deflate::{compress_payload, DeflateParams};
pub use error::{HandshakeError, ProtocolError};
pub use frame::{
    apply_mask, encode_close_payload, encode_frame, encode_header, encode_header_rsv1,
    encode_message, header_len, random_mask, OpCode, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN,
};
pub use handshake::{accept_key, validate_upgrade, ClientHandshake, ClientResponse, UpgradeInfo};
pub use message::Message;

/// Which end of a connection this endpoint is. It decides masking: a client masks every
/// frame it sends with a fresh random key and requires unmasked frames from the server; a
/// server does the reverse (RFC 6455 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Accepts connections: expects masked frames, sends unmasked ones.
    Server,
    /// Opens connections: sends masked frames, expects unmasked ones.
    Client,
}

/// Limits and options of one connection.
///
/// Build it with [`WsConfig::default`] and the chained setters; fields are public for
/// reading. Defaults:
///
/// | field | default | why |
/// | --- | --- | --- |
/// | `max_message_size` | 64 KiB | a Centrifugo command batch is far smaller; bounds memory per connection |
/// | `max_frame_size` | `None` = same as `max_message_size` | |
/// | `compression` | `false` | permessage-deflate costs CPU per message and per connection |
/// | `close_timeout` | 5 s | how long [`close`](crate::WsSocket::close) waits for the peer to hang up |
/// | `max_control_frames_per_second` | `Some(100)` | pings and pongs a peer may send per second before the connection is failed with close code 1008; a well-behaved peer sends a few per minute, a flood costs us a reply each |
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsConfig {
    /// Largest message (after reassembly and after decompression) accepted, in bytes.
    /// A bigger one fails the connection with close code 1009.
    pub max_message_size: usize,
    /// Largest single frame payload accepted, in bytes; `None` means `max_message_size`.
    pub max_frame_size: Option<usize>,
    /// Whether permessage-deflate (RFC 7692) may be negotiated in the handshake.
    pub compression: bool,
    /// How long [`WsSocket::close`](crate::WsSocket::close) waits for the peer to close the
    /// TCP connection after the close frames were exchanged.
    pub close_timeout: Duration,
    /// Most control frames (pings and pongs) accepted from the peer within one second; one
    /// more fails the connection with [`ProtocolError::TooManyControlFrames`] (close code 1008,
    /// policy violation). `None`: no limit. Counted in fixed one-second windows by the socket
    /// ([`WsSocket`](crate::WsSocket)); the sans-I/O [`Decoder`] has no clock and ignores it.
    ///
    /// Whatever the limit, replies are bounded: a socket keeps at most a few automatic pongs
    /// queued and answers only the most recent of the pings that arrive beyond them (RFC 6455
    /// §5.5.3 allows it), so a peer that pings without reading cannot grow our memory.
    pub max_control_frames_per_second: Option<u32>,
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            max_message_size: 64 << 10,
            max_frame_size: None,
            compression: false,
            close_timeout: Duration::from_secs(5),
            max_control_frames_per_second: Some(100),
        }
    }
}

impl WsConfig {
    /// Sets the largest accepted message size in bytes.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Sets the largest accepted frame payload in bytes (default: `max_message_size`).
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.max_frame_size = Some(bytes);
        self
    }

    /// Allows (or forbids) negotiating permessage-deflate.
    pub fn compression(mut self, enabled: bool) -> Self {
        self.compression = enabled;
        self
    }

    /// Sets how long a closing socket waits for the peer to hang up.
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }

    /// Sets how many control frames (pings and pongs) the peer may send per second; `None`
    /// for no limit.
    pub fn max_control_frames_per_second(mut self, limit: Option<u32>) -> Self {
        self.max_control_frames_per_second = limit;
        self
    }

    /// The frame payload limit in force: `max_frame_size`, or `max_message_size` when unset.
    pub fn effective_max_frame_size(&self) -> usize {
        self.max_frame_size.unwrap_or(self.max_message_size)
    }
}
