//! Socket.IO v5 on top of [`crate::engine`]: packets, namespaces, sockets, rooms, acks.

pub mod namespace;
pub mod packet;
pub mod server;
pub mod socket;

pub use namespace::{ConnectError, Handlers, Namespace, Payload};
pub use packet::{Packet, PacketType, ParseError};
pub use server::{Bus, Emitter, SioConfig, SocketIo};
pub use socket::{AckError, AckSender, Socket};
