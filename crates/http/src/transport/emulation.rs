//! Bidirectional emulation over HTTP, as the `centrifuge` SDKs speak it, for networks where
//! WebSocket does not get through:
//!
//! - `POST /connection/http_stream`: the body is the client's first batch of commands (its
//!   `connect`); the response is a stream of newline-delimited JSON replies and pushes.
//! - `GET /connection/sse?cf_connect=<connect command JSON>` (as an `EventSource` sends it) or
//!   `POST /connection/sse` with the commands as body: the same messages as Server-Sent Events,
//!   one `data:` event per message.
//! - `POST /emulation` with `{"session": S, "node": N, "data": "<commands>"}`: every later batch
//!   of commands of that session. `session` and `node` come from the connect reply; the request
//!   may reach any node (see [`Hub::route_emulation`]). Answers 204 when the batch was taken,
//!   404 for a session that does not exist (any more), 429 when the session has too many
//!   batches waiting, 400 for a malformed request.
//!
//! There is no close frame: a disconnect is a `{"push":{"disconnect":{...}}}` message at the end
//! of the stream. Commands of one session run in the order their batches arrived, one at a time,
//! while the stream keeps being written; the session's queue limit (`client.max_queue_bytes`)
//! applies as on WebSocket, and a client that stops reading the stream is disconnected with
//! 3008 "slow" once its queue overflows.

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use switchboard_hub::emulation::{Delivery, SessionGuard};
use switchboard_hub::{Client, Drained, Hub, TransportInfo};
use switchboard_proto::{encode_disconnect_push, DisconnectCode};
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;

use crate::app::AppState;
use crate::transport::work::{Session, Work};

/// Most messages written in one chunk of the stream.
const MAX_BATCH_ITEMS: usize = 256;

/// Chunks waiting to be written by the HTTP server: the stream's own small buffer; beyond it
/// messages wait in the session's queue, which is bounded by `client.max_queue_bytes`.
const BODY_CHUNKS: usize = 4;

/// How the stream frames messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// One JSON message per line (`http_stream`).
    Lines,
    /// One Server-Sent Event per message (`sse`).
    Events,
    /// Unidirectional, one push per line (`uni_http_stream`).
    UniLines,
    /// Unidirectional, one Server-Sent Event per push (`uni_sse`).
    UniEvents,
}

impl Format {
    fn transport(self) -> TransportInfo {
        match self {
            Format::Lines => TransportInfo::new("http_stream", true),
            Format::Events => TransportInfo::new("sse", true),
            Format::UniLines => TransportInfo::new("uni_http_stream", false),
            Format::UniEvents => TransportInfo::new("uni_sse", false),
        }
    }

    fn is_uni(self) -> bool {
        matches!(self, Format::UniLines | Format::UniEvents)
    }

    fn content_type(self) -> &'static str {
        match self {
            Format::Lines | Format::UniLines => "application/json",
            Format::Events | Format::UniEvents => "text/event-stream",
        }
    }

    /// Appends `message` framed for the stream. Unidirectional streams carry pushes without
    /// their `{"push": ...}` wrapper and the connect reply as `{"connect": ...}`; other replies
    /// (there are none after connect: the client sends no commands) are left out.
    fn frame(self, message: &[u8], out: &mut BytesMut) {
        let converted;
        let message = if self.is_uni() {
            match crate::transport::uni::as_push(message) {
                Some(push) => {
                    converted = push;
                    converted.as_ref()
                }
                None => return,
            }
        } else {
            message
        };
        match self {
            Format::Lines | Format::UniLines => {
                out.put_slice(message);
                out.put_u8(b'\n');
            }
            // A message never holds a line break outside its JSON strings, but data passes
            // through byte for byte and may carry one as whitespace: each line gets its own
            // `data:` field, which the client joins back with `\n`.
            Format::Events | Format::UniEvents => {
                for line in message.split(|&b| b == b'\n') {
                    out.put_slice(b"data: ");
                    out.put_slice(line);
                    out.put_u8(b'\n');
                }
                out.put_u8(b'\n');
            }
        }
    }
}

