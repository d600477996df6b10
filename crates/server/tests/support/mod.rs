//! Helpers shared by the server's integration tests: start a real [`Server`] on an ephemeral
//! port, talk to it with a raw WebSocket client (so tests can send anything, including broken
//! input) and with plain HTTP/1.1 requests.
//!
//! Every wait is bounded: a helper that does not get what it expects within its timeout panics
//! with what it saw instead.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard_http::config::Config;
use switchboard_http::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Default bound for one expected event (a reply, a push, a close).
pub(crate) const TIMEOUT: Duration = Duration::from_secs(5);

/// Starts a server on `127.0.0.1:0` with the development configuration, after `tweak` changed
/// it. Pings are disabled unless the test turns them on, so that they never interleave with
/// replies a test waits for.
///
/// The server's tasks end with the test's runtime; tests about shutdown call
/// [`Server::shutdown`] themselves (with connections still open it waits for their close
/// handshakes, which is slow when the test does not read them).
pub(crate) async fn start(tweak: impl FnOnce(&mut Config)) -> Server {
    let mut config = Config::development();
    config.address = "127.0.0.1:0".parse().unwrap();
    config.client.ping_interval = Duration::ZERO;
    tweak(&mut config);
    Server::start(config).await.expect("server starts")
}

/// `ws://addr/connection/websocket`.
pub(crate) fn ws_url(addr: SocketAddr) -> String {
    format!("ws://{addr}/connection/websocket")
}

/// One JSON message, or how the connection ended.
#[derive(Debug)]
pub(crate) enum Event {
    /// One line of a text frame, parsed.
    Json(Value),
    /// A close frame: code and reason (code 1005 when the frame had no payload).
    Close(u16, String),
    /// The stream ended without a close frame, or failed.
    Ended(String),
}

/// A raw WebSocket client.
pub(crate) struct Conn<S = MaybeTlsStream<TcpStream>> {
    pub(crate) ws: WebSocketStream<S>,
    /// Lines of frames already read but not yet returned.
    pending: VecDeque<Value>,
    next_id: u32,
    /// The client id from the connect reply, once connected.
    pub(crate) client_id: String,
}

impl Conn {
    /// Opens a WebSocket connection without sending anything.
    pub(crate) async fn open(addr: SocketAddr) -> Self {
        let (ws, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(ws_url(addr)))
            .await
            .expect("websocket handshake timed out")
            .expect("websocket handshake");
        Self::from_ws(ws)
    }

    /// Opens a connection and sends `connect`; checks the reply.
    pub(crate) async fn connected(addr: SocketAddr) -> Self {
        let mut conn = Self::open(addr).await;
        conn.connect().await;
        conn
    }

    /// Opens a WebSocket connection whose upgrade request carries `headers` (Cookie, Origin,
    /// ...), without sending anything.
    pub(crate) async fn open_with_headers(addr: SocketAddr, headers: &[(&str, &str)]) -> Self {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
        let mut request = ws_url(addr).into_client_request().unwrap();
        for (name, value) in headers {
            request.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let (ws, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(request))
            .await
            .expect("websocket handshake timed out")
            .expect("websocket handshake");
        Self::from_ws(ws)
    }

    /// Opens a connection and connects with `token`, expecting success.
    pub(crate) async fn connected_with_token(addr: SocketAddr, token: &str) -> Self {
        let mut conn = Self::open(addr).await;
        conn.connect_with(json!({ "token": token })).await;
        conn
    }
}

impl Conn<TcpStream> {
    /// Opens a connection whose socket has a small receive buffer (and that the test can stop
    /// reading from), then sends `connect`.
    pub(crate) async fn connected_small_rcvbuf(addr: SocketAddr, rcvbuf: u32) -> Self {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(rcvbuf).unwrap();
        let stream = tokio::time::timeout(TIMEOUT, socket.connect(addr))
            .await
            .expect("tcp connect timed out")
            .expect("tcp connect");
        let (ws, _) = tokio::time::timeout(
            TIMEOUT,
            tokio_tungstenite::client_async(ws_url(addr), stream),
        )
        .await
        .expect("websocket handshake timed out")
        .expect("websocket handshake");
        let mut conn = Self::from_ws(ws);
        conn.connect().await;
        conn
    }
}

impl<S> Conn<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    pub(crate) fn from_ws(ws: WebSocketStream<S>) -> Self {
        Self {
            ws,
            pending: VecDeque::new(),
            next_id: 1,
            client_id: String::new(),
        }
    }

