//! Typed application handlers: deciding connects, subscribes, publishes, RPC calls and refreshes
//! in Rust, in the same process, instead of (or next to) the HTTP proxies.
//!
//! The hub asks a [`Handlers`] implementation (installed with [`Hub::set_handlers`]) wherever it
//! would otherwise apply the configuration's permissions: a handler decides with the same
//! semantics, error codes and disconnect codes as the corresponding proxy. Per call, the order
//! is: a namespace's HTTP proxy when one is configured for it, else the handler when it
//! [covers](Handlers::covers) the call, else the configuration.
//!
//! Every call is guarded: a handler that panics or does not answer within
//! [`Handlers::timeout`] is answered to the client as error 100 (temporary), logged, and the node
//! goes on. Notifications (subscribed, unsubscribed, disconnected) run in their own tasks and
//! never delay the connection.
//!
//! [`Hub::set_handlers`]: crate::Hub::set_handlers

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::FutureExt as _;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;
use switchboard_proto::{DisconnectCode, ErrorCode};

/// Client data as raw JSON text, passed through byte for byte.
///
/// ```
/// use switchboard_hub::handlers::Data;
///
/// #[derive(serde::Deserialize, serde::Serialize)]
/// struct Message {
///     text: String,
/// }
///
/// let data = Data::json(&Message { text: "hi".into() }).unwrap();
/// assert_eq!(data.get(), r#"{"text":"hi"}"#);
/// let back: Message = data.decode().unwrap();
/// assert_eq!(back.text, "hi");
/// assert!(Data::parse("not json").is_err());
/// ```
#[derive(Debug, Clone)]
pub struct Data(Box<RawValue>);

/// Equal when the JSON text is the same (byte for byte).
impl PartialEq for Data {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl Eq for Data {}

impl Data {
    /// Serialises `value` as JSON.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        serde_json::value::to_raw_value(value).map(Self)
    }

    /// Checks that `text` is one JSON value and keeps it as it is.
    pub fn parse(text: impl Into<String>) -> Result<Self, serde_json::Error> {
        RawValue::from_string(text.into()).map(Self)
    }

    /// Wraps JSON text already held as a [`RawValue`].
    pub fn from_raw(raw: Box<RawValue>) -> Self {
        Self(raw)
    }

    /// Deserialises the data; data of another shape is a [`Rejection`] with error 107 "bad
    /// request", so a handler can write `let msg: Message = req.data.decode()?;`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, Rejection> {
        serde_json::from_str(self.0.get()).map_err(|_| ErrorCode::BAD_REQUEST.into())
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// The JSON text as a [`RawValue`].
    pub fn into_raw(self) -> Box<RawValue> {
        self.0
    }
}

/// A handler's refusal: an error reply to the command, or the end of the connection.
///
/// ```
/// use switchboard_hub::handlers::Rejection;
/// use switchboard_proto::{DisconnectCode, ErrorCode};
///
/// let denied: Rejection = ErrorCode::PERMISSION_DENIED.into();
/// let custom = Rejection::error(4001, "nickname taken");
/// let kicked: Rejection = DisconnectCode::application(4500, "banned").unwrap().into();
/// # let _ = (denied, custom, kicked);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// The command fails with this error; the connection stays.
    Error {
        /// Error code (the protocol's 100..=112, or the application's own, e.g. 1000 and up).
        code: u32,
        /// Message the client sees.
        message: String,
        /// Whether the client may retry (the SDKs retry temporary subscribe errors).
        temporary: bool,
    },
    /// The connection is closed with this code (see [`DisconnectCode::application`] for the
    /// application's own 4000..=4999 codes).
    Disconnect(DisconnectCode),
}

impl Rejection {
    /// A permanent error with the application's own code and message.
    pub fn error(code: u32, message: impl Into<String>) -> Self {
        Self::Error {
            code,
            message: message.into(),
            temporary: false,
        }
    }

    /// A temporary error (the client may retry) with the application's own code and message.
    pub fn temporary(code: u32, message: impl Into<String>) -> Self {
        Self::Error {
            code,
            message: message.into(),
            temporary: true,
        }
    }
}

impl From<ErrorCode> for Rejection {
    fn from(e: ErrorCode) -> Self {
        Self::Error {
            code: e.code,
            message: e.message.to_string(),
            temporary: e.temporary,
        }
    }
}

/// Data that does not serialise (a handler's own reply data): error 100, logged.
impl From<serde_json::Error> for Rejection {
    fn from(e: serde_json::Error) -> Self {
        tracing::error!(error = %e, "handler data does not serialise");
        ErrorCode::INTERNAL.into()
    }
}

