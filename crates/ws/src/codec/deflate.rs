//! permessage-deflate (RFC 7692): negotiation and per-message (de)compression.
//!
//! Memory is the point of the design. Both directions run without context takeover
//! whenever we can choose: as a server we always answer with `server_no_context_takeover`
//! and `client_no_context_takeover`, so no connection owns a compressor or decompressor while
//! idle. Compression and decompression then use one thread-local `Compress`/`Decompress`,
//! reset before each message. Only a peer that insists on context takeover for what it sends
//! (a server that did not accept our `server_no_context_takeover` offer) gets a per-connection
//! decompressor.
//!
//! The pure-Rust backend has a fixed 32 KiB window, so when the peer limits our window to
//! `2^N` bytes (`N < 15`) we compress only messages of at most `2^N` bytes: without context
//! takeover no back-reference can reach further than that. Longer messages go uncompressed,
//! which RFC 7692 allows per message.

use std::cell::Cell;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::error::ProtocolError;

/// The trailer that a sync flush ends with and that RFC 7692 strips from every message.
const TRAILER: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Messages shorter than this are sent uncompressed: deflate would not shrink them.
pub(crate) const MIN_COMPRESS_LEN: usize = 64;

/// The negotiated permessage-deflate parameters of one connection (RFC 7692 §7.1).
///
/// Names follow the RFC, so they mean the same for both roles; the socket works out which
/// half applies to what it sends and receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeflateParams {
    /// The server compresses every message with a fresh context.
    pub server_no_context_takeover: bool,
    /// The client compresses every message with a fresh context.
    pub client_no_context_takeover: bool,
    /// Largest LZ77 window (log2) the server may use when compressing, 8..=15.
    pub server_max_window_bits: u8,
    /// Largest LZ77 window (log2) the client may use when compressing, 8..=15.
    pub client_max_window_bits: u8,
}

impl Default for DeflateParams {
    fn default() -> Self {
        Self {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
        }
    }
}

impl DeflateParams {
    /// The `Sec-WebSocket-Extensions` value a server answers with to accept these parameters.
    pub fn response_header(&self) -> String {
        let mut s = String::from("permessage-deflate");
        if self.server_no_context_takeover {
            s.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            s.push_str("; client_no_context_takeover");
        }
        if self.server_max_window_bits < 15 {
            s.push_str(&format!(
                "; server_max_window_bits={}",
                self.server_max_window_bits
            ));
        }
        if self.client_max_window_bits < 15 {
            s.push_str(&format!(
                "; client_max_window_bits={}",
                self.client_max_window_bits
            ));
        }
        s
    }
}

/// One parsed extension offer or response element: its parameters, or `None` when it is not
/// permessage-deflate or breaks the RFC 7692 grammar (unknown or repeated parameter, bad
/// value).
#[derive(Debug, Default)]
struct RawParams {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: present without a value (client offer: "I can limit my window").
    client_max_window_bits: Option<Option<u8>>,
}

fn parse_bits(value: Option<&str>) -> Option<u8> {
    let v = value?.trim().trim_matches('"');
    if v.is_empty() || v.len() > 2 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let bits: u8 = v.parse().ok()?;
    (8..=15).contains(&bits).then_some(bits)
}

fn parse_element(element: &str) -> Option<RawParams> {
    let mut parts = element.split(';');
    let name = parts.next()?.trim();
    if !name.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut p = RawParams::default();
    for param in parts {
        let param = param.trim();
        if param.is_empty() {
            continue;
        }
        let (key, value) = match param.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (param, None),
        };
        match key.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" if !p.server_no_context_takeover && value.is_none() => {
                p.server_no_context_takeover = true
            }
            "client_no_context_takeover" if !p.client_no_context_takeover && value.is_none() => {
                p.client_no_context_takeover = true
            }
            "server_max_window_bits" if p.server_max_window_bits.is_none() => {
                p.server_max_window_bits = Some(parse_bits(value)?)
            }
            "client_max_window_bits" if p.client_max_window_bits.is_none() => {
                p.client_max_window_bits = Some(match value {
                    None => None,
                    Some(_) => Some(parse_bits(value)?),
                })
            }
            _ => return None,
        }
    }
    Some(p)
}

/// Server side: picks the first acceptable permessage-deflate offer among the
/// `Sec-WebSocket-Extensions` header values. We always add both `no_context_takeover`
/// parameters (see the module docs).
pub(crate) fn negotiate_server<'a>(
    header_values: impl Iterator<Item = &'a str>,
) -> Option<DeflateParams> {
    for value in header_values {
        for element in value.split(',') {
            if let Some(raw) = parse_element(element) {
                return Some(DeflateParams {
                    server_no_context_takeover: true,
                    client_no_context_takeover: true,
                    server_max_window_bits: raw.server_max_window_bits.unwrap_or(15),
                    client_max_window_bits: 15,
                });
            }
        }
    }
    None
}

