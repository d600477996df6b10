//! Standalone semantics: every Socket.IO socket is a client of the hub.
//!
//! Each socket (one client in one namespace) gets its own hub session, driven by the commands
//! of the native protocol, so the hub's authentication, namespace permissions, proxies and
//! handlers, and cross-node fan-out apply unchanged:
//!
//! | Socket.IO | hub |
//! | --- | --- |
//! | CONNECT with `auth` | `connect` with `token` = `auth.token`, `data` = `auth`; a refusal becomes CONNECT_ERROR `{message, data: {code}}` |
//! | `emit("join", room)` | `subscribe` to the room's channel; the ack is `{}` or `{error}` |
//! | `emit("leave", room)` | `unsubscribe` |
//! | `emit("broadcast", room, event, ...args)` | `publish` `{"event", "args"}` to the room's channel |
//! | any other `emit(event, ...args)` | `rpc` with `method` = event, `data` = args; the reply's data is the ack |
//! | publication in a joined room | event `data.event` with `data.args` when the data has that shape, else event `message` with the data |
//!
//! Rooms map to channels: room `R` of namespace `/` is channel `R`, of namespace `/chat` it is
//! `chat:R` (`:` is the hub's namespace separator), so the namespace options of `chat` govern
//! who may join and broadcast there. A socket does not get its own broadcasts back (Socket.IO's
//! `socket.to(room).emit` semantics).
//!
//! A room publication is converted into its Socket.IO event once, not once per socket, and its
//! arguments pass through as raw JSON (see [`fanout`]); with recovery on, each socket's events
//! carry its own offset as their last argument, added to a copy of the converted event.

mod broadcasts;
mod fanout;
mod offset;

use broadcasts::{deliver_broadcasts, Broadcasts};
use offset::{decode_offset, encode_offset};

use std::collections::{BTreeMap, HashMap};
use std::future::{poll_fn, Future as _};
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::{json, Value};
use switchboard_hub::{Client, Drained, Hub, TransportInfo};
use tokio::sync::oneshot;

use crate::engine::SharedMessage;
use crate::sio::{ConnectError, Handlers, Payload, Socket};

const TRANSPORT: TransportInfo = TransportInfo::new("socketio", false);

/// The built-in event that joins a room.
pub const JOIN_EVENT: &str = "join";
/// The built-in event that leaves a room.
pub const LEAVE_EVENT: &str = "leave";
/// The built-in event that emits into a room.
pub const BROADCAST_EVENT: &str = "broadcast";

/// The hub channel of `room` in Socket.IO namespace `ns`.
pub fn room_channel(ns: &str, room: &str) -> String {
    let ns = ns.trim_start_matches('/');
    if ns.is_empty() {
        room.to_owned()
    } else {
        format!("{ns}{}{room}", switchboard_hub::NAMESPACE_SEPARATOR)
    }
}

/// A command for a socket's hub session, with where its reply goes.
struct Command {
    frame: Value,
    reply: Option<oneshot::Sender<Value>>,
}

/// Connects Socket.IO sockets to a hub (see the module docs).
#[derive(Clone)]
pub struct HubBridge {
    hub: Hub,
    sessions: Arc<Mutex<HashMap<Arc<str>, HubSession>>>,
    recovery: bool,
    broadcasts: Arc<Broadcasts>,
    publishes: Arc<Publishes>,
}

/// The Engine.IO path [`HubBridge::with_path`] assumes.
const DEFAULT_PATH: &str = "/socket.io/";
/// A socket's hub session: where its commands go, and its hub client id.
#[derive(Clone)]
struct HubSession {
    tx: Arc<Commands>,
    client: String,
}

/// Most commands waiting for a socket's hub session.
const MAX_COMMANDS: usize = 64;

/// The commands waiting for a socket's hub session (the session runs on the socket's
/// connection task, see [`drive`]). Held by the senders; the session holds a `Weak`, so it
/// ends once every sender is gone (dropping the queue wakes it). Nothing is allocated while
/// the queue is empty.
#[derive(Default)]
struct Commands {
    state: Mutex<CommandsState>,
}

