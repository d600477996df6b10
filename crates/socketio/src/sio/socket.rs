//! A client's connection to one namespace: emit, acknowledgements, rooms, disconnect.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::oneshot;

use super::namespace::{Namespace, Payload};
use super::packet::{Packet, PacketType};
use super::server::Bus;
use crate::engine::{Data, EngineSocket, SharedMessage};

/// A packet encoded for the wire: the text part and its attachments.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// The text part.
    pub text: String,
    /// Attachments, in order.
    pub bins: Vec<Bytes>,
}

/// Encodes a packet for sending.
pub fn encode(packet: &Packet) -> Encoded {
    Encoded {
        text: packet.encode(),
        bins: packet.bins.clone(),
    }
}

/// Why an acknowledgement did not arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    /// It did not arrive in time.
    #[error("ack timeout")]
    Timeout,
    /// The socket disconnected first (or was never connected).
    #[error("socket disconnected")]
    Disconnected,
}

pub(crate) struct SocketInner {
    pub(crate) id: Arc<str>,
    pub(crate) ns: Arc<Namespace>,
    pub(crate) engine: EngineSocket,
    pub(crate) auth: Value,
    pub(crate) rooms: Mutex<HashSet<String>>,
    acks: Mutex<HashMap<u64, oneshot::Sender<Payload>>>,
    next_ack: AtomicU64,
    connected: AtomicBool,
    pub(crate) bus: Option<Arc<dyn Bus>>,
    /// Disconnect handlers of every namespace (run after the namespace's own).
    pub(crate) global_disconnect: Option<super::namespace::DisconnectHandler>,
    /// Data the application attaches to the socket (user id, ...).
    pub(crate) extensions: Mutex<HashMap<String, Value>>,
}

/// One client's connection to one namespace. Cheap to clone.
#[derive(Clone)]
pub struct Socket(pub(crate) Arc<SocketInner>);

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket")
            .field("id", &self.0.id)
            .field("ns", &self.0.ns.name)
            .finish_non_exhaustive()
    }
}

impl Socket {
    pub(crate) fn new(
        ns: Arc<Namespace>,
        engine: EngineSocket,
        auth: Value,
        bus: Option<Arc<dyn Bus>>,
        global_disconnect: Option<super::namespace::DisconnectHandler>,
    ) -> Self {
        use base64::Engine as _;
        let mut id = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(uuid::Uuid::new_v4().as_bytes());
        id.truncate(20);
        Socket(Arc::new(SocketInner {
            id: Arc::from(id),
            ns,
            engine,
            auth,
            rooms: Mutex::default(),
            acks: Mutex::default(),
            next_ack: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            bus,
            global_disconnect,
            extensions: Mutex::default(),
        }))
    }

    /// The socket id (the `sid` of the CONNECT reply).
    pub fn id(&self) -> &str {
        &self.0.id
    }

    /// The namespace's name.
    pub fn ns(&self) -> &str {
        &self.0.ns.name
    }

    /// The CONNECT payload (`auth` on the client), `{}` when none.
    pub fn auth(&self) -> &Value {
        &self.0.auth
    }

    /// The Engine.IO session id (shared by the client's sockets of every namespace).
    pub fn engine_sid(&self) -> &str {
        self.0.engine.sid()
    }

    /// Runs `task` on the connection's task (with its transport, in the same polls), until
    /// it completes or the connection ends. Returns false (and drops `task`) when the
    /// connection is closed.
    pub fn attach(&self, task: crate::engine::SessionTask) -> bool {
        self.0.engine.attach(task)
    }

    /// Whether the socket is connected.
    pub fn connected(&self) -> bool {
        self.0.connected.load(Ordering::Acquire)
    }

    pub(crate) fn set_connected(&self, on: bool) {
        self.0.connected.store(on, Ordering::Release);
    }

    /// Stores a value on the socket (for the application's own use).
    pub fn set_extension(&self, key: &str, value: Value) {
        self.0.extensions.lock().insert(key.to_owned(), value);
    }

    /// A value stored with [`Socket::set_extension`].
    pub fn extension(&self, key: &str) -> Option<Value> {
        self.0.extensions.lock().get(key).cloned()
    }

    /// Sends an encoded packet to this client. Returns false when it is gone.
    pub(crate) fn send_encoded(&self, e: &Encoded) -> bool {
        let first = std::iter::once(Data::Text(e.text.clone()));
        let bins = e.bins.iter().cloned().map(Data::Binary);
        self.0.engine.send_many(first.chain(bins))
    }

    /// Sends messages encoded once for many sockets (room publications, see
    /// [`crate::bridge`]). Returns false when the client is gone.
    pub(crate) fn send_shared(&self, m: impl IntoIterator<Item = SharedMessage>) -> bool {
        self.0.engine.send_shared(m)
    }

    pub(crate) fn send_packet(&self, p: &Packet) -> bool {
        self.send_encoded(&encode(p))
    }

    /// Emits `event` with `args` to this client.
    pub fn emit(&self, event: &str, args: Vec<Value>) -> bool {
        self.emit_payload(event, Payload::json(args))
    }

