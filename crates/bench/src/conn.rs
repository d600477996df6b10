//! Connecting to a target and speaking just enough of its protocol.
//!
//! Three targets share one load generator:
//! - `switchboard`: the native protocol (Centrifugo client protocol v2, JSON). Subscribers send
//!   `connect` + `subscribe` in one frame (as the `centrifuge` SDK batches them); the publisher
//!   sends one `publish` command per WebSocket frame.
//! - `raw`: a peer that broadcasts every text frame it receives to every other client. The
//!   publisher sends the payload itself as a text frame; subscribers only connect.
//! - `socketio`: Engine.IO v4 over WebSocket + Socket.IO v5 on the default namespace, with the
//!   two events of Switchboard's standalone Socket.IO semantics (docs/SOCKETIO.md), which the
//!   Node peer implements the same way: subscribers emit `join` with the channel as the room
//!   and wait for its ack (`420["join","bench"]` -> `430[...]`); the publisher emits
//!   `42["broadcast","bench","bench",PAYLOAD]`, and everyone else in the room receives
//!   `42["bench",PAYLOAD]`. So both servers receive byte-identical client traffic.
//!
//! The payload is always the JSON object `{"s":SEQ,"t":SEND_NS,"p":"xx.."}`; subscribers find
//! it by the `{"s":` marker without parsing the rest of the frame.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::LazyLock;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use clap::ValueEnum;
use memchr::memmem;
use switchboard_ws::{ClientHandshake, Message, WsConfig, WsSocket};

use crate::http::{HttpSub, Transport};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

/// A WebSocket client connection.
pub(crate) type Ws = WsSocket<TcpStream>;

/// Which protocol the server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Target {
    /// Switchboard's native protocol on `/connection/websocket`.
    Switchboard,
    /// A broadcast-every-text-frame peer (Node `ws`, tokio-tungstenite).
    Raw,
    /// A Socket.IO v5 server with `join` (with ack) and `broadcast` events (Switchboard's
    /// `/socket.io/`, or the Node peer that implements the same two events).
    Socketio,
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub(crate) target: Target,
    pub(crate) addr: SocketAddr,
    pub(crate) host: String,
    pub(crate) path: String,
    /// Source addresses to spread connections over (empty: let the kernel choose).
    pub(crate) sources: Vec<IpAddr>,
    /// How subscribers connect (`switchboard` target: WebSocket or an HTTP transport);
    /// publishers always use WebSocket.
    pub(crate) transport: Transport,
}

/// A subscriber connection of either kind.
pub(crate) enum Sub {
    Ws(Ws),
    Http(HttpSub),
}

