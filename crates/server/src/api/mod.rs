//! The server HTTP API: `POST /api/<method>` with a JSON body, for application backends.
//!
//! Request and response shapes follow Centrifugo's server API, so its client libraries (for
//! example `cent` on PyPI) work unchanged: a successful call answers `200 {"result": {...}}`, a
//! refused one `200 {"error": {"code": C, "message": "..."}}` with the same error codes clients
//! see. Transport-level problems use HTTP statuses: 401 bad or missing key, 404 unknown method or
//! API disabled, 400 malformed JSON, 413 body too large. docs/API.md documents every method.

mod methods;

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
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
}

impl IntoResponse for ApiRejection {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ApiRejection::Disabled => (StatusCode::NOT_FOUND, ErrorCode::NOT_AVAILABLE),
            ApiRejection::Unauthorized => (StatusCode::UNAUTHORIZED, ErrorCode::UNAUTHORIZED),
            ApiRejection::UnknownMethod => (StatusCode::NOT_FOUND, ErrorCode::METHOD_NOT_FOUND),
            ApiRejection::BadRequest(_) => (StatusCode::BAD_REQUEST, ErrorCode::BAD_REQUEST),
        };
        let body = json!({"error": {"code": code.code, "message": self.to_string()}});
        (status, Json(body)).into_response()
    }
}

/// Checks the API key (or, in insecure mode, that the caller is on loopback).
fn authorize(state: &AppState, headers: &HeaderMap, peer: SocketAddr) -> Result<(), ApiRejection> {
    let api = &state.config.api;
    if api.key.is_empty() {
        if !api.insecure {
            return Err(ApiRejection::Disabled);
        }
        return if peer.ip().is_loopback() {
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

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn call(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<methods::Answer>, ApiRejection> {
    authorize(&state, &headers, peer)?;
    let method = Method::parse(&method).ok_or(ApiRejection::UnknownMethod)?;
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
