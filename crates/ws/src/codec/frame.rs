//! Frame headers, masking and whole-frame encoding (RFC 6455 §5.2).

use bytes::{BufMut, BytesMut};

use super::close::truncate_reason;
use super::message::Message;
use super::Role;

/// The longest possible frame header: 2 bytes, 8 bytes of extended length, 4 bytes of mask.
pub const MAX_HEADER_LEN: usize = 14;

/// The largest payload a control frame (close, ping, pong) may carry.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// A frame opcode (RFC 6455 §5.2). Reserved opcodes have no variant: the decoder rejects them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpCode {
    /// 0x0: continues a fragmented message.
    Continuation,
    /// 0x1: first frame of a UTF-8 text message.
    Text,
    /// 0x2: first frame of a binary message.
    Binary,
    /// 0x8: close.
    Close,
    /// 0x9: ping.
    Ping,
    /// 0xA: pong.
    Pong,
}

impl OpCode {
    /// The opcode for a 4-bit wire value, `None` for reserved values.
    pub fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    /// The 4-bit wire value.
    pub fn as_u8(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    /// Whether this is a control opcode (close, ping, pong).
    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// The length of a frame header for `payload_len` bytes, with or without a mask key.
pub fn header_len(payload_len: u64, masked: bool) -> usize {
    let ext = match payload_len {
        0..=125 => 0,
        126..=0xFFFF => 2,
        _ => 8,
    };
    2 + ext + if masked { 4 } else { 0 }
}

/// Writes a frame header (RSV bits clear) to `dst`: at most [`MAX_HEADER_LEN`] bytes.
///
/// The payload itself is not written; when `mask` is `Some`, the caller must mask the payload
/// with [`apply_mask`] (offset 0) before sending it.
pub fn encode_header(
    opcode: OpCode,
    fin: bool,
    payload_len: u64,
    mask: Option<[u8; 4]>,
    dst: &mut impl BufMut,
) {
    encode_header_rsv1(opcode, fin, false, payload_len, mask, dst);
}

/// Like [`encode_header`], with control of the RSV1 bit (set on the first frame of a
/// permessage-deflate compressed message).
pub fn encode_header_rsv1(
    opcode: OpCode,
    fin: bool,
    rsv1: bool,
    payload_len: u64,
    mask: Option<[u8; 4]>,
    dst: &mut impl BufMut,
) {
    let b0 = (u8::from(fin) << 7) | (u8::from(rsv1) << 6) | opcode.as_u8();
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    dst.put_u8(b0);
    match payload_len {
        0..=125 => dst.put_u8(mask_bit | payload_len as u8),
        126..=0xFFFF => {
            dst.put_u8(mask_bit | 126);
            dst.put_u16(payload_len as u16);
        }
        _ => {
            dst.put_u8(mask_bit | 127);
            dst.put_u64(payload_len);
        }
    }
    if let Some(key) = mask {
        dst.put_slice(&key);
    }
}

/// XORs `buf` with `mask`, where `buf` starts `offset` bytes into the masked payload.
///
/// Masking is its own inverse, so this both masks and unmasks. Works 8 bytes at a time.
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    let mut key = mask;
    key.rotate_left(offset & 3);
    let key32 = u32::from_ne_bytes(key);
    let key64 = u64::from(key32) | (u64::from(key32) << 32);
    // On big-endian targets the byte order of the doubled key is the same as on little-endian
    // ones because both halves are identical.
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let v = u64::from_ne_bytes(word) ^ key64;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

/// A fresh random masking key (fast, non-cryptographic RNG; RFC 6455 only asks that keys be
/// unpredictable to scripts in the browser, which a server-side client does not host).
pub fn random_mask() -> [u8; 4] {
    fastrand::u32(..).to_ne_bytes()
}

/// Encodes a whole frame (header and, masked when `mask` is `Some`, payload) into `dst`.
pub fn encode_frame(
    opcode: OpCode,
    fin: bool,
    payload: &[u8],
    mask: Option<[u8; 4]>,
    dst: &mut BytesMut,
) {
    dst.reserve(header_len(payload.len() as u64, mask.is_some()) + payload.len());
    encode_header(opcode, fin, payload.len() as u64, mask, dst);
    let start = dst.len();
    dst.extend_from_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut dst[start..], key, 0);
    }
}

