//! Publish-once by idempotency key, across nodes: before publishing, the key is claimed in the
//! idempotency bucket by compare-and-set (a claim expires after [`CLAIM_TIMEOUTS`] request
//! timeouts, in case its publisher dies); a key holding an unexpired result answers with it
//! without publishing; a key claimed by a publisher still at work is waited for up to the
//! request timeout. After the publish the result is stored for `idempotent_result_ttl`; a failed
//! publish releases the claim, unless its append was sent without an answer (outcome unknown):
//! then the key keeps the attempt's epoch and offset ([`Unsettled`]), the offset stays reserved
//! and pending, and a retry settles it: while readers still wait for the offset, the retry appends
//! at that very offset with the same message id (JetStream stores one of the two copies, never
//! both); later, it answers the offset when the first append was stored and publishes anew when
//! it was not. So a retry with the same key never publishes twice.

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::kv::{Operation, UpdateErrorKind};
use switchboard_hub::{BrokerError, PublishOptions};
use switchboard_proto::StreamPosition;

use crate::broker::Shared;
use crate::codec::{ms, now_ms, token, Idempotency, Unsettled};
use crate::connection::unavailable;
use crate::store::Store;

/// Lifetime of an idempotency claim whose publisher never wrote the result (it died), in
/// request timeouts.
const CLAIM_TIMEOUTS: u32 = 4;

/// The bucket key of idempotency key `key` in the channel whose token is `channel_token`.
pub(crate) fn bucket_key(channel_token: &str, key: &str) -> String {
    format!("{channel_token}.{}", token(key))
}

/// What [`Shared::claim`] found.
pub(crate) enum Claim {
    /// The key was used already: the result of its publish.
    Done(StreamPosition),
    /// This publisher owns the key now. `unsettled`: an earlier attempt with the key whose
    /// outcome is unknown, to be settled before anything is published.
    Owned { unsettled: Option<Unsettled> },
}

impl Shared {
    /// Claims the idempotency key `key` (bucket key: channel token and key token) for a publish
    /// with `options`.
    pub(crate) async fn claim(
        &self,
        store: &Store,
        key: &str,
        options: &PublishOptions,
    ) -> Result<Claim, BrokerError> {
        if options.idempotent_result_ttl > self.config.idempotency_max_age
            && !self.warned_idempotency_ttl.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                ttl = ?options.idempotent_result_ttl,
                max_age = ?self.config.idempotency_max_age,
                "idempotent_result_ttl exceeds [broker.nats] idempotency_max_age; keys are forgotten earlier"
            );
        }
        let claim_ms = ms(self.config.request_timeout) * u64::from(CLAIM_TIMEOUTS);
        let deadline = tokio::time::Instant::now() + self.config.request_timeout;
        loop {
            let entry = self.js("idempotency read", store.idem.entry(key)).await?;
            let now = now_ms();
            let fresh = Idempotency {
                x: now + claim_ms,
                r: None,
                u: None,
            };
            // The entry to write and the revision it replaces; None: in progress elsewhere.
            let takeover = match entry {
                Some(e) if e.operation == Operation::Put => {
                    match serde_json::from_slice::<Idempotency>(&e.value) {
                        Ok(i) if i.x > now => match (i.r, i.u) {
                            (Some(position), _) => return Ok(Claim::Done(position)),
                            // An unsettled attempt nobody is retrying: this publisher settles it.
                            (None, Some(u)) if u.b <= now => Some((
                                Idempotency {
                                    x: i.x.max(now + claim_ms),
                                    r: None,
                                    u: Some(Unsettled {
                                        b: now + claim_ms,
                                        ..u.clone()
                                    }),
                                },
                                e.revision,
                                Some(u),
                            )),
                            // Claimed by a publisher that has not finished yet.
                            (None, _) => None,
                        },
                        _ => Some((fresh, e.revision, None)),
                    }
                }
                Some(e) => Some((fresh, e.revision, None)),
                None => Some((fresh, 0, None)),
            };
            if let Some((value, revision, unsettled)) = takeover {
                let value = serde_json::to_vec(&value).expect("idempotency entries serialise");
                match tokio::time::timeout(
                    self.config.request_timeout,
                    store.idem.update(key, value.into(), revision),
                )
                .await
                {
                    Ok(Ok(_)) => return Ok(Claim::Owned { unsettled }),
                    Ok(Err(e)) if e.kind() == UpdateErrorKind::WrongLastRevision => {}
                    Ok(Err(e)) => return Err(unavailable("idempotency claim", e)),
                    Err(_) => return Err(unavailable("idempotency claim", "timed out")),
                }
            }
            // Claimed by a publisher on another node that has not finished yet.
            if tokio::time::Instant::now() >= deadline {
                return Err(BrokerError::Unavailable(
                    "nats: a publish with the same idempotency key is in progress".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// After the publish that claimed `key`: stores its result for `idempotent_result_ttl`;
    /// when it failed, keeps `unsettled` (an attempt whose outcome is unknown) for a retry, or
    /// releases the claim.
    pub(crate) async fn settle(
        &self,
        store: &Store,
        channel: &str,
        key: &str,
        result: &Result<StreamPosition, BrokerError>,
        unsettled: Option<Unsettled>,
        options: &PublishOptions,
    ) {
        let entry = match (result, unsettled) {
            (Ok(position), _) => Idempotency {
                x: now_ms() + ms(options.idempotent_result_ttl),
                r: Some(position.clone()),
                u: None,
            },
            (Err(_), Some(u)) => Idempotency {
                x: now_ms() + ms(options.idempotent_result_ttl),
                r: None,
                u: Some(Unsettled { b: 0, ..u }),
            },
            (Err(_), None) => {
                let _ = self
                    .bounded("idempotency release", store.idem.delete(key))
                    .await;
                return;
            }
        };
        let value = serde_json::to_vec(&entry).expect("idempotency entries serialise");
        if let Err(e) = self
            .bounded("idempotency write", store.idem.put(key, value.into()))
            .await
        {
            // Published already (or unknown): a retry within the claim's lifetime is refused as
            // in progress, later it publishes again.
            tracing::warn!(channel, error = %e, "idempotency entry not stored");
        }
    }
}
