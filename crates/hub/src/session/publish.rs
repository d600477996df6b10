//! Commands that send: `publish` and `rpc`.

use super::*;

impl Client {
    pub(super) async fn publish(&mut self, id: u32, req: &PublishRequest) -> CommandResult {
        let options = self.namespace(&req.channel)?;
        let Some(data) = &req.data else {
            return Err(ErrorCode::BAD_REQUEST.into());
        };
        if options.max_publish_size > 0 && data.get().len() > options.max_publish_size {
            return Err(ErrorCode::LIMIT_EXCEEDED.into());
        }
        let subscribed = self.subs.get(req.channel.as_str());
        let info = self.info_with(subscribed.and_then(|s| s.info.clone()));
        let publisher_subscribed = subscribed.is_some();
        let mut data = data.clone();
        if options.proxy_publish {
            let mut body = self.proxy_body();
            body.insert("channel".into(), req.channel.clone().into());
            body.insert("data".into(), raw_to_value(&data)?);
            let endpoint = self.endpoint(ProxyKind::Publish, &options.publish_proxy_endpoint);
            let answer: crate::proxy::PublishResult =
                self.call_proxy(ProxyKind::Publish, &endpoint, body).await?;
            if let Some(replaced) = answer.data {
                data = replaced;
            }
        } else if let Some(handler) = self.handler(HandlerKind::Publish, Some(&req.channel)) {
            let request = crate::handlers::PublishRequest {
                channel: req.channel.clone(),
                data: Data::from_raw(data.clone()),
            };
            let reply = self
                .decide(
                    HandlerKind::Publish,
                    &handler,
                    handler.publish(self.context(), request),
                )
                .await?;
            if let Some(replaced) = reply.data {
                data = replaced.into_raw();
            }
        } else {
            let anonymous = self.user.is_empty();
            let allowed = options.allow_publish_for_client
                || (options.allow_publish_for_subscriber && subscribed.is_some());
            if !allowed || (anonymous && !options.allow_publish_for_anonymous) {
                return Err(ErrorCode::PERMISSION_DENIED.into());
            }
        }
        self.hub
            .publish_with(&req.channel, data, Some(info), &options)
            .await?;
        if publisher_subscribed {
            // A publisher subscribed to the channel gets its publication before the reply, as
            // when it is delivered at once: deliver it now rather than with the rest of the
            // burst (see `crate::burst`).
            crate::burst::deliver_gathered();
        }
        Ok(Some(encode_reply(id, &ReplyResult::publish())))
    }

    pub(super) async fn rpc(
        &mut self,
        id: u32,
        req: &switchboard_proto::RpcRequest,
    ) -> CommandResult {
        let endpoint = self.hub.config().proxy.rpc_endpoint.clone();
        // No RPC handler at all: "not available", as Centrifugo answers (the SDKs' tests expect
        // it); a handler that does not know the method answers its own error.
        if endpoint.is_empty() {
            let Some(handler) = self.handler(HandlerKind::Rpc, None) else {
                return Err(ErrorCode::NOT_AVAILABLE.into());
            };
            self.spawn_rpc(id, handler, req).await;
            return Ok(None);
        }
        let mut body = self.proxy_body();
        body.insert("method".into(), req.method.clone().into());
        body.insert("data".into(), raw_of(req.data.as_deref())?);
        let answer: crate::proxy::RpcResult =
            self.call_proxy(ProxyKind::Rpc, &endpoint, body).await?;
        let result = switchboard_proto::RpcResult { data: answer.data };
        Ok(Some(encode_reply(id, &ReplyResult::Rpc(result))))
    }
}
