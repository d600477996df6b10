//! The NATS connection: connecting (and reconnecting forever in the background), whether it is
//! up, round trips, NATS calls bounded by the request timeout, and the task that handles
//! connection events (after a reconnect every subscribed channel gets a gap and the JetStream
//! stream and buckets are set up again; idle publish locks are swept on a timer), and the health
//! probe (a bounded round trip every `health_check_interval`: a server that stops answering,
//! frozen for instance, is reported as not connected).

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::{Client, ConnectOptions, Event, ServerAddr};
use switchboard_hub::{BrokerError, BrokerEvents};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::broker::Shared;
use crate::config::{ConfigError, NatsConfig};

/// How often idle per-channel publish locks are dropped.
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// A NATS failure as [`BrokerError::Unavailable`].
pub(crate) fn unavailable(what: &str, e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(format!("nats {what}: {e}"))
}

/// Creates the NATS client for node `node_id`: it connects (and reconnects) in the background;
/// its connection events arrive on the returned receiver. Fails only for an invalid URL.
pub(crate) async fn connect(
    config: &NatsConfig,
    node_id: &str,
) -> Result<(Client, UnboundedReceiver<Event>), ConfigError> {
    let addrs = config
        .url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse::<ServerAddr>()
                .map_err(|e| ConfigError(format!("url {u:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (event_tx, event_rx) = tokio::sync::mpsc::unbounded_channel();
    let options = ConnectOptions::new()
        .name(format!("switchboard {node_id}"))
        .connection_timeout(config.connect_timeout)
        .request_timeout(Some(config.request_timeout))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((attempts as u64).saturating_mul(100).min(2000))
        })
        .event_callback(move |event| {
            let tx = event_tx.clone();
            async move {
                let _ = tx.send(event);
            }
        });
    let client = options
        .connect(addrs)
        .await
        .map_err(|e| ConfigError(format!("url: {e}")))?;
    Ok((client, event_rx))
}

impl Shared {
    pub(crate) fn events(&self) -> Result<Arc<dyn BrokerEvents>, BrokerError> {
        self.events
            .get()
            .cloned()
            .ok_or_else(|| BrokerError::Unavailable("broker not started".into()))
    }

    pub(crate) fn check_connected(&self) -> Result<(), BrokerError> {
        match self.client.connection_state() {
            State::Connected => Ok(()),
            State::Pending => Err(BrokerError::Unavailable("nats: not connected yet".into())),
            State::Disconnected => Err(BrokerError::Unavailable("nats: disconnected".into())),
        }
    }

    /// A round trip to the server: once it returns, the server has processed everything this
    /// connection sent before (a flush only writes the socket). A request to a subject nobody
    /// serves comes back at once with "no responders".
    pub(crate) async fn round_trip(&self) -> Result<(), BrokerError> {
        self.check_connected()?;
        let request = self
            .client
            .request(self.names.sync.clone(), bytes::Bytes::new());
        match tokio::time::timeout(self.config.request_timeout, request).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => Ok(()),
            Ok(Err(e)) => Err(unavailable("round trip", e)),
            Err(_) => Err(unavailable("round trip", "timed out")),
        }
    }

    /// Runs one NATS operation with the request timeout; errors become
    /// [`BrokerError::Unavailable`].
    pub(crate) async fn bounded<T, E: std::fmt::Display>(
        &self,
        what: &str,
        op: impl Future<Output = Result<T, E>>,
    ) -> Result<T, BrokerError> {
        match tokio::time::timeout(self.config.request_timeout, op).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(unavailable(what, e)),
            Err(_) => Err(unavailable(what, "timed out")),
        }
    }
}

/// Handles connection events: after every (re)connect, tells subscribers of every channel this
/// node is subscribed to that they may have missed publications, and makes sure the JetStream
/// stream and buckets exist. Also sweeps idle publish locks.
pub(crate) async fn run_events(shared: Weak<Shared>, mut events: UnboundedReceiver<Event>) {
    // Gaps are possible only after a connection was lost (not after the first connect).
    let mut lost = false;
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = sweep.tick() => {
                match shared.upgrade() {
                    Some(shared) => shared.sweep(),
                    None => return,
                }
                continue;
            }
        };
        let Some(event) = event else { return };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        match event {
            Event::Connected => {
                tracing::info!(url = %shared.config.url, "nats connected");
                // The client queued its resubscriptions before reporting the connection:
                // after a round trip, publications reach this node again.
                let _ = shared.round_trip().await;
                if shared.config.history {
                    if let Err(e) = shared.store().await {
                        tracing::warn!(error = %e, "nats jetstream setup failed; retried on use");
                    }
                }
                if std::mem::take(&mut lost) {
                    let channels: Vec<String> =
                        shared.subscriptions.lock().keys().cloned().collect();
                    if let Some(events) = shared.events.get() {
                        for channel in &channels {
                            events.gap(channel);
                        }
                    }
                }
            }
            Event::Disconnected => {
                lost = true;
                tracing::warn!(url = %shared.config.url, "nats disconnected");
            }
            other => tracing::debug!(event = %other, "nats event"),
        }
    }
}

/// The health probe: every `health_check_interval`, while the client believes it is connected,
/// a round trip bounded by `request_timeout`. A server that does not answer (frozen with
/// SIGSTOP, overloaded, or behind a dead link the client has not noticed yet: it only notices
/// after missed pings, minutes later) marks the broker as not answering, so that
/// [`crate::NatsBroker::is_connected`] (and with it the node's `/health`) says so, until a probe
/// is answered again. Each change is logged once.
pub(crate) async fn run_probe(shared: Weak<Shared>) {
    let interval = match shared.upgrade() {
        Some(shared) => shared.config.health_check_interval,
        None => return,
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.client.connection_state() != State::Connected {
            // Reported by the connection state itself; the next connection starts trusted
            // (its own round trip just succeeded) until a probe says otherwise.
            shared.answering.store(true, Ordering::Release);
            continue;
        }
        let started = tokio::time::Instant::now();
        let result = shared.round_trip().await;
        let was = shared.answering.swap(result.is_ok(), Ordering::AcqRel);
        match result {
            Ok(()) if !was => tracing::info!(
                url = %shared.config.url,
                took = ?started.elapsed(),
                "nats answering again"
            ),
            Err(e) if was => tracing::warn!(
                url = %shared.config.url,
                error = %e,
                "nats not answering the health probe; reporting the broker unavailable"
            ),
            _ => {}
        }
    }
}
