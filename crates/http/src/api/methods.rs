//! The server API methods: request shapes, result shapes, and the hub calls behind them.
//!
//! Client data (`data`, `info`, and what comes back in `history` and `presence`) stays JSON text
//! from the request body to the broker and from the broker to the response body: requests are
//! parsed into typed structs whose client-data fields are [`RawValue`]s, results are serialised
//! from typed structs that embed them. Nothing goes through a `serde_json::Value` tree, so data
//! arrives exactly as sent (key order, number spelling such as `2.50` or 24-digit integers,
//! string escapes) and serde_json's nesting limit, which applies to trees only, does not apply.

use std::collections::{BTreeMap, HashMap};

use base64::Engine as _;
use serde::ser::SerializeMap as _;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use switchboard_hub::{HistoryFilter, Hub, NodeStats, PublishParams};
use switchboard_proto::{
    DisconnectCode, ErrorCode, HistoryResult, PresenceResult, PresenceStatsResult, StreamPosition,
};

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

/// A method's result as JSON text, or why it failed.
type MethodResult = Result<Box<RawValue>, ErrorCode>;

/// Serialises a result. Results are plain data with string keys whose client parts are raw
/// JSON written out verbatim, so this does not fail in practice; if it ever did, the caller
/// answers error 100 instead of panicking.
fn to_raw<T: Serialize + ?Sized>(value: &T) -> MethodResult {
    serde_json::value::to_raw_value(value).map_err(|e| {
        tracing::error!(error = %e, "server API result does not serialise");
        ErrorCode::INTERNAL
    })
}

/// The `error` object of an answer.
#[derive(Debug, Serialize)]
pub(super) struct ApiError {
    code: u32,
    message: &'static str,
    #[serde(skip_serializing_if = "is_false")]
    temporary: bool,
}

impl From<ErrorCode> for ApiError {
    fn from(code: ErrorCode) -> Self {
        Self {
            code: code.code,
            message: code.message,
            temporary: code.temporary,
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `{"result": ..}` or `{"error": ..}`: one method's answer (the whole response body, or one
/// channel's entry in `broadcast`'s `responses`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Reply<T> {
    /// The method succeeded.
    Result(T),
    /// The method failed.
    Error(ApiError),
}

impl<T> From<Result<T, ErrorCode>> for Reply<T> {
    fn from(result: Result<T, ErrorCode>) -> Self {
        match result {
            Ok(r) => Self::Result(r),
            Err(code) => Self::Error(code.into()),
        }
    }
}

/// A response body.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(super) enum Answer {
    /// Every method but a successful `batch`.
    Reply(Reply<Box<RawValue>>),
    /// A successful `batch`: `{"replies": [..]}` at the top level (as Centrifugo's, which `cent`
    /// expects).
    Batch(Box<RawValue>),
}

/// Runs `method` with `params` (JSON text, already checked to be syntactically valid).
pub(super) async fn dispatch(hub: &Hub, method: Method, params: &str) -> Answer {
    match run(hub, method, params).await {
        Ok(result) if method == Method::Batch => Answer::Batch(result),
        result => Answer::Reply(result.into()),
    }
}

/// Parses a method's parameters. Client-data fields are `RawValue`s, which serde_json skips
/// over without building a tree, so deeply nested data parses like any other.
fn parse<'a, T: Deserialize<'a>>(params: &'a str) -> Result<T, ErrorCode> {
    serde_json::from_str(params).map_err(|_| ErrorCode::BAD_REQUEST)
}

/// An empty result object `{}`.
#[derive(Debug, Serialize)]
struct Empty {}

async fn run(hub: &Hub, method: Method, params: &str) -> MethodResult {
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
            to_raw(&PresenceResult { presence })
        }
        Method::PresenceStats => {
            let req: ChannelRequest = parse(params)?;
            require_channel(&req.channel)?;
            let stats = hub.presence_stats(&req.channel).await?;
            to_raw(&PresenceStatsResult {
                num_clients: stats.num_clients,
                num_users: stats.num_users,
            })
        }
        Method::History => history(hub, parse(params)?).await,
        Method::HistoryRemove => {
            let req: ChannelRequest = parse(params)?;
            require_channel(&req.channel)?;
            hub.remove_history(&req.channel).await?;
            to_raw(&Empty {})
        }
        Method::Channels => channels(hub, parse(params)?),
        Method::Info => to_raw(&InfoResult { nodes: hub.nodes() }),
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
    to_raw(&Position::of(&position))
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
    to_raw(&HistoryResult {
        publications: h.publications,
        epoch: h.position.epoch,
        offset: h.position.offset,
    })
}

/// A stream position as results show it: `offset` and `epoch` left out when zero or empty
/// (`{}` for channels without history).
#[derive(Debug, Serialize)]
struct Position<'a> {
    #[serde(skip_serializing_if = "is_zero")]
    offset: u64,
    #[serde(skip_serializing_if = "str::is_empty")]
    epoch: &'a str,
}

