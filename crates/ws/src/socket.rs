//! [`WsSocket`]: a WebSocket connection over any tokio `AsyncRead + AsyncWrite`.
//!
//! # Memory
//! Built for many mostly-idle connections. An idle `WsSocket` holds:
//! - the `IO` object;
//! - the [`Decoder`]: a few words of state and a 14-byte inline header buffer, no heap
//!   memory between messages;
//! - two empty, unallocated queues (unwritten output, messages decoded but not yet returned by
//!   [`WsSocket::recv`]) and a few flags.
//!
//! That is `size_of::<WsSocket<IO>>()` bytes plus the IO (about 200 bytes plus the IO on
//! 64-bit targets; see the crate README for the measured total per connection).
//!
//! Reads go through a thread-local 16 KiB scratch buffer: bytes are decoded straight out of it
//! and only an incomplete frame's payload is copied into the connection (into the buffer of the
//! message it belongs to, released when the message completes). Writes are queued as shared
//! [`Bytes`] (no copy for the server role) and gathered into a thread-local 32 KiB buffer when
//! flushed; only what the IO does not accept right away is kept by the connection, and that is
//! released once written.
//!
//! # Driving it
//! The poll API is synchronous and never spawns: [`WsSocket::poll_read_messages`] reads and
//! decodes, [`WsSocket::poll_flush`] writes what the `queue_*` methods queued. Received pings
//! are answered (a pong is queued) and received close frames are echoed (a close is queued)
//! automatically, but *queued* replies go out only with the next flush. The async wrappers
//! ([`WsSocket::recv`], [`WsSocket::send`], [`WsSocket::flush`], [`WsSocket::close`]) do that for
//! you.
//!
//! # Control frame floods
//! A peer that sends pings and never reads must not make us queue one pong per ping. Once
//! [`MAX_QUEUED_PONGS`] automatic pongs wait in the write queue, the pong for a new ping
//! replaces the last one still waiting at the end of the queue (RFC 6455 §5.5.3 allows
//! answering only the most recent ping), so the latest ping is always answered and what pings
//! make a socket hold stays bounded (about 2 KiB; a pong more per data frame queued after the
//! last one) whatever their rate. Pongs that went into a write that stalled still count, and
//! the stalled rest is never merged with what was queued after it. On top of that,
//! [`WsConfig::max_control_frames_per_second`] (default 100) fails a connection whose peer sends
//! more pings and pongs than that within one second, with close code 1008 (policy violation,
//! [`ProtocolError::TooManyControlFrames`]).

use std::cell::Cell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::codec::{
    apply_mask, encode_close_payload, encode_frame, encode_header, encode_header_rsv1, random_mask,
    ClientHandshake, CloseFrame, Decoder, DeflateParams, HandshakeError, Message, OpCode,
    ProtocolError, Role, WsConfig, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN,
};

/// Size of the per-thread read scratch buffer.
const READ_SCRATCH: usize = 16 << 10;
/// Size of the per-thread write scratch buffer; shared payloads at least this long are
/// written straight from their own buffer.
const WRITE_SCRATCH: usize = 32 << 10;
/// Reads per `poll_read_messages` call while no message is complete (then it yields).
const MAX_READS: usize = 32;
/// Reads per call once at least one message is complete.
const MAX_READS_WITH_MESSAGES: usize = 4;
/// Automatic pongs a socket queues before coalescing: beyond them, the pong for a new ping
/// replaces the last one waiting. See the module docs.
pub const MAX_QUEUED_PONGS: usize = 16;

/// Whole seconds since the first call in this process: the numbered one-second windows in
/// which control frames are counted (4 bytes per socket instead of an `Instant`'s 16).
fn current_second() -> u32 {
    static START: OnceLock<Instant> = OnceLock::new();
    // Wraps after 136 years.
    START.get_or_init(Instant::now).elapsed().as_secs() as u32
}

/// Writes as much of `bytes` as `io` takes now: `Ok(None)` once all of it is written,
/// `Ok(Some(n))` when only `bytes[..n]` was taken (the waker is registered for the rest).
fn write_all<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    cx: &mut Context<'_>,
    bytes: &[u8],
) -> Result<Option<usize>, WsError> {
    let mut off = 0;
    while off < bytes.len() {
        match Pin::new(&mut *io).poll_write(cx, &bytes[off..]) {
            Poll::Ready(Ok(0)) => return Err(io::Error::from(io::ErrorKind::WriteZero).into()),
            Poll::Ready(Ok(n)) => off += n,
            Poll::Ready(Err(e)) => return Err(e.into()),
            Poll::Pending => return Ok(Some(off)),
        }
    }
    Ok(None)
}

