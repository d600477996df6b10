//! Work that does not come from the client's commands: server API controls, pings and the pong
//! deadline, token expiry (with the refresh proxies) and presence refresh.

use super::auth::unix_expiry;
use super::*;

impl Client {
    /// Applies control requests queued by the server API (see [`Control`]).
    pub async fn apply_controls(&mut self) -> Result<(), DisconnectCode> {
        let result = self.run_controls().await;
        if let Err(code) = result {
            self.ending = Some(code);
        }
        result
    }

    async fn run_controls(&mut self) -> Result<(), DisconnectCode> {
        for control in self.out.take_controls() {
            match control {
                Control::Subscribe { channel, info } => {
                    match self.server_side_subscribe(&channel, info).await {
                        Ok(true) => {
                            self.push(switchboard_proto::encode_subscribe_push(&channel))?
                        }
                        Ok(false) => {}
                        Err(e) => {
                            tracing::warn!(client = %self.id, %channel, error = %e, "server subscribe failed")
                        }
                    }
                }
                Control::Unsubscribe { channel } => {
                    if self.leave_channel(&channel, true).await {
                        self.push(encode_unsubscribe_push(
                            &channel,
                            UNSUBSCRIBE_SERVER,
                            "server unsubscribe",
                        ))?;
                    }
                }
                Control::Refresh { expire_at } => self.expires_at = expire_at,
                Control::InsufficientState { channel } => {
                    // A server-side subscription cannot be renewed by the client: it
                    // reconnects (3010) and recovers with the positions it has.
                    if self
                        .subs
                        .get(channel.as_str())
                        .is_some_and(|s| s.server_side)
                    {
                        return Err(DisconnectCode::INSUFFICIENT_STATE);
                    }
                    if self.leave_channel(&channel, true).await {
                        self.push(encode_unsubscribe_push(
                            &channel,
                            UNSUBSCRIBE_INSUFFICIENT_STATE,
                            "insufficient state",
                        ))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// When an expiry at `expires_at` (unix seconds) needs attention on the monotonic clock:
    /// right at expiry when a proxy can refresh it, else after the grace period the client has to
    /// refresh by itself.
    pub(super) fn expiry_deadline(&self, expires_at: u64, by_proxy: bool, now: Instant) -> Instant {
        let mut due = UNIX_EPOCH + Duration::from_secs(expires_at);
        if !by_proxy {
            due += self.hub.config().client.expired_close_delay;
        }
        // Measured against the wall clock with sub-second precision, so that the check in
        // `on_timer` (whole seconds) holds when the timer fires.
        now + due.duration_since(SystemTime::now()).unwrap_or_default()
    }

    /// Whether the refresh proxy (or the Rust refresh handler) extends this connection's expiry.
    pub(super) fn refresh_by_proxy(&self) -> bool {
        !self.refresh_proxy_failed
            && (!self.hub.config().proxy.refresh_endpoint.is_empty()
                || self.handler(HandlerKind::Refresh, None).is_some())
    }

    /// Whether the sub_refresh proxy (or the Rust sub_refresh handler) extends this
    /// subscription's expiry.
    pub(super) fn sub_refresh_by_proxy(&self, channel: &str, sub: &Subscription) -> bool {
        !sub.refresh_proxy_failed
            && self.hub.inner.namespaces.resolve(channel).is_ok_and(|o| {
                o.proxy_sub_refresh
                    || self
                        .handler(HandlerKind::SubRefresh, Some(channel))
                        .is_some()
            })
    }

    /// Asks the refresh proxy, or else the Rust handler, for a new connection expiry.
    async fn ask_refresh(&self) -> Result<crate::proxy::RefreshResult, Refusal> {
        let endpoint = self.hub.config().proxy.refresh_endpoint.clone();
        if !endpoint.is_empty() {
            let body = self.proxy_body();
            return self.call_proxy(ProxyKind::Refresh, &endpoint, body).await;
        }
        let Some(handler) = self.handler(HandlerKind::Refresh, None) else {
            return Err(ErrorCode::NOT_AVAILABLE.into());
        };
        let reply = self
            .decide(
                HandlerKind::Refresh,
                &handler,
                handler.refresh(self.context()),
            )
            .await?;
        Ok(refresh_result(reply))
    }

    /// Asks the namespace's sub_refresh proxy, or else the Rust handler, for a new expiry of the
    /// subscription to `channel`.
    async fn ask_sub_refresh(&self, channel: &str) -> Result<crate::proxy::RefreshResult, Refusal> {
        let options = self.namespace(channel)?;
        if options.proxy_sub_refresh {
            let endpoint =
                self.endpoint(ProxyKind::SubRefresh, &options.sub_refresh_proxy_endpoint);
            let mut body = self.proxy_body();
            body.insert("channel".into(), channel.to_string().into());
            return self
                .call_proxy(ProxyKind::SubRefresh, &endpoint, body)
                .await;
        }
        let Some(handler) = self.handler(HandlerKind::SubRefresh, Some(channel)) else {
            return Err(ErrorCode::NOT_AVAILABLE.into());
        };
        let reply = self
            .decide(
                HandlerKind::SubRefresh,
                &handler,
                handler.sub_refresh(self.context(), channel.to_string()),
            )
            .await?;
        Ok(refresh_result(reply))
    }

    /// When [`Client::on_timer`] should next be called.
    pub fn next_deadline(&self) -> Instant {
        if !self.connected {
            return self.created + self.hub.config().client.handshake_timeout;
        }
        let now = Instant::now();
        let connection = self
            .expires_at
            .map(|e| self.expiry_deadline(e, self.refresh_by_proxy(), now));
        let subscriptions = self.subs.iter().filter_map(|(channel, sub)| {
            sub.expires_at
                .map(|e| self.expiry_deadline(e, self.sub_refresh_by_proxy(channel, sub), now))
        });
        let presence = self
            .subs
            .values()
            .any(|s| s.presence)
            .then_some(self.next_presence_update);
        self.next_ping
            .into_iter()
            .chain(self.pong_deadline)
            .chain(presence)
            .chain(connection)
            .chain(subscriptions)
            .min()
            // Nothing scheduled: far in the future.
            .unwrap_or(now + Duration::from_secs(86_400 * 365))
    }

    /// Runs the timers due at `now`: the handshake timeout, pings, the pong deadline and token
    /// expiry (asking the refresh proxies or handlers when configured).
    pub async fn on_timer(&mut self, now: Instant) -> Result<(), DisconnectCode> {
        let result = self.run_timers(now).await;
        if let Err(code) = result {
            self.ending = Some(code);
        }
        result
    }

    async fn run_timers(&mut self, now: Instant) -> Result<(), DisconnectCode> {
        if !self.connected {
            if now >= self.created + self.hub.config().client.handshake_timeout {
                return Err(DisconnectCode::STALE);
            }
            return Ok(());
        }
        if self.pong_deadline.is_some_and(|d| now >= d) {
            return Err(DisconnectCode::NO_PONG);
        }
        self.check_connection_expiry().await?;
        self.check_subscription_expiry().await?;
        if now >= self.next_presence_update {
            self.refresh_presence().await;
            self.next_presence_update = now + self.hub.config().client.presence_update_interval;
        }
        if let Some(next) = self.next_ping {
            if now >= next {
                let config = &self.hub.config().client;
                self.push(Bytes::from_static(PING_FRAME))?;
                self.next_ping = Some(now + config.ping_interval);
                if self.transport.bidirectional
                    && !config.pong_timeout.is_zero()
                    && self.pong_deadline.is_none()
                {
                    self.pong_deadline = Some(now + config.pong_timeout);
                }
            }
        }
        Ok(())
    }

    /// Refreshes this client's presence entries before they expire.
    pub(super) async fn refresh_presence(&self) {
        for (channel, sub) in self.subs.iter().filter(|(_, s)| s.presence) {
            self.put_presence(channel, sub, "refreshing presence failed")
                .await;
        }
    }

    pub(super) async fn check_connection_expiry(&mut self) -> Result<(), DisconnectCode> {
        let unix = unix_now();
        let Some(expires_at) = self.expires_at.filter(|&e| e <= unix) else {
            return Ok(());
        };
        if self.refresh_by_proxy() {
            match self.ask_refresh().await {
                Ok(r) if r.expired => return Err(DisconnectCode::EXPIRED),
                Ok(r) => {
                    self.expires_at = unix_expiry(r.expire_at);
                    if let Some(info) = info_from(r.info, &r.b64info) {
                        self.conn_info = Some(info);
                    }
                    return Ok(());
                }
                Err(Refusal::Disconnect(code)) => return Err(code),
                // Give the client the grace period to refresh by itself.
                Err(_) => self.refresh_proxy_failed = true,
            }
        }
        let grace = self.hub.config().client.expired_close_delay.as_secs();
        if expires_at + grace <= unix {
            return Err(DisconnectCode::EXPIRED);
        }
        Ok(())
    }

    pub(super) async fn check_subscription_expiry(&mut self) -> Result<(), DisconnectCode> {
        let unix = unix_now();
        let grace = self.hub.config().client.expired_close_delay.as_secs();
        let due: Vec<Box<str>> = self
            .subs
            .iter()
            .filter(|(_, s)| s.expires_at.is_some_and(|e| e <= unix))
            .map(|(c, _)| c.clone())
            .collect();
        for channel in due {
            let by_proxy = self
                .subs
                .get(&channel)
                .is_some_and(|s| self.sub_refresh_by_proxy(&channel, s));
            if by_proxy {
                let answer = self.ask_sub_refresh(&channel).await;
                let Some(sub) = self.subs.get_mut(&channel) else {
                    continue;
                };
                match answer {
                    Ok(r) if !r.expired => {
                        sub.expires_at = unix_expiry(r.expire_at);
                        if let Some(info) = info_from(r.info, &r.b64info) {
                            sub.info = Some(info);
                        }
                        continue;
                    }
                    Ok(_) => sub.expires_at = Some(0),
                    Err(Refusal::Disconnect(code)) => return Err(code),
                    Err(_) => sub.refresh_proxy_failed = true,
                }
            }
            let expired = self
                .subs
                .get(&channel)
                .and_then(|s| s.expires_at)
                .is_some_and(|e| e + grace <= unix || e == 0);
            if expired {
                self.notify_subscription(HandlerKind::Unsubscribed, &channel);
                self.subs.remove(&channel);
                if self.hub.inner.registry.remove(&channel, self.key) {
                    self.hub.spawn_broker_unsubscribe(vec![channel.to_string()]);
                }
                self.push(encode_unsubscribe_push(
                    &channel,
                    UNSUBSCRIBE_EXPIRED,
                    "subscription expired",
                ))?;
            }
        }
        Ok(())
    }
}

/// A handler's refresh answer in the shape the proxy's answer is applied from.
fn refresh_result(reply: crate::handlers::RefreshReply) -> crate::proxy::RefreshResult {
    crate::proxy::RefreshResult {
        expired: reply.expired,
        expire_at: reply.expire_at.unwrap_or(0),
        info: reply.info.map(Data::into_raw),
        b64info: String::new(),
    }
}
