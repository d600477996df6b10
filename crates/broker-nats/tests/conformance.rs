//! The broker conformance suite against the local NATS server, a fresh broker (and prefix:
//! stream and buckets) per check.

mod support;

use std::sync::Arc;
use std::time::Instant;

use support::{connect, nats_url, test_config, unique_prefix, with_cleanup, Cleanup};
use switchboard_hub::conformance::{run_all, Fixture};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_broker_conforms() {
    let cleanup = Cleanup::default();
    let started = Instant::now();
    with_cleanup(&cleanup, async {
        run_all(|| {
            let cleanup = cleanup.clone();
            async move {
                let prefix = unique_prefix("conf");
                let config = test_config(&nats_url(), &prefix);
                let broker = Arc::new(connect(config, "conformance", Some(&cleanup)).await);
                Fixture::new(broker.clone(), broker, "nats")
            }
        })
        .await;
    })
    .await;
    eprintln!("conformance suite took {:?}", started.elapsed());
}
