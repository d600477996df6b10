//! Shared fixtures: brokers against the local NATS (127.0.0.1:4222, or `NATS_URL`) with a
//! unique prefix per broker, cleanup of what they stored, and the hub's test helpers (an event
//! recorder, polling with a deadline, sample publications).

#![allow(dead_code, unreachable_pub, unused_imports)]

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use switchboard_broker_nats::{NatsBroker, NatsConfig};

/// The hub's test helpers, shared with the conformance suite and the Redis broker's tests.
pub use switchboard_hub::conformance::{
    eventually, info, publication, RecordingEvents as Recorder,
};

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

/// Options for a channel with history: 100 publications for 5 minutes.
pub fn history_options() -> switchboard_hub::PublishOptions {
    switchboard_hub::conformance::history_options(100, Duration::from_secs(300))
}
