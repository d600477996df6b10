//! The Engine.IO HTTP endpoint: handshake, long-polling GET/POST, WebSocket (direct and as an
//! upgrade), CORS, and the reference server's status codes for bad requests.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use switchboard_ws::{validate_upgrade, Message, Role, WsConfig, WsSocket};

use super::config::EngineConfig;
use super::packet::{decode_payload, encode_payload, Packet};
use super::session::{
    queue, CloseReason, EngineSocket, Incoming, Registry, Session, Transport, Ws,
};

/// Most bytes of packets in the answer to a poll forwarded from another node (the rest waits
/// for the next poll): the answer crosses the broker, whose messages are limited (NATS: 1 MiB).
pub const FORWARDED_POLL_BYTES: usize = 256 * 1024;

/// Most packets accepted in one polling payload.
pub const MAX_PACKETS_PER_PAYLOAD: usize = 4096;

/// What the application does with new sessions.
pub trait EngineHandler: Send + Sync + 'static {
    /// A session was opened. `incoming` serves the session while it is polled (heartbeat,
    /// WebSocket) and yields its messages in order, `None` once the session is closed; the
    /// handler spawns the one task that polls it (see [`Incoming`]). Called on the task serving
    /// the handshake.
    fn on_open(&self, socket: EngineSocket, incoming: Incoming);
}

/// An Engine.IO server: serve it from any route with [`Engine::handle`].
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    config: EngineConfig,
    registry: Arc<Registry>,
    handler: Arc<dyn EngineHandler>,
    cluster: std::sync::OnceLock<Arc<dyn Cluster>>,
}

/// A polling request for a session held by another node.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ForwardedRequest {
    /// The session id.
    pub sid: String,
    /// `true` for a POST (`body` holds the payload), `false` for a GET.
    pub post: bool,
    /// The POST body.
    pub body: String,
}

/// The owning node's answer to a [`ForwardedRequest`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ForwardedResponse {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: String,
    /// Body.
    pub body: String,
}

/// The nodes of a cluster, for polling requests that reach a node other than the one holding
/// their session (no sticky sessions needed). Session ids carry the owning node's id after a
/// `.`.
pub trait Cluster: Send + Sync + 'static {
    /// This node's id (no `.` in it).
    fn node_id(&self) -> &str;
    /// Sends `req` to `node` and waits for its answer (`None`: no answer in time).
    fn forward(
        &self,
        node: &str,
        req: ForwardedRequest,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<ForwardedResponse>> + Send>>;
}

/// A weak handle on an [`Engine`] (for a [`Cluster`] that serves forwarded requests).
#[derive(Clone)]
pub struct WeakEngine(std::sync::Weak<Inner>);

impl std::fmt::Debug for WeakEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WeakEngine")
    }
}

impl WeakEngine {
    /// The engine, while it exists.
    pub fn upgrade(&self) -> Option<Engine> {
        self.0.upgrade().map(|inner| Engine { inner })
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// The reference server's error codes (JSON body of a 400).
#[derive(Debug, Clone, Copy)]
enum ErrorCode {
    UnknownTransport = 0,
    UnknownSid = 1,
    BadHandshakeMethod = 2,
    BadRequest = 3,
    UnsupportedProtocolVersion = 5,
}

impl ErrorCode {
    fn message(self) -> &'static str {
        match self {
            ErrorCode::UnknownTransport => "Transport unknown",
            ErrorCode::UnknownSid => "Session ID unknown",
            ErrorCode::BadHandshakeMethod => "Bad handshake method",
            ErrorCode::BadRequest => "Bad request",
            ErrorCode::UnsupportedProtocolVersion => "Unsupported protocol version",
        }
    }
}

/// The query parameters Engine.IO uses.
#[derive(Debug, Default)]
struct Query<'a> {
    eio: Option<&'a str>,
    transport: Option<&'a str>,
    sid: Option<&'a str>,
}

fn parse_query(q: &str) -> Query<'_> {
    let mut out = Query::default();
    for pair in q.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "EIO" => out.eio = Some(v),
            "transport" => out.transport = Some(v),
            "sid" => out.sid = Some(v),
            _ => {}
        }
    }
    out
}

impl Engine {
    /// A server with `config` handing new sessions to `handler`.
    pub fn new(config: EngineConfig, handler: Arc<dyn EngineHandler>) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                registry: Arc::new(Registry::default()),
                handler,
                cluster: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Joins a cluster: new session ids carry this node's id, and polling requests for
    /// sessions of other nodes are forwarded to them. Set once, before serving.
    pub fn set_cluster(&self, cluster: Arc<dyn Cluster>) {
        let _ = self.inner.cluster.set(cluster);
    }

