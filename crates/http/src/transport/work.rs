//! The hub session as both connection-driving transports (WebSocket, and the HTTP streams of
//! [`super::emulation`]) run it: idle, or owned by the piece of work in progress, so that the
//! transport can go on writing while a command waits on a broker, a proxy or a handler.

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use bytes::Bytes;
use switchboard_hub::burst::gathered;
use switchboard_hub::Client;
use switchboard_proto::DisconnectCode;

/// What the session does between two idle moments.
pub(crate) enum Work {
    /// One text frame of commands.
    Frame(Bytes),
    /// Timers due (pings, pong deadline, expiry, presence refresh).
    Timer(Instant),
    /// Server API requests queued for this connection.
    Controls,
}

/// Work in progress: it owns the session until it is done, so the connection task can go on
/// writing (publications, replies) while a command waits on a broker or a proxy.
pub(crate) type Busy =
    Pin<Box<dyn Future<Output = (Box<Client>, Result<(), DisconnectCode>)> + Send>>;

/// The session, or the work that holds it.
pub(crate) enum Session {
    /// Waiting for work.
    Idle(Box<Client>),
    /// Owned by the work in progress.
    Busy(Busy),
}

impl Session {
    /// Hands the idle session to `work`.
    pub(crate) fn start(self, work: Work) -> Self {
        match self {
            // Publications the work causes reach subscribers together at the end of each
            // poll (one lock and wake-up per subscriber for a burst, see `burst`).
            Session::Idle(client) => Session::Busy(Box::pin(gathered(perform(client, work)))),
            // The transports start work only on an idle session (they neither read nor take
            // controls or timers while busy), so this arm is never taken.
            Session::Busy(_) => unreachable!("work started on a busy session"),
        }
    }
}

async fn perform(mut client: Box<Client>, work: Work) -> (Box<Client>, Result<(), DisconnectCode>) {
    let result = match work {
        Work::Frame(text) => client.handle_frame(&text, Instant::now()).await,
        Work::Timer(now) => client.on_timer(now).await,
        Work::Controls => client.apply_controls().await,
    };
    (client, result)
}
