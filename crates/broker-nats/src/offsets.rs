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
use crate::codec::{ms, now_ms, Meta, Pending};
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
    /// The offset this node gave out last: finished (appended, given back or abandoned) by the
    /// time the lock is taken again, so the next allocation drops its pending entry.
    last: Option<u64>,
    /// Whether the publish of `last` failed without giving its offset back.
    failed: bool,
}

impl ChannelState {
    /// The offset this node gave out last stays reserved for a retry of its publish (see
    /// `idempotency`): neither used again nor dropped from the pending offsets by the next
    /// allocation, so readers wait for it until its deadline.
    pub(crate) fn reserve_last(&mut self) {
        self.last = None;
        self.failed = false;
    }
}

/// How long after its allocation started an offset counts as possibly still being appended: the
/// allocation and the append's two round trips take at most 3 × `request_timeout`; giving it back
/// is only tried while a fourth fits before this deadline. The margin covers clock differences
/// between nodes (deadlines are wall-clock milliseconds).
pub(crate) fn pending_deadline(now: u64, request_timeout: Duration) -> u64 {
    now.saturating_add(ms(request_timeout).saturating_mul(4))
        .saturating_add(1000)
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
        let started = now_ms();
        let deadline = pending_deadline(started, self.config.request_timeout);
        let last = state.last.take();
        let failed = std::mem::take(&mut state.failed);
        for _ in 0..CAS_ATTEMPTS {
            let (revision, current) = match state.meta.take() {
                Some((revision, meta)) => (revision, Some(meta)),
                None => match self.read_meta(store, key).await {
                    Ok(read) => read,
                    Err(e) => {
                        (state.last, state.failed) = (last, failed);
                        return Err(e);
                    }
                },
            };
            let now = now_ms();
            let mut next = match current {
                Some(meta) if meta.expires > now => meta,
                _ => Meta::fresh(now, ttl),
            };
            next.expires = now.saturating_add(ttl);
            next.size = options.history_size as u64;
            // This node's last offset is still the top, still pending (no reader counts it as
            // abandoned yet) and its publish failed: it was never appended (or the append, should
            // it land late, makes ours a duplicate). Use it again rather than leave a hole.
            let reuse = failed
                && last == Some(next.top)
                && next.pending.iter().any(|p| {
                    p.o == next.top && now.saturating_add(ms(self.config.request_timeout)) < p.d
                });
            if !reuse {
                next.top += 1;
            }
            // Entries of finished appends: this node's previous one, and any past its deadline.
            next.pending.retain(|p| p.d > now && Some(p.o) != last);
            next.pending.push(Pending {
                o: next.top,
                d: deadline,
            });
            match self.write_meta(store, key, &next, revision).await {
                Ok(Some(revision)) => {
                    state.meta = Some((revision, next.clone()));
                    state.last = Some(next.top);
                    return Ok(next);
                }
                Ok(None) => {}
                Err(e) => {
                    // The write may still be applied (a timed-out request the server gets
                    // later): then the next allocation reuses or drops this offset.
                    state.last = Some(next.top);
                    state.failed = true;
                    return Err(e);
                }
            }
        }
        Err(BrokerError::Unavailable(
            "nats: too many concurrent publishers on one channel".into(),
        ))
    }

    /// After a failed append of `meta.top` (allocated by [`Self::allocate`]): gives the offset
    /// back, so that it does not stay a hole, if no other publisher took an offset since and
    /// its pending deadline is still far enough (a reader that saw the deadline pass counts the
    /// offset as abandoned and may report a position that includes it). Returns whether it was
    /// given back. Should the failed append still land (a timed-out request the server applies
    /// later), the next append with the same offset is refused as a duplicate (`Nats-Msg-Id`)
    /// and takes a new offset.
    pub(crate) async fn give_back(
        &self,
        store: &Store,
        key: &str,
        state: &mut ChannelState,
        meta: &Meta,
    ) -> bool {
        // Unless given back below, the offset may be used again by this node's next publish.
        state.failed = true;
        let Some((revision, current)) = state.meta.take() else {
            return false;
        };
        let Some(entry) = current.pending.iter().find(|p| p.o == meta.top) else {
            return false;
        };
        if current.top != meta.top
            || now_ms().saturating_add(ms(self.config.request_timeout)) >= entry.d
        {
            return false;
        }
        let mut back = current.clone();
        back.top -= 1;
        back.pending.retain(|p| p.o != meta.top);
        match self.write_meta(store, key, &back, revision).await {
            Ok(Some(revision)) => {
                state.meta = Some((revision, back));
                state.last = None;
                state.failed = false;
                true
            }
            Ok(None) | Err(_) => false,
        }
    }

    /// After the channel's history was removed: forgets its pending offsets, which readers would
    /// otherwise wait for and keep out of the position although they are gone for good. (A
    /// publish whose append is under way while the history is removed loses that protection.)
    pub(crate) async fn clear_pending(&self, store: &Store, key: &str) -> Result<(), BrokerError> {
        for _ in 0..CAS_ATTEMPTS {
            let (revision, current) = self.read_meta(store, key).await?;
            let Some(mut meta) = current.filter(|m| !m.pending.is_empty()) else {
                return Ok(());
            };
            meta.pending.clear();
            if self
                .write_meta(store, key, &meta, revision)
                .await?
                .is_some()
            {
                return Ok(());
            }
        }
        Err(BrokerError::Unavailable(
            "nats: too many concurrent writers on one channel".into(),
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
