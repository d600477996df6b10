//! Server-side actions: what the server HTTP API does, as typed methods of [`Node`]. Each is a
//! call of the same hub function the API method calls (crates/http/src/api/methods.rs), with
//! the same checks, so both behave alike; actions on users (subscribe, unsubscribe, disconnect,
//! refresh) and publications reach every node of a cluster through the broker.

use std::collections::HashMap;

use serde::Serialize;
use switchboard_hub::{HistoryFilter, HistoryResult, NodeStats, PresenceStats, PublishParams};
use switchboard_proto::{ClientInfo, DisconnectCode, ErrorCode, StreamPosition};

use crate::{Data, Node};

/// Options of [`Node::publish_with`] and [`Node::broadcast`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct PublishOptions {
    /// String tags attached to the publication.
    pub tags: HashMap<String, String>,
    /// Do not keep this publication in the channel's history.
    pub skip_history: bool,
    /// Publishes at most once per key within `client.idempotent_result_ttl` (retries answer the
    /// first publication's position).
    pub idempotency_key: Option<String>,
}

impl PublishOptions {
    fn params(&self) -> PublishParams {
        let mut params = PublishParams::default();
        params.tags = self.tags.clone();
        params.skip_history = self.skip_history;
        params.idempotency_key = self.idempotency_key.clone();
        params
    }
}

/// Which connections of a user an action applies to.
fn check_user(user: &str) -> Result<(), ErrorCode> {
    // As the API: an empty user would act on every anonymous connection.
    if user.is_empty() {
        return Err(ErrorCode::BAD_REQUEST);
    }
    Ok(())
}

fn check_channel(channel: &str) -> Result<(), ErrorCode> {
    if channel.is_empty() {
        return Err(ErrorCode::BAD_REQUEST);
    }
    Ok(())
}

impl Node {
    /// Publishes `data` into `channel` (no permission checks, the namespace's history options
    /// apply). Returns the publication's position (offset 0 and no epoch without history).
    ///
    /// ```no_run
    /// # async fn demo(node: switchboard::Node) -> Result<(), switchboard::ErrorCode> {
    /// use switchboard::Data;
    /// let data = Data::json(&serde_json::json!({"text": "hello"})).expect("serialisable");
    /// node.publish("chat:lobby", data).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn publish(&self, channel: &str, data: Data) -> Result<StreamPosition, ErrorCode> {
        self.publish_with(channel, data, &PublishOptions::default())
            .await
    }

    /// Publishes `value` serialised as JSON into `channel` ([`Node::publish`]).
    pub async fn publish_json<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        value: &T,
    ) -> Result<StreamPosition, ErrorCode> {
        let data = Data::json(value).map_err(|_| ErrorCode::BAD_REQUEST)?;
        self.publish(channel, data).await
    }

    /// Publishes with tags, without history, or idempotently.
    pub async fn publish_with(
        &self,
        channel: &str,
        data: Data,
        options: &PublishOptions,
    ) -> Result<StreamPosition, ErrorCode> {
        check_channel(channel)?;
        self.hub
            .publish_with_params(channel, data.into_raw(), options.params())
            .await
    }

    /// Publishes the same data into several channels; one result per channel, in order.
    pub async fn broadcast<I, S>(
        &self,
        channels: I,
        data: Data,
        options: &PublishOptions,
    ) -> Vec<Result<StreamPosition, ErrorCode>>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut results = Vec::new();
        for channel in channels {
            let raw = data.clone().into_raw();
            results.push(
                self.hub
                    .publish_with_params(channel.as_ref(), raw, options.params())
                    .await,
            );
        }
        results
    }

    /// Subscribes every connection of `user` (on every node) to `channel`, without permission
    /// checks; they get a `subscribe` push. `info` becomes their channel info.
    pub async fn subscribe(
        &self,
        user: &str,
        channel: &str,
        info: Option<Data>,
    ) -> Result<(), ErrorCode> {
        check_user(user)?;
        check_channel(channel)?;
        self.hub.check_channel(channel)?;
        self.hub
            .subscribe_everywhere(user, None, channel, info.map(Data::into_raw))
            .await
    }

    /// Unsubscribes every connection of `user` (on every node) from `channel`; they get an
    /// `unsubscribe` push (code 2000).
    pub async fn unsubscribe(&self, user: &str, channel: &str) -> Result<(), ErrorCode> {
        check_user(user)?;
        check_channel(channel)?;
        self.hub.unsubscribe_everywhere(user, None, channel).await
    }

    /// Disconnects every connection of `user` (on every node) with `code`, e.g.
    /// [`DisconnectCode::FORCE_NO_RECONNECT`] or an application code from
    /// [`DisconnectCode::application`].
    pub async fn disconnect(&self, user: &str, code: DisconnectCode) -> Result<(), ErrorCode> {
        check_user(user)?;
        self.hub.disconnect_everywhere(user, None, &[], code).await
    }

    /// Disconnects one connection of `user`, by client id.
    pub async fn disconnect_client(
        &self,
        user: &str,
        client: &str,
        code: DisconnectCode,
    ) -> Result<(), ErrorCode> {
        check_user(user)?;
        self.hub
            .disconnect_everywhere(user, Some(client), &[], code)
            .await
    }

    /// Sets the expiry (unix seconds; `None` = never) of every connection of `user`.
    pub async fn refresh(&self, user: &str, expire_at: Option<u64>) -> Result<(), ErrorCode> {
        check_user(user)?;
        self.hub
            .refresh_everywhere(user, None, expire_at, false)
            .await
    }

    /// Who is in `channel`, by client id (error 108 when its namespace has no presence).
    pub async fn presence(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, ErrorCode> {
        check_channel(channel)?;
        self.hub.presence(channel).await
    }

    /// How many connections and users are in `channel`.
    pub async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, ErrorCode> {
        check_channel(channel)?;
        self.hub.presence_stats(channel).await
    }

    /// Reads `channel`'s history (error 108 when its namespace keeps none).
    pub async fn history(
        &self,
        channel: &str,
        filter: &HistoryFilter,
    ) -> Result<HistoryResult, ErrorCode> {
        check_channel(channel)?;
        self.hub.history(channel, filter).await
    }

    /// Removes `channel`'s history.
    pub async fn remove_history(&self, channel: &str) -> Result<(), ErrorCode> {
        check_channel(channel)?;
        self.hub.remove_history(channel).await
    }

    /// Channels with subscribers on this node, with their subscriber counts.
    pub fn channels(&self) -> Vec<(String, usize)> {
        self.hub.channels()
    }

    /// Statistics of every live node of the cluster (this one first).
    pub fn info(&self) -> Vec<NodeStats> {
        self.hub.nodes()
    }
}
