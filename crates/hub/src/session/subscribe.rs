//! Subscriptions: permission checks, `subscribe` with recovery and positioning, join and leave,
//! `unsubscribe`, `sub_refresh` and server-side subscriptions.

use super::auth::{token_expiry, unix_expiry, TokenUse};
use super::*;

impl Client {
    /// Whether the namespace options let this client subscribe to `channel` without a token
    /// or proxy: never for private channels, by user list for user-limited channels, else by
    /// the allow_subscribe options.
    pub(super) fn may_subscribe(&self, channel: &str, options: &NamespaceOptions) -> bool {
        if channel.starts_with(PRIVATE_CHANNEL_PREFIX) {
            false
        } else if channel.contains(USER_BOUNDARY) && options.allow_user_limited_channels {
            self.user_limited_allows(channel, options)
        } else {
            options.allow_subscribe_for_client
                && (!self.user.is_empty() || options.allow_subscribe_for_anonymous)
        }
    }

    /// Whether `channel` is user-limited to a list that contains this client's user.
    pub(super) fn user_limited_allows(&self, channel: &str, options: &NamespaceOptions) -> bool {
        options.allow_user_limited_channels
            && !self.user.is_empty()
            && channel
                .rsplit_once(USER_BOUNDARY)
                .is_some_and(|(_, users)| users.split(',').any(|u| u == &*self.user))
    }

    pub(super) async fn subscribe(&mut self, id: u32, req: &SubscribeRequest) -> CommandResult {
        let options = self.namespace(&req.channel)?;
        if self.subs.contains_key(req.channel.as_str()) {
            return Err(ErrorCode::ALREADY_SUBSCRIBED.into());
        }
        let by_token = !req.token.is_empty();
        // The namespace's proxy decides first, then the Rust handler, then the options.
        let handler = if options.proxy_subscribe {
            None
        } else {
            self.handler(HandlerKind::Subscribe, Some(&req.channel))
        };
        if !by_token
            && !options.proxy_subscribe
            && handler.is_none()
            && !self.may_subscribe(&req.channel, &options)
        {
            return Err(ErrorCode::PERMISSION_DENIED.into());
        }
        // Before any token check or proxy call: refusing is cheap, a proxy call is not.
        if self.subs.len() >= self.hub.config().client.max_channels {
            return Err(ErrorCode::LIMIT_EXCEEDED.into());
        }
        let unix = unix_now();
        let mut sub = Subscription::default();
        let mut result = SubscribeResult::default();
        if by_token {
            let claims = self.verify_subscription_token(
                &req.token,
                &req.channel,
                TokenUse::Subscribe,
                unix,
            )?;
            sub.expires_at = token_expiry(claims.expire_at, claims.exp);
            sub.info = info_from(claims.info, &claims.b64info);
        } else if options.proxy_subscribe {
            let mut body = self.proxy_body();
            body.insert("channel".into(), req.channel.clone().into());
            body.insert("data".into(), raw_of(req.data.as_deref())?);
            let endpoint = self.endpoint(ProxyKind::Subscribe, &options.subscribe_proxy_endpoint);
            let answer: crate::proxy::SubscribeResult = self
                .call_proxy(ProxyKind::Subscribe, &endpoint, body)
                .await?;
            sub.info = info_from(answer.info, &answer.b64info);
            sub.expires_at = unix_expiry(answer.expire_at);
            result.data = answer.data;
        } else if let Some(handler) = handler {
            let request = crate::handlers::SubscribeRequest {
                channel: req.channel.clone(),
                data: req.data.clone().map(Data::from_raw),
            };
            let reply = self
                .decide(
                    HandlerKind::Subscribe,
                    &handler,
                    handler.subscribe(self.context(), request),
                )
                .await?;
            sub.info = reply.info.map(Data::into_raw);
            sub.expires_at = reply.expire_at.and_then(unix_expiry);
            result.data = reply.data.map(Data::into_raw);
        }
        if let Some(exp) = sub.expires_at {
            result.expires = true;
            result.ttl = ttl(exp, unix);
        }
        let join_leave = options.force_push_join_leave || (options.join_leave && req.join_leave);
        let history = options.history_size > 0 && !options.history_ttl.is_zero();
        let recoverable = history && (options.force_recovery || req.recoverable || req.recover);
        let positioned = recoverable || (history && (options.force_positioning || req.positioned));
        sub.presence = options.presence;
        sub.announce = options.join_leave || options.force_push_join_leave;
        let track = Arc::new(Track::default());
        let gate = Gate::closed(self.out.clone(), track.clone());
        let subscriber = Subscriber {
            out: self.out.clone(),
            join_leave,
            positioned,
            gate: Some(gate.clone()),
            track,
        };
        self.join_channel(&req.channel, sub, subscriber).await?;
        // From here on publications wait in the gate until the reply is queued.
        let mut delivered = 0;
        if positioned {
            match self.stream_position(req, &options, &mut result).await {
                Ok(top) => delivered = top,
                Err(refusal) => {
                    // Never joined in the others' eyes (no presence, no join push yet): leave
                    // without a leave push.
                    self.leave_channel(&req.channel, false).await;
                    return Err(refusal);
                }
            }
            result.recoverable = recoverable;
            result.positioned = positioned;
        }
        self.announce_join(&req.channel).await;
        let reply = encode_reply(id, &ReplyResult::Subscribe(result));
        self.hub.metrics().messages_out(1, reply.len() as u64);
        let outcome = gate.open(Some(reply), delivered, positioned, &req.channel);
        self.hub.inner.registry.ungate(&req.channel, self.key);
        if outcome == PushOutcome::Overflow {
            return Err(DisconnectCode::SLOW.into());
        }
        self.notify_subscription(HandlerKind::Subscribed, &req.channel);
        Ok(None)
    }

