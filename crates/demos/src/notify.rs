//! Notifications: one channel per user, `demo-notify:<user>`, and `demo-notify:everyone` for
//! all. A page sends with the RPC `notify.send {to, text}` (checked here, then published from
//! the server); a backend would use the server API (`POST /api/publish`), as the page's `curl`
//! line shows. Clients cannot publish into these channels themselves. Every tab of a user
//! subscribes to the user's channel, so every tab gets each notification; recovery brings the
//! ones sent while a tab was offline.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchboard::config::NamespaceOptions;
use switchboard::{Data, ErrorCode, HandlerResult, Node, Rejection, RpcReply};

use crate::chat::now_ms;
use crate::{invalid, open_namespace, valid_id};

/// Per-user channels.
pub(crate) const NAMESPACE: &str = "demo-notify";
/// Longest notification, in characters.
const MAX_TEXT: usize = 200;

pub(crate) fn namespace() -> NamespaceOptions {
    let mut ns = open_namespace(NAMESPACE);
    ns.history_size = 20;
    ns.history_ttl = Duration::from_secs(3600);
    ns.force_recovery = true;
    ns
}

/// Subscribing to `demo-notify:<user>`: a valid user id (a demo has no login: a real app would
/// use the connection's user, e.g. a personal channel `#<user>`).
pub(crate) fn check_channel(channel: &str) -> Result<(), Rejection> {
    let user = channel.split_once(':').map_or("", |(_, u)| u);
    if valid_id(user) {
        Ok(())
    } else {
        Err(invalid("user names are 1 to 32 of a-z, 0-9, - and _"))
    }
}

#[derive(Deserialize)]
struct Send {
    to: String,
    text: String,
    #[serde(default)]
    from: String,
}

/// What a notification carries.
#[derive(Serialize)]
struct Notification<'a> {
    text: &'a str,
    from: &'a str,
    /// Milliseconds since the Unix epoch, on the server.
    at: u64,
}

/// `notify.send {to, text, from}`: `to` is a user or `everyone`.
pub(crate) async fn send(node: &Node, data: Option<&Data>) -> HandlerResult<RpcReply> {
    let send: Send = data.ok_or(ErrorCode::BAD_REQUEST)?.decode()?;
    let to = send.to.trim().to_lowercase();
    if !valid_id(&to) {
        return Err(invalid(
            "send to a user name (a-z, 0-9, - and _) or to everyone",
        ));
    }
    let text = checked_text(&send.text)?;
    let from = send.from.trim();
    let from = if from.is_empty() || from.chars().count() > 24 {
        "someone"
    } else {
        from
    };
    let notification = Notification {
        text,
        from,
        at: now_ms(),
    };
    node.publish_json(&format!("{NAMESPACE}:{to}"), &notification)
        .await?;
    Ok(RpcReply::empty())
}

fn checked_text(text: &str) -> Result<&str, Rejection> {
    let text = text.trim();
    if text.is_empty() {
        return Err(invalid("the notification is empty"));
    }
    if text.chars().count() > MAX_TEXT {
        return Err(invalid(format!(
            "the notification is too long (at most {MAX_TEXT} characters)"
        )));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_and_channels_are_checked() {
        assert_eq!(checked_text("  hi ").unwrap(), "hi");
        assert!(checked_text(" ").is_err());
        assert!(checked_text(&"x".repeat(201)).is_err());
        assert!(check_channel("demo-notify:alice").is_ok());
        assert!(check_channel("demo-notify:Alice!").is_err());
        assert!(check_channel("demo-notify:").is_err());
    }
}
