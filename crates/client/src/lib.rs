//! A Rust client for Switchboard's native protocol: the Centrifugo client protocol v2, JSON
//! over WebSocket. Used by the integration tests and the load generator, and usable against
//! Centrifugo itself.
//!
//! One background task per [`Client`] owns the socket: it writes commands (batched, one JSON
//! object per line), matches replies to requests by id, routes publications and join/leave
//! pushes to [`Subscription`]s, answers the server's pings (`{}`) when the connect reply asks for
//! pongs, and notices a silent server. When the connection is lost, or the server closes it with
//! a code that allows it (3000-3499, 4000-4499, transport codes except 1009), it reconnects with
//! exponential [`Backoff`], sends `connect` again and resubscribes every active subscription,
//! asking for recovery from the last seen offset and epoch when the channel is recoverable.
//!
//! ```no_run
//! # async fn demo() -> Result<(), switchboard_client::ClientError> {
//! use switchboard_client::{Client, ClientEvent};
//!
//! let client = Client::builder("ws://127.0.0.1:8000/connection/websocket")
//!     .token("<jwt>")
//!     .header("Origin", "http://127.0.0.1:8000")
//!     .connect()
//!     .await?;
//! let mut events = client.events();
//! let mut sub = client.subscribe("chat:index").await?;
//! client.publish("chat:index", serde_json::json!({"text": "hello"})).await?;
//! while let Some(publication) = sub.recv().await {
//!     println!("{} at offset {}", publication.value(), publication.offset);
//! }
//! # drop(events.try_recv());
//! # Ok(())
//! # }
//! ```
//!
//! What it deliberately does not do: TLS (`wss://`), the Protobuf protocol, the HTTP-streaming
//! and SSE transports, connection and subscription token refresh, channel compaction and delta
//! compression.

mod client;
mod connection;
mod driver;
mod error;
mod protocol;
mod subscription;

pub use client::{
    Backoff, Client, ClientBuilder, ClientEvent, History, HistoryOptions, PresenceStats,
};
pub use error::ClientError;
pub use subscription::{
    ClientInfo, Publication, SubscribeOptions, Subscription, SubscriptionEvent,
};
pub use switchboard_proto::StreamPosition;