    /// A weak handle on this engine.
    pub fn downgrade(&self) -> WeakEngine {
        WeakEngine(Arc::downgrade(&self.inner))
    }

    /// Serves a polling request forwarded by another node for a session of this one.
    pub async fn serve_forwarded(&self, req: ForwardedRequest) -> ForwardedResponse {
        let resp = match self.inner.registry.get(&req.sid) {
            Some(s)
                if s.check_expired() && s.state.lock().closed != Some(CloseReason::ClientClose) =>
            {
                error(ErrorCode::UnknownSid)
            }
            None => error(ErrorCode::UnknownSid),
            Some(s) if req.post => self.post_bytes(s, req.body.into()).await,
            // Forwarded answers travel over the broker's control channel: keep them small.
            Some(s) => poll(s, FORWARDED_POLL_BYTES).await,
        };
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("text/plain; charset=UTF-8")
            .to_owned();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        ForwardedResponse {
            status,
            content_type,
            body,
        }
    }

    fn new_sid_suffix(&self) -> Option<String> {
        self.inner.cluster.get().map(|c| c.node_id().to_owned())
    }

    /// Forwards a polling request whose session another node holds; `None` when `sid` names
    /// no other node.
    async fn forward(&self, sid: &str, req: Request) -> Option<Response> {
        let cluster = self.inner.cluster.get()?;
        let (_, node) = sid.split_once('.')?;
        if node == cluster.node_id() {
            return None;
        }
        let post = match *req.method() {
            Method::GET => false,
            Method::POST => true,
            _ => return Some(error(ErrorCode::BadRequest)),
        };
        let body = if post {
            match axum::body::to_bytes(req.into_body(), self.inner.config.max_payload).await {
                Ok(b) => String::from_utf8_lossy(&b).into_owned(),
                Err(_) => return Some((StatusCode::PAYLOAD_TOO_LARGE, "").into_response()),
            }
        } else {
            String::new()
        };
        let fwd = ForwardedRequest {
            sid: sid.to_owned(),
            post,
            body,
        };
        let Some(answer) = cluster.forward(node, fwd).await else {
            return Some(error(ErrorCode::UnknownSid));
        };
        let mut resp = Response::new(Body::from(answer.body));
        *resp.status_mut() = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
        if let Ok(ct) = HeaderValue::from_str(&answer.content_type) {
            resp.headers_mut().insert(header::CONTENT_TYPE, ct);
        }
        Some(resp)
    }

    /// The options it runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Number of open sessions.
    pub fn sessions(&self) -> usize {
        self.inner.registry.len()
    }

    /// Serves one HTTP request of the Engine.IO endpoint.
    pub async fn handle(&self, req: Request) -> Response {
        let cors = self.cors_headers(req.headers());
        let mut resp = if req.method() == Method::OPTIONS {
            preflight(req.headers())
        } else {
            self.route(req).await
        };
        if let Some(cors) = cors {
            resp.headers_mut().extend(cors);
        }
        resp
    }

    async fn route(&self, req: Request) -> Response {
        let query = req.uri().query().unwrap_or("").to_owned();
        let q = parse_query(&query);
        if q.eio != Some("4") {
            return error(ErrorCode::UnsupportedProtocolVersion);
        }
        let config = &self.inner.config;
        match q.transport {
            Some("polling") if config.polling => {}
            Some("websocket") if config.websocket => {}
            _ => return error(ErrorCode::UnknownTransport),
        }
        let is_ws = q.transport == Some("websocket");
        let session = match q.sid {
            Some(sid) if !is_ws && self.inner.registry.get(sid).is_none() => {
                return match self.forward(sid, req).await {
                    Some(resp) => resp,
                    None => error(ErrorCode::UnknownSid),
                };
            }
            Some(sid) => match self.inner.registry.get(sid) {
                Some(s)
                    if s.check_expired()
                        && s.state.lock().closed != Some(CloseReason::ClientClose) =>
                {
                    return error(ErrorCode::UnknownSid)
                }
                Some(s) => Some(s),
                None => return error(ErrorCode::UnknownSid),
            },
            None => None,
        };
        if is_ws {
            return self.websocket(req, session);
        }
        match (session, req.method().clone()) {
            (None, Method::GET) => self.open_polling(),
            (None, _) => error(ErrorCode::BadHandshakeMethod),
            (Some(s), Method::GET) => poll(s, self.inner.config.max_payload).await,
            (Some(s), Method::POST) => self.post(s, req).await,
            (Some(_), _) => error(ErrorCode::BadRequest),
        }
    }

