//! `GET /connection/uni_websocket`: unidirectional WebSocket, for clients without an SDK.
//!
//! The client sends one text message, its connect request (`{"token": "...", "subs": {...}}`,
//! all optional; the same object as the body of `uni_http_stream`), or passes it in the
//! `cf_connect` query parameter and sends nothing. From then on the server only pushes, one
//! push per text message, with the shapes of the other unidirectional transports
//! ([`super::uni`]): `{"connect": {...}}` first, then `{"channel": "c", "pub": {...}}` and the
//! other pushes without their `{"push": ...}` wrapper, `{}` pings (no pong expected), and at the
//! end `{"disconnect": {"code": C, "reason": "..."}}` followed by a close frame with the same
//! code and reason. A refused connect ends the same way at once (3500 for a bad token, 3005 for
//! an expired one, 3501 for a connect request that is not a JSON object).
//!
//! Messages the client sends after its connect request are read and dropped (the WebSocket
//! frame limits still apply); a client that does not send its connect request within
//! `client.handshake_timeout` is closed with 3502 "stale". Limits and timers are those of the
//! WebSocket transport: the queue limit (`client.max_queue_bytes`, then 3008 "slow"), pings.

use std::future::{poll_fn, Future};
use std::task::Poll;
use std::time::{Duration, Instant};

use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use switchboard_hub::{Client, Drained, Hub, Outbound, TransportInfo, TransportMetrics};
use switchboard_proto::{encode_disconnect_push, DisconnectCode};
use switchboard_ws::{validate_upgrade, Message, Role, WsSocket};

use crate::app::AppState;
use crate::transport::uni::{as_push, connect_command, refusal, UniQuery};
use crate::transport::websocket::ws_config;
use crate::transport::work::{Session, Work};

const TRANSPORT: TransportInfo = TransportInfo::new("uni_websocket", false);

/// Most pushes written per turn of the connection loop.
const MAX_BATCH_ITEMS: usize = 256;

/// The upgrade handler.
pub async fn handler(
    State(state): State<AppState>,
    Query(query): Query<UniQuery>,
    mut req: Request,
) -> Response {
    if !crate::origin::allowed(req.headers(), &state.hub.config().client.allowed_origins) {
        return (StatusCode::FORBIDDEN, "origin not allowed\n").into_response();
    }
    let config = ws_config(&state);
    let upgrade = match validate_upgrade(req.headers(), req.method(), &config) {
        Ok(u) => u,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("websocket upgrade failed: {e}\n"),
            )
                .into_response()
        }
    };
    let max = state.hub.config().client.max_message_size;
    let first = match query.cf_connect {
        Some(request) if request.len() > max => {
            return (StatusCode::PAYLOAD_TOO_LARGE, "connect request too large\n").into_response()
        }
        Some(request) => Some(Bytes::from(request)),
        None => None,
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let client = state
        .hub
        .accept_with_headers(
            TRANSPORT,
            req.headers()
                .iter()
                .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?))),
        )
        .map(Box::new);
    let hub = state.hub.clone();
    state.tasks.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let io = TokioIo::new(upgraded);
                // No compression: pushes are written as they are, one per message.
                let socket = WsSocket::new(io, Role::Server, config);
                run(Box::new(socket), hub, client, first).await;
            }
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    });
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let mut headers = upgrade.response_headers();
    // Compression was not taken (the socket above has none): do not announce it.
    headers.remove(axum::http::header::SEC_WEBSOCKET_EXTENSIONS);
    response.headers_mut().extend(headers);
    response
}

enum Event {
    Write,
    Controls,
    Closed(DisconnectCode),
    Read,
    ReadFailed,
    WriteFailed,
    Timer,
    Done(Box<Client>, Result<(), DisconnectCode>),
}

/// How a connection ends.
enum Ending {
    /// The server ends it: a disconnect push, then a close frame with the code.
    Disconnect(DisconnectCode),
    /// The peer closed; answer its close frame.
    Closing,
    /// The transport is gone.
    Gone,
}