    /// Fills the stream position of a subscribe result and, when the client asks to recover,
    /// the missed publications. Returns the offset up to which publications are covered.
    pub(super) async fn stream_position(
        &self,
        req: &SubscribeRequest,
        options: &NamespaceOptions,
        result: &mut SubscribeResult,
    ) -> Result<u64, Refusal> {
        let broker = &self.hub.inner.broker;
        let top = |filter: HistoryFilter| async move {
            broker
                .history(&req.channel, &filter, options.history_meta_ttl)
                .await
        };
        // The stream's current position: a read of no publications.
        let current = || async {
            top(HistoryFilter {
                limit: Some(0),
                ..HistoryFilter::default()
            })
            .await
            .map(|h| h.position)
            .map_err(crate::hub::broker_error)
        };
        let mut recovered = None;
        if req.recover {
            result.was_recovering = true;
            // An empty epoch means "any epoch" (the SDKs send it when the app only knows an
            // offset, e.g. `{offset: 0, epoch: ''}`): recover from the offset in the current one.
            let epoch = if req.epoch.is_empty() {
                current().await?.epoch
            } else {
                req.epoch.clone()
            };
            let since = StreamPosition {
                offset: req.offset,
                epoch,
            };
            match top(HistoryFilter {
                since: Some(since),
                ..HistoryFilter::default()
            })
            .await
            {
                Ok(h) => {
                    // Complete when the first kept publication follows the client's offset (or
                    // nothing was missed at all).
                    let complete = h
                        .publications
                        .first()
                        .map_or(h.position.offset == req.offset, |p| {
                            p.offset == req.offset + 1
                        });
                    if complete {
                        result.publications = h.publications;
                    }
                    result.recovered = complete;
                    recovered = Some(h.position);
                }
                Err(BrokerError::UnrecoverablePosition) => result.recovered = false,
                Err(e) => return Err(crate::hub::broker_error(e).into()),
            }
            if !result.recovered && req.flag & FLAG_REJECT_UNRECOVERED != 0 {
                return Err(ErrorCode::UNRECOVERABLE_POSITION.into());
            }
        }
        let position = match recovered {
            Some(p) => p,
            None => current().await?,
        };
        result.offset = position.offset;
        result.epoch = position.epoch;
        Ok(result.offset)
    }

