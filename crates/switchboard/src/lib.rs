//! Switchboard as a library: a real-time messaging node (Centrifugo client protocol v2, so the
//! `centrifuge` SDKs work unchanged) inside your Rust application.
//!
//! - Build a [`Node`] with [`Node::builder`]: the configuration (the `switchboard` binary's
//!   [`Config`], or built in code), the [`Broker`] (memory, Redis or NATS) and typed async
//!   handlers that decide connects, subscribes, publishes, RPC calls and refreshes.
//! - Mount [`Node::router`] in your axum app (`app.nest("/realtime", node.router())`), or run
//!   the node alone with [`Node::serve`].
//! - Act from Rust: [`Node::publish`], [`Node::disconnect`], [`Node::presence`],
//!   [`Node::history`]... across every node of a cluster.
//!
//! The `switchboard` binary is built on this API. docs/EMBEDDING.md walks through it.
//!
//! ```
//! use switchboard::{ConnectReply, Data, Node, PublishReply, RpcReply, Rejection};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> anyhow::Result<()> {
//! let node = Node::builder()
//!     // Connect: the client's data is its nickname.
//!     .on_connect(|_ctx, req| async move {
//!         let nick: String = req.data.ok_or(Rejection::error(4000, "nickname needed"))?.decode()?;
//!         Ok(ConnectReply::user(nick))
//!     })
//!     // Publish: only short texts.
//!     .on_publish(|_ctx, req| async move {
//!         let text: String = req.data.decode()?;
//!         if text.len() > 200 {
//!             return Err(Rejection::error(4001, "too long"));
//!         }
//!         Ok(PublishReply::accept())
//!     })
//!     .on_rpc(|ctx, req| async move {
//!         match req.method.as_str() {
//!             "whoami" => Ok(RpcReply::data(Data::json(ctx.user()).expect("a string"))),
//!             _ => Err(switchboard::ErrorCode::METHOD_NOT_FOUND.into()),
//!         }
//!     })
//!     .build()
//!     .await?;
//! let router: axum::Router = node.router();
//! node.publish_json("news", &"published from Rust").await?;
//! # drop(router);
//! # Ok(())
//! # }
//! ```
//!
//! What it deliberately does not expose: the hub's internals (sessions, queues, the broker
//! seam) and the HTTP plumbing; those crates (`switchboard-hub`, `switchboard-http`...) are
//! internal and may change at any time.

mod actions;
mod builder;
mod closures;
mod node;

pub use actions::PublishOptions;
pub use builder::{Broker, NodeBuilder};
pub use node::{Node, Server};

/// The configuration: the binary's `switchboard.toml` (docs/CONFIG.md), its loading from a file,
/// `SWITCHBOARD_*` variables and flags ([`config::load`]), and its sections.
pub mod config {
    pub use switchboard_http::config::*;
    /// The hub's sections of the configuration (`[client]`, `[channel]` with its namespaces,
    /// `[proxy]`), for configurations built in code.
    pub use switchboard_hub::{
        ChannelConfig, ClientConfig, NamespaceOptions, PersonalChannelConfig, ProxyConfig,
    };
}

pub use config::Config;

/// Socket.IO in your application (docs/SOCKETIO.md): build a [`socketio::SocketIo`] with
/// namespaces and typed event handlers, then serve it on a node with [`Node::socketio`] so its
/// rooms are hub channels across the cluster.
pub mod socketio {
    pub use switchboard_socketio::engine::EngineConfig;
    pub use switchboard_socketio::sio::{
        AckError, AckSender, ConnectError, Emitter, Handlers, Namespace, Payload, SioConfig,
        Socket, SocketIo,
    };
}

pub use switchboard_broker_nats::NatsConfig;
pub use switchboard_broker_redis::RedisConfig;
pub use switchboard_hub::handlers::{
    ClientContext, ConnectReply, ConnectRequest, Data, HandlerKind, HandlerResult, Handlers,
    PublishReply, PublishRequest, RefreshReply, Rejection, RpcReply, RpcRequest, SubscribeReply,
    SubscribeRequest,
};
pub use switchboard_hub::{HistoryFilter, HistoryResult, NodeStats, PresenceStats};
pub use switchboard_proto::{ClientInfo, DisconnectCode, ErrorCode, Publication, StreamPosition};

/// The [`Handlers`] trait is implemented with `#[async_trait]`; re-exported so that an
/// implementation needs no dependency of its own.
pub use async_trait::async_trait;

/// Connection tokens: signing a token for a user with the configured HMAC secret (what
/// `switchboard gentoken` prints).
pub mod token {
    pub use switchboard_http::token::generate;
}

/// Completes on SIGINT or SIGTERM: the signal [`Node::serve`] stops on.
pub async fn shutdown_signal() {
    switchboard_http::shutdown_signal().await;
}