/// `POST /connection/http_stream`.
pub async fn http_stream(State(state): State<AppState>, req: Request) -> Response {
    let headers = req.headers().clone();
    let response = match read_body(&state, req).await {
        Ok(first) => open(state, &headers, first, Format::Lines),
        Err(response) => response,
    };
    with_cors(&headers, response)
}

/// `OPTIONS` on the HTTP transports' endpoints: the CORS preflight a browser sends before a
/// cross-origin `POST` with `Content-Type: application/json`. Allowed origins are
/// `client.allowed_origins`, as for WebSocket; credentials (cookies) are allowed.
pub async fn preflight(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !crate::origin::allowed(&headers, &state.hub.config().client.allowed_origins) {
        return refuse(StatusCode::FORBIDDEN, "origin not allowed");
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    let h = response.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    let requested = headers
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("content-type"));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested);
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    with_cors(&headers, response)
}

/// Adds the CORS headers for a request from an allowed `Origin` (the caller checked it): that
/// origin (never `*`, so that credentials work) and `Access-Control-Allow-Credentials`.
pub(crate) fn with_cors(request: &HeaderMap, mut response: Response) -> Response {
    if let Some(origin) = request.get(header::ORIGIN) {
        let h = response.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        h.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    response
}

/// Query of `GET /connection/sse`.
#[derive(Debug, serde::Deserialize)]
pub struct SseQuery {
    /// The connect command (JSON), as the SDK's `EventSource` sends it.
    cf_connect: Option<String>,
}

/// `GET /connection/sse?cf_connect=...`.
pub async fn sse_get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<SseQuery>,
) -> Response {
    let response = match query.cf_connect.filter(|c| !c.is_empty()) {
        None => refuse(
            StatusCode::BAD_REQUEST,
            "cf_connect query parameter required",
        ),
        Some(first) if first.len() > state.hub.config().client.max_message_size => {
            refuse(StatusCode::PAYLOAD_TOO_LARGE, "connect command too large")
        }
        Some(first) => open(state, &headers, Bytes::from(first), Format::Events),
    };
    with_cors(&headers, response)
}

/// `POST /connection/sse` (the first commands as body).
pub async fn sse_post(State(state): State<AppState>, req: Request) -> Response {
    let headers = req.headers().clone();
    let response = match read_body(&state, req).await {
        Ok(first) => open(state, &headers, first, Format::Events),
        Err(response) => response,
    };
    with_cors(&headers, response)
}

/// Body of `POST /emulation`.
#[derive(Debug, serde::Deserialize)]
struct EmulationRequest {
    session: String,
    #[serde(default)]
    node: String,
    data: String,
}

/// `POST /emulation`.
pub async fn emulation(State(state): State<AppState>, req: Request) -> Response {
    let headers = req.headers().clone();
    if !crate::origin::allowed(&headers, &state.hub.config().client.allowed_origins) {
        return refuse(StatusCode::FORBIDDEN, "origin not allowed");
    }
    with_cors(&headers, route(&state, req).await)
}

async fn route(state: &AppState, req: Request) -> Response {
    // The batch is JSON-escaped inside the request: allow for the escaping.
    let limit = state
        .hub
        .config()
        .client
        .max_message_size
        .saturating_mul(2)
        .saturating_add(1024);
    let body = match axum::body::to_bytes(req.into_body(), limit).await {
        Ok(b) => b,
        Err(_) => return refuse(StatusCode::PAYLOAD_TOO_LARGE, "request too large"),
    };
    let request: EmulationRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, &format!("bad request: {e}")),
    };
    match state
        .hub
        .route_emulation(&request.node, &request.session, Bytes::from(request.data))
        .await
    {
        Ok(Delivery::Queued) => StatusCode::NO_CONTENT.into_response(),
        Ok(Delivery::Unknown) => refuse(StatusCode::NOT_FOUND, "session not found"),
        Ok(Delivery::Full) => refuse(StatusCode::TOO_MANY_REQUESTS, "too many batches waiting"),
        Err(code) => refuse(StatusCode::SERVICE_UNAVAILABLE, code.message),
    }
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (status, format!("{message}\n")).into_response()
}

