//! The server API methods: request shapes, and the hub calls behind them.

use std::collections::HashMap;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use switchboard_hub::{HistoryFilter, Hub, PublishParams};
use switchboard_proto::{DisconnectCode, ErrorCode, StreamPosition};

use crate::glob::glob_match;

/// Every server API method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Method {
    /// Publish into a channel.
    Publish,
    /// Publish the same data into several channels.
    Broadcast,
    /// Subscribe a user's connections to a channel.
    Subscribe,
    /// Unsubscribe a user's connections from a channel.
    Unsubscribe,
    /// Disconnect a user's connections.
    Disconnect,
    /// Set or clear the expiry of a user's connections.
    Refresh,
    /// Who is in a channel.
    Presence,
    /// How many clients and users are in a channel.
    PresenceStats,
    /// A channel's history.
    History,
    /// Remove a channel's history.
    HistoryRemove,
    /// Active channels.
    Channels,
    /// Nodes and their statistics.
    Info,
    /// Several commands in one request.
    Batch,
}

impl Method {
    /// Parses a method name as used in the URL (`/api/presence_stats`).
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "publish" => Self::Publish,
            "broadcast" => Self::Broadcast,
            "subscribe" => Self::Subscribe,
            "unsubscribe" => Self::Unsubscribe,
            "disconnect" => Self::Disconnect,
            "refresh" => Self::Refresh,
            "presence" => Self::Presence,
            "presence_stats" => Self::PresenceStats,
            "history" => Self::History,
            "history_remove" => Self::HistoryRemove,
            "channels" => Self::Channels,
            "info" => Self::Info,
            "batch" => Self::Batch,
            _ => return None,
        })
    }
}

type MethodResult = Result<Value, ErrorCode>;

fn error_value(code: ErrorCode) -> Value {
    let mut e = json!({"code": code.code, "message": code.message});
    if code.temporary {
        e["temporary"] = Value::Bool(true);
    }
    e
}

/// Runs `method` with `params`; returns `{"result": ..}` or `{"error": ..}`, except `batch`,
/// whose `{"replies": [..]}` is the top-level answer (as Centrifugo's, which `cent` expects).
pub(super) async fn dispatch(hub: &Hub, method: Method, params: Value) -> Value {
    match run(hub, method, params).await {
        Ok(result) if method == Method::Batch => result,
        Ok(result) => json!({ "result": result }),
        Err(code) => json!({ "error": error_value(code) }),
    }
}

fn parse<T: for<'de> Deserialize<'de>>(params: Value) -> Result<T, ErrorCode> {
    serde_json::from_value(params).map_err(|_| ErrorCode::BAD_REQUEST)
}

async fn run(hub: &Hub, method: Method, params: Value) -> MethodResult {
    match method {
        Method::Publish => publish(hub, parse(params)?).await,
        Method::Broadcast => broadcast(hub, parse(params)?).await,
        Method::Subscribe => subscribe(hub, parse(params)?).await,
        Method::Unsubscribe => unsubscribe(hub, parse(params)?).await,
        Method::Disconnect => disconnect(hub, parse(params)?).await,
        Method::Refresh => refresh(hub, parse(params)?).await,
        Method::Presence => {
            let req: ChannelRequest = parse(params)?;
            require_channel(&req.channel)?;
            let presence = hub.presence(&req.channel).await?;
            Ok(json!({ "presence": presence }))
        }
        Method::PresenceStats => {
            let req: ChannelRequest = parse(params)?;
            require_channel(&req.channel)?;
            let stats = hub.presence_stats(&req.channel).await?;
            Ok(json!({ "num_clients": stats.num_clients, "num_users": stats.num_users }))
        }
        Method::History => history(hub, parse(params)?).await,
        Method::HistoryRemove => {
            let req: ChannelRequest = parse(params)?;
            require_channel(&req.channel)?;
            hub.remove_history(&req.channel).await?;
            Ok(json!({}))
        }
        Method::Channels => channels(hub, parse(params)?),
        Method::Info => Ok(json!({ "nodes": hub.nodes() })),
        Method::Batch => Box::pin(batch(hub, parse(params)?)).await,
    }
}

fn require_channel(channel: &str) -> Result<(), ErrorCode> {
    if channel.is_empty() {
        return Err(ErrorCode::BAD_REQUEST);
    }
    Ok(())
}

/// `publish` parameters.
#[derive(Debug, Deserialize)]
struct PublishRequest {
    #[serde(default)]
    channel: String,
    data: Option<Box<RawValue>>,
    #[serde(default)]
    b64data: String,
    #[serde(default)]
    skip_history: bool,
    #[serde(default)]
    tags: HashMap<String, String>,
    #[serde(default)]
    idempotency_key: String,
}

