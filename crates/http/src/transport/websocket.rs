//! `GET /connection/websocket`: the native protocol over WebSocket.
//!
//! One task per connection drives everything: reading frames, running the hub session, writing
//! what the session's outbound queue holds, and the session's timers. It polls all of them in one
//! `poll_fn`, so an idle connection is a parked task with no buffers: the socket reads through a
//! thread-local scratch buffer, and the queue and write buffer are empty.
//!
//! The session's futures (command handling, timers, controls) can be large (they may call
//! brokers and proxies); they are boxed while they run so that the parked connection task stays
//! small.
//!
//! Writes are coalesced: everything queued since the last write goes out as one text frame of
//! newline-separated JSON messages (up to [`MAX_BATCH_ITEMS`] messages per frame). While the
//! node is busy, a connection that wrote less than the node's write delay ago waits for the rest
//! of it before writing again (`switchboard_hub::pacer`: adaptive by default, zero on a node
//! that keeps up; `client.write_delay` fixes it). While the socket cannot take more bytes, the
//! queue is not drained, so a client that does not read makes its queue grow until the hub
//! disconnects it with 3008 "slow".

use std::collections::VecDeque;
use std::fmt::Display;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::task::Poll;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use switchboard_hub::burst::gathered;
use switchboard_hub::{Client, Drained, Hub, Item, TransportInfo, TransportMetrics};
use switchboard_proto::DisconnectCode;
use switchboard_ws::{validate_upgrade, Message, Role, WsConfig, WsSocket};

use crate::app::AppState;
use crate::transport::work::{Session, Work};

/// Most messages coalesced into one WebSocket frame.
pub const MAX_BATCH_ITEMS: usize = 256;

/// Queued bytes from which a connection writes at once instead of holding for the node's write
/// delay (a quarter of the queue's limit if that is less): enough for an efficient write, and
/// far from the slow-consumer limit.
const HOLD_LIMIT: usize = 16 * 1024;

/// A write smaller than this is followed by a hold while the node delays writes; after a
/// larger one (a batch already) the next write goes out at once.
const SMALL_WRITE: usize = 4 * 1024;

/// How long to wait for the peer's close frame after sending ours.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

const TRANSPORT: TransportInfo = TransportInfo::new("websocket", true);

/// The upgrade handler.
///
/// Refusals (an `Origin` that is not allowed, a malformed upgrade request, a full node or one
/// that is shutting down) are logged at info level with their reason, at most one line per
/// second (see `log_refusal`).
pub async fn handler(State(state): State<AppState>, mut req: Request) -> Response {
    if !crate::origin::allowed(req.headers(), &state.hub.config().client.allowed_origins) {
        let origin = req
            .headers()
            .get(axum::http::header::ORIGIN)
            .map(|v| format!("{:?}", v))
            .unwrap_or_default();
        let origin: String = origin.chars().take(200).collect();
        log_refusal(&req, format_args!("origin not allowed: {origin}"));
        return (StatusCode::FORBIDDEN, "origin not allowed\n").into_response();
    }
    let ws_config = ws_config(&state);
    let upgrade = match validate_upgrade(req.headers(), req.method(), &ws_config) {
        Ok(u) => u,
        Err(e) => {
            log_refusal(&req, format_args!("bad handshake: {e}"));
            return (
                StatusCode::BAD_REQUEST,
                format!("websocket upgrade failed: {e}\n"),
            )
                .into_response();
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    // Boxed: the session then lives once on the heap instead of in several slots of the task.
    let client = state
        .hub
        .accept_with_headers(
            TRANSPORT,
            req.headers()
                .iter()
                .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?))),
        )
        .map(Box::new);
    if let Err(code) = &client {
        // Upgraded all the same: the client learns why from the close code.
        log_refusal(&req, format_args!("{code}"));
    }
    let hub = state.hub.clone();
    state.tasks.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let io = TokioIo::new(upgraded);
                let socket = WsSocket::with_deflate(io, Role::Server, ws_config, upgrade.deflate);
                run(Box::new(socket), hub, client).await;
            }
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    });
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    response.headers_mut().extend(upgrade.response_headers());
    response
}