/// Drives one connection until it ends.
async fn run<IO>(
    mut socket: Box<WsSocket<IO>>,
    hub: Hub,
    client: Result<Box<Client>, DisconnectCode>,
    first: Option<Bytes>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let client = match client {
        Ok(c) => c,
        Err(code) => {
            queue_push(&mut socket, &encode_disconnect_push(code));
            let _ = Box::pin(socket.close(code.code, code.reason)).await;
            return;
        }
    };
    let out = client.outbound().clone();
    let (ending, session) = drive(
        &mut socket,
        client,
        first,
        hub.metrics().transport(TRANSPORT.name),
    )
    .await;
    drop(session);
    match ending {
        Ending::Disconnect(code) => {
            hub.metrics().disconnect(code);
            flush_queued(&mut socket, &out);
            queue_push(&mut socket, &encode_disconnect_push(code));
            let _ = Box::pin(socket.close(code.code, code.reason)).await;
        }
        Ending::Closing => {
            let _ = Box::pin(socket.close(1000, "")).await;
        }
        Ending::Gone => {}
    }
}

/// Queues `message` (a push or reply of the bidirectional protocol) as the unidirectional push
/// it stands for, if any, in a text message of its own.
fn queue_push<IO>(socket: &mut WsSocket<IO>, message: &[u8])
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Some(push) = as_push(message) {
        socket.queue_message(&Message::Text(Bytes::copy_from_slice(&push)));
    }
}

/// Queues what is still in the session's queue (an error reply before a disconnect: left out).
fn flush_queued<IO>(socket: &mut WsSocket<IO>, out: &Outbound)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut batch = Vec::new();
    while let Some(Poll::Ready(Drained::Items)) =
        futures_util::FutureExt::now_or_never(poll_fn(|cx| {
            Poll::Ready(out.poll_drain(cx, &mut batch, usize::MAX, false))
        }))
    {
        for message in batch.drain(..) {
            queue_push(socket, &message);
        }
    }
}

