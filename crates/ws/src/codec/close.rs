//! Close frames and close codes (RFC 6455 §5.5.1, §7.4).

use super::error::ProtocolError;

/// The body of a Close frame: a status code and a UTF-8 reason.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CloseFrame {
    /// The status code, e.g. 1000 (normal) or an application code in 3000-4999.
    pub code: u16,
    /// Human-readable reason; at most 123 bytes go on the wire (longer ones are cut at a
    /// character boundary when encoded).
    pub reason: String,
}

impl CloseFrame {
    /// A close frame with `code` and `reason`.
    pub fn new(code: u16, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }
}

/// Whether `code` may appear in a Close frame on the wire: 1000-1003, 1007-1011 (and 1012-1014,
/// registered later by IANA) and 3000-4999. 1004-1006, 1015, values below 1000 and 1016-2999 are
/// not allowed.
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Parses a received Close payload: empty means "no status", one byte is a protocol error,
/// otherwise a valid code plus a UTF-8 reason.
pub(crate) fn parse_close_payload(payload: &[u8]) -> Result<Option<CloseFrame>, ProtocolError> {
    match payload {
        [] => Ok(None),
        [_] => Err(ProtocolError::InvalidClosePayload),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !is_valid_close_code(code) {
                return Err(ProtocolError::InvalidCloseCode(code));
            }
            let reason =
                simdutf8::basic::from_utf8(reason).map_err(|_| ProtocolError::InvalidUtf8)?;
            Ok(Some(CloseFrame::new(code, reason)))
        }
    }
}

/// Cuts `reason` to at most `max` bytes at a character boundary.
pub(crate) fn truncate_reason(reason: &str, max: usize) -> &str {
    if reason.len() <= max {
        return reason;
    }
    let mut end = max;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_code_ranges() {
        for code in 0..=u16::MAX {
            let expected = matches!(code, 1000..=1003 | 1007..=1011 | 1012..=1014 | 3000..=4999);
            assert_eq!(is_valid_close_code(code), expected, "code {code}");
        }
        for bad in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535,
        ] {
            assert!(!is_valid_close_code(bad));
        }
    }

    #[test]
    fn parse_payloads() {
        assert_eq!(parse_close_payload(&[]), Ok(None));
        assert_eq!(
            parse_close_payload(&[3]),
            Err(ProtocolError::InvalidClosePayload)
        );
        assert_eq!(
            parse_close_payload(&[0x03, 0xe8, b'o', b'k']),
            Ok(Some(CloseFrame::new(1000, "ok")))
        );
        assert_eq!(
            parse_close_payload(&[0x03, 0xed]),
            Err(ProtocolError::InvalidCloseCode(1005))
        );
        assert_eq!(
            parse_close_payload(&[0x03, 0xe8, 0xff]),
            Err(ProtocolError::InvalidUtf8)
        );
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate_reason("héllo", 2), "h");
        assert_eq!(truncate_reason("héllo", 3), "hé");
        assert_eq!(truncate_reason("abc", 10), "abc");
    }
}
