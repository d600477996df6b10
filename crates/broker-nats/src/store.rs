//! The JetStream store: subject, stream and bucket names derived from the prefix; the history
//! stream and the meta, presence and idempotency buckets, created (or looked up) on first use
//! after a connect and forgotten after any JetStream error so that the next call sets them up
//! again; reading what a subject holds through a short-lived consumer; deleting it all.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::{self, kv, stream};
use futures_util::StreamExt as _;
use switchboard_hub::BrokerError;

use crate::broker::Shared;
use crate::connection::unavailable;

/// Subjects, stream and bucket names derived from the prefix.
pub(crate) struct Names {
    /// `<prefix>.c.` + channel token: pub/sub.
    pub(crate) channel: String,
    /// `<prefix>.h.` + channel token: the history stream's subjects.
    pub(crate) history: String,
    /// `<prefix>.control`.
    pub(crate) control: String,
    /// `<prefix>.sync`: nobody subscribes; requests to it are round trips.
    pub(crate) sync: String,
    pub(crate) history_stream: String,
    pub(crate) meta_bucket: String,
    pub(crate) presence_bucket: String,
    pub(crate) idem_bucket: String,
}

impl Names {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            channel: format!("{prefix}.c."),
            history: format!("{prefix}.h."),
            control: format!("{prefix}.control"),
            sync: format!("{prefix}.sync"),
            history_stream: format!("{prefix}-history"),
            meta_bucket: format!("{prefix}-meta"),
            presence_bucket: format!("{prefix}-presence"),
            idem_bucket: format!("{prefix}-idem"),
        }
    }
}

/// JetStream handles, created (or looked up) once NATS is reachable.
pub(crate) struct Store {
    pub(crate) history: stream::Stream,
    pub(crate) meta: kv::Store,
    pub(crate) presence: kv::Store,
    pub(crate) idem: kv::Store,
}

impl Shared {
    /// Like [`Self::bounded`] for JetStream operations: a failure also forgets the JetStream
    /// handles, so the next call looks the stream and buckets up again (and recreates them if
    /// the server lost them).
    pub(crate) async fn js<T, E: std::fmt::Display>(
        &self,
        what: &str,
        op: impl Future<Output = Result<T, E>>,
    ) -> Result<T, BrokerError> {
        let result = self.bounded(what, op).await;
        if result.is_err() {
            *self.store.write() = None;
        }
        result
    }

    /// The JetStream handles; sets the stream and buckets up on first use after a connect.
    pub(crate) async fn store(&self) -> Result<Arc<Store>, BrokerError> {
        if !self.config.history {
            return Err(BrokerError::NotAvailable);
        }
        self.check_connected()?;
        if let Some(store) = self.store.read().clone() {
            return Ok(store);
        }
        let _setup = tokio::time::timeout(self.config.request_timeout, self.setup.lock())
            .await
            .map_err(|_| unavailable("setup", "timed out"))?;
        if let Some(store) = self.store.read().clone() {
            return Ok(store);
        }
        let store = Arc::new(self.create_store().await?);
        *self.store.write() = Some(store.clone());
        Ok(store)
    }