impl Endpoint {
    /// Parses `ws://HOST:PORT/PATH`. The path defaults per target.
    pub(crate) fn new(
        target: Target,
        url: &str,
        source_addrs: usize,
        source_base: u8,
    ) -> anyhow::Result<Self> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| anyhow!("--url must start with ws:// (got {url})"))?;
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let path = if path.is_empty() || path == "/" {
            match target {
                Target::Switchboard => "/connection/websocket",
                Target::Raw => "/",
                Target::Socketio => "/socket.io/?EIO=4&transport=websocket",
            }
        } else {
            path
        };
        let addr: SocketAddr = host
            .parse()
            .with_context(|| format!("--url host must be IP:PORT (got {host})"))?;
        let sources = (0..source_addrs)
            .map(|i| {
                let last = source_base as usize + i;
                if last > 254 {
                    bail!("too many source addresses: 127.0.0.{last} does not exist");
                }
                Ok(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last as u8)))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            target,
            addr,
            host: host.to_owned(),
            path: path.to_owned(),
            sources,
            transport: Transport::Websocket,
        })
    }

    /// Opens the TCP connection (from source address `index % sources`) and does the
    /// WebSocket handshake.
    pub(crate) async fn open(&self, index: usize) -> anyhow::Result<Ws> {
        let socket = TcpSocket::new_v4()?;
        if !self.sources.is_empty() {
            let ip = self.sources[index % self.sources.len()];
            socket
                .bind(SocketAddr::new(ip, 0))
                .with_context(|| format!("bind {ip}"))?;
        }
        let stream = socket.connect(self.addr).await?;
        stream.set_nodelay(true)?;
        let config = WsConfig::default()
            .max_message_size(64 << 20)
            .close_timeout(Duration::from_secs(1));
        let hs = ClientHandshake::new(&self.host, &self.path, &config);
        Ok(WsSocket::connect(stream, &hs, config).await?)
    }

    /// Opens a connection and makes it a subscriber of `channel` (for `raw`, connecting is
    /// subscribing). Returns once the server confirmed.
    pub(crate) async fn subscriber(&self, index: usize, channel: &str) -> anyhow::Result<Ws> {
        let mut ws = self.open(index).await?;
        match self.target {
            Target::Switchboard => {
                let cmd = format!(
                    "{{\"id\":1,\"connect\":{{}}}}\n{{\"id\":2,\"subscribe\":{{\"channel\":\"{channel}\"}}}}"
                );
                ws.send(Message::text(cmd)).await?;
                wait_reply(&mut ws, 2).await?;
            }
            Target::Raw => {}
            Target::Socketio => {
                socketio_open(&mut ws).await?;
                socketio_join(&mut ws, channel).await?;
            }
        }
        Ok(ws)
    }

    /// A subscriber of `channel` over this endpoint's transport.
    pub(crate) async fn any_subscriber(&self, index: usize, channel: &str) -> anyhow::Result<Sub> {
        match self.transport {
            Transport::Websocket => Ok(Sub::Ws(self.subscriber(index, channel).await?)),
            t => Ok(Sub::Http(HttpSub::open(self, index, channel, t).await?)),
        }
    }

    /// Opens a connection for publishing (connected, not subscribed).
    pub(crate) async fn publisher(&self) -> anyhow::Result<Ws> {
        let mut ws = self.open(0).await?;
        match self.target {
            Target::Switchboard => {
                ws.send(Message::text("{\"id\":1,\"connect\":{}}")).await?;
                wait_reply(&mut ws, 1).await?;
            }
            Target::Raw => {}
            Target::Socketio => socketio_open(&mut ws).await?,
        }
        Ok(ws)
    }
}

/// `GET /health` of a Switchboard node over one kept-alive HTTP/1.1 connection: its
/// `connections` field (WebSocket clients the node holds). Polling it every few
/// milliseconds must not leave a socket in TIME_WAIT per poll, hence the one connection.
pub(crate) struct HealthProbe {
    addr: SocketAddr,
    host: String,
    conn: Option<BufReader<TcpStream>>,
}

impl HealthProbe {
    /// A probe of the node behind `ep` (connects on first use).
    pub(crate) fn new(ep: &Endpoint) -> Self {
        Self {
            addr: ep.addr,
            host: ep.host.clone(),
            conn: None,
        }
    }

    /// The node's current `connections`; reconnects once if the kept-alive connection
    /// was closed.
    pub(crate) async fn connections(&mut self) -> anyhow::Result<u64> {
        match self.once().await {
            Ok(n) => Ok(n),
            Err(_) => {
                self.conn = None;
                self.once().await
            }
        }
    }

    async fn once(&mut self) -> anyhow::Result<u64> {
        let conn = match &mut self.conn {
            Some(c) => c,
            None => {
                let stream = TcpStream::connect(self.addr).await?;
                stream.set_nodelay(true)?;
                self.conn.insert(BufReader::new(stream))
            }
        };
        let request = format!("GET /health HTTP/1.1\r\nHost: {}\r\n\r\n", self.host);
        conn.get_mut().write_all(request.as_bytes()).await?;
        // Status line and headers; /health always answers with a JSON body and its length
        // (200 while serving, 503 while draining).
        let mut length = None;
        let mut line = String::new();
        loop {
            line.clear();
            if conn.read_line(&mut line).await? == 0 {
                bail!("health: connection closed");
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = Some(value.trim().parse::<usize>()?);
                }
            }
        }
        let mut body = vec![0; length.context("health: no content-length")?];
        conn.read_exact(&mut body).await?;
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        v["connections"]
            .as_u64()
            .context("health: no `connections` in the answer")
    }
}

/// Waits for the reply with `id`, answering pings; fails on an error reply or a close.
async fn wait_reply(ws: &mut Ws, id: u32) -> anyhow::Result<()> {
    let needle = format!("{{\"id\":{id},");
    loop {
        match ws.recv().await? {
            Some(Message::Text(t)) => {
                for line in t.split(|&b| b == b'\n') {
                    if line.starts_with(needle.as_bytes()) {
                        if memchr::memmem::find(line, b"\"error\"").is_some() {
                            bail!("server refused: {}", String::from_utf8_lossy(line));
                        }
                        return Ok(());
                    }
                    if line == b"{}" {
                        ws.send(Message::text("{}")).await?;
                    }
                }
            }
            Some(Message::Close(c)) => bail!("server closed the connection: {c:?}"),
            Some(_) => {}
            None => bail!("connection closed before reply {id}"),
        }
    }
}

