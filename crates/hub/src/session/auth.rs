//! Authentication: `connect` (token, connect proxy or anonymous), `refresh`, and how refused
//! tokens are answered.

use super::*;
use crate::auth::{ConnectClaims, SubscriptionClaims};

/// Where a token was presented; decides how a refusal is answered.
#[derive(Debug, Clone, Copy)]
pub(super) enum TokenUse {
    Connect,
    Refresh,
    Subscribe,
    SubRefresh,
}

impl TokenUse {
    fn name(self) -> &'static str {
        match self {
            TokenUse::Connect => "connection token",
            TokenUse::Refresh => "refresh token",
            TokenUse::Subscribe => "subscription token",
            TokenUse::SubRefresh => "subscription refresh token",
        }
    }
}

/// A token's expiry in unix seconds (`expire_at` wins over `exp`); `None` when it never expires.
pub(super) fn token_expiry(expire_at: Option<u64>, exp: u64) -> Option<u64> {
    unix_expiry(expire_at.unwrap_or(exp))
}

/// An expiry in unix seconds where 0 means "never".
pub(super) fn unix_expiry(unix: u64) -> Option<u64> {
    (unix > 0).then_some(unix)
}

impl Client {
    /// The one path by which connection tokens are checked (`connect` and `refresh`).
    pub(super) fn verify_connection_token(
        &self,
        token: &str,
        usage: TokenUse,
        unix: u64,
    ) -> Result<ConnectClaims, Refusal> {
        let Some(verifier) = &self.hub.inner.connect_tokens else {
            return Err(self.unverifiable(usage, "token authentication is not configured"));
        };
        verifier
            .verify_connect(token, unix)
            .map_err(|e| self.token_refusal(usage, e))
    }

    /// The one path by which subscription tokens are checked (`subscribe` and `sub_refresh`):
    /// the token must verify and name `channel` and this connection's user.
    pub(super) fn verify_subscription_token(
        &self,
        token: &str,
        channel: &str,
        usage: TokenUse,
        unix: u64,
    ) -> Result<SubscriptionClaims, Refusal> {
        let Some(verifier) = &self.hub.inner.subscription_tokens else {
            return Err(self.unverifiable(usage, "token authentication is not configured"));
        };
        let claims = verifier
            .verify_subscription(token, unix)
            .map_err(|e| self.token_refusal(usage, e))?;
        if claims.channel != channel || claims.sub != *self.user {
            return Err(self.invalid_token(usage, "token is for another channel or user"));
        }
        Ok(claims)
    }

    fn token_refusal(&self, usage: TokenUse, error: TokenError) -> Refusal {
        match error {
            TokenError::Expired => ErrorCode::TOKEN_EXPIRED.into(),
            TokenError::Invalid(reason) => self.unverifiable(usage, &reason),
        }
    }

    /// A token that cannot be verified (malformed, bad signature, no keys configured). A
    /// subscribe is refused with 103 and the connection lives, as with Centrifugo; a refresh
    /// without keys gets 108; anything else closes the connection with 3500.
    fn unverifiable(&self, usage: TokenUse, reason: &str) -> Refusal {
        let configured = match usage {
            TokenUse::Connect | TokenUse::Subscribe => true,
            TokenUse::Refresh => self.hub.inner.connect_tokens.is_some(),
            TokenUse::SubRefresh => self.hub.inner.subscription_tokens.is_some(),
        };
        if !configured {
            return ErrorCode::NOT_AVAILABLE.into();
        }
        if let TokenUse::Subscribe = usage {
            tracing::info!(client = %self.id, user = %self.user, %reason, "subscription token refused");
            return ErrorCode::PERMISSION_DENIED.into();
        }
        self.invalid_token(usage, reason)
    }

    /// A token that must close the connection (3500), logged with the reason, never the token.
    pub(super) fn invalid_token(&self, usage: TokenUse, reason: &str) -> Refusal {
        tracing::info!(client = %self.id, user = %self.user, %reason, "{} refused", usage.name());
        Refusal::Disconnect(DisconnectCode::INVALID_TOKEN)
    }