/// The offer our client sends.
pub(crate) const CLIENT_OFFER: &str =
    "permessage-deflate; client_max_window_bits; server_no_context_takeover; client_no_context_takeover";

/// Client side: validates the server's answer to [`CLIENT_OFFER`].
pub(crate) fn parse_client_response(value: &str) -> Result<DeflateParams, String> {
    if value.contains(',') {
        return Err(value.to_owned());
    }
    let raw = parse_element(value).ok_or_else(|| value.to_owned())?;
    Ok(DeflateParams {
        server_no_context_takeover: raw.server_no_context_takeover,
        // We compress without context takeover anyway.
        client_no_context_takeover: true,
        server_max_window_bits: raw.server_max_window_bits.unwrap_or(15),
        client_max_window_bits: raw.client_max_window_bits.flatten().unwrap_or(15),
    })
}

thread_local! {
    static COMPRESS: Cell<Option<Box<Compress>>> = const { Cell::new(None) };
    static DECOMPRESS: Cell<Option<Box<Decompress>>> = const { Cell::new(None) };
}

/// Compresses `parts` joined by `separator` as one permessage-deflate message with a fresh
/// context (no context takeover), returning the payload to send in a frame with RSV1 set.
///
/// `None` when the message should go uncompressed: shorter than 64 bytes, longer than
/// `2^max_window_bits` while `max_window_bits < 15` (see the module docs), or not smaller once
/// compressed. The result depends only on the input and `max_window_bits`, so it can be
/// computed once and shared by every connection that negotiated the same window.
pub fn compress_payload(
    parts: &[&[u8]],
    separator: Option<u8>,
    max_window_bits: u8,
) -> Option<Vec<u8>> {
    let window_bits = max_window_bits;
    let sep_count = if separator.is_some() {
        parts.len().saturating_sub(1)
    } else {
        0
    };
    let total: usize = parts.iter().map(|p| p.len()).sum::<usize>() + sep_count;
    if total < MIN_COMPRESS_LEN || (window_bits < 15 && total > (1usize << window_bits)) {
        return None;
    }
    let mut c = COMPRESS
        .with(Cell::take)
        .unwrap_or_else(|| Box::new(Compress::new(Compression::fast(), false)));
    c.reset();
    let mut out = Vec::with_capacity(total / 2 + 64);
    let sep_buf = separator.map(|s| [s]);
    let mut ok = true;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            if let Some(sep) = &sep_buf {
                ok &= feed(&mut c, sep, &mut out, FlushCompress::None);
            }
        }
        ok &= feed(&mut c, part, &mut out, FlushCompress::None);
    }
    ok &= feed(&mut c, &[], &mut out, FlushCompress::Sync);
    COMPRESS.with(|cell| cell.set(Some(c)));
    if !ok || !out.ends_with(&TRAILER) {
        return None;
    }
    out.truncate(out.len() - TRAILER.len());
    (out.len() < total).then_some(out)
}

/// Pushes all of `input` through `c` (and, with a sync flush, everything pending).
fn feed(c: &mut Compress, mut input: &[u8], out: &mut Vec<u8>, flush: FlushCompress) -> bool {
    loop {
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(256));
        }
        let before_in = c.total_in();
        let before_out = c.total_out();
        if c.compress_vec(input, out, flush).is_err() {
            return false;
        }
        let consumed = (c.total_in() - before_in) as usize;
        input = &input[consumed..];
        let produced = c.total_out() - before_out;
        // Done when all input is in and the output buffer was not the limit.
        if input.is_empty() && out.capacity() > out.len() {
            return true;
        }
        if consumed == 0 && produced == 0 && out.capacity() > out.len() {
            return false;
        }
    }
}

/// The receive half: inflates compressed messages.
#[derive(Debug)]
pub(crate) struct Inflater {
    /// The peer keeps its context between messages; then we must too.
    context_takeover: bool,
    /// Our own decompressor when `context_takeover`; allocated on the first message.
    own: Option<Box<Decompress>>,
}

impl Inflater {
    pub(crate) fn new(context_takeover: bool) -> Self {
        Self {
            context_takeover,
            own: None,
        }
    }

    /// Inflates one message (`data` without the stripped trailer), failing with
    /// [`ProtocolError::MessageTooBig`] as soon as the output passes `max`.
    pub(crate) fn inflate(&mut self, data: &[u8], max: usize) -> Result<Vec<u8>, ProtocolError> {
        if self.context_takeover {
            let d = self
                .own
                .get_or_insert_with(|| Box::new(Decompress::new(false)));
            inflate_with(d, data, max)
        } else {
            let mut d = DECOMPRESS
                .with(Cell::take)
                .unwrap_or_else(|| Box::new(Decompress::new(false)));
            d.reset(false);
            let r = inflate_with(&mut d, data, max);
            DECOMPRESS.with(|cell| cell.set(Some(d)));
            r
        }
    }
}

