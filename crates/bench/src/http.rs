//! Subscribers over Switchboard's HTTP transports with bidirectional emulation
//! (`--transport http_stream` or `sse`), spoken over a plain TCP connection with HTTP/1.1.
//!
//! A subscriber opens the stream with its `connect` command (`POST /connection/http_stream`
//! with the command as body, or `GET /connection/sse?cf_connect=...`), reads the connect reply
//! for its `session` and `node`, and sends `subscribe` as a `POST /emulation` on a connection of
//! its own (closed after the answer), as the `centrifuge` SDK does. The stream is chunked
//! (`Transfer-Encoding: chunked`); [`Dechunker`] takes the chunk framing off, and the scan of
//! [`crate::conn::scan`] runs on whole messages only (up to the last line break read).
//! Pings are answered with a `{}` over `/emulation`, each from a task of its own.

use std::net::SocketAddr;

use anyhow::{bail, Context as _};
use memchr::memmem;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::conn::Endpoint;

/// Which HTTP transport subscribers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[clap(rename_all = "snake_case")]
pub(crate) enum Transport {
    /// WebSocket (`/connection/websocket` or the `--url` path).
    Websocket,
    /// HTTP-streaming with `/emulation` (`/connection/http_stream`).
    HttpStream,
    /// Server-Sent Events with `/emulation` (`/connection/sse`).
    Sse,
}

impl Transport {
    /// The name `--transport` takes.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Transport::Websocket => "websocket",
            Transport::HttpStream => "http_stream",
            Transport::Sse => "sse",
        }
    }
}

/// Bytes read from the socket per read call.
const READ_SIZE: usize = 16 * 1024;

/// A subscriber connection over `http_stream` or `sse`.
pub(crate) struct HttpSub {
    stream: TcpStream,
    dechunker: Dechunker,
    /// Message bytes not scanned yet (after the last line break).
    data: Vec<u8>,
    pub(crate) sse: bool,
    session: String,
    node: String,
    addr: SocketAddr,
    host: String,
}

impl HttpSub {
    /// Opens the stream, connects and subscribes to `channel`; returns once the subscribe
    /// reply arrived.
    pub(crate) async fn open(
        ep: &Endpoint,
        index: usize,
        channel: &str,
        transport: Transport,
    ) -> anyhow::Result<Self> {
        let socket = TcpSocket::new_v4()?;
        if !ep.sources.is_empty() {
            let ip = ep.sources[index % ep.sources.len()];
            socket
                .bind(SocketAddr::new(ip, 0))
                .with_context(|| format!("bind {ip}"))?;
        }
        let mut stream = socket.connect(ep.addr).await?;
        stream.set_nodelay(true)?;
        let connect = "{\"id\":1,\"connect\":{}}";
        let sse = transport == Transport::Sse;
        let request = if sse {
            format!(
                "GET /connection/sse?cf_connect=%7B%22id%22%3A1%2C%22connect%22%3A%7B%7D%7D \
                 HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
                ep.host
            )
        } else {
            format!(
                "POST /connection/http_stream HTTP/1.1\r\nHost: {}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{connect}",
                ep.host,
                connect.len()
            )
        };
        stream.write_all(request.as_bytes()).await?;
        let (status, rest) = read_head(&mut stream).await?;
        if status != 200 {
            bail!("{}: HTTP {status}", transport.name());
        }
        let mut sub = Self {
            stream,
            dechunker: Dechunker::default(),
            data: Vec::new(),
            sse,
            session: String::new(),
            node: String::new(),
            addr: ep.addr,
            host: ep.host.clone(),
        };
        sub.dechunker.feed(&rest, &mut sub.data);
        let reply = sub.wait_for(b"{\"id\":1,").await?;
        let v: serde_json::Value = serde_json::from_slice(&reply)?;
        sub.session = v["connect"]["session"]
            .as_str()
            .context("connect reply without session")?
            .to_owned();
        sub.node = v["connect"]["node"].as_str().unwrap_or("").to_owned();
        let subscribe = format!("{{\"id\":2,\"subscribe\":{{\"channel\":\"{channel}\"}}}}");
        emulate(sub.addr, &sub.host, &sub.session, &sub.node, &subscribe).await?;
        sub.wait_for(b"{\"id\":2,").await?;
        Ok(sub)
    }

    /// Reads until a message starting with `prefix` arrives; returns it. Earlier messages are
    /// dropped (nothing is published to the channel before the subscribers are up).
    async fn wait_for(&mut self, prefix: &[u8]) -> anyhow::Result<Vec<u8>> {
        loop {
            while let Some(end) = memchr::memchr(b'\n', &self.data) {
                let line: Vec<u8> = self.data.drain(..=end).collect();
                let line = &line[..line.len() - 1];
                let message = line.strip_prefix(b"data: ").unwrap_or(line);
                if message.starts_with(prefix) {
                    if memmem::find(message, b"\"error\"").is_some() {
                        bail!("server refused: {}", String::from_utf8_lossy(message));
                    }
                    return Ok(message.to_vec());
                }
            }
            let mut buf = vec![0; READ_SIZE];
            let n = self.stream.read(&mut buf).await?;
            if n == 0 {
                bail!("stream ended before {}", String::from_utf8_lossy(prefix));
            }
            self.dechunker.feed(&buf[..n], &mut self.data);
        }
    }