#[derive(Default)]
struct CommandsState {
    queue: std::collections::VecDeque<Command>,
    waker: Option<std::task::Waker>,
}

impl Commands {
    /// Queues a command; `Err` (with it) when [`MAX_COMMANDS`] are waiting.
    fn try_send(&self, cmd: Command) -> Result<(), Command> {
        let mut st = self.state.lock();
        if st.queue.len() >= MAX_COMMANDS {
            return Err(cmd);
        }
        st.queue.push_back(cmd);
        if let Some(w) = st.waker.take() {
            w.wake();
        }
        Ok(())
    }
}

impl Drop for Commands {
    fn drop(&mut self) {
        if let Some(w) = self.state.get_mut().waker.take() {
            w.wake();
        }
    }
}

/// The next command for a session (`Ready(None)` once every sender is gone).
fn poll_command(
    commands: &std::sync::Weak<Commands>,
    cx: &mut std::task::Context<'_>,
) -> Poll<Option<Command>> {
    let Some(commands) = commands.upgrade() else {
        return Poll::Ready(None);
    };
    let mut st = commands.state.lock();
    match st.queue.pop_front() {
        Some(cmd) => {
            if st.queue.is_empty() {
                st.queue = std::collections::VecDeque::new();
            }
            Poll::Ready(Some(cmd))
        }
        None => {
            if !st.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                st.waker = Some(cx.waker().clone());
            }
            Poll::Pending
        }
    }
}

impl std::fmt::Debug for HubBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubBridge").finish_non_exhaustive()
    }
}

impl HubBridge {
    /// A bridge to `hub`.
    pub fn new(hub: Hub) -> Self {
        Self {
            hub,
            sessions: Arc::default(),
            recovery: false,
            broadcasts: Broadcasts::new(DEFAULT_PATH),
            publishes: Arc::default(),
        }
    }

    /// Sets the Engine.IO path the Socket.IO server is served at (default `/socket.io/`):
    /// the nodes that serve the same path share namespace-wide broadcasts (library mode).
    pub fn with_path(mut self, path: &str) -> Self {
        self.broadcasts = Broadcasts::new(path);
        self
    }

    /// Turns connection state recovery on or off (see [`crate::bridge`]'s "Recovery").
    pub fn with_recovery(mut self, on: bool) -> Self {
        self.recovery = on;
        self
    }

    /// Sets up `h` (the handlers of a namespace) with the standalone semantics.
    pub fn install(&self, h: &mut Handlers) {
        let bridge = self.clone();
        h.use_connect(move |socket, auth| {
            let bridge = bridge.clone();
            async move { bridge.connect(socket, auth).await }
        });
        let bridge = self.clone();
        h.on_disconnect(move |socket, _reason| {
            // Dropping the sender ends the session's task, which drops the hub client.
            bridge.sessions.lock().remove(socket.id());
        });
        let bridge = self.clone();
        h.on_any(move |socket, name, payload, ack| {
            let Some(HubSession { tx, .. }) = bridge.sessions.lock().get(socket.id()).cloned()
            else {
                return;
            };
            // Queued here, in the order the events arrived; only the wait for the reply is
            // spawned.
            let (reply, rx) = match ack {
                Some(_) => {
                    let (reply, rx) = oneshot::channel();
                    (Some(reply), Some(rx))
                }
                None => (None, None),
            };
            let frame = event_command(socket.ns(), &name, payload.args);
            let queued = tx.try_send(Command { frame, reply });
            if queued.is_err() {
                if let Some(ack) = ack {
                    ack.send(vec![
                        json!({ "error": { "code": 111, "message": "too many requests" } }),
                    ]);
                }
                return;
            }
            // Without an ack nothing waits for the reply (an event a client emits without one
            // gets no answer, whatever the hub replies).
            if let (Some(ack), Some(rx)) = (ack, rx) {
                tokio::spawn(async move {
                    let result = rx.await.map_err(|_| ());
                    ack.send(vec![ack_value(&name, result)]);
                });
            }
        });
    }