    /// Emits `event` with a payload that may carry binary attachments.
    pub fn emit_payload(&self, event: &str, payload: Payload) -> bool {
        self.send_packet(&Packet::event(
            self.ns(),
            event,
            payload.args,
            payload.bins,
            None,
        ))
    }

    /// Emits `event` and waits up to `timeout` for the client's acknowledgement.
    pub async fn emit_with_ack(
        &self,
        event: &str,
        payload: Payload,
        timeout: Duration,
    ) -> Result<Payload, AckError> {
        if !self.connected() {
            return Err(AckError::Disconnected);
        }
        let id = self.0.next_ack.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.0.acks.lock().insert(id, tx);
        let sent = self.send_packet(&Packet::event(
            self.ns(),
            event,
            payload.args,
            payload.bins,
            Some(id),
        ));
        if !sent {
            self.0.acks.lock().remove(&id);
            return Err(AckError::Disconnected);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(AckError::Disconnected),
            Err(_) => {
                self.0.acks.lock().remove(&id);
                Err(AckError::Timeout)
            }
        }
    }

    /// Delivers an acknowledgement from the client (unknown ids are ignored).
    pub(crate) fn on_ack(&self, id: u64, payload: Payload) {
        if let Some(tx) = self.0.acks.lock().remove(&id) {
            let _ = tx.send(payload);
        }
    }

    /// Joins `room` (with a [`Bus`], across the cluster).
    pub fn join(&self, room: &str) {
        if self.0.rooms.lock().insert(room.to_owned()) {
            self.0.ns.join(room, &self.0.id);
            if let Some(bus) = &self.0.bus {
                bus.join(self, room);
            }
        }
    }

    /// Leaves `room`.
    pub fn leave(&self, room: &str) {
        if self.0.rooms.lock().remove(room) {
            self.0.ns.leave(room, &self.0.id);
            if let Some(bus) = &self.0.bus {
                bus.leave(self, room);
            }
        }
    }

    /// The rooms it is in.
    pub fn rooms(&self) -> Vec<String> {
        self.0.rooms.lock().iter().cloned().collect()
    }

    /// An emitter to `room` (everyone in it but this socket, across the cluster).
    pub fn to(&self, room: &str) -> super::server::Emitter {
        super::server::Emitter {
            ns: self.0.ns.clone(),
            rooms: vec![room.to_owned()],
            except: Some(self.0.id.clone()),
            bus: self.0.bus.clone(),
        }
    }

    /// An emitter to every other socket of the namespace (Socket.IO's `socket.broadcast`):
    /// across the cluster with a [`Bus`](super::server::Bus); narrow it to rooms with
    /// [`Emitter::to`](super::server::Emitter::to).
    pub fn broadcast(&self) -> super::server::Emitter {
        super::server::Emitter {
            ns: self.0.ns.clone(),
            rooms: Vec::new(),
            except: Some(self.0.id.clone()),
            bus: self.0.bus.clone(),
        }
    }

    /// Disconnects the socket from the namespace (the client gets a DISCONNECT packet; its
    /// Engine.IO session and other namespaces stay).
    pub fn disconnect(&self) {
        if self.connected() {
            self.send_packet(&Packet::new(PacketType::Disconnect, self.ns(), None, None));
            self.cleanup("server namespace disconnect");
        }
    }

    /// Closes the client's whole connection (every namespace); socket.io-client then
    /// reconnects on its own, unlike after [`Socket::disconnect`].
    pub fn close_connection(&self) {
        self.0.engine.close();
    }

    /// Removes the socket from its namespace and rooms and runs the disconnect handler.
    pub(crate) fn cleanup(&self, reason: &'static str) {
        if !self.0.connected.swap(false, Ordering::AcqRel) {
            return;
        }
        let rooms: Vec<String> = self.0.rooms.lock().drain().collect();
        for room in rooms {
            self.0.ns.leave(&room, &self.0.id);
        }
        self.0.ns.sockets.write().remove(&self.0.id);
        self.0.acks.lock().clear();
        if let Some(h) = &self.0.ns.handlers.disconnect {
            h(self.clone(), reason);
        }
        if let Some(h) = &self.0.global_disconnect {
            h(self.clone(), reason);
        }
    }
}

/// Answers one event that asked for an acknowledgement. Dropping it without calling
/// [`AckSender::send`] sends nothing (the client's ack times out).
#[derive(Debug)]
pub struct AckSender {
    pub(crate) socket: Socket,
    pub(crate) id: u64,
}

impl AckSender {
    /// Sends the acknowledgement with `args`.
    pub fn send(self, args: Vec<Value>) -> bool {
        self.send_payload(Payload::json(args))
    }

    /// Sends the acknowledgement with a payload that may carry binary attachments.
    pub fn send_payload(self, payload: Payload) -> bool {
        self.socket.send_packet(&Packet::ack(
            self.socket.ns(),
            self.id,
            payload.args,
            payload.bins,
        ))
    }
}