/// Engine.IO open packet, then Socket.IO connect to the default namespace.
async fn socketio_open(ws: &mut Ws) -> anyhow::Result<()> {
    loop {
        match ws.recv().await? {
            Some(Message::Text(t)) if t.starts_with(b"0{") => {
                ws.send(Message::text("40")).await?;
            }
            Some(Message::Text(t)) if t.starts_with(b"40") => return Ok(()),
            Some(Message::Text(t)) if t.starts_with(b"44") => {
                bail!("socket.io refused: {}", String::from_utf8_lossy(&t))
            }
            Some(Message::Text(t)) if &t[..] == b"2" => ws.send(Message::text("3")).await?,
            Some(Message::Close(c)) => bail!("server closed the connection: {c:?}"),
            Some(_) => {}
            None => bail!("connection closed during the socket.io handshake"),
        }
    }
}

/// Joins `room` with an acknowledgement (`420["join",ROOM]`) and waits for it (`430[...]`);
/// fails when the ack carries an `error`.
async fn socketio_join(ws: &mut Ws, room: &str) -> anyhow::Result<()> {
    let room = serde_json::to_string(room)?;
    ws.send(Message::text(format!("420[\"join\",{room}]")))
        .await?;
    loop {
        match ws.recv().await? {
            Some(Message::Text(t)) if t.starts_with(b"430[") => {
                if memchr::memmem::find(&t, b"\"error\"").is_some() {
                    bail!("join refused: {}", String::from_utf8_lossy(&t));
                }
                return Ok(());
            }
            Some(Message::Text(t)) if &t[..] == b"2" => ws.send(Message::text("3")).await?,
            Some(Message::Text(t)) if t.starts_with(b"41") || t.starts_with(b"1") => {
                bail!(
                    "socket.io disconnected while joining: {}",
                    String::from_utf8_lossy(&t)
                )
            }
            Some(Message::Close(c)) => bail!("server closed the connection: {c:?}"),
            Some(_) => {}
            None => bail!("connection closed while joining"),
        }
    }
}

/// Builds the payload object for message `seq` sent at `t_ns`, padded to `size` bytes.
pub(crate) fn payload(seq: u64, t_ns: u64, size: usize, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(b"{\"s\":");
    out.extend_from_slice(itoa(seq).as_bytes());
    out.extend_from_slice(b",\"t\":");
    out.extend_from_slice(itoa(t_ns).as_bytes());
    out.extend_from_slice(b",\"p\":\"");
    let used = out.len() - start + 2;
    out.resize(out.len() + size.saturating_sub(used), b'x');
    out.extend_from_slice(b"\"}");
}

fn itoa(v: u64) -> String {
    v.to_string()
}

/// Wraps a payload into what the publisher sends for `target` on `channel`, as one frame.
pub(crate) fn publish_frame(target: Target, id: u32, channel: &str, payload: &[u8]) -> Bytes {
    let mut f = Vec::with_capacity(payload.len() + 64 + channel.len());
    match target {
        Target::Switchboard => {
            f.extend_from_slice(b"{\"id\":");
            f.extend_from_slice(id.to_string().as_bytes());
            f.extend_from_slice(b",\"publish\":{\"channel\":\"");
            f.extend_from_slice(channel.as_bytes());
            f.extend_from_slice(b"\",\"data\":");
            f.extend_from_slice(payload);
            f.extend_from_slice(b"}}");
        }
        Target::Raw => f.extend_from_slice(payload),
        Target::Socketio => {
            // Channel names are plain (the tool makes them), but quote them properly anyway.
            let room = serde_json::to_string(channel).unwrap_or_else(|_| "\"\"".to_owned());
            f.extend_from_slice(b"42[\"broadcast\",");
            f.extend_from_slice(room.as_bytes());
            f.extend_from_slice(b",\"bench\",");
            f.extend_from_slice(payload);
            f.push(b']');
        }
    }
    f.into()
}

/// One payload found in a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    pub(crate) seq: u64,
    pub(crate) t_ns: u64,
}