/// The publication's data: `data`, or `b64data` when it decodes to JSON (JSON clients cannot
/// receive arbitrary bytes).
fn payload(data: Option<Box<RawValue>>, b64data: &str) -> Result<Box<RawValue>, ErrorCode> {
    if let Some(d) = data {
        return Ok(d);
    }
    if b64data.is_empty() {
        return Err(ErrorCode::BAD_REQUEST);
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64data)
        .map_err(|_| ErrorCode::BAD_REQUEST)?;
    let text = String::from_utf8(bytes).map_err(|_| ErrorCode::BAD_REQUEST)?;
    RawValue::from_string(text).map_err(|_| ErrorCode::BAD_REQUEST)
}

async fn publish(hub: &Hub, req: PublishRequest) -> MethodResult {
    require_channel(&req.channel)?;
    let data = payload(req.data, &req.b64data)?;
    let mut params = PublishParams::default();
    params.tags = req.tags;
    params.skip_history = req.skip_history;
    params.idempotency_key = non_empty(&req.idempotency_key).map(str::to_string);
    let position = hub.publish_with_params(&req.channel, data, params).await?;
    Ok(position_value(position.offset, &position.epoch))
}

/// `history` parameters.
#[derive(Debug, Deserialize)]
struct HistoryRequest {
    #[serde(default)]
    channel: String,
    #[serde(default)]
    limit: i64,
    since: Option<StreamPosition>,
    #[serde(default)]
    reverse: bool,
}

async fn history(hub: &Hub, req: HistoryRequest) -> MethodResult {
    require_channel(&req.channel)?;
    let mut filter = HistoryFilter::default();
    filter.since = req.since;
    filter.limit = usize::try_from(req.limit).ok();
    filter.reverse = req.reverse;
    let h = hub.history(&req.channel, &filter).await?;
    let mut result = json!({ "publications": h.publications });
    if h.position.offset > 0 {
        result["offset"] = json!(h.position.offset);
    }
    if !h.position.epoch.is_empty() {
        result["epoch"] = json!(h.position.epoch);
    }
    Ok(result)
}

fn position_value(offset: u64, epoch: &str) -> Value {
    let mut v = json!({});
    if offset > 0 {
        v["offset"] = json!(offset);
    }
    if !epoch.is_empty() {
        v["epoch"] = json!(epoch);
    }
    v
}

/// `broadcast` parameters.
#[derive(Debug, Deserialize)]
struct BroadcastRequest {
    #[serde(default)]
    channels: Vec<String>,
    data: Option<Box<RawValue>>,
    #[serde(default)]
    b64data: String,
    #[serde(default)]
    skip_history: bool,
    #[serde(default)]
    tags: HashMap<String, String>,
    #[serde(default)]
    idempotency_key: String,
}

async fn broadcast(hub: &Hub, req: BroadcastRequest) -> MethodResult {
    if req.channels.is_empty() {
        return Err(ErrorCode::BAD_REQUEST);
    }
    let data = payload(req.data, &req.b64data)?;
    let mut responses = Vec::with_capacity(req.channels.len());
    for channel in &req.channels {
        let mut params = PublishParams::default();
        params.tags = req.tags.clone();
        params.skip_history = req.skip_history;
        params.idempotency_key = non_empty(&req.idempotency_key).map(str::to_string);
        let published = hub.publish_with_params(channel, data.clone(), params).await;
        responses.push(match published {
            Ok(p) => json!({ "result": position_value(p.offset, &p.epoch) }),
            Err(code) => json!({ "error": error_value(code) }),
        });
    }
    Ok(json!({ "responses": responses }))
}

