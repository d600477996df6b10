//! One client session: the protocol state machine between a transport and the hub.
//!
//! A transport owns a [`Client`], feeds it every text frame it reads
//! ([`Client::handle_frame`]), writes what appears in its [`Outbound`] queue, calls
//! [`Client::apply_controls`] when the queue reports control requests, and calls
//! [`Client::on_timer`] at [`Client::next_deadline`]. Dropping the client unsubscribes it from
//! every channel and unregisters it from the hub.

mod auth;
mod backend;
mod handler_calls;
mod publish;
mod reads;
mod subscribe;
mod timers;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::value::RawValue;
use switchboard_proto::{
    decode_commands, encode_error_reply, encode_reply, encode_unsubscribe_push, ClientInfo,
    Command, ConnectRequest, ConnectResult, DisconnectCode, ErrorCode, Method, MethodError,
    PublishRequest, RefreshRequest, ReplyResult, StreamPosition, SubRefreshRequest,
    SubscribeRequest, SubscribeResult, UnsubscribeRequest, PING_FRAME,
};

use crate::auth::{info_from, TokenError};
use crate::broker::{BrokerError, HistoryFilter};
use crate::config::NamespaceOptions;
use crate::handlers::{
    guarded, ClientContext, Data, HandlerKind, HandlerResult, Handlers, Rejection,
};
use crate::hub::{ClientEntry, Hub, TransportInfo};
use crate::outbound::{Control, Outbound, PushOutcome};
use crate::proxy::{parse_answer, ProxyAnswer, ProxyKind};
use crate::registry::{Gate, Subscriber, Track};

/// Prefix of private channels: subscribing needs a subscription token.
pub const PRIVATE_CHANNEL_PREFIX: char = '$';
/// Separates a user-limited channel's name from its allowed user ids: `dialog#42,43`.
pub const USER_BOUNDARY: char = '#';

/// Unsubscribe push code: the server unsubscribed the client (do not resubscribe).
pub const UNSUBSCRIBE_SERVER: u32 = 2000;
/// Unsubscribe push code: the subscription token expired and was not refreshed (resubscribe).
pub const UNSUBSCRIBE_EXPIRED: u32 = 2501;
/// Unsubscribe push code: the server may have missed publications (resubscribe and recover).
pub const UNSUBSCRIBE_INSUFFICIENT_STATE: u32 = 2500;
/// Subscribe flag bit: answer error 112 instead of `recovered: false`.
const FLAG_REJECT_UNRECOVERED: i64 = 2;
/// Most RPC calls of one connection that Rust handlers answer at the same time; a further call
/// waits until the oldest is answered.
const MAX_CONCURRENT_RPC: usize = 16;

/// State of one subscription held by a client.
#[derive(Debug, Default)]
struct Subscription {
    /// When the subscription token expires (unix seconds).
    expires_at: Option<u64>,
    /// Channel info from the subscription token.
    info: Option<Box<RawValue>>,
    /// The sub_refresh proxy failed once; the client now refreshes by itself.
    refresh_proxy_failed: bool,
    /// The namespace keeps presence: this client is in the channel's presence.
    presence: bool,
    /// The namespace announces joins and leaves.
    announce: bool,
    /// Made by the server (token `channels`, connect proxy or handler, server API): the client
    /// cannot resubscribe by itself.
    server_side: bool,
}

/// Token bucket for the command rate limit.
#[derive(Debug)]
struct RateLimit {
    per_second: f64,
    tokens: f64,
    last: Instant,
    /// Start of the current run of rejections: rejections less than a second apart.
    flooding_since: Option<Instant>,
    last_rejection: Option<Instant>,
}

impl RateLimit {
    fn new(per_second: u32, now: Instant) -> Option<Self> {
        (per_second > 0).then(|| Self {
            per_second: f64::from(per_second),
            tokens: f64::from(per_second),
            last: now,
            flooding_since: None,
            last_rejection: None,
        })
    }