    /// Adds presence and announces the join, for channels whose namespace wants them.
    pub(super) async fn announce_join(&self, channel: &str) {
        let Some(sub) = self.subs.get(channel) else {
            return;
        };
        if sub.presence {
            self.put_presence(channel, sub, "adding presence failed")
                .await;
        }
        let info = self.info_with(sub.info.clone());
        if sub.announce {
            if let Err(e) = self.hub.inner.broker.publish_join(channel, &info).await {
                tracing::warn!(%channel, error = %e, "join announcement failed");
            }
        }
    }

    /// Adds (or refreshes) this client's presence entry in `channel`; a failure is logged as
    /// `failure` (presence is best effort: the subscription stands).
    pub(super) async fn put_presence(&self, channel: &str, sub: &Subscription, failure: &str) {
        let info = self.info_with(sub.info.clone());
        let ttl = self.hub.config().client.presence_ttl;
        if let Err(e) = self
            .hub
            .inner
            .presence
            .add_presence(channel, &info, ttl)
            .await
        {
            tracing::warn!(%channel, error = %e, "{failure}");
        }
    }

    /// Adds this client to the channel's local subscribers and waits until the node's broker
    /// subscription for the channel is confirmed.
    pub(super) async fn join_channel(
        &mut self,
        channel: &str,
        sub: Subscription,
        subscriber: Subscriber,
    ) -> Result<(), ErrorCode> {
        if self.subs.contains_key(channel) {
            return Ok(());
        }
        let inner = &self.hub.inner;
        inner.registry.add(channel, self.key, subscriber);
        if let Err(e) = inner.interest.acquire(&*inner.broker, channel).await {
            if inner.registry.remove(channel, self.key) {
                inner
                    .interest
                    .release(&*inner.broker, &inner.registry, channel)
                    .await;
            }
            return Err(crate::hub::broker_error(e));
        }
        self.subs.insert(channel.into(), sub);
        Ok(())
    }

    /// Ends the subscription to `channel`; with `announced`, also removes the presence entry and
    /// sends the leave push that its subscribe announced.
    pub(super) async fn leave_channel(&mut self, channel: &str, announced: bool) -> bool {
        let Some(sub) = self.subs.remove(channel) else {
            return false;
        };
        let inner = &self.hub.inner;
        if inner.registry.remove(channel, self.key) {
            inner
                .interest
                .release(&*inner.broker, &inner.registry, channel)
                .await;
        }
        if announced {
            self.notify_subscription(HandlerKind::Unsubscribed, channel);
        }
        if announced && (sub.presence || sub.announce) {
            let info = self.info_with(sub.info);
            leave(&self.hub, channel, &info, sub.presence, sub.announce).await;
        }
        true
    }

    pub(super) async fn unsubscribe(&mut self, id: u32, req: &UnsubscribeRequest) -> CommandResult {
        self.leave_channel(&req.channel, true).await;
        Ok(Some(encode_reply(id, &ReplyResult::unsubscribe())))
    }

    pub(super) fn sub_refresh(&mut self, id: u32, req: &SubRefreshRequest) -> CommandResult {
        if !self.subs.contains_key(req.channel.as_str()) {
            return Err(ErrorCode::PERMISSION_DENIED.into());
        }
        let unix = unix_now();
        let claims =
            self.verify_subscription_token(&req.token, &req.channel, TokenUse::SubRefresh, unix)?;
        let sub = self
            .subs
            .get_mut(req.channel.as_str())
            .ok_or(ErrorCode::PERMISSION_DENIED)?;
        sub.expires_at = token_expiry(claims.expire_at, claims.exp);
        let result = switchboard_proto::SubRefreshResult {
            expires: sub.expires_at.is_some(),
            ttl: sub.expires_at.map_or(0, |e| ttl(e, unix)),
        };
        Ok(Some(encode_reply(id, &ReplyResult::SubRefresh(result))))
    }