/// The WebSocket limits: message size from the hub's client options, control frame rate from
/// `[websocket]`.
pub fn ws_config(state: &AppState) -> WsConfig {
    let control = state.config.websocket.max_control_frames_per_second;
    WsConfig::default()
        .max_message_size(state.hub.config().client.max_message_size)
        .max_control_frames_per_second((control > 0).then_some(control))
        .close_timeout(CLOSE_TIMEOUT)
}

/// At most one refusal line per this interval.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Rate limit of the refusal log lines, shared by the whole process.
static REFUSALS: Mutex<RefusalLog> = Mutex::new(RefusalLog::new());

/// Logs a refused upgrade at info level, unless a line was logged less than
/// [`REFUSAL_LOG_INTERVAL`] ago; each line says how many refusals were left out since the
/// previous one (`suppressed`). A flood of refused upgrades thus costs one line per second.
fn log_refusal(req: &Request, reason: impl Display) {
    let admitted = REFUSALS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .admit(Instant::now());
    let Some(suppressed) = admitted else {
        return;
    };
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.to_string())
        .unwrap_or_default();
    tracing::info!(%peer, %reason, suppressed, "websocket upgrade refused");
}

/// When the last refusal line was logged, and how many refusals were not logged since.
#[derive(Debug)]
struct RefusalLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl RefusalLog {
    const fn new() -> Self {
        Self {
            last: None,
            suppressed: 0,
        }
    }

