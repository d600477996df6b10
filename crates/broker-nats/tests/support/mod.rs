//! Shared fixtures: brokers against the local NATS (127.0.0.1:4222, or `NATS_URL`) with a
//! unique prefix per broker, and cleanup of what they stored.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use switchboard_broker_nats::{NatsBroker, NatsConfig};

/// The NATS server the tests use.
pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A prefix no other run uses.
pub fn unique_prefix(what: &str) -> String {
    format!(
        "sbtest-{what}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// A config for tests: short timeouts, small bounds (so leftovers of a crashed run expire).
pub fn test_config(url: &str, prefix: &str) -> NatsConfig {
    let mut c = NatsConfig::default();
    c.url = url.into();
    c.prefix = prefix.into();
    c.connect_timeout = Duration::from_millis(500);
    c.request_timeout = Duration::from_secs(1);
    c.history_max_age = Duration::from_secs(600);
    c.meta_max_age = Duration::from_secs(3600);
    c.presence_max_age = Duration::from_secs(120);
    c.idempotency_max_age = Duration::from_secs(120);
    c
}

/// Connects a broker and waits until its stream and buckets exist. With `cleanup`, the broker
/// is registered before it creates anything, so a failed setup is cleaned up too.
pub async fn connect(config: NatsConfig, node: &str, cleanup: Option<&Cleanup>) -> NatsBroker {
    let broker = NatsBroker::connect(config, node)
        .await
        .expect("valid config");
    if let Some(cleanup) = cleanup {
        cleanup.add(&broker);
    }
    broker
        .ready(Duration::from_secs(10))
        .await
        .expect("nats ready");
    broker
}

/// Brokers whose JetStream storage must be deleted at the end of a test.
#[derive(Default, Clone)]
pub struct Cleanup(Arc<Mutex<Vec<NatsBroker>>>);

impl Cleanup {
    pub fn add(&self, broker: &NatsBroker) {
        self.0.lock().push(broker.clone());
    }

    /// Deletes every registered broker's stream and buckets.
    pub async fn run(&self) {
        let brokers: Vec<NatsBroker> = self.0.lock().drain(..).collect();
        for b in brokers {
            if let Err(e) = b.delete_storage().await {
                eprintln!("cleanup of {b:?} failed: {e}");
            }
        }
    }
}

/// Runs `test`, then the cleanup, then re-raises a panic of the test.
pub async fn with_cleanup<F: std::future::Future<Output = ()>>(cleanup: &Cleanup, test: F) {
    use futures_util::FutureExt as _;
    let result = std::panic::AssertUnwindSafe(test).catch_unwind().await;
    cleanup.run().await;
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// Everything a broker delivered, for tests that look at more than the conformance suite does.
#[derive(Default)]
pub struct Recorder {
    pub publications: Mutex<Vec<(String, switchboard_proto::Publication)>>,
    pub joins: Mutex<Vec<(String, String)>>,
    pub leaves: Mutex<Vec<(String, String)>>,
    pub gaps: Mutex<Vec<String>>,
    pub control: Mutex<Vec<Vec<u8>>>,
}

impl Recorder {
    pub fn offsets(&self, channel: &str) -> Vec<u64> {
        self.publications
            .lock()
            .iter()
            .filter(|(c, _)| c == channel)
            .map(|(_, p)| p.offset)
            .collect()
    }

    pub fn gaps(&self, channel: &str) -> usize {
        self.gaps.lock().iter().filter(|c| *c == channel).count()
    }
}

impl switchboard_hub::BrokerEvents for Recorder {
    fn publication(&self, channel: &str, publication: &switchboard_proto::Publication) {
        self.publications
            .lock()
            .push((channel.to_string(), publication.clone()));
    }
    fn join(&self, channel: &str, info: &switchboard_proto::ClientInfo) {
        self.joins
            .lock()
            .push((channel.to_string(), info.client.clone()));
    }
    fn leave(&self, channel: &str, info: &switchboard_proto::ClientInfo) {
        self.leaves
            .lock()
            .push((channel.to_string(), info.client.clone()));
    }
    fn gap(&self, channel: &str) {
        self.gaps.lock().push(channel.to_string());
    }
    fn control(&self, message: &[u8]) {
        self.control.lock().push(message.to_vec());
    }
}

/// Waits up to `within` for `check`.
pub async fn eventually(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A publication with `{"n":n}` as data.
pub fn publication(n: u64) -> switchboard_proto::Publication {
    switchboard_proto::Publication {
        data: serde_json::value::RawValue::from_string(format!("{{\"n\":{n}}}")).unwrap(),
        info: None,
        offset: 0,
        tags: Default::default(),
    }
}

/// Options for a channel with history.
pub fn history_options() -> switchboard_hub::PublishOptions {
    let mut o = switchboard_hub::PublishOptions::default();
    o.history_size = 100;
    o.history_ttl = Duration::from_secs(300);
    o.history_meta_ttl = Duration::from_secs(3600);
    o
}

/// A client's presence info.
pub fn info(user: &str, client: &str) -> switchboard_proto::ClientInfo {
    switchboard_proto::ClientInfo {
        user: user.into(),
        client: client.into(),
        conn_info: None,
        chan_info: None,
    }
}
