//! The Switchboard server: transports, operations endpoints, configuration and the process
//! lifecycle (startup, graceful shutdown) around a [`switchboard_hub::Hub`].
//!
//! This crate is internal: applications use the public `switchboard` crate, whose `Node` is
//! built from [`build_hub`] and [`app::router`] and served by [`Server::serve_hub`] (the
//! `switchboard` binary is one such application). Integration tests start a [`Server`] on an
//! ephemeral port with [`Server::start`].

pub mod api;
pub mod app;
pub mod config;
pub mod glob;
pub mod home;
pub mod jwks;
pub mod ops;
pub mod origin;
pub mod proxy;
pub mod sdk;
pub mod tls;
pub mod token;
pub mod transport;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use switchboard_broker_nats::NatsBroker;
use switchboard_broker_redis::RedisBroker;
use switchboard_hub::{Handlers, Hub, MemoryBroker};
use switchboard_proto::DisconnectCode;
use tokio::net::{TcpListener, TcpSocket};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::AppState;
use crate::config::{BrokerKind, Config, Mode};

/// A running server.
pub struct Server {
    addr: SocketAddr,
    hub: Hub,
    shutdown: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

/// Builds the node's hub from `config`: connects the configured broker, installs the HTTP
/// proxies and the application's `handlers`, starts the JWKS refresh, and warns about
/// development mode.
pub async fn build_hub(
    config: &Config,
    handlers: Option<Arc<dyn Handlers>>,
) -> anyhow::Result<Hub> {
    let name = config.node_name.clone();
    let hub = match config.broker.kind {
        BrokerKind::Memory => {
            let memory = MemoryBroker::shared();
            Hub::with_presence(config.hub(), memory.clone(), memory, name)
        }
        BrokerKind::Redis => {
            let redis = RedisBroker::connect(config.broker.redis.clone(), name.clone())
                .await
                .context("broker.redis")?;
            Hub::with_presence(config.hub(), redis.clone(), redis, name)
        }
        BrokerKind::Nats => {
            let nats = Arc::new(
                NatsBroker::connect(config.broker.nats.clone(), &name)
                    .await
                    .context("broker.nats")?,
            );
            Hub::with_presence(config.hub(), nats.clone(), nats, name)
        }
    };
    if config.proxy.any() {
        hub.set_proxy(Arc::new(proxy::HttpProxy::new(&config.proxy)?));
    }
    if let Some(handlers) = handlers {
        hub.set_handlers(handlers);
    }
    if !config.client.token.jwks_url.is_empty()
        || !config.client.subscription_token.jwks_url.is_empty()
    {
        jwks::spawn_refresh(hub.clone(), config);
    }
    if config.mode == Mode::Development {
        tracing::warn!("{}", development_warning(config));
    }
    Ok(hub)
}

impl Server {
    /// Binds `config.address` (port 0 picks a free port) and starts serving in the background
    /// (a node without handlers).
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        let hub = build_hub(&config, None).await?;
        Self::serve_hub(config, hub, TaskTracker::new()).await
    }

    /// Binds `config.address` and serves `hub` (built from `config` by [`build_hub`]) in the
    /// background; connection tasks are tracked by `tasks`, which shutdown waits for.
    pub async fn serve_hub(config: Config, hub: Hub, tasks: TaskTracker) -> anyhow::Result<Self> {
        let state = AppState {
            hub: hub.clone(),
            config: Arc::new(config.clone()),
            tasks: tasks.clone(),
        };
        let router = app::router(state);
        Self::serve_router(config, hub, tasks, router).await
    }