    /// Whether a refusal at `now` gets a log line; if so, how many were left out before it.
    fn admit(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|last| now.saturating_duration_since(last) < REFUSAL_LOG_INTERVAL)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

enum Event {
    /// Messages are waiting but the last write was less than the write delay ago.
    Hold(Instant),
    /// A write's worth of messages gathered during a hold: write now.
    Release,
    Outbound,
    Controls,
    Closed(DisconnectCode),
    Read,
    ReadFailed(switchboard_ws::WsError),
    WriteFailed(switchboard_ws::WsError),
    Timer,
    /// The session finished a piece of work and is idle again.
    Done(Box<Client>, Result<(), DisconnectCode>),
}

/// Drives one connection until it ends.
async fn run<IO>(
    mut socket: Box<WsSocket<IO>>,
    hub: Hub,
    client: Result<Box<Client>, DisconnectCode>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let client = match client {
        Ok(c) => c,
        Err(code) => {
            let _ = Box::pin(socket.close(code.code, code.reason)).await;
            return;
        }
    };
    // Publications that the frames handled in one poll of this task cause reach their
    // subscribers together when the poll ends (a burst of `publish` commands costs each
    // subscriber one queue lock and one wake-up; see `switchboard_hub::burst`).
    let (ending, session) = gathered(drive(
        &mut socket,
        client,
        hub.metrics().transport(TRANSPORT.name),
    ))
    .await;
    // Dropping the session (or the work holding it) unsubscribes and unregisters the client
    // before the close handshake, which may take up to the close timeout.
    drop(session);
    match ending {
        Ending::Disconnect(code) => {
            hub.metrics().disconnect(code);
            tracing::debug!(%code, "closing connection");
            let _ = Box::pin(socket.close(code.code, code.reason)).await;
        }
        // A close frame (our protocol-error close or the echo of the peer's) is queued.
        Ending::Closing => {
            let _ = Box::pin(socket.close(1000, "")).await;
        }
        Ending::Gone => {}
    }
}

/// How a connection ends.
enum Ending {
    /// The server closes with this code.
    Disconnect(DisconnectCode),
    /// The peer closed or broke the protocol; the socket has the close frame to send queued.
    Closing,
    /// The transport is gone; nothing more can be written.
    Gone,
}

impl From<DisconnectCode> for Ending {
    fn from(code: DisconnectCode) -> Self {
        Ending::Disconnect(code)
    }
}

/// Runs the connection until it has to end; says how, and hands back the session.
///
/// Commands of one connection run one at a time, in the order they arrived, and so do the
/// session's timers and server API controls; but while one of them waits (on a broker or a
/// proxy), the queue keeps being written: publications, replies and pushes flow. Nothing more is
/// read meanwhile (TCP pushes back on the client), and timers that fall due run as soon as the
/// session is idle again, after the frames already read.
async fn drive<IO>(
    socket: &mut WsSocket<IO>,
    client: Box<Client>,
    metrics: &TransportMetrics,
) -> (Ending, Session)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let out = client.outbound().clone();
    let pacer = client.pacer().clone();
    // A connection with this much queued writes without waiting for the write delay.
    let hold_limit = (out.max_bytes() / 4).clamp(1, HOLD_LIMIT);
    // The session's next deadline as of when the timer was armed: a timer that fires before it
    // only ends a write hold.
    let mut deadline = client.next_deadline();
    let timer = tokio::time::sleep_until(deadline.into());
    let mut session = Session::Idle(client);
    // Queue entries taken for the next write (a burst's run stays one shared entry).
    let mut batch: Vec<Item> = Vec::new();
    let mut incoming: Vec<Message> = Vec::new();
    // Messages read but not handled yet, oldest first.
    let mut pending: VecDeque<Message> = VecDeque::new();
    tokio::pin!(timer);
    // While the node delays writes (see `switchboard_hub::pacer`): when the last write was,
    // and until when queued messages wait.
    let mut last_write: Option<Instant> = None;
    let mut hold_until: Option<Instant> = None;
    loop {
        // An idle session takes the messages read, one at a time. Frames whose commands complete
        // at once (most do) run back to back, so their replies go out together; a frame that has
        // to wait leaves the session busy and the loop below writes meanwhile.
        // Work done at once skips the poll below (and its write) and is handled as `Done`.
        let mut done_at_once = None;
        while let Session::Idle(_) = session {
            match pending.pop_front() {
                Some(Message::Text(text)) => {
                    session = session.start(Work::Frame(text));
                    if let Session::Busy(work) = &mut session {
                        if let Poll::Ready((client, result)) =
                            poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await
                        {
                            done_at_once = Some(Event::Done(client, result));
                        }
                    }
                    break;
                }
                Some(Message::Binary(_)) => return (DisconnectCode::BAD_REQUEST.into(), session),
                Some(Message::Close(_)) => return (Ending::Closing, session),
                Some(Message::Ping(_) | Message::Pong(_)) => {}
                None => {
                    // Give back what a burst of messages grew, as the write side does.
                    if pending.capacity() > 0 {
                        pending = VecDeque::new();
                    }
                    break;
                }
            }
        }
        let event = match done_at_once {
            Some(event) => event,
            None => {
                poll_fn(|cx| {
                    // A connection that wrote less than the node's write delay ago waits
                    // for the rest of it, so that what comes meanwhile goes out in one write;
                    // not when a write's worth is queued already (nor once it is, meanwhile).
                    if hold_until.is_some() {
                        if out.poll_hold(cx, hold_limit).is_ready() {
                            return Poll::Ready(Event::Release);
                        }
                    } else if let Some(last) = last_write {
                        let delay = pacer.delay();
                        if !delay.is_zero() && !socket.has_pending_writes() {
                            if let Poll::Ready(queued) = out.poll_queued(cx) {
                                let next = last + delay;
                                if queued < hold_limit && Instant::now() < next {
                                    return Poll::Ready(Event::Hold(next));
                                }
                            }
                        }
                    }
                    if socket.has_pending_writes() {
                        if let Poll::Ready(Err(e)) = socket.poll_flush(cx) {
                            return Poll::Ready(Event::WriteFailed(e));
                        }
                    }
                    // A peer that stopped reading: the queue overflowed while nothing could be written.
                    if socket.has_pending_writes() {
                        if let Poll::Ready(code) = out.poll_overflowed(cx) {
                            return Poll::Ready(Event::Closed(code));
                        }
                    }
                    let idle = matches!(session, Session::Idle(_));
                    // Drain the queue only while the socket keeps up; otherwise let the queue fill up
                    // to its limit (and the slow-consumer disconnect). Controls wait for an idle session.
                    if !socket.has_pending_writes() && hold_until.is_none() {
                        match out.poll_drain_items(cx, &mut batch, MAX_BATCH_ITEMS, idle) {
                            Poll::Ready(Drained::Items) => return Poll::Ready(Event::Outbound),
                            Poll::Ready(Drained::Controls) => return Poll::Ready(Event::Controls),
                            Poll::Ready(Drained::Closed(code)) => {
                                return Poll::Ready(Event::Closed(code))
                            }
                            Poll::Pending => {}
                        }
                    }
                    match &mut session {
                        Session::Busy(work) => {
                            if let Poll::Ready((client, result)) = work.as_mut().poll(cx) {
                                return Poll::Ready(Event::Done(client, result));
                            }
                        }
                        Session::Idle(_) => match socket.poll_read_messages(cx, &mut incoming) {
                            Poll::Ready(Ok(())) => return Poll::Ready(Event::Read),
                            Poll::Ready(Err(e)) => return Poll::Ready(Event::ReadFailed(e)),
                            Poll::Pending => {}
                        },
                    }
                    if timer.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Event::Timer);
                    }
                    Poll::Pending
                })
                .await
            }
        };
        match event {
            Event::Hold(until) => {
                hold_until = Some(until);
                timer.as_mut().reset(deadline.min(until).into());
            }
            Event::Release => {
                hold_until = None;
                timer.as_mut().reset(deadline.into());
            }
            Event::Outbound => {
                let messages = || batch.iter().flat_map(Item::messages);
                let (count, bytes) =
                    messages().fold((0u64, 0u64), |(n, b), m| (n + 1, b + m.len() as u64));
                metrics.written(count, bytes);
                let written = poll_fn(|cx| {
                    Poll::Ready(socket.poll_write_text_batch(cx, messages(), Some(b'\n')))
                })
                .await;
                release(&mut batch);
                // Only a small write makes the next wait (a large one carried a batch already,
                // and waiting after it would only add latency), and only on a node that delays
                // writes.
                last_write =
                    (bytes < SMALL_WRITE as u64 && !pacer.delay().is_zero()).then(Instant::now);
                if let Poll::Ready(Err(e)) = written {
                    tracing::debug!(error = %e, "write failed");
                    return (Ending::Gone, session);
                }
            }
            Event::Closed(code) => return (code.into(), session),
            Event::Controls => session = session.start(Work::Controls),
            Event::Done(client, result) => {
                session = Session::Idle(client);
                if let Err(code) = result {
                    Box::pin(flush_queued(socket, &out)).await;
                    return (code.into(), session);
                }
                if let Session::Idle(client) = &session {
                    deadline = client.next_deadline();
                }
                timer.as_mut().reset(wakeup(deadline, hold_until).into());
            }
            Event::WriteFailed(e) => {
                tracing::debug!(error = %e, "write failed");
                return (Ending::Gone, session);
            }
            Event::ReadFailed(switchboard_ws::WsError::Protocol(e)) => {
                tracing::debug!(error = %e, "protocol error");
                return (Ending::Closing, session);
            }
            Event::ReadFailed(e) => {
                tracing::debug!(error = %e, "read failed");
                return (Ending::Gone, session);
            }
            Event::Timer => {
                let now = Instant::now();
                if batch.capacity() > 0 && last_write.is_none_or(|t| now - t > IDLE_AFTER) {
                    batch = Vec::new();
                }
                if hold_until.is_some_and(|t| now >= t) {
                    hold_until = None;
                }
                if now >= deadline && matches!(session, Session::Idle(_)) {
                    session = session.start(Work::Timer(now));
                    // Re-armed when the work is done.
                    deadline = now + Duration::from_secs(86_400);
                }
                timer.as_mut().reset(wakeup(deadline, hold_until).into());
            }
            // Hands over the read buffer itself (no copy); `incoming` starts empty again.
            Event::Read if pending.is_empty() => {
                pending = VecDeque::from(std::mem::take(&mut incoming));
            }
            Event::Read => pending.extend(std::mem::take(&mut incoming)),
        }
    }
}

