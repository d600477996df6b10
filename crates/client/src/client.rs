//! [`Client`]: the public handle, its [`ClientBuilder`], reconnect [`Backoff`] and
//! [`ClientEvent`]s.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use switchboard_proto::StreamPosition;
use switchboard_ws::WsConfig;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::connection::Endpoint;
use crate::driver::{Driver, Op};
use crate::error::ClientError;
use crate::protocol::{to_params, WireHistoryResult, WirePresenceResult, WireRpcResult};
use crate::subscription::{ClientInfo, Publication, SubscribeOptions, Subscription};

/// Capacity of the handle-to-task command queue.
const OPS_CAPACITY: usize = 1024;

/// Exponential reconnect backoff: the n-th retry (from 0) waits `min * 2^n`, capped at `max`;
/// with `jitter` the wait is drawn uniformly from `[min, that]` so that clients dropped
/// together do not come back together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Shortest wait.
    pub min: Duration,
    /// Longest wait.
    pub max: Duration,
    /// Randomise the wait.
    pub jitter: bool,
}

impl Default for Backoff {
    /// 100 ms to 5 s, with jitter.
    fn default() -> Self {
        Self {
            min: Duration::from_millis(100),
            max: Duration::from_secs(5),
            jitter: true,
        }
    }
}

impl Backoff {
    /// The wait before retry number `attempt` (0 for the first retry).
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self
            .min
            .saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
            .min(self.max)
            .max(self.min);
        if !self.jitter || ceiling <= self.min {
            return ceiling;
        }
        let span = (ceiling - self.min).as_nanos().min(u64::MAX as u128) as u64;
        self.min + Duration::from_nanos(fastrand::u64(0..=span))
    }
}

/// What happens to the connection as a whole. Get a receiver with [`Client::events`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// A connection (or a reconnection) was established; subscriptions are being restored.
    Connected {
        /// The client id the server assigned to this connection.
        client: String,
    },
    /// The connection ended. With `reconnect` the client is retrying (with backoff) and will
    /// send [`ClientEvent::Connected`] again; without, the client is closed for good.
    Disconnected {
        /// Close code or disconnect push code from the server; 1006 when the transport failed
        /// (reason says why: i/o error, no ping, ...); 1000 after [`Client::disconnect`].
        code: u32,
        /// Reason.
        reason: String,
        /// Whether the client reconnects.
        reconnect: bool,
    },
    /// An asynchronous `message` push (server API `send`): its raw JSON `data`.
    Message(Bytes),
    /// Any other push not routed to a [`Subscription`] (server-side subscriptions, pushes for
    /// channels the client did not subscribe to): the raw JSON line.
    Push(Bytes),
}

/// Presence counts of a channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct PresenceStats {
    /// Connections in the channel.
    #[serde(default)]
    pub num_clients: u32,
    /// Distinct users in the channel.
    #[serde(default)]
    pub num_users: u32,
}

/// What [`Client::history`] asks for.
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct HistoryOptions {
    /// Maximum number of publications; 0 returns only the stream position.
    pub limit: i32,
    /// Only publications after this position.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<StreamPosition>,
    /// Newest first.
    pub reverse: bool,
}

impl HistoryOptions {
    /// At most `limit` publications (0: only the position; -1: all the server allows).
    pub fn limit(mut self, limit: i32) -> Self {
        self.limit = limit;
        self
    }

    /// Only publications after `position`.
    pub fn since(mut self, position: StreamPosition) -> Self {
        self.since = Some(position);
        self
    }

    /// Newest first.
    pub fn reverse(mut self, reverse: bool) -> Self {
        self.reverse = reverse;
        self
    }
}

/// A channel's history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct History {
    /// The publications asked for.
    pub publications: Vec<Publication>,
    /// The stream's current position.
    pub position: StreamPosition,
}

/// Everything the background task needs to (re)connect.
#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) endpoint: Endpoint,
    pub(crate) token: String,
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) data: Option<Box<RawValue>>,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) reconnect: Option<Backoff>,
    pub(crate) timeout: Duration,
    pub(crate) max_ping_delay: Duration,
    pub(crate) ws: WsConfig,
}

/// State shared by the handles and the background task.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) client_id: Mutex<String>,
    pub(crate) events: broadcast::Sender<ClientEvent>,
    /// Set when the task ended: the final disconnect code and reason.
    pub(crate) closed: Mutex<Option<(u32, String)>>,
    pub(crate) timeout: Duration,
    subscription_buffer: usize,
    generation: AtomicU64,
}

impl Shared {
    pub(crate) fn emit(&self, event: ClientEvent) {
        // No receiver is fine: nobody listens.
        let _ = self.events.send(event);
    }
}

