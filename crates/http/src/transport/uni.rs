//! Unidirectional transports, for clients without an SDK: the client only connects, the server
//! only pushes.
//!
//! - `GET /connection/uni_sse?cf_connect=<connect request JSON>` (what a browser `EventSource`
//!   can send), or `POST /connection/uni_sse` with the connect request as body: Server-Sent
//!   Events, one push per event.
//! - `POST /connection/uni_http_stream` with the connect request as body: one push per line.
//!
//! The connect request is the `connect` command's body (`{"token": "...", "data": ...}`, all
//! optional). The subscriptions are made by the server: the token's `channels` claim, the
//! connect proxy's or handler's `channels`, the user's personal channel. The stream starts with
//! `{"connect": {...}}` (the connect result, with `subs`), then carries the pushes of the
//! bidirectional protocol without their `{"push": ...}` wrapper: `{"channel": "c", "pub":
//! {...}}`, `{"channel": "c", "join": {...}}`, ..., `{}` pings (no pong expected), and ends
//! with `{"disconnect": {"code": C, "reason": "..."}}`. A refused connect ends the stream at
//! once with the matching disconnect (3500 for a bad token, 3005 for an expired one).

use std::borrow::Cow;
use std::future::poll_fn;
use std::task::Poll;

use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::value::RawValue;
use switchboard_hub::Outbound;
use switchboard_proto::DisconnectCode;

use crate::app::AppState;
use crate::transport::emulation::{open, Format};

/// Query of `GET /connection/uni_sse`.
#[derive(Debug, serde::Deserialize)]
pub struct UniQuery {
    /// The connect request (JSON object).
    pub(crate) cf_connect: Option<String>,
}

/// `GET /connection/uni_sse?cf_connect=...`.
pub async fn uni_sse_get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<UniQuery>,
) -> Response {
    let request = query.cf_connect.unwrap_or_else(|| "{}".to_owned());
    start(state, &headers, request.as_bytes(), Format::UniEvents)
}

/// `POST /connection/uni_sse` (the connect request as body).
pub async fn uni_sse_post(State(state): State<AppState>, req: Request) -> Response {
    post(state, req, Format::UniEvents).await
}

/// `POST /connection/uni_http_stream` (the connect request as body).
pub async fn uni_http_stream(State(state): State<AppState>, req: Request) -> Response {
    post(state, req, Format::UniLines).await
}

async fn post(state: AppState, req: Request, format: Format) -> Response {
    let headers = req.headers().clone();
    let limit = state.hub.config().client.max_message_size;
    match axum::body::to_bytes(req.into_body(), limit).await {
        Ok(body) if body.is_empty() => start(state, &headers, b"{}", format),
        Ok(body) => start(state, &headers, &body, format),
        Err(_) => (StatusCode::PAYLOAD_TOO_LARGE, "request too large\n").into_response(),
    }
}

/// Checks the connect request and opens the stream with it as a `connect` command.
fn start(state: AppState, headers: &HeaderMap, request: &[u8], format: Format) -> Response {
    if request.len() > state.hub.config().client.max_message_size {
        return (StatusCode::PAYLOAD_TOO_LARGE, "connect request too large\n").into_response();
    }
    let Some(command) = connect_command(request) else {
        return (
            StatusCode::BAD_REQUEST,
            "the connect request must be a JSON object\n",
        )
            .into_response();
    };
    crate::transport::emulation::with_cors(headers, open(state, headers, command, format))
}

/// The `connect` command (id 1) for a unidirectional client's connect request; `None` when the
/// request is not a JSON object.
pub(crate) fn connect_command(request: &[u8]) -> Option<Bytes> {
    let is_object = serde_json::from_slice::<&RawValue>(request)
        .is_ok_and(|raw| raw.get().trim_start().starts_with('{'));
    if !is_object {
        return None;
    }
    let mut command = Vec::with_capacity(request.len() + 24);
    command.extend_from_slice(b"{\"id\":1,\"connect\":");
    command.extend_from_slice(request);
    command.push(b'}');
    Some(Bytes::from(command))
}

/// The message a unidirectional stream carries for `message` (a reply or push of the
/// bidirectional protocol): a push without its wrapper, the connect reply as
/// `{"connect": ...}`; `None` for anything else (replies to commands it cannot send).
pub(crate) fn as_push(message: &[u8]) -> Option<Cow<'_, [u8]>> {
    const PUSH: &[u8] = b"{\"push\":";
    const REPLY_ID: &[u8] = b"{\"id\":1,";
    if message == b"{}" {
        return Some(Cow::Borrowed(message));
    }
    if let Some(inner) = message.strip_prefix(PUSH) {
        return inner.strip_suffix(b"}").map(Cow::Borrowed);
    }
    // `{"id":1,"connect":{...}}` becomes `{"connect":{...}}`.
    let rest = message.strip_prefix(REPLY_ID)?;
    if !rest.starts_with(b"\"connect\":") {
        return None;
    }
    let mut connect = Vec::with_capacity(rest.len() + 1);
    connect.push(b'{');
    connect.extend_from_slice(rest);
    Some(Cow::Owned(connect))
}

/// The disconnect that ends a unidirectional stream whose connect was refused with an error
/// reply (which is in `out`, and is taken from it).
pub(crate) fn refusal(out: &Outbound) -> DisconnectCode {
    let mut batch = Vec::new();
    let _ = futures_util::FutureExt::now_or_never(poll_fn(|cx| {
        Poll::Ready(out.poll_drain(cx, &mut batch, usize::MAX, false))
    }));
    let code = batch.iter().find_map(|m| {
        let v: serde_json::Value = serde_json::from_slice(m).ok()?;
        v["error"]["code"].as_u64()
    });
    match code {
        Some(101) => DisconnectCode::INVALID_TOKEN,
        Some(109) => DisconnectCode::EXPIRED,
        Some(100) => DisconnectCode::SERVER_ERROR,
        Some(111) => DisconnectCode::TOO_MANY_REQUESTS,
        _ => DisconnectCode::BAD_REQUEST,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_lose_their_wrapper_and_replies_are_left_out() {
        let push = br#"{"push":{"channel":"c","pub":{"data":{"a":1}}}}"#;
        assert_eq!(
            as_push(push).unwrap().as_ref(),
            br#"{"channel":"c","pub":{"data":{"a":1}}}"#
        );
        let connect = br#"{"id":1,"connect":{"client":"x","subs":{}}}"#;
        assert_eq!(
            as_push(connect).unwrap().as_ref(),
            br#"{"connect":{"client":"x","subs":{}}}"#
        );
        assert_eq!(as_push(b"{}").unwrap().as_ref(), b"{}");
        assert!(as_push(br#"{"id":1,"error":{"code":101}}"#).is_none());
        assert!(as_push(br#"{"id":2,"subscribe":{}}"#).is_none());
    }
}