/// What a received text message contained.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// The peer pinged at the application level; answer with [`pong`].
    pub(crate) ping: bool,
    /// A `{"push":{"disconnect":...}}` or Socket.IO disconnect arrived.
    pub(crate) disconnect: bool,
    /// An error reply arrived.
    pub(crate) error: bool,
}

static STAMP: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(b"{\"s\":"));
static DISCONNECT: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"disconnect\":{"));
static ERROR: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"error\":"));
static PING_LINE: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\n{}"));

/// Scans a received text message, calling `on_stamp` for each payload in it.
///
/// This is the load generator's hot loop: one pass with a precompiled finder for the
/// payload marker. Frames that carry payloads are not searched for disconnect pushes or
/// error replies (over WebSocket a disconnect is a close frame, which is accounted apart).
pub(crate) fn scan(target: Target, text: &[u8], scan: &mut Scan, mut on_stamp: impl FnMut(Stamp)) {
    match target {
        Target::Switchboard => {
            let mut found = false;
            for at in STAMP.find_iter(text) {
                if let Some(s) = stamp_at(text, at) {
                    found = true;
                    on_stamp(s);
                }
            }
            if text == b"{}" || text.starts_with(b"{}\n") || PING_LINE.find(text).is_some() {
                scan.ping = true;
            }
            if !found {
                if DISCONNECT.find(text).is_some() {
                    scan.disconnect = true;
                }
                if text.starts_with(b"{\"id\":") && ERROR.find(text).is_some() {
                    scan.error = true;
                }
            }
        }
        Target::Raw => {
            if let Some(s) = find_stamp(text) {
                on_stamp(s);
            }
        }
        Target::Socketio => {
            if text == b"2" {
                scan.ping = true;
            } else if text.starts_with(b"42") {
                if let Some(s) = find_stamp(text) {
                    on_stamp(s);
                }
            } else if text.starts_with(b"41") || text.starts_with(b"1") {
                scan.disconnect = true;
            }
        }
    }
}

/// The answer to an application-level ping.
pub(crate) fn pong(target: Target) -> Message {
    match target {
        Target::Socketio => Message::text("3"),
        _ => Message::text("{}"),
    }
}

fn find_stamp(line: &[u8]) -> Option<Stamp> {
    stamp_at(line, STAMP.find(line)?)
}

fn stamp_at(line: &[u8], at: usize) -> Option<Stamp> {
    let at = at + 5;
    let (seq, used) = parse_u64(&line[at..])?;
    let rest = &line[at + used..];
    let rest = rest.strip_prefix(b",\"t\":")?;
    let (t_ns, _) = parse_u64(rest)?;
    Some(Stamp { seq, t_ns })
}

fn parse_u64(b: &[u8]) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    let mut n = 0;
    // At most 19 digits: always fits in a u64.
    while n < b.len() && n < 19 {
        let d = b[n].wrapping_sub(b'0');
        if d > 9 {
            break;
        }
        v = v * 10 + u64::from(d);
        n += 1;
    }
    (n > 0).then_some((v, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips_through_every_target() {
        let mut p = Vec::new();
        payload(42, 123_456_789, 64, &mut p);
        assert_eq!(p.len(), 64);
        assert!(serde_json::from_slice::<serde_json::Value>(&p).is_ok());
        let push = format!(
            "{{\"push\":{{\"channel\":\"bench\",\"pub\":{{\"data\":{},\"info\":{{\"client\":\"c\"}}}}}}}}\n{{}}",
            String::from_utf8_lossy(&p)
        );
        let mut s = Scan::default();
        let mut got = Vec::new();
        scan(Target::Switchboard, push.as_bytes(), &mut s, |st| {
            got.push(st)
        });
        assert_eq!(
            got,
            [Stamp {
                seq: 42,
                t_ns: 123_456_789
            }]
        );
        assert!(s.ping);
        let frame = publish_frame(Target::Socketio, 1, "bench", &p);
        assert!(frame.starts_with(b"42[\"broadcast\",\"bench\",\"bench\",{\"s\":42,"));
        // What a subscriber receives: the event with the payload, byte for byte.
        let delivered = format!("42[\"bench\",{}]", String::from_utf8_lossy(&p));
        got.clear();
        scan(Target::Socketio, delivered.as_bytes(), &mut s, |st| {
            got.push(st)
        });
        assert_eq!(got.len(), 1);
        got.clear();
        scan(Target::Raw, &p, &mut s, |st| got.push(st));
        assert_eq!(got.len(), 1);
    }
}
