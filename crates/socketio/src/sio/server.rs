//! The Socket.IO server: namespaces (static and dynamic), the per-connection packet loop,
//! broadcasting to rooms (locally and, through a [`Bus`], across nodes).

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::Duration;

use parking_lot::RwLock;
use serde_json::Value;

use super::namespace::{BoxFuture, Handlers, Namespace, Payload};
use super::packet::{Packet, PacketType, ParseError};
use super::socket::{AckSender, Socket};
use crate::engine::{
    CloseReason, Data, Engine, EngineConfig, EngineHandler, EngineSocket, Incoming, SessionTask,
};

/// Longest wait for the CONNECT reply to be written before the connection handler runs.
const CONNECT_FLUSH_LIMIT: Duration = Duration::from_millis(100);

/// Socket.IO options on top of [`EngineConfig`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SioConfig {
    /// How long a new connection may take to connect to a namespace before it is closed
    /// (default 45 s).
    pub connect_timeout: Duration,
    /// Most binary attachments one packet may announce (default 64).
    pub max_attachments: usize,
    /// Most dynamic namespaces that exist at once (they exist while they have sockets; a
    /// CONNECT to a new one beyond the limit gets "Invalid namespace"; default 10 000).
    pub max_dynamic_namespaces: usize,
}

impl Default for SioConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(45),
            max_attachments: 64,
            max_dynamic_namespaces: 10_000,
        }
    }
}

/// Carries room traffic, for rooms that span the nodes of a cluster (implemented on the hub by
/// [`crate::bridge::HubBridge`]).
///
/// With a bus, rooms live in the bus: `join`/`leave` tell it about a socket's rooms, and a
/// broadcast is only `publish`ed; the bus delivers it to every member (every socket of the
/// namespace when no room is named), on this node too, once per node, in the order of the
/// `publish` calls for namespace-wide broadcasts. Without one, rooms are local to the node.
pub trait Bus: Send + Sync + 'static {
    /// `socket` joined `room`.
    fn join(&self, socket: &Socket, room: &str);
    /// `socket` left `room`.
    fn leave(&self, socket: &Socket, room: &str);
    /// Broadcasts `packet` to the members of `rooms` of namespace `ns` (to every socket of
    /// `ns`, on every node, when `rooms` is empty), leaving out the socket `except`.
    fn publish(&self, ns: &str, rooms: &[String], except: Option<&str>, packet: &Packet);
}

/// A namespace pattern for dynamic namespaces.
type Matcher = Arc<dyn Fn(&str) -> bool + Send + Sync>;

struct Inner {
    config: SioConfig,
    namespaces: RwLock<HashMap<String, Arc<Namespace>>>,
    dynamic: RwLock<Vec<(Matcher, Handlers)>>,
    bus: RwLock<Option<Arc<dyn Bus>>>,
    /// Hooks of every namespace: connect middleware run first, disconnect handlers run last.
    hooks: RwLock<Handlers>,
}

/// A Socket.IO server. Register namespaces, then serve it with [`SocketIo::engine`].
#[derive(Clone)]
pub struct SocketIo {
    inner: Arc<Inner>,
}

/// A [`SocketIo`] that does not keep it alive (for handlers the server's own parts hold).
#[derive(Clone)]
pub(crate) struct WeakSocketIo(Weak<Inner>);

impl WeakSocketIo {
    /// The server, while it exists.
    pub(crate) fn upgrade(&self) -> Option<SocketIo> {
        self.0.upgrade().map(|inner| SocketIo { inner })
    }
}

