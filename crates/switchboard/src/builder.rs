//! [`NodeBuilder`]: configuration, broker and handlers in, a [`Node`] out.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use switchboard_http::config::{BrokerKind, Config};
use switchboard_hub::handlers::{
    ClientContext, ConnectReply, ConnectRequest, HandlerResult, Handlers, PublishReply,
    PublishRequest, RefreshReply, RpcReply, RpcRequest, SubscribeReply, SubscribeRequest,
};
use switchboard_proto::DisconnectCode;
use tokio_util::task::TaskTracker;

use crate::closures::{call, ClosureHandlers};
use crate::{NatsConfig, Node, RedisConfig};

/// Where the node's channels, history and presence live.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Broker {
    /// In this process: one node alone (the default).
    Memory,
    /// Redis (single server, shards, Sentinel or Cluster): several nodes behave as one.
    Redis(RedisConfig),
    /// NATS with JetStream: several nodes behave as one.
    Nats(NatsConfig),
}

impl Broker {
    /// Redis at `address` (`host:port` or `redis://host:port/db`), keys under `prefix`.
    pub fn redis(address: impl Into<String>, prefix: impl Into<String>) -> Self {
        let mut config = RedisConfig::default();
        config.addresses = vec![address.into()];
        config.prefix = prefix.into();
        Self::Redis(config)
    }
}

/// Builds a [`Node`]: start from [`Node::builder`].
///
/// ```no_run
/// use switchboard::{ConnectReply, Node, Rejection, ErrorCode, SubscribeReply};
///
/// # async fn demo() -> anyhow::Result<()> {
/// let node = Node::builder()
///     .on_connect(|_ctx, req| async move {
///         match req.data.map(|d| d.decode::<String>()).transpose()? {
///             Some(name) if !name.is_empty() => Ok(ConnectReply::user(name)),
///             _ => Err(ErrorCode::UNAUTHORIZED.into()),
///         }
///     })
///     .on_subscribe(|ctx, req| async move {
///         if req.channel.starts_with("admin:") && ctx.user() != "root" {
///             return Err(Rejection::from(ErrorCode::PERMISSION_DENIED));
///         }
///         Ok(SubscribeReply::accept())
///     })
///     .build()
///     .await?;
/// node.serve("127.0.0.1:8000".parse()?).await?;
/// # Ok(())
/// # }
/// ```
#[must_use = "a builder does nothing until `build` is called"]
pub struct NodeBuilder {
    config: Config,
    broker: Option<Broker>,
    closures: ClosureHandlers,
    handlers: Option<Arc<dyn Handlers>>,
    timeout: Option<Duration>,
    routes: Option<axum::Router>,
}

impl std::fmt::Debug for NodeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeBuilder")
            .field("broker", &self.broker)
            .field("closures", &self.closures.any())
            .field("handlers", &self.handlers.is_some())
            .field("routes", &self.routes.is_some())
            .finish_non_exhaustive()
    }
}

impl NodeBuilder {
    pub(crate) fn new() -> Self {
        Self {
            config: Config::development(),
            broker: None,
            closures: ClosureHandlers::default(),
            handlers: None,
            timeout: None,
            routes: None,
        }
    }

    /// The configuration: the binary's [`Config`] (see docs/CONFIG.md), loaded with
    /// [`config::load`](crate::config::load) or built in code. Default:
    /// [`Config::development`] (open defaults for local development, a warning in the log).
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// The broker (overrides `config.broker.kind` and its section).
    pub fn broker(mut self, broker: Broker) -> Self {
        self.broker = Some(broker);
        self
    }

    /// Time limit of one handler call; past it the client gets error 100 (temporary). Default:
    /// `proxy.timeout` of the configuration (1 s).
    pub fn handler_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Limits the channel handlers (subscribe, publish, sub_refresh, subscribed, unsubscribed)
    /// to channels of these namespaces (`""` is the default namespace); channels of other
    /// namespaces are decided by the configuration. Default: every namespace.
    pub fn handler_namespaces<I, S>(mut self, namespaces: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.closures.namespaces = Some(namespaces.into_iter().map(Into::into).collect());
        self
    }