/// The error for an operation on a closed client.
pub(crate) fn closed_error(shared: &Shared) -> ClientError {
    let closed = shared.closed.lock().unwrap_or_else(|e| e.into_inner());
    match &*closed {
        Some((code, reason)) => ClientError::Disconnected {
            code: *code,
            reason: reason.clone(),
        },
        None => ClientError::Disconnected {
            code: 1000,
            reason: "client closed".into(),
        },
    }
}

/// Configures and opens a [`Client`]. Start with [`Client::builder`].
#[derive(Debug)]
#[must_use]
pub struct ClientBuilder {
    url: String,
    token: String,
    name: String,
    version: String,
    data: Option<Box<RawValue>>,
    headers: Vec<(String, String)>,
    reconnect: Option<Backoff>,
    timeout: Duration,
    max_ping_delay: Duration,
    subscription_buffer: usize,
    event_buffer: usize,
    ws: WsConfig,
}

impl ClientBuilder {
    /// Connection token (JWT). Default: none (anonymous, if the server allows it).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = token.into();
        self
    }

    /// Client name sent in `connect`. Default: `"rust"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Client version sent in `connect`. Default: this crate's version.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// Custom `connect` data for a connect proxy.
    pub fn data(mut self, data: &impl Serialize) -> Result<Self, ClientError> {
        let s = serde_json::to_string(data).map_err(ClientError::protocol)?;
        self.data = Some(RawValue::from_string(s).map_err(ClientError::protocol)?);
        Ok(self)
    }

    /// Adds a header to the WebSocket handshake request (`Origin`, `Cookie`, ...).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Reconnects with `backoff` after a connection loss that allows it. On by default with
    /// [`Backoff::default`].
    pub fn reconnect(mut self, backoff: Backoff) -> Self {
        self.reconnect = Some(backoff);
        self
    }

    /// Never reconnects: the first disconnect closes the client.
    pub fn no_reconnect(mut self) -> Self {
        self.reconnect = None;
        self
    }

    /// Timeout of each request (and of each connection attempt). Default: 10 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long past the announced ping interval a server ping may be late before the
    /// connection is considered dead and replaced. Default: 10 s.
    pub fn max_ping_delay(mut self, delay: Duration) -> Self {
        self.max_ping_delay = delay;
        self
    }

    /// Events buffered per subscription before the client stops reading. Default: 1024.
    pub fn subscription_buffer(mut self, events: usize) -> Self {
        self.subscription_buffer = events.max(1);
        self
    }

    /// Events kept for slow [`Client::events`] receivers (they then see `Lagged`).
    /// Default: 256.
    pub fn event_buffer(mut self, events: usize) -> Self {
        self.event_buffer = events.max(1);
        self
    }

    /// Largest message accepted from the server. Default: 16 MiB.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.ws = self.ws.max_message_size(bytes);
        self
    }

    /// Offers permessage-deflate in the handshake. Default: off.
    pub fn compression(mut self, on: bool) -> Self {
        self.ws = self.ws.compression(on);
        self
    }

    /// Connects, sends `connect` and waits for its reply.
    ///
    /// The first attempt is not retried: its failure is returned (`Io` when the server cannot
    /// be reached, `Server` for an error reply, `Disconnected` when the server closed the
    /// connection with a code, `Timeout`). After that, the client reconnects on its own.
    /// Needs a tokio runtime (with the time and net drivers).
    pub async fn connect(self) -> Result<Client, ClientError> {
        let endpoint = Endpoint::parse(&self.url)?;
        let (ops_tx, ops_rx) = mpsc::channel(OPS_CAPACITY);
        let (events, _) = broadcast::channel(self.event_buffer);
        let shared = Arc::new(Shared {
            client_id: Mutex::new(String::new()),
            events,
            closed: Mutex::new(None),
            timeout: self.timeout,
            subscription_buffer: self.subscription_buffer,
            generation: AtomicU64::new(0),
        });
        let config = Config {
            endpoint,
            token: self.token,
            name: self.name,
            version: self.version,
            data: self.data,
            headers: self.headers,
            reconnect: self.reconnect,
            timeout: self.timeout,
            max_ping_delay: self.max_ping_delay,
            ws: self.ws,
        };
        let (first_tx, first_rx) = oneshot::channel();
        let driver = Driver::new(Arc::new(config), shared.clone(), ops_rx);
        tokio::spawn(driver.run(first_tx));
        match first_rx.await {
            Ok(Ok(())) => Ok(Client {
                ops: ops_tx,
                shared,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(closed_error(&shared)),
        }
    }
}

/// A connection to a Switchboard (or Centrifugo) server over the native protocol.
///
/// A cheap handle: clones talk to the same connection, owned by one background task that
/// reads, writes, answers pings and reconnects. The connection closes when
/// [`Client::disconnect`] is called, or when every handle and every [`Subscription`] is dropped.
///
/// ```no_run
/// # async fn demo() -> Result<(), switchboard_client::ClientError> {
/// use switchboard_client::Client;
///
/// let client = Client::builder("ws://127.0.0.1:8000/connection/websocket")
///     .connect()
///     .await?;
/// let mut sub = client.subscribe("chat:index").await?;
/// client.publish("chat:index", serde_json::json!({"text": "hi"})).await?;
/// let publication = sub.recv().await.expect("subscribed");
/// assert_eq!(publication.value()["text"], "hi");
/// client.disconnect().await;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    ops: mpsc::Sender<Op>,
    shared: Arc<Shared>,
}

