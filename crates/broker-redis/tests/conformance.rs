//! The hub's broker conformance suite against the Redis broker on the shared local Redis.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};

use switchboard_broker_redis::RedisBroker;
use switchboard_hub::conformance::{run_all, Fixture};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_broker_conforms() {
    let base = support::unique_prefix();
    let n = AtomicUsize::new(0);
    let started = std::time::Instant::now();
    run_all(|| {
        let prefix = format!("{base}-{}", n.fetch_add(1, Ordering::Relaxed));
        async move {
            let config = support::config(&[support::LOCAL_REDIS.to_string()], &prefix);
            let broker = RedisBroker::connect(config, "conformance").await.unwrap();
            assert!(broker.connected());
            Fixture::new(broker.clone(), broker, "redis")
        }
    })
    .await;
    eprintln!("conformance on local redis: {:?}", started.elapsed());
    support::cleanup(support::LOCAL_REDIS, &base);
    assert_eq!(support::key_count(support::LOCAL_REDIS, &base), 0);
}
