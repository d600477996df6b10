//! One Engine.IO session: its outbound queue, transport state, heartbeat and close.
//!
//! Each session is served by ONE task, the application's, which polls the session's
//! [`Incoming`]: that drives the heartbeat, writes the outbound queue to the WebSocket (when
//! the session has one), reads the WebSocket, and yields the client's messages in order. The
//! application may run more futures on the same task ([`EngineSocket::attach`]), so an idle
//! connection is one parked task with no channels. Polling requests (GET, POST) are served by
//! their own HTTP tasks through the shared state: a GET takes packets out of the queue, a POST
//! puts the client's messages into a bounded inbox and waits while it is full.

use std::collections::{HashMap, VecDeque};
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use switchboard_ws::{Message, WsError, WsSocket};
use tokio::sync::Notify;

use super::config::EngineConfig;
use super::packet::{Packet, SharedMessage, WsFrame};

/// The WebSocket of a session (direct, or taken over by an upgrade).
pub(crate) type Ws = WsSocket<TokioIo<hyper::upgrade::Upgraded>>;

/// A future run on a session's task ([`EngineSocket::attach`]).
pub type SessionTask = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// How long a polling session closed by the client stays registered for its next poll.
pub const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// Incoming messages the application may have waiting per session.
pub const INCOMING_QUEUE: usize = 128;

/// An application message (Engine.IO `4` packet or binary message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    /// A text message.
    Text(String),
    /// A binary message.
    Binary(Bytes),
}

impl Data {
    fn into_packet(self) -> Packet {
        match self {
            Data::Text(t) => Packet::Message(t),
            Data::Binary(b) => Packet::Binary(b),
        }
    }
}

/// Which transport carries the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// HTTP long-polling.
    Polling,
    /// Polling, with a WebSocket probed (`3probe` sent): pending polls get `6`.
    Upgrading,
    /// WebSocket (directly, or after an upgrade).
    WebSocket,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent a close packet.
    ClientClose,
    /// The server (application) closed it.
    ServerClose,
    /// No pong within the ping timeout.
    PingTimeout,
    /// The client broke the protocol (undecodable packet, overlapping polls).
    ProtocolError,
    /// The transport failed (WebSocket closed, too much queued).
    TransportError,
}

impl CloseReason {
    /// The reference server's name for the reason.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::ClientClose => "transport close",
            CloseReason::ServerClose => "forced close",
            CloseReason::PingTimeout => "ping timeout",
            CloseReason::ProtocolError => "parse error",
            CloseReason::TransportError => "transport error",
        }
    }
}

pub(crate) struct State {
    pub(crate) transport: Transport,
    pub(crate) outbox: VecDeque<Packet>,
    pub(crate) outbox_bytes: usize,
    pub(crate) poll_active: bool,
    pub(crate) post_active: bool,
    /// A WebSocket claimed the upgrade of this polling session.
    pub(crate) upgrade_claimed: bool,
    pub(crate) awaiting_pong: bool,
    /// When the awaited pong is overdue.
    pub(crate) pong_deadline: Option<std::time::Instant>,
    /// The WebSocket task took packets out and has not finished writing them.
    pub(crate) writing: bool,
    pub(crate) closed: Option<CloseReason>,
    /// Messages of polling POSTs not yet taken by the session's task (bounded by
    /// [`INCOMING_QUEUE`]).
    inbox: VecDeque<Data>,
    /// The session's task, woken on every change it waits for.
    task: Option<Waker>,
    /// The session's task is polling, and writes what is queued before it parks: packets
    /// queued meanwhile need not wake it (from [`EngineSocket::poll_attached`] to the start of
    /// [`Incoming::poll_io`]).
    in_poll: bool,
    /// A WebSocket that took the session over, for its task to pick up.
    upgraded: Option<Box<Ws>>,
    /// Futures to run on the session's task, for it to pick up.
    tasks: Vec<SessionTask>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("transport", &self.transport)
            .field("outbox", &self.outbox.len())
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl State {
    fn wake_task(&self) {
        if let Some(w) = &self.task {
            w.wake_by_ref();
        }
    }
}

/// A session (shared by its task, its polling requests and the application).
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) sid: Arc<str>,
    pub(crate) state: Mutex<State>,
    /// Woken on every change of `state` a transport waits for.
    pub(crate) wake: Notify,
    /// Woken when the inbox has room again (a POST waits for it).
    room: Notify,
    /// Woken when the WebSocket task finished writing what it took.
    pub(crate) written: Notify,
    max_buffered: usize,
    registry: Arc<Registry>,
}