    /// A fresh command id.
    pub(crate) fn id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Sends `connect` and checks the reply; remembers the client id.
    pub(crate) async fn connect(&mut self) -> Value {
        self.connect_with(json!({})).await
    }

    /// Sends `connect` with `params` (`{"token": ..}`, `{"data": ..}`) and checks the reply;
    /// remembers the client id. Returns the connect result.
    pub(crate) async fn connect_with(&mut self, params: Value) -> Value {
        let reply = self.request(json!({ "connect": params })).await;
        let result = reply
            .get("connect")
            .unwrap_or_else(|| panic!("connect failed: {reply}"));
        self.client_id = result["client"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| panic!("connect reply without client id: {reply}"))
            .to_string();
        result.clone()
    }

    /// Sends one text frame as is.
    pub(crate) async fn send_text(&mut self, text: impl Into<String>) {
        let text: String = text.into();
        self.send(Message::text(text)).await;
    }

    /// Sends one message of any kind.
    pub(crate) async fn send(&mut self, message: Message) {
        tokio::time::timeout(TIMEOUT, self.ws.send(message))
            .await
            .expect("send timed out")
            .expect("send");
    }

    /// Sends a text frame whose payload is `bytes`, valid UTF-8 or not.
    pub(crate) async fn send_raw_text(&mut self, bytes: Vec<u8>) {
        let frame = Frame::message(bytes, OpCode::Data(Data::Text), true);
        self.send(Message::Frame(frame)).await;
    }

    /// Sends several commands in one frame, newline-separated, giving each an id (`method`
    /// object without `id`); returns the ids in order.
    pub(crate) async fn send_batch(&mut self, commands: &[Value]) -> Vec<u32> {
        let mut ids = Vec::new();
        let mut lines = Vec::new();
        for command in commands {
            let mut command = command.clone();
            let id = self.id();
            command["id"] = json!(id);
            ids.push(id);
            lines.push(command.to_string());
        }
        self.send_text(lines.join("\n")).await;
        ids
    }

    /// Sends `command` (a method object such as `{"subscribe":{...}}`) with a fresh id and
    /// returns the reply with that id. Pushes read meanwhile stay queued for [`Conn::next_json`].
    pub(crate) async fn request(&mut self, command: Value) -> Value {
        let ids = self.send_batch(&[command]).await;
        self.reply(ids[0]).await
    }

    /// Waits for the reply with `id`. Messages without an id (pushes, pings) read meanwhile are
    /// kept for later; a reply with another id fails the test.
    pub(crate) async fn reply(&mut self, id: u32) -> Value {
        let mut skipped = VecDeque::new();
        let found = loop {
            let value = match self.next_event(TIMEOUT).await {
                Event::Json(v) => v,
                other => panic!("waiting for reply {id}: {other:?}"),
            };
            match value.get("id").and_then(Value::as_u64) {
                Some(got) if got == u64::from(id) => break value,
                Some(got) => panic!("waiting for reply {id}, got reply {got}: {value}"),
                None => skipped.push_back(value),
            }
        };
        skipped.append(&mut self.pending);
        self.pending = skipped;
        found
    }

