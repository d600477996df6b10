//! Frame parsing and message assembly: bytes in, [`Message`]s out.

use std::mem;

use bytes::{Bytes, BytesMut};

use super::close::parse_close_payload;
use super::deflate::{DeflateParams, Inflater};
use super::error::ProtocolError;
use super::frame::{apply_mask, OpCode, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN};
use super::message::Message;
use super::utf8::validate_incremental;
use super::{Role, WsConfig};

/// Up to this much is reserved up front for a data frame whose length the header announces;
/// beyond it the buffer grows as bytes actually arrive, so a peer cannot make us allocate
/// `max_message_size` with a 14-byte header.
const PREALLOC_LIMIT: usize = 256 << 10;

/// Turns a byte stream from the peer into [`Message`]s, enforcing RFC 6455.
///
/// Feed it whatever the transport delivered, in any split; it keeps only what it must between
/// calls:
/// - a partial frame header (at most 14 bytes) inline in the struct;
/// - the payload of an incomplete message or control frame, in buffers that are released
///   (replaced by empty, unallocated ones) as soon as the message is emitted.
///
/// So an idle decoder (between messages) owns no heap memory; see [`Decoder::is_idle`].
///
/// What it checks: masking by role, reserved bits and opcodes, control frames (at most 125
/// bytes, never fragmented, may arrive between the fragments of a message), continuation
/// order, close codes and reasons, UTF-8 of text messages (failing as soon as a fragment can no
/// longer be valid, even mid-frame; a code point split between fragments is fine), frame and
/// message size limits, and permessage-deflate (RSV1) when negotiated.
///
/// After a Close frame it ignores all further input (nothing may follow a Close). After an
/// error it ignores all further input too; the caller should send a Close frame with
/// [`ProtocolError::close_code`] and drop the connection.
#[derive(Debug)]
pub struct Decoder {
    role: Role,
    max_message_size: usize,
    max_frame_size: usize,
    inflater: Option<Inflater>,
    state: State,
    header: [u8; MAX_HEADER_LEN],
    header_len: u8,
    frame: FrameState,
    /// The data message being assembled; empty and unallocated between messages.
    msg: BytesMut,
    msg_kind: Option<DataKind>,
    /// How much of `msg` is known to be valid UTF-8 (uncompressed text only).
    utf8_valid: usize,
    /// The payload of the control frame being read; empty and unallocated otherwise.
    ctrl: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Header,
    Payload,
    Closed,
    Failed,
}

#[derive(Debug, Clone, Copy)]
struct FrameState {
    opcode: OpCode,
    fin: bool,
    mask: Option<[u8; 4]>,
    mask_pos: usize,
    remaining: u64,
}

#[derive(Debug, Clone, Copy)]
struct DataKind {
    text: bool,
    compressed: bool,
}

impl Decoder {
    /// A decoder for an endpoint playing `role`, with the limits of `config` and no
    /// extension.
    pub fn new(role: Role, config: &WsConfig) -> Self {
        Self::with_deflate(role, config, None)
    }

    /// A decoder that also accepts permessage-deflate compressed messages (RSV1) as negotiated
    /// by `deflate`.
    pub fn with_deflate(role: Role, config: &WsConfig, deflate: Option<DeflateParams>) -> Self {
        let inflater = deflate.map(|p| {
            let peer_no_takeover = match role {
                Role::Server => p.client_no_context_takeover,
                Role::Client => p.server_no_context_takeover,
            };
            Inflater::new(!peer_no_takeover)
        });
        Self {
            role,
            max_message_size: config.max_message_size,
            max_frame_size: config.effective_max_frame_size(),
            inflater,
            state: State::Header,
            header: [0; MAX_HEADER_LEN],
            header_len: 0,
            frame: FrameState {
                opcode: OpCode::Continuation,
                fin: false,
                mask: None,
                mask_pos: 0,
                remaining: 0,
            },
            msg: BytesMut::new(),
            msg_kind: None,
            utf8_valid: 0,
            ctrl: Vec::new(),
        }
    }

