//! Namespaces: their handlers, connected sockets and rooms.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;
use serde_json::Value;

use super::packet::Packet;
use super::socket::{AckSender, Socket};

/// A boxed future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The arguments of an event (name excluded) and its binary attachments. Placeholders
/// (`{"_placeholder":true,"num":i}`) in `args` name entries of `bins`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Payload {
    /// The JSON arguments.
    pub args: Vec<Value>,
    /// The binary attachments.
    pub bins: Vec<Bytes>,
}

impl Payload {
    /// A payload of JSON arguments only.
    pub fn json(args: Vec<Value>) -> Self {
        Self {
            args,
            bins: Vec::new(),
        }
    }
}

/// Why a connection to a namespace was refused: sent as CONNECT_ERROR `{message, data}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectError {
    /// The message (`err.message` on the client).
    pub message: String,
    /// Extra data (`err.data` on the client), omitted when `None`.
    pub data: Option<Value>,
}

impl ConnectError {
    /// A refusal with a message only.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            data: None,
        }
    }

    /// Adds `data`.
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    pub(crate) fn to_value(&self) -> Value {
        let mut o = serde_json::Map::new();
        o.insert("message".into(), Value::String(self.message.clone()));
        if let Some(d) = &self.data {
            o.insert("data".into(), d.clone());
        }
        Value::Object(o)
    }
}

/// An event handler: runs on the connection's task, in packet order; spawn for long work.
pub type EventHandler = Arc<dyn Fn(Socket, Payload, Option<AckSender>) + Send + Sync>;
/// A connect middleware: decides whether a socket may join the namespace (`auth` is the
/// CONNECT payload, `{}` when none).
pub type ConnectMiddleware =
    Arc<dyn Fn(Socket, Value) -> BoxFuture<Result<(), ConnectError>> + Send + Sync>;