impl From<DisconnectCode> for Rejection {
    fn from(d: DisconnectCode) -> Self {
        Self::Disconnect(d)
    }
}

/// What a handler returns.
pub type HandlerResult<T> = Result<T, Rejection>;

/// Which decision or notification a handler call is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HandlerKind {
    /// A connection asks to connect ([`Handlers::connect`]).
    Connect,
    /// A connection's expiry is reached ([`Handlers::refresh`]).
    Refresh,
    /// A client subscribes ([`Handlers::subscribe`]).
    Subscribe,
    /// A client publishes ([`Handlers::publish`]).
    Publish,
    /// A subscription's expiry is reached ([`Handlers::sub_refresh`]).
    SubRefresh,
    /// A client calls a method ([`Handlers::rpc`]).
    Rpc,
    /// A subscription started ([`Handlers::subscribed`]).
    Subscribed,
    /// A subscription ended ([`Handlers::unsubscribed`]).
    Unsubscribed,
    /// A connection ended ([`Handlers::disconnected`]).
    Disconnected,
}

impl HandlerKind {
    /// Name used in logs.
    pub fn name(self) -> &'static str {
        match self {
            HandlerKind::Connect => "connect",
            HandlerKind::Refresh => "refresh",
            HandlerKind::Subscribe => "subscribe",
            HandlerKind::Publish => "publish",
            HandlerKind::SubRefresh => "sub_refresh",
            HandlerKind::Rpc => "rpc",
            HandlerKind::Subscribed => "subscribed",
            HandlerKind::Unsubscribed => "unsubscribed",
            HandlerKind::Disconnected => "disconnected",
        }
    }
}

/// Who is calling: the connection a handler decides for.
#[derive(Debug, Clone)]
pub struct ClientContext {
    pub(crate) client: Arc<str>,
    pub(crate) user: Arc<str>,
    pub(crate) transport: &'static str,
    pub(crate) headers: Arc<[(String, String)]>,
    pub(crate) conn_info: Option<Data>,
    pub(crate) meta: Option<Data>,
}

impl ClientContext {
    /// The connection's client id (a UUID, as in the connect reply).
    pub fn client_id(&self) -> &str {
        &self.client
    }

    /// The user id; empty before connect and for anonymous connections.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The transport's name: `websocket`, `http_stream`, `sse`, `uni_websocket`,
    /// `uni_http_stream`, `uni_sse` or `socketio` (the same name proxies get in `transport`).
    pub fn transport(&self) -> &'static str {
        self.transport
    }

    /// A header of the connection request (case-insensitive name). Kept are `Cookie`,
    /// `Authorization`, `Origin`, `User-Agent`, `X-Forwarded-For` and `proxy.http_headers`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The connection's info (from its token or the connect decision), shown to others in
    /// presence and publications.
    pub fn conn_info(&self) -> Option<&Data> {
        self.conn_info.as_ref()
    }

    /// Server-side metadata set by the connect decision (or the token's `meta` claim).
    pub fn meta(&self) -> Option<&Data> {
        self.meta.as_ref()
    }
}

/// A connection asks to connect.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectRequest {
    /// The token the client sent, when token authentication is not configured (the handler
    /// checks it itself); empty otherwise.
    pub token: String,
    /// Client name (SDK option `name`).
    pub name: String,
    /// Client version (SDK option `version`).
    pub version: String,
    /// Client data sent with connect (SDK option `data`).
    pub data: Option<Data>,
}

/// Accepts a connection.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ConnectReply {
    /// The user id; empty = anonymous.
    pub user: String,
    /// Connection info, attached to its publications and presence.
    pub info: Option<Data>,
    /// Data sent to the client in the connect reply.
    pub data: Option<Data>,
    /// Channels the connection is subscribed to at once (server-side subscriptions).
    pub channels: Vec<String>,
    /// When the connection expires (unix seconds); `None` = never.
    pub expire_at: Option<u64>,
    /// Server-side metadata, passed to later handlers and proxies, never to clients.
    pub meta: Option<Data>,
}

impl ConnectReply {
    /// Accepts the connection as `user` (empty = anonymous).
    pub fn user(user: impl Into<String>) -> Self {
        Self {
            user: user.into(),
            ..Self::default()
        }
    }

    /// Sets the connection info.
    pub fn with_info(mut self, info: Data) -> Self {
        self.info = Some(info);
        self
    }

    /// Sets the data of the connect reply.
    pub fn with_data(mut self, data: Data) -> Self {
        self.data = Some(data);
        self
    }