    pub(super) async fn connect(
        &mut self,
        id: u32,
        req: &ConnectRequest,
        now: Instant,
    ) -> Result<(), Refusal> {
        let hub = self.hub.clone();
        let config = &hub.config().client;
        let unix = unix_now();
        let mut channels = Vec::new();
        let mut connect_data = None;
        let handler = self.handler(HandlerKind::Connect, None);
        // A token goes to the connect handler only when tokens are not verified here.
        if !req.token.is_empty() && (hub.inner.connect_tokens.is_some() || handler.is_none()) {
            let claims = self.verify_connection_token(&req.token, TokenUse::Connect, unix)?;
            self.user = Arc::from(claims.sub.as_str());
            self.conn_info = info_from(claims.info, &claims.b64info);
            self.meta = claims.meta;
            self.expires_at = token_expiry(claims.expire_at, claims.exp);
            channels = claims.channels;
        } else if !hub.config().proxy.connect_endpoint.is_empty() {
            let mut body = self.proxy_body();
            body.insert("name".into(), req.name.clone().into());
            body.insert("version".into(), req.version.clone().into());
            body.insert("data".into(), raw_of(req.data.as_deref())?);
            let endpoint = hub.config().proxy.connect_endpoint.clone();
            let result: crate::proxy::ConnectResult =
                self.call_proxy(ProxyKind::Connect, &endpoint, body).await?;
            self.user = Arc::from(result.user.as_str());
            self.conn_info = info_from(result.info, &result.b64info);
            self.meta = result.meta;
            self.expires_at = unix_expiry(result.expire_at);
            channels = result.channels;
            connect_data = result.data;
        } else if let Some(handler) = handler {
            let request = crate::handlers::ConnectRequest {
                token: req.token.clone(),
                name: req.name.clone(),
                version: req.version.clone(),
                data: req.data.clone().map(Data::from_raw),
            };
            let reply = self
                .decide(
                    HandlerKind::Connect,
                    &handler,
                    handler.connect(self.context(), request),
                )
                .await?;
            self.user = Arc::from(reply.user.as_str());
            self.conn_info = reply.info.map(Data::into_raw);
            self.meta = reply.meta.map(Data::into_raw);
            self.expires_at = reply.expire_at.and_then(unix_expiry);
            channels = reply.channels;
            connect_data = reply.data.map(Data::into_raw);
        } else if !config.allow_anonymous {
            self.reply_error(id, ErrorCode::UNAUTHORIZED)?;
            return Err(DisconnectCode::PERMISSION_DENIED.into());
        }
        if !self.user.is_empty()
            && config.max_connections_per_user > 0
            && hub.user_connections(&self.user) >= config.max_connections_per_user
        {
            return Err(DisconnectCode::CONNECTION_LIMIT.into());
        }
        self.connected = true;
        hub.register_client(
            self.key,
            ClientEntry {
                id: self.id.clone(),
                user: self.user.clone(),
                out: self.out.clone(),
            },
        );
        let mut result = ConnectResult::new(self.id.to_string());
        result.version = hub.node().version.to_string();
        if let Some(session) = &self.emulation_session {
            result.session = session.to_string();
            result.node = hub.node().id.clone();
        }
        result.data = connect_data;
        if let Some(exp) = self.expires_at {
            result.expires = true;
            result.ttl = ttl(exp, unix);
        }
        let ping = config.ping_interval;
        if !ping.is_zero() {
            result.ping = ping.as_secs().max(1) as u32;
            result.pong = self.transport.bidirectional && !config.pong_timeout.is_zero();
            self.next_ping = Some(now + ping);
        }
        channels.extend(
            config
                .subscribe_to_user_personal_channel
                .channel_for(&self.user),
        );
        channels.extend(hub.inner.namespaces.on_connect.iter().cloned());
        let mut opening = Vec::new();
        for channel in channels {
            match self
                .connect_subscribe(&channel, req.subs.get(&channel))
                .await
            {
                Ok(Some(mut sub)) => {
                    result.subs.insert(channel, std::mem::take(&mut sub.result));
                    opening.push(sub);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(client = %self.id, %channel, error = ?e, "server-side subscription failed")
                }
            }
        }
        result.node = hub.node().id.clone();
        result.time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        self.push(encode_reply(id, &ReplyResult::Connect(result)))?;
        for sub in opening {
            sub.open(self)?;
        }
        Ok(())
    }

    pub(super) fn refresh(&mut self, id: u32, req: &RefreshRequest) -> CommandResult {
        let hub = self.hub.clone();
        let unix = unix_now();
        let claims = self.verify_connection_token(&req.token, TokenUse::Refresh, unix)?;
        if claims.sub != *self.user {
            return Err(self.invalid_token(TokenUse::Refresh, "token is for another user"));
        }
        self.expires_at = token_expiry(claims.expire_at, claims.exp);
        if let Some(info) = info_from(claims.info, &claims.b64info) {
            self.conn_info = Some(info);
        }
        let result = switchboard_proto::RefreshResult {
            client: self.id.to_string(),
            version: hub.node().version.to_string(),
            expires: self.expires_at.is_some(),
            ttl: self.expires_at.map_or(0, |e| ttl(e, unix)),
        };
        Ok(Some(encode_reply(id, &ReplyResult::Refresh(result))))
    }
}