    fn handshake(&self, sid: &str, upgrades: bool) -> Packet {
        let c = &self.inner.config;
        let upgrades = if upgrades && c.websocket {
            "[\"websocket\"]"
        } else {
            "[]"
        };
        Packet::Open(format!(
            "{{\"sid\":\"{sid}\",\"upgrades\":{upgrades},\"pingInterval\":{},\"pingTimeout\":{},\"maxPayload\":{}}}",
            c.ping_interval.as_millis(),
            c.ping_timeout.as_millis(),
            c.max_payload
        ))
    }

    fn open_polling(&self) -> Response {
        let (session, incoming) = self.inner.registry.create(
            Transport::Polling,
            &self.inner.config,
            self.new_sid_suffix(),
        );
        let open = self.handshake(&session.sid, true);
        self.inner.handler.on_open(
            EngineSocket {
                session: session.clone(),
            },
            incoming,
        );
        // The handshake goes out first, with whatever the application queued on open.
        let mut packets = vec![open];
        {
            let mut st = session.state.lock();
            packets.extend(session.drain(&mut st));
        }
        text_response(encode_payload(&packets))
    }

    async fn post(&self, session: Arc<Session>, req: Request) -> Response {
        let max = self.inner.config.max_payload;
        let body = match axum::body::to_bytes(req.into_body(), max).await {
            Ok(b) => b,
            Err(_) => {
                session.close(CloseReason::TransportError);
                return (StatusCode::PAYLOAD_TOO_LARGE, "").into_response();
            }
        };
        self.post_bytes(session, body).await
    }

    async fn post_bytes(&self, session: Arc<Session>, body: bytes::Bytes) -> Response {
        {
            let mut st = session.state.lock();
            if st.transport == Transport::WebSocket || st.closed.is_some() {
                drop(st);
                return error(ErrorCode::BadRequest);
            }
            if st.post_active {
                drop(st);
                session.close(CloseReason::ProtocolError);
                return error(ErrorCode::BadRequest);
            }
            st.post_active = true;
        }
        let _guard = PostGuard(&session);
        if body.len() > self.inner.config.max_payload {
            session.close(CloseReason::TransportError);
            return (StatusCode::PAYLOAD_TOO_LARGE, "").into_response();
        }
        let packets = match decode_payload(&body, MAX_PACKETS_PER_PAYLOAD) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(sid = %session.sid, error = %e, "engine.io: bad payload");
                session.close(CloseReason::ProtocolError);
                return error(ErrorCode::BadRequest);
            }
        };
        for p in packets {
            if !session.receive(p).await {
                break;
            }
        }
        let mut resp = (StatusCode::OK, "ok").into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        resp
    }

    fn websocket(&self, mut req: Request, session: Option<Arc<Session>>) -> Response {
        let config = &self.inner.config;
        let ws_config = WsConfig::default().max_message_size(config.max_payload);
        let upgrade = match validate_upgrade(req.headers(), req.method(), &ws_config) {
            Ok(u) => u,
            Err(_) => return error(ErrorCode::BadRequest),
        };
        // A WebSocket for a session that is already upgraded (or being upgraded) is accepted
        // and closed right away, as the reference server does.
        let mut refused = false;
        if let Some(s) = &session {
            let mut st = s.state.lock();
            if st.transport != Transport::Polling || st.upgrade_claimed || st.closed.is_some() {
                refused = true;
            } else {
                st.upgrade_claimed = true;
            }
        }
        let on_upgrade = hyper::upgrade::on(&mut req);
        let engine = self.clone();
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let io = TokioIo::new(upgraded);
                    let mut ws = Box::new(WsSocket::with_deflate(
                        io,
                        Role::Server,
                        ws_config,
                        upgrade.deflate,
                    ));
                    match session {
                        _ if refused => {
                            let _ = ws.close(1000, "").await;
                        }
                        Some(s) => engine.run_upgrade(ws, s).await,
                        None => engine.run_websocket(ws).await,
                    }
                }
                Err(e) => tracing::debug!(error = %e, "engine.io: websocket upgrade failed"),
            }
        });
        let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
        response.headers_mut().extend(upgrade.response_headers());
        response
    }

    /// A session opened directly over WebSocket: the handler's task serves it.
    async fn run_websocket(&self, mut ws: Box<Ws>) {
        let (session, mut incoming) = self.inner.registry.create(
            Transport::WebSocket,
            &self.inner.config,
            self.new_sid_suffix(),
        );
        let open = self.handshake(&session.sid, false);
        queue(&mut ws, open);
        incoming.set_websocket(ws);
        self.inner
            .handler
            .on_open(EngineSocket { session }, incoming);
    }

    /// A WebSocket taking over a polling session: `2probe` -> `3probe`, then `5`; then the
    /// session's task serves it.
    async fn run_upgrade(&self, mut ws: Box<Ws>, session: Arc<Session>) {
        let deadline = tokio::time::sleep(self.inner.config.upgrade_timeout);
        tokio::pin!(deadline);
        let upgraded = loop {
            let msg = tokio::select! {
                m = ws.recv() => m,
                _ = &mut deadline => break false,
                _ = session.wait_closed() => break false,
            };
            let text = match msg {
                Ok(Some(Message::Text(t))) => t,
                Ok(Some(m)) if !m.is_data() => continue,
                _ => break false,
            };
            match Packet::decode_text(std::str::from_utf8(&text).unwrap_or("")) {
                Ok(Packet::Ping(d)) if d == "probe" => {
                    {
                        let mut st = session.state.lock();
                        if st.transport == Transport::Polling {
                            st.transport = Transport::Upgrading;
                        }
                    }
                    session.wake_all();
                    queue(&mut ws, Packet::Pong("probe".into()));
                    if ws.flush().await.is_err() {
                        break false;
                    }
                }
                Ok(Packet::Upgrade) => break true,
                _ => break false,
            }
        };
        if !upgraded {
            {
                let mut st = session.state.lock();
                st.upgrade_claimed = false;
                if st.transport == Transport::Upgrading {
                    st.transport = Transport::Polling;
                }
            }
            session.wake_all();
            let _ = ws.close(1000, "").await;
            return;
        }
        if let Err(mut ws) = session.install_websocket(ws) {
            let _ = ws.close(1000, "").await;
        }
    }

    fn cors_headers(&self, headers: &HeaderMap) -> Option<HeaderMap> {
        let origins = &self.inner.config.cors_origins;
        if origins.is_empty() {
            return None;
        }
        let origin = headers.get(header::ORIGIN)?;
        let allowed = origins
            .iter()
            .any(|o| o == "*" || o.as_bytes() == origin.as_bytes());
        if !allowed {
            return None;
        }
        let mut out = HeaderMap::new();
        out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        out.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        out.insert(header::VARY, HeaderValue::from_static("Origin"));
        Some(out)
    }
}