    /// Decides connects without a verified token: accept as a user with
    /// [`ConnectReply`], or refuse with a [`Rejection`](crate::Rejection). Without it (and
    /// without a connect proxy) `client.allow_anonymous` decides.
    pub fn on_connect<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(ClientContext, ConnectRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult<ConnectReply>> + Send + 'static,
    {
        self.closures.connect = Some(call(f));
        self
    }

    /// Decides subscribes (instead of the namespace's `allow_subscribe_*` options).
    pub fn on_subscribe<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(ClientContext, SubscribeRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult<SubscribeReply>> + Send + 'static,
    {
        self.closures.subscribe = Some(call(f));
        self
    }

    /// Decides publications (instead of the namespace's `allow_publish_*` options); may
    /// replace the data with [`PublishReply::replace`].
    pub fn on_publish<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(ClientContext, PublishRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult<PublishReply>> + Send + 'static,
    {
        self.closures.publish = Some(call(f));
        self
    }

    /// Answers RPC calls (without it, and without an RPC proxy, they get error 108). Calls run
    /// beside the connection's other commands.
    pub fn on_rpc<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(ClientContext, RpcRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult<RpcReply>> + Send + 'static,
    {
        self.closures.rpc = Some(call(f));
        self
    }

    /// Extends connections whose expiry is reached (without it the client refreshes its token).
    pub fn on_refresh<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(ClientContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult<RefreshReply>> + Send + 'static,
    {
        self.closures.refresh = Some(call(move |ctx, ()| f(ctx)));
        self
    }

    /// Extends subscriptions whose expiry is reached; gets the channel.
    pub fn on_sub_refresh<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(ClientContext, String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult<RefreshReply>> + Send + 'static,
    {
        self.closures.sub_refresh = Some(call(f));
        self
    }

    /// Notified when a subscription starts (in a task of its own); gets the channel.
    pub fn on_subscribed<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(ClientContext, String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.closures.subscribed = Some(call(f));
        self
    }

    /// Notified when a subscription ends, also when its connection ends; gets the channel.
    pub fn on_unsubscribed<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(ClientContext, String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.closures.unsubscribed = Some(call(f));
        self
    }

    /// Notified when a connected client's connection ends, with why.
    pub fn on_disconnect<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(ClientContext, DisconnectCode) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.closures.disconnected = Some(call(f));
        self
    }

    /// Installs a [`Handlers`] implementation instead of closures (the `on_*` closures,
    /// [`handler_namespaces`](Self::handler_namespaces) and
    /// [`handler_timeout`](Self::handler_timeout) are then not used).
    pub fn handlers(mut self, handlers: impl Handlers) -> Self {
        self.handlers = Some(Arc::new(handlers));
        self
    }

    /// The application's own HTTP routes (pages, assets, its API), served together with the
    /// node's by [`Node::serve`], [`Node::start`] and [`Node::router`]. A request goes to
    /// `routes` first and to the node's routes when `routes` has none for it, so `routes` wins
    /// where both have a path (`/`, for instance). Calling it again adds more routes.
    pub fn routes(mut self, routes: axum::Router) -> Self {
        self.routes = Some(match self.routes.take() {
            Some(before) => before.merge(routes),
            None => routes,
        });
        self
    }

    /// Connects the broker and builds the node. Needs a tokio runtime.
    pub async fn build(self) -> anyhow::Result<Node> {
        let mut config = self.config;
        match self.broker {
            None => {}
            Some(Broker::Memory) => config.broker.kind = BrokerKind::Memory,
            Some(Broker::Redis(redis)) => {
                config.broker.kind = BrokerKind::Redis;
                config.broker.redis = redis;
            }
            Some(Broker::Nats(nats)) => {
                config.broker.kind = BrokerKind::Nats;
                config.broker.nats = nats;
            }
        }
        let handlers = match self.handlers {
            Some(h) => Some(h),
            None if self.closures.any() => {
                let mut closures = self.closures;
                closures.timeout = self.timeout.unwrap_or(config.proxy.timeout);
                Some(Arc::new(closures) as Arc<dyn Handlers>)
            }
            None => None,
        };
        let hub = switchboard_http::build_hub(&config, handlers).await?;
        Ok(Node {
            hub,
            config: Arc::new(config),
            tasks: TaskTracker::new(),
            routes: self.routes,
        })
    }
}