    /// Decodes `input`, appending every message it completes to `out`.
    ///
    /// Returns `Ok` also when `input` ends mid-frame: the rest is awaited in later calls. On
    /// error, messages completed earlier in `input` have already been appended to `out`.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<Message>) -> Result<(), ProtocolError> {
        let result = self.decode_inner(input, out);
        if result.is_err() {
            self.state = State::Failed;
            self.release();
        }
        result
    }

    /// Whether no partial frame or message is held, and so no heap memory (except a
    /// decompressor kept for a peer that uses context takeover).
    pub fn is_idle(&self) -> bool {
        self.state != State::Payload
            && self.header_len == 0
            && self.msg.capacity() == 0
            && self.ctrl.capacity() == 0
    }

    /// Whether a Close frame was decoded (all later input is ignored).
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Whether a protocol error was returned (all later input is ignored).
    pub fn is_failed(&self) -> bool {
        self.state == State::Failed
    }

    /// Bytes of partial frames and messages currently held.
    pub fn buffered_len(&self) -> usize {
        self.header_len as usize + self.msg.len() + self.ctrl.len()
    }

    fn release(&mut self) {
        self.msg = BytesMut::new();
        self.ctrl = Vec::new();
        self.msg_kind = None;
        self.header_len = 0;
    }

    fn decode_inner(
        &mut self,
        mut input: &[u8],
        out: &mut Vec<Message>,
    ) -> Result<(), ProtocolError> {
        loop {
            match self.state {
                State::Closed | State::Failed => return Ok(()),
                State::Header => {
                    if input.is_empty() {
                        return Ok(());
                    }
                    let Some(header_size) = self.fill_header(&mut input) else {
                        return Ok(());
                    };
                    self.header_len = 0;
                    self.start_frame(header_size)?;
                }
                State::Payload => {
                    if self.frame.remaining > 0 {
                        if input.is_empty() {
                            return Ok(());
                        }
                        let take = self.frame.remaining.min(input.len() as u64) as usize;
                        let (chunk, rest) = input.split_at(take);
                        input = rest;
                        self.payload_chunk(chunk)?;
                    }
                    if self.frame.remaining == 0 {
                        self.end_frame(out)?;
                    }
                }
            }
        }
    }

    /// Moves header bytes from `input` into `self.header`; returns the header size once the
    /// whole header is there.
    fn fill_header(&mut self, input: &mut &[u8]) -> Option<usize> {
        let mut have = self.header_len as usize;
        if have < 2 {
            let n = (2 - have).min(input.len());
            self.header[have..have + n].copy_from_slice(&input[..n]);
            *input = &input[n..];
            have += n;
            self.header_len = have as u8;
            if have < 2 {
                return None;
            }
        }
        let b1 = self.header[1];
        let need =
            2 + match b1 & 0x7F {
                126 => 2,
                127 => 8,
                _ => 0,
            } + if b1 & 0x80 != 0 { 4 } else { 0 };
        if have < need {
            let n = (need - have).min(input.len());
            self.header[have..have + n].copy_from_slice(&input[..n]);
            *input = &input[n..];
            have += n;
            self.header_len = have as u8;
            if have < need {
                return None;
            }
        }
        Some(need)
    }

    fn start_frame(&mut self, header_size: usize) -> Result<(), ProtocolError> {
        let h = &self.header[..header_size];
        let (b0, b1) = (h[0], h[1]);
        let fin = b0 & 0x80 != 0;
        let rsv1 = b0 & 0x40 != 0;
        if b0 & 0x30 != 0 {
            return Err(ProtocolError::ReservedBits);
        }
        let opcode = OpCode::from_u8(b0 & 0x0F).ok_or(ProtocolError::ReservedOpcode(b0 & 0x0F))?;
        let masked = b1 & 0x80 != 0;
        match (self.role, masked) {
            (Role::Server, false) => return Err(ProtocolError::UnmaskedFrame),
            (Role::Client, true) => return Err(ProtocolError::MaskedFrame),
            _ => {}
        }
        let (len, mask_at) = match b1 & 0x7F {
            126 => (u64::from(u16::from_be_bytes([h[2], h[3]])), 4),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&h[2..10]);
                let len = u64::from_be_bytes(b);
                if len >> 63 != 0 {
                    return Err(ProtocolError::InvalidLength);
                }
                (len, 10)
            }
            n => (u64::from(n), 2),
        };
        let mask = masked.then(|| [h[mask_at], h[mask_at + 1], h[mask_at + 2], h[mask_at + 3]]);

        if opcode.is_control() {
            if !fin {
                return Err(ProtocolError::FragmentedControlFrame);
            }
            if len > MAX_CONTROL_PAYLOAD as u64 {
                return Err(ProtocolError::ControlFrameTooLong);
            }
            if rsv1 {
                return Err(ProtocolError::ReservedBits);
            }
            if len > 0 {
                self.ctrl = Vec::with_capacity(len as usize);
            }
        } else {
            match opcode {
                OpCode::Continuation => {
                    if self.msg_kind.is_none() {
                        return Err(ProtocolError::UnexpectedContinuation);
                    }
                    if rsv1 {
                        return Err(ProtocolError::ReservedBits);
                    }
                }
                _ => {
                    if self.msg_kind.is_some() {
                        return Err(ProtocolError::ExpectedContinuation);
                    }
                    if rsv1 && self.inflater.is_none() {
                        return Err(ProtocolError::ReservedBits);
                    }
                    self.msg_kind = Some(DataKind {
                        text: opcode == OpCode::Text,
                        compressed: rsv1,
                    });
                    self.utf8_valid = 0;
                }
            }
            if len > self.max_frame_size as u64 {
                return Err(ProtocolError::MessageTooBig {
                    limit: self.max_frame_size,
                });
            }
            if self.msg.len() as u64 + len > self.max_message_size as u64 {
                return Err(ProtocolError::MessageTooBig {
                    limit: self.max_message_size,
                });
            }
            self.msg.reserve((len as usize).min(PREALLOC_LIMIT));
        }
        self.frame = FrameState {
            opcode,
            fin,
            mask,
            mask_pos: 0,
            remaining: len,
        };
        self.state = State::Payload;
        Ok(())
    }

    fn payload_chunk(&mut self, chunk: &[u8]) -> Result<(), ProtocolError> {
        let f = &mut self.frame;
        let buf: &mut [u8] = if f.opcode.is_control() {
            let start = self.ctrl.len();
            self.ctrl.extend_from_slice(chunk);
            &mut self.ctrl[start..]
        } else {
            let start = self.msg.len();
            self.msg.extend_from_slice(chunk);
            &mut self.msg[start..]
        };
        if let Some(key) = f.mask {
            apply_mask(buf, key, f.mask_pos);
        }
        f.mask_pos = (f.mask_pos + chunk.len()) & 3;
        f.remaining -= chunk.len() as u64;
        if !f.opcode.is_control() {
            if let Some(DataKind {
                text: true,
                compressed: false,
            }) = self.msg_kind
            {
                validate_incremental(&self.msg, &mut self.utf8_valid, false)?;
            }
        }
        Ok(())
    }

    fn end_frame(&mut self, out: &mut Vec<Message>) -> Result<(), ProtocolError> {
        self.state = State::Header;
        let opcode = self.frame.opcode;
        match opcode {
            OpCode::Ping => out.push(Message::Ping(Bytes::from(mem::take(&mut self.ctrl)))),
            OpCode::Pong => out.push(Message::Pong(Bytes::from(mem::take(&mut self.ctrl)))),
            OpCode::Close => {
                let payload = mem::take(&mut self.ctrl);
                let frame = parse_close_payload(&payload)?;
                out.push(Message::Close(frame));
                self.state = State::Closed;
                self.release();
            }
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                if !self.frame.fin {
                    return Ok(());
                }
                // Invariant: start_frame set msg_kind for every data frame it accepted.
                let Some(kind) = self.msg_kind.take() else {
                    return Err(ProtocolError::UnexpectedContinuation);
                };
                let data = if kind.compressed {
                    let compressed = mem::take(&mut self.msg);
                    let Some(inflater) = self.inflater.as_mut() else {
                        return Err(ProtocolError::ReservedBits);
                    };
                    let plain = inflater.inflate(&compressed, self.max_message_size)?;
                    if kind.text && simdutf8::basic::from_utf8(&plain).is_err() {
                        return Err(ProtocolError::InvalidUtf8);
                    }
                    Bytes::from(plain)
                } else {
                    if kind.text {
                        validate_incremental(&self.msg, &mut self.utf8_valid, true)?;
                    }
                    mem::take(&mut self.msg).freeze()
                };
                out.push(if kind.text {
                    Message::Text(data)
                } else {
                    Message::Binary(data)
                });
            }
        }
        Ok(())
    }
}