/// `subscribe` / `unsubscribe` parameters.
#[derive(Debug, Deserialize)]
struct UserChannelRequest {
    #[serde(default)]
    user: String,
    #[serde(default)]
    channel: String,
    #[serde(default)]
    client: String,
    info: Option<Box<RawValue>>,
    #[serde(default)]
    b64info: String,
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// The user the call acts on: required, so that a missing or misspelled field cannot act on
/// every anonymous connection.
fn require_user(user: &str) -> Result<(), ErrorCode> {
    if user.is_empty() {
        return Err(ErrorCode::BAD_REQUEST);
    }
    Ok(())
}

async fn subscribe(hub: &Hub, req: UserChannelRequest) -> MethodResult {
    require_user(&req.user)?;
    require_channel(&req.channel)?;
    hub.check_channel(&req.channel)?;
    let info = match (req.info, req.b64info.is_empty()) {
        (Some(i), _) => Some(i),
        (None, false) => Some(payload(None, &req.b64info)?),
        (None, true) => None,
    };
    hub.subscribe_everywhere(&req.user, non_empty(&req.client), &req.channel, info)
        .await?;
    Ok(json!({}))
}

async fn unsubscribe(hub: &Hub, req: UserChannelRequest) -> MethodResult {
    require_user(&req.user)?;
    require_channel(&req.channel)?;
    hub.unsubscribe_everywhere(&req.user, non_empty(&req.client), &req.channel)
        .await?;
    Ok(json!({}))
}

/// `disconnect` parameters.
#[derive(Debug, Deserialize)]
struct DisconnectRequest {
    #[serde(default)]
    user: String,
    #[serde(default)]
    client: String,
    #[serde(default)]
    whitelist: Vec<String>,
    disconnect: Option<CustomDisconnect>,
}

#[derive(Debug, Deserialize)]
struct CustomDisconnect {
    code: u16,
    #[serde(default)]
    reason: String,
}

async fn disconnect(hub: &Hub, req: DisconnectRequest) -> MethodResult {
    require_user(&req.user)?;
    let code = match req.disconnect {
        None => DisconnectCode::FORCE_NO_RECONNECT,
        Some(d) => custom_disconnect(d.code, &d.reason)?,
    };
    hub.disconnect_everywhere(&req.user, non_empty(&req.client), &req.whitelist, code)
        .await?;
    Ok(json!({}))
}

/// A disconnect code chosen by the application: one of ours, or 4000..=4999 with its reason.
fn custom_disconnect(code: u16, reason: &str) -> Result<DisconnectCode, ErrorCode> {
    if let Some(known) = DisconnectCode::ALL.iter().find(|d| d.code == code) {
        return Ok(*known);
    }
    if !(4000..=4999).contains(&code) || reason.len() > 123 {
        return Err(ErrorCode::BAD_REQUEST);
    }
    Ok(DisconnectCode::custom(code, reason))
}

/// `refresh` parameters.
#[derive(Debug, Deserialize)]
struct RefreshRequest {
    #[serde(default)]
    user: String,
    #[serde(default)]
    client: String,
    #[serde(default)]
    expired: bool,
    #[serde(default)]
    expire_at: u64,
}

async fn refresh(hub: &Hub, req: RefreshRequest) -> MethodResult {
    require_user(&req.user)?;
    let expire_at = (req.expire_at > 0).then_some(req.expire_at);
    hub.refresh_everywhere(&req.user, non_empty(&req.client), expire_at, req.expired)
        .await?;
    Ok(json!({}))
}

/// Parameters of the channel-only methods.
#[derive(Debug, Deserialize)]
struct ChannelRequest {
    #[serde(default)]
    channel: String,
}

/// `channels` parameters.
#[derive(Debug, Deserialize)]
struct ChannelsRequest {
    #[serde(default)]
    pattern: String,
}

fn channels(hub: &Hub, req: ChannelsRequest) -> MethodResult {
    let mut out = serde_json::Map::new();
    for (name, count) in hub.channels() {
        if req.pattern.is_empty() || glob_match(&req.pattern, &name) {
            out.insert(name, json!({ "num_clients": count }));
        }
    }
    Ok(json!({ "channels": out }))
}

/// `batch` parameters.
#[derive(Debug, Deserialize)]
struct BatchRequest {
    #[serde(default)]
    commands: Vec<serde_json::Map<String, Value>>,
}

async fn batch(hub: &Hub, req: BatchRequest) -> MethodResult {
    if req.commands.len() > 1000 {
        return Err(ErrorCode::LIMIT_EXCEEDED);
    }
    let mut replies = Vec::with_capacity(req.commands.len());
    for command in req.commands {
        let mut entries = command.into_iter();
        let reply = match (entries.next(), entries.next()) {
            (Some((name, params)), None) => match Method::parse(&name) {
                Some(Method::Batch) | None => {
                    json!({ "error": error_value(ErrorCode::METHOD_NOT_FOUND) })
                }
                Some(method) => match run(hub, method, params).await {
                    Ok(result) => json!({ name: result }),
                    Err(code) => json!({ "error": error_value(code) }),
                },
            },
            _ => json!({ "error": error_value(ErrorCode::BAD_REQUEST) }),
        };
        replies.push(reply);
    }
    Ok(json!({ "replies": replies }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_disconnects() {
        assert_eq!(
            custom_disconnect(3001, "").unwrap(),
            DisconnectCode::SHUTDOWN
        );
        let c = custom_disconnect(4100, "kicked").unwrap();
        assert_eq!((c.code, c.reason), (4100, "kicked"));
        assert!(custom_disconnect(2000, "x").is_err());
    }

    #[test]
    fn payload_forms() {
        assert!(payload(None, "").is_err());
        assert_eq!(payload(None, "eyJhIjoxfQ==").unwrap().get(), r#"{"a":1}"#);
        assert!(payload(None, "AAEC").is_err());
    }
}