    /// Ok(true) allowed, Ok(false) refused; Err when the client has been over the limit for a
    /// second: rejections keep coming less than a second apart (the commands the refilling
    /// bucket lets through in between do not reset this).
    fn take(&mut self, now: Instant) -> Result<bool, DisconnectCode> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.per_second);
        let calm = self
            .last_rejection
            .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1));
        if calm {
            self.flooding_since = None;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(true);
        }
        self.last_rejection = Some(now);
        let since = *self.flooding_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= Duration::from_secs(1) {
            return Err(DisconnectCode::TOO_MANY_REQUESTS);
        }
        Ok(false)
    }
}

/// The protocol session of one connection. See the module docs.
pub struct Client {
    hub: Hub,
    key: u64,
    id: Arc<str>,
    user: Arc<str>,
    conn_info: Option<Box<RawValue>>,
    /// Server-only metadata from the token or connect proxy, passed to proxies.
    meta: Option<Box<RawValue>>,
    /// Request headers forwarded to proxies and handlers (only when one is configured).
    headers: Arc<[(String, String)]>,
    out: Arc<Outbound>,
    transport: TransportInfo,
    connected: bool,
    subs: HashMap<Box<str>, Subscription>,
    created: Instant,
    expires_at: Option<u64>,
    /// The refresh proxy failed once; the client now refreshes by itself.
    refresh_proxy_failed: bool,
    next_ping: Option<Instant>,
    pong_deadline: Option<Instant>,
    /// When this client's presence entries are refreshed next.
    next_presence_update: Instant,
    rate: Option<RateLimit>,
    /// RPC calls being answered by the Rust handlers (aborted when the client is dropped).
    rpc_calls: tokio::task::JoinSet<()>,
    /// Why the session ended, when it ended itself (for the `disconnected` notification).
    ending: Option<DisconnectCode>,
    /// The session id of an emulated transport, sent in the connect reply with the node id.
    emulation_session: Option<Arc<str>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.id)
            .field("user", &self.user)
            .field("connected", &self.connected)
            .finish_non_exhaustive()
    }
}

type CommandResult = Result<Option<Bytes>, Refusal>;

/// Why a command failed: an error reply, or the end of the connection.
#[derive(Debug)]
enum Refusal {
    Error(ErrorCode),
    /// An error chosen by the backend (proxy).
    Custom {
        code: u32,
        message: String,
        temporary: bool,
    },
    Disconnect(DisconnectCode),
}

impl From<ErrorCode> for Refusal {
    fn from(e: ErrorCode) -> Self {
        Refusal::Error(e)
    }
}

impl From<DisconnectCode> for Refusal {
    fn from(d: DisconnectCode) -> Self {
        Refusal::Disconnect(d)
    }
}

impl From<Rejection> for Refusal {
    fn from(r: Rejection) -> Self {
        match r {
            Rejection::Error {
                code,
                message,
                temporary,
            } => Refusal::Custom {
                code,
                message,
                temporary,
            },
            Rejection::Disconnect(code) => Refusal::Disconnect(code),
        }
    }
}

/// Client data for a proxy request body. The proxies take a `serde_json::Value`, whose parser
/// stops at 128 levels of nesting while raw data has no such limit: data deeper than that cannot be
/// forwarded, and the command is refused with 107 "bad request" instead of sending `null`.
fn raw_to_value(raw: &RawValue) -> Result<serde_json::Value, Refusal> {
    serde_json::from_str(raw.get()).map_err(|_| ErrorCode::BAD_REQUEST.into())
}

