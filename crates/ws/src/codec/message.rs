//! The unit of the API: one whole message (or control frame).

use bytes::Bytes;

use super::close::CloseFrame;

/// A complete WebSocket message, or a control frame.
///
/// Payloads are [`Bytes`], so one encoded payload can be shared by many connections.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Message {
    /// A text message. Decoded ones are validated UTF-8; the sender of an outgoing one
    /// promises UTF-8 (see [`Message::text`]).
    Text(Bytes),
    /// A binary message.
    Binary(Bytes),
    /// A ping (at most 125 bytes of payload).
    Ping(Bytes),
    /// A pong (at most 125 bytes of payload).
    Pong(Bytes),
    /// A close frame, with or without a status.
    Close(Option<CloseFrame>),
}

impl Message {
    /// A text message from a string (UTF-8 by construction).
    pub fn text(s: impl Into<String>) -> Self {
        Message::Text(Bytes::from(s.into()))
    }

    /// A binary message.
    pub fn binary(b: impl Into<Bytes>) -> Self {
        Message::Binary(b.into())
    }

    /// A close message with a status code and reason.
    pub fn close(code: u16, reason: impl Into<String>) -> Self {
        Message::Close(Some(CloseFrame::new(code, reason)))
    }

    /// The text of a text message, `None` for other kinds (or non-UTF-8 user-built text).
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Message::Text(b) => simdutf8::basic::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// The payload of a data or ping/pong message; empty for close.
    pub fn payload(&self) -> &[u8] {
        match self {
            Message::Text(b) | Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b,
            Message::Close(_) => &[],
        }
    }

    /// Whether this is a text or binary message.
    pub fn is_data(&self) -> bool {
        matches!(self, Message::Text(_) | Message::Binary(_))
    }

    /// Whether this is a ping, pong or close.
    pub fn is_control(&self) -> bool {
        !self.is_data()
    }
}
