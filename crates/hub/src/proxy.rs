//! Proxies: asking the application backend to decide connects, subscribes, publishes, refreshes
//! and RPC calls.
//!
//! The hub builds each request as JSON and interprets the answer; how it travels (HTTP in the
//! server crate) is behind the [`Proxy`] trait. Request and answer shapes follow Centrifugo's
//! proxy protocol, so backends written for it work unchanged. An answer is one of
//! `{"result": {...}}` (accept, with fields per kind), `{"error": {"code", "message"}}` (refuse
//! with an error the client sees) or `{"disconnect": {"code", "reason"}}` (close the connection).

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use switchboard_proto::DisconnectCode;

/// Which decision a proxy call asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxyKind {
    /// A connection without a token.
    Connect,
    /// An expiring connection needs a new expiry.
    Refresh,
    /// A subscription in a namespace with `proxy_subscribe`.
    Subscribe,
    /// A publication in a namespace with `proxy_publish`.
    Publish,
    /// An expiring subscription in a namespace with `proxy_sub_refresh`.
    SubRefresh,
    /// An `rpc` command.
    Rpc,
}

impl ProxyKind {
    /// Name used in logs, metrics and configuration keys (`<name>_endpoint`).
    pub fn name(self) -> &'static str {
        match self {
            ProxyKind::Connect => "connect",
            ProxyKind::Refresh => "refresh",
            ProxyKind::Subscribe => "subscribe",
            ProxyKind::Publish => "publish",
            ProxyKind::SubRefresh => "sub_refresh",
            ProxyKind::Rpc => "rpc",
        }
    }
}

/// Section `[proxy]`: backend endpoints and how to call them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct ProxyConfig {
    /// URL called for connections without a token; empty = no connect proxy.
    pub connect_endpoint: String,
    /// URL called when a connection's expiry is reached; empty = the client refreshes itself.
    pub refresh_endpoint: String,
    /// URL for subscriptions in namespaces with `proxy_subscribe` (namespaces may override it).
    pub subscribe_endpoint: String,
    /// URL for publications in namespaces with `proxy_publish` (namespaces may override it).
    pub publish_endpoint: String,
    /// URL for expiring subscriptions in namespaces with `proxy_sub_refresh`.
    pub sub_refresh_endpoint: String,
    /// URL for `rpc` commands; empty = rpc answers error 104.
    pub rpc_endpoint: String,
    /// Time limit of one proxy call; the client gets error 100 (temporary) when it passes.
    /// Default 1s.
    #[serde(with = "humantime_serde")]
    pub timeout: std::time::Duration,
    /// Request headers forwarded from the client's connection request to the backend, in
    /// addition to `Cookie`, `Authorization`, `Origin`, `User-Agent` and `X-Forwarded-For`.
    pub http_headers: Vec<String>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            connect_endpoint: String::new(),
            refresh_endpoint: String::new(),
            subscribe_endpoint: String::new(),
            publish_endpoint: String::new(),
            sub_refresh_endpoint: String::new(),
            rpc_endpoint: String::new(),
            timeout: std::time::Duration::from_secs(1),
            http_headers: Vec::new(),
        }
    }
}

/// Headers always forwarded to proxies when the connection request had them.
pub const FORWARDED_HEADERS: [&str; 5] = [
    "cookie",
    "authorization",
    "origin",
    "user-agent",
    "x-forwarded-for",
];

impl ProxyConfig {
    /// The global endpoint for `kind` (empty when not configured).
    pub fn endpoint(&self, kind: ProxyKind) -> &str {
        match kind {
            ProxyKind::Connect => &self.connect_endpoint,
            ProxyKind::Refresh => &self.refresh_endpoint,
            ProxyKind::Subscribe => &self.subscribe_endpoint,
            ProxyKind::Publish => &self.publish_endpoint,
            ProxyKind::SubRefresh => &self.sub_refresh_endpoint,
            ProxyKind::Rpc => &self.rpc_endpoint,
        }
    }

    /// Whether any proxy is configured (then connections keep their forwarded headers).
    pub fn any(&self) -> bool {
        [
            &self.connect_endpoint,
            &self.refresh_endpoint,
            &self.subscribe_endpoint,
            &self.publish_endpoint,
            &self.sub_refresh_endpoint,
            &self.rpc_endpoint,
        ]
        .iter()
        .any(|e| !e.is_empty())
    }

    /// Whether a request header (lower-case name) is forwarded.
    pub fn forwards(&self, name: &str) -> bool {
        FORWARDED_HEADERS.contains(&name)
            || self
                .http_headers
                .iter()
                .any(|h| h.eq_ignore_ascii_case(name))
    }
}

/// Why a proxy call produced no answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The backend did not answer within the timeout.
    #[error("proxy timed out")]
    Timeout,
    /// The backend could not be reached or answered with a non-2xx status or invalid JSON.
    #[error("proxy failed: {0}")]
    Failed(String),
}

/// Calls the backend. Implemented over HTTP by the server.
#[async_trait]
pub trait Proxy: Send + Sync + 'static {
    /// Sends `body` to `endpoint` with the forwarded `headers` and returns the parsed answer.
    async fn call(
        &self,
        kind: ProxyKind,
        endpoint: &str,
        headers: &[(String, String)],
        body: Value,
    ) -> Result<Value, ProxyError>;
}