impl std::fmt::Debug for SocketIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketIo")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl SocketIo {
    /// A server without namespaces (add them with [`SocketIo::ns`]).
    pub fn new(config: SioConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                namespaces: RwLock::default(),
                dynamic: RwLock::default(),
                bus: RwLock::default(),
                hooks: RwLock::default(),
            }),
        }
    }

    /// Registers namespace `name` with the handlers `build` sets up.
    pub fn ns(&self, name: &str, build: impl FnOnce(&mut Handlers)) -> &Self {
        let mut h = Handlers::default();
        build(&mut h);
        self.inner
            .namespaces
            .write()
            .insert(name.to_owned(), Namespace::new(name, h));
        self
    }

    /// Registers a dynamic namespace: every name `matches` accepts gets its own namespace with
    /// the handlers `build` sets up, created on its first connection.
    pub fn dynamic_ns(
        &self,
        matches: impl Fn(&str) -> bool + Send + Sync + 'static,
        build: impl FnOnce(&mut Handlers),
    ) -> &Self {
        let mut h = Handlers::default();
        build(&mut h);
        self.inner.dynamic.write().push((Arc::new(matches), h));
        self
    }

    /// Adds hooks to every namespace: `build` may add connect middleware (run before the
    /// namespace's own) and a disconnect handler (run after the namespace's own).
    pub fn hooks(&self, build: impl FnOnce(&mut Handlers)) {
        build(&mut self.inner.hooks.write());
    }

    /// Installs the bus that carries room traffic across nodes.
    pub fn set_bus(&self, bus: Arc<dyn Bus>) {
        *self.inner.bus.write() = Some(bus);
    }

    pub(crate) fn downgrade(&self) -> WeakSocketIo {
        WeakSocketIo(Arc::downgrade(&self.inner))
    }

    /// The namespace `name`, if it exists (dynamic ones once created).
    pub fn of(&self, name: &str) -> Option<Arc<Namespace>> {
        self.inner.namespaces.read().get(name).cloned()
    }

    /// An emitter to every socket of namespace `ns`, across the cluster when a [`Bus`] is
    /// installed (`None` when the namespace does not exist on this node).
    pub fn emitter(&self, ns: &str) -> Option<Emitter> {
        Some(Emitter {
            ns: self.of(ns)?,
            rooms: Vec::new(),
            except: None,
            bus: self.inner.bus.read().clone(),
        })
    }

    /// Delivers a broadcast packet to this node's sockets of its namespace: of `rooms` (every
    /// socket when empty) but `except` (called by the [`Bus`]). Returns how many got it.
    pub fn deliver_remote(&self, packet: &Packet, rooms: &[String], except: Option<&str>) -> usize {
        match self.of(&packet.nsp) {
            Some(ns) => ns.deliver_local(packet, rooms, except),
            None => 0,
        }
    }

    /// An Engine.IO server whose sessions speak Socket.IO on this server.
    pub fn engine(&self, config: EngineConfig) -> Engine {
        Engine::new(config, Arc::new(self.clone()))
    }

    /// An axum router serving `engine` at `path` (with and without the trailing slash).
    pub fn router(engine: Engine, path: &str) -> axum::Router {
        let trimmed = path.trim_end_matches('/');
        let handler = move |req: axum::extract::Request| {
            let engine = engine.clone();
            async move { engine.handle(req).await }
        };
        let mut router =
            axum::Router::new().route(&format!("{trimmed}/"), axum::routing::any(handler.clone()));
        if !trimmed.is_empty() {
            router = router.route(trimmed, axum::routing::any(handler));
        }
        router
    }

    fn find_ns(&self, name: &str) -> Option<Arc<Namespace>> {
        if let Some(ns) = self.of(name) {
            return Some(ns);
        }
        let handlers = self
            .inner
            .dynamic
            .read()
            .iter()
            .find(|(m, _)| m(name))
            .map(|(_, h)| h.clone())?;
        let mut all = self.inner.namespaces.write();
        if let Some(ns) = all.get(name) {
            return Some(ns.clone());
        }
        // Dynamic namespaces live while they have sockets ([`SocketIo::prune`]); their number
        // is bounded, so clients cannot grow the map without limit.
        let dynamic = all.values().filter(|ns| ns.dynamic).count();
        if dynamic >= self.inner.config.max_dynamic_namespaces {
            tracing::debug!(namespace = name, "socket.io: too many dynamic namespaces");
            return None;
        }
        let mut ns = Namespace::new(name, handlers);
        Arc::get_mut(&mut ns).expect("new namespace").dynamic = true;
        all.insert(name.to_owned(), ns.clone());
        Some(ns)
    }

    /// Forgets dynamic namespace `name` once it has no sockets left.
    fn prune(&self, name: &str) {
        let mut all = self.inner.namespaces.write();
        if all
            .get(name)
            .is_some_and(|ns| ns.dynamic && ns.sockets.read().is_empty())
        {
            all.remove(name);
        }
    }
}

impl EngineHandler for SocketIo {
    fn on_open(&self, socket: EngineSocket, incoming: Incoming) {
        tokio::spawn(run_connection(self.clone(), socket, incoming));
    }
}