/// Answers a CORS preflight.
fn preflight(headers: &HeaderMap) -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET,HEAD,PUT,PATCH,POST,DELETE"),
    );
    if let Some(req_headers) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, req_headers.clone());
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    resp
}

/// Resets `post_active` when the POST ends.
struct PostGuard<'a>(&'a Arc<Session>);

impl Drop for PostGuard<'_> {
    fn drop(&mut self) {
        self.0.state.lock().post_active = false;
    }
}

/// Resets `poll_active` when the GET ends (also when the client goes away).
struct PollGuard<'a>(&'a Arc<Session>);

impl Drop for PollGuard<'_> {
    fn drop(&mut self) {
        self.0.state.lock().poll_active = false;
    }
}

/// A long-polling GET: answers with what is queued (up to about `max_bytes`), or waits for
/// something.
async fn poll(session: Arc<Session>, max_bytes: usize) -> Response {
    {
        let mut st = session.state.lock();
        if st.transport == Transport::WebSocket {
            drop(st);
            return error(ErrorCode::BadRequest);
        }
        if st.poll_active {
            drop(st);
            // Overlapping polls: the reference server closes the session (the first poll gets
            // a close packet) and refuses the second.
            session.close(CloseReason::ProtocolError);
            return error(ErrorCode::BadRequest);
        }
        st.poll_active = true;
    }
    let _guard = PollGuard(&session);
    loop {
        let notified = session.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let mut st = session.state.lock();
            if let Some(reason) = st.closed {
                {
                    drop(st);
                    // The session lingered for this poll (see `Session::close`): now it is gone.
                    session.unregister();
                    let body = if reason == CloseReason::ClientClose {
                        "6"
                    } else {
                        "1"
                    };
                    return text_response(body.into());
                }
            }
            match st.transport {
                Transport::Upgrading => return text_response("6".into()),
                Transport::WebSocket => return text_response("6".into()),
                Transport::Polling => {}
            }
            if !st.outbox.is_empty() {
                let packets = session.drain_up_to(&mut st, max_bytes);
                return text_response(encode_payload(&packets));
            }
        }
        notified.await;
    }
}

fn text_response(body: String) -> Response {
    let mut resp = Response::new(Body::from(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=UTF-8"),
    );
    resp
}

fn error(code: ErrorCode) -> Response {
    let body = format!(
        "{{\"code\":{},\"message\":\"{}\"}}",
        code as u8,
        code.message()
    );
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = StatusCode::BAD_REQUEST;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        let q = parse_query("EIO=4&transport=polling&sid=abc&t=x");
        assert_eq!(q.eio, Some("4"));
        assert_eq!(q.transport, Some("polling"));
        assert_eq!(q.sid, Some("abc"));
        let q = parse_query("");
        assert!(q.eio.is_none() && q.transport.is_none() && q.sid.is_none());
    }
}