/// [`raw_to_value`] for optional data (`null` when absent).
fn raw_of(value: Option<&RawValue>) -> Result<serde_json::Value, Refusal> {
    value.map_or(Ok(serde_json::Value::Null), raw_to_value)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Seconds left until `expires_at` (at least 1 while not expired).
fn ttl(expires_at: u64, now: u64) -> u32 {
    expires_at
        .saturating_sub(now)
        .max(1)
        .min(u64::from(u32::MAX)) as u32
}

impl Client {
    pub(crate) fn new(hub: Hub, key: u64, transport: TransportInfo) -> Self {
        let config = &hub.config().client;
        let out = Arc::new(Outbound::new(config.max_queue_bytes));
        let now = Instant::now();
        let rate = RateLimit::new(config.max_commands_per_second, now);
        let presence_update_interval = config.presence_update_interval;
        Self {
            hub,
            key,
            id: Arc::from(uuid::Uuid::new_v4().to_string()),
            user: Arc::from(""),
            conn_info: None,
            meta: None,
            headers: Arc::new([]),
            out,
            transport,
            connected: false,
            subs: HashMap::new(),
            created: now,
            expires_at: None,
            refresh_proxy_failed: false,
            next_ping: None,
            pong_deadline: None,
            next_presence_update: now + presence_update_interval,
            rate,
            rpc_calls: tokio::task::JoinSet::new(),
            ending: None,
            emulation_session: None,
        }
    }

    /// Makes this the session `id` of an emulated transport (HTTP-streaming, SSE): the connect
    /// reply then carries `session` and `node`, which the client sends with every
    /// `POST /emulation`.
    pub fn set_emulation_session(&mut self, id: Arc<str>) {
        self.emulation_session = Some(id);
    }

    pub(crate) fn set_forwarded_headers(&mut self, headers: Vec<(String, String)>) {
        self.headers = headers.into();
    }

    /// The client id (a UUID), as sent in the connect reply.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The user id; empty until connected, and for anonymous clients.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Whether `connect` succeeded.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// The node's write coalescing delay (`client.write_delay`, adaptive by default): how long
    /// the transport waits after a write before the next while messages keep coming.
    pub fn pacer(&self) -> &Arc<crate::pacer::Pacer> {
        self.hub.pacer()
    }

    /// The queue the transport writes from.
    pub fn outbound(&self) -> &Arc<Outbound> {
        &self.out
    }

    /// Handles one frame of newline-delimited commands. Replies and pushes go to the outbound
    /// queue. An `Err` means: close the connection with this code (after writing what is
    /// queued).
    pub async fn handle_frame(&mut self, frame: &[u8], now: Instant) -> Result<(), DisconnectCode> {
        let commands = decode_commands(frame).map_err(|e| {
            tracing::debug!(client = %self.id, error = %e, "malformed frame");
            DisconnectCode::BAD_REQUEST
        })?;
        self.hub
            .metrics()
            .transport_messages_in(self.transport.name, commands.len() as u64);
        for command in commands {
            if let Err(code) = self.handle_command(command, now).await {
                self.ending = Some(code);
                return Err(code);
            }
        }
        Ok(())
    }

    async fn handle_command(
        &mut self,
        command: Command,
        now: Instant,
    ) -> Result<(), DisconnectCode> {
        let id = command.id;
        let method = match command.method() {
            Ok(m) => m,
            Err(MethodError::Unknown) => {
                return self.reply_error(id, ErrorCode::METHOD_NOT_FOUND);
            }
            Err(MethodError::Ambiguous) => return Err(DisconnectCode::BAD_REQUEST),
        };
        self.hub.inner.metrics.command(method.name());
        if !self.connected {
            return match method {
                Method::Connect(req) => match self.connect(id, req, now).await {
                    Ok(()) => Ok(()),
                    Err(refusal) => self.refuse(id, refusal),
                },
                _ => Err(DisconnectCode::BAD_REQUEST),
            };
        }
        if let Some(rate) = &mut self.rate {
            if !matches!(method, Method::Pong) && !rate.take(now)? {
                return self.reply_error(id, ErrorCode::TOO_MANY_REQUESTS);
            }
        }
        let result: CommandResult = match method {
            Method::Pong => {
                self.pong_deadline = None;
                return Ok(());
            }
            Method::Connect(_) => return Err(DisconnectCode::BAD_REQUEST),
            Method::Send(_) => return Ok(()),
            Method::Subscribe(req) => self.subscribe(id, req).await,
            Method::Unsubscribe(req) => self.unsubscribe(id, req).await,
            Method::Publish(req) => self.publish(id, req).await,
            Method::Ping => Ok(Some(encode_reply(id, &ReplyResult::ping()))),
            Method::Presence(req) => self.presence(id, &req.channel).await,
            Method::PresenceStats(req) => self.presence_stats(id, &req.channel).await,
            Method::History(req) => self.history(id, req).await,
            Method::Refresh(req) => self.refresh(id, req),
            Method::SubRefresh(req) => self.sub_refresh(id, req),
            Method::Rpc(req) => self.rpc(id, req).await,
        };
        match result {
            Ok(Some(reply)) => self.push(reply),
            Ok(None) => Ok(()),
            Err(refusal) => self.refuse(id, refusal),
        }
    }

    fn refuse(&self, id: u32, refusal: Refusal) -> Result<(), DisconnectCode> {
        match refusal {
            Refusal::Error(code) => self.reply_error(id, code),
            Refusal::Custom {
                code,
                message,
                temporary,
            } => {
                if id == 0 {
                    return Ok(());
                }
                self.push(switchboard_proto::encode_custom_error_reply(
                    id, code, &message, temporary,
                ))
            }
            Refusal::Disconnect(code) => Err(code),
        }
    }

    fn push(&self, message: Bytes) -> Result<(), DisconnectCode> {
        self.hub.metrics().messages_out(1, message.len() as u64);
        match self.out.push(message) {
            PushOutcome::Queued | PushOutcome::Closed => Ok(()),
            // Counted by the transport when it closes the connection.
            PushOutcome::Overflow => Err(DisconnectCode::SLOW),
        }
    }

    fn reply_error(&self, id: u32, code: ErrorCode) -> Result<(), DisconnectCode> {
        self.hub.inner.metrics.error(code);
        if id == 0 {
            return Ok(());
        }
        self.push(encode_error_reply(id, code))
    }

    fn info_with(&self, chan_info: Option<Box<RawValue>>) -> ClientInfo {
        ClientInfo {
            user: self.user.to_string(),
            client: self.id.to_string(),
            conn_info: self.conn_info.clone(),
            chan_info,
        }
    }

    fn namespace(&self, channel: &str) -> Result<NamespaceOptions, ErrorCode> {
        self.hub.inner.namespaces.resolve(channel).cloned()
    }

    /// Records why the connection ends (for metrics). Call once, before dropping the client,
    /// when the server closes the connection.
    pub fn record_disconnect(&self, code: DisconnectCode) {
        self.hub.metrics().disconnect(code);
    }
}

/// Removes `info` from the channel's presence and announces the leave, as the namespace wants.
async fn leave(hub: &Hub, channel: &str, info: &ClientInfo, presence: bool, announce: bool) {
    if presence {
        if let Err(e) = hub
            .inner
            .presence
            .remove_presence(channel, &info.client)
            .await
        {
            tracing::warn!(%channel, error = %e, "removing presence failed");
        }
    }
    if announce {
        if let Err(e) = hub.inner.broker.publish_leave(channel, info).await {
            tracing::warn!(%channel, error = %e, "leave announcement failed");
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.notify_ending();
        let registry = &self.hub.inner.registry;
        let emptied: Vec<String> = self
            .subs
            .keys()
            .filter(|channel| registry.remove(channel, self.key))
            .map(|c| c.to_string())
            .collect();
        self.hub.unregister_client(self.key);
        self.hub
            .inner
            .metrics
            .connection_closed(self.transport.name);
        self.hub.spawn_broker_unsubscribe(emptied);
        let leaving: Vec<(String, ClientInfo, bool, bool)> = std::mem::take(&mut self.subs)
            .into_iter()
            .filter(|(_, s)| s.presence || s.announce)
            .map(|(channel, s)| {
                let info = self.info_with(s.info);
                (channel.into(), info, s.presence, s.announce)
            })
            .collect();
        if leaving.is_empty() {
            return;
        }
        let hub = self.hub.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                for (channel, info, presence, announce) in leaving {
                    leave(&hub, &channel, &info, presence, announce).await;
                }
            });
        }
    }
}
