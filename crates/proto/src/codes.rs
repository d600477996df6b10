//! Error codes (in replies) and disconnect codes (in close frames and disconnect pushes).
//!
//! The numbers and their meaning follow the Centrifugo client protocol so that existing SDKs react
//! correctly: error codes 100..=199 in a reply's `error`, disconnect codes 3000..=4999 where
//! 3000..=3499 and 4000..=4499 advise the client to reconnect and 3500..=3999 and 4500..=4999 tell
//! it not to.

use std::fmt;

/// An error code and message sent to a client in a reply's `error` field.
///
/// The connection stays open after an error reply; only the command failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode {
    /// Numeric code, stable across versions.
    pub code: u32,
    /// Short human-readable message, stable for a given code.
    pub message: &'static str,
    /// Whether retrying the same command later may succeed.
    pub temporary: bool,
}

impl ErrorCode {
    /// 100: something failed inside the server; retry later.
    pub const INTERNAL: Self = Self::new(100, "internal server error", true);
    /// 100, with a message saying more: the command reached the broker (or may have) but no
    /// answer came, so it may have taken effect. A `publish` answered with this may have been
    /// published; retried with the same idempotency key it is published at most once. Counted
    /// and documented as code 100 (it is not a separate entry of [`ErrorCode::ALL`]).
    pub const OUTCOME_UNKNOWN: Self =
        Self::new(100, "internal server error: outcome unknown", true);
    /// 101: the connection is not authenticated or the credentials are not accepted.
    pub const UNAUTHORIZED: Self = Self::permanent(101, "unauthorized");
    /// 102: the channel name is invalid or its namespace does not exist.
    pub const UNKNOWN_CHANNEL: Self = Self::permanent(102, "unknown channel");
    /// 103: the namespace options do not allow this client to do this.
    pub const PERMISSION_DENIED: Self = Self::permanent(103, "permission denied");
    /// 104: the method is unknown or not available on this server (for example rpc without a proxy).
    pub const METHOD_NOT_FOUND: Self = Self::permanent(104, "method not found");
    /// 105: the client is already subscribed to the channel.
    pub const ALREADY_SUBSCRIBED: Self = Self::permanent(105, "already subscribed");
    /// 106: a configured limit (channels per connection, message size, ...) was exceeded.
    pub const LIMIT_EXCEEDED: Self = Self::permanent(106, "limit exceeded");
    /// 107: the command is malformed or misses a required field.
    pub const BAD_REQUEST: Self = Self::permanent(107, "bad request");
    /// 108: the feature is not enabled for this channel (for example history or presence).
    pub const NOT_AVAILABLE: Self = Self::permanent(108, "not available");
    /// 109: the connection token expired; the client should refresh it.
    pub const TOKEN_EXPIRED: Self = Self::permanent(109, "token expired");
    /// 110: the connection or subscription expired.
    pub const EXPIRED: Self = Self::permanent(110, "expired");
    /// 111: the client sends commands faster than allowed.
    pub const TOO_MANY_REQUESTS: Self = Self::new(111, "too many requests", true);
    /// 112: the requested stream position is no longer in history.
    pub const UNRECOVERABLE_POSITION: Self = Self::permanent(112, "unrecoverable position");

    /// Every error code the server may send, for documentation and metrics.
    pub const ALL: [Self; 13] = [
        Self::INTERNAL,
        Self::UNAUTHORIZED,
        Self::UNKNOWN_CHANNEL,
        Self::PERMISSION_DENIED,
        Self::METHOD_NOT_FOUND,
        Self::ALREADY_SUBSCRIBED,
        Self::LIMIT_EXCEEDED,
        Self::BAD_REQUEST,
        Self::NOT_AVAILABLE,
        Self::TOKEN_EXPIRED,
        Self::EXPIRED,
        Self::TOO_MANY_REQUESTS,
        Self::UNRECOVERABLE_POSITION,
    ];

    const fn new(code: u32, message: &'static str, temporary: bool) -> Self {
        Self {
            code,
            message,
            temporary,
        }
    }
}