/// A backend's decision.
#[derive(Debug)]
pub(crate) enum ProxyAnswer<T> {
    /// Accepted, with the kind's result fields.
    Result(T),
    /// Refused with an error for the client.
    Error {
        code: u32,
        message: String,
        temporary: bool,
    },
    /// The connection must be closed with this code (validated).
    Disconnect(DisconnectCode),
}

#[derive(Debug, Deserialize)]
struct RawAnswer<T> {
    result: Option<T>,
    error: Option<RawError>,
    disconnect: Option<RawDisconnect>,
}

#[derive(Debug, Deserialize)]
struct RawError {
    code: u32,
    #[serde(default)]
    message: String,
    #[serde(default)]
    temporary: bool,
}

#[derive(Debug, Deserialize)]
struct RawDisconnect {
    code: u16,
    #[serde(default)]
    reason: String,
}

/// Interprets a backend answer; a malformed one is a [`ProxyError::Failed`].
pub(crate) fn parse_answer<T: for<'de> Deserialize<'de> + Default>(
    value: Value,
) -> Result<ProxyAnswer<T>, ProxyError> {
    let raw: RawAnswer<T> = serde_json::from_value(value)
        .map_err(|e| ProxyError::Failed(format!("bad answer: {e}")))?;
    if let Some(d) = raw.disconnect {
        let Some(code) = DisconnectCode::application(d.code, &d.reason) else {
            return Err(ProxyError::Failed(format!(
                "bad answer: disconnect code {} is not one of ours nor in 4000..=4999 (with a reason of at most 123 bytes)",
                d.code
            )));
        };
        return Ok(ProxyAnswer::Disconnect(code));
    }
    if let Some(e) = raw.error {
        return Ok(ProxyAnswer::Error {
            code: e.code,
            message: e.message,
            temporary: e.temporary,
        });
    }
    Ok(ProxyAnswer::Result(raw.result.unwrap_or_default()))
}

/// `result` of a connect proxy answer.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ConnectResult {
    #[serde(default)]
    pub(crate) user: String,
    #[serde(default)]
    pub(crate) expire_at: u64,
    pub(crate) info: Option<Box<RawValue>>,
    #[serde(default)]
    pub(crate) b64info: String,
    pub(crate) data: Option<Box<RawValue>>,
    #[serde(default)]
    pub(crate) channels: Vec<String>,
    pub(crate) meta: Option<Box<RawValue>>,
}

/// `result` of refresh and sub_refresh proxy answers.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RefreshResult {
    #[serde(default)]
    pub(crate) expired: bool,
    #[serde(default)]
    pub(crate) expire_at: u64,
    pub(crate) info: Option<Box<RawValue>>,
    #[serde(default)]
    pub(crate) b64info: String,
}

/// `result` of a subscribe proxy answer.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct SubscribeResult {
    pub(crate) info: Option<Box<RawValue>>,
    #[serde(default)]
    pub(crate) b64info: String,
    pub(crate) data: Option<Box<RawValue>>,
    #[serde(default)]
    pub(crate) expire_at: u64,
}

/// `result` of a publish proxy answer: optionally replaced data.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct PublishResult {
    pub(crate) data: Option<Box<RawValue>>,
}

/// `result` of an rpc proxy answer.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RpcResult {
    pub(crate) data: Option<Box<RawValue>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn answers() {
        let a: ProxyAnswer<ConnectResult> =
            parse_answer(json!({"result": {"user": "42", "expire_at": 10}})).unwrap();
        assert!(matches!(a, ProxyAnswer::Result(r) if r.user == "42" && r.expire_at == 10));
        let a: ProxyAnswer<ConnectResult> =
            parse_answer(json!({"error": {"code": 1000, "message": "nope"}})).unwrap();
        assert!(matches!(a, ProxyAnswer::Error { code: 1000, .. }));
        let a: ProxyAnswer<RpcResult> =
            parse_answer(json!({"disconnect": {"code": 4500, "reason": "bye"}})).unwrap();
        assert!(matches!(a, ProxyAnswer::Disconnect(d) if d.code == 4500));
        assert!(parse_answer::<RpcResult>(json!([1])).is_err());
        // Codes a close frame must not carry, or outside the application range, are refused.
        for code in [1000, 1005, 1006, 1015, 2999, 5000] {
            let answer = json!({"disconnect": {"code": code, "reason": "x"}});
            assert!(parse_answer::<RpcResult>(answer).is_err(), "{code}");
        }
        let long = "r".repeat(124);
        let answer = json!({"disconnect": {"code": 4001, "reason": long}});
        assert!(parse_answer::<RpcResult>(answer).is_err());
    }

    #[test]
    fn forwarded_headers() {
        let mut c = ProxyConfig::default();
        c.http_headers.push("X-Tenant".into());
        assert!(c.forwards("cookie"));
        assert!(c.forwards("x-tenant"));
        assert!(!c.forwards("x-other"));
    }
}
