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
use crate::codec::{self, ms, now_ms, token, Meta, Unsettled};
use crate::connection::unavailable;
use crate::idempotency::{self, Claim};
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
        let mut unsettled = None;
        if let Some(idem_key) = &idem_key {
            match self.claim(&store, idem_key, options).await? {
                Claim::Done(position) => return Ok(position),
                Claim::Owned { unsettled: u } => unsettled = u,
            }
        }

        let keyed = idem_key.is_some();
        let (result, unsettled) = match unsettled {
            Some(u) => {
                self.settle_unsettled(
                    &store,
                    &key,
                    &mut state,
                    subject,
                    &mut publication,
                    options,
                    u,
                )
                .await
            }
            None => {
                self.append_and_publish(
                    &store,
                    &key,
                    &mut state,
                    subject,
                    &mut publication,
                    options,
                    keyed,
                )
                .await
            }
        };

        if let Some(idem_key) = &idem_key {
            self.settle(&store, channel, idem_key, &result, unsettled, options)
                .await;
        }
        result
    }

    /// With the channel's publish lock held: gives the publication its offset, stores it in the
    /// history stream, trims, and publishes it to subscribed nodes. When the append was sent
    /// without an answer and the publish has an idempotency key (`keyed`), the offset stays
    /// reserved for a retry, which settles the attempt returned with the error.
    #[allow(clippy::too_many_arguments)]
    async fn append_and_publish(
        &self,
        store: &Store,
        key: &str,
        state: &mut ChannelState,
        subject: String,
        publication: &mut Publication,
        options: &PublishOptions,
        keyed: bool,
    ) -> (Result<StreamPosition, BrokerError>, Option<Unsettled>) {
        if !options.uses_history() {
            let payload = codec::encode_publication("", publication);
            let sent = self
                .bounded("publish", self.client.publish(subject, payload.into()))
                .await;
            return (sent.map(|()| StreamPosition::default()), None);
        }
        let history_subject = format!("{}{key}", self.names.history);
        let mut attempt = 0;
        let meta = loop {
            attempt += 1;
            let meta = match self.allocate(store, key, state, options).await {
                Ok(meta) => meta,
                Err(e) => return (Err(e), None),
            };
            publication.offset = meta.top;
            match self
                .append(&history_subject, key, &meta, publication, options)
                .await
            {
                Ok(true) => break meta,
                // The offset is already stored: an append of an earlier publish that was
                // reported failed (and its offset given back) landed after all. Take the next.
                Ok(false) if attempt < 3 => continue,
                Ok(false) => {
                    return (
                        Err(unavailable("history append", "offset taken repeatedly")),
                        None,
                    );
                }
                Err(e @ BrokerError::OutcomeUnknown(_)) if keyed => {
                    // The append may be stored, now or later: keep its offset for the retry
                    // with the same key, which stores it at most once.
                    state.reserve_last();
                    let deadline = meta
                        .pending
                        .iter()
                        .find(|p| p.o == meta.top)
                        .map_or(0, |p| p.d);
                    let unsettled = Unsettled {
                        e: meta.epoch.clone(),
                        o: meta.top,
                        d: deadline,
                        b: 0,
                    };
                    return (Err(e), Some(unsettled));
                }
                Err(e) => {
                    if !self.give_back(store, key, state, &meta).await {
                        tracing::debug!(
                            offset = meta.top,
                            "offset of a failed append not given back; it stays a hole"
                        );
                    }
                    return (Err(e), None);
                }
            }
        };
        self.send_stored(
            store,
            &history_subject,
            subject,
            &meta,
            publication,
            options,
        )
        .await;
        (Ok(meta.position()), None)
    }

    /// A retry of a publish whose earlier attempt `u` (same idempotency key) has an unknown
    /// outcome. While readers still wait for its offset, the publication is appended at that
    /// offset with the attempt's message id: whichever copy JetStream gets first is stored, the
    /// other is refused as a duplicate. Once readers may have skipped the offset as a hole, it is
    /// only looked up: stored, it is the result; missing, the publication is published anew.
    #[allow(clippy::too_many_arguments)]
    async fn settle_unsettled(
        &self,
        store: &Store,
        key: &str,
        state: &mut ChannelState,
        subject: String,
        publication: &mut Publication,
        options: &PublishOptions,
        u: Unsettled,
    ) -> (Result<StreamPosition, BrokerError>, Option<Unsettled>) {
        let meta = Meta {
            epoch: u.e.clone(),
            top: u.o,
            expires: 0,
            size: options.history_size as u64,
            pending: Vec::new(),
        };
        let history_subject = format!("{}{key}", self.names.history);
        // An append takes two round trips at most; it must be readable before the deadline.
        let margin = ms(self.config.request_timeout).saturating_mul(2);
        if now_ms().saturating_add(margin) < u.d {
            publication.offset = u.o;
            return match self
                .append(&history_subject, key, &meta, publication, options)
                .await
            {
                // Stored now, or stored already by the first attempt (the same publication).
                Ok(_) => {
                    self.send_stored(
                        store,
                        &history_subject,
                        subject,
                        &meta,
                        publication,
                        options,
                    )
                    .await;
                    (Ok(meta.position()), None)
                }
                Err(e) => (Err(e), Some(u)),
            };
        }
        match self.stored_at(store, &history_subject, &u.e, u.o).await {
            Ok(true) => (Ok(meta.position()), None),
            Ok(false) => {
                self.append_and_publish(store, key, state, subject, publication, options, true)
                    .await
            }
            Err(e) => (Err(e), Some(u)),
        }
    }

    /// Whether the history stream holds offset `offset` of epoch `epoch`.
    async fn stored_at(
        &self,
        store: &Store,
        history_subject: &str,
        epoch: &str,
        offset: u64,
    ) -> Result<bool, BrokerError> {
        let messages = self
            .read_subject(
                &store.history,
                history_subject.to_string(),
                DeliverPolicy::All,
            )
            .await?;
        Ok(messages.iter().any(|m| {
            codec::decode_stored(&m.payload)
                .is_some_and(|(e, _, p)| e == epoch && p.offset == offset)
        }))
    }

    /// After `publication` was stored at `meta`'s offset: publishes it to subscribed nodes and
    /// trims the history stream now and then.
    async fn send_stored(
        &self,
        store: &Store,
        history_subject: &str,
        subject: String,
        meta: &Meta,
        publication: &Publication,
        options: &PublishOptions,
    ) {
        let payload = codec::encode_publication(&meta.epoch, publication);
        if let Err(e) = self
            .bounded("publish", self.client.publish(subject, payload.into()))
            .await
        {
            // The publication is stored with its offset: it is published, and answering with
            // an error would make a retry publish it twice. Subscribed nodes that miss the live
            // copy are positioned: the next publication shows them the gap, and a reconnect to
            // NATS tells their subscribers to recover.
            tracing::warn!(error = %e, offset = meta.top, "stored publication not sent live");
        }
        // Trim lazily (reads only return the newest `size` offsets anyway): at most `size`
        // extra publications stay stored.
        let size = options.history_size as u64;
        if meta.top.is_multiple_of(size.clamp(1, 100)) {
            let purge = store
                .history
                .purge()
                .filter(history_subject.to_string())
                .keep(size);
            if let Err(e) = self.bounded("history trim", purge.into_future()).await {
                tracing::debug!(error = %e, "history trim failed; the next one catches up");
            }
        }
    }

    /// Stores `publication` (with `meta`'s epoch and offset) in the history stream. Its message
    /// id names the channel, epoch and offset, so the stream stores an offset at most once (within
    /// its duplicate window): `Ok(false)` when the offset was already stored.
    async fn append(
        &self,
        history_subject: &str,
        key: &str,
        meta: &Meta,
        publication: &Publication,
        options: &PublishOptions,
    ) -> Result<bool, BrokerError> {
        #[cfg(feature = "test-hooks")]
        self.hooks.before_append().await?;
        let expires = now_ms().saturating_add(ms(options.history_ttl));
        let stored = codec::encode_stored(&meta.epoch, expires, publication);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("{key}.{}.{}", meta.epoch, meta.top).as_str(),
        );
        let ack = self
            .js(
                "history append",
                self.js
                    .publish_with_headers(history_subject.to_string(), headers, stored.into()),
            )
            .await?;
        // The message was sent: without its acknowledgement, JetStream may have stored it.
        let ack = self
            .js("history append", ack.into_future())
            .await
            .map_err(|e| match e {
                BrokerError::Unavailable(reason) => BrokerError::OutcomeUnknown(reason),
                e => e,
            })?;
        #[cfg(feature = "test-hooks")]
        self.hooks.after_append()?;
        Ok(!ack.duplicate)
    }

    /// Reads history. The position reported never includes an offset that was given out but is
    /// not readable yet (its append is under way): subscribers take everything up to the
    /// position as delivered, so such an offset would be lost to them. Offsets pending in the
    /// meta and missing from the stream are waited for (up to `request_timeout`); one still
    /// missing then lowers the position to just below it. An offset missing past its pending
    /// deadline is a hole (its publish failed) and is skipped.
    pub(crate) async fn history(
        &self,
        channel: &str,
        filter: &HistoryFilter,
        meta_ttl: Duration,
    ) -> Result<HistoryResult, BrokerError> {
        let store = self.store().await?;
        let key = token(channel);
        let wait_until = tokio::time::Instant::now() + self.config.request_timeout;
        // Between reads while an offset is being appended: usually one short pause is enough.
        let mut pause = Duration::from_millis(2);
        loop {
            let meta = self.current_meta(&store, &key, meta_ttl).await?;
            if let Some(since) = &filter.since {
                if since.epoch != meta.epoch || since.offset > meta.top {
                    return Err(BrokerError::UnrecoverablePosition);
                }
            }
            let limit = filter.limit.unwrap_or(usize::MAX);
            let now = now_ms();
            let oldest = meta.top.saturating_sub(meta.size);
            let pending: Vec<u64> = meta
                .pending
                .iter()
                .filter(|p| p.d > now && p.o > oldest && p.o <= meta.top)
                .map(|p| p.o)
                .collect();
            if meta.top == 0
                || (limit == 0
                    && (pending.is_empty()
                        || self.top_is_stored(&store, &key, &meta, &pending).await))
            {
                let mut result = HistoryResult::default();
                result.position = meta.position();
                return Ok(result);
            }
            let messages = self
                .read_subject(
                    &store.history,
                    format!("{}{key}", self.names.history),
                    DeliverPolicy::All,
                )
                .await?;
            // Newest copy first for each offset (an offset stored twice: see `give_back`).
            let mut stored: Vec<(u64, Publication)> = messages
                .iter()
                .rev()
                .filter_map(|m| codec::decode_stored(&m.payload))
                .filter(|(epoch, _, p)| {
                    *epoch == meta.epoch && p.offset > oldest && p.offset <= meta.top
                })
                .map(|(_, expires, p)| (expires, p))
                .collect();
            stored.sort_by_key(|(_, p)| p.offset);
            stored.dedup_by_key(|(_, p)| p.offset);
            let in_flight = pending
                .iter()
                .copied()
                .filter(|o| stored.binary_search_by_key(o, |(_, p)| p.offset).is_err())
                .min();
            if in_flight.is_some() && tokio::time::Instant::now() < wait_until {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(100));
                continue;
            }
            let top = in_flight.map_or(meta.top, |o| o - 1);
            let now = now_ms();
            let kept = stored
                .into_iter()
                .filter(|(expires, p)| *expires > now && p.offset <= top)
                .map(|(_, p)| p);
            let publications = if limit == 0 {
                Vec::new()
            } else if filter.reverse {
                let before = filter.since.as_ref().map_or(u64::MAX, |p| p.offset);
                kept.rev()
                    .filter(|p| p.offset < before)
                    .take(limit)
                    .collect()
            } else {
                let after = filter.since.as_ref().map_or(0, |p| p.offset);
                kept.filter(|p| p.offset > after).take(limit).collect()
            };
            let mut result = HistoryResult::default();
            result.publications = publications;
            result.position = StreamPosition {
                offset: top,
                epoch: meta.epoch,
            };
            return Ok(result);
        }
    }

    /// Whether the only pending offsets are the top and the top is stored: one direct get of the
    /// subject's last message (the usual case, the entry of this or another node's last
    /// publish not yet dropped) instead of reading the whole subject.
    async fn top_is_stored(&self, store: &Store, key: &str, meta: &Meta, pending: &[u64]) -> bool {
        if pending.iter().any(|&o| o != meta.top) {
            return false;
        }
        let subject = format!("{}{key}", self.names.history);
        let last = store.history.direct_get_last_for_subject(subject);
        match tokio::time::timeout(self.config.request_timeout, last).await {
            Ok(Ok(message)) => codec::decode_stored(&message.payload)
                .is_some_and(|(epoch, _, p)| epoch == meta.epoch && p.offset == meta.top),
            _ => false,
        }
    }

    pub(crate) async fn remove_history(&self, channel: &str) -> Result<(), BrokerError> {
        let store = self.store().await?;
        let key = token(channel);
        let subject = format!("{}{key}", self.names.history);
        self.js(
            "history remove",
            store.history.purge().filter(subject).into_future(),
        )
        .await?;
        self.clear_pending(&store, &key).await
    }
}
