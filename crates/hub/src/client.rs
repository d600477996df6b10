//! One client session: the protocol state machine between a transport and the hub.
//!
//! A transport owns a [`Client`], feeds it every text frame it reads
//! ([`Client::handle_frame`]), writes what appears in its [`Outbound`] queue, calls
//! [`Client::apply_controls`] when the queue reports control requests, and calls
//! [`Client::on_timer`] at [`Client::next_deadline`]. Dropping the client unsubscribes it from
//! every channel and unregisters it from the hub.

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
use crate::hub::{ClientEntry, Hub, TransportInfo};
use crate::outbound::{Control, Outbound, PushOutcome};
use crate::proxy::{parse_answer, ProxyAnswer, ProxyKind};
use crate::registry::{Gate, Subscriber};

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
    /// Request headers forwarded to proxies (only when a proxy is configured).
    headers: Vec<(String, String)>,
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

fn raw_to_value(raw: &RawValue) -> serde_json::Value {
    serde_json::from_str(raw.get()).unwrap_or(serde_json::Value::Null)
}

fn raw_of(value: Option<&RawValue>) -> serde_json::Value {
    value.map_or(serde_json::Value::Null, raw_to_value)
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
            headers: Vec::new(),
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
        }
    }

    pub(crate) fn set_forwarded_headers(&mut self, headers: Vec<(String, String)>) {
        self.headers = headers;
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

    /// The configured minimum time between writes while messages keep coming
    /// (`client.write_delay`).
    pub fn write_delay(&self) -> Duration {
        self.hub.config().client.write_delay
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
        self.hub.metrics().messages_in(commands.len() as u64);
        for command in commands {
            self.handle_command(command, now).await?;
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

    /// The fields every proxy request carries.
    fn proxy_body(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut body = serde_json::Map::new();
        body.insert("client".into(), self.id.to_string().into());
        body.insert("transport".into(), self.transport.name.into());
        body.insert("protocol".into(), "json".into());
        body.insert("encoding".into(), "json".into());
        if self.connected {
            body.insert("user".into(), self.user.to_string().into());
        }
        if let Some(meta) = &self.meta {
            body.insert("meta".into(), raw_to_value(meta));
        }
        body
    }

    /// Calls the backend; maps its refusals and failures to client-visible outcomes.
    async fn call_proxy<T>(
        &self,
        kind: ProxyKind,
        endpoint: &str,
        body: serde_json::Map<String, serde_json::Value>,
    ) -> Result<T, Refusal>
    where
        T: for<'de> serde::Deserialize<'de> + Default,
    {
        let Some(proxy) = self.hub.inner.proxy.get() else {
            return Err(ErrorCode::NOT_AVAILABLE.into());
        };
        let answer = proxy
            .call(
                kind,
                endpoint,
                &self.headers,
                serde_json::Value::Object(body),
            )
            .await
            .and_then(parse_answer::<T>);
        match answer {
            Ok(ProxyAnswer::Result(r)) => Ok(r),
            Ok(ProxyAnswer::Error {
                code,
                message,
                temporary,
            }) => Err(Refusal::Custom {
                code,
                message,
                temporary,
            }),
            Ok(ProxyAnswer::Disconnect(code)) => Err(Refusal::Disconnect(code)),
            Err(e) => {
                tracing::warn!(client = %self.id, proxy = kind.name(), error = %e, "proxy call failed");
                Err(ErrorCode::INTERNAL.into())
            }
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

    fn unverifiable_subscription_token(&self, channel: &str, reason: &str) -> Refusal {
        tracing::info!(client = %self.id, user = %self.user, %channel, %reason, "subscription token refused");
        Refusal::Error(ErrorCode::PERMISSION_DENIED)
    }

    fn invalid_token(&self, what: &str, reason: &str) -> Refusal {
        tracing::info!(client = %self.id, user = %self.user, %reason, "{what} refused");
        Refusal::Disconnect(DisconnectCode::INVALID_TOKEN)
    }

    async fn connect(
        &mut self,
        id: u32,
        req: &ConnectRequest,
        now: Instant,
    ) -> Result<(), Refusal> {
        let hub = self.hub.clone();
        let config = &hub.config().client;
        let unix = unix_now();
        let mut channels = Vec::new();
        let mut connect_data = None;
        if !req.token.is_empty() {
            let Some(verifier) = &hub.inner.connect_tokens else {
                return Err(self
                    .invalid_token("connection token", "token authentication is not configured"));
            };
            match verifier.verify_connect(&req.token, unix) {
                Ok(claims) => {
                    self.user = Arc::from(claims.sub.as_str());
                    self.conn_info = info_from(claims.info, &claims.b64info);
                    self.meta = claims.meta;
                    let exp = claims.expire_at.unwrap_or(claims.exp);
                    self.expires_at = (exp > 0).then_some(exp);
                    channels = claims.channels;
                }
                Err(TokenError::Expired) => return Err(ErrorCode::TOKEN_EXPIRED.into()),
                Err(TokenError::Invalid(reason)) => {
                    return Err(self.invalid_token("connection token", &reason))
                }
            }
        } else if !hub.config().proxy.connect_endpoint.is_empty() {
            let mut body = self.proxy_body();
            body.insert("name".into(), req.name.clone().into());
            body.insert("version".into(), req.version.clone().into());
            body.insert("data".into(), raw_of(req.data.as_deref()));
            let endpoint = hub.config().proxy.connect_endpoint.clone();
            let result: crate::proxy::ConnectResult =
                self.call_proxy(ProxyKind::Connect, &endpoint, body).await?;
            self.user = Arc::from(result.user.as_str());
            self.conn_info = info_from(result.info, &result.b64info);
            self.meta = result.meta;
            self.expires_at = (result.expire_at > 0).then_some(result.expire_at);
            channels = result.channels;
            connect_data = result.data;
        } else if !config.allow_anonymous {
            self.reply_error(id, ErrorCode::UNAUTHORIZED)?;
            return Err(DisconnectCode::PERMISSION_DENIED.into());
        }
        if !self.user.is_empty()
            && config.max_connections_per_user > 0
            && hub.user_connections(&self.user) >= config.max_connections_per_user
        {
            return Err(DisconnectCode::CONNECTION_LIMIT.into());
        }
        self.connected = true;
        hub.register_client(
            self.key,
            ClientEntry {
                id: self.id.clone(),
                user: self.user.clone(),
                out: self.out.clone(),
            },
        );
        let mut result = ConnectResult::new(self.id.to_string());
        result.version = hub.node().version.to_string();
        result.data = connect_data;
        if let Some(exp) = self.expires_at {
            result.expires = true;
            result.ttl = ttl(exp, unix);
        }
        let ping = config.ping_interval;
        if !ping.is_zero() {
            result.ping = ping.as_secs().max(1) as u32;
            result.pong = self.transport.bidirectional && !config.pong_timeout.is_zero();
            self.next_ping = Some(now + ping);
        }
        channels.extend(
            config
                .subscribe_to_user_personal_channel
                .channel_for(&self.user),
        );
        for channel in channels {
            match self.server_side_subscribe(&channel, None).await {
                Ok(_) => {
                    result.subs.insert(channel, SubscribeResult::default());
                }
                Err(e) => {
                    tracing::warn!(client = %self.id, %channel, error = %e, "server-side subscription failed")
                }
            }
        }
        result.node = hub.node().id.clone();
        result.time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        self.push(encode_reply(id, &ReplyResult::Connect(result)))?;
        Ok(())
    }

    fn refresh(&mut self, id: u32, req: &RefreshRequest) -> CommandResult {
        let hub = self.hub.clone();
        let Some(verifier) = &hub.inner.connect_tokens else {
            return Err(ErrorCode::NOT_AVAILABLE.into());
        };
        let unix = unix_now();
        let claims = match verifier.verify_connect(&req.token, unix) {
            Ok(c) => c,
            Err(TokenError::Expired) => return Err(ErrorCode::TOKEN_EXPIRED.into()),
            Err(TokenError::Invalid(reason)) => {
                return Err(self.invalid_token("refresh token", &reason))
            }
        };
        if claims.sub != *self.user {
            return Err(self.invalid_token("refresh token", "token is for another user"));
        }
        let exp = claims.expire_at.unwrap_or(claims.exp);
        self.expires_at = (exp > 0).then_some(exp);
        if let Some(info) = info_from(claims.info, &claims.b64info) {
            self.conn_info = Some(info);
        }
        let result = switchboard_proto::RefreshResult {
            client: self.id.to_string(),
            version: hub.node().version.to_string(),
            expires: self.expires_at.is_some(),
            ttl: self.expires_at.map_or(0, |e| ttl(e, unix)),
        };
        Ok(Some(encode_reply(id, &ReplyResult::Refresh(result))))
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

    /// Whether the namespace options let this client subscribe to `channel` without a token
    /// or proxy: never for private channels, by user list for user-limited channels, else by
    /// the allow_subscribe options.
    fn may_subscribe(&self, channel: &str, options: &NamespaceOptions) -> bool {
        if channel.starts_with(PRIVATE_CHANNEL_PREFIX) {
            false
        } else if channel.contains(USER_BOUNDARY) && options.allow_user_limited_channels {
            self.user_limited_allows(channel, options)
        } else {
            options.allow_subscribe_for_client
                && (!self.user.is_empty() || options.allow_subscribe_for_anonymous)
        }
    }

    /// The proxy URL for `kind`: the namespace's override, else the global one.
    fn endpoint(&self, kind: ProxyKind, namespace_override: &str) -> String {
        if namespace_override.is_empty() {
            self.hub.config().proxy.endpoint(kind).to_string()
        } else {
            namespace_override.to_string()
        }
    }

    /// Whether `channel` is user-limited to a list that contains this client's user.
    fn user_limited_allows(&self, channel: &str, options: &NamespaceOptions) -> bool {
        options.allow_user_limited_channels
            && !self.user.is_empty()
            && channel
                .rsplit_once(USER_BOUNDARY)
                .is_some_and(|(_, users)| users.split(',').any(|u| u == &*self.user))
    }

    async fn subscribe(&mut self, id: u32, req: &SubscribeRequest) -> CommandResult {
        let options = self.namespace(&req.channel)?;
        if self.subs.contains_key(req.channel.as_str()) {
            return Err(ErrorCode::ALREADY_SUBSCRIBED.into());
        }
        let by_token = !req.token.is_empty();
        if !by_token && !options.proxy_subscribe && !self.may_subscribe(&req.channel, &options) {
            return Err(ErrorCode::PERMISSION_DENIED.into());
        }
        // Before any token check or proxy call: refusing is cheap, a proxy call is not.
        if self.subs.len() >= self.hub.config().client.max_channels {
            return Err(ErrorCode::LIMIT_EXCEEDED.into());
        }
        let unix = unix_now();
        let mut sub = Subscription::default();
        let mut result = SubscribeResult::default();
        if by_token {
            let hub = self.hub.clone();
            // A token that cannot be verified (malformed, bad signature, no keys configured)
            // refuses this subscription with 103 and the connection lives, as with Centrifugo;
            // only a valid token for another channel or user closes the connection (3500).
            let Some(verifier) = hub.inner.subscription_tokens.as_ref() else {
                return Err(self.unverifiable_subscription_token(
                    &req.channel,
                    "token authentication is not configured",
                ));
            };
            let claims = match verifier.verify_subscription(&req.token, unix) {
                Ok(c) => c,
                Err(TokenError::Expired) => return Err(ErrorCode::TOKEN_EXPIRED.into()),
                Err(TokenError::Invalid(reason)) => {
                    return Err(self.unverifiable_subscription_token(&req.channel, &reason))
                }
            };
            if claims.channel != req.channel || claims.sub != *self.user {
                return Err(self
                    .invalid_token("subscription token", "token is for another channel or user"));
            }
            let exp = claims.expire_at.unwrap_or(claims.exp);
            sub.expires_at = (exp > 0).then_some(exp);
            sub.info = info_from(claims.info, &claims.b64info);
        } else if options.proxy_subscribe {
            let mut body = self.proxy_body();
            body.insert("channel".into(), req.channel.clone().into());
            body.insert("data".into(), raw_of(req.data.as_deref()));
            let endpoint = self.endpoint(ProxyKind::Subscribe, &options.subscribe_proxy_endpoint);
            let answer: crate::proxy::SubscribeResult = self
                .call_proxy(ProxyKind::Subscribe, &endpoint, body)
                .await?;
            sub.info = info_from(answer.info, &answer.b64info);
            sub.expires_at = (answer.expire_at > 0).then_some(answer.expire_at);
            result.data = answer.data;
        }
        if let Some(exp) = sub.expires_at {
            result.expires = true;
            result.ttl = ttl(exp, unix);
        }
        let join_leave = options.force_push_join_leave || (options.join_leave && req.join_leave);
        let history = options.history_size > 0 && !options.history_ttl.is_zero();
        let recoverable = history && (options.force_recovery || req.recoverable || req.recover);
        let positioned = recoverable || (history && (options.force_positioning || req.positioned));
        sub.presence = options.presence;
        sub.announce = options.join_leave || options.force_push_join_leave;
        let gate = Gate::closed(self.out.clone());
        let subscriber = Subscriber {
            out: self.out.clone(),
            join_leave,
            positioned,
            gate: Some(gate.clone()),
        };
        self.join_channel(&req.channel, sub, subscriber).await?;
        // From here on publications wait in the gate until the reply is queued.
        let mut delivered = 0;
        if positioned {
            match self.stream_position(req, &options, &mut result).await {
                Ok(top) => delivered = top,
                Err(refusal) => {
                    // Never joined in the others' eyes (no presence, no join push yet): leave
                    // without a leave push.
                    self.leave_channel(&req.channel, false).await;
                    return Err(refusal);
                }
            }
            result.recoverable = recoverable;
            result.positioned = positioned;
        }
        self.announce_join(&req.channel).await;
        let reply = encode_reply(id, &ReplyResult::Subscribe(result));
        self.hub.metrics().messages_out(1, reply.len() as u64);
        let outcome = gate.open(reply, delivered);
        self.hub.inner.registry.ungate(&req.channel, self.key);
        if outcome == PushOutcome::Overflow {
            return Err(DisconnectCode::SLOW.into());
        }
        Ok(None)
    }

    /// Fills the stream position of a subscribe result and, when the client asks to recover,
    /// the missed publications. Returns the offset up to which publications are covered.
    async fn stream_position(
        &self,
        req: &SubscribeRequest,
        options: &NamespaceOptions,
        result: &mut SubscribeResult,
    ) -> Result<u64, Refusal> {
        let broker = &self.hub.inner.broker;
        let top = |filter: HistoryFilter| async move {
            broker
                .history(&req.channel, &filter, options.history_meta_ttl)
                .await
        };
        let mut recovered = None;
        if req.recover {
            result.was_recovering = true;
            // An empty epoch means "any epoch" (the SDKs send it when the app only knows an
            // offset, e.g. `{offset: 0, epoch: ''}`): recover from the offset in the current one.
            let epoch = if req.epoch.is_empty() {
                top(HistoryFilter {
                    limit: Some(0),
                    ..HistoryFilter::default()
                })
                .await
                .map_err(crate::hub::broker_error)?
                .position
                .epoch
            } else {
                req.epoch.clone()
            };
            let since = StreamPosition {
                offset: req.offset,
                epoch,
            };
            match top(HistoryFilter {
                since: Some(since),
                ..HistoryFilter::default()
            })
            .await
            {
                Ok(h) => {
                    // Complete when the first kept publication follows the client's offset (or
                    // nothing was missed at all).
                    let complete = h
                        .publications
                        .first()
                        .map_or(h.position.offset == req.offset, |p| {
                            p.offset == req.offset + 1
                        });
                    if complete {
                        result.publications = h.publications;
                    }
                    result.recovered = complete;
                    recovered = Some(h.position);
                }
                Err(BrokerError::UnrecoverablePosition) => result.recovered = false,
                Err(e) => return Err(crate::hub::broker_error(e).into()),
            }
            if !result.recovered && req.flag & FLAG_REJECT_UNRECOVERED != 0 {
                return Err(ErrorCode::UNRECOVERABLE_POSITION.into());
            }
        }
        let position = match recovered {
            Some(p) => p,
            None => {
                top(HistoryFilter {
                    limit: Some(0),
                    ..HistoryFilter::default()
                })
                .await
                .map_err(crate::hub::broker_error)?
                .position
            }
        };
        result.offset = position.offset;
        result.epoch = position.epoch;
        Ok(result.offset)
    }

    /// Adds presence and announces the join, for channels whose namespace wants them.
    async fn announce_join(&self, channel: &str) {
        let Some(sub) = self.subs.get(channel) else {
            return;
        };
        let info = self.info_with(sub.info.clone());
        if sub.presence {
            let ttl = self.hub.config().client.presence_ttl;
            if let Err(e) = self
                .hub
                .inner
                .presence
                .add_presence(channel, &info, ttl)
                .await
            {
                tracing::warn!(%channel, error = %e, "adding presence failed");
            }
        }
        if sub.announce {
            if let Err(e) = self.hub.inner.broker.publish_join(channel, &info).await {
                tracing::warn!(%channel, error = %e, "join announcement failed");
            }
        }
    }

    /// Adds this client to the channel's local subscribers and waits until the node's broker
    /// subscription for the channel is confirmed.
    async fn join_channel(
        &mut self,
        channel: &str,
        sub: Subscription,
        subscriber: Subscriber,
    ) -> Result<(), ErrorCode> {
        if self.subs.contains_key(channel) {
            return Ok(());
        }
        let inner = &self.hub.inner;
        inner.registry.add(channel, self.key, subscriber);
        if let Err(e) = inner.interest.acquire(&*inner.broker, channel).await {
            if inner.registry.remove(channel, self.key) {
                inner
                    .interest
                    .release(&*inner.broker, &inner.registry, channel)
                    .await;
            }
            return Err(crate::hub::broker_error(e));
        }
        self.subs.insert(channel.into(), sub);
        Ok(())
    }

    /// Ends the subscription to `channel`; with `announced`, also removes the presence entry and
    /// sends the leave push that its subscribe announced.
    async fn leave_channel(&mut self, channel: &str, announced: bool) -> bool {
        let Some(sub) = self.subs.remove(channel) else {
            return false;
        };
        let inner = &self.hub.inner;
        if inner.registry.remove(channel, self.key) {
            inner
                .interest
                .release(&*inner.broker, &inner.registry, channel)
                .await;
        }
        if announced && (sub.presence || sub.announce) {
            let info = self.info_with(sub.info);
            leave(&self.hub, channel, &info, sub.presence, sub.announce).await;
        }
        true
    }

    async fn unsubscribe(&mut self, id: u32, req: &UnsubscribeRequest) -> CommandResult {
        self.leave_channel(&req.channel, true).await;
        Ok(Some(encode_reply(id, &ReplyResult::unsubscribe())))
    }

    fn sub_refresh(&mut self, id: u32, req: &SubRefreshRequest) -> CommandResult {
        let hub = self.hub.clone();
        let Some(verifier) = hub.inner.subscription_tokens.as_ref() else {
            return Err(ErrorCode::NOT_AVAILABLE.into());
        };
        if !self.subs.contains_key(req.channel.as_str()) {
            return Err(ErrorCode::PERMISSION_DENIED.into());
        }
        let unix = unix_now();
        let claims = match verifier.verify_subscription(&req.token, unix) {
            Ok(c) => c,
            Err(TokenError::Expired) => return Err(ErrorCode::TOKEN_EXPIRED.into()),
            Err(TokenError::Invalid(reason)) => {
                return Err(self.invalid_token("subscription refresh token", &reason))
            }
        };
        if claims.channel != req.channel || claims.sub != *self.user {
            return Err(self.invalid_token(
                "subscription refresh token",
                "token is for another channel or user",
            ));
        }
        let exp = claims.expire_at.unwrap_or(claims.exp);
        let sub = self
            .subs
            .get_mut(req.channel.as_str())
            .ok_or(ErrorCode::PERMISSION_DENIED)?;
        sub.expires_at = (exp > 0).then_some(exp);
        let result = switchboard_proto::SubRefreshResult {
            expires: sub.expires_at.is_some(),
            ttl: sub.expires_at.map_or(0, |e| ttl(e, unix)),
        };
        Ok(Some(encode_reply(id, &ReplyResult::SubRefresh(result))))
    }

    async fn publish(&mut self, id: u32, req: &PublishRequest) -> CommandResult {
        let options = self.namespace(&req.channel)?;
        let Some(data) = &req.data else {
            return Err(ErrorCode::BAD_REQUEST.into());
        };
        if options.max_publish_size > 0 && data.get().len() > options.max_publish_size {
            return Err(ErrorCode::LIMIT_EXCEEDED.into());
        }
        let subscribed = self.subs.get(req.channel.as_str());
        let info = self.info_with(subscribed.and_then(|s| s.info.clone()));
        let mut data = data.clone();
        if options.proxy_publish {
            let mut body = self.proxy_body();
            body.insert("channel".into(), req.channel.clone().into());
            body.insert("data".into(), raw_to_value(&data));
            let endpoint = self.endpoint(ProxyKind::Publish, &options.publish_proxy_endpoint);
            let answer: crate::proxy::PublishResult =
                self.call_proxy(ProxyKind::Publish, &endpoint, body).await?;
            if let Some(replaced) = answer.data {
                data = replaced;
            }
        } else {
            let anonymous = self.user.is_empty();
            let allowed = options.allow_publish_for_client
                || (options.allow_publish_for_subscriber && subscribed.is_some());
            if !allowed || (anonymous && !options.allow_publish_for_anonymous) {
                return Err(ErrorCode::PERMISSION_DENIED.into());
            }
        }
        self.hub
            .publish_with(&req.channel, data, Some(info), &options)
            .await?;
        Ok(Some(encode_reply(id, &ReplyResult::publish())))
    }

    async fn rpc(&mut self, id: u32, req: &switchboard_proto::RpcRequest) -> CommandResult {
        let endpoint = self.hub.config().proxy.rpc_endpoint.clone();
        // No RPC handler at all: "not available", as Centrifugo answers (the SDKs' tests expect
        // it); a handler that does not know the method answers its own error.
        if endpoint.is_empty() {
            return Err(ErrorCode::NOT_AVAILABLE.into());
        }
        let mut body = self.proxy_body();
        body.insert("method".into(), req.method.clone().into());
        body.insert("data".into(), raw_of(req.data.as_deref()));
        let answer: crate::proxy::RpcResult =
            self.call_proxy(ProxyKind::Rpc, &endpoint, body).await?;
        let result = switchboard_proto::RpcResult { data: answer.data };
        Ok(Some(encode_reply(id, &ReplyResult::Rpc(result))))
    }

    /// Checks read access (presence or history) to `channel` given the namespace's flags.
    fn read_access(
        &self,
        channel: &str,
        enabled: impl Fn(&NamespaceOptions) -> bool,
        allowed: impl Fn(&NamespaceOptions) -> (bool, bool, bool),
    ) -> Result<NamespaceOptions, Refusal> {
        let options = self.namespace(channel)?;
        let (for_subscriber, for_client, for_anonymous) = allowed(&options);
        let subscribed = self.subs.contains_key(channel);
        let ok = (for_client || (for_subscriber && subscribed))
            && (!self.user.is_empty() || for_anonymous || subscribed && for_subscriber);
        if !ok {
            return Err(ErrorCode::PERMISSION_DENIED.into());
        }
        if !enabled(&options) {
            return Err(ErrorCode::NOT_AVAILABLE.into());
        }
        Ok(options)
    }

    fn presence_access(&self, channel: &str) -> Result<NamespaceOptions, Refusal> {
        self.read_access(
            channel,
            |o| o.presence,
            |o| {
                (
                    o.allow_presence_for_subscriber,
                    o.allow_presence_for_client,
                    o.allow_presence_for_anonymous,
                )
            },
        )
    }

    async fn presence(&self, id: u32, channel: &str) -> CommandResult {
        self.presence_access(channel)?;
        let presence = self
            .hub
            .inner
            .presence
            .presence(channel)
            .await
            .map_err(crate::hub::broker_error)?;
        let result = switchboard_proto::PresenceResult { presence };
        Ok(Some(encode_reply(id, &ReplyResult::Presence(result))))
    }

    async fn presence_stats(&self, id: u32, channel: &str) -> CommandResult {
        self.presence_access(channel)?;
        let stats = self
            .hub
            .inner
            .presence
            .presence_stats(channel)
            .await
            .map_err(crate::hub::broker_error)?;
        let result = switchboard_proto::PresenceStatsResult {
            num_clients: stats.num_clients,
            num_users: stats.num_users,
        };
        Ok(Some(encode_reply(id, &ReplyResult::PresenceStats(result))))
    }

    async fn history(&self, id: u32, req: &switchboard_proto::HistoryRequest) -> CommandResult {
        let options = self.history_access(&req.channel)?;
        let filter = HistoryFilter {
            since: req.since.clone(),
            limit: usize::try_from(req.limit).ok(),
            reverse: req.reverse,
        };
        let h = self
            .hub
            .inner
            .broker
            .history(&req.channel, &filter, options.history_meta_ttl)
            .await
            .map_err(crate::hub::broker_error)?;
        let result = switchboard_proto::HistoryResult {
            publications: h.publications,
            epoch: h.position.epoch,
            offset: h.position.offset,
        };
        Ok(Some(encode_reply(id, &ReplyResult::History(result))))
    }

    fn history_access(&self, channel: &str) -> Result<NamespaceOptions, Refusal> {
        self.read_access(
            channel,
            |o| o.history_size > 0 && !o.history_ttl.is_zero(),
            |o| {
                (
                    o.allow_history_for_subscriber,
                    o.allow_history_for_client,
                    o.allow_history_for_anonymous,
                )
            },
        )
    }

    /// Applies control requests queued by the server API (see [`Control`]).
    pub async fn apply_controls(&mut self) -> Result<(), DisconnectCode> {
        for control in self.out.take_controls() {
            match control {
                Control::Subscribe { channel, info } => {
                    match self.server_side_subscribe(&channel, info).await {
                        Ok(true) => {
                            self.push(switchboard_proto::encode_subscribe_push(&channel))?
                        }
                        Ok(false) => {}
                        Err(e) => {
                            tracing::warn!(client = %self.id, %channel, error = %e, "server subscribe failed")
                        }
                    }
                }
                Control::Unsubscribe { channel } => {
                    if self.leave_channel(&channel, true).await {
                        self.push(encode_unsubscribe_push(
                            &channel,
                            UNSUBSCRIBE_SERVER,
                            "server unsubscribe",
                        ))?;
                    }
                }
                Control::Refresh { expire_at } => self.expires_at = expire_at,
                Control::InsufficientState { channel } => {
                    if self.leave_channel(&channel, true).await {
                        self.push(encode_unsubscribe_push(
                            &channel,
                            UNSUBSCRIBE_INSUFFICIENT_STATE,
                            "insufficient state",
                        ))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Subscribes without permission checks (token `channels` claim, server API), with the
    /// namespace's presence and join/leave.
    async fn server_side_subscribe(
        &mut self,
        channel: &str,
        info: Option<Box<RawValue>>,
    ) -> Result<bool, ErrorCode> {
        let options = self.namespace(channel)?;
        if self.subs.contains_key(channel) {
            return Ok(false);
        }
        if self.subs.len() >= self.hub.config().client.max_channels {
            return Err(ErrorCode::LIMIT_EXCEEDED);
        }
        let sub = Subscription {
            info,
            presence: options.presence,
            announce: options.join_leave || options.force_push_join_leave,
            ..Subscription::default()
        };
        let subscriber = Subscriber {
            out: self.out.clone(),
            join_leave: options.force_push_join_leave,
            positioned: false,
            gate: None,
        };
        self.join_channel(channel, sub, subscriber).await?;
        self.announce_join(channel).await;
        Ok(true)
    }

    /// When an expiry at `expires_at` (unix seconds) needs attention on the monotonic clock:
    /// right at expiry when a proxy can refresh it, else after the grace period the client has to
    /// refresh by itself.
    fn expiry_deadline(&self, expires_at: u64, by_proxy: bool, now: Instant) -> Instant {
        let mut due = UNIX_EPOCH + Duration::from_secs(expires_at);
        if !by_proxy {
            due += self.hub.config().client.expired_close_delay;
        }
        // Measured against the wall clock with sub-second precision, so that the check in
        // `on_timer` (whole seconds) holds when the timer fires.
        now + due.duration_since(SystemTime::now()).unwrap_or_default()
    }

    /// Whether the refresh proxy extends this connection's expiry.
    fn refresh_by_proxy(&self) -> bool {
        !self.refresh_proxy_failed && !self.hub.config().proxy.refresh_endpoint.is_empty()
    }

    /// Whether the sub_refresh proxy extends this subscription's expiry.
    fn sub_refresh_by_proxy(&self, channel: &str, sub: &Subscription) -> bool {
        !sub.refresh_proxy_failed
            && self
                .hub
                .inner
                .namespaces
                .resolve(channel)
                .is_ok_and(|o| o.proxy_sub_refresh)
    }

    /// When [`Client::on_timer`] should next be called.
    pub fn next_deadline(&self) -> Instant {
        if !self.connected {
            return self.created + self.hub.config().client.handshake_timeout;
        }
        let now = Instant::now();
        let connection = self
            .expires_at
            .map(|e| self.expiry_deadline(e, self.refresh_by_proxy(), now));
        let subscriptions = self.subs.iter().filter_map(|(channel, sub)| {
            sub.expires_at
                .map(|e| self.expiry_deadline(e, self.sub_refresh_by_proxy(channel, sub), now))
        });
        let presence = self
            .subs
            .values()
            .any(|s| s.presence)
            .then_some(self.next_presence_update);
        self.next_ping
            .into_iter()
            .chain(self.pong_deadline)
            .chain(presence)
            .chain(connection)
            .chain(subscriptions)
            .min()
            // Nothing scheduled: far in the future.
            .unwrap_or(now + Duration::from_secs(86_400 * 365))
    }

    /// Runs the timers due at `now`: the handshake timeout, pings, the pong deadline and token
    /// expiry (asking the refresh proxies when configured).
    pub async fn on_timer(&mut self, now: Instant) -> Result<(), DisconnectCode> {
        if !self.connected {
            if now >= self.created + self.hub.config().client.handshake_timeout {
                return Err(DisconnectCode::STALE);
            }
            return Ok(());
        }
        if self.pong_deadline.is_some_and(|d| now >= d) {
            return Err(DisconnectCode::NO_PONG);
        }
        self.check_connection_expiry().await?;
        self.check_subscription_expiry().await?;
        if now >= self.next_presence_update {
            self.refresh_presence().await;
            self.next_presence_update = now + self.hub.config().client.presence_update_interval;
        }
        if let Some(next) = self.next_ping {
            if now >= next {
                let config = &self.hub.config().client;
                self.push(Bytes::from_static(PING_FRAME))?;
                self.next_ping = Some(now + config.ping_interval);
                if self.transport.bidirectional
                    && !config.pong_timeout.is_zero()
                    && self.pong_deadline.is_none()
                {
                    self.pong_deadline = Some(now + config.pong_timeout);
                }
            }
        }
        Ok(())
    }

    /// Refreshes this client's presence entries before they expire.
    async fn refresh_presence(&self) {
        let ttl = self.hub.config().client.presence_ttl;
        for (channel, sub) in self.subs.iter().filter(|(_, s)| s.presence) {
            let info = self.info_with(sub.info.clone());
            if let Err(e) = self
                .hub
                .inner
                .presence
                .add_presence(channel, &info, ttl)
                .await
            {
                tracing::warn!(%channel, error = %e, "refreshing presence failed");
            }
        }
    }

    async fn check_connection_expiry(&mut self) -> Result<(), DisconnectCode> {
        let unix = unix_now();
        let Some(expires_at) = self.expires_at.filter(|&e| e <= unix) else {
            return Ok(());
        };
        if self.refresh_by_proxy() {
            let endpoint = self.hub.config().proxy.refresh_endpoint.clone();
            let body = self.proxy_body();
            match self
                .call_proxy::<crate::proxy::RefreshResult>(ProxyKind::Refresh, &endpoint, body)
                .await
            {
                Ok(r) if r.expired => return Err(DisconnectCode::EXPIRED),
                Ok(r) => {
                    self.expires_at = (r.expire_at > 0).then_some(r.expire_at);
                    if let Some(info) = info_from(r.info, &r.b64info) {
                        self.conn_info = Some(info);
                    }
                    return Ok(());
                }
                Err(Refusal::Disconnect(code)) => return Err(code),
                // Give the client the grace period to refresh by itself.
                Err(_) => self.refresh_proxy_failed = true,
            }
        }
        let grace = self.hub.config().client.expired_close_delay.as_secs();
        if expires_at + grace <= unix {
            return Err(DisconnectCode::EXPIRED);
        }
        Ok(())
    }

    async fn check_subscription_expiry(&mut self) -> Result<(), DisconnectCode> {
        let unix = unix_now();
        let grace = self.hub.config().client.expired_close_delay.as_secs();
        let due: Vec<Box<str>> = self
            .subs
            .iter()
            .filter(|(_, s)| s.expires_at.is_some_and(|e| e <= unix))
            .map(|(c, _)| c.clone())
            .collect();
        for channel in due {
            let by_proxy = self
                .subs
                .get(&channel)
                .is_some_and(|s| self.sub_refresh_by_proxy(&channel, s));
            if by_proxy {
                let endpoint = self
                    .namespace(&channel)
                    .map(|o| self.endpoint(ProxyKind::SubRefresh, &o.sub_refresh_proxy_endpoint))
                    .unwrap_or_default();
                let mut body = self.proxy_body();
                body.insert("channel".into(), channel.to_string().into());
                let answer = self
                    .call_proxy::<crate::proxy::RefreshResult>(
                        ProxyKind::SubRefresh,
                        &endpoint,
                        body,
                    )
                    .await;
                let Some(sub) = self.subs.get_mut(&channel) else {
                    continue;
                };
                match answer {
                    Ok(r) if !r.expired => {
                        sub.expires_at = (r.expire_at > 0).then_some(r.expire_at);
                        if let Some(info) = info_from(r.info, &r.b64info) {
                            sub.info = Some(info);
                        }
                        continue;
                    }
                    Ok(_) => sub.expires_at = Some(0),
                    Err(Refusal::Disconnect(code)) => return Err(code),
                    Err(_) => sub.refresh_proxy_failed = true,
                }
            }
            let expired = self
                .subs
                .get(&channel)
                .and_then(|s| s.expires_at)
                .is_some_and(|e| e + grace <= unix || e == 0);
            if expired {
                self.subs.remove(&channel);
                if self.hub.inner.registry.remove(&channel, self.key) {
                    self.hub.spawn_broker_unsubscribe(vec![channel.to_string()]);
                }
                self.push(encode_unsubscribe_push(
                    &channel,
                    UNSUBSCRIBE_EXPIRED,
                    "subscription expired",
                ))?;
            }
        }
        Ok(())
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
        let registry = &self.hub.inner.registry;
        let emptied: Vec<String> = self
            .subs
            .keys()
            .filter(|channel| registry.remove(channel, self.key))
            .map(|c| c.to_string())
            .collect();
        self.hub.unregister_client(self.key);
        self.hub.inner.metrics.connection_closed();
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