async fn drive<IO>(
    socket: &mut WsSocket<IO>,
    client: Box<Client>,
    mut first: Option<Bytes>,
    metrics: &TransportMetrics,
) -> (Ending, Session)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let out = client.outbound().clone();
    let mut deadline = client.next_deadline();
    let timer = tokio::time::sleep_until(deadline.into());
    tokio::pin!(timer);
    let mut session = Session::Idle(client);
    // Whether the connect request was taken (from the query or the first message).
    let mut connecting = false;
    let mut batch: Vec<Bytes> = Vec::new();
    let mut incoming: Vec<Message> = Vec::new();
    loop {
        if !connecting {
            if let Some(request) = first.take() {
                connecting = true;
                match connect_command(&request) {
                    Some(command) => session = session.start(Work::Frame(command)),
                    None => return (Ending::Disconnect(DisconnectCode::BAD_REQUEST), session),
                }
            }
        }
        let event = poll_fn(|cx| {
            if socket.has_pending_writes() {
                if let Poll::Ready(Err(_)) = socket.poll_flush(cx) {
                    return Poll::Ready(Event::WriteFailed);
                }
            }
            if socket.has_pending_writes() {
                // A peer that stopped reading: its queue fills up to the slow-consumer limit.
                if let Poll::Ready(code) = out.poll_overflowed(cx) {
                    return Poll::Ready(Event::Closed(code));
                }
            } else {
                let idle = matches!(session, Session::Idle(_));
                match out.poll_drain(cx, &mut batch, MAX_BATCH_ITEMS, idle) {
                    Poll::Ready(Drained::Items) => return Poll::Ready(Event::Write),
                    Poll::Ready(Drained::Controls) => return Poll::Ready(Event::Controls),
                    Poll::Ready(Drained::Closed(code)) => return Poll::Ready(Event::Closed(code)),
                    Poll::Pending => {}
                }
            }
            if let Session::Busy(work) = &mut session {
                if let Poll::Ready((client, result)) = work.as_mut().poll(cx) {
                    return Poll::Ready(Event::Done(client, result));
                }
            }
            // Read (the connect request, then only to notice a close): messages are dropped.
            match socket.poll_read_messages(cx, &mut incoming) {
                Poll::Ready(Ok(())) => return Poll::Ready(Event::Read),
                Poll::Ready(Err(_)) => return Poll::Ready(Event::ReadFailed),
                Poll::Pending => {}
            }
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Timer);
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Write => {
                metrics.written(
                    batch.len() as u64,
                    crate::transport::websocket::batch_bytes(&batch),
                );
                for message in batch.drain(..) {
                    queue_push(socket, &message);
                }
                if batch.capacity() > 16 {
                    batch = Vec::new();
                }
            }
            Event::Controls => session = session.start(Work::Controls),
            Event::Closed(code) => return (Ending::Disconnect(code), session),
            Event::Read => {
                for message in incoming.drain(..) {
                    match message {
                        Message::Text(text) if !connecting && first.is_none() => {
                            first = Some(text);
                        }
                        Message::Binary(_) if !connecting => {
                            return (Ending::Disconnect(DisconnectCode::BAD_REQUEST), session)
                        }
                        Message::Close(_) => return (Ending::Closing, session),
                        _ => {}
                    }
                }
                if incoming.capacity() > 16 {
                    incoming = Vec::new();
                }
            }
            Event::ReadFailed | Event::WriteFailed => return (Ending::Gone, session),
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
                let refused = connecting && !client.is_connected();
                session = Session::Idle(client);
                if let Err(code) = result {
                    return (Ending::Disconnect(code), session);
                }
                // The refused connect's error reply is in the queue: it becomes the disconnect.
                if refused {
                    return (Ending::Disconnect(refusal(&out)), session);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use switchboard_hub::{HubConfig, MemoryBroker};
    use switchboard_ws::WsConfig;

    use super::*;

    /// A connection whose first message is its connect request gets the connect push, then
    /// the publications of its server-side channels; a close ends it.
    #[tokio::test]
    async fn connect_request_then_pushes() {
        let mut config = HubConfig::default();
        config.client.allow_anonymous = true;
        let hub = Hub::new(config, Arc::new(MemoryBroker::new()), "t".into());
        let (io, peer) = tokio::io::duplex(64 * 1024);
        let server = WsSocket::new(io, Role::Server, WsConfig::default());
        let task = tokio::spawn(run(
            Box::new(server),
            hub.clone(),
            hub.accept(TRANSPORT).map(Box::new),
            None,
        ));
        let mut client = WsSocket::new(peer, Role::Client, WsConfig::default());
        client
            .send(Message::Text(Bytes::from_static(b"{\"name\":\"t\"}")))
            .await
            .unwrap();
        let Some(Message::Text(connect)) = client.recv().await.unwrap() else {
            panic!("expected the connect push");
        };
        let connect: serde_json::Value = serde_json::from_slice(&connect).unwrap();
        assert!(connect["connect"]["client"].is_string(), "{connect}");
        // Later messages are dropped, not answered.
        client
            .send(Message::Text(Bytes::from_static(b"{\"id\":2,\"ping\":{}}")))
            .await
            .unwrap();
        client.close(1000, "").await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }

    /// A connect request that is not a JSON object ends the connection with 3501.
    #[tokio::test]
    async fn bad_connect_request_is_a_disconnect() {
        let hub = Hub::new(
            HubConfig::default(),
            Arc::new(MemoryBroker::new()),
            "t".into(),
        );
        let (io, peer) = tokio::io::duplex(64 * 1024);
        let server = WsSocket::new(io, Role::Server, WsConfig::default());
        tokio::spawn(run(
            Box::new(server),
            hub.clone(),
            hub.accept(TRANSPORT).map(Box::new),
            Some(Bytes::from_static(b"[1]")),
        ));
        let mut client = WsSocket::new(peer, Role::Client, WsConfig::default());
        let Some(Message::Text(push)) = client.recv().await.unwrap() else {
            panic!("expected the disconnect push");
        };
        let push: serde_json::Value = serde_json::from_slice(&push).unwrap();
        assert_eq!(push["disconnect"]["code"], 3501, "{push}");
        match client.recv().await.unwrap() {
            Some(Message::Close(Some(frame))) => assert_eq!(frame.code, 3501),
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}