impl ErrorCode {
    const fn permanent(code: u32, message: &'static str) -> Self {
        Self::new(code, message, false)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

/// So that callers of server-side actions can use `?` into their own error types (`anyhow`).
impl std::error::Error for ErrorCode {}

/// Why the server closes a connection: a code, a reason and whether the client should reconnect.
///
/// Over WebSocket it travels as the close frame's status code and reason; over one-way transports
/// as a `disconnect` push.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DisconnectCode {
    /// Numeric code in 3000..=4999.
    pub code: u16,
    /// Short reason, at most 123 bytes so it fits a WebSocket close frame.
    pub reason: &'static str,
}

impl DisconnectCode {
    /// 3000: the connection was closed (normal end of a one-way transport session).
    pub const CONNECTION_CLOSED: Self = Self::new(3000, "connection closed");
    /// 3001: the node is shutting down; reconnect (to another node).
    pub const SHUTDOWN: Self = Self::new(3001, "shutdown");
    /// 3004: an internal error on the server; reconnect.
    pub const SERVER_ERROR: Self = Self::new(3004, "internal server error");
    /// 3005: the connection's credentials expired; reconnect with a fresh token.
    pub const EXPIRED: Self = Self::new(3005, "connection expired");
    /// 3006: a subscription's credentials expired; reconnect.
    pub const SUB_EXPIRED: Self = Self::new(3006, "subscription expired");
    /// 3008: the client did not read fast enough and its outbound queue overflowed; reconnect.
    pub const SLOW: Self = Self::new(3008, "slow");
    /// 3009: writing to the connection failed; reconnect.
    pub const WRITE_ERROR: Self = Self::new(3009, "write error");
    /// 3010: the server lost state needed for this connection (for example a broker gap); reconnect.
    pub const INSUFFICIENT_STATE: Self = Self::new(3010, "insufficient state");
    /// 3011: the server asks the client to reconnect (server API `disconnect` with reconnect).
    pub const FORCE_RECONNECT: Self = Self::new(3011, "force reconnect");
    /// 3012: the client did not answer pings in time; reconnect.
    pub const NO_PONG: Self = Self::new(3012, "no pong");
    /// 3013: the client sent commands faster than allowed; reconnect later.
    pub const TOO_MANY_REQUESTS: Self = Self::new(3013, "too many requests");
    /// 3500: the connection token is invalid; do not reconnect with it.
    pub const INVALID_TOKEN: Self = Self::new(3500, "invalid token");
    /// 3501: the client sent something that is not valid protocol (malformed JSON, binary frame
    /// on a JSON connection, a frame over the size limit, commands before connect); do not
    /// reconnect without a fix.
    pub const BAD_REQUEST: Self = Self::new(3501, "bad request");
    /// 3502: the client did not send `connect` within the handshake timeout.
    pub const STALE: Self = Self::new(3502, "stale");
    /// 3503: the server disconnected the client on purpose and asks it not to reconnect.
    pub const FORCE_NO_RECONNECT: Self = Self::new(3503, "force disconnect");
    /// 3504: too many connections (on the node or for the user).
    pub const CONNECTION_LIMIT: Self = Self::new(3504, "connection limit");
    /// 3505: the client tried to hold more channels than allowed.
    pub const CHANNEL_LIMIT: Self = Self::new(3505, "channel limit");
    /// 3506: the client used a protocol feature this connection does not support.
    pub const INAPPROPRIATE_PROTOCOL: Self = Self::new(3506, "inappropriate protocol");
    /// 3507: the client is not allowed to stay connected.
    pub const PERMISSION_DENIED: Self = Self::new(3507, "permission denied");
    /// 3508: the requested feature is not available.
    pub const NOT_AVAILABLE: Self = Self::new(3508, "not available");
    /// 3509: the client produced too many errors.
    pub const TOO_MANY_ERRORS: Self = Self::new(3509, "too many errors");