    /// Sends `command` and expects an error reply; returns its code.
    pub(crate) async fn request_error(&mut self, command: Value) -> u64 {
        let reply = self.request(command).await;
        reply["error"]["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("expected an error reply, got {reply}"))
    }

    /// Sends `command` and expects a successful reply; returns the result object.
    pub(crate) async fn request_ok(&mut self, command: Value) -> Value {
        let method = command
            .as_object()
            .and_then(|o| o.keys().next().cloned())
            .expect("a method object");
        let reply = self.request(command).await;
        assert!(reply.get("error").is_none(), "{method} failed: {reply}");
        reply
            .get(&method)
            .unwrap_or_else(|| panic!("{method} reply without result: {reply}"))
            .clone()
    }

    /// Subscribes to `channel`, expecting success.
    pub(crate) async fn subscribe(&mut self, channel: &str) {
        self.request_ok(json!({"subscribe": {"channel": channel}}))
            .await;
    }

    /// Publishes `data` into `channel`, expecting success.
    pub(crate) async fn publish(&mut self, channel: &str, data: Value) {
        self.request_ok(json!({"publish": {"channel": channel, "data": data}}))
            .await;
    }

    /// The next WebSocket message as the raw frame: text lines, or how the connection ended.
    /// Ignores WebSocket pings and pongs.
    pub(crate) async fn next_frame(&mut self, timeout: Duration) -> Result<Vec<Value>, Event> {
        assert!(
            self.pending.is_empty(),
            "next_frame with unread lines: {:?}",
            self.pending
        );
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let message = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("nothing received within {timeout:?}"),
                Ok(None) => return Err(Event::Ended("stream ended".into())),
                Ok(Some(Err(e))) => return Err(Event::Ended(e.to_string())),
                Ok(Some(Ok(m))) => m,
            };
            match message {
                Message::Text(text) => {
                    return Ok(text
                        .as_str()
                        .split('\n')
                        .map(|line| {
                            serde_json::from_str(line)
                                .unwrap_or_else(|e| panic!("bad JSON line {line:?}: {e}"))
                        })
                        .collect())
                }
                Message::Close(frame) => {
                    return Err(match frame {
                        Some(f) => Event::Close(u16::from(f.code), f.reason.to_string()),
                        None => Event::Close(1005, String::new()),
                    })
                }
                Message::Binary(b) => panic!("unexpected binary message ({} bytes)", b.len()),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    /// The next JSON message (one line of a frame), or how the connection ended.
    pub(crate) async fn next_event(&mut self, timeout: Duration) -> Event {
        if let Some(v) = self.pending.pop_front() {
            return Event::Json(v);
        }
        match self.next_frame(timeout).await {
            Ok(lines) => {
                self.pending.extend(lines);
                Event::Json(self.pending.pop_front().expect("a frame has a line"))
            }
            Err(event) => event,
        }
    }

    /// The next JSON message; fails the test on anything else.
    pub(crate) async fn next_json(&mut self) -> Value {
        match self.next_event(TIMEOUT).await {
            Event::Json(v) => v,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// The next publication push; returns `(channel, pub)`.
    pub(crate) async fn next_publication(&mut self) -> (String, Value) {
        let value = self.next_json().await;
        let push = value
            .get("push")
            .unwrap_or_else(|| panic!("expected a push, got {value}"));
        let publication = push
            .get("pub")
            .unwrap_or_else(|| panic!("expected a publication, got {value}"));
        let channel = push["channel"].as_str().unwrap_or_default().to_string();
        (channel, publication.clone())
    }

    /// Reads until the connection closes; expects a close frame with `code` (messages before it
    /// are skipped). Returns the reason.
    pub(crate) async fn expect_close(&mut self, code: u16, timeout: Duration) -> String {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Event::Json(_) => {}
                Event::Close(got, reason) => {
                    assert_eq!(got, code, "close code (reason {reason:?})");
                    return reason;
                }
                Event::Ended(why) => panic!("expected close {code}, connection ended: {why}"),
            }
        }
    }

    /// Asserts that nothing arrives within `quiet` (the connection stays open and silent).
    pub(crate) async fn expect_silence(&mut self, quiet: Duration) {
        assert!(self.pending.is_empty(), "unread: {:?}", self.pending);
        if let Ok(m) = tokio::time::timeout(quiet, self.ws.next()).await {
            panic!("expected silence, got {m:?}");
        }
    }

    /// Checks that the connection still works: a `ping` command gets its reply.
    pub(crate) async fn assert_alive(&mut self) {
        let reply = self.request(json!({"ping": {}})).await;
        assert!(reply.get("error").is_none(), "ping failed: {reply}");
    }
}

/// A plain HTTP/1.1 response.
#[derive(Debug)]
pub(crate) struct HttpResponse {
    pub(crate) status: u16,
    pub(crate) headers: String,
    pub(crate) body: String,
}

/// `GET path` over a fresh TCP connection (`Connection: close`).
pub(crate) async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<HttpResponse> {
    let work = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(TIMEOUT, work).await.map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::TimedOut, "http request timed out")
    })??;
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("incomplete response: {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head:?}"));
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok(HttpResponse {
        status,
        headers: head.to_string(),
        body,
    })
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").expect("chunk size line");
        let size = usize::from_str_radix(size.trim(), 16).expect("hex chunk size");
        if size == 0 {
            return out;
        }
        out.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
}

