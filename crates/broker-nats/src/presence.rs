//! Presence in the presence bucket: one key per channel and client holding the client's info
//! and an expiry time; reads take the last value of every key of the channel and drop expired
//! entries and deletion markers. Also the [`PresenceStore`] implementation.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_trait::async_trait;
use switchboard_hub::{BrokerError, PresenceStats, PresenceStore};
use switchboard_proto::ClientInfo;

use crate::broker::{NatsBroker, Shared};
use crate::codec::{self, ms, now_ms, token};

impl Shared {
    fn presence_key(channel: &str, client: &str) -> String {
        format!("{}.{}", token(channel), token(client))
    }

    async fn presence(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, BrokerError> {
        let store = self.store().await?;
        let filter = format!("{}{}.*", store.presence.prefix, token(channel));
        let messages = self
            .read_subject(
                &store.presence.stream,
                filter,
                DeliverPolicy::LastPerSubject,
            )
            .await?;
        let now = now_ms();
        Ok(messages
            .iter()
            .filter(|m| !m.payload.is_empty())
            .filter_map(|m| codec::decode_presence(&m.payload))
            .filter(|(expires, _)| *expires > now)
            .map(|(_, info)| (info.client.clone(), info))
            .collect())
    }
}

#[async_trait]
impl PresenceStore for NatsBroker {
    async fn add_presence(
        &self,
        channel: &str,
        info: &ClientInfo,
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        let s = &self.shared;
        let store = s.store().await?;
        if ttl > s.config.presence_max_age && !s.warned_presence_ttl.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                ?ttl,
                max_age = ?s.config.presence_max_age,
                "presence_ttl exceeds [broker.nats] presence_max_age; entries vanish earlier"
            );
        }
        let value = codec::encode_presence(now_ms().saturating_add(ms(ttl)), info);
        s.js(
            "presence add",
            store
                .presence
                .put(Shared::presence_key(channel, &info.client), value.into()),
        )
        .await?;
        Ok(())
    }

    async fn remove_presence(&self, channel: &str, client: &str) -> Result<(), BrokerError> {
        let s = &self.shared;
        let store = s.store().await?;
        s.js(
            "presence remove",
            store.presence.delete(Shared::presence_key(channel, client)),
        )
        .await
    }

    async fn presence(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, BrokerError> {
        self.shared.presence(channel).await
    }

    async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, BrokerError> {
        Ok(PresenceStats::of(&self.shared.presence(channel).await?))
    }
}