fn inflate_with(d: &mut Decompress, data: &[u8], max: usize) -> Result<Vec<u8>, ProtocolError> {
    let too_big = ProtocolError::MessageTooBig { limit: max };
    let mut out: Vec<u8> = Vec::with_capacity((data.len() * 3).max(64).min(max.saturating_add(1)));
    for (input, last) in [(data, false), (&TRAILER[..], true)] {
        let mut input = input;
        loop {
            if out.len() == out.capacity() {
                if out.len() > max {
                    return Err(too_big);
                }
                let room = max.saturating_add(1) - out.len();
                out.reserve(out.capacity().max(4096).min(room));
            }
            let before_in = d.total_in();
            let before_out = d.total_out();
            let status = d
                .decompress_vec(input, &mut out, FlushDecompress::Sync)
                .map_err(|_| ProtocolError::InvalidCompressedData)?;
            if out.len() > max {
                return Err(too_big);
            }
            let consumed = (d.total_in() - before_in) as usize;
            let produced = d.total_out() - before_out;
            input = &input[consumed..];
            if status == Status::StreamEnd {
                // The peer ended the deflate stream (BFINAL); start afresh next time.
                d.reset(false);
                return if last || input.is_empty() {
                    Ok(out)
                } else {
                    Err(ProtocolError::InvalidCompressedData)
                };
            }
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
            if consumed == 0 && produced == 0 && out.len() < out.capacity() {
                return Err(ProtocolError::InvalidCompressedData);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation() {
        let p = negotiate_server(["permessage-deflate; client_max_window_bits"].into_iter())
            .expect("accepted");
        assert!(p.server_no_context_takeover && p.client_no_context_takeover);
        assert_eq!(
            p.response_header(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        let p = negotiate_server(
            ["x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=10"].into_iter(),
        )
        .expect("accepted");
        assert_eq!(p.server_max_window_bits, 10);
        assert!(p.response_header().ends_with("server_max_window_bits=10"));
        // Invalid offers are skipped, a later valid one is taken.
        let p = negotiate_server(
            ["permessage-deflate; server_max_window_bits=7, permessage-deflate; foo, permessage-deflate; server_max_window_bits=9"]
                .into_iter(),
        )
        .expect("accepted");
        assert_eq!(p.server_max_window_bits, 9);
        assert!(
            negotiate_server(["permessage-deflate; server_max_window_bits"].into_iter()).is_none()
        );
        assert!(negotiate_server(
            ["permessage-deflate; server_no_context_takeover; server_no_context_takeover"]
                .into_iter()
        )
        .is_none());
        assert!(negotiate_server(["foo"].into_iter()).is_none());
    }

    #[test]
    fn roundtrip() {
        let text = "hello hello hello hello hello hello hello hello hello hello hello hello";
        let c = compress_payload(&[text.as_bytes(), text.as_bytes()], Some(b'\n'), 15)
            .expect("compressible");
        let mut inf = Inflater::new(false);
        let out = inf.inflate(&c, 1 << 20).expect("inflates");
        assert_eq!(out, format!("{text}\n{text}").as_bytes());
        assert_eq!(
            inf.inflate(&c, 10),
            Err(ProtocolError::MessageTooBig { limit: 10 })
        );
        assert_eq!(
            inf.inflate(&[0xff, 0xff, 0xff], 100),
            Err(ProtocolError::InvalidCompressedData)
        );
        // Restricted window: long messages stay uncompressed.
        assert!(compress_payload(&[&[b'a'; 300]], None, 8).is_none());
        assert!(compress_payload(&[&[b'a'; 200]], None, 8).is_some());
    }

    #[test]
    fn context_takeover_inflate() {
        // A compressor that keeps its context: the second message refers to the first.
        let mut c = Compress::new(Compression::default(), false);
        let mut m1 = Vec::with_capacity(1024);
        c.compress_vec(b"abcdefghijklmnop", &mut m1, FlushCompress::Sync)
            .unwrap();
        let mut m2 = Vec::with_capacity(1024);
        c.compress_vec(b"abcdefghijklmnop", &mut m2, FlushCompress::Sync)
            .unwrap();
        let mut inf = Inflater::new(true);
        assert_eq!(
            inf.inflate(&m1[..m1.len() - 4], 100).unwrap(),
            b"abcdefghijklmnop"
        );
        assert_eq!(
            inf.inflate(&m2[..m2.len() - 4], 100).unwrap(),
            b"abcdefghijklmnop"
        );
    }
}
