//! Incremental UTF-8 validation for text messages that arrive in pieces.

use super::error::ProtocolError;

/// Validates `buf[*valid..]`, advancing `*valid` past the longest valid prefix.
///
/// A code point cut at the end of `buf` is fine while `complete` is false (more bytes may
/// follow); a byte sequence that can never become valid fails at once, so a bad fragment is
/// rejected before the rest of the message arrives.
pub(crate) fn validate_incremental(
    buf: &[u8],
    valid: &mut usize,
    complete: bool,
) -> Result<(), ProtocolError> {
    match simdutf8::compat::from_utf8(&buf[*valid..]) {
        Ok(_) => {
            *valid = buf.len();
            Ok(())
        }
        Err(e) => {
            if e.error_len().is_some() || complete {
                return Err(ProtocolError::InvalidUtf8);
            }
            *valid += e.valid_up_to();
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_code_point_is_accepted_until_complete() {
        let s = "κόσμε".as_bytes();
        for cut in 0..=s.len() {
            let mut valid = 0;
            validate_incremental(&s[..cut], &mut valid, false).unwrap();
            assert!(valid <= cut);
            validate_incremental(s, &mut valid, true).unwrap();
            assert_eq!(valid, s.len());
        }
        let mut valid = 0;
        assert!(validate_incremental(&s[..1], &mut valid, true).is_err());
    }

    #[test]
    fn invalid_fails_fast() {
        let mut valid = 0;
        // 0xF4 0x90 is above U+10FFFF: invalid whatever follows.
        assert_eq!(
            validate_incremental(&[b'a', 0xF4, 0x90], &mut valid, false),
            Err(ProtocolError::InvalidUtf8)
        );
        let mut valid = 0;
        assert_eq!(
            validate_incremental(&[0xC0], &mut valid, false),
            Err(ProtocolError::InvalidUtf8)
        );
    }
}
