//! The server HTTP API: `POST /api/<method>` with a JSON body, for application backends.
//!
//! Request and response shapes follow Centrifugo's server API, so its client libraries (for
//! example `cent` on PyPI) work unchanged: a successful call answers `200 {"result": {...}}`, a
//! refused one `200 {"error": {"code": C, "message": "..."}}` with the same error codes clients
//! see. Transport-level problems use HTTP statuses: 401 bad or missing key, 404 unknown method or
//! API disabled, 400 malformed JSON, 408 body not received within `http.body_timeout`, 413 body
//! too large. docs/API.md documents every method.
//!
//! The key is checked on the request head, before a byte of the body is read: a request without
//! the right key gets its 401 at once and makes the server buffer nothing (the connection is then
//! closed, since its body was not read). Only an authorised request has its body read, up to
//! [`MAX_BODY`] bytes and within `http.body_timeout`.

mod methods;

use std::net::{IpAddr, SocketAddr};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, FromRequest as _, Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::IgnoredAny;
use serde_json::json;
use switchboard_proto::ErrorCode;

use crate::app::AppState;

pub use methods::Method;

/// Largest accepted request body.
pub const MAX_BODY: usize = 4 * 1024 * 1024;

/// The API routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/openapi.json", get(openapi))
        .route("/api/{method}", post(call))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
}

/// Why an API request was refused before reaching a method.
#[derive(Debug, thiserror::Error)]
pub enum ApiRejection {
    /// No API key is configured and insecure mode is off.
    #[error("server API is disabled: set api.key")]
    Disabled,
    /// The key is missing or wrong, or an insecure-mode request came from a non-loopback address.
    #[error("unauthorized")]
    Unauthorized,
    /// The method does not exist.
    #[error("method not found")]
    UnknownMethod,
    /// The body is not UTF-8 JSON text (valid JSON of the wrong shape is a method-level error).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The body did not arrive within `http.body_timeout` (408; the connection is closed).
    #[error("request body not received in time")]
    BodyTimeout,
    /// `Content-Length` announces more than [`MAX_BODY`]: refused before reading (413, with the
    /// same answer as a body found too large while reading).
    #[error("request body too large")]
    TooLarge,
    /// The body could not be read: larger than [`MAX_BODY`] (413), or the client failed while
    /// sending it (400). Answered with axum's own rejection.
    #[error(transparent)]
    Body(#[from] BytesRejection),
}

impl IntoResponse for ApiRejection {
    fn into_response(self) -> Response {
        let (status, code) = match self {
            ApiRejection::Body(rejection) => return rejection.into_response(),
            ApiRejection::TooLarge => {
                return (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "Failed to buffer the request body: length limit exceeded",
                )
                    .into_response()
            }
            ApiRejection::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, ErrorCode::BAD_REQUEST),
            ApiRejection::Disabled => (StatusCode::NOT_FOUND, ErrorCode::NOT_AVAILABLE),
            ApiRejection::Unauthorized => (StatusCode::UNAUTHORIZED, ErrorCode::UNAUTHORIZED),
            ApiRejection::UnknownMethod => (StatusCode::NOT_FOUND, ErrorCode::METHOD_NOT_FOUND),
            ApiRejection::BadRequest(_) => (StatusCode::BAD_REQUEST, ErrorCode::BAD_REQUEST),
        };
        let mut response = (
            status,
            Json(json!({"error": {"code": code.code, "message": self.to_string()}})),
        )
            .into_response();
        if status == StatusCode::REQUEST_TIMEOUT {
            // The rest of the body may still be on its way: this connection cannot be reused.
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        response
    }
}

/// Checks the API key (or, in insecure mode, that the caller is on loopback).
fn authorize(state: &AppState, headers: &HeaderMap, peer: SocketAddr) -> Result<(), ApiRejection> {
    let api = &state.config.api;
    if api.key.is_empty() {
        if !api.insecure {
            return Err(ApiRejection::Disabled);
        }
        return if is_loopback(peer.ip()) {
            Ok(())
        } else {
            Err(ApiRejection::Unauthorized)
        };
    }
    let given = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("apikey "))
        })
        .map(str::trim);
    match given {
        Some(key) if constant_time_eq(key.as_bytes(), api.key.as_bytes()) => Ok(()),
        _ => Err(ApiRejection::Unauthorized),
    }
}