/// The sessions of one Engine.IO server: sid -> session.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    sessions: Mutex<HashMap<Arc<str>, Arc<Session>>>,
}

impl Registry {
    pub(crate) fn get(&self, sid: &str) -> Option<Arc<Session>> {
        self.sessions.lock().get(sid).cloned()
    }

    pub(crate) fn len(&self) -> usize {
        self.sessions.lock().len()
    }

    /// Creates and registers a session; the returned [`Incoming`] drives it (heartbeat,
    /// WebSocket) while its owner polls it.
    pub(crate) fn create(
        self: &Arc<Self>,
        transport: Transport,
        config: &EngineConfig,
        node: Option<String>,
    ) -> (Arc<Session>, Incoming) {
        let mut sid = new_sid();
        if let Some(node) = node {
            sid.push('.');
            sid.push_str(&node);
        }
        let sid: Arc<str> = Arc::from(sid);
        let session = Arc::new(Session {
            sid: sid.clone(),
            state: Mutex::new(State {
                transport,
                outbox: VecDeque::new(),
                outbox_bytes: 0,
                poll_active: false,
                post_active: false,
                upgrade_claimed: false,
                awaiting_pong: false,
                pong_deadline: None,
                writing: false,
                closed: None,
                inbox: VecDeque::new(),
                task: None,
                in_poll: false,
                upgraded: None,
                tasks: Vec::new(),
            }),
            wake: Notify::new(),
            room: Notify::new(),
            written: Notify::new(),
            max_buffered: config.max_buffered,
            registry: self.clone(),
        });
        self.sessions.lock().insert(sid, session.clone());
        let incoming = Incoming::new(session.clone(), config);
        (session, incoming)
    }
}

/// A fresh session id: 20 URL-safe characters from a random UUID.
fn new_sid() -> String {
    use base64::Engine as _;
    let mut s =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes());
    s.truncate(20);
    s
}

impl Session {
    /// Closes the session if its pong is overdue (a request may arrive before the heartbeat
    /// task's timer fires). Returns true when the session is closed.
    pub(crate) fn check_expired(self: &Arc<Self>) -> bool {
        let expired = {
            let st = self.state.lock();
            if st.closed.is_some() {
                return true;
            }
            st.awaiting_pong
                && st
                    .pong_deadline
                    .is_some_and(|d| std::time::Instant::now() >= d)
        };
        if expired {
            self.close(CloseReason::PingTimeout);
        }
        expired
    }

    /// Queues packets for the client and wakes the transport. Closes the session when more than
    /// `max_buffered` bytes are waiting. Returns false when the session is closed.
    pub(crate) fn push(self: &Arc<Self>, packets: impl IntoIterator<Item = Packet>) -> bool {
        let overflow = {
            let mut st = self.state.lock();
            if st.closed.is_some() {
                return false;
            }
            for p in packets {
                st.outbox_bytes += p.wire_len();
                st.outbox.push_back(p);
            }
            let overflow = st.outbox_bytes > self.max_buffered;
            if !overflow && !st.in_poll {
                st.wake_task();
            }
            overflow
        };
        if overflow {
            tracing::debug!(sid = %self.sid, "engine.io: client too slow, closing");
            self.close(CloseReason::TransportError);
            return false;
        }
        self.wake.notify_waiters();
        true
    }

