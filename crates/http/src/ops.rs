//! Operations endpoints: `/health` and `/metrics`.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::app::AppState;

/// `GET /health`: 200 with `{"status":"ok",...}` while the node serves; 503 with status
/// `shutting_down` while it drains, or `broker_unavailable` while its broker (Redis, NATS) cannot
/// be reached, so that load balancers send new clients to other nodes.
pub async fn health(State(state): State<AppState>) -> Response {
    let hub = &state.hub;
    let broker = hub.broker_connected();
    let status = if hub.is_shutting_down() {
        "shutting_down"
    } else if !broker {
        "broker_unavailable"
    } else {
        "ok"
    };
    let body = serde_json::json!({
        "status": status,
        "broker_connected": broker,
        "node": hub.node().name,
        "node_id": hub.node().id,
        "version": hub.node().version,
        "connections": hub.metrics().connections(),
    });
    let code = if status == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// `GET /metrics`: every node metric in the Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let mut body = String::with_capacity(8 * 1024);
    state.hub.metrics().render_prometheus(&mut body);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
