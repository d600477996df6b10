//! Publish-once by idempotency key, across nodes: before publishing, the key is claimed in the
//! idempotency bucket by compare-and-set (a claim expires after [`CLAIM_TIMEOUTS`] request
//! timeouts, in case its publisher dies); a key holding an unexpired result answers with it
//! without publishing; a key claimed by a publisher still at work is waited for up to the
//! request timeout. After the publish the result is stored for `idempotent_result_ttl`; a failed
//! publish releases the claim.

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::kv::{Operation, UpdateErrorKind};
use switchboard_hub::{BrokerError, PublishOptions};
use switchboard_proto::StreamPosition;

use crate::broker::Shared;
use crate::codec::{ms, now_ms, token, Idempotency};
use crate::connection::unavailable;
use crate::store::Store;

/// Lifetime of an idempotency claim whose publisher never wrote the result (it died), in
/// request timeouts.
const CLAIM_TIMEOUTS: u32 = 4;

/// The bucket key of idempotency key `key` in the channel whose token is `channel_token`.
pub(crate) fn bucket_key(channel_token: &str, key: &str) -> String {
    format!("{channel_token}.{}", token(key))
}

impl Shared {
    /// Claims the idempotency key `key` (bucket key: channel token and key token) for a publish
    /// with `options`. `Ok(Err(position))` when the key was already used (its result);
    /// `Ok(Ok(revision))` when this publisher owns it now.
    pub(crate) async fn claim(
        &self,
        store: &Store,
        key: &str,
        options: &PublishOptions,
    ) -> Result<Result<u64, StreamPosition>, BrokerError> {
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
            let claim = serde_json::to_vec(&Idempotency {
                x: now + claim_ms,
                r: None,
            })
            .expect("idempotency entries serialise");
            let revision = match entry {
                Some(e) if e.operation == Operation::Put => {
                    match serde_json::from_slice::<Idempotency>(&e.value) {
                        Ok(i) if i.x > now => match i.r {
                            Some(position) => return Ok(Err(position)),
                            None => None,
                        },
                        _ => Some(e.revision),
                    }
                }
                Some(e) => Some(e.revision),
                None => Some(0),
            };
            if let Some(revision) = revision {
                match tokio::time::timeout(
                    self.config.request_timeout,
                    store.idem.update(key, claim.into(), revision),
                )
                .await
                {
                    Ok(Ok(revision)) => return Ok(Ok(revision)),
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

    /// After the publish that claimed `key`: stores its result for `idempotent_result_ttl`, or
    /// releases the claim when it failed.
    pub(crate) async fn settle(
        &self,
        store: &Store,
        channel: &str,
        key: &str,
        result: &Result<StreamPosition, BrokerError>,
        options: &PublishOptions,
    ) {
        match result {
            Ok(position) => {
                let done = serde_json::to_vec(&Idempotency {
                    x: now_ms() + ms(options.idempotent_result_ttl),
                    r: Some(position.clone()),
                })
                .expect("idempotency entries serialise");
                if let Err(e) = self
                    .bounded("idempotency write", store.idem.put(key, done.into()))
                    .await
                {
                    // Published already: report success; a retry within the claim's
                    // lifetime is refused as in progress, later it publishes again.
                    tracing::warn!(channel, error = %e, "idempotency result not stored");
                }
            }
            Err(_) => {
                let _ = self
                    .bounded("idempotency release", store.idem.delete(key))
                    .await;
            }
        }
    }
}