/// An emitter to a namespace, narrowed to rooms and leaving one socket out.
#[derive(Clone)]
pub struct Emitter {
    pub(crate) ns: Arc<Namespace>,
    pub(crate) rooms: Vec<String>,
    pub(crate) except: Option<Arc<str>>,
    pub(crate) bus: Option<Arc<dyn Bus>>,
}

impl std::fmt::Debug for Emitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emitter")
            .field("ns", &self.ns.name)
            .field("rooms", &self.rooms)
            .finish_non_exhaustive()
    }
}

impl Emitter {
    /// Adds `room` (the union of the rooms gets the packet).
    pub fn to(mut self, room: &str) -> Self {
        self.rooms.push(room.to_owned());
        self
    }

    /// Emits `event` with `args` to the rooms' members (every socket of the namespace when no
    /// room was named), except the socket left out. With a [`Bus`] they get it on every node,
    /// and this returns 0 (the bus delivers, this node included); without one, only this node's
    /// sockets get it, and this returns how many did.
    pub fn emit(&self, event: &str, args: Vec<Value>) -> usize {
        self.emit_payload(event, Payload::json(args))
    }

    /// Emits `event` with a payload that may carry attachments.
    pub fn emit_payload(&self, event: &str, payload: Payload) -> usize {
        let packet = Packet::event(&self.ns.name, event, payload.args, payload.bins, None);
        let except = self.except.as_deref();
        match &self.bus {
            // The bus delivers everywhere, this node included.
            Some(bus) => {
                bus.publish(&self.ns.name, &self.rooms, except, &packet);
                0
            }
            None => self.ns.deliver_local(&packet, &self.rooms, except),
        }
    }
}

/// State of one Engine.IO connection speaking Socket.IO.
struct Connection {
    io: SocketIo,
    engine: EngineSocket,
    /// Its sockets, one per namespace (a list: connections have one or a few).
    sockets: Sockets,
    /// A binary packet waiting for its attachments.
    partial: Option<Packet>,
}

/// The asynchronous part of handling a packet (a CONNECT: its middlewares, then the wait for
/// its reply to be written), run on the connection's task while later packets wait.
enum Step {
    /// The middlewares accepted the socket.
    Accepted {
        ns: Arc<Namespace>,
        socket: Socket,
        auth: Value,
    },
    /// Nothing left to do.
    Done,
}

/// Serves one Engine.IO session speaking Socket.IO, on one task: the session's transport and
/// heartbeat ([`Incoming`]), the packets in order, and the futures the sockets attached (the
/// hub sessions of [`crate::bridge`]).
pub(crate) async fn run_connection(io: SocketIo, engine: EngineSocket, mut incoming: Incoming) {
    // Until the first CONNECT (then dropped: an idle connection keeps no timer for it).
    let mut timeout = Some(Box::pin(tokio::time::sleep(
        io.inner.config.connect_timeout,
    )));
    let mut conn = Connection {
        io,
        engine,
        sockets: Sockets::default(),
        partial: None,
    };
    let mut in_flight: Option<BoxFuture<Step>> = None;
    let mut attached: Vec<SessionTask> = Vec::new();
    loop {
        let event = poll_fn(|cx| {
            // What the attached futures and the CONNECT in flight queue for the client is
            // written by `poll_io` at the end of this same poll (it must run on every path).
            conn.engine.poll_attached(cx, &mut attached);
            let before = attached.len();
            attached.retain_mut(|t| t.as_mut().poll(cx).is_pending());
            if attached.is_empty() && before > 0 {
                attached = Vec::new();
            }
            let mut event = None;
            if let Some(f) = in_flight.as_mut() {
                if let Poll::Ready(step) = f.as_mut().poll(cx) {
                    in_flight = None;
                    event = Some(Event::Step(step));
                }
            }
            if let Some(t) = timeout.as_mut() {
                if event.is_none() && t.as_mut().poll(cx).is_ready() {
                    event = Some(Event::Timeout);
                }
            }
            if event.is_none() && in_flight.is_none() {
                return incoming.poll_recv(cx).map(|d| d.map(Event::Data));
            }
            let closed = incoming.poll_io(cx).is_ready();
            match event {
                Some(e) => Poll::Ready(Some(e)),
                None if closed => Poll::Ready(None),
                None => Poll::Pending,
            }
        })
        .await;
        let result = match event {
            None => break,
            Some(Event::Timeout) => {
                tracing::debug!(sid = conn.engine.sid(), "socket.io: no CONNECT in time");
                conn.engine.close();
                timeout = None;
                Ok(None)
            }
            Some(Event::Data(data)) => conn.handle(data),
            Some(Event::Step(step)) => Ok(conn.step(step)),
        };
        match result {
            Ok(next) => in_flight = next,
            Err(e) => {
                tracing::debug!(sid = conn.engine.sid(), error = %e, "socket.io: bad packet, closing");
                conn.engine.close();
                break;
            }
        }
        if !conn.sockets.is_empty() {
            timeout = None;
        }
    }
    let reason = match conn.engine.close_reason() {
        Some(CloseReason::ClientClose) => "client namespace disconnect",
        Some(CloseReason::PingTimeout) => "ping timeout",
        Some(CloseReason::ServerClose) => "server shutting down",
        Some(CloseReason::ProtocolError) => "parse error",
        _ => "transport close",
    };
    drop(in_flight);
    for socket in std::mem::take(&mut conn.sockets.0) {
        socket.cleanup(reason);
        conn.io.prune(socket.ns());
    }
    // The sockets' attached futures (hub sessions) end with the connection.
    drop(attached);
    // Boxed: the closing handshake's state is not part of every parked connection.
    Box::pin(incoming.shutdown()).await;
}