/// Runs after a socket joined the namespace (the CONNECT reply is already queued).
pub type ConnectionHandler = Arc<dyn Fn(Socket, Value) + Send + Sync>;
/// Runs when a socket left the namespace, with the reason.
pub type DisconnectHandler = Arc<dyn Fn(Socket, &'static str) + Send + Sync>;

/// The handlers of a namespace (or of every namespace a dynamic pattern matches).
#[derive(Clone, Default)]
pub struct Handlers {
    pub(crate) events: HashMap<String, EventHandler>,
    pub(crate) any: Option<EventHandler>,
    pub(crate) middleware: Vec<ConnectMiddleware>,
    pub(crate) connection: Option<ConnectionHandler>,
    pub(crate) disconnect: Option<DisconnectHandler>,
}

impl std::fmt::Debug for Handlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handlers")
            .field("events", &self.events.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Handlers {
    /// Handles event `name`: `f(socket, payload, ack)`; `ack` is set when the client asked
    /// for an acknowledgement.
    pub fn on<F>(&mut self, name: &str, f: F) -> &mut Self
    where
        F: Fn(Socket, Payload, Option<AckSender>) + Send + Sync + 'static,
    {
        self.events.insert(name.to_owned(), Arc::new(f));
        self
    }

    /// Like [`Handlers::on`] with an async handler, spawned per event (events may then be
    /// handled concurrently).
    pub fn on_async<F, Fut>(&mut self, name: &str, f: F) -> &mut Self
    where
        F: Fn(Socket, Payload, Option<AckSender>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let f = Arc::new(f);
        self.on(name, move |s, p, a| {
            tokio::spawn(f(s, p, a));
        })
    }

    /// Typed handler: the first argument is deserialized as `T` (events whose first argument
    /// does not fit are acknowledged with nothing and otherwise ignored).
    pub fn on_typed<T, F>(&mut self, name: &str, f: F) -> &mut Self
    where
        T: serde::de::DeserializeOwned,
        F: Fn(Socket, T, Option<AckSender>) + Send + Sync + 'static,
    {
        self.on(name, move |s, p, a| {
            let first = p.args.into_iter().next().unwrap_or(Value::Null);
            match serde_json::from_value::<T>(first) {
                Ok(v) => f(s, v, a),
                Err(e) => tracing::debug!(error = %e, "socket.io: event argument does not fit"),
            }
        })
    }

    /// Handles every event without a handler of its own: `f(socket, name, payload, ack)`.
    pub fn on_any<F>(&mut self, f: F) -> &mut Self
    where
        F: Fn(Socket, String, Payload, Option<AckSender>) + Send + Sync + 'static,
    {
        self.any = Some(Arc::new(move |s, mut p, a| {
            let name = match p.args.first() {
                Some(Value::String(n)) => n.clone(),
                Some(v) => v.to_string(),
                None => String::new(),
            };
            p.args.remove(0);
            f(s, name, p, a)
        }));
        self
    }

    /// Adds a connect middleware (they run in order; the first refusal wins).
    pub fn use_connect<F, Fut>(&mut self, f: F) -> &mut Self
    where
        F: Fn(Socket, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), ConnectError>> + Send + 'static,
    {
        self.middleware
            .push(Arc::new(move |s, v| Box::pin(f(s, v))));
        self
    }

    /// Runs `f(socket, auth)` once a socket joined the namespace.
    pub fn on_connection<F>(&mut self, f: F) -> &mut Self
    where
        F: Fn(Socket, Value) + Send + Sync + 'static,
    {
        self.connection = Some(Arc::new(f));
        self
    }

    /// Runs `f(socket, reason)` once a socket left the namespace.
    pub fn on_disconnect<F>(&mut self, f: F) -> &mut Self
    where
        F: Fn(Socket, &'static str) + Send + Sync + 'static,
    {
        self.disconnect = Some(Arc::new(f));
        self
    }
}

/// A namespace: its handlers, sockets and rooms on this node.
pub struct Namespace {
    pub(crate) name: String,
    pub(crate) handlers: Handlers,
    pub(crate) sockets: RwLock<HashMap<Arc<str>, Socket>>,
    pub(crate) rooms: RwLock<HashMap<String, HashSet<Arc<str>>>>,
    /// Created on demand for a dynamic pattern (and forgotten when empty).
    pub(crate) dynamic: bool,
}

impl std::fmt::Debug for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Namespace")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Namespace {
    pub(crate) fn new(name: &str, handlers: Handlers) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_owned(),
            handlers,
            sockets: RwLock::default(),
            rooms: RwLock::default(),
            dynamic: false,
        })
    }

    /// The namespace's name (`/`, `/admin`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sockets connected to it on this node.
    pub fn sockets(&self) -> Vec<Socket> {
        self.sockets.read().values().cloned().collect()
    }

    /// Sockets of `room` on this node.
    pub fn room_sockets(&self, room: &str) -> Vec<Socket> {
        let rooms = self.rooms.read();
        let sockets = self.sockets.read();
        rooms
            .get(room)
            .map(|ids| {
                ids.iter()
                    .filter_map(|id| sockets.get(id).cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(crate) fn join(&self, room: &str, sid: &Arc<str>) {
        self.rooms
            .write()
            .entry(room.to_owned())
            .or_default()
            .insert(sid.clone());
    }

    /// Returns true when the room became empty on this node.
    pub(crate) fn leave(&self, room: &str, sid: &str) -> bool {
        let mut rooms = self.rooms.write();
        if let Some(set) = rooms.get_mut(room) {
            set.remove(sid);
            if set.is_empty() {
                rooms.remove(room);
                return true;
            }
        }
        false
    }

    /// Sends `packet` to the local sockets of `rooms` (every socket when `rooms` is empty)
    /// except `except`. Returns how many got it.
    pub fn deliver_local(&self, packet: &Packet, rooms: &[String], except: Option<&str>) -> usize {
        let targets: Vec<Socket> = if rooms.is_empty() {
            self.sockets.read().values().cloned().collect()
        } else {
            let r = self.rooms.read();
            let s = self.sockets.read();
            let mut ids: HashSet<&Arc<str>> = HashSet::new();
            for room in rooms {
                if let Some(set) = r.get(room) {
                    ids.extend(set.iter());
                }
            }
            ids.into_iter()
                .filter_map(|id| s.get(id).cloned())
                .collect()
        };
        let encoded = super::socket::encode(packet);
        let mut n = 0;
        for socket in targets {
            if Some(socket.id()) == except {
                continue;
            }
            if socket.send_encoded(&encoded) {
                n += 1;
            }
        }
        n
    }
}