/// Reads a request body of at most `client.max_message_size` bytes (the first commands).
async fn read_body(state: &AppState, req: Request) -> Result<Bytes, Response> {
    if !crate::origin::allowed(req.headers(), &state.hub.config().client.allowed_origins) {
        return Err(refuse(StatusCode::FORBIDDEN, "origin not allowed"));
    }
    let limit = state.hub.config().client.max_message_size;
    match axum::body::to_bytes(req.into_body(), limit).await {
        Ok(b) if !b.is_empty() => Ok(b),
        Ok(_) => Err(refuse(StatusCode::BAD_REQUEST, "connect command required")),
        Err(_) => Err(refuse(StatusCode::PAYLOAD_TOO_LARGE, "request too large")),
    }
}

/// Accepts the session and answers with its stream; the session runs in a task of its own.
/// `first` is the first batch of commands (the connect command).
pub(crate) fn open(state: AppState, headers: &HeaderMap, first: Bytes, format: Format) -> Response {
    if !crate::origin::allowed(headers, &state.hub.config().client.allowed_origins) {
        return refuse(StatusCode::FORBIDDEN, "origin not allowed");
    }
    let (body_tx, body_rx) = mpsc::channel::<Bytes>(BODY_CHUNKS);
    let client = state.hub.accept_with_headers(
        format.transport(),
        headers
            .iter()
            .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?))),
    );
    match client {
        Ok(mut client) => {
            // A unidirectional session takes no commands: it is not registered, and its
            // command receiver has no sender (it never yields a batch).
            let (commands, guard) = if format.is_uni() {
                (mpsc::channel(1).1, None)
            } else {
                let (id, commands, guard) = state.hub.emulation_sessions().register();
                client.set_emulation_session(id);
                (commands, Some(guard))
            };
            let hub = state.hub.clone();
            state.tasks.spawn(run(
                hub,
                Box::new(client),
                first,
                commands,
                guard,
                body_tx,
                format,
            ));
        }
        Err(code) => {
            // The stream says why, as the last message a disconnect would be.
            let mut chunk = BytesMut::new();
            format.frame(&encode_disconnect_push(code), &mut chunk);
            let _ = body_tx.try_send(chunk.freeze());
        }
    }
    let stream = futures_util::stream::unfold(body_rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, Infallible>(chunk), rx))
    });
    let mut response = Response::new(Body::from_stream(stream));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Proxies that buffer responses (nginx) would hold the stream back.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

enum Event {
    /// The stream can take a chunk and messages are queued.
    Write,
    Controls,
    Closed(DisconnectCode),
    Command(Bytes),
    Timer,
    Done(Box<Client>, Result<(), DisconnectCode>),
    /// The client went away (the response body was dropped).
    Gone,
}

/// Runs one emulated session until it ends.
async fn run(
    hub: Hub,
    client: Box<Client>,
    first: Bytes,
    mut commands: mpsc::Receiver<Bytes>,
    _guard: Option<SessionGuard>,
    body: mpsc::Sender<Bytes>,
    format: Format,
) {
    let out = client.outbound().clone();
    let metrics = hub.metrics().transport(format.transport().name);
    let mut body = PollSender::new(body);
    let mut batch: Vec<Bytes> = Vec::new();
    let mut deadline = client.next_deadline();
    let timer = tokio::time::sleep_until(deadline.into());
    tokio::pin!(timer);
    let mut session = Session::Idle(client).start(Work::Frame(first));
    let ending = loop {
        let event = poll_fn(|cx| {
            poll_event(
                cx,
                &mut body,
                &out,
                &mut batch,
                &mut session,
                &mut commands,
                timer.as_mut(),
            )
        })
        .await;
        match event {
            Event::Write => {
                metrics.written(
                    batch.len() as u64,
                    crate::transport::websocket::batch_bytes(&batch),
                );
                let mut chunk = BytesMut::new();
                for message in batch.drain(..) {
                    format.frame(&message, &mut chunk);
                }
                if body.send_item(chunk.freeze()).is_err() {
                    break None;
                }
            }
            Event::Controls => session = session.start(Work::Controls),
            Event::Closed(code) => break Some(code),
            Event::Command(frame) => session = session.start(Work::Frame(frame)),
            Event::Timer => {
                let now = Instant::now();
                if now >= deadline && matches!(session, Session::Idle(_)) {
                    session = session.start(Work::Timer(now));
                    deadline = now + Duration::from_secs(86_400);
                }
                timer.as_mut().reset(deadline.into());
            }
            Event::Done(client, result) => {
                deadline = client.next_deadline();
                timer.as_mut().reset(deadline.into());
                let refused = format.is_uni() && !client.is_connected();
                session = Session::Idle(client);
                if let Err(code) = result {
                    break Some(code);
                }
                // A unidirectional client cannot read an error reply: its refused connect
                // ends the stream with the matching disconnect code.
                if refused {
                    break Some(crate::transport::uni::refusal(&out));
                }
            }
            Event::Gone => break None,
        }
    };
    // Unsubscribes and unregisters before the last write.
    drop(session);
    if let Some(code) = ending {
        hub.metrics().disconnect(code);
        // What is still queued (e.g. the error reply that ended the session), then the reason.
        let mut chunk = BytesMut::new();
        while let Poll::Ready(Drained::Items) =
            poll_fn(|cx| Poll::Ready(out.poll_drain(cx, &mut batch, usize::MAX, false))).await
        {
            for message in batch.drain(..) {
                format.frame(&message, &mut chunk);
            }
        }
        format.frame(&encode_disconnect_push(code), &mut chunk);
        if let Some(tx) = body.get_ref() {
            let _ = tokio::time::timeout(Duration::from_secs(1), tx.send(chunk.freeze())).await;
        }
    }
}