    /// Completes when the session is closed.
    pub(crate) async fn wait_closed(&self) {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.state.lock().closed.is_some() {
                return;
            }
            notified.await;
        }
    }

    /// Wakes the session's task and the polls waiting.
    pub(crate) fn wake_all(&self) {
        self.state.lock().wake_task();
        self.wake.notify_waiters();
    }

    /// Takes everything queued.
    pub(crate) fn drain(&self, st: &mut State) -> Vec<Packet> {
        st.outbox_bytes = 0;
        std::mem::take(&mut st.outbox).into()
    }

    /// Takes queued packets up to about `max_bytes` (at least one; the rest waits for the next
    /// poll).
    pub(crate) fn drain_up_to(&self, st: &mut State, max_bytes: usize) -> Vec<Packet> {
        let mut out = Vec::new();
        let mut bytes = 0;
        while let Some(p) = st.outbox.front() {
            let len = p.wire_len() + 1;
            if !out.is_empty() && bytes + len > max_bytes {
                break;
            }
            bytes += len;
            st.outbox_bytes = st.outbox_bytes.saturating_sub(p.wire_len());
            out.push(st.outbox.pop_front().expect("front exists"));
        }
        if st.outbox.is_empty() {
            st.outbox_bytes = 0;
            st.outbox = VecDeque::new();
        }
        out
    }

    /// Closes the session (idempotent): unregisters it, ends the application's incoming
    /// stream and wakes the transports.
    ///
    /// A polling session the client closed while no poll was pending stays registered (closed)
    /// for [`CLOSE_LINGER`], so that the client's next poll gets a noop (`6`) rather than
    /// 400, like the reference server answers a poll racing the close.
    pub(crate) fn close(self: &Arc<Self>, reason: CloseReason) {
        let linger = {
            let mut st = self.state.lock();
            if st.closed.is_some() {
                return;
            }
            st.closed = Some(reason);
            st.wake_task();
            reason == CloseReason::ClientClose
                && st.transport == Transport::Polling
                && !st.poll_active
        };
        if linger {
            let session = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(CLOSE_LINGER).await;
                session.unregister();
            });
        } else {
            self.unregister();
        }
        self.wake.notify_waiters();
        self.room.notify_waiters();
        self.written.notify_waiters();
    }

    /// Removes the session from its registry.
    pub(crate) fn unregister(&self) {
        let mut sessions = self.registry.sessions.lock();
        if sessions
            .get(&self.sid)
            .is_some_and(|s| std::ptr::eq(Arc::as_ptr(s), self))
        {
            sessions.remove(&self.sid);
        }
    }

    /// Handles one packet from the client (of a polling POST): a message goes to the inbox
    /// the session's task reads, waiting while it is full. Returns false when the session is
    /// (now) closed.
    pub(crate) async fn receive(self: &Arc<Self>, packet: Packet) -> bool {
        let data = match self.control(packet) {
            Some(data) => data,
            None => return self.state.lock().closed.is_none(),
        };
        let mut data = Some(data);
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let mut st = self.state.lock();
                if st.closed.is_some() {
                    return false;
                }
                if st.inbox.len() < INCOMING_QUEUE {
                    if let Some(d) = data.take() {
                        st.inbox.push_back(d);
                    }
                    st.wake_task();
                    return true;
                }
            }
            room.await;
        }
    }

    /// Handles the transport-level packets (pong, close); returns the application messages.
    fn control(self: &Arc<Self>, packet: Packet) -> Option<Data> {
        match packet {
            Packet::Pong(_) => {
                let mut st = self.state.lock();
                if st.awaiting_pong {
                    st.awaiting_pong = false;
                    st.pong_deadline = None;
                    st.wake_task();
                }
                None
            }
            Packet::Close => {
                self.close(CloseReason::ClientClose);
                None
            }
            Packet::Message(t) => Some(Data::Text(t)),
            Packet::Binary(b) => Some(Data::Binary(b)),
            // Pings from a v4 client only come as probes (handled by the upgrade); an open,
            // upgrade or noop from the client changes nothing.
            Packet::Ping(_)
            | Packet::Open(_)
            | Packet::Upgrade
            | Packet::Noop
            | Packet::Shared(_) => None,
        }
    }

    /// Hands a WebSocket that took the session over (after the upgrade's probe) to the
    /// session's task. Gives it back when the session is closed.
    pub(crate) fn install_websocket(&self, ws: Box<Ws>) -> Result<(), Box<Ws>> {
        {
            let mut st = self.state.lock();
            if st.closed.is_some() {
                return Err(ws);
            }
            st.transport = Transport::WebSocket;
            st.upgraded = Some(ws);
            st.wake_task();
        }
        self.wake.notify_waiters();
        Ok(())
    }
}

/// Most WebSocket messages read per poll (then the task yields).
const MAX_READ_BATCH: usize = 64;

