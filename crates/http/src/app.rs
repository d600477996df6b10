//! The HTTP application: routes and shared state.

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use switchboard_hub::Hub;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::{api, home, ops, sdk, transport};

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

/// Builds the router with every route the server serves: `/` and `/start` (the start page,
/// when `demos.enabled`), `/connection/websocket`, the HTTP-streaming and SSE transports
/// (`/connection/http_stream`, `/connection/sse`, `/emulation`), the unidirectional ones
/// (`/connection/uni_sse`, `/connection/uni_http_stream`, `/connection/uni_websocket`),
/// `/health`, `/metrics`, the browser SDK (`/js/...`, see [`sdk`]) and `/api/...`.
pub fn router(state: AppState) -> Router {
    let transports = &state.config.transports;
    let mut router = Router::new();
    if transports.websocket {
        router = router.route("/connection/websocket", get(transport::websocket::handler));
    }
    let preflight = transport::emulation::preflight;
    if transports.http_stream {
        router = router.route(
            "/connection/http_stream",
            post(transport::emulation::http_stream).options(preflight),
        );
    }
    if transports.sse {
        router = router.route(
            "/connection/sse",
            get(transport::emulation::sse_get)
                .post(transport::emulation::sse_post)
                .options(preflight),
        );
    }
    if transports.uni_sse {
        router = router.route(
            "/connection/uni_sse",
            get(transport::uni::uni_sse_get)
                .post(transport::uni::uni_sse_post)
                .options(preflight),
        );
    }
    if transports.uni_http_stream {
        router = router.route(
            "/connection/uni_http_stream",
            post(transport::uni::uni_http_stream).options(preflight),
        );
    }
    if transports.uni_websocket {
        router = router.route(
            "/connection/uni_websocket",
            get(transport::uni_websocket::handler),
        );
    }
    if transports.emulation() {
        router = router.route(
            "/emulation",
            post(transport::emulation::emulation).options(preflight),
        );
    }
    let mut router = router
        .route("/health", get(ops::health))
        .route("/metrics", get(ops::metrics))
        .merge(sdk::router())
        .merge(api::router());
    if state.config.socketio.enabled {
        router = router.merge(socketio_router(&state));
    }
    if state.config.demos.enabled {
        let page = home::render(&state.config);
        let start = page.clone();
        router = router
            .route("/", get(move || std::future::ready(page.clone())))
            // Also here, for when an application (the binary's demos) serves its own `/`.
            .route("/start", get(move || std::future::ready(start.clone())));
    }
    router.with_state(state)
}

/// The Socket.IO front door (`[socketio]`): every namespace bridged to the hub.
fn socketio_router(state: &AppState) -> Router<AppState> {
    use switchboard_socketio::{bridge::HubBridge, EngineConfig, SioConfig, SocketIo};
    let c = &state.config.socketio;
    let mut sio = SioConfig::default();
    sio.connect_timeout = c.connect_timeout;
    let io = SocketIo::new(sio);
    let bridge = HubBridge::new(state.hub.clone()).with_recovery(c.recovery);
    io.dynamic_ns(|_| true, |h| bridge.install(h));
    let engine = EngineConfig::default()
        .ping_interval(c.ping_interval)
        .ping_timeout(c.ping_timeout)
        .max_payload(c.max_buffer_size)
        .cors_origins(c.cors_origins.clone());
    let engine = io.engine(engine);
    // Polling requests of a session may reach any node: they are relayed to its owner.
    switchboard_socketio::cluster::HubCluster::install(&state.hub, &engine, &c.path);
    SocketIo::router(engine, &c.path).with_state(())
}