thread_local! {
    static READ_BUF: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
    static WRITE_BUF: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// Why a [`WsSocket`] operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WsError {
    /// The transport failed. The connection is unusable; drop it.
    #[error("websocket i/o error: {0}")]
    Io(#[from] io::Error),
    /// The peer broke the protocol. A Close frame with
    /// [`ProtocolError::close_code`] has been queued: call [`WsSocket::close`] (or flush) to
    /// send it, then drop the socket.
    #[error("websocket protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// The client handshake failed ([`WsSocket::connect`]).
    #[error("websocket handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    /// The read side is finished: a Close frame was already reported (or the socket failed
    /// earlier). Not an error condition; the end-of-stream marker of
    /// [`WsSocket::poll_read_messages`]. [`WsSocket::recv`] turns it into `Ok(None)`.
    #[error("websocket closed")]
    Closed,
    /// The peer closed the transport without a Close frame (abnormal closure, code 1006).
    #[error("websocket connection closed without a close frame")]
    UnexpectedEof,
}

/// One piece of queued output.
#[derive(Debug)]
enum Chunk {
    /// A frame header or a one-byte separator.
    Inline { buf: [u8; MAX_HEADER_LEN], len: u8 },
    /// A payload: shared with other connections, or owned (masked or compressed).
    Shared(Bytes),
    /// One whole automatic pong frame, not written yet: the pong for a newer ping may replace
    /// it while it is the last chunk. Counted in `queued_pongs`.
    Pong(Bytes),
    /// The unwritten rest of a stalled write that held `pongs` automatic pongs: they stay
    /// counted in `queued_pongs` until it is written.
    PongRest { bytes: Bytes, pongs: u8 },
}

impl Chunk {
    fn inline(bytes: &[u8]) -> Self {
        let mut buf = [0u8; MAX_HEADER_LEN];
        buf[..bytes.len()].copy_from_slice(bytes);
        Chunk::Inline {
            buf,
            len: bytes.len() as u8,
        }
    }
}

/// A WebSocket connection over `IO` (hyper's `Upgraded` in `TokioIo`, a `TcpStream`, ...).
///
/// See the [module docs](self) for memory use and how to drive it.
#[derive(Debug)]
pub struct WsSocket<IO> {
    io: IO,
    role: Role,
    decoder: Decoder,
    /// Our compression window (log2) when permessage-deflate is on.
    compress_window: Option<u8>,
    /// [`WsConfig::close_timeout`] in milliseconds (a `Duration` takes 16 bytes).
    close_timeout_ms: u32,
    pending: VecDeque<Chunk>,
    inbox: VecDeque<Message>,
    /// A protocol error found after messages that were returned first; reported (and the
    /// close queued) by the next read, so replies to those messages precede the close.
    deferred_error: Option<ProtocolError>,
    close_sent: bool,
    close_received: bool,
    read_done: bool,
    eof: bool,
    /// Automatic pongs in `pending` (`Chunk::Pong`s plus `Chunk::PongRest` counts).
    queued_pongs: u8,
    /// [`WsConfig::max_control_frames_per_second`]; `u32::MAX` for no limit.
    control_limit: u32,
    /// The [`current_second`] in which `control_count` control frames were received.
    control_second: u32,
    control_count: u32,
}

impl<IO> WsSocket<IO> {
    /// A socket over an already upgraded connection, without extensions.
    pub fn new(io: IO, role: Role, config: WsConfig) -> Self {
        Self::with_deflate(io, role, config, None)
    }

    /// A socket over an already upgraded connection, with the permessage-deflate parameters
    /// agreed in the handshake ([`UpgradeInfo::deflate`](crate::UpgradeInfo::deflate) or
    /// [`ClientResponse::deflate`](crate::ClientResponse::deflate)); `None` for no compression.
    pub fn with_deflate(
        io: IO,
        role: Role,
        config: WsConfig,
        deflate: Option<DeflateParams>,
    ) -> Self {
        let compress_window = deflate.map(|p| match role {
            Role::Server => p.server_max_window_bits,
            Role::Client => p.client_max_window_bits,
        });
        Self {
            io,
            role,
            decoder: Decoder::with_deflate(role, &config, deflate),
            compress_window,
            close_timeout_ms: u32::try_from(config.close_timeout.as_millis()).unwrap_or(u32::MAX),
            pending: VecDeque::new(),
            inbox: VecDeque::new(),
            deferred_error: None,
            close_sent: false,
            close_received: false,
            read_done: false,
            eof: false,
            queued_pongs: 0,
            control_limit: config.max_control_frames_per_second.unwrap_or(u32::MAX),
            control_second: 0,
            control_count: 0,
        }
    }

    /// Our role on this connection.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether permessage-deflate was negotiated.
    pub fn is_compressed(&self) -> bool {
        self.compress_window.is_some()
    }

    /// The LZ77 window limit (log2) for what we compress, when permessage-deflate was
    /// negotiated: pass it to [`compress_payload`](crate::compress_payload).
    pub fn compression_window(&self) -> Option<u8> {
        self.compress_window
    }

    /// Queues a text frame with RSV1 set whose payload was compressed once, for many
    /// connections, by [`compress_payload`](crate::compress_payload) with a window of at most
    /// [`WsSocket::compression_window`]. Returns `false` (and queues nothing) when this
    /// connection did not negotiate permessage-deflate: queue the uncompressed text instead.
    pub fn queue_compressed_text(&mut self, payload: &Bytes) -> bool {
        if self.compress_window.is_none() {
            return false;
        }
        if self.close_sent {
            return true;
        }
        match self.role {
            Role::Server => {
                self.push_header(OpCode::Text, true, payload.len(), None);
                if !payload.is_empty() {
                    self.pending.push_back(Chunk::Shared(payload.clone()));
                }
            }
            Role::Client => self.queue_owned(OpCode::Text, true, payload.to_vec()),
        }
        true
    }

    /// The underlying IO.
    pub fn io(&self) -> &IO {
        &self.io
    }

    /// The underlying IO, mutably. Writing to it directly corrupts the stream.
    pub fn io_mut(&mut self) -> &mut IO {
        &mut self.io
    }

    /// Gives back the IO, dropping anything queued.
    pub fn into_inner(self) -> IO {
        self.io
    }

    /// Whether queued output waits for [`WsSocket::poll_flush`].
    pub fn has_pending_writes(&self) -> bool {
        !self.pending.is_empty()
    }

    /// How many bytes are queued and not yet handed to the IO (frame headers included).
    pub fn pending_write_bytes(&self) -> usize {
        self.pending
            .iter()
            .map(|chunk| match chunk {
                Chunk::Inline { len, .. } => usize::from(*len),
                Chunk::Shared(b) | Chunk::Pong(b) | Chunk::PongRest { bytes: b, .. } => b.len(),
            })
            .sum()
    }

    /// Whether we queued (or sent) a Close frame; later `queue_*` calls are ignored.
    pub fn is_close_sent(&self) -> bool {
        self.close_sent
    }

    /// Whether the peer's Close frame was received.
    pub fn is_close_received(&self) -> bool {
        self.close_received
    }

    /// Whether the socket holds no heap memory of its own: no partial frame, no unwritten
    /// output, no undelivered message.
    pub fn is_idle(&self) -> bool {
        self.decoder.is_idle() && self.pending.capacity() == 0 && self.inbox.capacity() == 0
    }

    /// Queues ONE text frame whose payload is `parts` joined by `separator` (e.g. `b'\n'` for
    /// newline-delimited JSON batches). The parts are shared, not copied (server role,
    /// uncompressed). The caller promises the result is UTF-8.
    pub fn queue_text_batch(&mut self, parts: &[Bytes], separator: Option<u8>) {
        self.queue_data(OpCode::Text, parts, separator);
    }

    /// Queues one message. Text and binary payloads are shared, not copied (server role,
    /// uncompressed); ping/pong payloads are cut to 125 bytes; a close message is the same as
    /// [`WsSocket::queue_close`] (or an empty close frame for `Close(None)`).
    pub fn queue_message(&mut self, msg: &Message) {
        match msg {
            Message::Text(b) => self.queue_data(OpCode::Text, std::slice::from_ref(b), None),
            Message::Binary(b) => self.queue_data(OpCode::Binary, std::slice::from_ref(b), None),
            Message::Ping(b) => self.queue_control(OpCode::Ping, b),
            Message::Pong(b) => self.queue_control(OpCode::Pong, b),
            Message::Close(Some(CloseFrame { code, reason })) => self.queue_close(*code, reason),
            Message::Close(None) => self.queue_close_frame(&[]),
        }
    }

    /// Queues a Close frame with `code` and `reason` (cut to 123 bytes). Only the first close
    /// is queued; data queued after it is dropped.
    pub fn queue_close(&mut self, code: u16, reason: &str) {
        let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
        let mut rest = &mut payload[..];
        encode_close_payload(code, reason, &mut rest);
        let len = MAX_CONTROL_PAYLOAD - rest.len();
        self.queue_close_frame(&payload[..len]);
    }

    fn queue_close_frame(&mut self, payload: &[u8]) {
        if self.close_sent {
            return;
        }
        self.queue_owned(OpCode::Close, false, payload.to_vec());
        self.close_sent = true;
    }

    fn queue_control(&mut self, opcode: OpCode, payload: &Bytes) {
        if self.close_sent {
            return;
        }
        let payload = payload.slice(..payload.len().min(MAX_CONTROL_PAYLOAD));
        self.queue_shared(opcode, payload);
    }

    fn queue_data(&mut self, opcode: OpCode, parts: &[Bytes], separator: Option<u8>) {
        if self.close_sent {
            return;
        }
        if let Some(bits) = self.compress_window {
            let slices: Vec<&[u8]> = parts.iter().map(|b| &b[..]).collect();
            if let Some(c) = crate::codec::compress_payload(&slices, separator, bits) {
                self.queue_owned(opcode, true, c);
                return;
            }
        }
        if let [single] = parts {
            self.queue_shared(opcode, single.clone());
            return;
        }
        let seps = if separator.is_some() {
            parts.len().saturating_sub(1)
        } else {
            0
        };
        let total = parts.iter().map(Bytes::len).sum::<usize>() + seps;
        match self.role {
            Role::Server => {
                self.push_header(opcode, false, total, None);
                for (i, part) in parts.iter().enumerate() {
                    if i > 0 {
                        if let Some(sep) = separator {
                            self.pending.push_back(Chunk::inline(&[sep]));
                        }
                    }
                    if !part.is_empty() {
                        self.pending.push_back(Chunk::Shared(part.clone()));
                    }
                }
            }
            Role::Client => {
                let mut payload = Vec::with_capacity(total);
                for (i, part) in parts.iter().enumerate() {
                    if i > 0 {
                        if let Some(sep) = separator {
                            payload.push(sep);
                        }
                    }
                    payload.extend_from_slice(part);
                }
                self.queue_owned(opcode, false, payload);
            }
        }
    }

    /// Queues a frame whose payload may be shared with others.
    fn queue_shared(&mut self, opcode: OpCode, payload: Bytes) {
        match self.role {
            Role::Server => {
                self.push_header(opcode, false, payload.len(), None);
                if !payload.is_empty() {
                    self.pending.push_back(Chunk::Shared(payload));
                }
            }
            Role::Client => self.queue_owned(opcode, false, payload.to_vec()),
        }
    }

    /// Queues a frame whose payload we own (and may mask in place).
    fn queue_owned(&mut self, opcode: OpCode, rsv1: bool, mut payload: Vec<u8>) {
        let mask = match self.role {
            Role::Server => None,
            Role::Client => {
                let key = random_mask();
                apply_mask(&mut payload, key, 0);
                Some(key)
            }
        };
        self.push_header(opcode, rsv1, payload.len(), mask);
        if !payload.is_empty() {
            self.pending.push_back(Chunk::Shared(Bytes::from(payload)));
        }
    }

    fn push_header(&mut self, opcode: OpCode, rsv1: bool, len: usize, mask: Option<[u8; 4]>) {
        let mut buf = [0u8; MAX_HEADER_LEN];
        let mut rest = &mut buf[..];
        if rsv1 {
            encode_header_rsv1(opcode, true, true, len as u64, mask, &mut rest);
        } else {
            encode_header(opcode, true, len as u64, mask, &mut rest);
        }
        let len = (MAX_HEADER_LEN - rest.len()) as u8;
        self.pending.push_back(Chunk::Inline { buf, len });
    }

    /// Reacts to decoded control frames: pong for ping, close echo for close, and counts pings
    /// and pongs against the control-frame limit. Over the limit, returns the index in `msgs`
    /// of the first frame beyond it (that frame and what follows are not acted on).
    fn handle_control(&mut self, msgs: &[Message]) -> Result<(), (usize, ProtocolError)> {
        // One clock read per batch: frames decoded from one read arrived together.
        let mut second = None;
        for (i, m) in msgs.iter().enumerate() {
            match m {
                Message::Ping(_) | Message::Pong(_) => {
                    let limit = self.control_limit;
                    if limit != u32::MAX {
                        let now = *second.get_or_insert_with(current_second);
                        if now != self.control_second {
                            self.control_second = now;
                            self.control_count = 0;
                        }
                        self.control_count = self.control_count.saturating_add(1);
                        if self.control_count > limit {
                            return Err((i, ProtocolError::TooManyControlFrames { limit }));
                        }
                    }
                    if let Message::Ping(p) = m {
                        self.answer_ping(p);
                    }
                }
                Message::Close(frame) => {
                    self.close_received = true;
                    self.read_done = true;
                    match frame {
                        Some(f) => self.queue_close(f.code, ""),
                        None => self.queue_close_frame(&[]),
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Queues the automatic pong for a received ping. With [`MAX_QUEUED_PONGS`] already
    /// waiting, it replaces the last one instead when that is the last chunk queued.
    fn answer_ping(&mut self, payload: &[u8]) {
        if self.close_sent {
            return;
        }
        let payload = &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)];
        let mask = (self.role == Role::Client).then(random_mask);
        let mut frame = BytesMut::new();
        encode_frame(OpCode::Pong, true, payload, mask, &mut frame);
        let frame = frame.freeze();
        if usize::from(self.queued_pongs) >= MAX_QUEUED_PONGS {
            if let Some(Chunk::Pong(last)) = self.pending.back_mut() {
                *last = frame;
                return;
            }
        }
        self.pending.push_back(Chunk::Pong(frame));
        self.queued_pongs = self.queued_pongs.saturating_add(1);
    }

    fn fail(&mut self, e: ProtocolError) -> WsError {
        let reason = match e {
            ProtocolError::TooManyControlFrames { .. } => "too many control frames",
            _ => "",
        };
        self.queue_close(e.close_code(), reason);
        self.read_done = true;
        WsError::Protocol(e)
    }

    /// Decodes bytes that arrived with the handshake response.
    fn feed_initial(&mut self, bytes: &[u8]) -> Result<(), WsError> {
        if bytes.is_empty() {
            return Ok(());
        }
        let mut out = Vec::new();
        let mut r = self.decoder.decode(bytes, &mut out);
        if let Err((i, e)) = self.handle_control(&out) {
            out.truncate(i);
            r = Err(e);
        }
        self.inbox.extend(out);
        if let Err(e) = r {
            self.deferred_error = Some(e);
            self.read_done = true;
        }
        Ok(())
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> WsSocket<IO> {
    /// Reads what the IO has, decodes it and appends complete messages to `out`.
    ///
    /// - `Ready(Ok(()))`: at least one message was appended. Pings are reported and answered
    ///   (pong queued); a Close is reported and echoed (close queued) and ends the read side.
    /// - `Pending`: no complete message yet; the waker is registered with the IO.
    /// - `Ready(Err(WsError::Closed))`: the read side is finished (a Close was reported
    ///   earlier, or an error was returned earlier). Nothing more will arrive.
    /// - `Ready(Err(WsError::UnexpectedEof))`: the peer hung up without a Close frame.
    /// - `Ready(Err(WsError::Protocol(_)))`: the peer broke the protocol; a Close frame with
    ///   the matching code is queued (send it with [`WsSocket::close`]). Messages that arrived
    ///   before the offending frame are returned first (`Ready(Ok)`), the error on the next
    ///   call, so replies queued in between still precede the close frame.
    ///
    /// Queued replies (pongs, close echo) are not written by this method: call
    /// [`WsSocket::poll_flush`]. Reading is bounded per call (a flood cannot starve other
    /// tasks) and the idle socket keeps no read buffer.
    pub fn poll_read_messages(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Vec<Message>,
    ) -> Poll<Result<(), WsError>> {
        if !self.inbox.is_empty() {
            out.extend(self.inbox.drain(..));
            self.inbox = VecDeque::new();
            return Poll::Ready(Ok(()));
        }
        if let Some(e) = self.deferred_error.take() {
            return Poll::Ready(Err(self.fail(e)));
        }
        if self.read_done {
            return Poll::Ready(Err(if self.eof && !self.close_received {
                WsError::UnexpectedEof
            } else {
                WsError::Closed
            }));
        }
        let start = out.len();
        let mut buf = READ_BUF.with(Cell::take);
        if buf.len() < READ_SCRATCH {
            buf.resize(READ_SCRATCH, 0);
        }
        let result = self.read_loop(cx, &mut buf, out, start);
        READ_BUF.with(|c| c.set(buf));
        result
    }

    fn read_loop(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
        out: &mut Vec<Message>,
        start: usize,
    ) -> Poll<Result<(), WsError>> {
        let mut reads = 0;
        loop {
            let mut rb = ReadBuf::new(buf);
            match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
                Poll::Pending => {
                    return if out.len() > start {
                        Poll::Ready(Ok(()))
                    } else {
                        Poll::Pending
                    };
                }
                Poll::Ready(Err(e)) => {
                    self.read_done = true;
                    return Poll::Ready(Err(WsError::Io(e)));
                }
                Poll::Ready(Ok(())) => {}
            }
            let n = rb.filled().len();
            if n == 0 {
                self.read_done = true;
                self.eof = true;
                return Poll::Ready(if out.len() > start {
                    Ok(())
                } else if self.close_received {
                    Err(WsError::Closed)
                } else {
                    Err(WsError::UnexpectedEof)
                });
            }
            let before = out.len();
            let mut decoded = self.decoder.decode(&buf[..n], out);
            if let Err((i, e)) = self.handle_control(&out[before..]) {
                // Nothing from the frame over the limit on is delivered or answered.
                out.truncate(before + i);
                decoded = Err(e);
            }
            if let Err(e) = decoded {
                if out.len() > start {
                    // Hand out what came before the error first (so that replies to it go
                    // out before our close); the error follows on the next call.
                    self.deferred_error = Some(e);
                    self.read_done = true;
                    return Poll::Ready(Ok(()));
                }
                return Poll::Ready(Err(self.fail(e)));
            }
            if self.read_done {
                // A Close frame: it is in `out`, nothing may follow it.
                return Poll::Ready(Ok(()));
            }
            reads += 1;
            let have = out.len() > start;
            if have && (n < buf.len() || reads >= MAX_READS_WITH_MESSAGES) {
                return Poll::Ready(Ok(()));
            }
            if reads >= MAX_READS {
                if have {
                    return Poll::Ready(Ok(()));
                }
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
    }

    /// Writes one text frame made of `parts` (joined by `separator`), then flushes: the same as
    /// [`WsSocket::queue_text_batch`] followed by [`WsSocket::poll_flush`], without queueing
    /// when it can. When nothing is queued (server role, no compression, the frame fits the
    /// write buffer) the frame is gathered straight into the thread's write buffer and written
    /// with one system call: no queue entries, no reference counts taken on the parts. What the
    /// socket does not take is queued (`Pending`; finish it with [`WsSocket::poll_flush`]).
    ///
    /// `parts` is anything that lists the parts (twice: it is walked once to size the frame),
    /// such as a slice of [`Bytes`] or the messages of several queue entries chained together.
    pub fn poll_write_text_batch<'a, P>(
        &mut self,
        cx: &mut Context<'_>,
        parts: P,
        separator: Option<u8>,
    ) -> Poll<Result<(), WsError>>
    where
        P: IntoIterator<Item = &'a Bytes>,
        P::IntoIter: Clone,
    {
        let parts = parts.into_iter();
        let (count, payload) = parts
            .clone()
            .fold((0usize, 0usize), |(n, len), part| (n + 1, len + part.len()));
        let seps = match separator {
            Some(_) => count.saturating_sub(1),
            None => 0,
        };
        let total = payload + seps;
        let direct = !self.close_sent
            && self.pending.is_empty()
            && self.compress_window.is_none()
            && matches!(self.role, Role::Server)
            && total + MAX_HEADER_LEN <= WRITE_SCRATCH;
        if !direct {
            let parts: Vec<Bytes> = parts.cloned().collect();
            self.queue_data(OpCode::Text, &parts, separator);
            return self.poll_flush(cx);
        }
        let mut scratch = WRITE_BUF.with(Cell::take);
        scratch.clear();
        scratch.reserve(WRITE_SCRATCH);
        let mut header = [0u8; MAX_HEADER_LEN];
        let mut rest = &mut header[..];
        encode_header(OpCode::Text, true, total as u64, None, &mut rest);
        let header_len = MAX_HEADER_LEN - rest.len();
        scratch.extend_from_slice(&header[..header_len]);
        for (i, part) in parts.enumerate() {
            if i > 0 {
                if let Some(sep) = separator {
                    scratch.push(sep);
                }
            }
            scratch.extend_from_slice(part);
        }
        let result = self.write_scratch(cx, &scratch);
        scratch.clear();
        WRITE_BUF.with(|c| c.set(scratch));
        ready!(result)?;
        Pin::new(&mut self.io).poll_flush(cx).map_err(WsError::Io)
    }

    /// Writes `bytes`; queues what the socket does not take (then `Pending`).
    fn write_scratch(&mut self, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<Result<(), WsError>> {
        match write_all(&mut self.io, cx, bytes)? {
            None => Poll::Ready(Ok(())),
            Some(off) => {
                let rest = Bytes::copy_from_slice(&bytes[off..]);
                self.pending.push_back(Chunk::Shared(rest));
                Poll::Pending
            }
        }
    }

    /// Writes queued frames, then flushes the IO.
    ///
    /// Small pieces are gathered into a thread-local buffer and written from there; large
    /// shared payloads are written from their own buffer. Only what the IO did not take stays
    /// queued (`Pending`); the queue's memory is released once everything is written.
    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        if !self.pending.is_empty() {
            let mut scratch = WRITE_BUF.with(Cell::take);
            let result = self.write_pending(cx, &mut scratch);
            scratch.clear();
            if scratch.capacity() <= WRITE_SCRATCH * 2 {
                WRITE_BUF.with(|c| c.set(scratch));
            }
            ready!(result)?;
            self.pending = VecDeque::new();
        }
        Pin::new(&mut self.io).poll_flush(cx).map_err(WsError::Io)
    }

    fn write_pending(
        &mut self,
        cx: &mut Context<'_>,
        scratch: &mut Vec<u8>,
    ) -> Poll<Result<(), WsError>> {
        if scratch.capacity() < WRITE_SCRATCH {
            scratch.reserve(WRITE_SCRATCH);
        }
        loop {
            if let Some(Chunk::Shared(b)) = self.pending.front_mut() {
                if b.len() >= WRITE_SCRATCH {
                    let n = ready!(Pin::new(&mut self.io).poll_write(cx, b))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
                    }
                    b.advance(n);
                    if b.is_empty() {
                        self.pending.pop_front();
                    }
                    continue;
                }
            }
            // A stalled write's rest with pongs in it is written on its own, never gathered
            // again with what was queued after it: otherwise every stalled flush would fold
            // the pongs queued since into it, and coalescing would never kick in.
            if let Some(Chunk::PongRest { bytes, pongs }) = self.pending.front_mut() {
                let n = ready!(Pin::new(&mut self.io).poll_write(cx, bytes))?;
                if n == 0 {
                    return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
                }
                bytes.advance(n);
                if bytes.is_empty() {
                    let pongs = *pongs;
                    self.pending.pop_front();
                    self.queued_pongs = self.queued_pongs.saturating_sub(pongs);
                }
                continue;
            }
            scratch.clear();
            // Automatic pongs in `scratch`: still queued until all of it is written.
            let mut gathered_pongs: u8 = 0;
            while let Some(front) = self.pending.front_mut() {
                let room = WRITE_SCRATCH - scratch.len();
                match front {
                    Chunk::Inline { buf, len } => {
                        let len = *len as usize;
                        if len > room {
                            break;
                        }
                        scratch.extend_from_slice(&buf[..len]);
                        self.pending.pop_front();
                    }
                    Chunk::Pong(bytes) => {
                        if bytes.len() > room {
                            break;
                        }
                        scratch.extend_from_slice(bytes);
                        gathered_pongs = gathered_pongs.saturating_add(1);
                        self.pending.pop_front();
                    }
                    // Only ever at the front, written above.
                    Chunk::PongRest { .. } => break,
                    Chunk::Shared(b) => {
                        let n = room.min(b.len());
                        scratch.extend_from_slice(&b[..n]);
                        b.advance(n);
                        if b.is_empty() {
                            self.pending.pop_front();
                        } else {
                            break;
                        }
                    }
                }
            }
            if scratch.is_empty() {
                return Poll::Ready(Ok(()));
            }
            if let Some(off) = write_all(&mut self.io, cx, scratch)? {
                let rest = Bytes::copy_from_slice(&scratch[off..]);
                self.pending.push_front(if gathered_pongs == 0 {
                    Chunk::Shared(rest)
                } else {
                    // Still counted: a peer that does not read cannot turn queued
                    // pongs into uncounted bytes, flush after flush.
                    Chunk::PongRest {
                        bytes: rest,
                        pongs: gathered_pongs,
                    }
                });
                return Poll::Pending;
            }
            self.queued_pongs = self.queued_pongs.saturating_sub(gathered_pongs);
        }
    }

    /// The next message (pings, pongs and the peer's close included), writing queued output
    /// (e.g. automatic pongs) while waiting. `Ok(None)` once the read side is finished after a
    /// Close was returned.
    pub async fn recv(&mut self) -> Result<Option<Message>, WsError> {
        if let Some(m) = self.pop_inbox() {
            return Ok(Some(m));
        }
        poll_fn(|cx| {
            if self.has_pending_writes() {
                if let Poll::Ready(Err(e)) = self.poll_flush(cx) {
                    return Poll::Ready(Err(e));
                }
            }
            let mut batch = Vec::new();
            match ready!(self.poll_read_messages(cx, &mut batch)) {
                Ok(()) => {
                    let mut it = batch.into_iter();
                    let first = it.next();
                    self.inbox.extend(it);
                    Poll::Ready(Ok(first))
                }
                Err(WsError::Closed) => Poll::Ready(Ok(None)),
                Err(e) => Poll::Ready(Err(e)),
            }
        })
        .await
    }

    fn pop_inbox(&mut self) -> Option<Message> {
        let m = self.inbox.pop_front()?;
        if self.inbox.is_empty() {
            self.inbox = VecDeque::new();
        }
        Some(m)
    }

    /// Queues `msg` and flushes.
    pub async fn send(&mut self, msg: Message) -> Result<(), WsError> {
        self.queue_message(&msg);
        self.flush().await
    }

    /// Writes everything queued and flushes the IO.
    pub async fn flush(&mut self) -> Result<(), WsError> {
        poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// Closes the connection: queues a Close frame with `code` and `reason` (unless one was
    /// already queued, e.g. the echo of the peer's close or the close after a protocol error),
    /// flushes, shuts down our write side and reads (discarding) until the peer hangs up, so
    /// that dropping the socket afterwards cannot reset the connection with unread data.
    ///
    /// Bounded by [`WsConfig::close_timeout`]; reaching it is not an error. Needs a tokio
    /// runtime with the time driver enabled.
    pub async fn close(&mut self, code: u16, reason: &str) -> Result<(), WsError> {
        self.queue_close(code, reason);
        let timeout = Duration::from_millis(u64::from(self.close_timeout_ms));
        let work = async {
            self.flush().await?;
            self.io.shutdown().await?;
            self.drain().await
        };
        tokio::time::timeout(timeout, work).await.unwrap_or(Ok(()))
    }

    /// Reads and discards until end of stream.
    async fn drain(&mut self) -> Result<(), WsError> {
        self.read_done = true;
        poll_fn(|cx| {
            let mut buf = READ_BUF.with(Cell::take);
            if buf.len() < READ_SCRATCH {
                buf.resize(READ_SCRATCH, 0);
            }
            let mut result = Poll::Pending;
            let mut registered = false;
            for _ in 0..MAX_READS {
                let mut rb = ReadBuf::new(&mut buf);
                match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
                    Poll::Pending => {
                        registered = true;
                        break;
                    }
                    Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                        result = Poll::Ready(Ok(()));
                        break;
                    }
                    Poll::Ready(Ok(())) => {}
                    // Reset by the peer after our close: done either way.
                    Poll::Ready(Err(_)) => {
                        result = Poll::Ready(Ok(()));
                        break;
                    }
                }
            }
            READ_BUF.with(|c| c.set(buf));
            if result.is_pending() && !registered {
                // Still data flowing: yield, then continue.
                cx.waker().wake_by_ref();
            }
            result
        })
        .await
    }

    /// Client side: performs the opening handshake over `io` (a connected `TcpStream`, say)
    /// and returns the socket. Frames that arrived together with the `101` response are kept
    /// and returned by the first reads.
    pub async fn connect(
        mut io: IO,
        handshake: &ClientHandshake,
        config: WsConfig,
    ) -> Result<Self, WsError> {
        io.write_all(&handshake.request_bytes()).await?;
        io.flush().await?;
        let mut buf = BytesMut::with_capacity(1024);
        loop {
            if io.read_buf(&mut buf).await? == 0 {
                return Err(WsError::UnexpectedEof);
            }
            if let Some(resp) = handshake.parse_response(&buf)? {
                let mut socket = Self::with_deflate(io, Role::Client, config, resp.deflate);
                socket.feed_initial(&buf[resp.consumed..])?;
                return Ok(socket);
            }
        }
    }
}
