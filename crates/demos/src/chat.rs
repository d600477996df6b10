//! Chat: rooms `demo-chat:<room>` with presence, join/leave, the last 50 messages in history and
//! recovery; typing indicators in `demo-chat-typing:<room>` (not kept). The nickname is the
//! subscription's data, checked here and attached to every publication as channel info; messages
//! are checked here too (not empty, at most [`MAX_TEXT`] characters) and stamped with the time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use switchboard::config::NamespaceOptions;
use switchboard::{
    Data, HandlerResult, PublishReply, PublishRequest, SubscribeReply, SubscribeRequest,
};

use crate::{invalid, name_from, open_namespace, valid_id};

/// Chat rooms.
pub(crate) const NAMESPACE: &str = "demo-chat";
/// Typing indicators of the rooms.
pub(crate) const TYPING_NAMESPACE: &str = "demo-chat-typing";
/// Longest message, in characters.
const MAX_TEXT: usize = 500;

pub(crate) fn namespace() -> NamespaceOptions {
    let mut ns = open_namespace(NAMESPACE);
    ns.presence = true;
    ns.join_leave = true;
    ns.history_size = 50;
    ns.history_ttl = Duration::from_secs(3600);
    ns.force_recovery = true;
    ns
}

pub(crate) fn typing_namespace() -> NamespaceOptions {
    open_namespace(TYPING_NAMESPACE)
}

/// Who a subscriber is: shown in presence, join/leave and on each publication.
#[derive(Serialize)]
struct Info<'a> {
    nick: &'a str,
}

/// A room's channel: `demo-chat:<room>`, or the typing channel of a room, with `{nick}` as data.
pub(crate) fn subscribe(req: &SubscribeRequest) -> HandlerResult<SubscribeReply> {
    let room = req.channel.split_once(':').map_or("", |(_, r)| r);
    if !valid_id(room) {
        return Err(invalid("room names are 1 to 32 of a-z, 0-9, - and _"));
    }
    let nick = name_from(req.data.as_ref(), "nick")?;
    Ok(SubscribeReply::accept().with_info(Data::json(&Info { nick: &nick })?))
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    text: String,
}

#[derive(Serialize)]
struct Stamped<'a> {
    text: &'a str,
    /// Milliseconds since the Unix epoch, on the server.
    at: u64,
}

/// A message: `{text}`, published as `{text, at}` with the text trimmed.
pub(crate) fn message(req: &PublishRequest) -> HandlerResult<PublishReply> {
    checked_message(&req.data)
}

fn checked_message(data: &Data) -> HandlerResult<PublishReply> {
    let message: Message = data.decode()?;
    let text = message.text.trim();
    if text.is_empty() {
        return Err(invalid("message is empty"));
    }
    if text.chars().count() > MAX_TEXT {
        return Err(invalid(format!(
            "message is too long (at most {MAX_TEXT} characters)"
        )));
    }
    Ok(PublishReply::replace(Data::json(&Stamped {
        text,
        at: now_ms(),
    })?))
}

#[derive(Deserialize, Serialize)]
struct Typing {
    typing: bool,
}

/// A typing indicator: exactly `{typing: bool}`.
pub(crate) fn typing(req: &PublishRequest) -> HandlerResult<PublishReply> {
    let typing: Typing = req.data.decode()?;
    Ok(PublishReply::replace(Data::json(&typing)?))
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(data: &str) -> HandlerResult<PublishReply> {
        checked_message(&Data::parse(data).unwrap())
    }

    #[test]
    fn messages_are_checked_and_stamped() {
        let reply = publish(r#"{"text":"  hi  "}"#).unwrap();
        let data: serde_json::Value = reply.data.unwrap().decode().unwrap();
        assert_eq!(data["text"], "hi");
        assert!(data["at"].as_u64().unwrap() > 0);
        assert!(publish(r#"{"text":"   "}"#).is_err());
        assert!(publish(&format!(r#"{{"text":"{}"}}"#, "x".repeat(501))).is_err());
        assert!(publish(r#"{"text":5}"#).is_err());
    }
}