    async fn connect(&self, socket: Socket, auth: Value) -> Result<(), ConnectError> {
        let client = self.hub.accept(TRANSPORT).map_err(|code| {
            ConnectError::new(code.reason).with_data(json!({ "code": code.code }))
        })?;
        let token = auth
            .get("token")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let mut connect = json!({ "name": "socket.io" });
        if !token.is_empty() {
            connect["token"] = Value::String(token.to_owned());
        }
        if auth.as_object().is_some_and(|o| !o.is_empty()) {
            connect["data"] = auth.clone();
        }
        let tx = Arc::new(Commands::default());
        // The session runs on the socket's connection task (it ends with the connection, or
        // when the socket leaves and the senders are gone).
        let session = drive(
            Box::new(client),
            socket.clone(),
            Arc::downgrade(&tx),
            self.recovery,
        );
        socket.attach(Box::pin(session));
        let reply = command(&tx, json!({ "connect": connect }))
            .await
            .map_err(|_| ConnectError::new("internal server error"))?;
        if let Some(err) = reply.get("error") {
            let message = err
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("unauthorized");
            return Err(ConnectError::new(message).with_data(json!({ "code": err.get("code") })));
        }
        let client_id = reply
            .pointer("/connect/client")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if self.recovery {
            let pid = self.recover(&tx, &auth).await;
            socket.set_extension("pid", Value::String(pid));
        }
        self.sessions.lock().insert(
            socket.0.id.clone(),
            HubSession {
                tx,
                client: client_id.to_owned(),
            },
        );
        Ok(())
    }

    /// Resubscribes the rooms of the offset a returning client sent, recovering what it
    /// missed (the publications are emitted by the session's task as the replies come in).
    /// Returns the private session id: the client's when every room was recovered (the client
    /// then sees `socket.recovered`), else a new one.
    async fn recover(&self, tx: &Commands, auth: &Value) -> String {
        let fresh = || uuid::Uuid::new_v4().simple().to_string();
        let (Some(pid), Some(offset)) = (
            auth.get("pid").and_then(Value::as_str),
            auth.get("offset").and_then(Value::as_str),
        ) else {
            return fresh();
        };
        let Some(positions) = decode_offset(offset) else {
            return fresh();
        };
        let mut all = true;
        for (channel, (offset, epoch)) in positions {
            let frame = json!({ "subscribe": {
                "channel": channel, "recover": true, "offset": offset, "epoch": epoch,
            } });
            let reply = command(tx, frame).await.unwrap_or(Value::Null);
            all &= reply.pointer("/subscribe/recovered") == Some(&Value::Bool(true));
        }
        if all && pid.len() <= 64 {
            pid.to_owned()
        } else {
            fresh()
        }
    }

    /// Library semantics: every socket of `io` (any namespace) gets a hub session when it
    /// connects (the hub's authentication applies: `auth.token`, anonymous clients, the connect
    /// proxy or handler), and rooms become hub channels: `socket.join(room)` subscribes the
    /// socket's session to the room's channel, and emitting to rooms publishes into their
    /// channels, so every member gets it on any node, with native clients and server API
    /// publications in the same rooms. A namespace-wide emit (`io.emitter(ns)`,
    /// `socket.broadcast()`) reaches the namespace's sockets on every node that attached a
    /// bridge at the same path ([`HubBridge::with_path`]), once each, in the order this node
    /// made them. Events still go to `io`'s own handlers.
    pub fn attach(&self, io: &crate::sio::SocketIo) {
        let weak = io.downgrade();
        self.hub.on_relay(
            self.broadcasts.topic(),
            Arc::new(move |data: String| {
                if let Some(io) = weak.upgrade() {
                    deliver_broadcasts(&io, &data);
                }
            }),
        );
        let bridge = self.clone();
        let disconnect = self.clone();
        io.hooks(move |h| {
            h.use_connect(move |socket, auth| {
                let bridge = bridge.clone();
                async move { bridge.connect(socket, auth).await }
            });
            h.on_disconnect(move |socket, _reason| {
                disconnect.sessions.lock().remove(socket.id());
            });
        });
        io.set_bus(Arc::new(self.clone()));
    }