    /// Every disconnect code the server may send, for documentation and metrics.
    pub const ALL: [Self; 21] = [
        Self::CONNECTION_CLOSED,
        Self::SHUTDOWN,
        Self::SERVER_ERROR,
        Self::EXPIRED,
        Self::SUB_EXPIRED,
        Self::SLOW,
        Self::WRITE_ERROR,
        Self::INSUFFICIENT_STATE,
        Self::FORCE_RECONNECT,
        Self::NO_PONG,
        Self::TOO_MANY_REQUESTS,
        Self::INVALID_TOKEN,
        Self::BAD_REQUEST,
        Self::STALE,
        Self::FORCE_NO_RECONNECT,
        Self::CONNECTION_LIMIT,
        Self::CHANNEL_LIMIT,
        Self::INAPPROPRIATE_PROTOCOL,
        Self::PERMISSION_DENIED,
        Self::NOT_AVAILABLE,
        Self::TOO_MANY_ERRORS,
    ];

    const fn new(code: u16, reason: &'static str) -> Self {
        Self { code, reason }
    }

    /// An application-defined disconnect (codes 4000..=4999 by convention), for example from the
    /// server API. Reasons are interned: at most [`MAX_CUSTOM_REASONS`] distinct reasons are kept
    /// for the life of the process, later new ones become `"custom"`. Reasons are cut to 123
    /// bytes to fit a close frame.
    pub fn custom(code: u16, reason: &str) -> Self {
        Self {
            code,
            reason: intern_reason(reason),
        }
    }

    /// A disconnect chosen by an application (server API, backend proxy): one of ours by its
    /// code, or an application code in 4000..=4999 with a reason of at most 123 bytes. `None`
    /// for anything else, so that codes a close frame must not carry (1005, 1006, 1015, ...) or
    /// that would mislead clients about reconnecting never reach the wire.
    pub fn application(code: u16, reason: &str) -> Option<Self> {
        if let Some(known) = Self::ALL.iter().find(|d| d.code == code) {
            return Some(*known);
        }
        ((4000..=4999).contains(&code) && reason.len() <= 123).then(|| Self::custom(code, reason))
    }

    /// Whether a client receiving this code should reconnect.
    pub const fn reconnect(&self) -> bool {
        matches!(self.code, 3000..=3499 | 4000..=4499)
    }
}

impl fmt::Display for DisconnectCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.reason, self.code)
    }
}

/// Most distinct custom disconnect reasons kept (see [`DisconnectCode::custom`]).
pub const MAX_CUSTOM_REASONS: usize = 256;

fn intern_reason(reason: &str) -> &'static str {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static REASONS: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason[..end];
    let mut set = REASONS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(known) = set.get(reason) {
        return known;
    }
    if set.len() >= MAX_CUSTOM_REASONS {
        return "custom";
    }
    // Bounded by MAX_CUSTOM_REASONS: this leaks at most 256 short strings per process.
    let leaked: &'static str = Box::leak(reason.to_owned().into_boxed_str());
    set.insert(leaked);
    leaked
}

/// A frame from the client could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// A line of the frame is not a JSON object of the expected shape. The connection should be
    /// closed with [`DisconnectCode::BAD_REQUEST`].
    #[error("malformed command: {0}")]
    Malformed(#[from] serde_json::Error),
    /// The frame holds more commands than the configured limit.
    #[error("too many commands in one frame")]
    TooManyCommands,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_ranges() {
        assert!(DisconnectCode::SHUTDOWN.reconnect());
        assert!(DisconnectCode::SLOW.reconnect());
        assert!(!DisconnectCode::BAD_REQUEST.reconnect());
        assert!(!DisconnectCode::INVALID_TOKEN.reconnect());
    }

    #[test]
    fn custom_reasons_are_interned_and_cut() {
        let a = DisconnectCode::custom(4001, "kicked");
        let b = DisconnectCode::custom(4001, "kicked");
        assert!(std::ptr::eq(a.reason, b.reason));
        assert_eq!(
            DisconnectCode::custom(4002, &"x".repeat(300)).reason.len(),
            123
        );
        assert!(!DisconnectCode::custom(4600, "bye").reconnect());
    }

    #[test]
    fn codes_are_unique_and_reasons_fit_close_frame() {
        let mut seen = std::collections::HashSet::new();
        for d in DisconnectCode::ALL {
            assert!(seen.insert(d.code));
            assert!(d.reason.len() <= 123);
        }
        let mut seen = std::collections::HashSet::new();
        for e in ErrorCode::ALL {
            assert!(seen.insert(e.code));
        }
    }
}
