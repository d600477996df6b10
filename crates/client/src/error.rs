//! [`ClientError`]: why a client operation failed.

use std::io;

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server answered the command with an error. `code` is a Centrifugo error code (for
    /// example 103 permission denied, 102 unknown channel). When `temporary` is set, retrying
    /// later may succeed; otherwise fix the request.
    #[error("server error {code}: {message}")]
    Server {
        /// Error code from the reply.
        code: u32,
        /// Error message from the reply.
        message: String,
        /// Whether the server marked the error as temporary.
        temporary: bool,
    },
    /// The connection ended before the reply arrived, or the client is closed for good.
    /// `code` is the close code (or disconnect push code) the server sent, 1006 when the
    /// transport failed without one, 1000 after [`Client::disconnect`](crate::Client::disconnect).
    /// A request that failed this way may or may not have been executed by the server.
    #[error("disconnected ({code}): {reason}")]
    Disconnected {
        /// Disconnect code.
        code: u32,
        /// Disconnect reason.
        reason: String,
    },
    /// No reply within the configured request timeout
    /// ([`ClientBuilder::timeout`](crate::ClientBuilder::timeout)). The command may still be
    /// executed by the server; a late reply is discarded.
    #[error("request timed out")]
    Timeout,
    /// Connecting failed at the transport level (TCP connect, socket error). Retry later.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// The server (or the caller) broke the protocol: a bad URL, a failed WebSocket handshake,
    /// a reply that is not valid JSON of the expected shape. Retrying the same way will not help.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl ClientError {
    /// Whether this is an error reply from the server with `code`.
    pub fn is_server_code(&self, code: u32) -> bool {
        matches!(self, ClientError::Server { code: c, .. } if *c == code)
    }

    pub(crate) fn protocol(msg: impl std::fmt::Display) -> Self {
        ClientError::Protocol(msg.to_string())
    }
}