    /// Like [`Server::serve_hub`], with `router` as the routes served: [`app::router`] of the
    /// same hub, possibly with the application's own routes around it.
    pub async fn serve_router(
        config: Config,
        hub: Hub,
        tasks: TaskTracker,
        router: axum::Router,
    ) -> anyhow::Result<Self> {
        let listener =
            bind(config.address).with_context(|| format!("cannot listen on {}", config.address))?;
        let addr = listener.local_addr()?;
        let mode = config.mode.as_str();
        let url = format!(
            "{}://{addr}/",
            if config.tls.is_enabled() {
                "https"
            } else {
                "http"
            }
        );
        let shutdown = CancellationToken::new();
        let drain_timeout = config.shutdown.drain_timeout;
        let tls = if config.tls.is_enabled() {
            Some(config.tls.acceptor()?)
        } else {
            None
        };
        let done = tokio::spawn(serve(
            listener,
            router,
            tls,
            config.http.head_timeout,
            hub.clone(),
            tasks,
            shutdown.clone(),
            drain_timeout,
        ));
        // Scripts and tests wait for this message and read `addr`: keep both.
        tracing::info!(%addr, %url, mode = %mode, node = %hub.node().name, "switchboard listening");
        Ok(Self {
            addr,
            hub,
            shutdown,
            done,
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The node's hub.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Starts a graceful shutdown and waits until it is complete.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.done.await;
    }

    /// Runs until `signal` completes, then shuts down gracefully.
    pub async fn run_until(self, signal: impl Future<Output = ()>) {
        tokio::select! {
            _ = signal => {}
            _ = self.shutdown.cancelled() => {}
        }
        self.shutdown().await;
    }
}

/// The startup warning of development mode: what this configuration leaves open (settings
/// made explicitly win over the mode's defaults, so it is worked out from the result).
fn development_warning(config: &Config) -> String {
    let mut open = Vec::new();
    let channel = &config.channel;
    let open_for_anonymous = |ns: &switchboard_hub::NamespaceOptions| {
        ns.allow_subscribe_for_client
            && ns.allow_subscribe_for_anonymous
            && ns.allow_publish_for_client
            && ns.allow_publish_for_anonymous
    };
    if config.client.allow_anonymous {
        let everywhere = channel.allow_unknown_namespaces
            && open_for_anonymous(&channel.default)
            && channel.namespaces.iter().all(open_for_anonymous);
        open.push(if everywhere {
            "anonymous clients may subscribe and publish on any channel"
        } else {
            "anonymous clients may connect"
        });
    }
    let api = &config.api;
    open.push(if !api.key.is_empty() {
        "the server API needs the configured api.key"
    } else if api.insecure {
        "the server API is open without a key to loopback clients"
    } else {
        "the server API is disabled (no api.key)"
    });
    if config.demos.enabled {
        open.push("a start page is served at /");
    }
    format!(
        "development mode: {}; not for production: use --mode production or a config file \
         without mode = \"development\"",
        open.join(", ")
    )
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    // A deep backlog absorbs reconnect storms (every client of a restarted node at once).
    socket.listen(4096)
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    listener: TcpListener,
    router: axum::Router,
    tls: Option<TlsAcceptor>,
    head_timeout: Duration,
    hub: Hub,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    drain_timeout: Duration,
) {
    // The listener stays open while the node drains, so that load balancers get a 503 from
    // `/health` (and new WebSocket clients a 3001 "shutdown" close) instead of a refused
    // connection; it closes once the drain is over.
    let stop_accepting = CancellationToken::new();
    let http = tokio::spawn(accept_loop(
        listener,
        router,
        tls,
        head_timeout,
        stop_accepting.clone(),
    ));
    shutdown.cancelled().await;
    drain(&hub, &tasks, drain_timeout).await;
    stop_accepting.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(1), http).await;
    tracing::info!("shutdown complete");
}

/// Drains the node: refuses new connections, tells every client to reconnect (3001
/// "shutdown") and waits up to `drain_timeout` for the connection tasks in `tasks` to end.
pub async fn drain(hub: &Hub, tasks: &TaskTracker, drain_timeout: Duration) {
    let told = hub.shutdown(DisconnectCode::SHUTDOWN);
    tracing::info!(
        connections = told,
        ?drain_timeout,
        "shutting down: clients told to reconnect"
    );
    tasks.close();
    if tokio::time::timeout(drain_timeout, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            remaining = hub.metrics().connections(),
            "drain timeout; closing the rest"
        );
    }
}

/// Accepts connections until `stop` (TLS first when `tls` is set) and serves HTTP/1.1 with
/// upgrades on each; then closes the listener, lets every connection still speaking HTTP finish
/// the request in progress, and waits for them. Upgraded connections (WebSocket) are not waited
/// for here: they belong to the hub's task tracker.
///
/// One accept loop for both plain and TLS listeners, on hyper's HTTP/1 connection builder
/// rather than `axum::serve`: that is where the head timeout lives ([`HttpConfig`]'s
/// `head_timeout`), and `axum::serve`'s auto (HTTP/1 or HTTP/2) builder first waits, with no
/// limit, for enough bytes to tell the versions apart. HTTP/2 is not served (TLS already offers
/// only `http/1.1` in ALPN; WebSocket upgrades are HTTP/1.1).
///
/// [`HttpConfig`]: crate::config::HttpConfig
async fn accept_loop(
    listener: TcpListener,
    router: axum::Router,
    tls: Option<TlsAcceptor>,
    head_timeout: Duration,
    stop: CancellationToken,
) {
    let connections = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let stop = stop.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            let Some(acceptor) = tls else {
                let io = hyper_util::rt::TokioIo::new(tcp);
                return serve_connection(io, peer, router, head_timeout, stop).await;
            };
            let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "tls handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let io = hyper_util::rt::TokioIo::new(tls);
            serve_connection(io, peer, router, head_timeout, stop).await;
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Serves HTTP/1.1 (with upgrades) on one accepted connection until it ends; on `stop`, finishes
/// the request in progress (if any) and closes.
///
/// The head timeout runs from the first read: a connection that sends nothing, or trickles its
/// request head, is closed when it expires, and so is a keep-alive connection that stays idle
/// that long after a response.
async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    router: axum::Router,
    head_timeout: Duration,
    stop: CancellationToken,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    use tower::ServiceExt as _;

    let service =
        hyper::service::service_fn(move |mut req: axum::http::Request<hyper::body::Incoming>| {
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            router.clone().oneshot(req)
        });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(head_timeout);
    let conn = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "http connection ended with an error");
    }
}

/// How long a client may take to complete the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn development_warning_says_what_is_open() {
        let config = Config::development();
        let warning = development_warning(&config);
        assert!(
            warning.contains("anonymous clients may subscribe and publish on any channel"),
            "{warning}"
        );
        assert!(
            warning.contains("open without a key to loopback clients"),
            "{warning}"
        );
        assert!(warning.contains("start page is served at /"), "{warning}");
    }

    #[test]
    fn development_warning_with_an_api_key_does_not_claim_the_api_is_open() {
        let mut config = Config::development();
        config.api.key = "secret".into();
        config.channel.default.allow_publish_for_anonymous = false;
        config.demos.enabled = false;
        let warning = development_warning(&config);
        assert!(!warning.contains("without a key"), "{warning}");
        assert!(
            warning.contains("needs the configured api.key"),
            "{warning}"
        );
        assert!(!warning.contains("any channel"), "{warning}");
        assert!(!warning.contains("start page"), "{warning}");
    }
}