    /// Subscribes without permission checks (token `channels` claim, server API), with the
    /// namespace's presence and join/leave.
    pub(super) async fn server_side_subscribe(
        &mut self,
        channel: &str,
        info: Option<Box<RawValue>>,
    ) -> Result<bool, ErrorCode> {
        let options = self.namespace(channel)?;
        if self.subs.contains_key(channel) {
            return Ok(false);
        }
        if self.subs.len() >= self.hub.config().client.max_channels {
            return Err(ErrorCode::LIMIT_EXCEEDED);
        }
        let sub = Subscription {
            info,
            presence: options.presence,
            announce: options.join_leave || options.force_push_join_leave,
            server_side: true,
            ..Subscription::default()
        };
        let subscriber = Subscriber {
            out: self.out.clone(),
            join_leave: options.force_push_join_leave,
            positioned: false,
            gate: None,
            track: Default::default(),
        };
        self.join_channel(channel, sub, subscriber).await?;
        self.announce_join(channel).await;
        self.notify_subscription(HandlerKind::Subscribed, channel);
        Ok(true)
    }

    /// A server-side subscription made while connecting (the token's `channels`, the connect
    /// proxy's or handler's, the personal channel, the namespaces' `subscribe_on_connect`).
    /// In a namespace with history it is positioned, and its result carries the stream
    /// position; when the connect request's `subs` asks to recover the channel (`recover`,
    /// `offset`, `epoch`, as the SDKs and unidirectional clients send on reconnect), also the
    /// missed publications, or `recovered: false`. Publications wait in the returned gate until
    /// the connect reply is queued ([`ConnectSub::open`]). `None` when already subscribed.
    pub(super) async fn connect_subscribe(
        &mut self,
        channel: &str,
        request: Option<&SubscribeRequest>,
    ) -> Result<Option<ConnectSub>, Refusal> {
        let options = self.namespace(channel)?;
        if self.subs.contains_key(channel) {
            return Ok(None);
        }
        if self.subs.len() >= self.hub.config().client.max_channels {
            return Err(ErrorCode::LIMIT_EXCEEDED.into());
        }
        let history = options.history_size > 0 && !options.history_ttl.is_zero();
        let sub = Subscription {
            presence: options.presence,
            announce: options.join_leave || options.force_push_join_leave,
            server_side: true,
            ..Subscription::default()
        };
        let track = Arc::new(Track::default());
        let gate = Gate::closed(self.out.clone(), track.clone());
        let subscriber = Subscriber {
            out: self.out.clone(),
            join_leave: options.force_push_join_leave,
            positioned: history,
            gate: Some(gate.clone()),
            track,
        };
        self.join_channel(channel, sub, subscriber).await?;
        let mut result = SubscribeResult::default();
        let mut delivered = 0;
        if history {
            // Only the position fields of the client's request count here.
            let mut req = SubscribeRequest::default();
            req.channel = channel.to_string();
            if let Some(r) = request {
                req.recover = r.recover;
                req.offset = r.offset;
                req.epoch.clone_from(&r.epoch);
            }
            match self.stream_position(&req, &options, &mut result).await {
                Ok(top) => delivered = top,
                Err(refusal) => {
                    self.leave_channel(channel, false).await;
                    return Err(refusal);
                }
            }
            result.recoverable = true;
            result.positioned = true;
        }
        self.announce_join(channel).await;
        Ok(Some(ConnectSub {
            channel: channel.to_string(),
            result,
            gate,
            delivered,
            positioned: history,
        }))
    }
}

/// A server-side subscription being made while connecting: its result goes into the connect
/// reply, and its gate opens once that reply is queued.
pub(super) struct ConnectSub {
    pub(super) channel: String,
    pub(super) result: SubscribeResult,
    gate: Arc<Gate>,
    delivered: u64,
    positioned: bool,
}

impl ConnectSub {
    /// Lets the publications held since the subscription was made through (those not already
    /// in the connect reply), and tells the handlers. Call after the connect reply is queued.
    pub(super) fn open(self, client: &Client) -> Result<(), DisconnectCode> {
        let outcome = self
            .gate
            .open(None, self.delivered, self.positioned, &self.channel);
        client.hub.inner.registry.ungate(&self.channel, client.key);
        if outcome == PushOutcome::Overflow {
            return Err(DisconnectCode::SLOW);
        }
        client.notify_subscription(HandlerKind::Subscribed, &self.channel);
        Ok(())
    }
}