/// The session's side that its task polls: the heartbeat, the WebSocket (writes and reads),
/// and the client's messages in order ([`Incoming::recv`], [`Incoming::poll_recv`]).
///
/// Polling it is what serves the session: the application must keep polling it (also while
/// it is busy with a message, through [`Incoming::poll_io`]) until it yields `None`, then call
/// [`Incoming::shutdown`]. Dropping it closes the session.
pub struct Incoming {
    session: Arc<Session>,
    ws: Option<Box<Ws>>,
    /// Messages read from the WebSocket, not yet taken.
    buffered: VecDeque<Data>,
    /// The next heartbeat deadline: a ping is due, or (after one) its pong.
    timer: Pin<Box<tokio::time::Sleep>>,
    ping_sent: bool,
    interval: Duration,
    timeout: Duration,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("sid", &self.session.sid)
            .finish_non_exhaustive()
    }
}

impl Incoming {
    fn new(session: Arc<Session>, config: &EngineConfig) -> Self {
        // Deadlines are absolute, from the handshake (or the last pong), so that the session
        // is closed exactly pingInterval + pingTimeout after the ping round started.
        let timer = Box::pin(tokio::time::sleep(config.ping_interval));
        Self {
            session,
            ws: None,
            buffered: VecDeque::new(),
            timer,
            ping_sent: false,
            interval: config.ping_interval,
            timeout: config.ping_timeout,
        }
    }

    /// Serves the session over `ws` (a session opened over WebSocket).
    pub(crate) fn set_websocket(&mut self, ws: Box<Ws>) {
        self.ws = Some(ws);
    }

    /// The session's handle.
    pub fn socket(&self) -> EngineSocket {
        EngineSocket {
            session: self.session.clone(),
        }
    }

    /// The client's next message; `None` once the session is closed.
    pub async fn recv(&mut self) -> Option<Data> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The client's next message (`Ready(None)` once the session is closed), serving the
    /// session meanwhile (see [`Incoming::poll_io`]).
    /// Messages that arrived before the session closed are still yielded.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Data>> {
        let closed = self.poll_io(cx).is_ready();
        if let Some(d) = self.buffered.pop_front() {
            if self.buffered.is_empty() {
                self.buffered = VecDeque::new();
            }
            return Poll::Ready(Some(d));
        }
        {
            // Polling POSTs (also those that came before an upgrade).
            let mut st = self.session.state.lock();
            if let Some(d) = st.inbox.pop_front() {
                if st.inbox.len() + 1 == INCOMING_QUEUE {
                    self.session.room.notify_waiters();
                }
                if st.inbox.is_empty() {
                    st.inbox = VecDeque::new();
                }
                return Poll::Ready(Some(d));
            }
        }
        if closed {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }

    /// Serves the session without taking a message: the heartbeat, the WebSocket's writes and
    /// reads (messages read wait in a bounded buffer). `Ready` once the session is closed.
    pub fn poll_io(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let session = &self.session;
        {
            let mut st = session.state.lock();
            if !st.task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                st.task = Some(cx.waker().clone());
            }
            st.in_poll = false;
            if let Some(ws) = st.upgraded.take() {
                self.ws = Some(ws);
            }
            if st.closed.is_some() {
                return Poll::Ready(());
            }
            if self.ping_sent && !st.awaiting_pong {
                // The pong came: the next round starts now.
                self.ping_sent = false;
                let next = tokio::time::Instant::now() + self.interval;
                self.timer.as_mut().reset(next);
            }
        }
        while self.timer.as_mut().poll(cx).is_ready() {
            if self.ping_sent {
                session.close(CloseReason::PingTimeout);
                return Poll::Ready(());
            }
            let deadline = self.timer.deadline() + self.timeout;
            {
                let mut st = session.state.lock();
                st.awaiting_pong = true;
                st.pong_deadline = Some(deadline.into_std());
            }
            self.ping_sent = true;
            self.timer.as_mut().reset(deadline);
            session.push(std::iter::once(Packet::Ping(String::new())));
        }
        let Some(ws) = self.ws.as_mut() else {
            return Poll::Pending;
        };
        if poll_ws_write(session, ws, cx).is_err() {
            session.close(CloseReason::TransportError);
            return Poll::Ready(());
        }
        let mut read = 0;
        while self.buffered.len() < INCOMING_QUEUE && read < MAX_READ_BATCH {
            let mut messages = Vec::new();
            match ws.poll_read_messages(cx, &mut messages) {
                Poll::Pending => break,
                Poll::Ready(Err(_)) => {
                    session.close(CloseReason::TransportError);
                    return Poll::Ready(());
                }
                Poll::Ready(Ok(())) => {}
            }
            for m in messages {
                read += 1;
                let packet = match m {
                    Message::Text(t) => {
                        match Packet::decode_text(std::str::from_utf8(&t).unwrap_or("")) {
                            Ok(p) => p,
                            Err(e) => {
                                tracing::debug!(sid = %session.sid, error = %e, "engine.io: bad packet");
                                session.close(CloseReason::ProtocolError);
                                return Poll::Ready(());
                            }
                        }
                    }
                    Message::Binary(b) => Packet::Binary(b),
                    _ => continue,
                };
                if let Some(d) = session.control(packet) {
                    self.buffered.push_back(d);
                }
            }
            if session.state.lock().closed.is_some() {
                return Poll::Ready(());
            }
            // Pongs and close echoes the reads queued.
            if poll_ws_write(session, ws, cx).is_err() {
                session.close(CloseReason::TransportError);
                return Poll::Ready(());
            }
        }
        if read >= MAX_READ_BATCH {
            // More may be waiting: come back after the others had their turn.
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }

    /// Ends the session: closes it (if it is not yet), writes what is still queued and closes
    /// the WebSocket.
    pub async fn shutdown(mut self) {
        let reason = {
            let st = self.session.state.lock();
            st.closed
        };
        let reason = match reason {
            Some(r) => r,
            None => {
                self.session.close(CloseReason::TransportError);
                CloseReason::TransportError
            }
        };
        let ws = self
            .ws
            .take()
            .or_else(|| self.session.state.lock().upgraded.take());
        if let Some(mut ws) = ws {
            {
                let mut st = self.session.state.lock();
                for p in self.session.drain(&mut st) {
                    queue(&mut ws, p);
                }
            }
            let code = if reason == CloseReason::ProtocolError {
                1002
            } else {
                1000
            };
            let _ = ws.close(code, "").await;
        }
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.session.close(CloseReason::TransportError);
        self.session.state.lock().task = None;
    }
}

/// Writes what the session queued to its WebSocket: takes the queue when the previous write
/// is done, and flushes. `Err` when the WebSocket failed.
fn poll_ws_write(session: &Session, ws: &mut Ws, cx: &mut Context<'_>) -> Result<(), WsError> {
    loop {
        if !ws.has_pending_writes() {
            let mut st = session.state.lock();
            if st.outbox.is_empty() {
                if st.writing {
                    st.writing = false;
                    drop(st);
                    session.written.notify_waiters();
                }
                return Ok(());
            }
            for p in session.drain(&mut st) {
                queue(ws, p);
            }
            st.writing = true;
        }
        match ws.poll_flush(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => return Ok(()),
        }
    }
}

/// Queues one packet on a WebSocket.
pub(crate) fn queue<IO>(ws: &mut WsSocket<IO>, p: Packet) {
    match p {
        // Shared with the other sockets of the room: no copy, no re-encoding.
        Packet::Shared(m) => ws.queue_message(&Message::Text(m.into_bytes())),
        p => match p.to_ws() {
            WsFrame::Text(t) => ws.queue_message(&Message::text(t)),
            WsFrame::SharedText(b) => ws.queue_message(&Message::Text(b)),
            WsFrame::Binary(b) => ws.queue_message(&Message::Binary(b)),
        },
    }
}

/// The application's handle on a session: send messages, close it, learn when it ends.
#[derive(Debug, Clone)]
pub struct EngineSocket {
    pub(crate) session: Arc<Session>,
}

impl EngineSocket {
    /// The session id.
    pub fn sid(&self) -> &str {
        &self.session.sid
    }

    /// Sends one message. Returns false when the session is closed.
    pub fn send(&self, data: Data) -> bool {
        self.session.push(std::iter::once(data.into_packet()))
    }

    /// Sends messages encoded once for many sessions (see [`SharedMessage`]), back to back.
    /// Returns false when the session is closed.
    pub fn send_shared(&self, messages: impl IntoIterator<Item = SharedMessage>) -> bool {
        self.session.push(messages.into_iter().map(Packet::Shared))
    }

