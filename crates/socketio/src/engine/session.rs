//! One Engine.IO session: its outbound queue, transport state, heartbeat and close.
//!
//! The transports (a polling GET, a WebSocket task) take packets out of the queue; the
//! application puts them in through [`EngineSocket`]. Every change wakes the transport through
//! one `Notify`. Incoming messages go to the application through a bounded channel, so a POST
//! (or a WebSocket read) waits while the application is behind.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::config::EngineConfig;
use super::packet::{Packet, SharedMessage};

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

#[derive(Debug)]
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
    incoming: Option<mpsc::Sender<Data>>,
}

/// A session (shared by its transports, its heartbeat task and the application).
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) sid: Arc<str>,
    pub(crate) state: Mutex<State>,
    /// Woken on every change of `state` a transport waits for.
    pub(crate) wake: Notify,
    pong: Notify,
    /// Woken when the WebSocket task finished writing what it took.
    pub(crate) written: Notify,
    pub(crate) closed: CancellationToken,
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

    /// Creates and registers a session; starts its heartbeat.
    pub(crate) fn create(
        self: &Arc<Self>,
        transport: Transport,
        config: &EngineConfig,
        node: Option<String>,
    ) -> (Arc<Session>, mpsc::Receiver<Data>) {
        let mut sid = new_sid();
        if let Some(node) = node {
            sid.push('.');
            sid.push_str(&node);
        }
        let sid: Arc<str> = Arc::from(sid);
        let (tx, rx) = mpsc::channel(INCOMING_QUEUE);
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
                incoming: Some(tx),
            }),
            wake: Notify::new(),
            pong: Notify::new(),
            written: Notify::new(),
            closed: CancellationToken::new(),
            max_buffered: config.max_buffered,
            registry: self.clone(),
        });
        self.sessions.lock().insert(sid, session.clone());
        tokio::spawn(heartbeat(
            session.clone(),
            config.ping_interval,
            config.ping_timeout,
        ));
        (session, rx)
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

pub(crate) async fn heartbeat(
    session: Arc<Session>,
    interval: std::time::Duration,
    timeout: std::time::Duration,
) {
    // Deadlines are absolute, from the handshake (or the last pong), so that the session is
    // closed exactly pingInterval + pingTimeout after the ping round started.
    let mut start = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(start + interval) => {}
            _ = session.closed.cancelled() => return,
        }
        let deadline = start + interval + timeout;
        {
            let mut st = session.state.lock();
            st.awaiting_pong = true;
            st.pong_deadline = Some(deadline.into_std());
        }
        session.push(std::iter::once(Packet::Ping(String::new())));
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                session.close(CloseReason::PingTimeout);
                return;
            }
            _ = session.pong.notified() => start = tokio::time::Instant::now(),
            _ = session.closed.cancelled() => return,
        }
    }
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
            st.outbox_bytes > self.max_buffered
        };
        if overflow {
            tracing::debug!(sid = %self.sid, "engine.io: client too slow, closing");
            self.close(CloseReason::TransportError);
            return false;
        }
        self.wake.notify_waiters();
        true
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
            st.incoming = None;
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
        self.closed.cancel();
        self.wake.notify_waiters();
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

    /// Handles one packet from the client. Returns false when the session is (now) closed.
    pub(crate) async fn receive(self: &Arc<Self>, packet: Packet) -> bool {
        let data = match packet {
            Packet::Pong(_) => {
                let mut st = self.state.lock();
                if st.awaiting_pong {
                    st.awaiting_pong = false;
                    st.pong_deadline = None;
                    self.pong.notify_one();
                }
                return st.closed.is_none();
            }
            Packet::Close => {
                self.close(CloseReason::ClientClose);
                return false;
            }
            Packet::Message(t) => Data::Text(t),
            Packet::Binary(b) => Data::Binary(b),
            // Pings from a v4 client only come as probes (handled by the WebSocket); an open,
            // upgrade or noop from the client changes nothing.
            Packet::Ping(_)
            | Packet::Open(_)
            | Packet::Upgrade
            | Packet::Noop
            | Packet::Shared(_) => return self.state.lock().closed.is_none(),
        };
        let tx = self.state.lock().incoming.clone();
        match tx {
            Some(tx) => tx.send(data).await.is_ok(),
            None => false,
        }
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

    /// Closes the session (the client gets a close packet when it polls, or the WebSocket is
    /// closed).
    pub fn close(&self) {
        self.session.close(CloseReason::ServerClose);
    }

    /// Whether the session is closed.
    pub fn is_closed(&self) -> bool {
        self.session.closed.is_cancelled()
    }

    /// Why the session closed, once it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.session.state.lock().closed
    }

    /// Completes when the session is closed.
    pub async fn closed(&self) {
        self.session.closed.cancelled().await
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