/// A connection's sockets, one per namespace.
#[derive(Default)]
struct Sockets(Vec<Socket>);

impl Sockets {
    fn get(&self, nsp: &str) -> Option<&Socket> {
        self.0.iter().find(|s| s.ns() == nsp)
    }

    fn remove(&mut self, nsp: &str) -> Option<Socket> {
        let i = self.0.iter().position(|s| s.ns() == nsp)?;
        let socket = self.0.swap_remove(i);
        if self.0.is_empty() {
            self.0 = Vec::new();
        }
        Some(socket)
    }

    /// Adds `socket`, replacing the one of its namespace.
    fn insert(&mut self, socket: Socket) {
        self.remove(socket.ns());
        self.0.reserve_exact(1);
        self.0.push(socket);
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What woke the connection's task.
enum Event {
    Data(Data),
    Step(Step),
    Timeout,
}

impl Connection {
    /// Handles one message; a CONNECT may leave an asynchronous part to run.
    fn handle(&mut self, data: Data) -> Result<Option<BoxFuture<Step>>, ParseError> {
        let packet = match data {
            Data::Text(text) => {
                if self.partial.is_some() {
                    // Text while attachments are expected.
                    return Err(ParseError::IllegalAttachments);
                }
                let p = Packet::decode(&text, self.io.inner.config.max_attachments)?;
                if p.ty.is_binary() && p.attachments > 0 {
                    self.partial = Some(p);
                    return Ok(None);
                }
                p
            }
            Data::Binary(b) => {
                let Some(p) = self.partial.as_mut() else {
                    return Err(ParseError::IllegalAttachments);
                };
                p.bins.push(b);
                if !p.is_complete() {
                    return Ok(None);
                }
                let p = self.partial.take().expect("partial packet");
                p.check_placeholders()?;
                p
            }
        };
        Ok(self.dispatch(packet))
    }

    fn dispatch(&mut self, packet: Packet) -> Option<BoxFuture<Step>> {
        match packet.ty {
            PacketType::Connect => return self.connect(packet),
            PacketType::Disconnect => {
                if let Some(s) = self.sockets.remove(&packet.nsp) {
                    s.cleanup("client namespace disconnect");
                    self.io.prune(&packet.nsp);
                }
            }
            PacketType::Event | PacketType::BinaryEvent => {
                let socket = self.sockets.get(&packet.nsp).filter(|s| s.connected())?;
                let Some(Value::Array(mut args)) = packet.data else {
                    return None;
                };
                let name = match args.first() {
                    Some(Value::String(s)) => s.clone(),
                    Some(v) => v.to_string(),
                    None => return None,
                };
                let handlers = &socket.0.ns.handlers;
                let ack = packet.id.map(|id| AckSender {
                    socket: socket.clone(),
                    id,
                });
                if let Some(h) = handlers.events.get(&name) {
                    args.remove(0);
                    h(
                        socket.clone(),
                        Payload {
                            args,
                            bins: packet.bins,
                        },
                        ack,
                    );
                } else if let Some(h) = &handlers.any {
                    h(
                        socket.clone(),
                        Payload {
                            args,
                            bins: packet.bins,
                        },
                        ack,
                    );
                }
            }
            PacketType::Ack | PacketType::BinaryAck => {
                let (Some(socket), Some(id)) = (self.sockets.get(&packet.nsp), packet.id) else {
                    return None;
                };
                let args = match packet.data {
                    Some(Value::Array(a)) => a,
                    _ => Vec::new(),
                };
                socket.on_ack(
                    id,
                    Payload {
                        args,
                        bins: packet.bins,
                    },
                );
            }
            // A client never sends these.
            PacketType::ConnectError => {}
        }
        None
    }

    /// A CONNECT: the synchronous checks; the middlewares run as the returned future, and
    /// [`Connection::step`] finishes.
    fn connect(&mut self, packet: Packet) -> Option<BoxFuture<Step>> {
        let nsp = packet.nsp;
        let Some(ns) = self.io.find_ns(&nsp) else {
            let err = super::namespace::ConnectError::new("Invalid namespace");
            self.engine.send(Data::Text(
                Packet::new(PacketType::ConnectError, &nsp, None, Some(err.to_value())).encode(),
            ));
            return None;
        };
        if self.sockets.get(&nsp).is_some_and(Socket::connected) {
            return None;
        }
        let auth = packet
            .data
            .unwrap_or_else(|| Value::Object(Default::default()));
        let bus = self.io.inner.bus.read().clone();
        let global_disconnect = self.io.inner.hooks.read().disconnect.clone();
        let socket = Socket::new(
            ns.clone(),
            self.engine.clone(),
            auth.clone(),
            bus,
            global_disconnect,
        );
        let global = self.io.inner.hooks.read().middleware.clone();
        let middleware: Vec<_> = global
            .iter()
            .chain(&ns.handlers.middleware)
            .cloned()
            .collect();
        if middleware.is_empty() {
            return self.step(Step::Accepted { ns, socket, auth });
        }
        let engine = self.engine.clone();
        Some(Box::pin(async move {
            for mw in middleware {
                if let Err(err) = mw(socket.clone(), auth.clone()).await {
                    engine.send(Data::Text(
                        Packet::new(PacketType::ConnectError, &nsp, None, Some(err.to_value()))
                            .encode(),
                    ));
                    return Step::Done;
                }
            }
            Step::Accepted { ns, socket, auth }
        }))
    }

    /// Finishes what a [`Step`] started.
    fn step(&mut self, step: Step) -> Option<BoxFuture<Step>> {
        let Step::Accepted { ns, socket, auth } = step else {
            return None;
        };
        if self.engine.is_closed() {
            return None;
        }
        let nsp = ns.name.clone();
        socket.set_connected(true);
        ns.sockets
            .write()
            .insert(socket.0.id.clone(), socket.clone());
        self.sockets.insert(socket.clone());
        let mut reply = serde_json::Map::new();
        reply.insert("sid".into(), Value::String(socket.id().to_owned()));
        // With connection state recovery, the private session id the client sends back.
        if let Some(pid) = socket.extension("pid") {
            reply.insert("pid".into(), pid);
        }
        socket.send_packet(&Packet::new(
            PacketType::Connect,
            &nsp,
            None,
            Some(Value::Object(reply)),
        ));
        // The reply goes out on its own before the connection handler runs (what that handler
        // emits follows in a later write), like the reference server: the connection's task
        // writes it while this waits.
        let handler = ns.handlers.connection.clone();
        let engine = self.engine.clone();
        Some(Box::pin(async move {
            engine.flush(CONNECT_FLUSH_LIMIT).await;
            if let Some(h) = handler {
                h(socket, auth);
            }
            Step::Done
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_namespaces_are_bounded_and_pruned_when_empty() {
        let mut config = SioConfig::default();
        config.max_dynamic_namespaces = 3;
        let io = SocketIo::new(config);
        io.ns("/", |_| {});
        io.dynamic_ns(|name| name.starts_with("/room-"), |_| {});
        assert!(io.find_ns("/").is_some());
        assert!(io.find_ns("/other").is_none());
        for i in 0..3 {
            assert!(io.find_ns(&format!("/room-{i}")).is_some());
        }
        // The same name again is the same namespace, a fourth one is refused.
        assert!(io.find_ns("/room-1").is_some());
        assert!(io.find_ns("/room-3").is_none());
        // Empty dynamic namespaces are forgotten; static ones stay.
        io.prune("/room-0");
        io.prune("/");
        assert!(io.of("/room-0").is_none());
        assert!(io.of("/").is_some());
        assert!(io.find_ns("/room-3").is_some());
    }
}
