//! The demo applications of the `switchboard` binary, served at `/` in development mode
//! (`demos.enabled`): each one a static page using the browser SDK (`/js/switchboard.js`) and,
//! here, the server side written with the public `switchboard` embedding API only: typed
//! handlers, server-side publish, presence and history. docs/DEMOS.md describes them.
//!
//! Everything is scoped: the channel handlers decide only channels of the demo namespaces
//! ([`NAMESPACES`]), and the RPC handler knows only the demo methods (`auction.bid`...); it
//! answers any other method with error 108 "not available", as the node does without a handler.
//!
//! ```no_run
//! # async fn run(mut config: switchboard::Config) -> anyhow::Result<()> {
//! let demos = switchboard_demos::Demos::new();
//! demos.configure(&mut config);
//! let node = demos
//!     .install(switchboard::Node::builder().config(config))
//!     .build()
//!     .await?;
//! demos.start(&node);
//! node.serve("127.0.0.1:8000".parse()?).await?;
//! # Ok(())
//! # }
//! ```

mod chat;
mod pages;

use std::sync::{Arc, OnceLock};

use switchboard::config::{Config, NamespaceOptions};
use switchboard::{
    ClientContext, ErrorCode, HandlerResult, Node, NodeBuilder, PublishReply, PublishRequest,
    Rejection, RpcReply, RpcRequest, SubscribeReply, SubscribeRequest,
};

/// The namespaces the demos use; their channels are decided by the demo handlers.
pub const NAMESPACES: &[&str] = &[chat::NAMESPACE, chat::TYPING_NAMESPACE];

/// The demo applications: their namespaces, handlers, pages and background tasks.
#[derive(Clone, Default)]
pub struct Demos {
    state: Arc<State>,
}

impl std::fmt::Debug for Demos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Demos").finish_non_exhaustive()
    }
}

/// What the handlers and background tasks share.
#[derive(Default)]
struct State {
    /// The node, once built (for server-side publishes).
    node: OnceLock<Node>,
}

impl Demos {
    /// The demos, not yet installed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the demo namespaces (history, presence, recovery as each demo needs) to `config`;
    /// a namespace of the same name already configured is kept as it is.
    pub fn configure(&self, config: &mut Config) {
        for ns in namespaces() {
            if !config.channel.namespaces.iter().any(|n| n.name == ns.name) {
                config.channel.namespaces.push(ns);
            }
        }
    }

    /// Installs the demo handlers (limited to the demo namespaces and RPC methods) and pages
    /// (`/` and `/demos/...`) on `builder`.
    pub fn install(&self, builder: NodeBuilder) -> NodeBuilder {
        let subscribe = self.clone();
        let publish = self.clone();
        let rpc = self.clone();
        builder
            .handler_namespaces(NAMESPACES.iter().copied())
            .on_subscribe(move |ctx, req| {
                let demos = subscribe.clone();
                async move { demos.subscribe(ctx, req).await }
            })
            .on_publish(move |ctx, req| {
                let demos = publish.clone();
                async move { demos.publish(ctx, req).await }
            })
            .on_rpc(move |ctx, req| {
                let demos = rpc.clone();
                async move { demos.rpc(ctx, req).await }
            })
            .routes(pages::router())
    }

    /// Starts the demos' background tasks on `node` (built with [`Demos::install`]).
    pub fn start(&self, node: &Node) {
        let _ = self.state.node.set(node.clone());
    }

    async fn subscribe(
        &self,
        _ctx: ClientContext,
        req: SubscribeRequest,
    ) -> HandlerResult<SubscribeReply> {
        match namespace(&req.channel) {
            chat::NAMESPACE | chat::TYPING_NAMESPACE => chat::subscribe(&req),
            _ => Err(ErrorCode::UNKNOWN_CHANNEL.into()),
        }
    }

    async fn publish(
        &self,
        _ctx: ClientContext,
        req: PublishRequest,
    ) -> HandlerResult<PublishReply> {
        match namespace(&req.channel) {
            chat::NAMESPACE => chat::message(&req),
            chat::TYPING_NAMESPACE => chat::typing(&req),
            _ => Err(ErrorCode::PERMISSION_DENIED.into()),
        }
    }

    async fn rpc(&self, _ctx: ClientContext, req: RpcRequest) -> HandlerResult<RpcReply> {
        // Not a demo method: what the node answers without an RPC handler.
        let _ = req;
        Err(ErrorCode::NOT_AVAILABLE.into())
    }
}

/// The namespace of `channel` (`""` for the default one).
fn namespace(channel: &str) -> &str {
    channel.split_once(':').map_or("", |(ns, _)| ns)
}

/// The demo namespaces' options.
fn namespaces() -> Vec<NamespaceOptions> {
    vec![chat::namespace(), chat::typing_namespace()]
}

/// A namespace whose subscribers may read presence and history (the handlers decide who
/// subscribes and publishes), anonymous clients included: the demos need no login.
fn open_namespace(name: &str) -> NamespaceOptions {
    let mut ns = NamespaceOptions::default();
    ns.name = name.into();
    ns.allow_presence_for_subscriber = true;
    ns.allow_presence_for_anonymous = true;
    ns.allow_history_for_subscriber = true;
    ns.allow_history_for_anonymous = true;
    ns.max_publish_size = 16 * 1024;
    ns
}

/// A rejection with a message for the user (codes 4000+ are the application's).
fn invalid(message: impl Into<String>) -> Rejection {
    Rejection::error(4000, message)
}

/// The `name` field of a subscribe's data, checked: a nickname or user name of 1 to 24
/// characters, trimmed.
fn name_from(data: Option<&switchboard::Data>, field: &str) -> Result<String, Rejection> {
    let value: serde_json::Value = match data {
        Some(d) => d.decode()?,
        None => serde_json::Value::Null,
    };
    let name = value
        .get(field)
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .trim();
    if name.is_empty() {
        return Err(invalid(format!("{field} is empty")));
    }
    if name.chars().count() > 24 {
        return Err(invalid(format!(
            "{field} is too long (at most 24 characters)"
        )));
    }
    Ok(name.to_string())
}

/// Whether `id` is a valid room or document id: 1 to 32 of `a-z0-9-_`.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 32
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}
