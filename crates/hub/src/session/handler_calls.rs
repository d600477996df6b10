//! Calls to the application's Rust handlers ([`Handlers`]): contexts, guarded decisions, RPC
//! calls answered beside the connection's other commands, and notifications.

use super::*;

impl Client {
    /// The installed handlers when they decide `kind` (for `channel`).
    pub(super) fn handler(
        &self,
        kind: HandlerKind,
        channel: Option<&str>,
    ) -> Option<Arc<dyn Handlers>> {
        self.hub
            .inner
            .handlers
            .get()
            .filter(|h| h.covers(kind, channel))
            .cloned()
    }

    /// What a handler learns about this connection.
    pub(super) fn context(&self) -> ClientContext {
        ClientContext {
            client: self.id.clone(),
            user: self.user.clone(),
            transport: self.transport.name,
            headers: self.headers.clone(),
            conn_info: self.conn_info.clone().map(Data::from_raw),
            meta: self.meta.clone().map(Data::from_raw),
        }
    }

    /// Runs a decision with the handlers' time limit; panics and timeouts are error 100.
    pub(super) async fn decide<T>(
        &self,
        kind: HandlerKind,
        handlers: &Arc<dyn Handlers>,
        call: impl std::future::Future<Output = HandlerResult<T>>,
    ) -> Result<T, Refusal> {
        guarded(kind, handlers.timeout(), call)
            .await
            .map_err(Refusal::from)
    }

    /// Answers an RPC call with the handlers in a task of its own, so that the connection's
    /// next commands do not wait for it; the reply (or error, or disconnect) goes straight to the
    /// outbound queue. At most [`MAX_CONCURRENT_RPC`] calls run at once per connection.
    pub(super) async fn spawn_rpc(
        &mut self,
        id: u32,
        handlers: Arc<dyn Handlers>,
        req: &switchboard_proto::RpcRequest,
    ) {
        while self.rpc_calls.try_join_next().is_some() {}
        while self.rpc_calls.len() >= MAX_CONCURRENT_RPC {
            self.rpc_calls.join_next().await;
        }
        let ctx = self.context();
        let request = crate::handlers::RpcRequest {
            method: req.method.clone(),
            data: req.data.clone().map(Data::from_raw),
        };
        let out = self.out.clone();
        let metrics = self.hub.metrics().clone();
        self.rpc_calls.spawn(async move {
            let timeout = handlers.timeout();
            let answer = guarded(HandlerKind::Rpc, timeout, handlers.rpc(ctx, request)).await;
            let message = match answer {
                Ok(reply) => {
                    let result = switchboard_proto::RpcResult {
                        data: reply.data.map(Data::into_raw),
                    };
                    encode_reply(id, &ReplyResult::Rpc(result))
                }
                Err(Rejection::Error {
                    code,
                    message,
                    temporary,
                }) => {
                    if id == 0 {
                        return;
                    }
                    switchboard_proto::encode_custom_error_reply(id, code, &message, temporary)
                }
                Err(Rejection::Disconnect(code)) => return out.close(code),
            };
            metrics.messages_out(1, message.len() as u64);
            // An overflow closes the queue with 3008 by itself.
            out.push(message);
        });
    }

    /// Tells the handlers that this connection's subscription to `channel` started
    /// ([`HandlerKind::Subscribed`]) or ended ([`HandlerKind::Unsubscribed`]).
    pub(super) fn notify_subscription(&self, kind: HandlerKind, channel: &str) {
        let Some(handlers) = self.handler(kind, Some(channel)) else {
            return;
        };
        let ctx = self.context();
        let channel = channel.to_string();
        crate::handlers::notify(&handlers, kind, move |h| {
            Box::pin(async move {
                match kind {
                    HandlerKind::Subscribed => h.subscribed(ctx, channel).await,
                    _ => h.unsubscribed(ctx, channel).await,
                }
            })
        });
    }

    /// Tells the handlers that a connected session ends: every subscription, then the
    /// connection (with why it ended, 3000 "connection closed" when the client went away).
    pub(super) fn notify_ending(&self) {
        if !self.connected || self.hub.inner.handlers.get().is_none() {
            return;
        }
        for channel in self.subs.keys() {
            self.notify_subscription(HandlerKind::Unsubscribed, channel);
        }
        let Some(handlers) = self.handler(HandlerKind::Disconnected, None) else {
            return;
        };
        let code = self
            .ending
            .or_else(|| self.out.close_code())
            .unwrap_or(DisconnectCode::CONNECTION_CLOSED);
        let ctx = self.context();
        crate::handlers::notify(&handlers, HandlerKind::Disconnected, move |h| {
            Box::pin(async move { h.disconnected(ctx, code).await })
        });
    }
}