/// The session's deadline, or the end of the write hold if sooner.
fn wakeup(deadline: Instant, hold_until: Option<Instant>) -> Instant {
    hold_until.map_or(deadline, |t| t.min(deadline))
}

/// Writes what is still queued (for example an error reply before a disconnect).
async fn flush_queued<IO>(socket: &mut WsSocket<IO>, out: &switchboard_hub::Outbound)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut batch = Vec::new();
    loop {
        match poll_fn(|cx| Poll::Ready(out.poll_drain(cx, &mut batch, usize::MAX, true))).await {
            // Controls are moot for a connection that is closing.
            Poll::Ready(Drained::Controls) => drop(out.take_controls()),
            Poll::Ready(Drained::Items) => {
                socket.queue_text_batch(&batch, Some(b'\n'));
                return;
            }
            _ => return,
        }
    }
}

/// Bytes of the messages in `batch`.
pub(crate) fn batch_bytes(batch: &[Bytes]) -> u64 {
    batch.iter().map(|m| m.len() as u64).sum()
}

/// Empties `batch`, giving back its memory when a burst grew it beyond what steady traffic
/// needs (a connection that keeps receiving reuses it write after write; an idle one gives it
/// back at its next timer, see `Event::Timer`).
fn release<T>(batch: &mut Vec<T>) {
    batch.clear();
    if batch.capacity() > KEPT_BATCH_ITEMS {
        *batch = Vec::new();
    }
}

