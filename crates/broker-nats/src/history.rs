//! Publishing, and the history stream: a publish without history or idempotency key goes
//! straight to core NATS; otherwise, under the channel's publish lock (see `offsets`), it claims
//! its idempotency key (see `idempotency`), gets its offset, is appended to the history stream
//! (with its epoch and expiry), is published to the nodes that subscribe and trims the stream
//! lazily. Reading history filters the stored publications by epoch, expiry and history size,
//! then applies `since`, `limit` and `reverse`.

use std::future::IntoFuture;
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use switchboard_hub::{BrokerError, HistoryFilter, HistoryResult, PublishOptions};
use switchboard_proto::{Publication, StreamPosition};

use crate::broker::Shared;
use crate::codec::{self, ms, now_ms, token};
use crate::connection::unavailable;
use crate::idempotency;
use crate::offsets::ChannelState;
use crate::store::Store;

impl Shared {
    pub(crate) async fn publish(
        &self,
        channel: &str,
        mut publication: Publication,
        options: &PublishOptions,
    ) -> Result<StreamPosition, BrokerError> {
        self.events()?;
        let subject = format!("{}{}", self.names.channel, token(channel));
        if !options.uses_channel_state() {
            self.check_connected()?;
            let payload = codec::encode_publication("", &publication);
            self.bounded("publish", self.client.publish(subject, payload.into()))
                .await?;
            return Ok(StreamPosition::default());
        }
        let store = self.store().await?;
        let key = token(channel);
        let lock = self.channel_lock(channel);
        let mut state = tokio::time::timeout(self.config.request_timeout, lock.lock())
            .await
            .map_err(|_| unavailable("publish", "timed out waiting for earlier publishes"))?;

        let idem_key = options
            .idempotency()
            .map(|k| idempotency::bucket_key(&key, k));
        if let Some(idem_key) = &idem_key {
            if let Err(position) = self.claim(&store, idem_key, options).await? {
                return Ok(position);
            }
        }

        let result = self
            .append_and_publish(&store, &key, &mut state, subject, &mut publication, options)
            .await;

        if let Some(idem_key) = &idem_key {
            self.settle(&store, channel, idem_key, &result, options)
                .await;
        }
        result
    }

    /// With the channel's publish lock held: gives the publication its offset, stores it in the
    /// history stream, trims, and publishes it to subscribed nodes.
    async fn append_and_publish(
        &self,
        store: &Store,
        key: &str,
        state: &mut ChannelState,
        subject: String,
        publication: &mut Publication,
        options: &PublishOptions,
    ) -> Result<StreamPosition, BrokerError> {
        if !options.uses_history() {
            let payload = codec::encode_publication("", publication);
            self.bounded("publish", self.client.publish(subject, payload.into()))
                .await?;
            return Ok(StreamPosition::default());
        }
        let meta = self.allocate(store, key, state, options).await?;
        publication.offset = meta.top;
        let expires = now_ms().saturating_add(ms(options.history_ttl));
        let stored = codec::encode_stored(&meta.epoch, expires, publication);
        let history_subject = format!("{}{key}", self.names.history);
        let ack = self
            .js(
                "history append",
                self.js.publish(history_subject.clone(), stored.into()),
            )
            .await?;
        self.js("history append", ack.into_future()).await?;
        let payload = codec::encode_publication(&meta.epoch, publication);
        self.bounded("publish", self.client.publish(subject, payload.into()))
            .await?;
        // Trim lazily (reads only return the newest `size` offsets anyway): at most `size`
        // extra publications stay stored.
        let size = options.history_size as u64;
        if meta.top % size.clamp(1, 100) == 0 {
            let purge = store.history.purge().filter(history_subject).keep(size);
            if let Err(e) = self.bounded("history trim", purge.into_future()).await {
                tracing::debug!(error = %e, "history trim failed; the next one catches up");
            }
        }
        Ok(meta.position())
    }

    pub(crate) async fn history(
        &self,
        channel: &str,
        filter: &HistoryFilter,
        meta_ttl: Duration,
    ) -> Result<HistoryResult, BrokerError> {
        let store = self.store().await?;
        let key = token(channel);
        let meta = self.current_meta(&store, &key, meta_ttl).await?;
        let position = meta.position();
        if let Some(since) = &filter.since {
            if since.epoch != meta.epoch || since.offset > meta.top {
                return Err(BrokerError::UnrecoverablePosition);
            }
        }
        let limit = filter.limit.unwrap_or(usize::MAX);
        if limit == 0 || meta.top == 0 {
            let mut result = HistoryResult::default();
            result.position = position;
            return Ok(result);
        }
        let messages = self
            .read_subject(
                &store.history,
                format!("{}{key}", self.names.history),
                DeliverPolicy::All,
            )
            .await?;
        let now = now_ms();
        let oldest = meta.top.saturating_sub(meta.size);
        let mut kept: Vec<Publication> = messages
            .iter()
            .filter_map(|m| codec::decode_stored(&m.payload))
            .filter(|(epoch, expires, p)| {
                *epoch == meta.epoch && *expires > now && p.offset > oldest && p.offset <= meta.top
            })
            .map(|(_, _, p)| p)
            .collect();
        kept.sort_by_key(|p| p.offset);
        kept.dedup_by_key(|p| p.offset);
        let publications = if filter.reverse {
            let before = filter.since.as_ref().map_or(u64::MAX, |p| p.offset);
            kept.into_iter()
                .rev()
                .filter(|p| p.offset < before)
                .take(limit)
                .collect()
        } else {
            let after = filter.since.as_ref().map_or(0, |p| p.offset);
            kept.into_iter()
                .filter(|p| p.offset > after)
                .take(limit)
                .collect()
        };
        let mut result = HistoryResult::default();
        result.publications = publications;
        result.position = position;
        Ok(result)
    }

    pub(crate) async fn remove_history(&self, channel: &str) -> Result<(), BrokerError> {
        let store = self.store().await?;
        let subject = format!("{}{}", self.names.history, token(channel));
        self.js(
            "history remove",
            store.history.purge().filter(subject).into_future(),
        )
        .await?;
        Ok(())
    }
}
