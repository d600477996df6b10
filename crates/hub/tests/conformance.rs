//! The broker conformance suite against the in-memory broker.

use switchboard_hub::conformance::{run_all, Fixture};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_broker_conforms() {
    run_all(|| async { Fixture::memory("memory") }).await;
}