/// Writes a Close payload: the code in network order plus the reason, cut to 123 bytes.
pub fn encode_close_payload(code: u16, reason: &str, dst: &mut impl BufMut) {
    dst.put_u16(code);
    dst.put_slice(truncate_reason(reason, MAX_CONTROL_PAYLOAD - 2).as_bytes());
}

/// Encodes `msg` as one uncompressed frame as `role` sends it (masked with a random key for
/// [`Role::Client`]). Ping/pong payloads longer than 125 bytes are cut to 125.
pub fn encode_message(msg: &Message, role: Role, dst: &mut BytesMut) {
    let mask = match role {
        Role::Client => Some(random_mask()),
        Role::Server => None,
    };
    match msg {
        Message::Text(b) => encode_frame(OpCode::Text, true, b, mask, dst),
        Message::Binary(b) => encode_frame(OpCode::Binary, true, b, mask, dst),
        Message::Ping(b) => encode_frame(
            OpCode::Ping,
            true,
            &b[..b.len().min(MAX_CONTROL_PAYLOAD)],
            mask,
            dst,
        ),
        Message::Pong(b) => encode_frame(
            OpCode::Pong,
            true,
            &b[..b.len().min(MAX_CONTROL_PAYLOAD)],
            mask,
            dst,
        ),
        Message::Close(frame) => {
            let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
            let mut rest = &mut payload[..];
            if let Some(f) = frame {
                encode_close_payload(f.code, &f.reason, &mut rest);
            }
            let len = MAX_CONTROL_PAYLOAD - rest.len();
            encode_frame(OpCode::Close, true, &payload[..len], mask, dst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask_naive(buf: &mut [u8], mask: [u8; 4], offset: usize) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b ^= mask[(offset + i) & 3];
        }
    }

    #[test]
    fn mask_matches_naive_for_all_offsets_and_lengths() {
        let mask = [0x12, 0x34, 0x56, 0x78];
        for len in 0..40 {
            for offset in 0..8 {
                let data: Vec<u8> = (0..len as u8).map(|x| x.wrapping_mul(31)).collect();
                let mut fast = data.clone();
                let mut slow = data.clone();
                apply_mask(&mut fast, mask, offset);
                mask_naive(&mut slow, mask, offset);
                assert_eq!(fast, slow, "len {len} offset {offset}");
            }
        }
    }

    #[test]
    fn header_lengths() {
        for (len, masked, expected) in [
            (0u64, false, 2),
            (125, false, 2),
            (126, false, 4),
            (0xFFFF, false, 4),
            (0x10000, false, 10),
            (5, true, 6),
            (300, true, 8),
            (1 << 40, true, 14),
        ] {
            let mut v = Vec::new();
            encode_header(
                OpCode::Binary,
                true,
                len,
                masked.then_some([1, 2, 3, 4]),
                &mut v,
            );
            assert_eq!(v.len(), expected);
            assert_eq!(header_len(len, masked), expected);
        }
    }

    #[test]
    fn rfc_examples() {
        // RFC 6455 §5.7: a single-frame unmasked text message "Hello".
        let mut dst = BytesMut::new();
        encode_frame(OpCode::Text, true, b"Hello", None, &mut dst);
        assert_eq!(&dst[..], &[0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        // A single-frame masked text message "Hello".
        let mut dst = BytesMut::new();
        encode_frame(
            OpCode::Text,
            true,
            b"Hello",
            Some([0x37, 0xfa, 0x21, 0x3d]),
            &mut dst,
        );
        assert_eq!(
            &dst[..],
            &[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
        );
        // 256 bytes binary message in a single unmasked frame.
        let mut v = Vec::new();
        encode_header(OpCode::Binary, true, 256, None, &mut v);
        assert_eq!(v, [0x82, 0x7E, 0x01, 0x00]);
        // 64KiB binary message in a single unmasked frame.
        let mut v = Vec::new();
        encode_header(OpCode::Binary, true, 65536, None, &mut v);
        assert_eq!(v, [0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0]);
    }
}
