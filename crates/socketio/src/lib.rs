//! Switchboard's Socket.IO front door.
//!
//! - [`engine`]: Engine.IO v4, the transport layer: HTTP long-polling, WebSocket, the upgrade
//!   from one to the other, heartbeats, payload limits, CORS.
//! - [`sio`]: Socket.IO v5 on top: namespaces (static and dynamic), CONNECT with `auth`,
//!   CONNECT_ERROR, events and acknowledgements (both ways, with binary attachments), rooms and
//!   broadcasts, and a [`sio::Bus`] seam through which rooms span the nodes of a cluster.
//!
//! The codecs ([`engine::packet`], [`sio::packet`]) are sans-I/O and refuse hostile input with
//! an error (the connection is then closed, as the reference server does), never a panic.
//!
//! ```no_run
//! # async fn run() {
//! use switchboard_socketio::{engine::EngineConfig, sio::{SioConfig, SocketIo}};
//! let io = SocketIo::new(SioConfig::default());
//! io.ns("/", |h| {
//!     h.on("message", |socket, data, ack| {
//!         socket.emit("message-back", data.args.clone());
//!         if let Some(ack) = ack {
//!             ack.send(data.args);
//!         }
//!     });
//! });
//! let app = SocketIo::router(io.engine(EngineConfig::default()), "/socket.io/");
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await.unwrap();
//! axum::serve(listener, app).await.unwrap();
//! # }
//! ```

pub mod bridge;
pub mod cluster;
pub mod engine;
pub mod sio;

pub use engine::{Engine, EngineConfig};
pub use sio::{SioConfig, SocketIo};
