//! The HTTP application: routes and shared state.

use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use switchboard_hub::Hub;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::{api, ops, transport};

/// State shared by every handler.
#[derive(Clone)]
pub struct AppState {
    /// The node's hub.
    pub hub: Hub,
    /// The configuration the server runs with.
    pub config: Arc<Config>,
    /// Tracks connection tasks so shutdown can wait for them.
    pub tasks: TaskTracker,
}

/// Builds the router with every route the server serves.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/connection/websocket", get(transport::websocket::handler))
        .route("/health", get(ops::health))
        .route("/metrics", get(ops::metrics))
        .merge(api::router())
        .with_state(state)
}