    /// Sends several messages back to back (nothing else is queued in between: a Socket.IO
    /// packet and its binary attachments). Returns false when the session is closed.
    pub fn send_many(&self, data: impl IntoIterator<Item = Data>) -> bool {
        self.session.push(data.into_iter().map(Data::into_packet))
    }

    /// Over WebSocket: waits (at most `limit`) until everything queued so far is written to
    /// the socket, so that what is sent next goes out in a later write. Returns at once over
    /// polling (a poll takes everything queued at once anyway).
    pub async fn flush(&self, limit: std::time::Duration) {
        let session = &self.session;
        let wait = async {
            loop {
                let written = session.written.notified();
                tokio::pin!(written);
                written.as_mut().enable();
                {
                    let st = session.state.lock();
                    if st.closed.is_some()
                        || st.transport != Transport::WebSocket
                        || (st.outbox.is_empty() && !st.writing)
                    {
                        return;
                    }
                }
                written.await;
            }
        };
        let _ = tokio::time::timeout(limit, wait).await;
    }

    /// Runs `task` on the session's task (polled together with the session's transport), until
    /// it completes or the session's task ends. Returns false (and drops `task`) when the
    /// session is closed.
    pub fn attach(&self, task: SessionTask) -> bool {
        let mut st = self.session.state.lock();
        if st.closed.is_some() {
            return false;
        }
        st.tasks.push(task);
        st.wake_task();
        true
    }

    /// For the session's task: registers it to be woken by what it waits for (messages,
    /// packets to write, futures attached), and takes the futures [`EngineSocket::attach`]
    /// queued.
    pub fn poll_attached(&self, cx: &mut Context<'_>, into: &mut Vec<SessionTask>) {
        let mut st = self.session.state.lock();
        if !st.task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            st.task = Some(cx.waker().clone());
        }
        st.in_poll = true;
        if !st.tasks.is_empty() {
            into.append(&mut st.tasks);
            st.tasks = Vec::new();
        }
    }

    /// Closes the session (the client gets a close packet when it polls, or the WebSocket is
    /// closed).
    pub fn close(&self) {
        self.session.close(CloseReason::ServerClose);
    }

    /// Whether the session is closed.
    pub fn is_closed(&self) -> bool {
        self.session.state.lock().closed.is_some()
    }

    /// Why the session closed, once it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.session.state.lock().closed
    }

    /// Completes when the session is closed.
    pub async fn closed(&self) {
        self.session.wait_closed().await
    }

    /// The current transport.
    pub fn transport(&self) -> Transport {
        self.session.state.lock().transport
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn polls_take_at_most_their_share_and_the_rest_waits() {
        let registry = Arc::new(Registry::default());
        let (session, _rx) = registry.create(Transport::Polling, &EngineConfig::default(), None);
        session.push((0..10).map(|i| Packet::Message(format!("{i:09}"))));
        let mut st = session.state.lock();
        // Each packet is 11 bytes in a payload (type, 9 characters, separator).
        let first = session.drain_up_to(&mut st, 35);
        assert_eq!(first.len(), 3);
        assert_eq!(first[0], Packet::Message("000000000".into()));
        let one = session.drain_up_to(&mut st, 1);
        assert_eq!(one.len(), 1, "at least one packet per poll");
        let rest = session.drain_up_to(&mut st, usize::MAX);
        assert_eq!(rest.len(), 6);
        assert_eq!(st.outbox_bytes, 0);
        drop(st);
        session.close(CloseReason::ServerClose);
        assert!(registry.get(&session.sid).is_none());
    }

    #[tokio::test]
    async fn a_client_that_does_not_read_is_closed_past_the_buffer_limit() {
        let registry = Arc::new(Registry::default());
        let mut config = EngineConfig::default();
        config.max_buffered = 100;
        let (session, _rx) = registry.create(Transport::Polling, &config, Some("node".into()));
        assert!(session.sid.ends_with(".node"));
        assert!(session.push(std::iter::once(Packet::Message("x".repeat(50)))));
        assert!(!session.push(std::iter::once(Packet::Message("x".repeat(60)))));
        assert_eq!(
            session.state.lock().closed,
            Some(CloseReason::TransportError)
        );
    }
}
