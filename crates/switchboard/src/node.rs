//! [`Node`]: one Switchboard node, to mount in an axum app or serve on its own, and [`Server`],
//! a node serving on its own listener.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use switchboard_http::app::{self, AppState};
use switchboard_http::config::Config;
use switchboard_hub::Hub;
use tokio_util::task::TaskTracker;

use crate::NodeBuilder;

/// One Switchboard node: its connections, channels and broker. Cheap to clone (a handle):
/// clones act on the same node, so a clone can publish from a background task.
///
/// Get one from [`Node::builder`]; then mount [`Node::router`] in an axum app, or run it alone
/// with [`Node::serve`]. The server-side actions (publish, presence, disconnect...) are methods
/// of the node, and act on the whole cluster when the broker is Redis or NATS.
#[derive(Clone)]
pub struct Node {
    pub(crate) hub: Hub,
    pub(crate) config: Arc<Config>,
    pub(crate) tasks: TaskTracker,
    /// The application's own routes ([`NodeBuilder::routes`]), served before the node's.
    pub(crate) routes: Option<axum::Router>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.hub.node().id)
            .field("name", &self.hub.node().name)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// A builder with the development configuration, the in-memory broker and no handlers.
    pub fn builder() -> NodeBuilder {
        NodeBuilder::new()
    }

    /// The node's routes, to nest in an application's router: `/connection/websocket` (the
    /// client protocol), `/api/{method}` (the server HTTP API, when `api.key` is set or
    /// `api.insecure`), `/health`, `/metrics`, and `/` when `demos.enabled`; with the routes
    /// given to [`NodeBuilder::routes`] in front of them.
    ///
    /// The server API reads the peer address: serve the app with
    /// `into_make_service_with_connect_info::<SocketAddr>()`. Call [`Node::shutdown`] when the
    /// app stops, so that clients are told to reconnect elsewhere.
    ///
    /// ```no_run
    /// # async fn demo() -> anyhow::Result<()> {
    /// use std::net::SocketAddr;
    /// use axum::{routing::get, Router};
    ///
    /// let node = switchboard::Node::builder().build().await?;
    /// let app = Router::new()
    ///     .route("/", get(|| async { "my app" }))
    ///     .nest("/realtime", node.router());
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    /// axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn router(&self) -> axum::Router {
        let node = app::router(AppState {
            hub: self.hub.clone(),
            config: self.config.clone(),
            tasks: self.tasks.clone(),
        });
        match &self.routes {
            // The application's routes first; whatever they do not match goes to the node's.
            Some(routes) => routes.clone().fallback_service(node),
            None => node,
        }
    }

    /// Serves `io` (namespaces and handlers of your own: library semantics) on this node, at
    /// the path of the configuration's `[socketio]` section (default `/socket.io/`), with its
    /// ping, buffer and CORS options. Merge the router into your app (`[socketio] enabled` is
    /// about the binary's built-in semantics and must stay off on that path).
    ///
    /// Every socket gets a hub session when it connects (the hub's authentication applies:
    /// `auth.token`, anonymous clients, the connect handler), rooms are hub channels (room `R`
    /// of namespace `/chat` is channel `chat:R`): `socket.join(room)` subscribes, and
    /// `socket.to(room).emit(...)` publishes, so members on every node get it, together with
    /// native clients and server API publications. Namespace-wide emits (`io.emitter(ns)`,
    /// `socket.broadcast()`) reach the namespace's sockets on every node that serves `io`'s
    /// namespaces at the same path. Polling requests may reach any node.
    pub fn socketio(&self, io: &crate::socketio::SocketIo) -> axum::Router {
        let c = &self.config.socketio;
        let bridge = switchboard_socketio::bridge::HubBridge::new(self.hub.clone())
            .with_recovery(c.recovery)
            .with_path(&c.path);
        bridge.attach(io);
        let engine = io.engine(
            switchboard_socketio::EngineConfig::default()
                .ping_interval(c.ping_interval)
                .ping_timeout(c.ping_timeout)
                .max_payload(c.max_buffer_size)
                .cors_origins(c.cors_origins.clone()),
        );
        switchboard_socketio::cluster::HubCluster::install(&self.hub, &engine, &c.path);
        switchboard_socketio::SocketIo::router(engine, &c.path)
    }

    /// Serves the node alone on `addr` (with the configuration's TLS, head timeout and
    /// graceful shutdown) until SIGINT or SIGTERM, then drains it.
    pub async fn serve(self, addr: SocketAddr) -> anyhow::Result<()> {
        self.start(addr)
            .await?
            .run_until(switchboard_http::shutdown_signal())
            .await;
        Ok(())
    }

    /// Starts serving the node alone on `addr` (port 0 picks a free port) in the background.
    pub async fn start(self, addr: SocketAddr) -> anyhow::Result<Server> {
        let mut config = (*self.config).clone();
        config.address = addr;
        let router = self.router();
        let inner =
            switchboard_http::Server::serve_router(config, self.hub.clone(), self.tasks, router)
                .await?;
        Ok(Server { inner })
    }

    /// Drains the node: refuses new connections, tells every client to reconnect (3001
    /// "shutdown") and waits up to `shutdown.drain_timeout` for the connections to end. For a
    /// node mounted with [`Node::router`]; [`Node::serve`] does it by itself.
    pub async fn shutdown(&self) {
        switchboard_http::drain(&self.hub, &self.tasks, self.config.shutdown.drain_timeout).await;
    }

    /// This node's unique id (a UUID, new each start).
    pub fn id(&self) -> &str {
        &self.hub.node().id
    }

    /// The configuration the node runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }
}

/// A node serving on its own listener (from [`Node::start`]).
pub struct Server {
    inner: switchboard_http::Server,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.inner.addr())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr()
    }

    /// Shuts down gracefully (clients are told to reconnect) and waits until it is done.
    pub async fn shutdown(self) {
        self.inner.shutdown().await;
    }

    /// Runs until `signal` completes, then shuts down gracefully.
    pub async fn run_until(self, signal: impl Future<Output = ()>) {
        self.inner.run_until(signal).await;
    }
}
