//! The NATS broker for Switchboard: publications, joins, leaves and node-to-node control
//! messages travel between nodes over core NATS (at most once, like any plain pub/sub broker);
//! history, stream positions (epoch and offset), idempotency keys and presence live in
//! JetStream (a stream and three key-value buckets), so recovery works whichever node a client
//! reconnects to and a dead node's presence entries expire.
//!
//! The design, the delivery semantics, what happens when NATS fails and what is not supported
//! follow the example (the crate's `README.md`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use switchboard_broker_nats::{NatsBroker, NatsConfig};
//!
//! let mut config = NatsConfig::default();
//! config.prefix = "myapp".into();
//! // Returns at once even when NATS is down; calls answer "unavailable" until it is up.
//! let broker = NatsBroker::connect(config, "node-1").await?;
//! let broker = std::sync::Arc::new(broker);
//! // Hand `broker.clone()` to the hub as its `Broker` and as its `PresenceStore`.
//! # Ok(())
//! # }
//! ```
#![doc = include_str!("../README.md")]

mod broker;
mod codec;
mod config;
mod connection;
mod control;
mod history;
#[cfg(feature = "test-hooks")]
mod hooks;
mod idempotency;
mod offsets;
mod presence;
mod pubsub;
mod reorder;
mod store;

pub use broker::NatsBroker;
pub use config::{ConfigError, NatsConfig};
