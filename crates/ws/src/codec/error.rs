//! Error types of the codec.

use http::StatusCode;

/// A violation of RFC 6455 (or RFC 7692) by the peer, detected while decoding.
///
/// Every variant maps to the close code that must be sent before failing the connection
/// ([`ProtocolError::close_code`]). After one is returned the [`Decoder`](super::Decoder)
/// ignores further input: send a Close frame with that code and drop the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// RSV2/RSV3 set, or RSV1 set without a negotiated extension, on a control frame or on a
    /// continuation frame. Close code 1002.
    #[error("reserved bits set in frame header")]
    ReservedBits,
    /// An opcode that RFC 6455 reserves (3-7, 0xB-0xF). Close code 1002.
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    /// A server received an unmasked frame. Close code 1002.
    #[error("client frame is not masked")]
    UnmaskedFrame,
    /// A client received a masked frame. Close code 1002.
    #[error("server frame is masked")]
    MaskedFrame,
    /// A control frame (close, ping, pong) without FIN. Close code 1002.
    #[error("fragmented control frame")]
    FragmentedControlFrame,
    /// A control frame with more than 125 payload bytes. Close code 1002.
    #[error("control frame payload longer than 125 bytes")]
    ControlFrameTooLong,
    /// A continuation frame without a fragmented message in progress. Close code 1002.
    #[error("continuation frame without a message to continue")]
    UnexpectedContinuation,
    /// A new text or binary frame while a fragmented message is in progress. Close code 1002.
    #[error("new data frame while a fragmented message is in progress")]
    ExpectedContinuation,
    /// A 64-bit payload length with its most significant bit set. Close code 1002.
    #[error("invalid payload length")]
    InvalidLength,
    /// A close frame with a one-byte payload. Close code 1002.
    #[error("close frame payload of one byte")]
    InvalidClosePayload,
    /// A close frame whose status code may not be sent on the wire. Close code 1002.
    #[error("invalid close code {0}")]
    InvalidCloseCode(u16),
    /// A text message or close reason that is not UTF-8. Close code 1007.
    #[error("invalid UTF-8 in text message or close reason")]
    InvalidUtf8,
    /// A compressed message that does not inflate. Close code 1007.
    #[error("invalid permessage-deflate data")]
    InvalidCompressedData,
    /// A frame or message larger than the configured limit. Close code 1009.
    #[error("message larger than the limit of {limit} bytes")]
    MessageTooBig {
        /// The limit that was exceeded, in bytes.
        limit: usize,
    },
    /// The peer sent more control frames (pings, pongs) in one second than
    /// [`WsConfig::max_control_frames_per_second`](super::WsConfig::max_control_frames_per_second)
    /// allows. Not an RFC 6455 rule but our policy against ping floods: close code 1008.
    /// Reported by [`WsSocket`](crate::WsSocket) (the [`Decoder`](super::Decoder) has no clock).
    #[error("more than {limit} control frames in one second")]
    TooManyControlFrames {
        /// The limit that was exceeded, in frames per second.
        limit: u32,
    },
}

impl ProtocolError {
    /// The close code to send when failing the connection for this error:
    /// 1002 (protocol error), 1007 (invalid payload data), 1008 (policy violation: control
    /// frame flood) or 1009 (message too big).
    pub fn close_code(&self) -> u16 {
        match self {
            ProtocolError::InvalidUtf8 | ProtocolError::InvalidCompressedData => 1007,
            ProtocolError::TooManyControlFrames { .. } => 1008,
            ProtocolError::MessageTooBig { .. } => 1009,
            _ => 1002,
        }
    }
}

/// A failed opening handshake, on either side.
///
/// Server-side variants come from [`validate_upgrade`](super::validate_upgrade): answer with
/// [`HandshakeError::status_code`] (and, for
/// [`UnsupportedVersion`](HandshakeError::UnsupportedVersion), a
/// `Sec-WebSocket-Version: 13` header). Client-side variants come from
/// [`ClientHandshake::parse_response`](super::ClientHandshake::parse_response): the server
/// refused or spoke something else; drop the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The upgrade request did not use GET.
    #[error("websocket upgrade requires GET")]
    MethodNotGet,
    /// No `Connection: upgrade` token.
    #[error("missing `Connection: upgrade` header")]
    MissingConnectionUpgrade,
    /// No `Upgrade: websocket` token.
    #[error("missing `Upgrade: websocket` header")]
    MissingUpgradeWebsocket,
    /// `Sec-WebSocket-Version` missing or not 13.
    #[error("unsupported `Sec-WebSocket-Version` (only 13 is supported)")]
    UnsupportedVersion,
    /// `Sec-WebSocket-Key` missing.
    #[error("missing `Sec-WebSocket-Key` header")]
    MissingKey,
    /// `Sec-WebSocket-Key` is not 16 bytes in base64.
    #[error("invalid `Sec-WebSocket-Key` header")]
    InvalidKey,
    /// Client side: the server's answer is not parseable HTTP/1.1.
    #[error("malformed handshake response: {0}")]
    MalformedResponse(String),
    /// Client side: the server's answer is larger than the limit without being complete.
    #[error("handshake response too large")]
    ResponseTooLarge,
    /// Client side: the server answered with a status other than 101.
    #[error("server answered the upgrade with status {0}")]
    UnexpectedStatus(u16),
    /// Client side: `Sec-WebSocket-Accept` missing or wrong.
    #[error("missing or wrong `Sec-WebSocket-Accept`")]
    InvalidAcceptKey,
    /// Client side: the server selected an extension or parameter that was not offered.
    #[error("server selected an extension that was not offered: {0}")]
    UnexpectedExtension(String),
    /// Client side: the server selected a subprotocol that was not offered.
    #[error("server selected a subprotocol that was not offered: {0}")]
    UnexpectedProtocol(String),
}

impl HandshakeError {
    /// The HTTP status a server should answer a failed upgrade request with:
    /// 426 Upgrade Required for a version mismatch, 405 for a non-GET method, 400 otherwise.
    pub fn status_code(&self) -> StatusCode {
        match self {
            HandshakeError::UnsupportedVersion => StatusCode::UPGRADE_REQUIRED,
            HandshakeError::MethodNotGet => StatusCode::METHOD_NOT_ALLOWED,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}