impl<'a> Position<'a> {
    fn of(position: &'a StreamPosition) -> Self {
        Self {
            offset: position.offset,
            epoch: &position.epoch,
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
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
        responses.push(hub.publish_with_params(channel, data.clone(), params).await);
    }
    let responses = responses
        .iter()
        .map(|r| r.as_ref().map(Position::of).map_err(|e| *e).into())
        .collect();
    to_raw(&BroadcastResult { responses })
}

/// Result of `broadcast`: one answer per channel, in the request's order.
#[derive(Debug, Serialize)]
struct BroadcastResult<'a> {
    responses: Vec<Reply<Position<'a>>>,
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
    to_raw(&Empty {})
}

async fn unsubscribe(hub: &Hub, req: UserChannelRequest) -> MethodResult {
    require_user(&req.user)?;
    require_channel(&req.channel)?;
    hub.unsubscribe_everywhere(&req.user, non_empty(&req.client), &req.channel)
        .await?;
    to_raw(&Empty {})
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
    to_raw(&Empty {})
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
    to_raw(&Empty {})
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
    let channels = hub
        .channels()
        .into_iter()
        .filter(|(name, _)| req.pattern.is_empty() || glob_match(&req.pattern, name))
        .map(|(name, num_clients)| (name, ChannelInfo { num_clients }))
        .collect();
    to_raw(&ChannelsResult { channels })
}

/// Result of `channels`, by channel name.
#[derive(Debug, Serialize)]
struct ChannelsResult {
    channels: BTreeMap<String, ChannelInfo>,
}

/// One channel in [`ChannelsResult`].
#[derive(Debug, Serialize)]
struct ChannelInfo {
    num_clients: usize,
}

/// Result of `info`.
#[derive(Debug, Serialize)]
struct InfoResult {
    nodes: Vec<NodeStats>,
}

/// `batch` parameters.
#[derive(Debug, Deserialize)]
struct BatchRequest {
    /// Each an object with one key, the method name, whose value (the method's parameters) is
    /// kept as JSON text, parsed only by that method.
    #[serde(default)]
    commands: Vec<HashMap<String, Box<RawValue>>>,
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
                Some(Method::Batch) | None => Err(ErrorCode::METHOD_NOT_FOUND),
                Some(method) => run(hub, method, params.get()).await.map(|r| (name, r)),
            },
            _ => Err(ErrorCode::BAD_REQUEST),
        };
        replies.push(BatchReply(reply));
    }
    to_raw(&BatchResult { replies })
}

/// A successful `batch`'s answer.
#[derive(Debug, Serialize)]
struct BatchResult {
    replies: Vec<BatchReply>,
}

/// One command's reply in a batch: `{"<method>": result}` or `{"error": ..}`.
#[derive(Debug)]
struct BatchReply(Result<(String, Box<RawValue>), ErrorCode>);

impl Serialize for BatchReply {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        match &self.0 {
            Ok((method, result)) => map.serialize_entry(method, result)?,
            Err(code) => map.serialize_entry("error", &ApiError::from(*code))?,
        }
        map.end()
    }
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

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_string()).unwrap()
    }

    #[test]
    fn deeply_nested_data_parses_verbatim() {
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        let req: PublishRequest = parse(&format!(r#"{{"channel":"c","data":{deep}}}"#)).unwrap();
        assert_eq!(req.data.unwrap().get(), deep);
        let req: PublishRequest = parse(r#"{"channel":"c","data":{"z":1,"a":2.50}}"#).unwrap();
        assert_eq!(req.data.unwrap().get(), r#"{"z":1,"a":2.50}"#);
        // Depth where a string is expected is the wrong shape.
        assert!(parse::<PublishRequest>(&deep).is_err());
        let req: BatchRequest =
            parse(&format!(r#"{{"commands":[{{"publish":{deep}}}]}}"#)).unwrap();
        assert_eq!(req.commands[0]["publish"].get(), deep);
    }

    #[test]
    fn answers_embed_results_verbatim() {
        let data = r#"{"z":1,"a":2.50,"big":123456789012345678901234}"#;
        let answer = Answer::Reply(Reply::Result(raw(data)));
        assert_eq!(
            serde_json::to_string(&answer).unwrap(),
            format!(r#"{{"result":{data}}}"#)
        );
        let answer = Answer::Reply(Err(ErrorCode::INTERNAL).into());
        assert_eq!(
            serde_json::to_string(&answer).unwrap(),
            r#"{"error":{"code":100,"message":"internal server error","temporary":true}}"#
        );
        let batch = BatchResult {
            replies: vec![
                BatchReply(Ok(("history".into(), raw(data)))),
                BatchReply(Err(ErrorCode::BAD_REQUEST)),
            ],
        };
        let answer = Answer::Batch(to_raw(&batch).unwrap());
        assert_eq!(
            serde_json::to_string(&answer).unwrap(),
            format!(
                r#"{{"replies":[{{"history":{data}}},{{"error":{{"code":107,"message":"bad request"}}}}]}}"#
            )
        );
    }
}