fn poll_event(
    cx: &mut Context<'_>,
    body: &mut PollSender<Bytes>,
    out: &switchboard_hub::Outbound,
    batch: &mut Vec<Bytes>,
    session: &mut Session,
    commands: &mut mpsc::Receiver<Bytes>,
    timer: Pin<&mut tokio::time::Sleep>,
) -> Poll<Event> {
    let idle = matches!(session, Session::Idle(_));
    match body.poll_reserve(cx) {
        Poll::Ready(Err(_)) => return Poll::Ready(Event::Gone),
        Poll::Ready(Ok(())) => match out.poll_drain(cx, batch, MAX_BATCH_ITEMS, idle) {
            Poll::Ready(Drained::Items) => return Poll::Ready(Event::Write),
            Poll::Ready(Drained::Controls) => return Poll::Ready(Event::Controls),
            Poll::Ready(Drained::Closed(code)) => return Poll::Ready(Event::Closed(code)),
            Poll::Pending => {}
        },
        // The stream is full: the client does not read. Its queue fills up meanwhile, until
        // the slow-consumer disconnect.
        Poll::Pending => {
            if let Poll::Ready(code) = out.poll_overflowed(cx) {
                return Poll::Ready(Event::Closed(code));
            }
        }
    }
    match session {
        Session::Busy(work) => {
            if let Poll::Ready((client, result)) = work.as_mut().poll(cx) {
                return Poll::Ready(Event::Done(client, result));
            }
        }
        Session::Idle(_) => {
            // The registry keeps a sender while the session is registered: never `None`.
            if let Poll::Ready(Some(frame)) = commands.poll_recv(cx) {
                return Poll::Ready(Event::Command(frame));
            }
        }
    }
    if body.is_closed() {
        return Poll::Ready(Event::Gone);
    }
    if timer.poll(cx).is_ready() {
        return Poll::Ready(Event::Timer);
    }
    Poll::Pending
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_framed_per_format() {
        let mut out = BytesMut::new();
        Format::Lines.frame(b"{\"id\":1}", &mut out);
        Format::Lines.frame(b"{}", &mut out);
        assert_eq!(&out[..], b"{\"id\":1}\n{}\n");
        let mut out = BytesMut::new();
        Format::Events.frame(b"{\"id\":1}", &mut out);
        assert_eq!(&out[..], b"data: {\"id\":1}\n\n");
        // A line break inside a message (raw data whitespace) becomes a second data field.
        let mut out = BytesMut::new();
        Format::Events.frame(b"{\"a\":\n1}", &mut out);
        assert_eq!(&out[..], b"data: {\"a\":\ndata: 1}\n\n");
    }
}