    fn send(&self, socket: &Socket, frame: Value) {
        let session = self.sessions.lock().get(socket.id()).cloned();
        if let Some(s) = session {
            if s.tx.try_send(Command { frame, reply: None }).is_err() {
                tracing::debug!(
                    socket = socket.id(),
                    "socket.io: hub session busy, command dropped"
                );
            }
        }
    }
}

impl crate::sio::Bus for HubBridge {
    fn join(&self, socket: &Socket, room: &str) {
        self.send(
            socket,
            json!({ "subscribe": { "channel": room_channel(socket.ns(), room) } }),
        );
    }

    fn leave(&self, socket: &Socket, room: &str) {
        self.send(
            socket,
            json!({ "unsubscribe": { "channel": room_channel(socket.ns(), room) } }),
        );
    }

    fn publish(
        &self,
        ns: &str,
        rooms: &[String],
        except: Option<&str>,
        packet: &crate::sio::Packet,
    ) {
        use base64::Engine as _;
        let Some(Value::Array(array)) = &packet.data else {
            return;
        };
        if rooms.is_empty() {
            // Every socket of the namespace, on every node: see [`Broadcasts`].
            let b64 = base64::engine::general_purpose::STANDARD;
            let bins: Vec<Value> = packet
                .bins
                .iter()
                .map(|b| Value::String(b64.encode(b)))
                .collect();
            let item = json!({ "nsp": ns, "except": except, "data": array, "bins": bins });
            self.broadcasts.send(&self.hub, item.to_string());
            return;
        }
        let mut data = json!({
            "event": array.first().cloned().unwrap_or(Value::Null),
            "args": array.iter().skip(1).cloned().collect::<Vec<_>>(),
        });
        if !packet.bins.is_empty() {
            let b64 = base64::engine::general_purpose::STANDARD;
            data["bins"] = packet
                .bins
                .iter()
                .map(|b| Value::String(b64.encode(b)))
                .collect();
        }
        let Ok(raw) = serde_json::value::to_raw_value(&data) else {
            return;
        };
        // The publisher's client id lets its own session skip the publication.
        let info = except
            .and_then(|id| self.sessions.lock().get(id).map(|s| s.client.clone()))
            .map(|client| switchboard_proto::ClientInfo {
                user: String::new(),
                client,
                conn_info: None,
                chan_info: None,
            });
        let channels = rooms.iter().map(|room| room_channel(ns, room)).collect();
        let sender = except.map(Arc::from);
        self.publishes.send(
            &self.hub,
            sender,
            Publish {
                channels,
                raw,
                info,
            },
        );
    }
}

/// One room emit: its data into each of its rooms' channels.
struct Publish {
    channels: Vec<String>,
    raw: Box<serde_json::value::RawValue>,
    info: Option<switchboard_proto::ClientInfo>,
}

/// Room emits of library mode on their way into the hub, in order per sender: the emits of
/// one socket (`socket.to(room).emit`), and those of the node's emitters (`io.emitter(ns)`),
/// are published one after the other, in the order they were made, so that a room's members
/// get them in that order; different senders' emits go concurrently. A sender's queue and its
/// task exist only while it has emits in flight.
#[derive(Default)]
struct Publishes {
    /// Sender (socket id; `None`: the node's emitters) -> its emits not yet published. A
    /// sender is in the map while its task runs.
    queues: Mutex<HashMap<Option<Arc<str>>, std::collections::VecDeque<Publish>>>,
}

