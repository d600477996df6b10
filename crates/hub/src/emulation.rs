//! Sessions of emulated bidirectional transports (HTTP-streaming, SSE).
//!
//! Over such a transport the server-to-client direction is one long HTTP response, and every
//! client-to-server batch of commands is a separate `POST /emulation` request naming the session
//! and the node that holds it (both from the connect reply). That request may reach any node:
//! the node that holds the session takes the commands from its [`EmulationSessions`]; another
//! node forwards them through the broker ([`crate::Hub::route_emulation`]), so no sticky
//! sessions are needed behind a load balancer.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::mpsc;

/// Command batches one session may have waiting before `POST /emulation` is refused (the
/// client sends faster than its session handles commands).
pub const EMULATION_QUEUE: usize = 64;

/// The emulated sessions this node holds: session id → where its command batches go.
#[derive(Debug, Default)]
pub struct EmulationSessions {
    sessions: Mutex<HashMap<Arc<str>, mpsc::Sender<Bytes>>>,
}

/// What became of a command batch handed to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Queued for the session.
    Queued,
    /// No such session on this node (it ended, or never existed).
    Unknown,
    /// The session has [`EMULATION_QUEUE`] batches waiting already.
    Full,
}

impl EmulationSessions {
    /// Registers a new session with a fresh random id. Returns the id, the receiver of the
    /// session's command batches, and a guard that unregisters the session when dropped.
    pub fn register(self: &Arc<Self>) -> (Arc<str>, mpsc::Receiver<Bytes>, SessionGuard) {
        let id: Arc<str> = Arc::from(uuid::Uuid::new_v4().simple().to_string());
        let (tx, rx) = mpsc::channel(EMULATION_QUEUE);
        self.sessions.lock().insert(id.clone(), tx);
        let guard = SessionGuard {
            sessions: self.clone(),
            id: id.clone(),
        };
        (id, rx, guard)
    }

    /// Hands `data` (one batch of newline-separated commands) to the session `id`.
    pub fn deliver(&self, id: &str, data: Bytes) -> Delivery {
        let sessions = self.sessions.lock();
        let Some(tx) = sessions.get(id) else {
            return Delivery::Unknown;
        };
        match tx.try_send(data) {
            Ok(()) => Delivery::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => Delivery::Full,
            Err(mpsc::error::TrySendError::Closed(_)) => Delivery::Unknown,
        }
    }

    /// Number of sessions held.
    pub fn len(&self) -> usize {
        self.sessions.lock().len()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Unregisters its session when dropped.
#[derive(Debug)]
pub struct SessionGuard {
    sessions: Arc<EmulationSessions>,
    id: Arc<str>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.sessions.sessions.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn batches_reach_their_session_until_it_ends() {
        let sessions = Arc::new(EmulationSessions::default());
        let (id, mut rx, guard) = sessions.register();
        assert_eq!(
            sessions.deliver(&id, Bytes::from_static(b"{}")),
            Delivery::Queued
        );
        assert_eq!(rx.recv().await.unwrap(), Bytes::from_static(b"{}"));
        assert_eq!(sessions.deliver("nope", Bytes::new()), Delivery::Unknown);
        for _ in 0..EMULATION_QUEUE {
            assert_eq!(sessions.deliver(&id, Bytes::new()), Delivery::Queued);
        }
        assert_eq!(sessions.deliver(&id, Bytes::new()), Delivery::Full);
        drop(guard);
        assert!(sessions.is_empty());
        assert_eq!(sessions.deliver(&id, Bytes::new()), Delivery::Unknown);
    }
}
