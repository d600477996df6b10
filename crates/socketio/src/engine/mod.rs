//! Engine.IO v4: the transport layer under Socket.IO (long-polling, WebSocket, the upgrade
//! between them, heartbeats).

pub mod config;
pub mod packet;
pub mod server;
pub mod session;

pub use config::EngineConfig;
pub use packet::{DecodeError, Packet, SharedMessage};
pub use server::{Engine, EngineHandler};
pub use session::{CloseReason, Data, EngineSocket, Incoming, SessionTask, Transport};