/// A connection that wrote nothing for this long gives back its batch buffer at its next timer.
const IDLE_AFTER: Duration = Duration::from_secs(1);

/// Slots of the batch buffer kept from one write to the next (2 KiB).
const KEPT_BATCH_ITEMS: usize = 64;

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use switchboard_hub::{HubConfig, MemoryBroker};

    use super::*;

    #[test]
    fn refusal_lines_are_rate_limited_and_count_what_they_left_out() {
        let mut log = RefusalLog::new();
        let t0 = Instant::now();
        assert_eq!(log.admit(t0), Some(0));
        for i in 1..=5 {
            assert_eq!(log.admit(t0 + Duration::from_millis(100 * i)), None);
        }
        assert_eq!(log.admit(t0 + Duration::from_millis(1000)), Some(5));
        assert_eq!(log.admit(t0 + Duration::from_millis(1500)), None);
        assert_eq!(log.admit(t0 + Duration::from_secs(60)), Some(1));
    }

    /// The parked connection task is most of an idle connection's memory: keep it small.
    #[tokio::test]
    async fn connection_task_is_small() {
        let hub = Hub::new(
            HubConfig::default(),
            Arc::new(MemoryBroker::new()),
            "t".into(),
        );
        let (io, _peer) = tokio::io::duplex(64);
        let socket = WsSocket::new(io, Role::Server, WsConfig::default());
        let task = run(
            Box::new(socket),
            hub.clone(),
            hub.accept(TRANSPORT).map(Box::new),
        );
        let size = std::mem::size_of_val(&task);
        eprintln!("connection task: {size} bytes");
        assert!(size <= 640, "the connection task takes {size} bytes");
    }
}
