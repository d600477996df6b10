//! Per-channel ordering on the publishing side: each channel's stream position (epoch and top
//! offset) lives in the meta bucket and is moved by compare-and-set, so publishers on every node
//! get unique, consecutive offsets; a position past its lifetime starts a new epoch. One node's
//! publishes into a channel are serialised by a per-channel publish lock, which also caches the
//! meta this node wrote last (an uncontended publish needs no read).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::{Operation, UpdateErrorKind};
use switchboard_hub::{BrokerError, PublishOptions, DEFAULT_META_TTL};

use crate::broker::Shared;
use crate::codec::{ms, now_ms, Meta};
use crate::connection::unavailable;
use crate::store::Store;

/// How many times a publish retries its compare-and-set of the channel meta when another node
/// moved it in between.
const CAS_ATTEMPTS: usize = 32;

/// What one node remembers about a channel it publishes into: the meta it last wrote and its
/// revision (so the next publish needs no read unless another node wrote in between).
#[derive(Default)]
pub(crate) struct ChannelState {
    meta: Option<(u64, Meta)>,
}

fn meta_ttl_or_default(ttl: Duration) -> Duration {
    if ttl.is_zero() {
        DEFAULT_META_TTL
    } else {
        ttl
    }
}

impl Shared {
    /// The channel's publish lock (created on first use).
    pub(crate) fn channel_lock(&self, channel: &str) -> Arc<tokio::sync::Mutex<ChannelState>> {
        self.channels
            .lock()
            .entry(channel.to_string())
            .or_default()
            .clone()
    }

    /// Drops publish locks nobody holds or waits for.
    pub(crate) fn sweep(&self) {
        self.channels
            .lock()
            .retain(|_, lock| Arc::strong_count(lock) > 1);
    }

    /// Reads a channel's meta: its revision (0 when missing) and value (None when missing,
    /// deleted or unreadable).
    async fn read_meta(
        &self,
        store: &Store,
        key: &str,
    ) -> Result<(u64, Option<Meta>), BrokerError> {
        let entry = self.js("meta read", store.meta.entry(key)).await?;
        Ok(match entry {
            Some(e) if e.operation == Operation::Put => {
                (e.revision, serde_json::from_slice(&e.value).ok())
            }
            Some(e) => (e.revision, None),
            None => (0, None),
        })
    }

    /// Writes `meta` if the key is still at `revision`: `Ok(None)` when another writer won.
    async fn write_meta(
        &self,
        store: &Store,
        key: &str,
        meta: &Meta,
        revision: u64,
    ) -> Result<Option<u64>, BrokerError> {
        let value = serde_json::to_vec(meta).expect("meta serialises");
        match tokio::time::timeout(
            self.config.request_timeout,
            store.meta.update(key, value.into(), revision),
        )
        .await
        {
            Ok(Ok(revision)) => Ok(Some(revision)),
            Ok(Err(e)) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(None),
            Ok(Err(e)) => {
                *self.store.write() = None;
                Err(unavailable("meta write", e))
            }
            Err(_) => Err(unavailable("meta write", "timed out")),
        }
    }

    /// Gives out the channel's next offset: compare-and-set of `{epoch, top}` in the meta
    /// bucket, starting a new epoch when the stream position expired.
    pub(crate) async fn allocate(
        &self,
        store: &Store,
        key: &str,
        state: &mut ChannelState,
        options: &PublishOptions,
    ) -> Result<Meta, BrokerError> {
        let ttl = ms(meta_ttl_or_default(options.history_meta_ttl));
        for _ in 0..CAS_ATTEMPTS {
            let (revision, current) = match state.meta.take() {
                Some((revision, meta)) => (revision, Some(meta)),
                None => self.read_meta(store, key).await?,
            };
            let now = now_ms();
            let mut next = match current {
                Some(meta) if meta.expires > now => meta,
                _ => Meta::fresh(now, ttl),
            };
            next.top += 1;
            next.expires = now.saturating_add(ttl);
            next.size = options.history_size as u64;
            if let Some(revision) = self.write_meta(store, key, &next, revision).await? {
                state.meta = Some((revision, next.clone()));
                return Ok(next);
            }
        }
        Err(BrokerError::Unavailable(
            "nats: too many concurrent publishers on one channel".into(),
        ))
    }

    /// The channel's current meta, created (with a new epoch) when missing or expired.
    pub(crate) async fn current_meta(
        &self,
        store: &Store,
        key: &str,
        meta_ttl: Duration,
    ) -> Result<Meta, BrokerError> {
        let ttl = ms(meta_ttl_or_default(meta_ttl));
        for _ in 0..CAS_ATTEMPTS {
            let (revision, current) = self.read_meta(store, key).await?;
            let now = now_ms();
            match current {
                Some(meta) if meta.expires > now => return Ok(meta),
                _ => {
                    let fresh = Meta::fresh(now, ttl);
                    if self
                        .write_meta(store, key, &fresh, revision)
                        .await?
                        .is_some()
                    {
                        return Ok(fresh);
                    }
                }
            }
        }
        Err(BrokerError::Unavailable(
            "nats: too many concurrent writers on one channel".into(),
        ))
    }
}