/// `GET /metrics`, as text.
pub(crate) async fn metrics(addr: SocketAddr) -> String {
    let response = http_get(addr, "/metrics").await.expect("GET /metrics");
    assert_eq!(response.status, 200, "{response:?}");
    response.body
}

/// The value of the sample whose name and labels are exactly `series`
/// (`switchboard_commands_total{method="subscribe"}`), or `None` if absent.
pub(crate) fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}

/// Like [`metric`], panicking when the series is missing.
pub(crate) fn metric_value(text: &str, series: &str) -> f64 {
    metric(text, series).unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub(crate) async fn eventually<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A production-mode configuration loaded from `toml` the way the binary loads
/// `switchboard.toml` (through [`switchboard_http::config::load`]), listening on
/// `127.0.0.1:0`, with pings off (so they never interleave with what a test waits for).
pub(crate) fn config_from_toml(toml: &str) -> Config {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchboard.toml");
    std::fs::write(&path, toml).unwrap();
    let mut config = switchboard_http::config::load(&switchboard_http::config::Sources {
        file: Some(path),
        env: vec![],
        flags: vec![],
    })
    .unwrap_or_else(|e| panic!("config does not load: {e}\n{toml}"));
    config.address = "127.0.0.1:0".parse().unwrap();
    config.client.ping_interval = Duration::ZERO;
    config
}

/// Starts a server with [`config_from_toml`].
pub(crate) async fn start_toml(toml: &str) -> Server {
    Server::start(config_from_toml(toml))
        .await
        .expect("server starts")
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 token with `claims`, signed with `secret`.
pub(crate) fn hs256(secret: &str, claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A token signed with `alg` and `key`, with `kid` in the header when given.
pub(crate) fn sign(
    alg: jsonwebtoken::Algorithm,
    key: &jsonwebtoken::EncodingKey,
    kid: Option<&str>,
    claims: Value,
) -> String {
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

/// Publishes `data` into `channel` through the hub (the server API path, no permission checks).
pub(crate) async fn hub_publish(server: &Server, channel: &str, data: Value) {
    let raw = serde_json::value::RawValue::from_string(data.to_string()).unwrap();
    server
        .hub()
        .publish(channel, raw, None)
        .await
        .unwrap_or_else(|e| panic!("publish into {channel}: {e:?}"));
}

/// An HTTP response from the server API: status and body (JSON when it parses, else a string).
#[derive(Debug)]
pub(crate) struct ApiResponse {
    pub(crate) status: u16,
    pub(crate) body: Value,
}

/// `POST /api/<method>` with `body` (sent as is) and extra `headers`.
pub(crate) async fn api_raw(
    addr: SocketAddr,
    method: &str,
    headers: &[(&str, &str)],
    body: impl Into<String>,
) -> ApiResponse {
    let client = reqwest::Client::builder().timeout(TIMEOUT).build().unwrap();
    let mut request = client
        .post(format!("http://{addr}/api/{method}"))
        .header("content-type", "application/json")
        .body(body.into());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("API request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("API response body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    ApiResponse { status, body }
}

/// `POST /api/<method>` with `params` and `X-API-Key: key` (no key header when `key` is
/// empty); expects HTTP 200 and returns the JSON body (`{"result":..}` or `{"error":..}`).
pub(crate) async fn api(addr: SocketAddr, key: &str, method: &str, params: Value) -> Value {
    let headers: Vec<(&str, &str)> = if key.is_empty() {
        vec![]
    } else {
        vec![("X-API-Key", key)]
    };
    let response = api_raw(addr, method, &headers, params.to_string()).await;
    assert_eq!(response.status, 200, "{method}: {response:?}");
    response.body
}

/// One request a [`Backend`] received.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    pub(crate) method: String,
    pub(crate) path: String,
    /// Header names in lower case.
    pub(crate) headers: std::collections::HashMap<String, String>,
    pub(crate) body: Value,
    pub(crate) at: std::time::Instant,
}

/// What a [`Backend`] answers.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: Value,
    /// Sleep this long before answering.
    pub(crate) delay: Duration,
}

impl Answer {
    /// `200` with `body`, at once.
    pub(crate) fn json(body: Value) -> Self {
        Self {
            status: 200,
            body,
            delay: Duration::ZERO,
        }
    }

    /// `200` with `body` after `delay`.
    pub(crate) fn slow(body: Value, delay: Duration) -> Self {
        Self {
            status: 200,
            body,
            delay,
        }
    }
}

type Handler = dyn Fn(&Recorded) -> Answer + Send + Sync;

/// A real HTTP server on `127.0.0.1:0` standing in for the application backend (proxies) or a
/// JWKS endpoint: it records every request and answers with what the test's handler says.
pub(crate) struct Backend {
    pub(crate) addr: SocketAddr,
    requests: std::sync::Arc<std::sync::Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    /// Starts a backend answering every request (any method, any path) with `handler`.
    pub(crate) async fn start(
        handler: impl Fn(&Recorded) -> Answer + Send + Sync + 'static,
    ) -> Self {
        use std::sync::{Arc, Mutex};
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let handler: Arc<Handler> = Arc::new(handler);
        let log = requests.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let log = log.clone();
            let handler = handler.clone();
            async move {
                let (parts, body) = req.into_parts();
                let bytes = axum::body::to_bytes(body, usize::MAX)
                    .await
                    .unwrap_or_default();
                let recorded = Recorded {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_string(),
                    headers: parts
                        .headers
                        .iter()
                        .map(|(n, v)| {
                            (
                                n.as_str().to_ascii_lowercase(),
                                v.to_str().unwrap_or_default().to_string(),
                            )
                        })
                        .collect(),
                    body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                    at: std::time::Instant::now(),
                };
                log.lock().unwrap().push(recorded.clone());
                let answer = handler(&recorded);
                if !answer.delay.is_zero() {
                    tokio::time::sleep(answer.delay).await;
                }
                (
                    axum::http::StatusCode::from_u16(answer.status).unwrap(),
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    answer.body.to_string(),
                )
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            requests,
            task,
        }
    }

    /// `http://addr{path}`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every request so far.
    pub(crate) fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// Requests to `path` so far.
    pub(crate) fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// Waits until at least `n` requests to `path` arrived; returns them.
    pub(crate) async fn wait_for(&self, path: &str, n: usize, timeout: Duration) -> Vec<Recorded> {
        let arrived = eventually(timeout, || async { self.requests_to(path).len() >= n }).await;
        let got = self.requests_to(path);
        assert!(
            arrived,
            "expected {n} requests to {path} within {timeout:?}, got {}: {got:?}",
            got.len()
        );
        got
    }
}

/// A local port nothing listens on (bound, then released).
pub(crate) fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

// ---- HTTP-streaming and SSE sessions ----

/// Where `POST /emulation` requests for one session go.
pub(crate) struct EmuTarget {
    pub(crate) addr: SocketAddr,
    pub(crate) session: String,
    pub(crate) node: String,
}

impl EmuTarget {
    /// Posts `commands` as one batch; returns the HTTP status.
    pub(crate) async fn post(&self, commands: &[Value]) -> u16 {
        let data: Vec<String> = commands.iter().map(Value::to_string).collect();
        let body = json!({"session": self.session, "node": self.node, "data": data.join("\n")});
        reqwest::Client::new()
            .post(format!("http://{}/emulation", self.addr))
            .header("content-type", "application/json")
            .body(body.to_string())
            .timeout(TIMEOUT)
            .send()
            .await
            .expect("POST /emulation")
            .status()
            .as_u16()
    }
}

/// The response stream of an `http_stream` or `sse` session, read message by message.
/// Messages not yet asked for are kept, so replies and pushes may come in any order.
pub(crate) struct EmuStream {
    response: reqwest::Response,
    sse: bool,
    buf: Vec<u8>,
    seen: Vec<Value>,
}

impl EmuStream {
    /// Opens an `http_stream` or `sse` session with `{"id": 1, "connect": connect}` as its
    /// first command.
    pub(crate) async fn open(addr: SocketAddr, transport: &str, connect: Value) -> Self {
        let first = json!({"id": 1, "connect": connect}).to_string();
        Self::try_open(addr, transport, first)
            .await
            .unwrap_or_else(|status| panic!("{transport} stream: HTTP {status}"))
    }

    /// Opens a unidirectional `uni_sse` (GET with `cf_connect`) or `uni_http_stream` (POST)
    /// stream with the connect request `request`.
    pub(crate) async fn open_uni(addr: SocketAddr, transport: &str, request: Value) -> Self {
        Self::try_open(addr, transport, request.to_string())
            .await
            .unwrap_or_else(|status| panic!("{transport} stream: HTTP {status}"))
    }

    /// Opens `/connection/{transport}` with `first` (the connect command, or for the
    /// unidirectional transports the connect request): the SSE transports by GET with
    /// `cf_connect`, the others by POST. `Err(status)` when the answer is not 200.
    pub(crate) async fn try_open(
        addr: SocketAddr,
        transport: &str,
        first: String,
    ) -> Result<Self, u16> {
        let sse = transport.ends_with("sse");
        let client = reqwest::Client::new();
        let request = if sse {
            let url = reqwest::Url::parse_with_params(
                &format!("http://{addr}/connection/{transport}"),
                &[("cf_connect", first)],
            )
            .unwrap();
            client.get(url)
        } else {
            client
                .post(format!("http://{addr}/connection/{transport}"))
                .header("content-type", "application/json")
                .body(first)
        };
        let response = request.send().await.expect("open the stream");
        if response.status() != 200 {
            return Err(response.status().as_u16());
        }
        Ok(Self {
            response,
            sse,
            buf: Vec::new(),
            seen: Vec::new(),
        })
    }

    /// The next message in stream order; `None` when the stream ended first.
    pub(crate) async fn next(&mut self, within: Duration) -> Option<Value> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if !self.seen.is_empty() {
                return Some(self.seen.remove(0));
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match tokio::time::timeout(left, self.response.chunk()).await {
                Ok(Ok(Some(chunk))) => {
                    self.buf.extend_from_slice(&chunk);
                    self.parse();
                }
                Ok(Ok(None)) | Ok(Err(_)) => return None,
                Err(_) => panic!("no message within {within:?}"),
            }
        }
    }

    /// Every message until the stream ends (within `within`).
    pub(crate) async fn rest(&mut self, within: Duration) -> Vec<Value> {
        let deadline = std::time::Instant::now() + within;
        let mut all = Vec::new();
        while let Some(m) = self
            .next(deadline.saturating_duration_since(std::time::Instant::now()))
            .await
        {
            all.push(m);
        }
        all
    }

    /// Moves the complete messages in `buf` to `seen`.
    fn parse(&mut self) {
        let sep: &[u8] = if self.sse { b"\n\n" } else { b"\n" };
        while let Some(i) = self.buf.windows(sep.len()).position(|w| w == sep) {
            let item: Vec<u8> = self.buf.drain(..i + sep.len()).take(i).collect();
            let text = String::from_utf8(item).unwrap();
            let json = if self.sse {
                text.lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .collect::<Vec<_>>()
                    .join("\n")
            } else {
                text
            };
            if !json.is_empty() {
                self.seen.push(serde_json::from_str(&json).unwrap());
            }
        }
    }

    /// The first message matching `pred` (taken from those seen), reading more as needed.
    pub(crate) async fn take(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + TIMEOUT;
        loop {
            if let Some(i) = self.seen.iter().position(&pred) {
                return self.seen.remove(i);
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match tokio::time::timeout(left, self.response.chunk()).await {
                Ok(Ok(Some(chunk))) => {
                    self.buf.extend_from_slice(&chunk);
                    self.parse();
                }
                other => panic!("waiting for {what}: {other:?}; seen {:?}", self.seen),
            }
        }
    }

    pub(crate) async fn reply(&mut self, id: u64) -> Value {
        self.take(&format!("reply {id}"), |m| m["id"] == id).await
    }

    pub(crate) async fn publication(&mut self, channel: &str) -> Value {
        let push = self
            .take(&format!("publication in {channel}"), |m| {
                m["push"]["channel"] == channel && m["push"].get("pub").is_some()
            })
            .await;
        push["push"]["pub"].clone()
    }

    /// Waits until the stream ends (its node died).
    pub(crate) async fn expect_end(&mut self, within: Duration) {
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match tokio::time::timeout(left, self.response.chunk()).await {
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None)) | Ok(Err(_)) => return,
                Err(_) => panic!("the stream did not end within {within:?}"),
            }
        }
    }
}