/// Whether `ip` is a loopback address, IPv4-mapped IPv6 included (`::ffff:127.0.0.1`, how an
/// IPv4 client appears on a dual-stack IPv6 listener).
fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `POST /api/<method>`. Everything that can be decided on the head (key, method) is decided
/// before the body is read; the body is read only for an authorised call to a known method,
/// within `http.body_timeout`.
async fn call(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(method): Path<String>,
    request: Request,
) -> Result<Json<methods::Answer>, ApiRejection> {
    authorize(&state, request.headers(), peer)?;
    let method = Method::parse(&method).ok_or(ApiRejection::UnknownMethod)?;
    let announced = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|len| len > MAX_BODY as u64) {
        return Err(ApiRejection::TooLarge);
    }
    let body_timeout = state.config.http.body_timeout;
    // `Bytes` applies the `DefaultBodyLimit` layer's limit (413 beyond it).
    let body = tokio::time::timeout(body_timeout, Bytes::from_request(request, &state))
        .await
        .map_err(|_| ApiRejection::BodyTimeout)??;
    let params = json_text(&body)?;
    let answer = methods::dispatch(&state.hub, method, params).await;
    Ok(Json(answer))
}

/// The body as JSON text for the method to parse into its request type (`{}` when the body is
/// empty or blank).
///
/// Only the syntax is checked here, without building a tree: serde_json skips values it ignores
/// iteratively, so a deeply nested body cannot exhaust the stack or hit serde_json's nesting
/// limit. How deep client data may be is not the API's business (client publications have no
/// such limit either); a body whose depth sits where the method expects a string or number is
/// just the wrong shape, a method-level error 107.
fn json_text(body: &[u8]) -> Result<&str, ApiRejection> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok("{}");
    }
    let text = std::str::from_utf8(body).map_err(|e| ApiRejection::BadRequest(e.to_string()))?;
    serde_json::from_str::<IgnoredAny>(text)
        .map_err(|e| ApiRejection::BadRequest(e.to_string()))?;
    Ok(text)
}

async fn openapi() -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(config: crate::config::Config) -> AppState {
        let hub = switchboard_hub::Hub::new(
            config.hub(),
            std::sync::Arc::new(switchboard_hub::MemoryBroker::new()),
            "t".into(),
        );
        AppState {
            hub,
            config: std::sync::Arc::new(config),
            tasks: tokio_util::task::TaskTracker::new(),
        }
    }

    #[tokio::test]
    async fn development_api_accepts_loopback_on_an_ipv6_listener() {
        let state = state(crate::config::Config::development());
        let headers = HeaderMap::new();
        for peer in ["127.0.0.1:5000", "[::1]:5000", "[::ffff:127.0.0.1]:5000"] {
            let peer: SocketAddr = peer.parse().unwrap();
            assert!(authorize(&state, &headers, peer).is_ok(), "{peer}");
        }
        for peer in [
            "10.1.2.3:5000",
            "[::ffff:10.1.2.3]:5000",
            "[2001:db8::1]:5000",
        ] {
            let peer: SocketAddr = peer.parse().unwrap();
            assert!(
                matches!(
                    authorize(&state, &headers, peer),
                    Err(ApiRejection::Unauthorized)
                ),
                "{peer}"
            );
        }
    }

    #[test]
    fn ipv4_mapped_loopback_is_loopback() {
        for loopback in ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"] {
            assert!(is_loopback(loopback.parse().unwrap()), "{loopback}");
        }
        for other in ["10.0.0.1", "::ffff:10.0.0.1", "2001:db8::1", "::"] {
            assert!(!is_loopback(other.parse().unwrap()), "{other}");
        }
    }

    #[test]
    fn json_text_checks_syntax_at_any_depth() {
        assert_eq!(json_text(b"").unwrap(), "{}");
        assert_eq!(json_text(b" \n").unwrap(), "{}");
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        assert_eq!(json_text(deep.as_bytes()).unwrap(), deep);
        for bad in [
            &b"[".repeat(10_000)[..],
            b"{\"a\":",
            b"not json",
            b"\"\xff\"",
        ] {
            assert!(matches!(json_text(bad), Err(ApiRejection::BadRequest(_))));
        }
    }
}
