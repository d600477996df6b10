//! Sharding over independent Redis instances, Sentinel and Cluster, each with the full
//! conformance suite against private `redis-server` processes.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::{
    delivers, eventually, history_options, info, publication, started, RedisCluster, RedisServer,
    LOCAL_REDIS,
};
use switchboard_broker_redis::{RedisBroker, RedisConfig};
use switchboard_hub::conformance::{run_all, Fixture};
use switchboard_hub::{Broker, HistoryFilter, PresenceStore};

/// Runs the suite with fresh brokers under one new key prefix; returns that prefix.
async fn conformance(name: &str, make_config: impl Fn(&str) -> RedisConfig) -> String {
    let base = support::unique_prefix();
    let n = AtomicUsize::new(0);
    let t = Instant::now();
    run_all(|| {
        let config = make_config(&format!("{base}-{}", n.fetch_add(1, Ordering::Relaxed)));
        async move {
            let broker = RedisBroker::connect(config, "conformance").await.unwrap();
            assert!(broker.connected());
            Fixture::new(broker.clone(), broker, "redis")
        }
    })
    .await;
    eprintln!("conformance on {name}: {:?}", t.elapsed());
    base
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_local_and_private() {
    let private = RedisServer::start();
    let addresses = vec![LOCAL_REDIS.to_string(), private.url()];
    let prefix = support::unique_prefix();
    let config = support::config(&addresses, &prefix);
    let (a, _events_a) = started(config.clone(), "node-a").await;
    let (b, events_b) = started(config, "node-b").await;
    assert_eq!(a.shard_count(), 2);

    // Channels land on both shards, and every node agrees where.
    let channels: Vec<String> = (0..20).map(|i| format!("room:{i}")).collect();
    let on: Vec<usize> = channels.iter().map(|c| a.shard_of(c)).collect();
    assert!(on.contains(&0) && on.contains(&1), "{on:?}");
    assert!(channels.iter().all(|c| a.shard_of(c) == b.shard_of(c)));

    for ch in &channels {
        b.subscribe(ch).await.unwrap();
    }
    for ch in &channels {
        a.publish(ch, publication(1), &history_options())
            .await
            .unwrap();
        a.add_presence(ch, &info("u", "c"), Duration::from_secs(60))
            .await
            .unwrap();
    }
    eventually(
        "every channel's publication",
        Duration::from_secs(5),
        || channels.iter().all(|c| events_b.publications(c).len() == 1),
    )
    .await;
    for ch in &channels {
        let h = b
            .history(ch, &HistoryFilter::default(), Duration::from_secs(600))
            .await
            .unwrap();
        assert_eq!(h.position.offset, 1);
        assert_eq!(b.presence(ch).await.unwrap().len(), 1);
    }
    // Keys really are spread over both instances.
    assert!(support::key_count(LOCAL_REDIS, &prefix) > 0);
    assert!(support::key_count(&private.url(), &prefix) > 0);
    support::cleanup(LOCAL_REDIS, &prefix);

    // And the whole suite passes on the sharded setup.
    let base = conformance("two shards", |p| support::config(&addresses, p)).await;
    support::cleanup(LOCAL_REDIS, &base);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel() {
    let master = RedisServer::start();
    let sentinel = RedisServer::sentinel(&master);
    let make = |prefix: &str| {
        let mut c = support::config(&[], prefix);
        c.sentinel_addresses = vec![sentinel.url()];
        c.sentinel_master_name = "mymaster".into();
        c
    };
    conformance("sentinel", make).await;

    // Reconnects through the sentinel after the master restarts.
    let (broker, events) = started(make(&support::unique_prefix()), "node").await;
    broker.subscribe("ch").await.unwrap();
    let mut master = master;
    master.restart();
    eventually("reconnect", Duration::from_secs(10), || {
        broker.connected() && events.gaps() == vec!["ch".to_string()]
    })
    .await;
    delivers(&broker, &events, "ch").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_to_the_replica() {
    let mut master = RedisServer::start();
    let replica = RedisServer::start_with(&[]);
    replica.cli(&["replicaof", "127.0.0.1", &master.port.to_string()]);
    let sentinel = RedisServer::sentinel(&master);
    let mut config = support::config(&[], &support::unique_prefix());
    config.sentinel_addresses = vec![sentinel.url()];
    let (broker, events) = started(config, "node").await;
    broker.subscribe("ch").await.unwrap();
    broker
        .publish("ch", publication(1), &history_options())
        .await
        .unwrap();
    eventually("replica in sync", Duration::from_secs(10), || {
        replica
            .cli(&["info", "replication"])
            .contains("master_link_status:up")
    })
    .await;

    let t = Instant::now();
    master.kill();
    // Sentinel notices after down-after-milliseconds (2s) and promotes the replica.
    eventually("failover and reconnect", Duration::from_secs(30), || {
        broker.connected() && events.gaps() == vec!["ch".to_string()]
    })
    .await;
    eprintln!(
        "sentinel failover: reconnected to the new master after {:?}",
        t.elapsed()
    );
    assert!(replica.cli(&["role"]).starts_with("master"));
    // The promoted replica has the stream: offsets continue. Connected means usable: the
    // first publish after the failover goes through.
    let next = broker
        .publish("ch", publication(2), &history_options())
        .await
        .unwrap();
    assert_eq!(next.offset, 2);
    eventually(
        "publication via the new master",
        Duration::from_secs(5),
        || events.publications("ch").len() == 2,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster() {
    let t = Instant::now();
    let cluster = RedisCluster::start();
    eprintln!("cluster of 3 masters up in {:?}", t.elapsed());
    let urls = cluster.urls();
    let make = |prefix: &str| {
        let mut c = support::config(&urls, prefix);
        c.cluster = true;
        c
    };
    conformance("cluster", make).await;

    // Two nodes on the cluster; channels spread over slots of all three masters.
    let prefix = support::unique_prefix();
    let (a, _) = started(make(&prefix), "node-a").await;
    let (b, events_b) = started(make(&prefix), "node-b").await;
    let channels: Vec<String> = (0..30).map(|i| format!("room:{i}")).collect();
    for ch in &channels {
        b.subscribe(ch).await.unwrap();
    }
    for ch in &channels {
        a.publish(ch, publication(1), &history_options())
            .await
            .unwrap();
    }
    eventually(
        "every channel's publication",
        Duration::from_secs(5),
        || channels.iter().all(|c| events_b.publications(c).len() == 1),
    )
    .await;
    let per_node: Vec<usize> = cluster
        .nodes
        .iter()
        .map(|n| support::key_count(&n.url(), &prefix))
        .collect();
    assert!(per_node.iter().all(|n| *n > 0), "{per_node:?}");
}
