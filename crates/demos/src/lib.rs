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

mod auction;
mod chat;
mod crdt;
mod dashboard;
mod editor;
mod game;
mod notify;
mod pages;

use std::sync::{Arc, OnceLock};

use switchboard::config::{Config, NamespaceOptions};
use switchboard::{
    ClientContext, Data, ErrorCode, HandlerResult, Node, NodeBuilder, PublishReply, PublishRequest,
    Rejection, RpcReply, RpcRequest, SubscribeReply, SubscribeRequest,
};

/// The namespaces the demos use; their channels are decided by the demo handlers.
pub const NAMESPACES: &[&str] = &[
    chat::NAMESPACE,
    chat::TYPING_NAMESPACE,
    auction::NAMESPACE,
    notify::NAMESPACE,
    dashboard::NAMESPACE,
    game::NAMESPACE,
    editor::NAMESPACE,
    editor::CURSOR_NAMESPACE,
];

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
    auctions: Arc<auction::Auctions>,
    dashboard: Arc<dashboard::Dashboard>,
    game: Arc<game::Game>,
    editor: editor::Editor,
}

impl Demos {
    /// The demos, not yet installed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the demo namespaces (history, presence, recovery as each demo needs) to `config`;
    /// a namespace of the same name already configured is kept as it is.
    pub fn configure(&self, config: &mut Config) {
        self.state.dashboard.set_rate(config.demos.dashboard_rate);
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
        let subscribed = self.clone();
        let unsubscribed = self.clone();
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
            .on_subscribed(move |_ctx, channel| {
                let demos = subscribed.clone();
                async move { demos.state.dashboard.watching(&channel, true) }
            })
            .on_unsubscribed(move |ctx, channel| {
                let demos = unsubscribed.clone();
                async move {
                    demos.state.dashboard.watching(&channel, false);
                    demos.state.game.leave(ctx.client_id(), &channel);
                }
            })
            .routes(pages::router())
    }

    /// Starts the demos' background tasks on `node` (built with [`Demos::install`]).
    pub fn start(&self, node: &Node) {
        if self.state.node.set(node.clone()).is_ok() {
            self.state.dashboard.spawn(node.clone());
            self.state.game.spawn(node.clone());
        }
    }

    async fn subscribe(
        &self,
        ctx: ClientContext,
        req: SubscribeRequest,
    ) -> HandlerResult<SubscribeReply> {
        match namespace(&req.channel) {
            chat::NAMESPACE | chat::TYPING_NAMESPACE => chat::subscribe(&req),
            dashboard::NAMESPACE => self.state.dashboard.subscribe(&req.channel),
            editor::NAMESPACE | editor::CURSOR_NAMESPACE => {
                editor::check_channel(&req.channel)?;
                let name = name_from(req.data.as_ref(), "name")?;
                let info = Data::json(&serde_json::json!({ "name": name }))?;
                Ok(SubscribeReply::accept().with_info(info))
            }
            game::NAMESPACE => self
                .state
                .game
                .subscribe(&ctx, &req.channel, req.data.as_ref()),
            notify::NAMESPACE => {
                notify::check_channel(&req.channel)?;
                Ok(SubscribeReply::accept())
            }
            auction::NAMESPACE => {
                self.state
                    .auctions
                    .subscribe(self.node()?, &req.channel, req.data.as_ref())
            }
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
            editor::CURSOR_NAMESPACE => editor::cursor(&req.data),
            _ => Err(ErrorCode::PERMISSION_DENIED.into()),
        }
    }

    async fn rpc(&self, ctx: ClientContext, req: RpcRequest) -> HandlerResult<RpcReply> {
        let data = req.data.as_ref();
        match req.method.as_str() {
            "auction.bid" => self.state.auctions.bid(self.node()?, data).await,
            "auction.start" => self.state.auctions.start(self.node()?, data).await,
            "notify.send" => notify::send(self.node()?, data).await,
            "editor.state" => self.state.editor.state(data).await,
            "editor.ops" => self.state.editor.ops(self.node()?, data).await,
            "game.input" => self.state.game.input(&ctx, data),
            "game.ping" => self.state.game.ping(&ctx, data),
            // Not a demo method: what the node answers without an RPC handler.
            _ => Err(ErrorCode::NOT_AVAILABLE.into()),
        }
    }

    /// The node, for server-side publishes (set by [`Demos::start`]).
    fn node(&self) -> Result<&Node, Rejection> {
        self.state
            .node
            .get()
            .ok_or_else(|| Rejection::temporary(4500, "the demos are starting"))
    }
}

/// The namespace of `channel` (`""` for the default one).
fn namespace(channel: &str) -> &str {
    channel.split_once(':').map_or("", |(ns, _)| ns)
}

/// The demo namespaces' options.
fn namespaces() -> Vec<NamespaceOptions> {
    vec![
        chat::namespace(),
        chat::typing_namespace(),
        auction::namespace(),
        notify::namespace(),
        dashboard::namespace(),
        game::namespace(),
        editor::namespace(),
        editor::cursor_namespace(),
    ]
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