impl Publishes {
    /// Queues `publish` behind the sender's earlier emits (starting the sender's task when it
    /// has none in flight).
    fn send(self: &Arc<Self>, hub: &Hub, sender: Option<Arc<str>>, publish: Publish) {
        {
            let mut queues = self.queues.lock();
            if let Some(queue) = queues.get_mut(&sender) {
                queue.push_back(publish);
                return;
            }
            queues.insert(sender.clone(), std::collections::VecDeque::new());
        }
        tokio::spawn(publish_in_order(self.clone(), hub.clone(), sender, publish));
    }
}

/// Publishes a sender's emits, one after the other, until its queue is empty.
async fn publish_in_order(
    publishes: Arc<Publishes>,
    hub: Hub,
    sender: Option<Arc<str>>,
    first: Publish,
) {
    let mut next = Some(first);
    while let Some(p) = next.take() {
        for channel in &p.channels {
            if let Err(e) = hub.publish(channel, p.raw.clone(), p.info.clone()).await {
                tracing::debug!(%channel, error = ?e, "socket.io: room publication failed");
            }
        }
        let mut queues = publishes.queues.lock();
        match queues.get_mut(&sender).and_then(|q| q.pop_front()) {
            Some(p) => next = Some(p),
            None => {
                queues.remove(&sender);
            }
        }
    }
}

/// The hub command for event `name` of namespace `ns`.
fn event_command(ns: &str, name: &str, args: Vec<Value>) -> Value {
    let room = args.first().and_then(Value::as_str).unwrap_or_default();
    match name {
        JOIN_EVENT => json!({ "subscribe": { "channel": room_channel(ns, room) } }),
        LEAVE_EVENT => json!({ "unsubscribe": { "channel": room_channel(ns, room) } }),
        BROADCAST_EVENT => {
            let event = args.get(1).cloned().unwrap_or(Value::Null);
            let rest: Vec<Value> = args.iter().skip(2).cloned().collect();
            json!({ "publish": {
                "channel": room_channel(ns, room),
                "data": { "event": event, "args": rest },
            } })
        }
        _ => json!({ "rpc": { "method": name, "data": args } }),
    }
}

/// What the client's ack gets for a command's reply.
fn ack_value(name: &str, reply: Result<Value, ()>) -> Value {
    let Ok(reply) = reply else {
        return json!({ "error": { "code": 100, "message": "internal server error" } });
    };
    if let Some(err) = reply.get("error") {
        return json!({ "error": err });
    }
    match name {
        JOIN_EVENT | LEAVE_EVENT | BROADCAST_EVENT => json!({}),
        _ => reply.pointer("/rpc/data").cloned().unwrap_or(Value::Null),
    }
}

/// Sends a command and waits for its reply.
async fn command(tx: &Commands, frame: Value) -> Result<Value, ()> {
    let (reply, rx) = oneshot::channel();
    tx.try_send(Command {
        frame,
        reply: Some(reply),
    })
    .map_err(|_| ())?;
    rx.await.map_err(|_| ())
}

/// Most outbound items taken at once.
const MAX_BATCH: usize = 256;

thread_local! {
    /// The hub sessions' list of drained frames (see [`drive`]).
    static BATCH: std::cell::Cell<Vec<Bytes>> = const { std::cell::Cell::new(Vec::new()) };
}

enum Event {
    Command(Option<Command>),
    Items(Vec<Bytes>),
    Controls,
    Closed(switchboard_proto::DisconnectCode),
    Timer,
}