    /// Adds a server-side subscription.
    pub fn with_channel(mut self, channel: impl Into<String>) -> Self {
        self.channels.push(channel.into());
        self
    }

    /// Sets the expiry (unix seconds).
    pub fn with_expire_at(mut self, unix: u64) -> Self {
        self.expire_at = Some(unix);
        self
    }

    /// Sets the server-side metadata.
    pub fn with_meta(mut self, meta: Data) -> Self {
        self.meta = Some(meta);
        self
    }
}

/// A client asks to subscribe.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SubscribeRequest {
    /// The channel.
    pub channel: String,
    /// Data sent with the subscribe command (SDK subscription option `data`).
    pub data: Option<Data>,
}

/// Accepts a subscription.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct SubscribeReply {
    /// Channel info of this subscriber, attached to its publications, presence and joins.
    pub info: Option<Data>,
    /// Data sent to the client in the subscribe reply.
    pub data: Option<Data>,
    /// When the subscription expires (unix seconds); `None` = never.
    pub expire_at: Option<u64>,
}

impl SubscribeReply {
    /// Accepts the subscription.
    pub fn accept() -> Self {
        Self::default()
    }

    /// Sets the channel info.
    pub fn with_info(mut self, info: Data) -> Self {
        self.info = Some(info);
        self
    }

    /// Sets the data of the subscribe reply.
    pub fn with_data(mut self, data: Data) -> Self {
        self.data = Some(data);
        self
    }

    /// Sets the expiry (unix seconds).
    pub fn with_expire_at(mut self, unix: u64) -> Self {
        self.expire_at = Some(unix);
        self
    }
}

/// A client publishes.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PublishRequest {
    /// The channel.
    pub channel: String,
    /// The publication's data.
    pub data: Data,
}

/// Allows a publication, as sent or with other data.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct PublishReply {
    /// Data published instead of the client's.
    pub data: Option<Data>,
}

impl PublishReply {
    /// Publishes the client's data as it is.
    pub fn accept() -> Self {
        Self::default()
    }

    /// Publishes `data` instead of the client's.
    pub fn replace(data: Data) -> Self {
        Self { data: Some(data) }
    }
}

/// A client calls a method.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RpcRequest {
    /// The method name.
    pub method: String,
    /// The call's data.
    pub data: Option<Data>,
}

/// The answer to an RPC call.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RpcReply {
    /// Data sent back to the caller.
    pub data: Option<Data>,
}

impl RpcReply {
    /// Answers with `data`.
    pub fn data(data: Data) -> Self {
        Self { data: Some(data) }
    }

    /// Answers with no data.
    pub fn empty() -> Self {
        Self::default()
    }
}

/// The answer to a connection or subscription refresh.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RefreshReply {
    /// The new expiry (unix seconds); `None` = never expires.
    pub expire_at: Option<u64>,
    /// New info (connection info for a refresh, channel info for a sub_refresh).
    pub info: Option<Data>,
    /// Ends it now: the connection is closed with 3005, the subscription is ended with an
    /// `unsubscribe` push (code 2501).
    pub expired: bool,
}

impl RefreshReply {
    /// Extends until `unix` (seconds).
    pub fn until(unix: u64) -> Self {
        Self {
            expire_at: Some(unix),
            ..Self::default()
        }
    }

    /// Ends the connection or subscription.
    pub fn expired() -> Self {
        Self {
            expired: true,
            ..Self::default()
        }
    }

    /// Sets the new info.
    pub fn with_info(mut self, info: Data) -> Self {
        self.info = Some(info);
        self
    }
}

