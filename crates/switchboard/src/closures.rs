//! Handlers given as closures on the [`NodeBuilder`](crate::NodeBuilder): one optional async
//! function per decision and notification, limited to some namespaces if the builder says so.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use switchboard_hub::handlers::{
    ClientContext, ConnectReply, ConnectRequest, HandlerKind, HandlerResult, Handlers,
    PublishReply, PublishRequest, RefreshReply, RpcReply, RpcRequest, SubscribeReply,
    SubscribeRequest,
};
use switchboard_hub::NAMESPACE_SEPARATOR;
use switchboard_proto::{DisconnectCode, ErrorCode};

/// An async function of the handler's context and request.
type Call<A, R> = Arc<dyn Fn(ClientContext, A) -> BoxFuture<'static, R> + Send + Sync>;

/// Boxes an embedder's closure into a [`Call`].
pub(crate) fn call<A, R, F, Fut>(f: F) -> Call<A, R>
where
    F: Fn(ClientContext, A) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
{
    Arc::new(move |ctx, arg| Box::pin(f(ctx, arg)))
}

/// The closures registered on the builder.
#[derive(Default, Clone)]
pub(crate) struct ClosureHandlers {
    pub(crate) connect: Option<Call<ConnectRequest, HandlerResult<ConnectReply>>>,
    pub(crate) subscribe: Option<Call<SubscribeRequest, HandlerResult<SubscribeReply>>>,
    pub(crate) publish: Option<Call<PublishRequest, HandlerResult<PublishReply>>>,
    pub(crate) rpc: Option<Call<RpcRequest, HandlerResult<RpcReply>>>,
    pub(crate) refresh: Option<Call<(), HandlerResult<RefreshReply>>>,
    pub(crate) sub_refresh: Option<Call<String, HandlerResult<RefreshReply>>>,
    pub(crate) subscribed: Option<Call<String, ()>>,
    pub(crate) unsubscribed: Option<Call<String, ()>>,
    pub(crate) disconnected: Option<Call<DisconnectCode, ()>>,
    /// Namespaces whose channels the channel handlers decide; `None` = every namespace.
    pub(crate) namespaces: Option<Vec<String>>,
    pub(crate) timeout: Duration,
}

impl ClosureHandlers {
    /// Whether any closure is registered.
    pub(crate) fn any(&self) -> bool {
        self.connect.is_some()
            || self.subscribe.is_some()
            || self.publish.is_some()
            || self.rpc.is_some()
            || self.refresh.is_some()
            || self.sub_refresh.is_some()
            || self.subscribed.is_some()
            || self.unsubscribed.is_some()
            || self.disconnected.is_some()
    }

    fn in_scope(&self, channel: Option<&str>) -> bool {
        let (Some(namespaces), Some(channel)) = (&self.namespaces, channel) else {
            return true;
        };
        let namespace = channel
            .split_once(NAMESPACE_SEPARATOR)
            .map_or("", |(ns, _)| ns);
        namespaces.iter().any(|n| n == namespace)
    }
}

fn not_available<T>() -> HandlerResult<T> {
    Err(ErrorCode::NOT_AVAILABLE.into())
}

#[async_trait]
impl Handlers for ClosureHandlers {
    fn covers(&self, kind: HandlerKind, channel: Option<&str>) -> bool {
        let registered = match kind {
            HandlerKind::Connect => self.connect.is_some(),
            HandlerKind::Refresh => self.refresh.is_some(),
            HandlerKind::Subscribe => self.subscribe.is_some(),
            HandlerKind::Publish => self.publish.is_some(),
            HandlerKind::SubRefresh => self.sub_refresh.is_some(),
            HandlerKind::Rpc => self.rpc.is_some(),
            HandlerKind::Subscribed => self.subscribed.is_some(),
            HandlerKind::Unsubscribed => self.unsubscribed.is_some(),
            HandlerKind::Disconnected => self.disconnected.is_some(),
            _ => false,
        };
        registered && self.in_scope(channel)
    }

    fn timeout(&self) -> Duration {
        self.timeout
    }

    async fn connect(
        &self,
        ctx: ClientContext,
        req: ConnectRequest,
    ) -> HandlerResult<ConnectReply> {
        match &self.connect {
            Some(f) => f(ctx, req).await,
            None => not_available(),
        }
    }

    async fn subscribe(
        &self,
        ctx: ClientContext,
        req: SubscribeRequest,
    ) -> HandlerResult<SubscribeReply> {
        match &self.subscribe {
            Some(f) => f(ctx, req).await,
            None => not_available(),
        }
    }

    async fn publish(
        &self,
        ctx: ClientContext,
        req: PublishRequest,
    ) -> HandlerResult<PublishReply> {
        match &self.publish {
            Some(f) => f(ctx, req).await,
            None => not_available(),
        }
    }

    async fn rpc(&self, ctx: ClientContext, req: RpcRequest) -> HandlerResult<RpcReply> {
        match &self.rpc {
            Some(f) => f(ctx, req).await,
            None => not_available(),
        }
    }

    async fn refresh(&self, ctx: ClientContext) -> HandlerResult<RefreshReply> {
        match &self.refresh {
            Some(f) => f(ctx, ()).await,
            None => not_available(),
        }
    }

    async fn sub_refresh(
        &self,
        ctx: ClientContext,
        channel: String,
    ) -> HandlerResult<RefreshReply> {
        match &self.sub_refresh {
            Some(f) => f(ctx, channel).await,
            None => not_available(),
        }
    }

    async fn subscribed(&self, ctx: ClientContext, channel: String) {
        if let Some(f) = &self.subscribed {
            f(ctx, channel).await;
        }
    }

    async fn unsubscribed(&self, ctx: ClientContext, channel: String) {
        if let Some(f) = &self.unsubscribed {
            f(ctx, channel).await;
        }
    }

    async fn disconnected(&self, ctx: ClientContext, code: DisconnectCode) {
        if let Some(f) = &self.disconnected {
            f(ctx, code).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_limit_the_channel_handlers_only() {
        let mut h = ClosureHandlers {
            subscribe: Some(call(|_, _: SubscribeRequest| async {
                Ok(SubscribeReply::accept())
            })),
            rpc: Some(call(|_, _: RpcRequest| async { Ok(RpcReply::empty()) })),
            ..ClosureHandlers::default()
        };
        assert!(h.covers(HandlerKind::Subscribe, Some("news")));
        assert!(!h.covers(HandlerKind::Publish, Some("news")));
        h.namespaces = Some(vec!["chat".into(), String::new()]);
        assert!(h.covers(HandlerKind::Subscribe, Some("chat:lobby")));
        assert!(h.covers(HandlerKind::Subscribe, Some("lobby")));
        assert!(!h.covers(HandlerKind::Subscribe, Some("game:1")));
        assert!(h.covers(HandlerKind::Rpc, None));
    }
}