    /// Reads more of the stream; calls `on_messages` with the whole messages read (several,
    /// each ending with a line break). `Err` when the stream ended or failed.
    pub(crate) async fn read(
        &mut self,
        buf: &mut Vec<u8>,
        mut on_messages: impl FnMut(&[u8]),
    ) -> anyhow::Result<()> {
        buf.resize(READ_SIZE, 0);
        let n = self.stream.read(buf).await?;
        if n == 0 {
            bail!("stream ended");
        }
        self.dechunker.feed(&buf[..n], &mut self.data);
        if let Some(end) = memchr::memrchr(b'\n', &self.data) {
            on_messages(&self.data[..=end]);
            self.data.drain(..=end);
        }
        if self.dechunker.done {
            bail!("stream ended");
        }
        Ok(())
    }

    /// Whether `messages` (read from an `sse` stream when `sse`) hold a server ping (`{}`
    /// on a line or in an event of its own).
    pub(crate) fn has_ping(sse: bool, messages: &[u8]) -> bool {
        if sse {
            memmem::find(messages, b"data: {}\n").is_some()
        } else {
            messages.starts_with(b"{}\n") || memmem::find(messages, b"\n{}\n").is_some()
        }
    }

    /// Answers a ping over `/emulation`, in a task of its own.
    pub(crate) fn pong(&self) {
        let (addr, host, session, node) = (
            self.addr,
            self.host.clone(),
            self.session.clone(),
            self.node.clone(),
        );
        tokio::task::spawn_local(async move {
            let _ = emulate(addr, &host, &session, &node, "{}").await;
        });
    }
}

/// `POST /emulation` with `data` for the session, on a connection of its own; expects 204.
async fn emulate(
    addr: SocketAddr,
    host: &str,
    session: &str,
    node: &str,
    data: &str,
) -> anyhow::Result<()> {
    let body = serde_json::json!({"session": session, "node": node, "data": data}).to_string();
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!(
        "POST /emulation HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let (status, _) = read_head(&mut stream).await?;
    if status != 204 {
        bail!("/emulation: HTTP {status}");
    }
    Ok(())
}

/// Reads a response's status line and headers; returns the status and the bytes read after
/// the headers.
async fn read_head(stream: &mut TcpStream) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            bail!("connection closed before the response headers");
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = memmem::find(&head, b"\r\n\r\n") {
            let status = std::str::from_utf8(&head[..end])
                .ok()
                .and_then(|h| h.split(' ').nth(1))
                .and_then(|s| s.parse().ok())
                .context("malformed status line")?;
            return Ok((status, head[end + 4..].to_vec()));
        }
        if head.len() > 64 * 1024 {
            bail!("response headers too long");
        }
    }
}

/// Takes the framing of `Transfer-Encoding: chunked` off a byte stream, fed in any pieces.
#[derive(Debug, Default)]
pub(crate) struct Dechunker {
    state: State,
    size: usize,
    /// The last chunk (size 0) was read.
    pub(crate) done: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the hexadecimal size.
    #[default]
    Size,
    /// After the size: extensions until the line break.
    SizeLine,
    /// `size` more data bytes.
    Data,
    /// The line break after the data.
    DataEnd,
}

impl Dechunker {
    /// Appends the data bytes in `input` to `out`.
    pub(crate) fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() && !self.done {
            match self.state {
                State::Size => {
                    let b = input[0];
                    input = &input[1..];
                    match (b as char).to_digit(16) {
                        Some(d) => self.size = self.size * 16 + d as usize,
                        None => self.state = State::SizeLine,
                    }
                    if b == b'\n' {
                        self.after_size();
                    }
                }
                State::SizeLine => {
                    let b = input[0];
                    input = &input[1..];
                    if b == b'\n' {
                        self.after_size();
                    }
                }
                State::Data => {
                    let n = self.size.min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.size -= n;
                    if self.size == 0 {
                        self.state = State::DataEnd;
                    }
                }
                State::DataEnd => {
                    let b = input[0];
                    input = &input[1..];
                    if b == b'\n' {
                        self.state = State::Size;
                    }
                }
            }
        }
    }

    fn after_size(&mut self) {
        if self.size == 0 {
            self.done = true;
        } else {
            self.state = State::Data;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_unframed_whatever_the_pieces() {
        let wire = b"5\r\nhello\r\n7;ext=1\r\n world\n\r\n0\r\n\r\n";
        for split in 1..wire.len() {
            let mut d = Dechunker::default();
            let mut out = Vec::new();
            for piece in wire.chunks(split) {
                d.feed(piece, &mut out);
            }
            assert_eq!(out, b"hello world\n", "pieces of {split}");
            assert!(d.done);
        }
    }
}