/// The application's decisions, in Rust. Every method has a default; the hub calls a method only
/// when [`Handlers::covers`] says so (and no HTTP proxy is configured for that call), so
/// implement `covers` together with the methods you implement.
///
/// Decisions (connect, subscribe, publish, rpc, refresh, sub_refresh) run in the connection's
/// order of commands, except `rpc`, which runs beside the connection's other commands (see
/// docs/EMBEDDING.md). Notifications run in tasks of their own.
#[async_trait]
pub trait Handlers: Send + Sync + 'static {
    /// Whether this implementation decides `kind`; `channel` is the channel for the channel
    /// kinds (subscribe, publish, sub_refresh and the notifications), `None` otherwise.
    fn covers(&self, kind: HandlerKind, channel: Option<&str>) -> bool;

    /// Time limit of one call; past it the client gets error 100 (temporary).
    fn timeout(&self) -> Duration {
        Duration::from_secs(1)
    }

    /// Decides a connect: accept as a user, refuse with an error (the client gets the error
    /// and the connection is closed with it, as for the connect proxy), or disconnect.
    async fn connect(
        &self,
        ctx: ClientContext,
        req: ConnectRequest,
    ) -> HandlerResult<ConnectReply> {
        let _ = (ctx, req);
        Err(ErrorCode::NOT_AVAILABLE.into())
    }

    /// Decides a subscribe (replaces the namespace's allow_subscribe options).
    async fn subscribe(
        &self,
        ctx: ClientContext,
        req: SubscribeRequest,
    ) -> HandlerResult<SubscribeReply> {
        let _ = (ctx, req);
        Err(ErrorCode::NOT_AVAILABLE.into())
    }

    /// Decides a publish (replaces the namespace's allow_publish options); may replace the data.
    async fn publish(
        &self,
        ctx: ClientContext,
        req: PublishRequest,
    ) -> HandlerResult<PublishReply> {
        let _ = (ctx, req);
        Err(ErrorCode::NOT_AVAILABLE.into())
    }

    /// Answers an RPC call.
    async fn rpc(&self, ctx: ClientContext, req: RpcRequest) -> HandlerResult<RpcReply> {
        let _ = (ctx, req);
        Err(ErrorCode::NOT_AVAILABLE.into())
    }

    /// Extends (or ends) a connection whose expiry is reached.
    async fn refresh(&self, ctx: ClientContext) -> HandlerResult<RefreshReply> {
        let _ = ctx;
        Err(ErrorCode::NOT_AVAILABLE.into())
    }

    /// Extends (or ends) a subscription whose expiry is reached.
    async fn sub_refresh(
        &self,
        ctx: ClientContext,
        channel: String,
    ) -> HandlerResult<RefreshReply> {
        let _ = (ctx, channel);
        Err(ErrorCode::NOT_AVAILABLE.into())
    }

    /// A subscription started (client subscribe or server-side).
    async fn subscribed(&self, ctx: ClientContext, channel: String) {
        let _ = (ctx, channel);
    }

    /// A subscription ended (unsubscribe, server unsubscribe, expiry or disconnect).
    async fn unsubscribed(&self, ctx: ClientContext, channel: String) {
        let _ = (ctx, channel);
    }

    /// A connected client's connection ended; `code` is why (3000 "connection closed" when the
    /// client went away).
    async fn disconnected(&self, ctx: ClientContext, code: DisconnectCode) {
        let _ = (ctx, code);
    }
}

/// Runs a handler call with the handler's time limit; a panic or a timeout is error 100
/// (temporary), logged.
pub(crate) async fn guarded<T>(
    kind: HandlerKind,
    timeout: Duration,
    call: impl Future<Output = HandlerResult<T>>,
) -> HandlerResult<T> {
    match tokio::time::timeout(timeout, AssertUnwindSafe(call).catch_unwind()).await {
        Ok(Ok(result)) => result,
        Ok(Err(panic)) => {
            tracing::error!(handler = kind.name(), panic = %panic_message(&*panic), "handler panicked");
            Err(ErrorCode::INTERNAL.into())
        }
        Err(_) => {
            tracing::warn!(handler = kind.name(), ?timeout, "handler timed out");
            Err(ErrorCode::INTERNAL.into())
        }
    }
}

/// Runs a notification in a task of its own, guarded like [`guarded`].
pub(crate) fn notify(
    handlers: &Arc<dyn Handlers>,
    kind: HandlerKind,
    call: impl FnOnce(Arc<dyn Handlers>) -> futures_util::future::BoxFuture<'static, ()>,
) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let timeout = handlers.timeout();
    let run = call(handlers.clone());
    rt.spawn(guarded(kind, timeout, run.map(Ok::<(), Rejection>)));
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn panics_and_timeouts_are_temporary_errors() {
        let panicking = guarded(HandlerKind::Rpc, Duration::from_secs(1), async {
            if true {
                panic!("boom");
            }
            Ok(())
        });
        assert_eq!(panicking.await, Err(ErrorCode::INTERNAL.into()));
        let slow = guarded(HandlerKind::Rpc, Duration::from_millis(10), async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(())
        });
        assert_eq!(slow.await, Err(ErrorCode::INTERNAL.into()));
        let fine = guarded(HandlerKind::Rpc, Duration::from_secs(1), async { Ok(7) });
        assert_eq!(fine.await, Ok(7));
    }

    #[test]
    fn decode_errors_are_bad_requests() {
        let data = Data::parse("[1,2]").unwrap();
        assert_eq!(data.decode::<Vec<u8>>().unwrap(), vec![1, 2]);
        assert_eq!(
            data.decode::<String>().unwrap_err(),
            ErrorCode::BAD_REQUEST.into()
        );
    }
}