/// Drives one socket's hub session: its commands, its outbound queue (replies and
/// publications), its timers and server API controls.
async fn drive(
    mut client: Box<Client>,
    socket: Socket,
    commands: std::sync::Weak<Commands>,
    recovery: bool,
) {
    let out = client.outbound().clone();
    let mut next_id: u64 = 1;
    let mut state = DriveState {
        socket,
        pending: HashMap::new(),
        positions: BTreeMap::new(),
        recovery,
        own: None,
        shared: Vec::new(),
    };
    // One timer for the task's life, moved only when the session's next deadline moves (a new
    // timer per wake-up showed up in fan-out profiles).
    let timer = tokio::time::sleep_until(client.next_deadline().into());
    tokio::pin!(timer);
    loop {
        let deadline = tokio::time::Instant::from_std(client.next_deadline());
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        let event = poll_fn(|cx| {
            // A per-thread list, given back after use: an idle session keeps none.
            let mut batch = BATCH.take();
            let drained = out.poll_drain(cx, &mut batch, MAX_BATCH, true);
            if drained == Poll::Ready(Drained::Items) {
                return Poll::Ready(Event::Items(batch));
            }
            BATCH.set(batch);
            match drained {
                Poll::Ready(Drained::Items) => {}
                Poll::Ready(Drained::Controls) => return Poll::Ready(Event::Controls),
                Poll::Ready(Drained::Closed(code)) => return Poll::Ready(Event::Closed(code)),
                Poll::Pending => {}
            }
            if let Poll::Ready(c) = poll_command(&commands, cx) {
                return Poll::Ready(Event::Command(c));
            }
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Timer);
            }
            Poll::Pending
        })
        .await;
        let result = match event {
            Event::Command(None) => return,
            Event::Command(Some(mut cmd)) => {
                let id = next_id;
                next_id += 1;
                cmd.frame["id"] = json!(id);
                let tracked = match (
                    cmd.frame.pointer("/subscribe/channel"),
                    cmd.frame.pointer("/unsubscribe/channel"),
                ) {
                    (Some(Value::String(c)), _) => Tracked::Subscribe(c.clone()),
                    (_, Some(Value::String(c))) => Tracked::Unsubscribe(c.clone()),
                    _ => Tracked::Other,
                };
                if recovery && matches!(tracked, Tracked::Subscribe(_)) {
                    cmd.frame["subscribe"]["recoverable"] = Value::Bool(true);
                }
                state.pending.insert(id, (cmd.reply.take(), tracked));
                let frame = cmd.frame.to_string();
                Box::pin(client.handle_frame(frame.as_bytes(), Instant::now())).await
            }
            Event::Items(mut batch) => {
                for item in batch.drain(..) {
                    state.handle_frame(&item);
                }
                state.flush();
                if batch.capacity() <= MAX_BATCH {
                    BATCH.set(batch);
                }
                Ok(())
            }
            // The session's futures may be large (brokers, proxies): boxed while they run, so
            // that the parked task of an idle socket stays small.
            Event::Controls => Box::pin(client.apply_controls()).await,
            Event::Timer => Box::pin(client.on_timer(Instant::now())).await,
            Event::Closed(code) => Err(code),
        };
        if let Err(code) = result {
            // Deliver what is still queued (an error reply to connect, say), then end.
            let mut rest = Vec::new();
            let _ =
                poll_fn(|cx| Poll::Ready(out.poll_drain(cx, &mut rest, usize::MAX, false))).await;
            for item in rest {
                state.handle_frame(&item);
            }
            state.flush();
            if state.socket.connected() {
                if code.reconnect() {
                    // The node shuts down, or failed: the client reconnects (to another node),
                    // recovering its rooms when recovery is on.
                    state.socket.close_connection();
                } else {
                    state.socket.disconnect();
                }
            }
            return;
        }
    }
}

/// What a command's reply changes besides answering it.
enum Tracked {
    Subscribe(String),
    Unsubscribe(String),
    Other,
}

/// The state of a socket's session task.
struct DriveState {
    socket: Socket,
    pending: HashMap<u64, (Option<oneshot::Sender<Value>>, Tracked)>,
    /// With recovery: the socket's rooms (channels) and the last position seen in each.
    positions: BTreeMap<String, (u64, String)>,
    recovery: bool,
    /// The socket's hub client id, from the connect reply (its own room events are skipped).
    own: Option<Arc<str>>,
    /// Room events of the frames handled so far, sent to the socket together by
    /// [`DriveState::flush`] (before anything else is emitted, so the order stays).
    shared: Vec<SharedMessage>,
}