    async fn create_store(&self) -> Result<Store, BrokerError> {
        let c = &self.config;
        let n = &self.names;
        let storage = if c.memory_storage {
            stream::StorageType::Memory
        } else {
            stream::StorageType::File
        };
        let history = self
            .bounded(
                "history stream",
                self.js.get_or_create_stream(stream::Config {
                    name: n.history_stream.clone(),
                    description: Some("switchboard channel history".into()),
                    subjects: vec![format!("{}*", n.history)],
                    max_age: c.history_max_age,
                    storage,
                    num_replicas: c.replicas,
                    allow_direct: true,
                    discard: stream::DiscardPolicy::Old,
                    ..Default::default()
                }),
            )
            .await?;
        // The stream behind a key-value bucket, as async-nats would create it (its own
        // `create_key_value` first reads account info in a shape NATS 2.9 does not send).
        let bucket = |name: &str, max_age: Duration, what: &str| stream::Config {
            name: format!("KV_{name}"),
            description: Some(format!("switchboard {what}")),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: 1,
            max_age,
            storage,
            num_replicas: c.replicas,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        };
        let meta = self
            .key_value(bucket(&n.meta_bucket, c.meta_max_age, "stream positions"))
            .await?;
        let presence = self
            .key_value(bucket(&n.presence_bucket, c.presence_max_age, "presence"))
            .await?;
        let idem = self
            .key_value(bucket(
                &n.idem_bucket,
                c.idempotency_max_age,
                "idempotency keys",
            ))
            .await?;
        Ok(Store {
            history,
            meta,
            presence,
            idem,
        })
    }

    async fn key_value(&self, config: stream::Config) -> Result<kv::Store, BrokerError> {
        let bucket = config.name.trim_start_matches("KV_").to_string();
        if let Ok(Ok(store)) = tokio::time::timeout(
            self.config.request_timeout,
            self.js.get_key_value(bucket.clone()),
        )
        .await
        {
            return Ok(store);
        }
        // Creating is idempotent for an identical config (another node may have been first).
        self.bounded("bucket", self.js.get_or_create_stream(config))
            .await?;
        self.bounded("bucket", self.js.get_key_value(bucket)).await
    }

    /// Reads the messages of `filter` in `stream` that exist now, through a short-lived
    /// ephemeral pull consumer.
    pub(crate) async fn read_subject(
        &self,
        stream: &stream::Stream,
        filter: String,
        deliver_policy: DeliverPolicy,
    ) -> Result<Vec<jetstream::Message>, BrokerError> {
        let consumer: jetstream::consumer::PullConsumer = self
            .js(
                "consumer",
                stream.create_consumer(pull::Config {
                    filter_subject: filter,
                    deliver_policy,
                    ack_policy: AckPolicy::None,
                    inactive_threshold: Duration::from_secs(30),
                    memory_storage: true,
                    ..Default::default()
                }),
            )
            .await?;
        let info = consumer.cached_info();
        let pending = usize::try_from(info.num_pending).unwrap_or(usize::MAX);
        let name = info.name.clone();
        let mut messages = Vec::with_capacity(pending.min(4096));
        let read = async {
            if pending == 0 {
                return Ok(());
            }
            let mut batch = consumer
                .fetch()
                .max_messages(pending)
                .messages()
                .await
                .map_err(|e| unavailable("fetch", e))?;
            while let Some(message) = batch.next().await {
                messages.push(message.map_err(|e| unavailable("fetch", e))?);
                if messages.len() >= pending {
                    break;
                }
            }
            Ok(())
        };
        let result = match tokio::time::timeout(self.config.request_timeout, read).await {
            Ok(r) => r,
            Err(_) => Err(unavailable("fetch", "timed out")),
        };
        // The consumer would go away after its inactivity threshold; deleting it now keeps the
        // server's consumer count low.
        let stream = stream.clone();
        tokio::spawn(async move {
            let _ = stream.delete_consumer(&name).await;
        });
        result.map(|()| messages)
    }

    /// Deletes the prefix's stream and buckets (see [`crate::NatsBroker::delete_storage`]).
    pub(crate) async fn delete_storage(&self) -> Result<(), BrokerError> {
        self.check_connected()?;
        *self.store.write() = None;
        let n = &self.names;
        let mut result = Ok(());
        if let Err(e) = self
            .bounded("delete", self.js.delete_stream(&n.history_stream))
            .await
        {
            result = Err(e);
        }
        for bucket in [&n.meta_bucket, &n.presence_bucket, &n.idem_bucket] {
            if let Err(e) = self
                .bounded("delete", self.js.delete_key_value(bucket))
                .await
            {
                result = Err(e);
            }
        }
        result
    }
}
