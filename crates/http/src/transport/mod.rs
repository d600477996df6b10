//! Client transports: each adapts one way of carrying the protocol onto the hub's [`Client`]
//! session and its outbound queue.
//!
//! [`Client`]: switchboard_hub::Client

pub mod emulation;
pub mod uni;
pub mod uni_websocket;
pub mod websocket;
mod work;