impl Client {
    /// A builder for a client of the server at `url` (`ws://host[:port]/path`; TLS is not
    /// supported).
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            url: url.into(),
            token: String::new(),
            name: "rust".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            data: None,
            headers: Vec::new(),
            reconnect: Some(Backoff::default()),
            timeout: Duration::from_secs(10),
            max_ping_delay: Duration::from_secs(10),
            subscription_buffer: 1024,
            event_buffer: 256,
            ws: WsConfig::default()
                .max_message_size(16 << 20)
                .close_timeout(Duration::from_secs(1)),
        }
    }

    /// The client id of the current (or last) connection; it changes on reconnect.
    pub fn id(&self) -> String {
        self.shared
            .client_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A receiver of connection events from now on. The first `Connected` happened before
    /// [`ClientBuilder::connect`] returned.
    pub fn events(&self) -> broadcast::Receiver<ClientEvent> {
        self.shared.events.subscribe()
    }

    /// Whether the client is closed for good (disconnected without reconnect).
    pub fn is_closed(&self) -> bool {
        self.ops.is_closed()
    }

    async fn submit<T>(
        &self,
        op: Op,
        rx: oneshot::Receiver<Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        let work = async {
            self.ops
                .send(op)
                .await
                .map_err(|_| closed_error(&self.shared))?;
            rx.await.map_err(|_| closed_error(&self.shared))?
        };
        tokio::time::timeout(self.shared.timeout, work)
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    /// Sends command `method` with JSON object `params`; the reply's result object as raw JSON
    /// (empty when the reply has none).
    pub(crate) async fn call(&self, method: &str, params: String) -> Result<Bytes, ClientError> {
        let (reply, rx) = oneshot::channel();
        let op = Op::Call {
            method: method.to_owned(),
            params,
            reply,
        };
        self.submit(op, rx).await
    }

    /// Sends any command and returns its result. `body` is a command without id, e.g.
    /// `json!({"presence": {"channel": "chat:index"}})`; the result is the value of the
    /// reply's method field (`{}` when empty).
    pub async fn request(&self, body: serde_json::Value) -> Result<serde_json::Value, ClientError> {
        let serde_json::Value::Object(map) = body else {
            return Err(ClientError::protocol("a command must be a JSON object"));
        };
        let mut fields = map.into_iter();
        let (Some((method, params)), None) = (fields.next(), fields.next()) else {
            return Err(ClientError::protocol(
                "a command has exactly one method field",
            ));
        };
        let raw = self.call(&method, to_params(&params)).await?;
        if raw.is_empty() {
            return Ok(serde_json::Value::Object(Default::default()));
        }
        serde_json::from_slice(&raw).map_err(ClientError::protocol)
    }

    /// Subscribes to `channel` and waits for the server's answer.
    pub async fn subscribe(&self, channel: impl Into<String>) -> Result<Subscription, ClientError> {
        self.subscribe_with(channel, SubscribeOptions::default())
            .await
    }

    /// Subscribes to `channel` with options and waits for the server's answer. An error
    /// reply comes back as [`ClientError::Server`] with the server's code; subscribing twice
    /// to the same channel fails with code 105 (already subscribed) without asking the server.
    pub async fn subscribe_with(
        &self,
        channel: impl Into<String>,
        options: SubscribeOptions,
    ) -> Result<Subscription, ClientError> {
        let channel = channel.into();
        let generation = self.shared.generation.fetch_add(1, Ordering::Relaxed);
        let (events_tx, events_rx) = mpsc::channel(self.shared.subscription_buffer);
        let (reply, rx) = oneshot::channel();
        let op = Op::Subscribe {
            channel: channel.clone(),
            options,
            generation,
            events: events_tx,
            reply,
        };
        self.submit(op, rx).await?;
        Ok(Subscription::new(
            channel,
            generation,
            events_rx,
            self.ops.clone(),
            self.shared.clone(),
        ))
    }

    /// Unsubscribes from `channel` (whatever [`Subscription`] handle exists for it ends with
    /// [`SubscriptionEvent::Unsubscribed`](crate::SubscriptionEvent::Unsubscribed)).
    pub async fn unsubscribe(&self, channel: impl Into<String>) -> Result<(), ClientError> {
        let (reply, rx) = oneshot::channel();
        let op = Op::Unsubscribe {
            channel: channel.into(),
            generation: None,
            reply: Some(reply),
        };
        self.submit(op, rx).await.map(drop)
    }

    /// Publishes `data` (anything serialisable to JSON, including a `&RawValue`) into
    /// `channel` and waits for the server's acknowledgement.
    pub async fn publish(&self, channel: &str, data: impl Serialize) -> Result<(), ClientError> {
        #[derive(Serialize)]
        struct P<'a, T> {
            channel: &'a str,
            data: T,
        }
        self.call("publish", to_params(&P { channel, data }))
            .await
            .map(drop)
    }

    /// Calls RPC `method` with `data`; the result's `data` (`Null` when there is none).
    pub async fn rpc(
        &self,
        method: &str,
        data: impl Serialize,
    ) -> Result<serde_json::Value, ClientError> {
        #[derive(Serialize)]
        struct R<'a, T> {
            method: &'a str,
            data: T,
        }
        let raw = self.call("rpc", to_params(&R { method, data })).await?;
        let r: WireRpcResult<'_> = parse_result(&raw)?;
        match r.data {
            Some(d) => serde_json::from_str(d.get()).map_err(ClientError::protocol),
            None => Ok(serde_json::Value::Null),
        }
    }

    /// Sends an asynchronous message to the server (`send`: no reply). Resolves once the
    /// command is queued for writing.
    pub async fn send(&self, data: impl Serialize) -> Result<(), ClientError> {
        #[derive(Serialize)]
        struct S<T> {
            data: T,
        }
        let op = Op::Send {
            params: to_params(&S { data }),
        };
        self.ops
            .send(op)
            .await
            .map_err(|_| closed_error(&self.shared))
    }

    /// Who is in `channel`: client id to client info.
    pub async fn presence(
        &self,
        channel: &str,
    ) -> Result<HashMap<String, ClientInfo>, ClientError> {
        let raw = self
            .call(
                "presence",
                to_params(&serde_json::json!({ "channel": channel })),
            )
            .await?;
        let r: WirePresenceResult<'_> = parse_result(&raw)?;
        Ok(r.presence
            .iter()
            .map(|(k, v)| (k.clone(), v.to_public(&raw)))
            .collect())
    }

    /// How many clients and users are in `channel`.
    pub async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, ClientError> {
        let raw = self
            .call(
                "presence_stats",
                to_params(&serde_json::json!({ "channel": channel })),
            )
            .await?;
        parse_result(&raw)
    }

    /// Reads `channel`'s history.
    pub async fn history(
        &self,
        channel: &str,
        options: HistoryOptions,
    ) -> Result<History, ClientError> {
        #[derive(Serialize)]
        struct H<'a> {
            channel: &'a str,
            #[serde(flatten)]
            options: HistoryOptions,
        }
        let raw = self
            .call("history", to_params(&H { channel, options }))
            .await?;
        let r: WireHistoryResult<'_> = parse_result(&raw)?;
        Ok(History {
            publications: r.publications.iter().map(|p| p.to_public(&raw)).collect(),
            position: StreamPosition {
                offset: r.offset,
                epoch: r.epoch,
            },
        })
    }

    /// Closes the connection (close code 1000) and ends the client: pending requests fail,
    /// subscriptions end, no reconnect. Waits until the socket is closed.
    pub async fn disconnect(&self) {
        let (reply, rx) = oneshot::channel();
        if self.ops.send(Op::Disconnect { reply }).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Parses a result object (an empty one when the reply had none).
fn parse_result<'a, T: Deserialize<'a>>(raw: &'a Bytes) -> Result<T, ClientError> {
    let text: &[u8] = if raw.is_empty() { b"{}" } else { raw };
    serde_json::from_slice(text).map_err(|e| ClientError::protocol(format!("bad result: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let b = Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_secs(5),
            jitter: false,
        };
        assert_eq!(b.delay(0), Duration::from_millis(100));
        assert_eq!(b.delay(1), Duration::from_millis(200));
        assert_eq!(b.delay(3), Duration::from_millis(800));
        assert_eq!(b.delay(10), Duration::from_secs(5));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(5));
        let j = Backoff { jitter: true, ..b };
        for attempt in 0..40 {
            let d = j.delay(attempt);
            assert!(d >= b.min && d <= b.delay(attempt), "{attempt}: {d:?}");
        }
    }

    #[test]
    fn public_types_are_send_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Client>();
        assert_send_sync::<crate::Subscription>();
        assert_send_sync::<ClientError>();
        assert_send_sync::<ClientEvent>();
    }
}
