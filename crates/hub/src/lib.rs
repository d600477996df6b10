//! The Switchboard core: client sessions, channels and namespaces, fan-out, and the [`Broker`]
//! seam with its in-memory implementation.
//!
//! The hub never touches a socket, HTTP or a particular broker. Transports (in the server crate)
//! accept connections with [`Hub::accept`], feed frames to the returned [`Client`] and write what
//! its [`Outbound`] queue holds; brokers deliver publications back through [`BrokerEvents`].
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Instant;
//! use switchboard_hub::{Hub, HubConfig, MemoryBroker, TransportInfo};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let mut config = HubConfig::default();
//! config.client.allow_anonymous = true;
//! config.channel.default.allow_subscribe_for_client = true;
//! config.channel.default.allow_subscribe_for_anonymous = true;
//! let hub = Hub::new(config, Arc::new(MemoryBroker::new()), "node1".into());
//! let mut client = hub.accept(TransportInfo::new("test", true)).unwrap();
//! client
//!     .handle_frame(b"{\"id\":1,\"connect\":{}}\n{\"id\":2,\"subscribe\":{\"channel\":\"news\"}}", Instant::now())
//!     .await
//!     .unwrap();
//! assert_eq!(hub.subscriber_count("news"), 1);
//! # });
//! ```
//!
//! The hub owns the protocol's semantics: authentication (JWT connection and subscription tokens,
//! the backend proxies through the [`Proxy`] seam, or the application's typed [`Handlers`]), namespaces and permissions, subscriptions
//! with history, recovery and positioning, presence and join/leave, server-side actions for the
//! server API, limits and metrics. What it deliberately does not do: sockets, HTTP and wire
//! transports (the server crate), and any particular remote broker (the broker crates implement
//! [`Broker`] and [`PresenceStore`]).

pub mod auth;
mod batched;
mod broker;
pub mod burst;
mod channel;
pub mod cluster;
pub mod config;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod emulation;
pub mod handlers;
mod hub;
mod interest;
mod memory;
mod metrics;
mod outbound;
pub mod pacer;
pub mod proxy;
mod registry;
pub mod relay;
mod session;

pub use batched::{BatchedEvents, MAX_BATCH};
pub use broker::{
    Broker, BrokerError, BrokerEvents, HistoryFilter, HistoryResult, PresenceStats, PresenceStore,
    PublishOptions,
};
pub use channel::NAMESPACE_SEPARATOR;
pub use config::{
    ChannelConfig, ClientConfig, HubConfig, NamespaceOptions, PersonalChannelConfig, WriteDelay,
};
pub use handlers::Handlers;
pub use hub::{Hub, NodeInfo, NodeStats, PublishParams, TransportInfo};
pub use memory::{MemoryBroker, DEFAULT_META_TTL};
pub use metrics::{Metrics, TransportMetrics, TRANSPORTS};
pub use outbound::{Control, Drained, Item, Outbound, PushOutcome};
pub use proxy::{Proxy, ProxyConfig, ProxyError, ProxyKind};
pub use session::{
    Client, PRIVATE_CHANNEL_PREFIX, UNSUBSCRIBE_EXPIRED, UNSUBSCRIBE_INSUFFICIENT_STATE,
    UNSUBSCRIBE_SERVER, USER_BOUNDARY,
};