/// The event that tells a recovering client where it is after a join or leave (its last
/// argument is the offset; socket.io-client keeps the last string argument of every event).
pub const OFFSET_EVENT: &str = "sb:offset";

impl DriveState {
    /// One frame of the hub session's outbound queue: a room publication takes the shared
    /// path (see [`fanout`]), anything else is handled line by line.
    fn handle_frame(&mut self, item: &Bytes) {
        if let Some(event) = fanout::room_event(item, self.socket.ns()) {
            if self.recovery {
                // As `publication` does: the position moves even for the socket's own.
                if let (Some(channel), Some(offset)) = (&event.channel, event.offset) {
                    if let Some(pos) = self.positions.get_mut(&**channel) {
                        pos.0 = offset;
                    }
                }
            }
            let own = event.from.is_some() && self.own.is_some() && event.from == self.own;
            if !own {
                let message = if self.recovery {
                    event
                        .message
                        .with_string_argument(&encode_offset(&self.positions))
                } else {
                    event.message
                };
                self.shared.push(message);
            }
            return;
        }
        self.flush();
        for line in item.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            self.handle_item(line);
        }
    }

    /// Sends the room events collected by [`DriveState::handle_frame`], in one go (the list is
    /// given away, so an idle socket keeps no buffer).
    fn flush(&mut self) {
        if !self.shared.is_empty() {
            self.socket.send_shared(std::mem::take(&mut self.shared));
        }
    }

    /// One message of the hub session: a reply, a push, or a ping.
    fn handle_item(&mut self, line: &[u8]) {
        let Ok(v) = serde_json::from_slice::<Value>(line) else {
            return;
        };
        if let Some(id) = v.get("id").and_then(Value::as_u64) {
            if let Some(Value::String(client)) = v.pointer("/connect/client") {
                self.own = Some(Arc::from(client.as_str()));
            }
            let pending = self.pending.remove(&id);
            if self.pending.is_empty() {
                // Commands are few and far between: keep no table while none waits.
                self.pending = HashMap::new();
            }
            if let Some((tx, tracked)) = pending {
                if self.recovery && v.get("error").is_none() {
                    self.track(tracked, &v);
                }
                if let Some(tx) = tx {
                    let _ = tx.send(v);
                }
            }
            return;
        }
        let Some(push) = v.get("push") else {
            return; // a ping: this transport needs no pong
        };
        if let Some(publication) = push.get("pub") {
            let channel = push
                .get("channel")
                .and_then(Value::as_str)
                .unwrap_or_default();
            self.publication(channel, publication);
        } else if push.get("disconnect").is_some() {
            self.socket.disconnect();
        }
    }

    /// Records a room's position from a subscribe reply (and emits what it recovered).
    fn track(&mut self, tracked: Tracked, reply: &Value) {
        match tracked {
            Tracked::Subscribe(channel) => {
                let sub = reply.get("subscribe").cloned().unwrap_or(Value::Null);
                let offset = sub.get("offset").and_then(Value::as_u64).unwrap_or(0);
                let epoch = sub.get("epoch").and_then(Value::as_str).unwrap_or_default();
                self.positions
                    .insert(channel.clone(), (offset, epoch.to_owned()));
                if let Some(Value::Array(pubs)) = sub.get("publications") {
                    for p in pubs {
                        self.publication(&channel, p);
                    }
                } else {
                    self.emit_offset();
                }
            }
            Tracked::Unsubscribe(channel) => {
                self.positions.remove(&channel);
                self.emit_offset();
            }
            Tracked::Other => {}
        }
    }

    fn emit_offset(&self) {
        let offset = encode_offset(&self.positions);
        self.socket
            .emit_payload(OFFSET_EVENT, Payload::json(vec![Value::String(offset)]));
    }

    /// Emits a publication of `channel` to the socket (not its own broadcasts).
    fn publication(&mut self, channel: &str, publication: &Value) {
        if let (Some(pos), Some(offset)) = (
            self.positions.get_mut(channel),
            publication.get("offset").and_then(Value::as_u64),
        ) {
            pos.0 = offset;
        }
        let from = publication.pointer("/info/client").and_then(Value::as_str);
        if let (Some(own), Some(from)) = (self.own.as_ref(), from) {
            if **own == *from {
                return;
            }
        }
        let data = publication.get("data").cloned().unwrap_or(Value::Null);
        let (event, mut args) = match (&data.get("event"), &data.get("args")) {
            (Some(Value::String(e)), Some(Value::Array(a))) => (e.clone(), a.clone()),
            _ => ("message".to_owned(), vec![data.clone()]),
        };
        let bins = match data.get("bins") {
            Some(Value::Array(b)) => {
                use base64::Engine as _;
                let b64 = base64::engine::general_purpose::STANDARD;
                b.iter()
                    .filter_map(|v| b64.decode(v.as_str()?).ok().map(Bytes::from))
                    .collect()
            }
            _ => Vec::new(),
        };
        if self.recovery {
            args.push(Value::String(encode_offset(&self.positions)));
        }
        self.socket.emit_payload(&event, Payload { args, bins });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle socket is one parked task (the connection: transport, heartbeat, Socket.IO
    /// packets) with the hub session's future attached to it: keep both small (and see
    /// docs/BENCHMARKS.md, "Socket.IO").
    #[tokio::test]
    async fn parked_futures_are_small() {
        use crate::engine::{session::Registry, EngineConfig, EngineSocket, Transport};

        let hub = Hub::new(
            switchboard_hub::HubConfig::default(),
            Arc::new(switchboard_hub::MemoryBroker::new()),
            "t".into(),
        );
        let registry = Arc::new(Registry::default());
        let (session, incoming) =
            registry.create(Transport::WebSocket, &EngineConfig::default(), None);
        let engine = EngineSocket {
            session: session.clone(),
        };
        let sio = crate::sio::SocketIo::new(crate::sio::SioConfig::default());
        sio.ns("/", |_| {});
        let socket = Socket::new(
            sio.of("/").expect("namespace /"),
            engine.clone(),
            Value::Null,
            None,
            None,
        );
        let commands = Arc::new(Commands::default());
        let client = Box::new(hub.accept(TRANSPORT).expect("accepted"));
        let sizes = [
            (
                "connection",
                std::mem::size_of_val(&crate::sio::server::run_connection(
                    sio.clone(),
                    engine,
                    incoming,
                )),
            ),
            (
                "hub session",
                std::mem::size_of_val(&drive(client, socket, Arc::downgrade(&commands), false)),
            ),
        ];
        eprintln!("parked futures: {sizes:?}");
        for (name, size) in sizes {
            assert!(size <= 1024, "the {name} future takes {size} bytes");
        }
    }

    #[test]
    fn rooms_map_to_channels() {
        assert_eq!(room_channel("/", "lobby"), "lobby");
        assert_eq!(room_channel("/chat", "lobby"), "chat:lobby");
    }

    #[test]
    fn events_map_to_commands() {
        assert_eq!(
            event_command("/chat", "join", vec![json!("a")]),
            json!({"subscribe":{"channel":"chat:a"}})
        );
        assert_eq!(
            event_command("/", "broadcast", vec![json!("a"), json!("hi"), json!(1)]),
            json!({"publish":{"channel":"a","data":{"event":"hi","args":[1]}}})
        );
        assert_eq!(
            event_command("/", "sum", vec![json!(1), json!(2)]),
            json!({"rpc":{"method":"sum","data":[1,2]}})
        );
        assert_eq!(
            ack_value("sum", Ok(json!({"id":3,"rpc":{"data":3}}))),
            json!(3)
        );
        assert_eq!(
            ack_value("join", Ok(json!({"id":3,"error":{"code":103}}))),
            json!({"error":{"code":103}})
        );
    }
}
